"""``expman export-lake BASE_DIR -o DIR``: the CLI face of expman.lake (wired into the CLI package)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "export runs to a Parquet lake (runs + long metrics tables), adding only what is new"
EXAMPLE = "expman export-lake ./experiments -o ./lake"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export-lake", help=HELP, description=f"{HELP}\n\nexample:\n  {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", nargs="?", metavar="BASE_DIR",
                   help="where runs live (default: $EXPMAN_DIR or ./experiments)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="the lake folder")
    p.add_argument("--json", action="store_true", help="print the export's counts as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from expman.lake import export_lake
    from expman.layout import DAMAGED
    result = export_lake(args.base, args.out)
    if args.json:
        import orjson
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        sys.stdout.write(f"{result['runs']} runs, {result['new_points']} new points, "
                         f"{len(result['parts'])} new parts in {result['seconds']:.2f} s -> "
                         f"{args.out}\n")
    for label, runs in ((DAMAGED, result["damaged"]), ("skipped", result["skipped"])):
        for rid, why in runs.items():
            sys.stderr.write(f"warning: {rid}: {label}: {why}\n")
    return 0
