"""Checking a run folder's files, and cutting a torn tail: ``verify_run``.

Reports every frame, torn tail, corrupt range, unreadable event line, artifact
whose bytes changed, and the loss the writer recorded. A repair only cuts what
a crash can leave (a torn last frame or line) and keeps the cut bytes beside
the file; it never touches damage in the middle, and never a live run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from expman import _core
from expman._fsutil import O_BINARY, O_NOFOLLOW, read_json, read_regular, regular_stat, sha256_file
from expman.errors import ExpmanError, ExpmanValueError
from expman.layout import (
    ARTIFACTS_DIR, EVENTS_FILE, METRICS_FILE, PARAMS_FILE, RUN_FILE, RUNNING, TORN_SUFFIX,
    effective_status, parse_event_lines, resolve_run,
)

__all__ = ["verify_run"]


def verify_run(path: str | os.PathLike[str], repair: bool = False, *,
               base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A report on one run's files (see docs/cli.md, ``expman verify --json``).

    Keys: ``path``, ``status``, ``run_json``, ``params_json``, ``metrics``
    (frames, rows, points, keys, bytes, ``torn_bytes``, ``corrupt_bytes``,
    ``corrupt_at``, ``unknown_points``, ``end``), ``events`` (events,
    bad_lines, torn_bytes), ``artifacts`` (name, ok, problem), ``data_loss``
    (what the writer recorded dropping), ``repaired`` (what a repair did),
    ``problems`` (one line each) and ``ok``. ``repair=True`` cuts a torn tail
    of metrics.bin and a torn last line of events.jsonl (the cut bytes go to
    ``<file>.torn``); it refuses a RUNNING run with ExpmanValueError.
    """
    run_dir = resolve_run(path, base_dir)
    problems: list[str] = []
    report: dict[str, Any] = {"path": str(run_dir)}
    meta: dict[str, Any] = {}
    try:
        loaded = read_json(run_dir / RUN_FILE)
        if not isinstance(loaded, dict):
            raise ValueError("not a JSON object")
        meta = loaded
        report["run_json"] = "ok"
    except (OSError, ValueError) as e:
        report["run_json"] = f"unreadable: {e}"
        problems.append(f"{RUN_FILE} unreadable")
    status = effective_status(meta, run_dir) if meta else "?"
    report["status"] = status
    report["experiment"] = str(meta.get("experiment", run_dir.parent.name))
    report["run_name"] = str(meta.get("run_name", run_dir.name))
    live = status == RUNNING
    if (run_dir / PARAMS_FILE).exists():
        try:
            read_json(run_dir / PARAMS_FILE)
            report["params_json"] = "ok"
        except (OSError, ValueError) as e:
            report["params_json"] = f"unreadable: {e}"
            problems.append(f"{PARAMS_FILE} unreadable")

    m = _check_metrics(run_dir / METRICS_FILE, problems)
    report["metrics"] = m
    ev, events = _check_events(run_dir / EVENTS_FILE)
    report["events"] = {k: v for k, v in ev.items() if k != "good_size"}
    if ev["bad_lines"]:
        problems.append(f"{EVENTS_FILE}: {ev['bad_lines']} unreadable lines")
    report["artifacts"] = _check_artifacts(run_dir, events, problems)

    loss = meta.get("data_loss") if isinstance(meta.get("data_loss"), dict) else None
    report["data_loss"] = loss
    if loss:
        problems.append(f"the writer recorded loss: {loss.get('rows_dropped', 0)} rows and "
                        f"{loss.get('events_dropped', 0)} events dropped, "
                        f"{loss.get('write_errors', 0)} failed writes"
                        + (f" ({loss['last_error']})" if loss.get("last_error") else ""))

    torn_m = 0 if live else m.get("torn_bytes", 0)
    torn_e = 0 if live else ev["torn_bytes"]
    repaired: list[str] = []
    if repair and live:
        raise ExpmanValueError(f"{run_dir.name} is RUNNING (its process is alive): refusing to "
                               "cut a file that is being written")
    if repair and torn_m:
        kept = _cut(run_dir / METRICS_FILE, m["end"])
        repaired.append(f"{METRICS_FILE}: cut {torn_m} torn bytes (kept in {kept.name})")
        torn_m = 0
    if repair and torn_e:
        kept = _cut(run_dir / EVENTS_FILE, ev["good_size"])
        repaired.append(f"{EVENTS_FILE}: cut a torn last line of {torn_e} bytes "
                        f"(kept in {kept.name})")
        torn_e = 0
    if torn_m:
        problems.append(f"{METRICS_FILE}: torn tail of {torn_m} bytes (--repair cuts it)")
    if torn_e:
        problems.append(f"{EVENTS_FILE}: torn last line of {torn_e} bytes (--repair cuts it)")
    report["repaired"] = repaired
    report["problems"] = problems
    report["ok"] = not problems
    return report


def _check_metrics(mpath: Path, problems: list[str]) -> dict[str, Any]:
    m: dict[str, Any] = {"present": os.path.lexists(mpath)}
    if not m["present"]:
        return m
    try:
        data = read_regular(mpath)
    except (OSError, ExpmanError) as e:
        m["error"] = str(e)
        problems.append(f"{METRICS_FILE}: {e}")
        return m
    m["bytes"] = len(data)
    try:
        _cols, keys, rep = _core.decode_metrics(data, salvage=True)
    except ExpmanError as e:
        m["error"] = str(e)
        problems.append(f"{METRICS_FILE}: {e}")
        return m
    m.update({k: rep[k] for k in ("frames", "rows", "points", "torn_bytes", "corrupt_bytes",
                                  "corrupt_at", "unknown_points", "end")})
    m["keys"] = len(keys)
    if rep["corrupt_bytes"]:
        problems.append(f"{METRICS_FILE}: {rep['corrupt_bytes']} bytes corrupt")
    if rep["unknown_points"]:
        problems.append(f"{METRICS_FILE}: {rep['unknown_points']} points of unknown metrics")
    return m


def _check_events(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """events.jsonl's integrity counts, and its complete events."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return {"present": False, "events": 0, "bad_lines": 0, "torn_bytes": 0}, []
    except (OSError, ExpmanError) as e:
        return {"present": True, "events": 0, "bad_lines": 0, "torn_bytes": 0,
                "error": str(e)}, []
    events, bad, used = parse_event_lines(data)
    return {"present": True, "events": len(events), "bad_lines": bad,
            "torn_bytes": len(data) - used, "good_size": used}, events


def _check_artifacts(run_dir: Path, events: list[dict[str, Any]],
                     problems: list[str]) -> list[dict[str, Any]]:
    """Every artifact the events record: present, of its size, with its sha256."""
    out = []
    root = run_dir / ARTIFACTS_DIR
    for art in (e for e in events if e.get("kind") == "artifact"):
        rel = str(art.get("path") or "")
        name = art.get("name")
        problem = None
        f = run_dir / rel
        try:
            if not rel or ".." in Path(rel).parts or Path(rel).is_absolute():
                problem = "recorded path is not inside the run folder"
            elif art.get("files") is not None:
                problem = _check_dir_artifact(f, art)
            else:
                st = regular_stat(f)
                if art.get("size") is not None and st.st_size != art["size"]:
                    problem = f"size {st.st_size}, recorded {art['size']}"
                elif art.get("sha256") and sha256_file(f) != art["sha256"]:
                    problem = "contents changed (sha256 differs from the recorded one)"
        except FileNotFoundError:
            problem = "missing"
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem is None and not root.exists():
            problem = "missing"
        out.append({"name": name, "path": rel, "ok": problem is None, "problem": problem})
        if problem:
            problems.append(f"artifact {name!r}: {problem}")
    return out


def _check_dir_artifact(folder: Path, art: dict[str, Any]) -> str | None:
    """A saved folder: every file of its manifest present with its sha256."""
    for entry in art.get("files") or []:
        f = folder / str(entry.get("path", ""))
        try:
            st = regular_stat(f)
        except FileNotFoundError:
            return f"{entry.get('path')} missing"
        if entry.get("size") is not None and st.st_size != entry["size"]:
            return f"{entry.get('path')}: size {st.st_size}, recorded {entry['size']}"
        if entry.get("sha256") and sha256_file(f) != entry["sha256"]:
            return f"{entry.get('path')}: contents changed"
    return None


def _cut(path: Path, keep: int) -> Path:
    """Cut path to ``keep`` bytes, saving what is cut beside it first (a repair can
    be undone). Neither the file nor the saved copy is reached through a link."""
    tail = read_regular(path, keep)
    dest = path.with_name(path.name + TORN_SUFFIX)
    i = 1
    while os.path.lexists(dest):
        i += 1
        dest = path.with_name(f"{path.name}{TORN_SUFFIX}{i}")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_BINARY, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(tail)
    fd = os.open(path, os.O_WRONLY | O_NOFOLLOW | O_BINARY)
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest

