"""``expman sync [BASE_DIR] URL``: the CLI face of expman.sync."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from expman.cli._common import BASE, JSON, base_arg, command
from expman.cli._text import note

HELP = "copy run folders to an fsspec URL (s3://...) or a mounted path, sending only what is new"
EXAMPLE = "AWS_ENDPOINT_URL=http://127.0.0.1:9000 expman sync ./experiments s3://bucket/experiments"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "sync", HELP, EXAMPLE, run, [BASE, JSON])
    p.add_argument("base", nargs="?", metavar="BASE_DIR",
                   help="where runs live (default: --base-dir, $EXPMAN_DIR, else ./experiments)")
    p.add_argument("url", metavar="URL", help="s3://bucket/prefix, any fsspec URL, or a path")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="sync again every SECONDS until interrupted (live runs)")
    p.add_argument("--verify", action="store_true",
                   help="ignore the local state and compare every run with the target")
    p.add_argument("--force", action="store_true",
                   help="replace a run the target holds under the same id but another uuid "
                        "(another machine's run); without it that run is left and reported")


def run(args: argparse.Namespace) -> int:
    from expman.sync import sync
    if args.watch is not None and not args.watch > 0:
        raise ValueError(f"--watch must be a positive number of seconds, got {args.watch}")
    base = base_arg(args, args.base, writes="sync's source")
    failed = False
    while True:
        result = sync(base, args.url, verify=args.verify, force=args.force)
        if args.json:
            import orjson
            sys.stdout.write(orjson.dumps(result).decode() + "\n")
        else:
            sys.stdout.write(f"{result['runs']} runs, {result['objects']} objects, "
                             f"{result['bytes_appended']} bytes appended, "
                             f"{result['bytes_whole']} bytes whole, "
                             f"{result['seconds']:.2f} s -> {args.url}\n")
        sys.stdout.flush()
        for rid, why in result["errors"].items():
            note(f"warning: {rid}: {why}")
        for rid, parent in result["parents_missing"].items():
            note(f"{rid}: a fork of {parent}, which is neither here nor at {args.url}: the "
                 "copy keeps the reference and reads its own points only until the parent "
                 "is synced too")
        failed = failed or bool(result["errors"])
        if args.watch is None:
            return 1 if failed else 0
        time.sleep(args.watch)
