"""Reading a multi-rank run: each rank's streams in one frame, and the run's
status over its ranks as plain data. The status rules are ``expman.liveness``
(``run_status``); one rank's view is ``open_run(path, rank=r)``.

Rank 0 writes ``run.json`` (with ``world_size``), ``params.json``,
``metrics.bin`` and ``events.jsonl``; rank r > 0 writes ``run.rank<r>.json``,
``metrics.rank<r>.bin`` and ``events.rank<r>.jsonl`` (names: layout.rank_file),
each under its own writer lock. So the plain files are rank 0's view, and a
reader that knows nothing of ranks reads rank 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from expman.layout import METRICS_FILE, RUN_FILE, rank_file
from expman.liveness import (
    RankState, RunStatus, logging_ranks, rank_states, run_status, world_size,
)

__all__ = ["RankState", "RunStatus", "describe_ranks", "logging_ranks", "rank_states",
           "run_status", "ranks_frame"]


def ranks_frame(path: str | os.PathLike[str], *, salvage: bool = False) -> Any:
    """Every logging rank's metrics in one long pandas frame with a ``rank``
    column: (rank, metric, step, time, value); a forked or branched rank's main
    history (expman.branches). Needs the [pandas] extra."""
    from expman import reader
    from expman._fsutil import read_json
    from expman.branches import is_branched, read_history
    from expman.series import need
    pd = need("pandas", "pandas")
    p = Path(os.fspath(path))
    try:
        run_meta = read_json(p / RUN_FILE)
    except (OSError, ValueError):
        run_meta = None
    if not isinstance(run_meta, dict):
        raise FileNotFoundError(2, f"not an expman run folder (no {RUN_FILE}): {p}", str(p))
    frames = []
    for r in logging_ranks(run_meta):
        if r and not (p / rank_file(RUN_FILE, r)).is_file():
            continue
        own = read_json(p / rank_file(RUN_FILE, r)) if r else {}
        meta = {**run_meta, **(own if isinstance(own, dict) else {})}
        if is_branched(p, meta, r):         # a fork or a branch: the rank's main history
            metrics = read_history(p, r, meta, salvage=salvage).metrics
        else:
            metrics, _ = reader.read_metrics(p / rank_file(METRICS_FILE, r), salvage=salvage)
        frame = metrics.to_pandas()
        frame.insert(0, "rank", pd.Series([r] * len(frame), dtype="int64"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def describe_ranks(spec: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The run's status over its ranks as plain data (what ``--json`` prints)."""
    from expman._fsutil import read_json
    from expman.layout import resolve_run

    path = resolve_run(spec, base)
    meta = read_json(path / RUN_FILE)
    if not isinstance(meta, dict):
        raise ValueError(f"{path / RUN_FILE} is not a JSON object")
    out = run_status(meta, path)
    return {"path": str(path), "world_size": world_size(meta), **out.to_dict(),
            "why": out.reason}
