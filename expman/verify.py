"""Checking a run folder's files, and cutting a torn tail: ``verify_run``.

Reports every frame, torn tail, corrupt range, unreadable event line, artifact
whose bytes changed, difference between summary.json and the data, and the
loss the writer recorded, for every rank's streams and records. A repair only
cuts what a crash can leave (a torn last frame or line of a stream whose writer
did not close it) and keeps the cut bytes beside the file; it never touches
damage, and never a live run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dataclasses import asdict

from expman import _core
from expman.branches import is_branched, read_history, read_lines
from expman._fsutil import open_nofollow, read_json, read_regular
from expman.errors import ExpmanError, ExpmanValueError
from expman.loss import recorded_loss
from expman.layout import (
    EVENTS_FILE, FINAL_STATUSES, METRICS_FILE, PARAMS_FILE, RUN_FILE, RUNNING, SUMMARY_FILE,
    TORN_SUFFIX, parse_event_lines, rank_file, resolve_run,
)
from expman.liveness import effective_status, logging_ranks, stream_status, world_size_error
from expman.readmodel import (
    SUMMARY_FIELDS, MetricSummary, artifact_states, float_bits, settle_torn_tail,
    verify_artifacts,
)

__all__ = ["verify_run", "verify_artifacts"]     # verify_artifacts: the read model's


def verify_run(path: str | os.PathLike[str], repair: bool = False, *,
               base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A report on one run's files (see docs/cli.md, ``expman verify --json``).

    Keys: ``path``, ``status``, ``run_json``, ``params_json``, ``metrics``
    (frames, rows, points, keys, bytes, ``torn_bytes``, ``corrupt_bytes``,
    ``corrupt_at``, ``unknown_points``, ``end``), ``branches`` (a forked or
    branched stream's: ``branches`` as ``Run.branches`` lists them, ``lineage``,
    and the ``problems`` of its fork record, its parent and its branches file,
    each ``{"problem", "detail"}``; absent for a stream that never branched),
    ``events`` (events,
    bad_lines, torn_bytes), ``summary`` (``state``: ok, stale, absent, damaged
    or differs, with every ``differences`` line), ``artifacts`` (the read
    model's artifact states, fully checked), ``data_loss`` (what the writer
    recorded dropping), ``ranks`` (the same per rank r > 0 of a multi-rank
    run: metrics, events, summary, data_loss), ``repaired`` (what a repair
    did), ``problems`` (one line each) and ``ok``. ``repair=True`` cuts a torn
    tail of metrics.bin and a torn last line of events.jsonl (the cut bytes go
    to ``<file>.torn``), for every rank; it refuses a RUNNING run with
    ExpmanValueError. A bad last frame of a stream whose writer closed it
    cleanly is damage (``corrupt_bytes``), never cut.
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
    bad_world = world_size_error(meta)
    if bad_world:
        problems.append(bad_world)
    status = effective_status(meta, run_dir) if meta else "?"
    report["status"] = status
    report["experiment"] = str(meta.get("experiment", run_dir.parent.name))
    report["run_name"] = str(meta.get("run_name", run_dir.name))
    live = status == RUNNING
    if repair and live:
        raise ExpmanValueError(f"{run_dir.name} is RUNNING (its process is alive): refusing to "
                               "cut a file that is being written")
    if (run_dir / PARAMS_FILE).exists():
        try:
            read_json(run_dir / PARAMS_FILE)
            report["params_json"] = "ok"
        except (OSError, ValueError) as e:
            report["params_json"] = f"unreadable: {e}"
            problems.append(f"{PARAMS_FILE} unreadable")

    repaired: list[str] = []
    own, events = _check_stream(run_dir, 0, meta, repair, problems, repaired)
    report.update(own)
    states = artifact_states(run_dir, events, verify=True)
    report["artifacts"] = [a.to_dict() for a in states]
    for a in states:
        if not a.present or a.verified is False:
            problems.append(f"artifact {a.label!r}: " + "; ".join(a.problems))
    ranks: dict[str, Any] = {}
    for r in logging_ranks(meta) if meta else []:
        rmeta_path = run_dir / rank_file(RUN_FILE, r)
        if not r or not os.path.lexists(rmeta_path):
            continue
        try:
            rmeta = read_json(rmeta_path)
            if not isinstance(rmeta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            problems.append(f"{rank_file(RUN_FILE, r)} unreadable: {e}")
            ranks[str(r)] = {"run_json": f"unreadable: {e}"}
            continue
        ranks[str(r)], _ev = _check_stream(run_dir, r, rmeta, repair, problems, repaired)
    if ranks:
        report["ranks"] = ranks
    report["repaired"] = repaired
    report["problems"] = problems
    report["ok"] = not problems
    return report


def _check_stream(run_dir: Path, rank: int, meta: dict[str, Any], repair: bool,
                  problems: list[str], repaired: list[str]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One writer's streams (rank 0's plain files, or rank r's): metrics, events,
    summary and recorded loss; problems and repairs are appended."""
    mname, ename = rank_file(METRICS_FILE, rank), rank_file(EVENTS_FILE, rank)
    own_status = stream_status(meta, run_dir, rank) if meta else "?"
    closed, live = own_status in FINAL_STATUSES, own_status == RUNNING
    m, figures = _check_metrics(run_dir / mname, closed, problems)
    ev, events = _check_events(run_dir / ename)
    if ev["bad_lines"]:
        problems.append(f"{ename}: {ev['bad_lines']} unreadable lines")
    out: dict[str, Any] = {"metrics": m,
                           "events": {k: v for k, v in ev.items() if k != "good_size"}}
    out["summary"] = _check_summary(run_dir, rank, m, figures, problems)
    if meta and is_branched(run_dir, meta, rank):
        out["branches"] = _check_branches(run_dir, rank, meta, problems)
    loss = recorded_loss(run_dir, rank, meta)     # run.json's, or the record a full disk left
    out["data_loss"] = loss
    who = "the writer" if not rank else f"rank {rank}'s writer"
    if loss:
        problems.append(f"{who} recorded loss: {loss.get('rows_dropped', 0)} rows and "
                        f"{loss.get('events_dropped', 0)} events dropped, "
                        f"{loss.get('write_errors', 0)} failed writes"
                        + (f" ({loss['last_error']})" if loss.get("last_error") else "")
                        + (f"; its loss record is unreadable: {loss['record_unreadable']}"
                           if loss.get("record_unreadable") else ""))
    torn_m = 0 if live else m.get("torn_bytes", 0)
    torn_e = 0 if live else ev["torn_bytes"]
    if repair and torn_m:
        kept = _cut(run_dir / mname, m["end"])
        repaired.append(f"{mname}: cut {torn_m} torn bytes (kept in {kept.name})")
        torn_m = 0
    if repair and torn_e:
        kept = _cut(run_dir / ename, ev["good_size"])
        repaired.append(f"{ename}: cut a torn last line of {torn_e} bytes "
                        f"(kept in {kept.name})")
        torn_e = 0
    if torn_m:
        problems.append(f"{mname}: torn tail of {torn_m} bytes (--repair cuts it)")
    if torn_e:
        problems.append(f"{ename}: torn last line of {torn_e} bytes (--repair cuts it)")
    return out, events


def _check_branches(run_dir: Path, rank: int, meta: dict[str, Any],
                    problems: list[str]) -> dict[str, Any]:
    """A forked or branched stream read the way readers fold it: a fork record that
    does not parse, a parent that is missing, another run, a cycle or too deep a
    chain, and branch lines readers skip are problems (never an exception)."""
    where = f"rank {rank}: " if rank else ""
    try:
        hist = read_history(run_dir, rank, meta)
    except (OSError, ValueError) as e:        # the stream itself: reported with the metrics
        lines, bad = read_lines(run_dir, rank)
        found = [{"problem": "bad_branch_line", "detail": b} for b in bad]
        for p in found:
            problems.append(f"{where}{p['problem']}: {p['detail']}")
        return {"branches": [], "lineage": [], "problems": found,
                "error": f"not folded: {type(e).__name__}: {e}"}
    for p in hist.problems:
        problems.append(f"{where}{p['problem']}: {p['detail']}")
    return {"branches": [asdict(b) for b in hist.branches],
            "lineage": [list(x) for x in hist.lineage], "problems": list(hist.problems)}


def _check_metrics(mpath: Path, closed: bool, problems: list[str]
                   ) -> tuple[dict[str, Any], dict[str, MetricSummary] | None]:
    """A stream's frames (decoded whole, salvaging past damage) and the read
    model's figures of what it holds (None when it could not be decoded)."""
    from expman.summary import from_columns
    m: dict[str, Any] = {"present": os.path.lexists(mpath)}
    if not m["present"]:
        return m, None
    try:
        data = read_regular(mpath)
    except (OSError, ExpmanError) as e:
        m["error"] = str(e)
        problems.append(f"{mpath.name}: {e}")
        return m, None
    m["bytes"] = len(data)
    try:
        cols, keys, rep = _core.decode_metrics(data, salvage=True)
    except ExpmanError as e:
        m["error"] = str(e)
        problems.append(f"{mpath.name}: {e}")
        return m, None
    rep = settle_torn_tail(rep, closed)
    m.update({k: rep[k] for k in ("frames", "rows", "points", "torn_bytes", "corrupt_bytes",
                                  "corrupt_at", "unknown_points", "end")})
    m["keys"] = len(keys)
    if rep["corrupt_bytes"]:
        problems.append(f"{mpath.name}: {rep['corrupt_bytes']} bytes corrupt"
                        + (" (the last frame of a run that closed cleanly: damage, not a "
                           "torn tail)" if rep.get("closed_damage") else ""))
    if rep["unknown_points"]:
        problems.append(f"{mpath.name}: {rep['unknown_points']} points of unknown metrics")
    return m, from_columns(cols)


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


def _check_summary(run_dir: Path, rank: int, m: dict[str, Any],
                   figures: dict[str, MetricSummary] | None,
                   problems: list[str]) -> dict[str, Any]:
    """summary.json against the decoded figures: ``state`` ok, absent, stale (it
    covers another size: readers decode), damaged (not a summary whose digest
    matches) or differs (it covers this size but says something else: every
    difference is a problem)."""
    from expman.summary import check_summary
    name = rank_file(SUMMARY_FILE, rank)
    if not os.path.lexists(run_dir / name):
        return {"state": "absent"}
    if rank:                 # check_summary reads the plain names: a rank's own pair
        return _check_rank_summary(run_dir, rank, m, figures, problems)
    doc, why = check_summary(run_dir)
    return _compare_summary(name, doc, why, m, figures, problems)


def _check_rank_summary(run_dir: Path, rank: int, m: dict[str, Any],
                        figures: dict[str, MetricSummary] | None,
                        problems: list[str]) -> dict[str, Any]:
    import orjson

    from expman.summary import MAX_SUMMARY_BYTES, _parse
    name = rank_file(SUMMARY_FILE, rank)
    try:
        doc = _parse(orjson.loads(read_regular(run_dir / name, limit=MAX_SUMMARY_BYTES)))
    except (OSError, ValueError):
        doc = None
    why = None
    if doc is not None and not doc["digest_ok"]:
        why = f"{name} was changed after it was written (its digest does not match)"
    return _compare_summary(name, doc, why, m, figures, problems)


def _compare_summary(name: str, doc: dict[str, Any] | None, why: str | None,
                     m: dict[str, Any], figures: dict[str, MetricSummary] | None,
                     problems: list[str]) -> dict[str, Any]:
    if doc is None:
        problems.append(f"{name}: {why}")
        return {"state": "damaged", "why": why}
    if doc["metrics_bytes"] != m.get("bytes"):
        return {"state": "stale", "why": why}     # readers decode; not damage
    if figures is None:
        return {"state": "unchecked", "why": "the metrics could not be decoded"}
    diffs = _differences(doc["metrics"], figures) + ([str(why)] if why else [])
    for d in diffs:
        problems.append(f"{name}: {d}")
    return {"state": "differs" if diffs else "ok", "differences": diffs}


def _differences(claimed: dict[str, MetricSummary], found: dict[str, MetricSummary]
                 ) -> list[str]:
    """Every figure summary.json states that the data does not (floats by bits)."""
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return float_bits(a) == float_bits(b)
        return bool(a == b) and type(a) is type(b)
    out = []
    for metric in sorted(set(claimed) | set(found)):
        c, f = claimed.get(metric), found.get(metric)
        if c is None:
            out.append(f"{metric!r} is in the data ({f.count if f else 0} points) but not "
                       "in the summary")
        elif f is None:
            out.append(f"{metric!r} is in the summary ({c.count} points) but not in the data")
        else:
            for field in SUMMARY_FIELDS:
                a, b = getattr(c, field), getattr(f, field)
                if not same(a, b):
                    out.append(f"{metric!r} {field}: the summary says {a!r}, the data {b!r}")
    return out


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

