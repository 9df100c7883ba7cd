"""``expman import-tensorboard LOGDIR [--experiment NAME]`` (add_parser/run for the
main CLI) and the ``tensorboard`` format of ``expman export``. The work is in
expman.tbio."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from expman.cli._text import out

__all__ = ["add_parser", "run", "export_tensorboard"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "import-tensorboard", help="turn TensorBoard event files (scalars, hparams, text) into runs",
        description="turn TensorBoard event files (scalars, hparams, text, histograms) into runs: "
                    "one run per folder of event files\n\nexample:\n"
                    "  expman import-tensorboard runs/ --experiment resnet",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logdir", metavar="LOGDIR", help="a TensorBoard log folder")
    p.add_argument("--experiment", metavar="NAME", help="experiment name (default: LOGDIR's name)")
    p.add_argument("--base-dir", metavar="DIR",
                   help="where runs live (default: $EXPMAN_DIR or ./experiments)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from expman.tbio import import_tensorboard
    made = import_tensorboard(args.logdir, args.base_dir, args.experiment)
    for path in made:
        out(f"{path.parent.name}/{path.name}")
    return 0


def export_tensorboard(run_dir: Path, out_dir: str) -> Path:
    """For ``expman export RUN --format tensorboard -o DIR``: returns the event file."""
    from expman.tbio import export_tensorboard as export
    return export(run_dir, out_dir)
