"""The run-folder contract: every file name, status, heartbeat rule and JSON
spelling, in one place. Both sides import it; nothing else spells them.

A run folder is ``<base_dir>/<experiment>/<run_name>/`` (docs/format.md). This
module knows how to find run folders and how to tell a live run from a dead
one; it never decodes metrics and never imports the write side.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from expman.errors import ExpmanValueError, RunNotFoundError

# ---- file names -----------------------------------------------------------------------------
RUN_FILE = "run.json"            # identity, status, times, exit info, environment (atomic)
PARAMS_FILE = "params.json"      # merged params (atomic)
METRICS_FILE = "metrics.bin"     # append-only checksummed frames
EVENTS_FILE = "events.jsonl"     # append-only JSON lines
ARTIFACTS_DIR = "artifacts"      # saved files
SUMMARY_FILE = "summary.json"    # per-metric figures for listings (atomic; expman.summary)
TORN_SUFFIX = ".torn"            # verify --repair keeps a cut tail beside its file

# ---- statuses -------------------------------------------------------------------------------
RUNNING, FINISHED, FAILED, KILLED, CRASHED = "RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED"
STATUSES = (RUNNING, FINISHED, FAILED, KILLED, CRASHED)
FINAL_STATUSES = (FINISHED, FAILED, KILLED)      # what a writer may record at close
# CRASHED is never written: readers derive it (effective_status)

# ---- liveness -------------------------------------------------------------------------------
HEARTBEAT_INTERVAL = 10.0   # seconds; the writer touches metrics.bin at least this often
                            # (C keeps its own copy in exlog.c; tests check they agree)
SUMMARY_INTERVAL = 5.0      # seconds between summary.json refreshes while a run is open
STALE_AFTER = 6.0           # heartbeats missed before a RUNNING run on another host is CRASHED

# ---- base dir -------------------------------------------------------------------------------
DEFAULT_BASE_DIR = "./experiments"
BASE_DIR_ENV = "EXPMAN_DIR"


def base_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """One rule everywhere: an explicit argument, then $EXPMAN_DIR, then ./experiments."""
    chosen = explicit if explicit is not None else (os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR)
    return Path(os.fspath(chosen))


# ---- JSON spelling --------------------------------------------------------------------------
# JSON has no NaN or infinity: params, summaries and exports spell them as these strings.
NAN, POS_INF, NEG_INF = "NaN", "Infinity", "-Infinity"


def json_float(x: float) -> float | str:
    """x, or its string spelling when JSON cannot hold it."""
    if x != x:
        return NAN
    if x in (float("inf"), float("-inf")):
        return POS_INF if x > 0 else NEG_INF
    return x


# ---- events.jsonl: the torn-line rule ---------------------------------------------------------
MAX_EVENT_LINE = 1 << 20     # readers skip (and count) longer lines: a crafted file stays cheap


def parse_event_lines(data: bytes) -> tuple[list[dict[str, Any]], int, int]:
    """Events from whole lines of ``data``: ``(events, bad_lines, used_bytes)``.

    Only newline-terminated lines count; a last line without its newline is a
    write in progress (or torn by a crash) and is left for later (``used_bytes``
    stops before it). A line that is not a JSON object, or longer than
    MAX_EVENT_LINE, is counted in ``bad_lines`` and skipped.
    """
    import orjson
    end = data.rfind(b"\n") + 1
    events: list[dict[str, Any]] = []
    bad = 0
    for line in data[:end].split(b"\n"):
        if not line.strip():
            continue
        if len(line) > MAX_EVENT_LINE:
            bad += 1
            continue
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(ev, dict):
            events.append(ev)
        else:
            bad += 1
    return events, bad, end


# ---- finding run folders --------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def iter_run_dirs(base: Path, experiment: str | None = None) -> Iterator[Path]:
    """``base/<experiment>/<run>`` folders holding a run.json, sorted by name."""
    try:
        exp_dirs = sorted(base.iterdir())
    except OSError:
        return
    for exp_dir in exp_dirs:
        if (experiment and exp_dir.name != experiment) or not exp_dir.is_dir():
            continue
        try:
            runs = sorted(exp_dir.iterdir())
        except OSError:
            continue
        for run_dir in runs:
            if is_run_dir(run_dir):
                yield run_dir


def _newest(dirs: list[Path]) -> Path | None:
    """The run with the latest start time (run.json), falling back to its name."""
    from expman._fsutil import read_json

    def start(d: Path) -> tuple[float, str]:
        try:
            meta = read_json(d / RUN_FILE)
            t = meta.get("start_time") if isinstance(meta, dict) else None
            return (float(t) if isinstance(t, (int, float)) else 0.0, d.name)
        except (OSError, ValueError):
            return (0.0, d.name)
    return max(dirs, key=start) if dirs else None


def resolve_run(spec: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> Path:
    """A run folder from a path or a name under the base dir.

    Accepts a folder holding run.json; or, under ``base`` (see base_dir):
    ``experiment/run_name``, ``experiment/latest``, ``latest`` (newest of all),
    or a unique prefix of a run name, with or without its experiment.
    Raises RunNotFoundError (a FileNotFoundError) saying what was tried.
    """
    p = Path(os.fspath(spec))
    if is_run_dir(p):
        return p
    root = base_dir(base)
    text = os.fspath(spec)
    parts = [x for x in text.replace("\\", "/").split("/") if x]
    if any(x in (".", "..") for x in parts):
        raise ExpmanValueError(f"run spec {text!r}: '.' and '..' are not run names")
    if parts == ["latest"]:
        found = _newest(list(iter_run_dirs(root)))
        if found is None:
            raise RunNotFoundError(f"no runs under {root}")
        return found
    if len(parts) == 1 and (root / parts[0]).is_dir() and not is_run_dir(root / parts[0]):
        names = sorted(d.name for d in iter_run_dirs(root, parts[0]))
        hint = f" (it has {len(names)} runs, e.g. {parts[0]}/{names[-1]})" if names else ""
        raise RunNotFoundError(f"{text!r} is an experiment; name a run: {parts[0]}/latest or "
                               f"{parts[0]}/RUN_NAME{hint}")
    if len(parts) == 1:                     # a run name alone, in any experiment
        matches = [d for d in iter_run_dirs(root) if d.name.startswith(parts[0])]
        exact = [d for d in matches if d.name == parts[0]]
        if len(exact) == 1 or len(matches) == 1:
            return (exact or matches)[0]
        if matches:
            raise RunNotFoundError(f"{text!r} is ambiguous: " + _names(matches))
    if len(parts) == 2:
        exp, name = parts
        if name == "latest":
            found = _newest(list(iter_run_dirs(root, exp)))
            if found is not None:
                return found
        elif is_run_dir(root / exp / name):
            return root / exp / name
        else:
            matches = [d for d in iter_run_dirs(root, exp) if d.name.startswith(name)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise RunNotFoundError(f"{text!r} is ambiguous: " + _names(matches))
    raise RunNotFoundError(f"no run {text!r}: not a run folder (with {RUN_FILE}), "
                           f"nor experiment/run_name under {root}")


def _names(dirs: list[Path]) -> str:
    return ", ".join(f"{d.parent.name}/{d.name}" for d in dirs[:5]) + (" ..." if len(dirs) > 5 else "")


# ---- liveness: the CRASHED rule -------------------------------------------------------------


def hostname() -> str:
    """This machine's name as run.json records it."""
    import socket
    try:
        return socket.gethostname()
    except OSError:
        return "unknown"


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


def heartbeat(path: Path) -> float | None:
    """Last sign of life: the newest mtime of the files the writer touches."""
    times = []
    for name in (METRICS_FILE, EVENTS_FILE, RUN_FILE):
        try:
            times.append(os.stat(path / name).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def effective_status(meta: dict[str, Any], path: Path) -> str:
    """The recorded status, except a RUNNING run whose process is gone is CRASHED:
    same host and dead pid, or (any host) no heartbeat for STALE_AFTER intervals."""
    status = meta.get("status", RUNNING)
    if status not in STATUSES:
        status = RUNNING
    if status != RUNNING:
        return str(status)
    pid, host = meta.get("pid"), meta.get("host")
    if host == hostname() and isinstance(pid, int):
        if pid == os.getpid():
            return RUNNING
        if not pid_alive(pid):
            return _confirm_crash(path)
    beat = heartbeat(path)
    interval = _number(meta.get("heartbeat_interval"), HEARTBEAT_INTERVAL)
    if beat is not None and time.time() - beat > STALE_AFTER * max(interval, 0.001):
        return _confirm_crash(path)
    return RUNNING


def _confirm_crash(path: Path) -> str:
    """``meta`` may predate a clean close: the process may have written its final
    status and exited since it was read. Read run.json again before saying CRASHED."""
    from expman._fsutil import read_json
    try:
        fresh = read_json(path / RUN_FILE)
    except (OSError, ValueError):
        return CRASHED
    status = fresh.get("status", RUNNING) if isinstance(fresh, dict) else RUNNING
    return CRASHED if status not in FINAL_STATUSES else str(status)
