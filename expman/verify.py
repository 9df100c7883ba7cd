"""Checking a run folder's files, and cutting a torn tail: ``verify_run``.

Reports every frame, torn tail, corrupt range, unreadable event line, artifact
whose bytes changed, and the loss the writer recorded. A repair only cuts what
a crash can leave (a torn last frame or line) and keeps the cut bytes beside
the file; it never touches damage in the middle, and never a live run.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expman import _core
from expman._fsutil import open_nofollow, read_json, read_regular, regular_stat, sha256_file
from expman.errors import ExpmanError, ExpmanValueError
from expman.loss import run_loss
from expman.layout import (
    ARTIFACTS_DIR, MAX_MANIFEST_BYTES, EVENTS_FILE, METRICS_FILE, PARAMS_FILE, RUN_FILE, RUNNING, TORN_SUFFIX,
    effective_status, parse_event_lines, resolve_run,
)

__all__ = ["verify_run", "verify_artifacts"]


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

    loss = run_loss(run_dir, meta)      # run.json's, or the record a full disk left
    report["data_loss"] = loss
    if loss:
        problems.append(f"the writer recorded loss: {loss.get('rows_dropped', 0)} rows and "
                        f"{loss.get('events_dropped', 0)} events dropped, "
                        f"{loss.get('write_errors', 0)} failed writes"
                        + (f" ({loss['last_error']})" if loss.get("last_error") else "")
                        + (f"; its loss record is unreadable: {loss['record_unreadable']}"
                           if loss.get("record_unreadable") else ""))

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
    """Every artifact the events record, with what is wrong with it (if anything)."""
    found = verify_artifacts(run_dir, events)
    out = []
    for ev in events:
        if ev.get("kind") != "artifact":
            continue
        mine = [p for p in found if p["name"] == ev.get("name") and (
            p["path"] == ev.get("path") or str(p["path"] or "").startswith(f"{ev.get('path')}/"))]
        problem = "; ".join(f"{p['problem']}: {p['detail']}" for p in mine) or None
        out.append({"name": ev.get("name"), "path": ev.get("path"), "ok": problem is None,
                    "problem": problem})
        if problem:
            problems.append(f"artifact {ev.get('name')!r}: {problem}")
    return out


# ---- artifacts: sizes and sha256 against the recorded events ----------------------------------


def verify_artifacts(run_dir: str | os.PathLike[str],
                     events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check every recorded artifact against the bytes on disk: size AND sha256;
    for folders, the manifest's own hash, then every file it lists (and no others).

    Returns one dict per problem: ``{"name", "path", "problem", "detail"}`` with
    ``problem`` one of ``missing``, ``not_regular``, ``unsafe_path``, ``size``,
    ``sha256``, ``manifest``, ``extra_file``, ``bad_record``. Never follows a
    link; never reads outside ``run_dir/artifacts``.
    """
    root = Path(os.fspath(run_dir))
    problems: list[dict[str, Any]] = []
    for ev in events:
        if not isinstance(ev, dict) or ev.get("kind") != "artifact":
            continue
        name = ev.get("name")

        def problem(kind: str, detail: str, path: object = ev.get("path"),
                    name: object = name) -> None:
            problems.append({"name": name, "path": path, "problem": kind, "detail": detail})

        rel = ev.get("path")
        target = _safe_target(root, rel)
        if target is None:
            problem("unsafe_path", f"recorded path {rel!r} is not inside {ARTIFACTS_DIR}/")
            continue
        if ev.get("type") == "dir":
            _verify_dir(root, target, ev, problem)
            continue
        size, sha = ev.get("size"), ev.get("sha256")
        if not isinstance(size, int) or not isinstance(sha, str):
            problem("bad_record", "the event lacks an integer size or a sha256")
            continue
        _verify_file(target, size, sha, problem)
    return problems


def _safe_target(root: Path, rel: object) -> Path | None:
    if not isinstance(rel, str) or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] != ARTIFACTS_DIR or any(p in ("", ".", "..") for p in parts):
        return None
    return root.joinpath(*parts)


def _verify_file(path: Path, size: int, sha: str, problem: Callable[[str, str], None]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        problem("missing", f"{path} is missing")
        return
    if not stat.S_ISREG(st.st_mode):
        problem("not_regular", f"{path} is not a regular file (a link, folder or device)")
        return
    if st.st_size != size:
        problem("size", f"{path} has {st.st_size} bytes, {size} recorded")
        return
    try:
        found = sha256_file(path)
    except OSError as e:
        problem("not_regular", f"{path}: {e}")
        return
    if found != sha:
        problem("sha256", f"{path}: sha256 {found}, {sha} recorded")


def _verify_dir(root: Path, target: Path, ev: dict[str, Any],
                problem: Callable[..., None]) -> None:
    import orjson
    side = _safe_target(root, ev.get("manifest"))
    sha = ev.get("sha256")
    if side is None or not isinstance(sha, str):
        problem("bad_record", "the event lacks a manifest path inside artifacts/ or its sha256")
        return
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        problem("missing", f"{target} is missing")
        return
    if not stat.S_ISDIR(st.st_mode):
        problem("not_regular", f"{target} is not a folder (a link or a file)")
        return
    try:
        regular_stat(side)
        body = read_regular(side)
    except FileNotFoundError:
        problem("manifest", f"the manifest {side} is missing")
        return
    except (OSError, ValueError) as e:
        problem("manifest", f"the manifest {side} cannot be read: {e}")
        return
    import hashlib
    if len(body) > MAX_MANIFEST_BYTES or hashlib.sha256(body).hexdigest() != sha:
        problem("manifest", f"the manifest {side} does not match its recorded sha256")
        return
    try:
        entries = orjson.loads(body)["files"]
        listed = {e["path"]: (int(e["size"]), str(e["sha256"])) for e in entries}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        problem("manifest", f"the manifest {side} is not a list of files")
        return
    for rel, (size, fsha) in sorted(listed.items()):
        path = _safe_target(root, f"{_rel_of(root, target)}/{rel}")
        if path is None:
            problem("unsafe_path", f"manifest entry {rel!r} leaves the folder")
            continue
        _verify_file(path, size, fsha, _with_path(problem, _rel_of(root, path)))
    for top, dirs, names in os.walk(target, followlinks=False):
        for n in names:
            rel = (Path(top) / n).relative_to(target).as_posix()
            if rel not in listed:
                problem("extra_file", f"{target / rel} is not in the manifest",
                        _rel_of(root, Path(top) / n))


def _with_path(problem: Callable[..., None], path: str) -> Callable[[str, str], None]:
    """problem() reporting a file inside a folder artifact under the file's own path."""
    return lambda kind, detail: problem(kind, detail, path)


def _rel_of(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _cut(path: Path, keep: int) -> Path:
    """Cut path to ``keep`` bytes, saving what is cut beside it first (a repair can
    be undone). Neither the file nor the saved copy is reached through a link."""
    tail = read_regular(path, keep)
    dest = path.with_name(path.name + TORN_SUFFIX)
    i = 1
    while os.path.lexists(dest):
        i += 1
        dest = path.with_name(f"{path.name}{TORN_SUFFIX}{i}")
    with os.fdopen(open_nofollow(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
        f.write(tail)
    fd = open_nofollow(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest

