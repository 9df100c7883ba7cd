"""Every run as one row of a table: ``expman.runs(...)``.

A sweep of a thousand runs is a question about a table (which learning rate
gave the best final loss?), so this gives pandas, polars or pyarrow directly:

    df = expman.runs("experiments", experiment="sweep")
    df.groupby("params.lr")["metrics.loss.last"].min()

Columns: ``id``, ``experiment``, ``run_name``, ``status`` (CRASHED included),
``start_time``, ``end_time``, ``duration`` (Unix seconds / seconds), ``points``,
``exit_reason``, ``path``; then ``params.<key>`` with nested dicts flattened
(``params.optim.lr``); then ``metrics.<name>.last``, ``.min``, ``.max`` (NaN
ignored by min/max). A column whose values mix types across runs holds their
JSON text, so every column has one type.

Read side only: no dataframe library is imported until a table is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from expman import layout
from expman.errors import ExpmanValueError
from expman.readmodel import MetricSummary, flatten_params

__all__ = ["runs", "FORMATS", "to_frame"]

FORMATS = ("pandas", "polars", "arrow")
RUN_COLUMNS = ("id", "experiment", "run_name", "status", "start_time", "end_time", "duration",
               "points", "exit_reason", "rows_dropped", "events_dropped", "write_errors", "path")
LOSS_COUNTS = ("rows_dropped", "events_dropped", "write_errors")   # of any rank (the listing's)
_NONFINITE = {layout.NAN: float("nan"), layout.POS_INF: float("inf"),
              layout.NEG_INF: float("-inf")}


def runs(base_dir: str | os.PathLike[str] | None = None, experiment: str | None = None,
         status: str | Iterable[str] | None = None, *, as_: str = "pandas",
         tags: str | Iterable[str] | None = None, group: str | None = None,
         limit: int | None = None) -> Any:
    """One row per run under ``base_dir`` (explicit, $EXPMAN_DIR, ./experiments;
    or a URL that ``expman sync`` wrote), with the same filters as ``list_runs``
    (experiment, status, tags, group, limit); ``as_`` is "pandas", "polars" or
    "arrow"."""
    check_format(as_)
    from expman.reader import list_runs
    from expman.remote import is_url, localize
    if base_dir is not None and is_url(base_dir):
        base_dir = localize(base_dir)          # s3://...: a synced copy, read locally
    rows = []
    for s in list_runs(layout.base_dir(base_dir), experiment, status, metrics=False,
                       tags=tags, group=group, limit=limit):
        rows.append(run_row(s.to_dict(), s.params, metric_summaries(s.path)))
    return to_frame(rows, as_)


def check_format(as_: object) -> str:
    if as_ not in FORMATS:
        raise ExpmanValueError(f"as_ must be one of {', '.join(map(repr, FORMATS))}, got {as_!r}")
    return str(as_)


def metric_summaries(run_dir: Path) -> dict[str, MetricSummary]:
    """Per metric, the read model's figures: from the run's summary.json when it
    is checked fresh, else by decoding the run (expman.summary.summarize decides)."""
    from expman.errors import ExpmanError
    from expman.summary import summarize
    try:
        return dict(summarize(run_dir)["metrics"])
    except (OSError, ValueError, ExpmanError):
        return {}


def run_row(info: Mapping[str, Any], params: Mapping[str, Any],
            summaries: Mapping[str, MetricSummary]) -> dict[str, Any]:
    """A table row from ``RunSummary.to_dict()``-shaped info, params and the read
    model's metric summaries."""
    exit_info = info.get("exit")
    row: dict[str, Any] = {
        "id": info.get("id"), "experiment": info.get("experiment"),
        "run_name": info.get("run_name"), "status": info.get("status"),
        "start_time": info.get("start_time"), "end_time": info.get("end_time"),
        "duration": info.get("duration"), "points": sum(m.count for m in summaries.values()),
        "exit_reason": exit_info.get("reason") if isinstance(exit_info, dict) else None,
        **_loss_counts(info.get("data_loss")),
        "path": str(info.get("path")) if info.get("path") is not None else None,
    }
    for k, v in flatten_params(params).items():
        row["params." + k] = v
    for name, m in summaries.items():
        for column, v in (("last", m.last_value), ("min", m.min), ("max", m.max)):
            row[f"metrics.{name}.{column}"] = v
    return row


def _loss_counts(loss: Any) -> dict[str, int]:
    """The listing's recorded loss (reader.rank_losses: any rank's, the loss record
    included) as numbers a filter can use: 0 when nothing was lost."""
    loss = loss if isinstance(loss, Mapping) else {}
    return {k: v if type(v) is int else 0 for k in LOSS_COUNTS for v in [loss.get(k)]}


def _column(values: list[Any]) -> list[Any]:
    """One type per column: numbers stay numbers (with NaN/inf spelled back into
    floats), bools and strings stay themselves, a mix becomes JSON text."""
    present = [v for v in values if v is not None]
    if not present:
        return values
    if all(isinstance(v, bool) for v in present) or all(isinstance(v, str) for v in present):
        return values

    def number(v: Any) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in _NONFINITE
    if all(number(v) for v in present):
        if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and \
                all(-(1 << 63) <= v < (1 << 63) for v in present):
            return values
        return [None if v is None else _NONFINITE.get(v, v) if isinstance(v, str) else float(v)
                for v in values]
    import orjson
    return [None if v is None else v if isinstance(v, str) else
            orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode() for v in values]


def columns_of(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows as typed columns: run columns first, then params, then metrics, sorted."""
    names = set().union(*rows) if rows else set()
    extra = sorted(names - set(RUN_COLUMNS),
                   key=lambda n: (not n.startswith("params."), n))
    return {n: _column([r.get(n) for r in rows]) for n in (*RUN_COLUMNS, *extra)}


def to_frame(rows: list[dict[str, Any]], as_: str) -> Any:
    """Rows as a pandas or polars DataFrame, or a pyarrow Table."""
    check_format(as_)
    cols = columns_of(rows)
    if as_ == "pandas":
        from expman.series import need as _need
        pd = _need("pandas", "pandas")
        return pd.DataFrame(cols, columns=list(cols))
    if as_ == "polars":
        from expman.series import need as _need
        pl = _need("polars", "polars")
        return pl.DataFrame(cols, strict=False)
    return arrow_table(cols)


def arrow_table(cols: dict[str, list[Any]]) -> Any:
    from expman.series import need as _need
    pa = _need("pyarrow", "arrow")
    return pa.table({k: pa.array(v) for k, v in cols.items()})
