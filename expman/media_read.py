"""Reading histograms and images back from a run's events (docs/format.md, media).

Plain functions over ``run.events`` so the read side never imports the write
side. A malformed record (a damaged or crafted events.jsonl) is skipped, and an
image path that leaves the run folder is never followed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman.layout import ARTIFACTS_DIR, MEDIA_DIR

__all__ = ["Histogram", "Image", "histograms", "images", "percentiles", "HISTOGRAM_KIND",
           "IMAGE_KIND", "DISTRIBUTION_FRACTIONS"]

HISTOGRAM_KIND = "histogram"
IMAGE_KIND = "image"
DISTRIBUTION_FRACTIONS = (0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0)
"""The quantiles TensorBoard draws a histogram's distribution with: the median,
±0.5, 1, 1.5 standard deviations of a normal, and the extremes."""


@dataclass(frozen=True)
class Histogram:
    """One histogram as logged: ``len(edges) == len(counts) + 1``."""

    step: int
    edges: list[float]
    counts: list[int | float]
    time: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)   # min, max, num, sum, sum_squares, nonfinite


@dataclass(frozen=True)
class Image:
    """One logged image: a PNG in the run's artifacts folder."""

    step: int
    path: Path
    width: int
    height: int
    time: float | None = None
    sha256: str | None = None

    def read_bytes(self) -> bytes:
        """The PNG's bytes, through the guarded layer (never a link or a FIFO:
        CorruptRunError naming it)."""
        from expman._fsutil import read_regular
        return read_regular(self.path)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _step(ev: dict[str, Any]) -> int | None:
    s = ev.get("step")
    return s if isinstance(s, int) and not isinstance(s, bool) and s >= 0 else None


def histograms(run: Any) -> dict[str, list[Histogram]]:
    """tag -> histograms in logged order (duplicate steps kept), from ``run.events``."""
    out: dict[str, list[Histogram]] = {}
    for ev in run.events:
        if ev.get("kind") != HISTOGRAM_KIND:
            continue
        tag, step, edges, counts = ev.get("tag"), _step(ev), ev.get("edges"), ev.get("counts")
        if not (isinstance(tag, str) and step is not None and isinstance(edges, list)
                and isinstance(counts, list) and len(edges) == len(counts) + 1
                and all(map(_number, edges)) and all(map(_number, counts))):
            continue
        stats = {k: ev[k] for k in ("min", "max", "num", "sum", "sum_squares", "nonfinite")
                 if _number(ev.get(k))}
        t = ev.get("time")
        out.setdefault(tag, []).append(Histogram(step, [float(e) for e in edges], counts,
                                                 t if _number(t) else None, stats))
    return out


def images(run: Any) -> dict[str, list[Image]]:
    """tag -> images in logged order, from ``run.events``; paths are absolute."""
    root = Path(run.path)
    media = os.path.realpath(root / ARTIFACTS_DIR / MEDIA_DIR)
    out: dict[str, list[Image]] = {}
    for ev in run.events:
        if ev.get("kind") != IMAGE_KIND:
            continue
        tag, step, rel = ev.get("tag"), _step(ev), ev.get("path")
        w, h = ev.get("width"), ev.get("height")
        if not (isinstance(tag, str) and step is not None and isinstance(rel, str)
                and isinstance(w, int) and isinstance(h, int)):
            continue
        path = root / rel
        if os.path.commonpath([media, os.path.realpath(path)]) != media:
            continue                                    # a crafted path leaving the run
        t, sha = ev.get("time"), ev.get("sha256")
        out.setdefault(tag, []).append(Image(step, path, w, h, t if _number(t) else None,
                                             sha if isinstance(sha, str) else None))
    return out


def percentiles(h: Histogram, fractions: "tuple[float, ...] | list[float]" = DISTRIBUTION_FRACTIONS
                ) -> list[float] | None:
    """The values below which these fractions of the histogram's count fall (in
    ascending order of the fractions), interpolated linearly inside a bucket (the counts are assumed spread evenly
    over it); None for an empty histogram (or one with a negative count)."""
    counts = [float(c) for c in h.counts]
    total = sum(counts)
    if not counts or total <= 0 or any(c < 0 for c in counts):
        return None
    out = []
    i, below = 0, 0.0                  # bucket i, the count before it
    for f in sorted(fractions):
        target = min(max(f, 0.0), 1.0) * total
        while i < len(counts) - 1 and (below + counts[i] < target or counts[i] == 0):
            below += counts[i]
            i += 1
        inside = (target - below) / counts[i] if counts[i] else 0.0
        lo, hi = h.edges[i], h.edges[i + 1]
        out.append(lo + min(max(inside, 0.0), 1.0) * (hi - lo))
    return out
