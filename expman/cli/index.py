"""``expman index [BASE_DIR] [--rebuild]``: the CLI face of expman.reader.update_index
(the listing index, expman.index)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from expman.cli._common import BASE, JSON, add_base_positional, base_arg, command, need_base

HELP = "bring the base dir's listing index up to date (--rebuild: from the run folders alone)"
EXAMPLE = "expman index ./experiments --rebuild"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "index", HELP, EXAMPLE, run, [BASE, JSON])
    add_base_positional(p)
    p.add_argument("--rebuild", action="store_true",
                   help="forget the index and read every run folder again")


def run(args: argparse.Namespace) -> int:
    from expman.reader import update_index
    stats = update_index(need_base(base_arg(args, args.base)), rebuild=args.rebuild)
    if args.json:
        import orjson
        sys.stdout.write(orjson.dumps(stats).decode() + "\n")
    else:
        sys.stdout.write(f"{stats['runs']} runs: {stats['hits']} from the index, "
                         f"{stats['misses']} read; {stats['kept']} kept in {stats['index']} "
                         f"({stats['seconds']:.2f} s)\n")
    return 0
