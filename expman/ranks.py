"""Reading a multi-rank run: each rank's status, the whole run's status, and
each rank's streams.

Rank 0 writes ``run.json`` (with ``world_size``), ``params.json``,
``metrics.bin`` and ``events.jsonl``; rank r > 0 writes ``run.rank<r>.json``,
``metrics.rank<r>.bin`` and ``events.rank<r>.jsonl`` (names: layout.rank_file),
each under its own writer lock. So the plain files are rank 0's view, and a
reader that knows nothing of ranks reads rank 0.

The run's status, from every logging rank's own status (lock-witnessed):
RUNNING while any rank is; then CRASHED if any rank died, else FAILED if any
failed, else KILLED if any was killed, else FINISHED. ``run_outcome`` names
the rank behind it and why. A rank that never opened the run is listed with
status None and does not change the run's status. A rank that dies while the
others still run leaves the run RUNNING (its data still grows and a follower
must not stop) and is named at once in ``run_outcome(...).ranks``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman.errors import ExpmanValueError
from expman.layout import (
    CRASHED, EVENTS_FILE, FAILED, FINISHED, KILLED, METRICS_FILE, PARAMS_FILE, RUN_FILE,
    RUNNING, rank_file, stream_status,
)

__all__ = ["RankState", "Outcome", "describe_ranks", "logging_ranks", "rank_states", "run_outcome", "open_rank",
           "ranks_frame"]

_PRIORITY = (RUNNING, CRASHED, FAILED, KILLED, FINISHED)


@dataclass(frozen=True)
class RankState:
    """One rank's writer: its effective status, process and exit record."""

    rank: int
    status: str | None             # None: this rank never opened the run
    pid: int | None = None
    host: str | None = None
    exit: dict[str, Any] | None = None

    @property
    def why(self) -> str:
        """One line a person can act on."""
        who = f"rank {self.rank}" + (f" (pid {self.pid} on {self.host})" if self.pid else "")
        if self.status is None:
            return f"rank {self.rank} never opened the run"
        if self.status == CRASHED:
            return f"{who} died without closing the run (SIGKILL, OOM killer or power loss)"
        if self.status in (FAILED, KILLED) and self.exit:
            e = self.exit
            if e.get("reason") == "exception":
                return f"{who} {self.status}: {e.get('type')}: {e.get('message')} at {e.get('location')}"
            if e.get("reason") == "signal":
                return f"{who} {self.status}: {e.get('signal')}"
            if e.get("reason") == "exit":
                return f"{who} {self.status}: exit code {e.get('code')}"
            return f"{who} {self.status}: {e.get('reason')}"
        return f"{who} {self.status}"


@dataclass(frozen=True)
class Outcome:
    """The run's status over all ranks, and the rank that decided it (None when
    the run is RUNNING or FINISHED)."""

    status: str
    rank: int | None
    why: str | None
    ranks: list[RankState] = field(default_factory=list)


def _read_meta(path: Path) -> dict[str, Any] | None:
    from expman._fsutil import read_json
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def world_size(meta: dict[str, Any]) -> int:
    w = meta.get("world_size")
    return w if isinstance(w, int) and not isinstance(w, bool) and w > 0 else 1


def logging_ranks(meta: dict[str, Any]) -> list[int]:
    """The ranks that write streams (run.json's ``ranks``, else every rank)."""
    world = world_size(meta)
    chosen = meta.get("ranks")
    if isinstance(chosen, list) and all(isinstance(r, int) and 0 <= r < world for r in chosen):
        return sorted(set(chosen))
    return list(range(world))


def rank_states(meta: dict[str, Any], path: Path) -> list[RankState]:
    """Every logging rank's state; ``meta`` is run.json (rank 0's)."""
    out = []
    for r in logging_ranks(meta):
        m = meta if r == 0 else _read_meta(path / rank_file(RUN_FILE, r))
        if m is None:
            out.append(RankState(r, None))
            continue
        status = stream_status(m, path, r)
        pid = m.get("pid") if isinstance(m.get("pid"), int) else None
        host = m.get("host") if isinstance(m.get("host"), str) else None
        exit_info = m.get("exit") if isinstance(m.get("exit"), dict) else None
        if status != m.get("status"):
            fresh = _read_meta(path / rank_file(RUN_FILE, r))   # closed since it was read
            exit_info = (fresh or {}).get("exit") if status != CRASHED else None
        out.append(RankState(r, status, pid, host, exit_info))
    return out


def run_outcome(meta: dict[str, Any], path: str | os.PathLike[str]) -> Outcome:
    """The whole run's status over its ranks (module doc), with which rank and why."""
    p = Path(os.fspath(path))
    states = rank_states(meta, p)
    seen = [s for s in states if s.status is not None]
    for status in _PRIORITY:
        culprits = [s for s in seen if s.status == status]
        if culprits:
            if status in (RUNNING, FINISHED):
                return Outcome(status, None, None, states)
            return Outcome(status, culprits[0].rank,
                           "; ".join(s.why for s in culprits), states)
    return Outcome(RUNNING, None, None, states)     # no rank has opened it yet


def open_rank(path: str | os.PathLike[str], rank: int, *, salvage: bool = False,
              duplicates: str | None = None) -> Any:
    """One rank's view of a run: its metrics, events and meta (run.rank<r>.json
    over run.json), the run's params. Rank 0's view is ``open_run(path)`` itself.
    The Run it returns cannot ``refresh()``; open it again instead."""
    from expman import reader
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ExpmanValueError(f"rank must be a non-negative int, got {rank!r}")
    if rank == 0:
        return reader.open_run(path, salvage=salvage, duplicates=duplicates)
    p = Path(os.fspath(path))
    run_meta = _read_meta(p / RUN_FILE) or {}      # rank 0 may not have opened it yet
    own = _read_meta(p / rank_file(RUN_FILE, rank))
    if own is None:
        if not run_meta:
            raise FileNotFoundError(2, f"not an expman run folder (no {RUN_FILE}, no "
                                       f"{rank_file(RUN_FILE, rank)}): {p}", str(p))
        raise ExpmanValueError(
            f"rank {rank}: no {rank_file(RUN_FILE, rank)} in {p} (the run has "
            f"{world_size(run_meta)} ranks; logging ranks {logging_ranks(run_meta)})")
    meta = {**run_meta, **own}
    params = _read_meta(p / PARAMS_FILE) or {}
    metrics, report = reader.read_metrics(p / rank_file(METRICS_FILE, rank), salvage=salvage)
    if duplicates is not None:
        metrics = metrics.reduce(duplicates)
    events = _read_events(p / rank_file(EVENTS_FILE, rank))
    from expman.loss import recorded_loss
    return reader.Run(p, meta, params, events, metrics,
                      {**report, "data_loss": recorded_loss(p, rank, own)})


def ranks_frame(path: str | os.PathLike[str], *, salvage: bool = False) -> Any:
    """Every logging rank's metrics in one long pandas frame with a ``rank``
    column: (rank, metric, step, time, value). Needs the [pandas] extra."""
    from expman import reader
    from expman.series import need
    pd = need("pandas", "pandas")
    p = Path(os.fspath(path))
    run_meta = _read_meta(p / RUN_FILE)
    if run_meta is None:
        raise FileNotFoundError(2, f"not an expman run folder (no {RUN_FILE}): {p}", str(p))
    frames = []
    for r in logging_ranks(run_meta):
        if r and not (p / rank_file(RUN_FILE, r)).is_file():
            continue
        metrics, _ = reader.read_metrics(p / rank_file(METRICS_FILE, r), salvage=salvage)
        frame = metrics.to_pandas()
        frame.insert(0, "rank", pd.Series([r] * len(frame), dtype="int64"))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _read_events(path: Path) -> list[dict[str, Any]]:
    """A stream's whole event lines (a torn last line is left out)."""
    from expman._fsutil import read_regular
    from expman.layout import parse_event_lines
    try:
        return parse_event_lines(read_regular(path))[0]
    except FileNotFoundError:
        return []


def describe_ranks(spec: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The run's status over its ranks as plain data (what ``--json`` prints)."""
    from expman._fsutil import read_json
    from expman.layout import resolve_run

    path = resolve_run(spec, base)
    meta = read_json(path / RUN_FILE)
    if not isinstance(meta, dict):
        raise ValueError(f"{path / RUN_FILE} is not a JSON object")
    out = run_outcome(meta, path) if world_size(meta) > 1 else None
    if out is None:
        from expman.layout import effective_status
        status = effective_status(meta, path)
        state = RankState(0, status, meta.get("pid"), meta.get("host"), meta.get("exit"))
        states, rank, why = [state], None, None
        if status not in (RUNNING, FINISHED):
            rank, why = 0, state.why
    else:
        status, states, rank, why = out.status, out.ranks, out.rank, out.why
    return {"path": str(path), "status": status, "world_size": world_size(meta), "rank": rank,
            "why": why,
            "ranks": [{"rank": s.rank, "status": s.status, "pid": s.pid, "host": s.host,
                       "why": s.why} for s in states]}
