"""Commands that read runs: ``list``, ``show``, ``compare``, ``tail``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dataclasses import asdict

import orjson

from expman.cli._common import BASE, DIGITS, JSON, add_base_positional, command, remote_run
from expman.cli._common import base_arg, load, need_base, resolve
from expman.cli._text import (
    CliError, clock, count, duration, emit_json, emit_json_bytes, num, num_columns, out, param_text,
    plural, size,
    table, when, note, safe,
)
from expman.layout import CRASHED, DAMAGED, RUNNING, STATUSES, jsonable
from expman.reader import Run, list_runs, list_runs_json
from expman.series import Metrics
from expman.readmodel import artifact_states, integrity_problems
from expman.readmodel import flatten_params as flatten
from expman.tables import table_counts
from expman.tail import RunTail

MAX_SHOWN_METRICS = 200      # show summarises beyond this many series


def env_summary(env: dict[str, Any]) -> dict[str, Any]:
    keep = ("hostname", "user", "python_version", "implementation", "platform", "machine",
            "cwd", "argv", "expman_version", "env_vars", "git")
    summary = {k: env[k] for k in keep if env.get(k) not in (None, {}, [])}
    if "packages" in env:
        summary["packages"] = len(env["packages"])
    return summary


def run_info(run: Run, messages: int) -> dict[str, Any]:
    from expman.watch import read_alerts
    msgs = run.messages
    return {
        "id": run.id, "experiment": run.experiment, "run_name": run.run_name,
        "path": str(run.path.resolve()), "status": run.status,
        "start_time": run.meta.get("start_time"), "end_time": run.meta.get("end_time"),
        "duration": run.duration, "exit": run.meta.get("exit"),
        "params": run.params, "env": env_summary(run.env),
        "metrics": {k: s.summary().to_dict() for k, s in run.metrics.items()},
        "messages": msgs[-messages:] if messages else [], "message_count": len(msgs),
        "artifacts": [a.to_dict() for a in artifact_states(run.path, run.events)],
        "media": media_counts(run),
        "integrity": run.integrity,
        "write_error": run.meta.get("write_error"),
        "alerts": [a.to_event() for a in read_alerts(run.path)],
        "parent": run.parent, "fork_step": run.fork_step,
        "lineage": [list(x) for x in run.lineage],
        "branches": [asdict(b) for b in run.branches],
    }


def media_counts(run: Run) -> dict[str, Any]:
    """Histograms and images (per tag) and tables (versions, rows per name) the run logged."""
    return {"histograms": {tag: len(v) for tag, v in run.histograms.items()},
            "images": {tag: len(v) for tag, v in run.images.items()},
            "tables": table_counts(run.events)}


def media_text(media: dict[str, Any]) -> list[str]:
    """``40 histograms (2 tags)``-style lines, then one line per table."""
    lines = []
    for kind in ("histograms", "images"):
        tags = media[kind]
        if tags:
            lines.append(f"{plural(sum(tags.values()), kind[:-1])} ({plural(len(tags), 'tag')}: "
                         + ", ".join(safe(t) for t in list(tags)[:5])
                         + (", ..." if len(tags) > 5 else "") + ")")
    for name, c in media["tables"].items():
        lines.append(f"table {safe(name)}: {plural(c['versions'], 'version')}, "
                     f"{plural(c['rows'], 'row')}")
    return lines


def exit_text(exit: dict[str, Any] | None) -> str | None:
    if not exit:
        return None
    reason = exit.get("reason")
    if reason == "exception":
        message = exit.get("message")
        return f"{exit.get('type')}" + (f": {message}" if message else "") + (
            f" at {exit['location']}" if exit.get("location") else "")
    if reason == "exit":
        return f"sys.exit({exit.get('code')})" + (f": {exit['message']}" if exit.get("message") else "")
    if reason == "signal":
        return f"signal {exit.get('signal')}"
    return orjson.dumps(exit).decode()


def integrity_text(ig: dict[str, Any], live: bool) -> list[str]:
    """The counts, then the read model's integrity lines (readmodel.integrity_problems)."""
    lines = [f"{plural(ig.get('frames', 0), 'frame')}, {plural(ig.get('rows', 0), 'row')}, "
             f"{plural(ig.get('points', 0), 'point')}"]
    if live and ig.get("torn_bytes"):
        lines.append(f"{ig['torn_bytes']} bytes being written")
    for line in integrity_problems(ig, RUNNING if live else "", []):
        lines.append(("DATA LOSS: " if line.startswith("data loss") else "DAMAGED: ") + line)
    if len(lines) == 1:
        lines[0] = "ok: " + lines[0]
    return lines


def lineage_text(lineage: list[list[Any]]) -> str:
    """root@5 -> child@7 -> this: each ancestor with the step its fork kept up to."""
    return " -> ".join(spec if step is None else f"{spec} @{step}" for spec, step in lineage)


def print_branches(info: dict[str, Any]) -> None:
    """The branches of a forked or branched run, the main history's last."""
    branches = info["branches"]
    if len(info["lineage"]) > 1 or info["parent"]:
        out(f"  {'lineage':<9} {lineage_text(info['lineage'])}"
            + ("" if len(info["lineage"]) > 1 else f"  (its parent {info['parent']} is not read)"))
    if len(branches) < 2 and not info["parent"]:
        return
    shown = info.get("branch")
    main_id = branches[-1]["id"] if branches else None
    out()
    out(f"branches ({len(branches)})")
    out(table(["ID", "KIND", "FROM STEP", "STEPS", "POINTS", "MADE", ""],
              [(b["id"], b["kind"], "-" if b["from_step"] is None else b["from_step"],
                "-" if b["first_step"] is None else f"{b['first_step']}-{b['last_step']}",
                count(b["points"]), clock(b["time"]) if b["time"] else "-",
                ("main history" if b["id"] == main_id else "abandoned")
                + (", shown" if shown is not None and b["id"] == shown else ""))
               for b in branches], right=[2, 4], indent="  "))


def print_show(info: dict[str, Any]) -> None:
    out(f"{info['id']}  {info['status']}")
    env = info["env"]
    head = [("path", info["path"]),
            ("started", f"{when(info['start_time'])}   duration {duration(info['duration'])}")]
    if info["exit"]:
        head.append(("exit", exit_text(info["exit"])))
    if info.get("write_error"):
        head.append(("error", info["write_error"]))
    if env.get("hostname") or env.get("user"):
        head.append(("host", f"{env.get('hostname') or '?'}"
                     + (f" ({env['user']})" if env.get("user") else "")))
    if env.get("python_version"):
        head.append(("python", f"{env.get('implementation', 'Python')} {env['python_version']}"
                     f" on {env.get('platform', '?')}"))
    git = env.get("git")
    if git:
        head.append(("git", f"{git.get('commit', '')[:10]} on {git.get('branch')}"
                     + (" (dirty)" if git.get("dirty") else "")))
    if env.get("argv"):
        head.append(("command", " ".join(env["argv"])))
    for k, v in head:
        out(f"  {k:<9} {v}")
    print_branches(info)

    params = flatten(info["params"])
    out()
    out(f"params ({len(params)})")
    if params:
        out(table(["NAME", "VALUE"], [(k, param_text(v)) for k, v in params.items()], indent="  "))

    metrics = info["metrics"]
    points = sum(m["count"] for m in metrics.values())
    out()
    out(f"metrics ({len(metrics)} series, {count(points)} points)")
    if metrics:
        nan_col = any(m["nan_count"] for m in metrics.values())
        headers = ["NAME", "COUNT"] + (["NAN"] if nan_col else []) + ["MIN", "MAX", "LAST", "STEP"]
        shown = list(metrics.items())[:MAX_SHOWN_METRICS]
        rows = num_columns([[k, count(m["count"])] + ([count(m["nan_count"])] if nan_col else [])
                            + [m["min"], m["max"], m["last_value"], m["last_step"]]
                            for k, m in shown])
        out(table(headers, rows, right=range(1, len(headers)), indent="  "))
        if len(metrics) > len(shown):
            out(f"  ... and {count(len(metrics) - len(shown))} more series "
                "(`expman show --json` or `expman export` lists them all)")

    msgs = info["messages"]
    out()
    out(f"messages (last {len(msgs)} of {info['message_count']})" if len(msgs) < info["message_count"]
        else f"messages ({info['message_count']})")
    for m in msgs:
        out(f"  {clock(m.get('time'))}  {m.get('level', 'info'):<7}  {m.get('msg', '')}")

    alerts = info.get("alerts") or []
    if alerts:
        out()
        out(f"alerts ({len(alerts)})")
        for a in alerts:
            out(f"  {clock(a.get('time'))}  {alert_text(a)}")

    arts = info["artifacts"]
    out()
    out(f"artifacts ({len(arts)})")
    if arts:
        out(table(["NAME", "SIZE", "SHA256", "NOTE"],
                  [(a["label"], size(a["size"]), (a["sha256"] or "")[:12],
                    ("missing" if not a["present"] else "")
                    + ("" if a["consistent"] else " changed while copied"))
                   for a in arts], right=[1], indent="  "))
    media = media_text(info["media"])
    if media:
        out()
        out("media")
        for line in media:
            out(f"  {line}")
    out()
    out("integrity")
    for line in integrity_text(info["integrity"], info["status"] == RUNNING):
        out(f"  {line}")


def cmd_show(args: argparse.Namespace) -> int:
    run = load(args, args.run, salvage=True, branch=args.branch)
    info = run_info(run, args.messages)
    info["branch"] = args.branch
    if args.json:
        emit_json(info)
    else:
        print_show(info)
    return 0



def metrics_text(last: dict[str, float], limit: int = 4) -> str:
    items = list(last.items())
    text = "  ".join(f"{k}={num(v)}" for k, v in items[:limit])
    return text + (f"  (+{len(items) - limit})" if len(items) > limit else "")


def status_text(r: Any, alerted: bool = False) -> str:
    """The status, marked when the writer recorded loss (*), a watchdog fired (!),
    or the run is damaged."""
    if getattr(r, "damaged", None):
        return DAMAGED
    return str(r.status) + ("*" if getattr(r, "data_loss", None) else "") + ("!" if alerted else "")


def cmd_list(args: argparse.Namespace) -> int:
    base = need_base(base_arg(args, args.base))
    if args.json:       # the index's lines as stored (reader.list_runs_json)
        emit_json_bytes(list_runs_json(base, args.experiment, args.status or None,
                                       limit=args.limit or None, tags=args.tag, group=args.group))
        return 0
    runs = list_runs(base, args.experiment, args.status or None, limit=args.limit or None,
                     tags=args.tag, group=args.group)
    if not runs:
        filt = " matching the filters" if (args.experiment or args.status or args.tag
                                           or args.group) else ""
        out(f"no runs{filt} under {base}")
        return 0
    from expman.watch import has_alerts
    alerted = {r.id for r in runs if not r.damaged and has_alerts(r.path)}
    forks = any(r.parent for r in runs)         # the PARENT column only when it says something
    out(table(["RUN", "STATUS", "STARTED", "DURATION", *(["PARENT"] if forks else []),
               "LAST METRICS"],
              [(r.id, status_text(r, r.id in alerted), when(r.start_time), duration(r.duration),
                *([r.parent or ""] if forks else []),
                metrics_text(r.last_metrics) if not r.damaged else f"damaged: {r.damaged}")
               for r in runs], right=[3]))
    if any(r.data_loss for r in runs):
        out("* the writer recorded data loss (rows or events dropped): `expman verify RUN`")
    if alerted:
        out("! a watchdog fired (docs/watch.md): `expman show RUN` lists the alerts")
    return 0


def metric_rows(metrics: Metrics, last_n: int | None = None) -> list[tuple[float, int, dict[str, float]]]:
    """Points regrouped into the rows they were logged in (same time and step)."""
    groups: dict[tuple[float, int], dict[str, float]] = {}
    for name, s in metrics.items():
        n = len(s)
        start = 0 if last_n is None else max(0, n - last_n)
        for st, t, v in zip(s.steps[start:].tolist(), s.times[start:].tolist(),
                            s.values[start:].tolist()):
            groups.setdefault((t, st), {})[name] = v
    rows = sorted(groups.items(), key=lambda kv: kv[0])
    if last_n is not None:
        rows = rows[-last_n:] if last_n else []
    return [(t, st, vals) for (t, st), vals in rows]


def alert_text(ev: dict[str, Any]) -> str:
    rank = ev.get("rank")
    return f"{'ALERT':<8} [{ev.get('rule')}]" + (f" rank {rank}" if rank else "") + \
        f" {ev.get('message', '')}"


def event_text(ev: dict[str, Any]) -> str:
    kind = ev.get("kind", "?")
    if kind == "alert":
        return alert_text(ev)
    if kind == "message":
        return f"{ev.get('level', 'info'):<8} {ev.get('msg', '')}"
    if kind == "status":
        extra = exit_text(ev.get("exit"))
        return f"{'status':<8} {ev.get('status')}" + (f" ({extra})" if extra else "")
    if kind == "artifact":
        return f"{'artifact':<8} {ev.get('name')} ({size(ev.get('size'))})"
    rest = {k: v for k, v in ev.items() if k not in ("kind", "time", "seq")}
    return f"{kind:<8} {orjson.dumps(jsonable(rest)).decode()}"


def print_batch(metrics: Metrics, events: list[dict[str, Any]], as_json: bool,
                last_n: int | None = None) -> None:
    items: list[tuple[float, int, str]] = []
    for t, st, vals in metric_rows(metrics, last_n):
        if as_json:
            text = orjson.dumps(jsonable({"kind": "metrics", "time": t, "step": st,
                                          "values": vals})).decode()
        else:
            text = f"{clock(t)}  step {st:<6} " + "  ".join(f"{k}={num(v)}" for k, v in vals.items())
        items.append((t, 0, text))
    evs = events[-last_n:] if last_n is not None else events
    if last_n == 0:
        evs = []
    for ev in evs:
        if ev.get("kind") in ("key", "alert_delivered"):
            continue                 # a metric name's definition, a webhook's ledger: not news
        t = ev.get("time") or 0.0
        text = (orjson.dumps(jsonable(ev)).decode() if as_json
                else f"{clock(ev.get('time'))}  {event_text(ev)}")
        items.append((t, 1, text))
    items.sort(key=lambda x: (x[0], x[1]))
    if last_n is not None:
        items = items[-last_n:] if last_n else []
    if items:
        sys.stdout.write(safe("".join(text + "\n" for _, _, text in items)))
        sys.stdout.flush()


def cmd_tail(args: argparse.Namespace) -> int:
    if args.follow and remote_run(args, args.run):
        raise CliError("--follow watches a local run folder as it grows; a synced URL is a "
                       "copy: run `expman tail` again after the next `expman sync`")
    path = resolve(args, args.run)
    tail = RunTail(path)
    from expman.watch import AlertTail
    alerts = AlertTail(path)        # alerts.jsonl: those of an `expman watch` beside the run
    batch = tail.poll()
    print_batch(batch.metrics, batch.events + alerts.poll(), args.json, args.lines)
    status = batch.status
    while args.follow and status == RUNNING:
        # polled by hand, not tail.follow(): a stalled run writes nothing, yet its
        # alert (in alerts.jsonl) must show at once
        time.sleep(args.interval)
        batch = tail.poll()
        print_batch(batch.metrics, batch.events + alerts.poll(), args.json)
        status = batch.status
    if status == CRASHED:
        note(f"{path.name}: the process stopped without closing the run (CRASHED)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise CliError("compare needs at least two runs")
    runs = [load(args, spec, salvage=True) for spec in args.runs]
    same_exp = len({r.experiment for r in runs}) == 1
    labels = [r.run_name if same_exp else r.id for r in runs]
    flat = [flatten(r.params) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys.extend(k for k in f if k not in keys)
    missing = object()
    differ, same = {}, {}
    for k in keys:
        vals = [f.get(k, missing) for f in flat]
        if all(v is not missing for v in vals) and all(
                orjson.dumps(v) == orjson.dumps(vals[0]) for v in vals):
            same[k] = vals[0]
        else:
            differ[k] = [None if v is missing else v for v in vals]
    names: list[str] = []
    for r in runs:
        names.extend(k for k in r.metrics if k not in names)
    finals = {n: [r.metrics[n].last if n in r.metrics else None for r in runs] for n in names}
    if args.json:
        emit_json({"runs": [{"id": r.id, "path": str(r.path), "status": r.status,
                             "duration": r.duration, "parent": r.parent,
                             "fork_step": r.fork_step, "branches": len(r.branches)}
                            for r in runs],
                   "params_differ": differ, "params_same": same, "final_metrics": finals})
        return 0
    head = [["status", *(r.status for r in runs)],
            ["duration", *(duration(r.duration) for r in runs)]]
    if any(r.parent for r in runs):          # forks: where each one's history comes from
        head.append(["forked from", *(f"{r.parent} @{r.fork_step}" if r.parent else "-"
                                      for r in runs)])
    if any(len(r.branches) > 1 for r in runs):
        head.append(["branches", *(str(len(r.branches)) for r in runs)])
    out(table(["", *labels], head))
    out()
    shown = [k for k in keys if args.all or k in differ]
    if shown:
        out(table(["PARAM", *labels],
                  [[k, *(param_text(f[k]) if k in f else "-" for f in flat)] for k in shown]))
    else:
        out("params: all equal")
    if same and not args.all:
        text = ", ".join(f"{k}={param_text(v)}" for k, v in list(same.items())[:6])
        out(f"(same in every run: {text}{', ...' if len(same) > 6 else ''}; --all shows them)")
    out()
    if finals:
        out(table(["FINAL METRIC", *labels], num_columns([[n, *vals]
                                                          for n, vals in finals.items()],
                                                         by_row=True),
                  right=range(1, len(labels) + 1)))
    else:
        out("no metrics")
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers list, show, compare and tail."""
    p = command(subparsers, "list", "a table of runs, newest first", "expman list -e demo --status FINISHED",
                cmd_list, [BASE, JSON, DIGITS])
    add_base_positional(p)
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper, choices=list(STATUSES),
                   help="only runs with this status (repeatable)")
    p.add_argument("-n", "--limit", type=int, help="at most this many runs")
    p.add_argument("--tag", action="append", metavar="TAG",
                   help="only runs with this tag (repeatable: all of them)")
    p.add_argument("--group", metavar="NAME", help="only runs of this group")

    p = command(subparsers, "show",
                "one run: params, environment, metric summary, messages, artifacts, integrity",
                "expman show demo/latest", cmd_show, [BASE, JSON, DIGITS])
    p.add_argument("run", metavar="RUN")
    p.add_argument("-m", "--messages", type=int, default=10,
                   help="last messages to show (default 10)")
    p.add_argument("--branch", type=int, metavar="ID",
                   help="the metrics of this branch (ids in the branches table; default: "
                        "the main history)")

    p = command(subparsers, "compare", "params that differ and final metrics, side by side",
                "expman compare demo/latest demo/20250101-120000-ab12cd", cmd_compare,
                [BASE, JSON, DIGITS])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--all", action="store_true", help="show params that are equal too")

    p = command(subparsers, "tail",
                "the last metrics and messages of a run; --follow prints new ones as they come",
                "expman tail demo/latest --follow", cmd_tail, [BASE, JSON, DIGITS])
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the run ends (Ctrl-C to stop)")
    p.add_argument("-n", "--lines", type=int, default=10, help="lines to show first (default 10)")
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between polls (default 0.5)")
