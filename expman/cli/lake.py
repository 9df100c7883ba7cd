"""``expman export-lake [BASE_DIR] -o DIR``: the CLI face of expman.lake."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from expman.cli._common import (
    BASE,
    JSON,
    add_base_positional,
    base_arg,
    command,
    refuse_url,
)
from expman.cli._text import note

HELP = "export runs to a Parquet lake (runs + long metrics tables), adding only what is new"
EXAMPLE = "expman export-lake ./experiments -o ./lake"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "export-lake", HELP, EXAMPLE, run, [BASE, JSON])
    add_base_positional(p)
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="the lake folder")


def run(args: argparse.Namespace) -> int:
    from expman.lake import export_lake
    from expman.layout import DAMAGED
    refuse_url(args.output, "the lake (-o)")
    result = export_lake(base_arg(args, args.base), args.output)
    if args.json:
        import orjson
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        sys.stdout.write(f"{result['runs']} runs, {result['new_points']} new points, "
                         f"{len(result['parts'])} new parts in {result['seconds']:.2f} s -> "
                         f"{args.output}\n")
    for label, runs in ((DAMAGED, result["damaged"]), ("skipped", result["skipped"])):
        for rid, why in runs.items():
            note(f"warning: {rid}: {label}: {why}")
    return 0
