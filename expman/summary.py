"""The run summary (``summary.json``): per metric what a full decode of
``metrics.bin`` would find, so a listing reads one small file per run.

The writer thread keeps the figures as frames reach the file; ``Experiment``
writes them out every few seconds while the run is open and at close, with
the ``metrics.bin`` size they cover. A reader trusts the file only when that
size is the file's size now; otherwise (a crash, a resume in progress, no
summary yet) ``summarize`` decodes. Both give the same shape:

    {"format": 1, "metrics_bytes": int, "source": "summary" | "decode",
     "metrics": {name: {"count", "nan_count", "first_step", "last_step",
                        "last_value", "last_time", "min", "max"}}}

``min``/``max`` ignore NaN (None when every value is NaN); values are floats
(NaN and infinities included) in memory and spelled as layout.json_float says
in the file. ``keys_from_events`` recovers key names from ``events.jsonl`` so a
damaged ``metrics.bin`` still names its points.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from expman.layout import (
    EVENTS_FILE, METRICS_FILE, NAN, NEG_INF, POS_INF, SUMMARY_FILE, json_float,
    parse_event_lines,
)

__all__ = ["SUMMARY_FORMAT", "read_summary", "summarize", "keys_from_events",
           "from_columns", "from_writer", "merge", "to_json"]

SUMMARY_FORMAT = 1
_FIELDS = ("count", "nan_count", "first_step", "last_step", "last_value", "last_time",
           "min", "max")
_SPELLED = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}
MAX_SUMMARY_BYTES = 64 << 20     # a crafted summary.json is not read whole


# ---- building ---------------------------------------------------------------------------
def _entry(count: int, nans: int, first_step: int, last_step: int, last_value: float,
           last_time: float, lo: float | None, hi: float | None) -> dict[str, Any]:
    return {"count": count, "nan_count": nans, "first_step": first_step, "last_step": last_step,
            "last_value": last_value, "last_time": last_time, "min": lo, "max": hi}


def from_writer(raw: Mapping[str, tuple[int, int, int, int, int, float, float, float]]
                ) -> dict[str, dict[str, Any]]:
    """Metrics of ``Core._summary()``'s table (time in microseconds, as on disk)."""
    out = {}
    for name, (count, nans, first, last, t_us, value, lo, hi) in raw.items():
        real = count > nans
        out[name] = _entry(count, nans, first, last, value, t_us / 1e6,
                           lo if real else None, hi if real else None)
    return out


def from_columns(columns: Mapping[str, tuple[Any, Any, Any]]) -> dict[str, dict[str, Any]]:
    """Metrics of decoded columns (steps, times, values in logged order), by the
    writer's rules: first/last in logged order, min/max the first extreme seen."""
    out = {}
    for name, (steps, times, values) in columns.items():
        n = len(values)
        if not n:
            continue
        real = [v for v in values if v == v]
        out[name] = _entry(n, n - len(real), int(steps[0]), int(steps[-1]), float(values[-1]),
                           float(times[-1]), min(real) if real else None,
                           max(real) if real else None)
    return out


def merge(before: Mapping[str, dict[str, Any]], after: Mapping[str, dict[str, Any]]
          ) -> dict[str, dict[str, Any]]:
    """The metrics of a file that holds ``before``'s rows, then ``after``'s (a resume)."""
    out = {k: dict(v) for k, v in before.items()}
    for name, a in after.items():
        b = out.get(name)
        if b is None:
            out[name] = dict(a)
            continue
        lo = [x for x in (b["min"], a["min"]) if x is not None]
        hi = [x for x in (b["max"], a["max"]) if x is not None]
        out[name] = _entry(b["count"] + a["count"], b["nan_count"] + a["nan_count"],
                           b["first_step"], a["last_step"], a["last_value"], a["last_time"],
                           min(lo) if lo else None, max(hi) if hi else None)
    return out


def to_json(metrics_bytes: int, metrics: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The document written to summary.json (NaN and infinities spelled out)."""
    spelled = {}
    for name, e in metrics.items():
        spelled[name] = {k: (json_float(v) if isinstance(v, float) else v) for k, v in e.items()}
    return {"format": SUMMARY_FORMAT, "metrics_bytes": metrics_bytes, "metrics": spelled}


# ---- reading ----------------------------------------------------------------------------
_INTS = ("count", "nan_count", "first_step", "last_step")
_FIELD_SET = frozenset(_FIELDS)


def _float(v: Any) -> float:
    """A JSON number or a NaN/infinity spelling as float; ValueError otherwise."""
    t = type(v)
    if t is float:
        return float(v)
    if t is int:
        return float(v)
    if t is str and v in _SPELLED:
        return _SPELLED[v]
    raise ValueError(v)


def _parse(doc: Any) -> dict[str, Any] | None:
    """The summary in memory, or None if ``doc`` is not a well-formed summary.
    (Written for speed: a listing parses one per run.)"""
    if type(doc) is not dict or doc.get("format") != SUMMARY_FORMAT:
        return None
    size, metrics = doc.get("metrics_bytes"), doc.get("metrics")
    if type(size) is not int or type(metrics) is not dict:
        return None
    out = {}
    try:
        for name, e in metrics.items():
            if type(e) is not dict or e.keys() != _FIELD_SET:
                return None
            count, nans, first, last = (e["count"], e["nan_count"], e["first_step"],
                                        e["last_step"])
            if (type(count) is not int or type(nans) is not int or type(first) is not int
                    or type(last) is not int or not 0 <= nans <= count or count < 1):
                return None
            lo, hi = e["min"], e["max"]
            if (lo is None) != (hi is None) or (lo is None) != (nans == count):
                return None
            out[name] = {"count": count, "nan_count": nans, "first_step": first,
                         "last_step": last, "last_value": _float(e["last_value"]),
                         "last_time": _float(e["last_time"]),
                         "min": None if lo is None else _float(lo),
                         "max": None if hi is None else _float(hi)}
    except ValueError:
        return None
    return {"format": SUMMARY_FORMAT, "metrics_bytes": size, "source": "summary",
            "metrics": out}


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's summary.json if it is intact and covers all of metrics.bin now;
    None when it is missing, damaged, or stale (metrics.bin has another size)."""
    import orjson

    from expman._fsutil import read_regular
    run = os.fspath(run_dir)
    try:
        size = os.stat(os.path.join(run, METRICS_FILE)).st_size
        # one open: never a link, a FIFO or a device; a larger file is crafted, not ours
        data = read_regular(os.path.join(run, SUMMARY_FILE), limit=MAX_SUMMARY_BYTES)
        doc = _parse(orjson.loads(data))
    except (OSError, ValueError):       # orjson.JSONDecodeError is a ValueError
        return None
    if doc is None or doc["metrics_bytes"] != size:
        return None
    return doc


def keys_from_events(events: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Key id -> name from the ``{"kind": "key"}`` copies in events.jsonl; pass it
    as ``decode_metrics(..., keys=...)`` so salvage names points whose defining
    frame was destroyed. Malformed entries are ignored."""
    keys: dict[int, str] = {}
    for e in events:
        if e.get("kind") != "key":
            continue
        kid, name = e.get("id"), e.get("name")
        if (isinstance(kid, int) and not isinstance(kid, bool) and 0 <= kid <= 0xFFFFFFFF
                and isinstance(name, str) and name):
            keys[kid] = name
    return keys


def read_event_keys(run_dir: str | os.PathLike[str]) -> dict[int, str]:
    """keys_from_events over a run folder's events.jsonl ({} when unreadable)."""
    from expman._fsutil import read_regular
    try:
        data = read_regular(Path(os.fspath(run_dir)) / EVENTS_FILE)
    except (OSError, ValueError):
        return {}
    events, _bad, _used = parse_event_lines(data)
    return keys_from_events(events)


def summarize(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary if fresh, else computed by decoding metrics.bin (with the key
    names from events.jsonl, salvaging past damage). Same shape either way;
    ``source`` says which. Raises OSError when metrics.bin cannot be read."""
    fresh = read_summary(run_dir)
    if fresh is not None:
        return fresh
    from expman import _core
    from expman._fsutil import read_regular
    run = Path(os.fspath(run_dir))
    data = read_regular(run / METRICS_FILE)     # never a FIFO, a device or a link
    columns, _keys, _report = _core.decode_metrics(data, 0, read_event_keys(run), True)
    return {"format": SUMMARY_FORMAT, "metrics_bytes": len(data), "source": "decode",
            "metrics": from_columns(columns)}
