"""``expman ranks RUN``: each rank's writer of a run, and what decided the run's status.

``add_parser(subparsers)`` registers the command, ``run(args)`` prints and
returns the exit code (0, or 1 when the run is not RUNNING or FINISHED, so
scripts can test a multi-rank job's outcome).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["add_parser", "run"]

from expman.cli._common import BASE, JSON, command, resolve
from expman.cli._text import safe
from expman.layout import FINISHED, RUNNING
from expman.ranks import describe_ranks


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "ranks",
                "each rank of a run: status, pid, host; which rank decided the run's status",
                "expman ranks ddp/latest", run, [BASE, JSON])
    p.add_argument("run", metavar="RUN", help="run folder, or experiment/run_name (experiment/latest)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    info = describe_ranks(resolve(args, args.run))
    if args.json:
        import orjson
        out.write(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(f"{safe(str(info['path']))}  {info['status']}  "
                  f"({info['world_size']} rank{'s' if info['world_size'] != 1 else ''})\n")
        if info["why"]:
            out.write(f"  because: {safe(str(info['why']))}\n")
        rows = [("rank", "status", "pid", "host")] + [
            (str(r["rank"]), str(r["status"] or "-"), str(r["pid"] or "-"), safe(str(r["host"] or "-")))
            for r in info["ranks"]]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            out.write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    return 0 if info["status"] in (RUNNING, FINISHED) else 1
