"""``expman export-mlflow RUN... --tracking-uri URI``: the CLI face of expman.export_mlflow."""

from __future__ import annotations

import argparse
from typing import Any

from expman.cli._common import BASE, JSON, command, resolve
from expman.cli._text import emit_json, note, out, safe

__all__ = ["add_parser", "run"]

HELP = "copy runs (params, metrics with steps and times, tags, artifacts) into an MLflow store"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "export-mlflow", HELP,
                "expman export-mlflow mnist/latest --tracking-uri http://127.0.0.1:5000",
                run, [BASE, JSON])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or experiment/run_name")
    p.add_argument("--tracking-uri", required=True, metavar="URI",
                   help="the MLflow store: a server URL or sqlite:///file.db")
    p.add_argument("-e", "--experiment", metavar="NAME",
                   help="MLflow experiment to write into (default: each run's experiment)")


def run(args: argparse.Namespace) -> int:
    from expman.export_mlflow import export_mlflow
    result = export_mlflow([resolve(args, spec) for spec in args.runs], args.tracking_uri,
                           args.experiment)
    if args.json:
        emit_json(result)
    else:
        for r in result["exported"]:
            if r["skipped"]:
                out(f"{safe(r['run'])} -> {r['mlflow_run_id']} (exported before, skipped)")
            else:
                out(f"{safe(r['run'])} -> {r['mlflow_run_id']}: {r['params']} params, "
                    f"{r['points']} points, {r['artifacts']} artifacts, {r['status']}")
    for path, why in result["failed"].items():
        note(f"warning: {safe(path)}: not exported: {safe(why)}")
    return 1 if result["failed"] else 0
