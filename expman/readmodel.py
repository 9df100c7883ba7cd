"""The read model: the one place each figure a surface shows about a run is worked out.

Every surface (CLI, dashboard, lake, ``expman.runs()``, exports) serializes these
answers; none computes its own. A second computation of the same figure is a bug
even when it agrees today.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PARAM_SEPARATOR", "flatten_params", "MetricSummary", "SUMMARY_FIELDS",
           "summarize_points", "merge_summaries", "spell_float", "read_float"]

PARAM_SEPARATOR = "."
"""Nested params are flattened for tables, filters, columns and the lake by joining
keys with a dot: ``{"optim": {"lr": 1}}`` is ``optim.lr``. Stored params stay nested."""

_SCALARS = (str, int, float, bool, type(None))


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as one level of dotted keys, each value a JSON scalar.

    Nested mappings become dotted keys; lists, tuples, empty mappings and anything
    else that is not a scalar become compact JSON text (``"[0.9,0.999]"``), so a
    column or a filter never meets an unhashable value. Iterative: a deep document
    costs no recursion."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Mapping[Any, Any]]] = [("", params)]
    while stack:
        prefix, mapping = stack.pop()
        for k, v in mapping.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and v:
                stack.append((key + PARAM_SEPARATOR, v))
            elif isinstance(v, _SCALARS):
                out[key] = v
            else:
                out[key] = _json_text(v)
    return dict(sorted(out.items()))


def _json_text(value: Any) -> str:
    import orjson
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)


# ---- metric summaries -------------------------------------------------------------------------
# The one rule for NaN and infinities: ``count`` counts every point, ``nan_count`` the
# NaNs among them; ``min`` and ``max`` are over every value that is not NaN, so
# +-inf count (the series [1.0, inf, 2.0] has max inf); both are None when every
# value is NaN. First and last are in logged order (not the smallest and largest
# step). On ties (0.0 and -0.0) the first value seen is kept, as the C writer does.

@dataclass(frozen=True)
class MetricSummary:
    """What a full decode of one metric's points says, with one set of field names
    for every surface (summary.json, show, list, the dashboard, the lake, runs(),
    the TensorBoard export). Empty (count 0): every other figure is None."""

    count: int
    nan_count: int = 0
    first_step: int | None = None
    first_value: float | None = None
    last_step: int | None = None
    last_value: float | None = None
    last_time: float | None = None
    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (floats as they are: NaN and inf included)."""
        return {f: getattr(self, f) for f in SUMMARY_FIELDS}


SUMMARY_FIELDS = tuple(f.name for f in fields(MetricSummary))
EMPTY_SUMMARY = MetricSummary(0)


def summarize_points(steps: Any, times: Any, values: Any) -> MetricSummary:
    """The summary of one metric's points (columns in logged order: numpy arrays,
    ``array.array`` or sequences)."""
    n = len(values)
    if not n:
        return EMPTY_SUMMARY
    np = sys.modules.get("numpy")       # numpy columns mean numpy is loaded; else lists
    if np is not None and isinstance(values, array):
        values = np.frombuffer(values, dtype=np.float64)
    if np is not None and hasattr(values, "dtype"):
        v = np.asarray(values, dtype=np.float64)
        real = v[~np.isnan(v)]
        nans = n - len(real)
        lo = _first_of(real, float(real.min())) if len(real) else None
        hi = _first_of(real, float(real.max())) if len(real) else None
    else:
        reals = [float(x) for x in values if x == x]
        nans = n - len(reals)
        lo = min(reals) if reals else None
        hi = max(reals) if reals else None
    return MetricSummary(n, nans, int(steps[0]), float(values[0]), int(steps[-1]),
                         float(values[-1]), float(times[-1]), lo, hi)


def _first_of(real: Any, extreme: float) -> float:
    """The first value equal to ``extreme`` (0.0 or -0.0: numpy may return either)."""
    if extreme != 0.0:
        return extreme
    return float(real[int((real == extreme).argmax())])


def merge_summaries(before: MetricSummary, after: MetricSummary) -> MetricSummary:
    """The summary of ``before``'s points followed by ``after``'s (a resumed run,
    or a stream read in pieces)."""
    if not before.count:
        return after
    if not after.count:
        return before
    los = [x for x in (before.min, after.min) if x is not None]
    his = [x for x in (before.max, after.max) if x is not None]
    return MetricSummary(before.count + after.count, before.nan_count + after.nan_count,
                         before.first_step, before.first_value, after.last_step,
                         after.last_value, after.last_time,
                         min(los) if los else None, max(his) if his else None)


# ---- floats that survive JSON bit for bit ------------------------------------------------------
# JSON has no NaN or infinity. Finite floats are JSON numbers (shortest round-trip
# text); +-inf are "Infinity" / "-Infinity"; the usual quiet NaN is "NaN"; any
# other NaN (a payload, the sign bit) is "NaN:0x" + its 16 hex digits, so what a
# listing reads from summary.json is the value open_run decodes, bit for bit.

_QUIET_NAN = 0x7FF8000000000000


def float_bits(x: float) -> int:
    import struct
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


def spell_float(x: float) -> float | str:
    """``x`` as JSON can hold it, losing nothing (see above)."""
    if x == x and x not in (math.inf, -math.inf):
        return x
    if x == math.inf:
        return "Infinity"
    if x == -math.inf:
        return "-Infinity"
    bits = float_bits(x)
    return "NaN" if bits == _QUIET_NAN else f"NaN:0x{bits:016x}"


def read_float(v: Any) -> float:
    """A float spelled by ``spell_float`` (or a JSON number); ValueError otherwise."""
    t = type(v)
    if t is float:
        return v  # type: ignore[no-any-return]
    if t is int:
        return float(v)
    if t is str:
        if v == "NaN":
            return math.nan
        if v == "Infinity":
            return math.inf
        if v == "-Infinity":
            return -math.inf
        if v.startswith("NaN:0x") and len(v) == 22:
            import struct
            x = float(struct.unpack("<d", struct.pack("<Q", int(v[6:], 16)))[0])
            if x != x:
                return x
    raise ValueError(f"not a float: {v!r}")


_FLOAT_FIELDS = ("first_value", "last_value", "last_time", "min", "max")


def summary_to_json(m: MetricSummary) -> dict[str, Any]:
    """A MetricSummary as JSON can hold it, bit for bit (floats by ``spell_float``)."""
    return {f: (spell_float(v) if f in _FLOAT_FIELDS and v is not None else v)
            for f, v in m.to_dict().items()}


def summary_from_json(doc: Any) -> MetricSummary:
    """``summary_to_json``'s inverse; ValueError naming what is wrong otherwise."""
    if not isinstance(doc, dict) or set(doc) != set(SUMMARY_FIELDS):
        raise ValueError(f"not a metric summary: {doc!r:.200}")
    ints = [doc[f] for f in ("count", "nan_count", "first_step", "last_step")]
    count, nans = ints[0], ints[1]
    if not all(type(v) is int for v in ints[:2]) or not 0 <= nans <= count:
        raise ValueError(f"bad counts in a metric summary: {doc!r:.200}")
    if count and not all(type(v) is int for v in ints[2:]):
        raise ValueError(f"bad steps in a metric summary: {doc!r:.200}")
    lo, hi = doc["min"], doc["max"]
    if (lo is None) != (hi is None) or (count and (lo is None) != (nans == count)):
        raise ValueError(f"bad min/max in a metric summary: {doc!r:.200}")
    floats = [None if doc[f] is None else read_float(doc[f]) for f in _FLOAT_FIELDS]
    if count and None in floats[:3]:
        raise ValueError(f"a metric summary without its values: {doc!r:.200}")
    return MetricSummary(count, nans, doc["first_step"], floats[0], doc["last_step"],
                         floats[1], floats[2], floats[3], floats[4])
