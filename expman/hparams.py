"""Hyperparameter views' data: every listed run's flattened params beside one
summary (last, min or max) of one metric, as compact columns, so a page can
draw parallel coordinates or a scatter over 10,000 runs from one answer.

Built from the listing's rows (``list_runs``: params and last values); a min or
max comes from the run's summary (``expman.summary.summarize``: summary.json when
it covers metrics.bin, else a decode), kept per metrics.bin as it is on disk.
Read side, public: the dashboard's ``/api/hparams`` calls it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from expman.layout import METRICS_FILE, json_float
from expman.readmodel import MetricSummary, flatten_params

__all__ = ["SUMMARIES", "MAX_NAMES", "DEFAULT_PARAMS", "metric_summaries", "hparam_table"]

SUMMARIES = ("last", "min", "max")
MAX_NAMES = 1000           # param and metric names offered, most common first
DEFAULT_PARAMS = 8         # params shown when none are asked for: those that vary

_SUMMARY_CACHE: dict[tuple[Any, ...], dict[str, MetricSummary]] = {}
_SUMMARY_CACHE_MAX = 100_000


def metric_summaries(run_dir: str | os.PathLike[str]) -> dict[str, MetricSummary]:
    """The run's metric summaries ({} when metrics.bin cannot be read), read once
    per metrics.bin as it is (inode, size, mtime, ctime)."""
    from expman.summary import summarize
    path = os.path.join(os.fspath(run_dir), METRICS_FILE)
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _SUMMARY_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        found: dict[str, MetricSummary] = summarize(run_dir)["metrics"]
    except (OSError, ValueError):
        found = {}
    if len(_SUMMARY_CACHE) >= _SUMMARY_CACHE_MAX:
        _SUMMARY_CACHE.clear()
    _SUMMARY_CACHE[key] = found
    return found


def _names(counts: Counter[str]) -> list[list[Any]]:
    return [[k, n] for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_NAMES]]


def _varying(flat: list[dict[str, Any]], counts: Counter[str]) -> list[str]:
    """Up to DEFAULT_PARAMS params with more than one value among the runs."""
    out = []
    for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        seen = set()
        for p in flat:
            if name in p:
                seen.add(repr(p[name]))
                if len(seen) > 1:
                    out.append(name)
                    break
        if len(out) == DEFAULT_PARAMS:
            break
    return sorted(out)


def hparam_table(rows: Iterable[Mapping[str, Any]], metric: str | None = None,
                 summary: str = "last", params: Sequence[str] | None = None,
                 run_dir: Callable[[Mapping[str, Any]], Path | None] | None = None,
                 offset: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Columns over ``rows`` (the listing's rows: ``id``, ``params``, ``last_metrics``):
    ``ids``, ``params`` {name: values} (None where a run lacks it), ``values``
    (the metric's ``summary``; None where a run lacks it), for rows
    offset..offset+limit; ``total`` counts every row. ``params`` None: the ones
    that vary. ``run_dir(row)``: the run's folder (needed for min and max).
    ``param_names``/``metric_names``: [name, runs having it], most common first."""
    if summary not in SUMMARIES:
        raise ValueError(f"summary={summary!r}: use one of {', '.join(SUMMARIES)}")
    if summary != "last" and run_dir is None:
        raise ValueError(f"summary={summary!r} needs run_dir")
    rows = list(rows)
    flat = [flatten_params(r.get("params") or {}) for r in rows]
    param_counts: Counter[str] = Counter()
    metric_counts: Counter[str] = Counter()
    for p, r in zip(flat, rows):
        param_counts.update(p.keys())
        metric_counts.update((r.get("last_metrics") or {}).keys())
    chosen = list(params) if params is not None else _varying(flat, param_counts)
    end = len(rows) if limit is None else offset + limit
    page, page_flat = rows[offset:end], flat[offset:end]
    values: list[Any] = []
    if metric:
        for r in page:
            if summary == "last":
                values.append((r.get("last_metrics") or {}).get(metric))
                continue
            assert run_dir is not None
            where = run_dir(r)
            s = metric_summaries(where).get(metric) if where is not None else None
            v = getattr(s, summary) if s is not None else None
            values.append(None if v is None else json_float(v))
    return {"total": len(rows), "offset": offset, "count": len(page),
            "metric": metric, "summary": summary,
            "ids": [r.get("id") for r in page],
            "params": {name: [p.get(name) for p in page_flat] for name in chosen},
            "values": values if metric else [],
            "param_names": _names(param_counts), "metric_names": _names(metric_counts)}
