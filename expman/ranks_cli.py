"""``expman ranks RUN``: each rank's writer of a run, and what decided the run's status.

A leaf for the CLI package: ``add_parser(subparsers)`` registers the command,
``run(args)`` prints and returns the exit code (0, or 1 when the run is not
RUNNING or FINISHED, so scripts can test a multi-rank job's outcome).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["add_parser", "run", "describe"]


def _printable(text: object) -> str:
    """Control characters read from files are escaped, never sent to the terminal."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def describe(spec: str, base: str | None = None) -> dict[str, Any]:
    """The run's status over its ranks as plain data (what ``--json`` prints)."""
    from expman._fsutil import read_json
    from expman.layout import RUN_FILE, resolve_run
    from expman.ranks import run_outcome, world_size

    path = resolve_run(spec, base)
    meta = read_json(path / RUN_FILE)
    if not isinstance(meta, dict):
        raise ValueError(f"{path / RUN_FILE} is not a JSON object")
    out = run_outcome(meta, path) if world_size(meta) > 1 else None
    if out is None:
        from expman.layout import effective_status
        from expman.ranks import RankState
        status = effective_status(meta, path)
        state = RankState(0, status, meta.get("pid"), meta.get("host"), meta.get("exit"))
        states, rank, why = [state], None, None
        if status not in ("RUNNING", "FINISHED"):
            rank, why = 0, state.why
    else:
        status, states, rank, why = out.status, out.ranks, out.rank, out.why
    return {"path": str(path), "status": status, "world_size": world_size(meta), "rank": rank,
            "why": why,
            "ranks": [{"rank": s.rank, "status": s.status, "pid": s.pid, "host": s.host,
                       "why": s.why} for s in states]}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ranks", help="each rank of a run: status, pid, host; which rank decided the run's status",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or experiment/run_name (experiment/latest)")
    p.add_argument("--base-dir", default=None,
                   help="where runs live (default: $EXPMAN_DIR, else ./experiments)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run_command=run)
    return p


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    info = describe(args.run, args.base_dir)
    if args.json:
        import orjson
        out.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(f"{_printable(info['path'])}  {info['status']}  "
                  f"({info['world_size']} rank{'s' if info['world_size'] != 1 else ''})\n")
        if info["why"]:
            out.write(f"  because: {_printable(info['why'])}\n")
        rows = [("rank", "status", "pid", "host")] + [
            (str(r["rank"]), str(r["status"] or "-"), str(r["pid"] or "-"), _printable(r["host"] or "-"))
            for r in info["ranks"]]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            out.write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    return 0 if info["status"] in ("RUNNING", "FINISHED") else 1
