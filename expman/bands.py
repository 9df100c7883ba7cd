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


def _prepare(np: Any, x: Any, y: Any, lo: float | None, hi: float | None
             ) -> tuple[Any, Any, bool]:
    """The points with a finite x in [lo, hi], and whether x is sorted: a sorted run
    (the usual one) is cut by binary search, without a copy."""
    x = np.asarray(x)
    if x.dtype != np.int64:
        x = x.astype(np.float64, copy=False)
    y = np.asarray(y, dtype=np.float64)
    ordered = len(x) < 2 or bool((x[1:] >= x[:-1]).all())        # a NaN x: not sorted
    if ordered and (not len(x) or (np.isfinite(x[0]) and np.isfinite(x[-1]))):
        a = 0 if lo is None else int(np.searchsorted(x, lo, "left"))
        b = len(x) if hi is None else int(np.searchsorted(x, hi, "right"))
        return x[a:b], y[a:b], True
    x = x.astype(np.float64, copy=False)
    keep = np.isfinite(x)
    if lo is not None:
        keep &= x >= lo
    if hi is not None:
        keep &= x <= hi
    return x[keep], y[keep], False


def _starts(np: Any, x: Any, ordered: bool, column: Any, first: Any, ncols: int
            ) -> tuple[Any, Any, Any]:
    """(y order or None, start of each non-empty column's points, those columns).
    Sorted x: the column boundaries are found by binary search (``first(x, c)``: about
    where column c begins), then moved until ``column`` itself agrees on both sides
    of each, so a point near an edge lands where the per-point rule puts it."""
    n = len(x)
    if not ordered:
        b = column(x)
        order = np.argsort(b, kind="stable")
        b = b[order]
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        return order, starts, b[starts]
    cols = np.arange(1, ncols)
    cut = np.clip(first(x, cols), 0, n)
    while True:
        back = (cut > 0) & (column(x[np.maximum(cut - 1, 0)]) >= cols)
        ahead = (cut < n) & (column(x[np.minimum(cut, n - 1)]) < cols)
        if not (back.any() or ahead.any()):
            break
        cut[back] = np.searchsorted(x, x[cut[back] - 1], "left")
        cut[ahead] = np.searchsorted(x, x[cut[ahead]], "right")
    bounds = np.r_[0, cut, n]
    full = bounds[:-1] < bounds[1:]
    return None, bounds[:-1][full], np.flatnonzero(full)


def bands(groups: Mapping[str, Sequence[tuple[Any, Any]]], pixels: int,
          lo: float | None = None, hi: float | None = None, stat: str = "mean") -> Bands:
    """Bands of ``groups`` ({label: [(x, y) of each run]}) for a chart ``pixels``
    wide, over the points with lo <= x <= hi."""
    import numpy as np
    if stat not in STATS:
        raise ValueError(f"stat={stat!r}: use one of {', '.join(STATS)}")
    if pixels < 1:
        raise ValueError(f"pixels={pixels}: use 1 or more")
    clipped = {label: [_prepare(np, x, y, lo, hi) for x, y in runs]
               for label, runs in groups.items()}
    xs = [(x, ordered) for runs in clipped.values() for x, _, ordered in runs if len(x)]
    if not xs:
        empty = np.empty(0)
        return Bands(empty, {g: Band(empty, empty, empty, np.empty(0, np.int64), 0)
                             for g in clipped}, False)
    xmin = min(float(x[0]) if ordered else float(x.min()) for x, ordered in xs)
    xmax = max(float(x[-1]) if ordered else float(x.max()) for x, ordered in xs)
    distinct = None
    if sum(len(x) for x, _ in xs) <= EXACT_SCAN * pixels:
        distinct = np.unique(np.concatenate([x.astype(np.float64) for x, _ in xs]))
        if len(distinct) > pixels:
            distinct = None
    if distinct is not None:
        ncols = len(distinct)
        exact = distinct

        def column(x: Any) -> Any:
            return np.searchsorted(exact, x)

        def first(x: Any, c: Any) -> Any:
            return np.searchsorted(x, exact[c], "left")
    else:
        ncols = pixels
        scale = pixels / (xmax - xmin) if xmax > xmin else 0.0

        def column(x: Any) -> Any:
            return np.clip(((x - xmin) * scale).astype(np.int64), 0, pixels - 1)

        def first(x: Any, c: Any) -> Any:
            return np.searchsorted(x, xmin + c / scale, "left") if scale else np.full(len(c), len(x))

    out: dict[str, tuple[Any, Any, Any, Any, int]] = {}
    used = np.zeros(ncols, dtype=bool)
    for label, runs in clipped.items():
        g_lo = np.full(ncols, np.nan)
        g_hi = np.full(ncols, np.nan)
        means = np.full((max(len(runs), 1), ncols), np.nan)
        points = 0
        for r, (x, y, ordered) in enumerate(runs):
            if not len(x):
                continue
            points += len(x)
            order, starts, cols = _starts(np, x, ordered, column, first, ncols)
            if order is not None:
                y = y[order]
            nan = np.isnan(y)
            if nan.any():
                n = np.add.reduceat(~nan, starts, dtype=np.int64)
                total = np.add.reduceat(np.where(nan, 0.0, y), starts)
            else:
                n = np.diff(np.r_[starts, len(y)])
                total = np.add.reduceat(y, starts)
            r_lo = np.fmin.reduceat(y, starts)          # fmin/fmax: NaN is left out
            r_hi = np.fmax.reduceat(y, starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                r_mean = total / n
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
