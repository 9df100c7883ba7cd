"""The run-folder contract: every file name, status, heartbeat rule and JSON
spelling, in one place. Both sides import it; nothing else spells them.

A run folder is ``<base_dir>/<experiment>/<run_name>/`` (docs/format.md). This
module knows how to find run folders; it is a leaf (it imports no other expman
module but ``errors``). Telling a live run from a dead one is ``expman.liveness``.
"""

from __future__ import annotations

import os
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
OUTPUT_FILE = "output.log"       # stdout/stderr tee, with Experiment(capture_output=True)
MEDIA_DIR = "media"              # under ARTIFACTS_DIR: log_image's PNGs (docs/format.md, media)
SUMMARY_FILE = "summary.json"    # per-metric figures for listings (atomic; expman.summary)
TORN_SUFFIX = ".torn"            # verify --repair keeps a cut tail beside its file
MANIFEST_SUFFIX = ".manifest.json"   # a folder artifact's list of files and hashes, beside it
MAX_MANIFEST_BYTES = 64 << 20    # readers refuse a larger (crafted) manifest
BRANCHES_FILE = "branches.jsonl"  # one line per branch a rewind or a resume opened (expman.branches)
MAX_LINEAGE = 64                 # forks of forks deeper than this are not followed (a crafted chain)
LOSS_FILE = "loss.json"          # the writer's loss record, rewritten in place (expman.loss)
LOCK_FILE = "writer.lock"        # the writer's OS lock, held for the run's life (expman.runlock)
ALERTS_FILE = "alerts.jsonl"     # alerts of a watcher in another process (expman watch)
INDEX_FILE = ".expman-index"     # in the base dir: the listing cache (expman.index), never the truth


def rank_file(name: str, rank: int | None) -> str:
    """A file's name for one rank of a multi-rank run: rank 0 (and a run without
    ranks) uses the plain name; rank r > 0 puts ``.rank<r>`` before the suffix
    (metrics.rank1.bin, events.rank1.jsonl, run.rank1.json, writer.rank1.lock)."""
    if not rank:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.rank{rank}.{suffix}"


def is_machine_local(name: str) -> bool:
    """Files that mean something only on the machine that wrote them (the writer
    locks): never copied by sync or export."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem.split('.rank')[0]}.{suffix}" == LOCK_FILE


# ---- statuses -------------------------------------------------------------------------------
RUNNING, FINISHED, FAILED, KILLED, CRASHED = "RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED"
STATUSES = (RUNNING, FINISHED, FAILED, KILLED, CRASHED)
FINAL_STATUSES = (FINISHED, FAILED, KILLED)      # what a writer may record at close
# CRASHED is never written: readers derive it (effective_status). DAMAGED is what a
# listing shows for a folder whose run.json or params.json cannot be read.
DAMAGED = "DAMAGED"

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


_PLAIN = frozenset((str, int, bool, type(None)))


def jsonable(x: Any) -> Any:
    """A copy of x that JSON can hold: non-finite floats spelled as above, paths as str."""
    t = type(x)
    if t in _PLAIN:            # most of a listing: returned before the isinstance chain
        return x
    if t is float:
        return json_float(x)
    if isinstance(x, float):
        return json_float(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
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
    for path, _exp, _run, _linked in scan_run_dirs(base, experiment):
        if os.path.isfile(os.path.join(path, RUN_FILE)):
            yield Path(path)


def _sorted_entries(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        entries = list(it)
    entries.sort(key=lambda e: os.path.normcase(e.name))     # Path's order
    return entries


def scan_run_dirs(base: str | os.PathLike[str], experiment: str | None = None
                  ) -> Iterator[tuple[str, str, str, bool]]:
    """The folders that may be runs, ``base/<experiment>/<run>``, in iter_run_dirs'
    order, as ``(path, experiment, run, linked)`` without a system call per run
    (the directory entries say what is a folder). ``linked``: the experiment or
    the run folder is a symlink (it may lead outside ``base``). Whether a folder
    holds a run.json is for the caller to find out; a listing opens it anyway."""
    try:
        exp_entries = _sorted_entries(base)
    except OSError:
        return
    for exp in exp_entries:
        try:
            if (experiment and exp.name != experiment) or not exp.is_dir():
                continue
            exp_linked = exp.is_symlink()
            runs = _sorted_entries(exp.path)
        except OSError:
            continue
        for run in runs:
            try:
                if not run.is_dir():
                    continue
                linked = exp_linked or run.is_symlink()
            except OSError:
                continue
            yield run.path, exp.name, run.name, linked


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
    raise RunNotFoundError(f"no run {text!r}: no {RUN_FILE} in that folder, and no run of "
                           f"that name under {root}")


def _names(dirs: list[Path]) -> str:
    return ", ".join(f"{d.parent.name}/{d.name}" for d in dirs[:5]) + (" ..." if len(dirs) > 5 else "")


# ---- the machine a run.json names ------------------------------------------------------------


HOST_ENV = "EXPMAN_HOST"


def hostname() -> str:
    """This machine's name as run.json records it and liveness compares it:
    ``$EXPMAN_HOST`` when set (containers that all share one hostname on
    several machines; tests that play two hosts over one folder), else the
    system's."""
    chosen = os.environ.get(HOST_ENV)
    if chosen:
        return chosen
    import socket
    try:
        return socket.gethostname()
    except OSError:
        return "unknown"


# ---- forks: the parent a run.json names ------------------------------------------------------
FORK = "fork"      # run.json of a forked run: {"parent": "exp/run", "parent_uuid": ..., "step": N}


def fork_parent(meta: dict[str, Any]) -> str | None:
    """The ``experiment/run_name`` a run.json's fork record names as the run's parent
    (None: not a fork, or a record that does not say a plain ``exp/run``: surfaces
    that only list or guard a lineage never trust more than that)."""
    record = meta.get(FORK)
    parent = record.get("parent") if isinstance(record, dict) else None
    if not isinstance(parent, str):
        return None
    parts = parent.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    return parent
