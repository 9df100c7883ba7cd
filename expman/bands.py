"""Group bands: what a chart of a given width needs to draw groups of runs (seeds
of one config, say) as one line per group with a min-max band around it.

Every group is cut into the same pixel columns (the bucketing of
``expman.decimate``: ``floor((x - xmin) * pixels / (xmax - xmin))`` over the x
range of every point of every group). Per column and group:

- ``lo``/``hi``: the minimum and maximum of every point of every run of the group
  in that column, exactly (NaN left out, infinities kept): no spike is lost, as
  with a single series;
- ``mid``: the mean (or median) over the group's runs of each run's mean in the
  column, so a run logging ten times as often does not weigh ten times more;
- ``runs``: how many runs have a point there.

When the groups hold few distinct x values (at most ``pixels``), each distinct
x is its own column and ``exact`` is True: the band is per step.
Read side, public: the dashboard's ``/api/bands`` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["STATS", "Band", "Bands", "bands"]

STATS = ("mean", "median")
EXACT_SCAN = 64            # x values looked at per pixel for the exact (per step) mode


@dataclass(frozen=True)
class Band:
    """One group's columns, aligned with ``Bands.x`` (NaN where the group has no
    point): ``lo``, ``hi``, ``mid`` (float64) and ``runs`` (int64); ``points``
    counts every point of the group in the range."""

    lo: Any
    hi: Any
    mid: Any
    runs: Any
    points: int


@dataclass(frozen=True)
class Bands:
    """The columns' x (their centre, or the distinct x itself when ``exact``) and a
    Band per group, in the groups' order; columns where no group has a point are
    left out."""

    x: Any
    groups: dict[str, Band]
    exact: bool


def _clip(np: Any, x: Any, y: Any, lo: float | None, hi: float | None) -> tuple[Any, Any]:
    """The points with a finite x in [lo, hi]."""
    keep = np.isfinite(x)
    if lo is not None:
        keep &= x >= lo
    if hi is not None:
        keep &= x <= hi
    return (x, y) if keep.all() else (x[keep], y[keep])


def bands(groups: Mapping[str, Sequence[tuple[Any, Any]]], pixels: int,
          lo: float | None = None, hi: float | None = None, stat: str = "mean") -> Bands:
    """Bands of ``groups`` ({label: [(x, y) of each run]}) for a chart ``pixels``
    wide, over the points with lo <= x <= hi."""
    import numpy as np
    if stat not in STATS:
        raise ValueError(f"stat={stat!r}: use one of {', '.join(STATS)}")
    if pixels < 1:
        raise ValueError(f"pixels={pixels}: use 1 or more")
    clipped: dict[str, list[tuple[Any, Any]]] = {}
    for label, runs in groups.items():
        clipped[label] = [_clip(np, np.asarray(x, dtype=np.float64),
                                np.asarray(y, dtype=np.float64), lo, hi) for x, y in runs]
    xs = [x for runs in clipped.values() for x, _ in runs if len(x)]
    if not xs:
        empty = np.empty(0)
        return Bands(empty, {g: Band(empty, empty, empty, np.empty(0, np.int64), 0)
                             for g in clipped}, False)
    xmin = min(float(x.min()) for x in xs)
    xmax = max(float(x.max()) for x in xs)
    distinct = None
    if sum(map(len, xs)) <= EXACT_SCAN * pixels:
        distinct = np.unique(np.concatenate(xs))
        if len(distinct) > pixels:
            distinct = None
    if distinct is not None:
        ncols = len(distinct)

        def column(x: Any) -> Any:
            return np.searchsorted(distinct, x)
    else:
        ncols = pixels
        scale = pixels / (xmax - xmin) if xmax > xmin else 0.0

        def column(x: Any) -> Any:
            return np.clip(((x - xmin) * scale).astype(np.int64), 0, pixels - 1)

    out: dict[str, tuple[Any, Any, Any, Any, int]] = {}
    used = np.zeros(ncols, dtype=bool)
    for label, runs in clipped.items():
        g_lo = np.full(ncols, np.nan)
        g_hi = np.full(ncols, np.nan)
        means = np.full((max(len(runs), 1), ncols), np.nan)
        points = 0
        for r, (x, y) in enumerate(runs):
            if not len(x):
                continue
            points += len(x)
            b = column(x)
            if len(b) > 1 and (b[1:] < b[:-1]).any():     # x not sorted: order by column
                order = np.argsort(b, kind="stable")
                b, y = b[order], y[order]
            starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
            cols = b[starts]
            real = ~np.isnan(y)
            n = np.add.reduceat(real.astype(np.int64), starts)
            r_lo = np.fmin.reduceat(y, starts)          # fmin/fmax: NaN is left out
            r_hi = np.fmax.reduceat(y, starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                r_mean = np.add.reduceat(np.where(real, y, 0.0), starts) / n
            r_mean[n == 0] = np.nan
            g_lo[cols] = np.fmin(g_lo[cols], r_lo)
            g_hi[cols] = np.fmax(g_hi[cols], r_hi)
            means[r, cols] = r_mean
            used[cols] = True
        have = ~np.isnan(means)
        counts = have.sum(axis=0)
        with np.errstate(invalid="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)     # all-NaN columns
                mid = np.nanmedian(means, axis=0) if stat == "median" else np.nanmean(means, axis=0)
        out[label] = (g_lo, g_hi, mid, counts.astype(np.int64), points)
    keep = np.flatnonzero(used)
    if distinct is not None:
        x = distinct[keep]
    else:
        width = (xmax - xmin) / pixels
        x = xmin + (keep + 0.5) * width if width else np.full(len(keep), xmin)
    return Bands(x, {label: Band(g_lo[keep], g_hi[keep], mid[keep], n[keep], pts)
                     for label, (g_lo, g_hi, mid, n, pts) in out.items()}, distinct is not None)
