"""``expman ranks RUN``: each rank's writer of a run, and what decided the run's status.

A leaf for the CLI package: ``add_parser(subparsers)`` registers the command,
``run(args)`` prints and returns the exit code (0, or 1 when the run is not
RUNNING or FINISHED, so scripts can test a multi-rank job's outcome).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

__all__ = ["add_parser", "run"]

from expman.layout import FINISHED, RUNNING
from expman.ranks import describe_ranks


def _printable(text: object) -> str:
    """Control characters read from files are escaped, never sent to the terminal."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "ranks", help="each rank of a run: status, pid, host; which rank decided the run's status",
        description=f"{__doc__.splitlines()[0]}\n\nexample:\n  expman ranks ddp/latest",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder, or experiment/run_name (experiment/latest)")
    p.add_argument("--base-dir", default=None,
                   help="where runs live (default: $EXPMAN_DIR, else ./experiments)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    info = describe_ranks(args.run, args.base_dir)
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
    return 0 if info["status"] in (RUNNING, FINISHED) else 1
