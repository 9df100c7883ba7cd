"""``expman import-tensorboard LOGDIR [-e NAME]`` (the way back is ``expman export
--format tensorboard``). The work is in expman.tbio."""

from __future__ import annotations

import argparse
from typing import Any

from expman.cli._common import BASE, JSON, base_arg, command
from expman.cli._text import emit_json, out

__all__ = ["add_parser", "run"]

HELP = ("turn TensorBoard event files (scalars, hparams, text, histograms, images) into runs: "
        "one per SummaryWriter, add_scalars and add_hparams folded in")


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "import-tensorboard", HELP,
                "expman import-tensorboard runs/ -e resnet", run, [BASE, JSON])
    p.add_argument("logdir", metavar="LOGDIR",
                   help="a TensorBoard log folder: one run per writer folder")
    p.add_argument("-e", "--experiment", metavar="NAME",
                   help="experiment name (default: LOGDIR's name)")


def run(args: argparse.Namespace) -> int:
    """One line per run made: its id, and how many problems (damaged records, skipped
    values) the import counted there (each is named in the run's warning message)."""
    from expman.tbio import import_tensorboard
    report: list[dict[str, Any]] = []
    import_tensorboard(args.logdir, base_arg(args, writes="import-tensorboard"),
                       args.experiment, report=report)
    if args.json:
        emit_json([{"id": f"{r['run'].parent.name}/{r['run'].name}", "path": str(r["run"]),
                    "folders": r["folders"], "first_event_time": r["first_event_time"],
                    "last_event_time": r["last_event_time"], "problems": r["problems"],
                    "skipped": r["skipped"]} for r in report])
    else:
        for r in report:
            notes = [f"{r['problems']} problems"] if r["problems"] else []
            notes += [f"{n} {kind} not imported" for kind, n in r["skipped"].items()]
            out(f"{r['run'].parent.name}/{r['run'].name}" + (f"  ({', '.join(notes)})"
                                                             if notes else ""))
    return 0
