"""The ``expman`` command line (also ``python -m expman``).

Every command reads run folders through ``expman.reader``; none needs more than
the standard library (Parquet export needs pyarrow). RUN is a run folder path
or ``experiment/run_name`` under the base dir (``--base-dir``, else the
``EXPMAN_DIR`` environment variable, else ``./experiments``); ``experiment/latest``
is the newest run of an experiment and a unique prefix of a run name is enough.

Errors are one line on stderr and a non-zero exit code: 1 for a failure (or
damage found by ``verify``), 2 for a usage error, 130 on Ctrl-C. Set
``EXPMAN_DEBUG=1`` to see the traceback of an unexpected error.

Non-finite floats: JSON output (``--json``, ``export --format jsonl``) spells them
as the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers; this is
the proto3 JSON spelling, and Python's ``float()`` reads it back); CSV writes
Python's ``repr``: ``nan``, ``inf``, ``-inf``, which ``float()``, pandas and polars
read back; Parquet stores IEEE doubles as they are. Finite floats are written
with ``repr`` (shortest round-trip form), so every value comes back bit-exact.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import stat
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import orjson

from expman import __version__
from expman._fsutil import atomic_open
from expman.errors import ExpmanError
from expman.reader import (
    REDUCE_HOW, Metrics, Run, RunSummary, RunTail, effective_status, iter_run_dirs, list_runs,
    open_run,
)

DEFAULT_BASE = "./experiments"
CHUNK = 1 << 16               # points written per step of an export
PROGRESS_MIN_POINTS = 200_000  # smaller exports finish before a progress line helps


class CliError(Exception):
    """A failure to report as one line, exit code 1."""


# ---- small formatting helpers -----------------------------------------------------------


def num(v: Any) -> str:
    """A number for a table: ints as they are, floats to 6 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.6g}"


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{count(n)} {word}{'' if n == 1 else 's'}"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def clock(ts: float | None) -> str:
    if ts is None:
        return "--:--:--.---"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def duration(sec: float | None) -> str:
    if sec is None:
        return "-"
    if sec < 60:
        return f"{sec:.1f}s"
    m, s = divmod(int(sec), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def param_text(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys: {"opt": {"lr": 1}} -> {"opt.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def table(headers: list[str], rows: Iterable[Iterable[Any]], right: Iterable[int] = (),
          indent: str = "") -> str:
    """Plain-text columns separated by two spaces; ``right`` columns right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = set(right)

    def line(r: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(list(headers))] + [line(r) for r in cells])


def jsonable(x: Any) -> Any:
    """Non-finite floats as "NaN"/"Infinity"/"-Infinity", paths as strings."""
    if isinstance(x, float):
        if math.isfinite(x):
            return x
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def emit_json(obj: Any) -> None:
    out(orjson.dumps(jsonable(obj), option=orjson.OPT_INDENT_2).decode())


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    sys.stderr.write(f"expman: {text}\n")


class Progress:
    """``\\r``-updated progress on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.on = enabled and total > 0 and sys.stderr.isatty()
        self._last = 0.0
        self._width = 0

    def add(self, n: int, what: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.on and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            pct = 100 * self.done // max(self.total, 1)
            text = f"{self.label}: {pct:3d}% ({count(self.done)} of {count(self.total)}){what}"
            sys.stderr.write("\r" + text.ljust(self._width))
            sys.stderr.flush()
            self._width = len(text)

    def close(self) -> None:
        if self.on and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


# ---- finding runs -------------------------------------------------------------------------


def base_dir(args: argparse.Namespace, positional: str | None = None) -> Path:
    chosen = (positional or getattr(args, "base_dir", None) or getattr(args, "top_base_dir", None)
              or os.environ.get("EXPMAN_DIR") or DEFAULT_BASE)
    return Path(chosen)


def need_base(base: Path) -> Path:
    if not base.is_dir():
        raise CliError(f"no base dir {base} (make a first run with `expman demo`, "
                       "or pass BASE_DIR / --base-dir / EXPMAN_DIR)")
    return base


def resolve_run(spec: str, base: Path) -> Path:
    """A run folder from a path; or, under ``base``: ``experiment/run_name``,
    ``experiment/latest``, ``latest`` (newest of all), or a unique prefix of a
    run name, with or without its experiment."""
    p = Path(spec)
    if (p / "run.json").is_file():
        return p
    parts = [x for x in spec.replace("\\", "/").split("/") if x]
    if len(parts) == 1 and parts[0] == "latest":
        runs = list_runs(base, metrics=False)
        if not runs:
            raise CliError(f"no runs under {base}")
        return runs[0].path
    if len(parts) == 1 and (base / parts[0]).is_dir():
        names = sorted(d.name for d in iter_run_dirs(base, parts[0]))
        hint = f" (it has {len(names)} runs, e.g. {parts[0]}/{names[-1]})" if names else ""
        raise CliError(f"{spec!r} is an experiment; name a run: {parts[0]}/latest or "
                       f"{parts[0]}/RUN_NAME{hint}")
    if len(parts) == 1 and base.is_dir():          # a run name alone, in any experiment
        matches = [d for d in iter_run_dirs(base) if d.name.startswith(parts[0])]
        exact = [d for d in matches if d.name == parts[0]]
        if len(exact) == 1 or len(matches) == 1:
            return (exact or matches)[0]
        if matches:
            raise CliError(f"{spec!r} is ambiguous: "
                           + ", ".join(f"{d.parent.name}/{d.name}" for d in matches[:5])
                           + (" ..." if len(matches) > 5 else ""))
    if len(parts) == 2 and parts[0] not in (".", "..") and parts[1] not in (".", ".."):
        exp, name = parts
        exp_dir = base / exp
        if name == "latest":
            runs = list_runs(base, exp, metrics=False)
            if runs:
                return runs[0].path
        elif (exp_dir / name / "run.json").is_file():
            return exp_dir / name
        else:
            matches = [d for d in iter_run_dirs(base, exp) if d.name.startswith(name)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise CliError(f"{spec!r} is ambiguous: "
                               + ", ".join(f"{exp}/{d.name}" for d in matches[:5])
                               + (" ..." if len(matches) > 5 else ""))
    raise CliError(f"no run {spec!r}: not a run folder (with run.json), "
                   f"nor experiment/run_name under {base}")


def load(args: argparse.Namespace, spec: str, **kwargs: Any) -> Run:
    return open_run(resolve_run(spec, base_dir(args)), **kwargs)


# ---- show ---------------------------------------------------------------------------------


def env_summary(env: dict[str, Any]) -> dict[str, Any]:
    keep = ("hostname", "user", "python_version", "implementation", "platform", "machine",
            "cwd", "argv", "expman_version", "env_vars", "git")
    summary = {k: env[k] for k in keep if env.get(k) not in (None, {}, [])}
    if "packages" in env:
        summary["packages"] = len(env["packages"])
    return summary


def run_info(run: Run, messages: int) -> dict[str, Any]:
    msgs = run.messages
    return {
        "id": run.id, "experiment": run.experiment, "run_name": run.run_name,
        "path": str(run.path.resolve()), "status": run.status,
        "start_time": run.meta.get("start_time"), "end_time": run.meta.get("end_time"),
        "duration": _duration(run), "exit": run.meta.get("exit"),
        "params": run.params, "env": env_summary(run.env),
        "metrics": {k: s.summary() for k, s in run.metrics.items()},
        "messages": msgs[-messages:] if messages else [], "message_count": len(msgs),
        "artifacts": [{**a, "present": (run.path / a.get("path", "")).is_file()}
                      for a in run.artifacts],
        "integrity": run.integrity,
        "write_error": run.meta.get("write_error"),
    }


def _duration(run: Run) -> float | None:
    """Recorded at close; while running, the time so far; for a crash, until the last sign of life."""
    d, start = run.meta.get("duration"), run.meta.get("start_time")
    if d is not None or not start:
        return float(d) if d is not None else None
    status = run.status
    if status == "RUNNING":
        return max(0.0, time.time() - float(start))
    if status == "CRASHED":
        from expman.reader import heartbeat
        beat = heartbeat(run.path)
        return max(0.0, beat - start) if beat else None
    return None


def exit_text(exit: dict[str, Any] | None) -> str | None:
    if not exit:
        return None
    reason = exit.get("reason")
    if reason == "exception":
        return f"{exit.get('type')}: {exit.get('message')}" + (
            f" at {exit['location']}" if exit.get("location") else "")
    if reason == "exit":
        return f"sys.exit({exit.get('code')})" + (f": {exit['message']}" if exit.get("message") else "")
    if reason == "signal":
        return f"signal {exit.get('signal')}"
    return orjson.dumps(exit).decode()


def integrity_text(ig: dict[str, Any], live: bool) -> list[str]:
    lines = [f"{plural(ig.get('frames', 0), 'frame')}, {plural(ig.get('rows', 0), 'row')}, "
             f"{plural(ig.get('points', 0), 'point')}"]
    if ig.get("torn_bytes"):
        lines.append(f"{ig['torn_bytes']} bytes being written" if live else
                     f"torn tail: last {ig['torn_bytes']} bytes dropped (a crash cut the last frame)")
    if ig.get("corrupt_bytes"):
        lines.append(f"DAMAGED: {count(ig['corrupt_bytes'])} bytes unreadable at offsets "
                     f"{ig['corrupt_at'][:5]}")
    if ig.get("unknown_points"):
        lines.append(f"{ig['unknown_points']} points of metrics whose name was lost")
    if len(lines) == 1:
        lines[0] = "ok: " + lines[0]
    return lines


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
        nan_col = any(m["nan"] for m in metrics.values())
        headers = ["NAME", "COUNT"] + (["NAN"] if nan_col else []) + ["MIN", "MAX", "LAST", "STEP"]
        rows = [[k, count(m["count"])] + ([count(m["nan"])] if nan_col else [])
                + [num(m["min"]), num(m["max"]), num(m["last"]), num(m["last_step"])]
                for k, m in metrics.items()]
        out(table(headers, rows, right=range(1, len(headers)), indent="  "))

    msgs = info["messages"]
    out()
    out(f"messages (last {len(msgs)} of {info['message_count']})" if len(msgs) < info["message_count"]
        else f"messages ({info['message_count']})")
    for m in msgs:
        out(f"  {clock(m.get('time'))}  {m.get('level', 'info'):<7}  {m.get('msg', '')}")

    arts = info["artifacts"]
    out()
    out(f"artifacts ({len(arts)})")
    if arts:
        out(table(["NAME", "SIZE", "SHA256", "NOTE"],
                  [(a.get("name"), size(a.get("size")), (a.get("sha256") or "")[:12],
                    ("missing" if not a["present"] else "")
                    + ("" if a.get("consistent", True) else " changed while copied"))
                   for a in arts], right=[1], indent="  "))
    out()
    out("integrity")
    for line in integrity_text(info["integrity"], info["status"] == "RUNNING"):
        out(f"  {line}")


def cmd_show(args: argparse.Namespace) -> int:
    run = load(args, args.run, salvage=True)
    info = run_info(run, args.messages)
    if args.json:
        emit_json(info)
    else:
        print_show(info)
    return 0


# ---- list -----------------------------------------------------------------------------------


def metrics_text(last: dict[str, float], limit: int = 4) -> str:
    items = list(last.items())
    text = "  ".join(f"{k}={num(v)}" for k, v in items[:limit])
    return text + (f"  (+{len(items) - limit})" if len(items) > limit else "")


def cmd_list(args: argparse.Namespace) -> int:
    base = need_base(base_dir(args, args.base))
    runs = list_runs(base, args.experiment, args.status or None)
    if args.limit:
        runs = runs[:args.limit]
    if args.json:
        emit_json([r.to_dict() for r in runs])
        return 0
    if not runs:
        filt = " matching the filters" if (args.experiment or args.status) else ""
        out(f"no runs{filt} under {base}")
        return 0
    out(table(["RUN", "STATUS", "STARTED", "DURATION", "LAST METRICS"],
              [(r.id, r.status, when(r.start_time), duration(r.duration),
                metrics_text(r.last_metrics)) for r in runs], right=[3]))
    return 0


# ---- export -----------------------------------------------------------------------------------


def _csv_field(s: str) -> str:
    if any(c in s for c in ',"\r\n') or s != s.strip():
        return '"' + s.replace('"', '""') + '"'
    return s


def _jnum(x: float) -> str:
    if x - x == 0:                      # finite
        return repr(x)
    return '"NaN"' if x != x else ('"Infinity"' if x > 0 else '"-Infinity"')


def _write_text(metrics: Metrics, f: TextIO, fmt: str, progress: Progress) -> None:
    if fmt == "csv":
        f.write("metric,step,time,value\n")
    for name, s in metrics.items():
        line = _csv_line(_csv_field(name)) if fmt == "csv" else \
            _jsonl_line(orjson.dumps(name).decode())
        for i in range(0, len(s), CHUNK):
            steps = s.steps[i:i + CHUNK].tolist()
            times = s.times[i:i + CHUNK].tolist()
            values = s.values[i:i + CHUNK].tolist()
            f.write("".join(map(line, steps, times, values)))
            progress.add(len(steps))


def _csv_line(q: str) -> Callable[[int, float, float], str]:
    return lambda a, b, c: f"{q},{a},{b!r},{c!r}\n"


def _jsonl_line(q: str) -> Callable[[int, float, float], str]:
    return lambda a, b, c: f'{{"metric":{q},"step":{a},"time":{_jnum(b)},"value":{_jnum(c)}}}\n'


def _infer_format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    if args.output and args.output != "-":
        ext = Path(args.output).suffix.lower().lstrip(".")
        if ext in ("csv", "jsonl", "parquet"):
            return ext
        if ext in ("ndjson", "json"):
            return "jsonl"
        if ext == "pq":
            return "parquet"
    return "csv"


def cmd_export(args: argparse.Namespace) -> int:
    fmt = _infer_format(args)
    if fmt == "parquet":
        try:
            import pyarrow  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise CliError("Parquet export needs pyarrow, which is not installed: "
                           "pip install 'expman-logger[arrow]' (or use --format csv|jsonl)") from None
    run = load(args, args.run, salvage=args.salvage, duplicates=args.reduce)
    metrics = run.metrics
    if args.metric:
        missing = [m for m in args.metric if m not in metrics]
        if missing:
            raise CliError(f"no metric {missing[0]!r} in {run.id} "
                           f"(it has: {', '.join(metrics) or 'none'})")
        metrics = Metrics({k: metrics[k] for k in args.metric})
    to_stdout = not args.output or args.output == "-"
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        raise CliError("refusing to write binary Parquet to a terminal: add -o FILE")
    progress = Progress(metrics.points, f"export {run.id}",
                        enabled=metrics.points >= PROGRESS_MIN_POINTS)
    try:
        if fmt == "parquet":
            table_ = metrics.to_arrow()
            meta = {"expman.run": orjson.dumps(jsonable(
                {"id": run.id, "status": run.status, "params": run.params,
                 "start_time": run.meta.get("start_time")})).decode()}
            table_ = table_.replace_schema_metadata(meta)
            if to_stdout:
                pq.write_table(table_, sys.stdout.buffer)
            else:
                with atomic_open(Path(args.output), "wb") as f:
                    pq.write_table(table_, f)
            progress.add(metrics.points)
        elif to_stdout:
            _write_text(metrics, sys.stdout, fmt, progress)
        else:
            with atomic_open(Path(args.output), "w") as f:
                _write_text(metrics, f, fmt, progress)
    finally:
        progress.close()
    if not to_stdout:
        note(f"wrote {plural(metrics.points, 'point')} of {plural(len(metrics), 'metric')} to {args.output}")
    return 0


# ---- tail ------------------------------------------------------------------------------------


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


def event_text(ev: dict[str, Any]) -> str:
    kind = ev.get("kind", "?")
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
        t = ev.get("time") or 0.0
        text = (orjson.dumps(jsonable(ev)).decode() if as_json
                else f"{clock(ev.get('time'))}  {event_text(ev)}")
        items.append((t, 1, text))
    items.sort(key=lambda x: (x[0], x[1]))
    if last_n is not None:
        items = items[-last_n:] if last_n else []
    if items:
        sys.stdout.write("".join(text + "\n" for _, _, text in items))
        sys.stdout.flush()


def cmd_tail(args: argparse.Namespace) -> int:
    path = resolve_run(args.run, base_dir(args))
    tail = RunTail(path)
    batch = tail.poll()
    print_batch(batch.metrics, batch.events, args.json, args.lines)
    status = batch.status
    if not args.follow:
        return 0
    while status == "RUNNING":
        time.sleep(args.interval)
        batch = tail.poll()
        print_batch(batch.metrics, batch.events, args.json)
        status = batch.status
    if status == "CRASHED":
        note(f"{path.name}: the process stopped without closing the run (CRASHED)")
    return 0


# ---- compare --------------------------------------------------------------------------------


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
                             "duration": _duration(r)} for r in runs],
                   "params_differ": differ, "params_same": same, "final_metrics": finals})
        return 0
    out(table(["", *labels], [["status", *(r.status for r in runs)],
                              ["duration", *(duration(_duration(r)) for r in runs)]]))
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
        out(table(["FINAL METRIC", *labels], [[n, *(num(v) for v in vals)]
                                              for n, vals in finals.items()],
                  right=range(1, len(labels) + 1)))
    else:
        out("no metrics")
    return 0


# ---- verify ---------------------------------------------------------------------------------


def _events_check(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """events.jsonl's integrity counts, and its complete events."""
    from expman.reader import _parse_event_lines
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"present": False, "events": 0, "bad_lines": 0, "torn_bytes": 0}, []
    cut = data.rfind(b"\n") + 1
    events, bad = _parse_event_lines(data[:cut])
    return {"present": True, "events": len(events), "bad_lines": bad,
            "torn_bytes": len(data) - cut, "good_size": cut}, events


def _save_cut(path: Path, start: int) -> Path:
    """Keep the bytes a repair cuts, beside the file, so a repair can be undone."""
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
    dest = path.with_name(path.name + ".torn")
    i = 1
    while dest.exists():
        i += 1
        dest = path.with_name(f"{path.name}.torn{i}")
    dest.write_bytes(tail)
    return dest


def cmd_verify(args: argparse.Namespace) -> int:
    path = resolve_run(args.run, base_dir(args))
    from expman._fsutil import read_json
    from expman import _core
    problems: list[str] = []
    report: dict[str, Any] = {"path": str(path)}
    try:
        meta = read_json(path / "run.json")
        report["run_json"] = "ok"
    except (OSError, ValueError) as e:
        meta = {}
        report["run_json"] = f"unreadable: {e}"
        problems.append("run.json unreadable")
    status = effective_status(meta, path) if meta else "?"
    report["status"] = status
    live = status == "RUNNING"
    if (path / "params.json").exists():
        try:
            read_json(path / "params.json")
            report["params_json"] = "ok"
        except (OSError, ValueError) as e:
            report["params_json"] = f"unreadable: {e}"
            problems.append("params.json unreadable")
    mpath = path / "metrics.bin"
    m: dict[str, Any] = {"present": mpath.exists()}
    if mpath.exists():
        data = mpath.read_bytes()
        m["bytes"] = len(data)
        try:
            _cols, keys, rep = _core.decode_metrics(data, salvage=True)
        except ExpmanError as e:
            rep, keys = None, {}
            m["error"] = str(e)
            problems.append(f"metrics.bin: {e}")
        if rep is not None:
            m.update({k: rep[k] for k in ("frames", "rows", "points", "torn_bytes",
                                          "corrupt_bytes", "corrupt_at", "unknown_points", "end")})
            m["keys"] = len(keys)
            if rep["corrupt_bytes"]:
                problems.append(f"metrics.bin: {rep['corrupt_bytes']} bytes corrupt")
            if rep["unknown_points"]:
                problems.append(f"metrics.bin: {rep['unknown_points']} points of unknown metrics")
    report["metrics"] = m
    ev, events = _events_check(path / "events.jsonl")
    report["events"] = {k: v for k, v in ev.items() if k != "good_size"}
    if ev["bad_lines"]:
        problems.append(f"events.jsonl: {ev['bad_lines']} unreadable lines")
    arts = []
    for art in (x for x in events if x.get("kind") == "artifact"):
        f = path / art.get("path", "")
        ok = f.is_file() and (art.get("size") is None or f.stat().st_size == art["size"])
        arts.append({"name": art.get("name"), "ok": ok})
        if not ok:
            problems.append(f"artifact {art.get('name')!r} missing or of the wrong size")
    report["artifacts"] = arts

    torn_m = m.get("torn_bytes", 0) if not live else 0
    torn_e = ev["torn_bytes"] if not live else 0
    repaired: list[str] = []
    if args.repair and (torn_m or torn_e):
        if live:  # pragma: no cover - torn counts are zero when live
            pass
        if torn_m:
            kept = _save_cut(mpath, m["end"])
            os.truncate(mpath, m["end"])
            repaired.append(f"metrics.bin: cut {torn_m} torn bytes (kept in {kept.name})")
            torn_m = 0
        if torn_e:
            kept = _save_cut(path / "events.jsonl", ev["good_size"])
            os.truncate(path / "events.jsonl", ev["good_size"])
            repaired.append(f"events.jsonl: cut a torn last line of {torn_e} bytes "
                            f"(kept in {kept.name})")
            torn_e = 0
    elif args.repair and live:
        raise CliError(f"{path.name} is RUNNING (its process is alive): refusing to cut a "
                       "file that is being written")
    if torn_m:
        problems.append(f"metrics.bin: torn tail of {torn_m} bytes (--repair cuts it)")
    if torn_e:
        problems.append(f"events.jsonl: torn last line of {torn_e} bytes (--repair cuts it)")
    report["repaired"] = repaired
    report["problems"] = problems
    report["ok"] = not problems

    if args.json:
        emit_json(report)
    else:
        out(f"{meta.get('experiment', path.parent.name)}/{meta.get('run_name', path.name)}  {status}")
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
        if arts:
            bad = sum(not a["ok"] for a in arts)
            out(f"  artifacts     {plural(len(arts), 'file')}" + (f", {bad} missing or wrong size" if bad else ", ok"))
        for r in repaired:
            out(f"  repaired      {r}")
        out("OK" if not problems else "DAMAGED: " + "; ".join(problems))
    return 0 if not problems else 1


# ---- du and clean --------------------------------------------------------------------------


def _is_link(p: Path) -> bool:
    try:
        if p.is_symlink():
            return True
        isjunction = getattr(os.path, "isjunction", None)
        return bool(isjunction and isjunction(p))
    except OSError:
        return True


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, bytes under artifacts/) of a folder, apparent sizes, links not followed."""
    total = arts = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        under_arts = Path(root) == path / "artifacts" or (path / "artifacts") in Path(root).parents
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                n = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
            total += n
            if under_arts:
                arts += n
    return total, arts


def cmd_du(args: argparse.Namespace) -> int:
    base = need_base(base_dir(args, args.base))
    per_run: list[dict[str, Any]] = []
    for run_dir in iter_run_dirs(base, args.experiment):
        total, arts = (0, 0) if _is_link(run_dir) else tree_size(run_dir)
        mb = 0
        try:
            mb = os.lstat(run_dir / "metrics.bin").st_size
        except OSError:
            pass
        per_run.append({"id": f"{run_dir.parent.name}/{run_dir.name}", "experiment": run_dir.parent.name,
                        "bytes": total, "metrics_bytes": mb, "artifacts_bytes": arts,
                        "symlink": _is_link(run_dir)})
    exps: dict[str, dict[str, Any]] = {}
    for r in per_run:
        e = exps.setdefault(r["experiment"], {"experiment": r["experiment"], "runs": 0, "bytes": 0,
                                              "metrics_bytes": 0, "artifacts_bytes": 0})
        e["runs"] += 1
        for k in ("bytes", "metrics_bytes", "artifacts_bytes"):
            e[k] += r[k]
    total = sum(r["bytes"] for r in per_run)
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


def _rmtree(path: Path) -> None:
    def retry(func: Any, p: str, _exc: Any) -> None:
        os.chmod(p, stat.S_IWRITE)     # Windows: read-only files refuse deletion
        func(p)
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def cmd_clean(args: argparse.Namespace) -> int:
    base = need_base(base_dir(args, args.base))
    if not (args.status or args.older_than is not None or args.keep is not None):
        raise CliError("clean needs --status, --older-than or --keep to choose runs "
                       "(it never selects every run)")
    base_real = base.resolve()
    runs = list_runs(base, args.experiment, metrics=False)
    now = time.time()
    by_exp: dict[str, list[RunSummary]] = {}
    for r in runs:                                     # newest first already
        by_exp.setdefault(r.path.parent.name, []).append(r)
    chosen: list[RunSummary] = []
    skipped: list[tuple[RunSummary, str]] = []
    wanted = {s.upper() for s in args.status} if args.status else None
    for exp_runs in by_exp.values():
        for i, r in enumerate(exp_runs):
            if r.status == "RUNNING":
                continue                               # a live writer: never
            if args.keep is not None and i < args.keep:
                continue
            if wanted and r.status not in wanted:
                continue
            if args.older_than is not None and (r.start_time or now) > now - args.older_than:
                continue
            if _is_link(r.path) or _is_link(r.path.parent):
                skipped.append((r, "a symlink; clean never follows links"))
                continue
            try:
                r.path.resolve().relative_to(base_real)
            except ValueError:
                skipped.append((r, f"resolves outside {base}"))
                continue
            chosen.append(r)
    sizes = {r.path: tree_size(r.path)[0] for r in chosen}
    total = sum(sizes.values())
    for r, why in skipped:
        note(f"skipped {r.id}: {why}")
    if not chosen:
        out("nothing to remove")
        return 0
    rows = [(r.status, r.id, when(r.start_time), size(sizes[r.path])) for r in chosen]
    if not args.yes:
        out(f"would remove {plural(len(chosen), 'run')} ({size(total)}):")
        out(table(["STATUS", "RUN", "STARTED", "SIZE"], rows, right=[3], indent="  "))
        out("dry run: nothing removed; add --yes to remove them")
        return 0
    progress = Progress(len(chosen), "clean")
    removed = 0
    try:
        for r in chosen:
            # checked again just before acting: the tree may have changed since
            if _is_link(r.path) or _is_link(r.path.parent):
                note(f"skipped {r.id}: became a symlink")
                continue
            _rmtree(r.path)
            removed += 1
            progress.add(1, f" {r.id}")
            try:
                r.path.parent.rmdir()                  # the experiment, if now empty
            except OSError:
                pass
    finally:
        progress.close()
    out(f"removed {plural(removed, 'run')} ({size(total)})")
    for row in rows:
        out("  " + "  ".join(row[:2]))
    return 0


# ---- demo --------------------------------------------------------------------------------------


def _demo_data(rng: Any, n: int, dims: int) -> tuple[list[list[float]], list[int]]:
    """Two overlapping Gaussian blobs with 5 % label noise: learnable, not trivially."""
    xs, ys = [], []
    for _ in range(n):
        y = rng.random() < 0.5
        x = [rng.gauss(0.6 if y else -0.6, 1.0) * (1.0 + 0.3 * j) for j in range(dims)]
        if rng.random() < 0.05:
            y = not y
        xs.append(x)
        ys.append(int(y))
    return xs, ys


def _loss_acc(w: list[float], b: float, xs: list[list[float]], ys: list[int]) -> tuple[float, float]:
    loss = correct = 0.0
    for x, y in zip(xs, ys):
        z = b + sum(wi * xi for wi, xi in zip(w, x))
        p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
        loss -= math.log(max(p, 1e-12)) if y else math.log(max(1.0 - p, 1e-12))
        correct += (p >= 0.5) == bool(y)
    return loss / len(xs), correct / len(xs)


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import random
    import tempfile

    from expman import Experiment

    if args.steps < 1:
        raise CliError("--steps must be at least 1")
    base = base_dir(args)
    rng = random.Random(args.seed)
    dims, batch, lr0 = 4, 32, 0.02
    train_x, train_y = _demo_data(rng, 1024, dims)
    val_x, val_y = _demo_data(rng, 256, dims)
    evals = max(1, args.steps // 10)
    params = {"model": "logistic_regression", "optimizer": "sgd", "learning_rate": lr0,
              "lr_schedule": "cosine", "batch_size": batch, "steps": args.steps,
              "seed": args.seed, "data": {"features": dims, "train_size": len(train_x),
                                           "val_size": len(val_x), "label_noise": 0.05}}
    w = [rng.gauss(-0.4, 0.2) for _ in range(dims)]     # a bad start: a visible curve
    b = 0.0
    progress = Progress(args.steps, "demo: training")
    with Experiment("demo", base_dir=base) as exp:
        exp.log_params(params)
        exp.info(f"Starting training loop: {args.steps} steps of SGD, batch {batch}")
        for step in range(args.steps):
            lr = lr0 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            idx = [rng.randrange(len(train_x)) for _ in range(batch)]
            gw, gb = [0.0] * dims, 0.0
            for i in idx:
                x, y = train_x[i], train_y[i]
                z = b + sum(wi * xi for wi, xi in zip(w, x))
                err = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))) - y
                gb += err
                for j in range(dims):
                    gw[j] += err * x[j]
            w = [wi - lr * g / batch for wi, g in zip(w, gw)]
            b -= lr * gb / batch
            loss, acc = _loss_acc(w, b, [train_x[i] for i in idx], [train_y[i] for i in idx])
            exp.log_metrics({"train_loss": loss, "train_acc": acc, "lr": lr}, step=step)
            if step % evals == evals - 1 or step == args.steps - 1:
                vloss, vacc = _loss_acc(w, b, val_x, val_y)
                exp.log_metrics({"val_loss": vloss, "val_acc": vacc}, step=step)
                exp.info(f"step {step + 1}/{args.steps}: val_loss={vloss:.4f} val_acc={vacc:.3f}")
            progress.add(1)
            if args.delay:
                time.sleep(args.delay)
        progress.close()
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.json"
            weights.write_text(json.dumps({"weights": w, "bias": b}, indent=2))
            exp.save_artifact(weights)
        exp.info("Training finished; weights saved as artifacts/model.json")
        run_dir = exp.run_dir
        run_id = f"demo/{exp.run_name}"
    out(f"demo run written to {run_dir}")
    out()
    print_show(run_info(open_run(run_dir), 5))
    default = not (getattr(args, "base_dir", None) or getattr(args, "top_base_dir", None)
                   or os.environ.get("EXPMAN_DIR"))
    flag = "" if default else f" --base-dir {base}"
    out()
    out("look further:")
    for cmd in (f"expman list{'' if default else ' ' + str(base)}",
                f"expman show {run_id}{flag}",
                f"expman tail {run_id}{flag}",
                f"expman export {run_id} -o demo.csv{flag}",
                f"expman compare demo/latest {run_id}{flag}   # after a second `expman demo`"):
        out(f"  {cmd}")
    return 0


# ---- the parser ------------------------------------------------------------------------------


COMMANDS = ("demo", "list", "show", "export", "tail", "compare", "verify", "du", "clean")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expman", description="Read, compare and tidy expman runs.",
        epilog="RUN is a run folder, or EXPERIMENT/RUN_NAME (or EXPERIMENT/latest) under the base "
               "dir. The base dir is --base-dir, else $EXPMAN_DIR, else ./experiments.")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--base-dir", dest="top_base_dir", metavar="DIR", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    based = argparse.ArgumentParser(add_help=False)
    based.add_argument("--base-dir", metavar="DIR",
                       help="where runs live (default: $EXPMAN_DIR or ./experiments)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable JSON output")

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int],
            parents: list[argparse.ArgumentParser], example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents)
        p.set_defaults(func=func)
        return p

    p = add("demo", "run a short synthetic training loop into ./experiments and show it",
            cmd_demo, [based], "expman demo --steps 300")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--delay", type=float, default=0.01,
                   help="seconds to sleep per step, so there is time to `expman tail --follow` "
                        "it (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = add("list", "a table of runs, newest first", cmd_list, [based, as_json],
            "expman list -e demo --status FINISHED")
    p.add_argument("base", nargs="?", metavar="BASE_DIR", help="default ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper,
                   choices=["RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED"],
                   help="only runs with this status (repeatable)")
    p.add_argument("-n", "--limit", type=int, help="at most this many runs")

    p = add("show", "one run: params, environment, metric summary, messages, artifacts, integrity",
            cmd_show, [based, as_json], "expman show demo/latest")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-m", "--messages", type=int, default=10, help="last messages to show (default 10)")

    p = add("export", "a run's metrics as CSV, JSONL or Parquet (long: metric, step, time, value)",
            cmd_export, [based], "expman export demo/latest --format csv -o demo.csv")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--format", choices=["csv", "jsonl", "parquet"],
                   help="default: from the -o extension, else csv")
    p.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
    p.add_argument("--reduce", choices=REDUCE_HOW,
                   help="one value per step for duplicate steps (default: every record as logged)")
    p.add_argument("--salvage", action="store_true",
                   help="keep the frames after damage in the middle of the file")

    p = add("tail", "the last metrics and messages of a run; --follow prints new ones as they come",
            cmd_tail, [based, as_json], "expman tail demo/latest --follow")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the run ends (Ctrl-C to stop)")
    p.add_argument("-n", "--lines", type=int, default=10, help="lines to show first (default 10)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")

    p = add("compare", "params that differ and final metrics, side by side", cmd_compare,
            [based, as_json], "expman compare demo/latest demo/20250101-120000-ab12cd")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--all", action="store_true", help="show params that are equal too")

    p = add("verify", "check a run's files (frames, torn tail, corruption); --repair cuts a torn tail",
            cmd_verify, [based, as_json], "expman verify demo/latest --repair")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--repair", action="store_true",
                   help="cut a torn tail (the bytes cut are kept in metrics.bin.torn)")

    p = add("du", "disk use per experiment (or per run)", cmd_du, [based, as_json], "expman du --runs")
    p.add_argument("base", nargs="?", metavar="BASE_DIR", help="default ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--runs", action="store_true", help="one line per run, largest first")

    p = add("clean", "remove runs by status, age or count; a dry run unless --yes", cmd_clean,
            [based], "expman clean --status FAILED --status CRASHED --older-than 7d --yes")
    p.add_argument("base", nargs="?", metavar="BASE_DIR", help="default ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper,
                   choices=["FINISHED", "FAILED", "KILLED", "CRASHED"],
                   help="remove runs with this status (repeatable); RUNNING runs are never removed")
    p.add_argument("--older-than", type=parse_age, metavar="AGE",
                   help="remove runs started longer ago than AGE: 90s, 30m, 12h, 7d, 2w")
    p.add_argument("--keep", type=int, metavar="N",
                   help="always keep the newest N runs of each experiment")
    p.add_argument("--yes", action="store_true", help="remove for real (default: dry run)")
    return parser


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    text = str(message)
    sys.stderr.write((text if text.startswith("expman:") else f"expman: warning: {text}") + "\n")


def _utf8_stdout() -> None:
    """Piped output (CSV, JSON) is UTF-8 everywhere, not the Windows ANSI code page;
    a terminal that cannot show a character gets a replacement, not a crash."""
    try:
        if sys.stdout.isatty():
            sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
        elif (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
            sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "keep", None) is not None and args.keep < 0:
        parser.error("--keep must be 0 or more")
    warnings.showwarning = _show_warning
    _utf8_stdout()
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`expman export ... | head`): not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (CliError, ExpmanError, OSError, ImportError, ValueError) as e:
        if os.environ.get("EXPMAN_DEBUG"):
            raise
        msg = str(e)
        if isinstance(e, OSError) and e.strerror and e.filename:
            msg = e.strerror if str(e.filename) in e.strerror else f"{e.strerror}: {e.filename}"
        note(f"error: {msg}")
        return 1
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("EXPMAN_DEBUG"):
            raise
        note(f"internal error: {type(e).__name__}: {e} (EXPMAN_DEBUG=1 shows the traceback)")
        return 1
