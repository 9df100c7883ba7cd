"""Commands on run files: ``export``, ``verify``, ``du``, ``clean``: each a thin
call into ``expman.export``, ``expman.verify`` and ``expman.disk``."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from expman.cli._common import BASE, JSON, add_base_positional, command
from expman.cli._common import base_arg, load, need_base, resolve
from expman.cli._text import (
    CliError, Progress, count, emit_json, note, out, plural, size, table, when,
)
from expman.disk import broken_by, disk_usage, forked_children, remove_run, runs_to_clean
from expman.disk import tree_size
from expman.reader import list_runs
from expman.export import FORMATS, export_format, export_run
from expman.layout import CRASHED, DAMAGED, FINAL_STATUSES, RUNNING
from expman.series import DUPLICATES
from expman.verify import verify_run

PROGRESS_MIN_POINTS = 200_000  # smaller exports finish before a progress line helps


def cmd_export(args: argparse.Namespace) -> int:
    to_stdout = not args.output or args.output == "-"
    if args.format == "tensorboard":
        if to_stdout:
            raise CliError("--format tensorboard writes event files: add -o DIR")
        from expman.tbio import export_tensorboard
        event_file = export_tensorboard(resolve(args, args.run), args.output)
        note(f"wrote TensorBoard event file {event_file}")
        return 0
    fmt, _gz = export_format(None if to_stdout else args.output, args.format)
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        raise CliError("refusing to write binary Parquet to a terminal: add -o FILE")
    if fmt == "parquet":
        from expman.export import parquet_module
        parquet_module()                     # fail before reading the run when pyarrow is missing
    run = load(args, args.run, salvage=args.salvage, duplicates=args.duplicates,
               branch=args.branch)
    names = args.metric or None
    points = sum(len(run.metrics[m]) for m in names if m in run.metrics) if names \
        else run.metrics.points
    progress = Progress(points, f"export {run.id}", enabled=points >= PROGRESS_MIN_POINTS)
    try:
        if to_stdout:
            sys.stdout.flush()
            written = export_run(run, sys.stdout.buffer, fmt, metrics=names, progress=progress.add)
            sys.stdout.buffer.flush()
        else:
            written = export_run(run, args.output, fmt, metrics=names, progress=progress.add)
    finally:
        progress.close()
    if not to_stdout:
        n = len(names) if names else len(run.metrics)
        note(f"wrote {plural(written, 'point')} of {plural(n, 'metric')} to {args.output}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_run(resolve(args, args.run, writes="verify --repair" if args.repair else None),
                        repair=args.repair)
    m, ev, arts = report["metrics"], report["events"], report["artifacts"]
    live = report["status"] == RUNNING
    problems, repaired = report["problems"], report["repaired"]
    if args.json:
        emit_json(report)
    else:
        out(f"{report['experiment']}/{report['run_name']}  {report['status']}")
        if m.get("present") and "frames" in m:
            out(f"  metrics.bin   {plural(m['frames'], 'frame')}, {plural(m['rows'], 'row')}, "
                f"{plural(m['points'], 'point')}, {plural(m['keys'], 'metric')} ({size(m['bytes'])})")
            if m["torn_bytes"]:
                out(f"  torn tail     {m['torn_bytes']} bytes after offset {m['end']}"
                    + (" (a frame being written)" if live else ""))
            if m["corrupt_bytes"]:
                out(f"  corruption    {count(m['corrupt_bytes'])} bytes at offsets "
                    f"{m['corrupt_at'][:5]}; the frames around it are readable "
                    "(`expman export --salvage`); --repair does not touch it")
        elif not m.get("present"):
            out("  metrics.bin   absent (no metrics logged)")
        out(f"  events.jsonl  {plural(ev['events'], 'event')}"
            + (f", {ev['bad_lines']} unreadable lines" if ev["bad_lines"] else "")
            + (f", torn last line ({ev['torn_bytes']} bytes)" if ev["torn_bytes"] else ""))
        if "branches" in report:
            out(f"  branches      {branches_text(report['branches'])}")
        if arts:
            bad = sum(not a["present"] or a["verified"] is False for a in arts)
            out(f"  artifacts     {plural(len(arts), 'file')}" + (f", {bad} missing or changed" if bad else ", ok"))
        for r in repaired:
            out(f"  repaired      {r}")
        out("OK" if not problems else "DAMAGED: " + "; ".join(problems))
    return 0 if not problems else 1


def branches_text(b: dict[str, Any]) -> str:
    """verify's branches line: the branches a rewind or a resume opened, and the fork."""
    opened = [x for x in b["branches"] if x["kind"] in ("rewind", "resume")]
    n = len(b["branches"])
    text = f"{count(n)} branch{'' if n == 1 else 'es'}" if n else "not read"
    if opened:
        text += " (" + ", ".join(f"{x['kind']} at step {x['from_step']}" for x in opened) + ")"
    lineage = b["lineage"]
    if len(lineage) > 1:
        spec, step = lineage[-2]
        text += f"; forked from {spec} at step {step}"
    elif any(p["problem"] != "bad_branch_line" for p in b["problems"]):
        text += "; a fork whose parent is not read"
    return text


def cmd_du(args: argparse.Namespace) -> int:
    base = need_base(base_arg(args, args.base))
    usage = disk_usage(base, args.experiment)
    per_run: list[dict[str, Any]] = usage["runs"]
    exps = {e["experiment"]: e for e in usage["experiments"]}
    total = usage["bytes"]
    if args.json:
        emit_json({"base_dir": str(base), "bytes": total, "experiments": list(exps.values()),
                   "runs": per_run if args.runs else None})
        return 0
    if args.runs:
        rows = sorted(per_run, key=lambda r: -r["bytes"])
        out(table(["RUN", "METRICS", "ARTIFACTS", "TOTAL"],
                  [(r["id"] + (" -> (symlink, not followed)" if r["symlink"] else ""),
                    size(r["metrics_bytes"]), size(r["artifacts_bytes"]), size(r["bytes"]))
                   for r in rows] + [("total", "", "", size(total))], right=[1, 2, 3]))
    else:
        rows = sorted(exps.values(), key=lambda e: -e["bytes"])
        out(table(["EXPERIMENT", "RUNS", "METRICS", "ARTIFACTS", "TOTAL"],
                  [(e["experiment"], e["runs"], size(e["metrics_bytes"]), size(e["artifacts_bytes"]),
                    size(e["bytes"])) for e in rows]
                  + [("total", len(per_run), size(sum(e["metrics_bytes"] for e in rows)),
                      size(sum(e["artifacts_bytes"] for e in rows)), size(total))],
                  right=[1, 2, 3, 4]))
    return 0


def parse_age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            value = float(t[:-1])
            if value >= 0 and math.isfinite(value):
                return value * units[t[-1]]
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not an age like 90s, 30m, 12h, 7d or 2w")


def cmd_clean(args: argparse.Namespace) -> int:
    base = need_base(base_arg(args, args.base, writes="clean"))
    if not (args.status or args.older_than is not None or args.keep is not None):
        raise CliError("clean needs --status, --older-than or --keep to choose runs "
                       "(it never selects every run)")
    chosen, skipped = runs_to_clean(base, experiment=args.experiment, status=args.status,
                                    older_than=args.older_than, keep=args.keep, force=args.force)
    breaks = broken_by(chosen, forked_children(list_runs(base, metrics=False))) \
        if args.force else {}
    sizes = {r.path: tree_size(r.path)[0] for r in chosen}
    total = sum(sizes.values())
    for r, why in skipped:
        note(f"skipped {r.id}: {why}")
    for rid, kids in breaks.items():
        note(f"{'removing' if args.yes else 'would remove'} {rid}, the parent of "
             f"{', '.join(kids)}: {'they read' if len(kids) > 1 else 'it reads'} only "
             "their own points from then on (the history up to the fork step is gone; "
             "`expman verify` reports parent_missing)")
    removed = _remove(chosen) if args.yes else set()
    if args.json:
        emit_json({"dry_run": not args.yes, "bytes": total,
                   "runs": [{"id": r.id, "status": r.status, "start_time": r.start_time,
                             "bytes": sizes[r.path], "removed": r.path in removed}
                            for r in chosen],
                   "skipped": {r.id: why for r, why in skipped}, "breaks": breaks})
        return 0
    if not chosen:
        out("nothing to remove")
        return 0
    if not args.yes:
        out(f"would remove {plural(len(chosen), 'run')} ({size(total)}):")
        out(table(["STATUS", "RUN", "STARTED", "SIZE"],
                  [(r.status, r.id, when(r.start_time), size(sizes[r.path])) for r in chosen],
                  right=[3], indent="  "))
        out("dry run: nothing removed; add --yes to remove them")
        return 0
    out(f"removed {plural(len(removed), 'run')} "
        f"({size(sum(sizes[r.path] for r in chosen if r.path in removed))})")
    for r in chosen:
        if r.path in removed:
            out(f"  {r.status}  {r.id}")
    return 0


def _remove(chosen: list[Any]) -> set[Any]:
    """Removes the runs, each checked again just before (the tree may have changed);
    returns the paths removed."""
    progress = Progress(len(chosen), "clean")
    removed = set()
    try:
        for r in chosen:
            try:
                left = remove_run(r.path)
            except ValueError as e:
                note(f"skipped {r.id}: {e}")
                continue
            for line in left:
                note(f"left in place: {line}")
            removed.add(r.path)
            progress.add(1, f" {r.id}")
            try:
                r.path.parent.rmdir()                  # the experiment, if now empty
            except OSError:
                pass
    finally:
        progress.close()
    return removed


def _keep(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"--keep must be 0 or more, got {n}")
    return n


def add_parser(subparsers: Any) -> None:
    """Registers export, verify, du and clean."""
    p = command(subparsers, "export",
                "a run's metrics as CSV, JSONL or Parquet (long: metric, step, time, value)",
                "expman export demo/latest --format csv -o demo.csv", cmd_export, [BASE])
    p.add_argument("run", metavar="RUN")
    p.add_argument("--format", choices=[*FORMATS, "tensorboard"],
                   help="default: from the -o extension (.csv, .tsv, .jsonl, .parquet, text "
                        "ones optionally .gz), else csv; tensorboard writes event files into "
                        "the -o folder")
    p.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    p.add_argument("--metric", action="append", metavar="NAME",
                   help="only this metric (repeatable)")
    p.add_argument("--duplicates", choices=list(DUPLICATES),
                   help="one value per step for duplicate steps (default: every record as logged)")
    p.add_argument("--salvage", action="store_true",
                   help="keep the frames after damage in the middle of the file")
    p.add_argument("--branch", type=int, metavar="ID",
                   help="this branch's history (ids: `expman show RUN`; default: the main "
                        "history, what the run continued)")

    p = command(subparsers, "verify",
                "check a run's files (frames, torn tail, corruption); --repair cuts a torn tail",
                "expman verify demo/latest --repair", cmd_verify, [BASE, JSON])
    p.add_argument("run", metavar="RUN")
    p.add_argument("--repair", action="store_true",
                   help="cut a torn tail (the bytes cut are kept in metrics.bin.torn)")

    p = command(subparsers, "du", "disk use per experiment (or per run)", "expman du --runs",
                cmd_du, [BASE, JSON])
    add_base_positional(p)
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--runs", action="store_true", help="one line per run, largest first")

    p = command(subparsers, "clean", "remove runs by status, age or count; a dry run unless --yes",
                "expman clean --status FAILED --status CRASHED --older-than 7d --yes", cmd_clean,
                [BASE, JSON])
    add_base_positional(p)
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper,
                   choices=[*FINAL_STATUSES, CRASHED, DAMAGED],
                   help="remove runs with this status (repeatable); RUNNING runs are never removed")
    p.add_argument("--older-than", type=parse_age, metavar="AGE",
                   help="remove runs started longer ago than AGE: 90s, 30m, 12h, 7d, 2w")
    p.add_argument("--keep", type=_keep, metavar="N",
                   help="always keep the newest N runs of each experiment")
    p.add_argument("--yes", action="store_true", help="remove for real (default: dry run)")
    p.add_argument("--force", action="store_true",
                   help="also remove the parent of a forked run that is kept (the fork then "
                        "loses its history up to the fork step; each one is named)")
