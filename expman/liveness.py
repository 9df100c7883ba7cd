"""Whether a run is alive, and its status: the CRASHED rule and the status of a
multi-rank run, above the contract (``expman.layout`` spells the names; this
module decides what the files mean).

One writer stream (rank 0's run.json, or rank r's run.rank<r>.json) is RUNNING
while its writer's OS lock is held (``expman.runlock``), else CRASHED unless a
final status was recorded; without a lock file, a dead pid on this host or a
stale heartbeat decide (``stream_status``).

A multi-rank run's status, from every logging rank's own status:
RUNNING while any rank is; then CRASHED if any rank died, else FAILED if any
failed, else KILLED if any was killed, else FINISHED. ``run_status`` names the
rank behind it and why (``RunStatus``). A rank that never opened the run is
listed with status None and does not change the run's status. A rank that dies
while the others still run leaves the run RUNNING (its data still grows and a
follower must not stop) and is named at once in ``RunStatus.ranks``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman.layout import (
    CRASHED, EVENTS_FILE, FAILED, FINAL_STATUSES, FINISHED, HEARTBEAT_INTERVAL, KILLED,
    METRICS_FILE, RUN_FILE, RUNNING, STALE_AFTER, STATUSES, hostname, parse_event_lines,
    rank_file,
)

__all__ = ["RunStatus", "RankState", "run_status", "effective_status", "stream_status",
           "rank_states", "logging_ranks", "world_size", "heartbeat", "pid_alive",
           "is_locked", "final_status_event", "MAX_WORLD_SIZE", "MAX_HEARTBEAT_INTERVAL"]

MAX_WORLD_SIZE = 65536
"""The largest world size a reader believes: run.json is a file anyone can edit,
and a reader must never loop over (or allocate for) 10**18 ranks."""
MAX_HEARTBEAT_INTERVAL = 86400.0
"""A longer heartbeat interval in run.json is not believed (a day is used)."""


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
class RunStatus:
    """The run's status, the rank that decided it and why (``rank`` and ``reason``
    are None when the run is RUNNING or FINISHED), and every logging rank's state.
    A single-process run is rank 0 of a world of one."""

    status: str
    rank: int | None
    reason: str | None
    ranks: list[RankState] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "rank": self.rank, "reason": self.reason,
                "ranks": [{"rank": s.rank, "status": s.status, "pid": s.pid, "host": s.host,
                           "why": s.why} for s in self.ranks]}


def world_size(meta: dict[str, Any]) -> int:
    """run.json's world size (1 when absent or not a positive int). A size above
    MAX_WORLD_SIZE is crafted: ``world_size_error`` says so and readers show the
    run DAMAGED; here it counts as 1, so nothing loops over it."""
    w = meta.get("world_size")
    ok = isinstance(w, int) and not isinstance(w, bool) and 0 < w <= MAX_WORLD_SIZE
    return w if ok else 1  # type: ignore[return-value]


def world_size_error(meta: dict[str, Any]) -> str | None:
    """Why run.json's world size cannot be believed, or None."""
    w = meta.get("world_size")
    if isinstance(w, int) and not isinstance(w, bool) and w > MAX_WORLD_SIZE:
        return f"{RUN_FILE}: world_size {w} is beyond the {MAX_WORLD_SIZE} ranks a reader believes"
    return None


def logging_ranks(meta: dict[str, Any]) -> list[int]:
    """The ranks that write streams (run.json's ``ranks``, else every rank)."""
    world = world_size(meta)
    chosen = meta.get("ranks")
    if isinstance(chosen, list) and all(isinstance(r, int) and not isinstance(r, bool)
                                        and 0 <= r < world for r in chosen):
        return sorted(set(chosen))
    return list(range(world))


def rank_states(meta: dict[str, Any], path: Path) -> list[RankState]:
    """Every logging rank's state; ``meta`` is run.json (rank 0's)."""
    out = []
    for r in logging_ranks(meta):
        m = meta if r == 0 else _read_meta(path / rank_file(RUN_FILE, r))
        if m is None and r and world_size(meta) > 64 and not os.path.lexists(
                path / rank_file(RUN_FILE, r)):
            out.append(RankState(r, None))      # one lstat, no open, per absent rank
            continue
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


def run_status(meta: dict[str, Any], path: str | os.PathLike[str]) -> RunStatus:
    """The whole run's status over its ranks (module doc), with which rank and why;
    ``meta`` is run.json (rank 0's). The one place a run's status is decided."""
    p = Path(os.fspath(path))
    states = rank_states(meta, p)
    seen = [s for s in states if s.status is not None]
    for status in _PRIORITY:
        culprits = [s for s in seen if s.status == status]
        if culprits:
            if status in (RUNNING, FINISHED):
                return RunStatus(status, None, None, states)
            return RunStatus(status, culprits[0].rank,
                             "; ".join(s.why for s in culprits), states)
    return RunStatus(RUNNING, None, None, states)     # no rank has opened it yet




def _read_meta(path: Path) -> dict[str, Any] | None:
    from expman._fsutil import read_json
    try:
        meta = read_json(path)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


# ---- one writer stream: the CRASHED rule -------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (pids <= 0 are never a process)."""
    if not isinstance(pid, int) or pid <= 0 or pid > 0x7FFFFFFF:
        return False
    if sys.platform == "win32":
        import ctypes
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def heartbeat(path: Path, rank: int = 0) -> float | None:
    """Last sign of life: the newest mtime of the files the writer (of ``rank``) touches."""
    times = []
    for name in (METRICS_FILE, EVENTS_FILE, RUN_FILE):
        try:
            times.append(os.stat(path / rank_file(name, rank)).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def _interval(value: Any) -> float:
    """run.json's heartbeat interval, bounded: a crafted 1e308 or -1 is not believed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return min(max(float(value), 0.001), MAX_HEARTBEAT_INTERVAL)
    return HEARTBEAT_INTERVAL


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """True while any writer (any rank) holds its lock in ``run_dir``: the run is
    alive whatever its files say, and ``clean`` must never delete it."""
    from expman.runlock import is_locked as held
    return held(run_dir)


def effective_status(meta: dict[str, Any], path: Path) -> str:
    """The recorded status, except a RUNNING run whose writer is gone is CRASHED.

    The witness is the writer's OS lock (expman.runlock): while it is held the run
    is alive, however stale its heartbeat (a stopped or suspended process); once
    released without a final status, it crashed. Only without a lock file (runs
    written before locks, filesystems without them) or where locks are
    unsupported: same host and dead pid, or (any host) no heartbeat for
    STALE_AFTER intervals. ``meta`` of a multi-rank run (``world_size`` > 1 in
    run.json) gives the whole run's status (``run_status``).
    """
    if world_size(meta) > 1 and not meta.get("rank"):
        return run_status(meta, path).status
    rank = meta.get("rank")
    return stream_status(meta, path, rank if isinstance(rank, int) and rank > 0 else 0)


def stream_status(meta: dict[str, Any], path: Path, rank: int = 0) -> str:
    """effective_status of one writer stream (``meta``: its run.json or run.rank<r>.json)."""
    status = meta.get("status", RUNNING)
    if status not in STATUSES:
        status = RUNNING
    if status != RUNNING:
        return str(status)
    from expman.runlock import probe
    locked = probe(path, rank)
    pid, host = meta.get("pid"), meta.get("host")
    if locked:
        return RUNNING
    if locked is False and host == hostname():
        return _confirm_crash(path, rank)
    # a free lock of a writer on another host is trusted only with a stale heartbeat:
    # some shared filesystems keep locks local to each client (NFS local_lock)
    if host == hostname() and isinstance(pid, int):
        if pid == os.getpid():
            return RUNNING
        if not pid_alive(pid):
            return _confirm_crash(path, rank)
    beat = heartbeat(path, rank)
    interval = _interval(meta.get("heartbeat_interval"))
    if beat is not None and time.time() - beat > STALE_AFTER * interval:
        return _confirm_crash(path, rank)
    return RUNNING


def _confirm_crash(path: Path, rank: int = 0) -> str:
    """``meta`` may predate a clean close: the process may have written its final
    status and exited since it was read. Read run.json again, then the end of
    events.jsonl (a final status event written before run.json could be replaced
    is the truth), before saying CRASHED."""
    from expman._fsutil import read_json
    try:
        fresh = read_json(path / rank_file(RUN_FILE, rank))
        status = fresh.get("status", RUNNING) if isinstance(fresh, dict) else RUNNING
    except (OSError, ValueError):
        status = RUNNING
    if status in FINAL_STATUSES:
        return str(status)
    return final_status_event(path, rank) or CRASHED


def final_status_event(path: Path, rank: int = 0, window: int = 1 << 16) -> str | None:
    """The status of a final status event at the end of a stream's events, if any."""
    from expman._fsutil import read_regular, regular_stat
    ev_path = path / rank_file(EVENTS_FILE, rank)
    try:
        size = regular_stat(ev_path).st_size
        data = read_regular(ev_path, max(0, size - window))
    except (OSError, ValueError):
        return None
    events, _bad, _used = parse_event_lines(data[data.find(b"\n") + 1:] if size > window else data)
    for ev in reversed(events):
        if ev.get("kind") == "status" and ev.get("status") in FINAL_STATUSES:
            return str(ev["status"])
        if ev.get("kind") == "status":
            return None
    return None
