"""What a chart of a given width needs from a series: the points in an x range,
decimated by the compiled core (``_core.decimate_minmax``) so that every spike
stays visible, or every raw point when there are few. Read side, public: the
dashboard draws with it, and any other surface that charts a series can."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from expman import _core


@dataclass(frozen=True)
class Window:
    """The points to draw: ``x`` (numpy int64 steps or float64) and ``y`` (float64), ``total`` points in
    the range before decimation, ``raw`` when nothing was left out."""

    x: Any
    y: Any
    total: int
    raw: bool


def _is_sorted(np: Any, x: Any) -> bool:
    return bool(len(x) < 2 or (x[1:] >= x[:-1]).all())


def window(x: Any, y: Any, pixels: int, lo: float | None = None,
           hi: float | None = None) -> Window:
    """The points of (x, y) with lo <= x <= hi (plus the one just outside each
    end, so a zoomed line reaches the edges), decimated for ``pixels``."""
    import numpy as np
    x = np.asarray(x)
    if x.dtype != np.int64:          # steps stay int64: the core buckets them without a copy
        x = x.astype(np.float64, copy=False)
    y = np.asarray(y, dtype=np.float64)
    if lo is not None or hi is not None:
        lo_v = -np.inf if lo is None else lo
        hi_v = np.inf if hi is None else hi
        if _is_sorted(np, x):
            a = max(int(np.searchsorted(x, lo_v, "left")) - 1, 0)
            b = min(int(np.searchsorted(x, hi_v, "right")) + 1, len(x))
            x, y = x[a:b], y[a:b]
        else:
            keep = (x >= lo_v) & (x <= hi_v)
            x, y = x[keep], y[keep]
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)     # a mask or slice may copy
    total = len(x)
    idx = np.frombuffer(_core.decimate_minmax(x, y, pixels), dtype=np.int64)
    if len(idx) == total:
        return Window(x, y, total, True)
    return Window(x[idx], y[idx], total, False)
