"""``expman import-tensorboard LOGDIR [-e NAME]`` (the way back is ``expman export
--format tensorboard``). The work is in expman.tbio."""

from __future__ import annotations

import argparse
from typing import Any

from expman.cli._common import BASE, JSON, base_arg, command
from expman.cli._text import emit_json, out

__all__ = ["add_parser", "run"]

HELP = "turn TensorBoard event files (scalars, hparams, text, histograms) into runs"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "import-tensorboard", HELP,
                "expman import-tensorboard runs/ -e resnet", run, [BASE, JSON])
    p.add_argument("logdir", metavar="LOGDIR",
                   help="a TensorBoard log folder: one run per folder of event files")
    p.add_argument("-e", "--experiment", metavar="NAME",
                   help="experiment name (default: LOGDIR's name)")


def run(args: argparse.Namespace) -> int:
    from expman.tbio import import_tensorboard
    made = import_tensorboard(args.logdir, base_arg(args, writes="import-tensorboard"),
                              args.experiment)
    ids = [f"{path.parent.name}/{path.name}" for path in made]
    if args.json:
        emit_json([{"id": i, "path": str(p)} for i, p in zip(ids, made)])
    else:
        for i in ids:
            out(i)
    return 0
