"""What every command shares: the base dir and turning a RUN argument into a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from expman.cli._text import CliError
from expman.layout import base_dir, resolve_run
from expman.reader import Run, open_run


def base_arg(args: argparse.Namespace, positional: str | None = None) -> Path:
    """BASE_DIR, else --base-dir, else $EXPMAN_DIR, else ./experiments."""
    return base_dir(positional or getattr(args, "base_dir", None)
                    or getattr(args, "top_base_dir", None))


def need_base(base: Path) -> Path:
    if not base.is_dir():
        raise CliError(f"no base dir {base} (make a first run with `expman demo`, "
                       "or pass BASE_DIR / --base-dir / EXPMAN_DIR)")
    return base


def resolve(args: argparse.Namespace, spec: str) -> Path:
    return resolve_run(spec, base_arg(args))


def load(args: argparse.Namespace, spec: str, **kwargs: Any) -> Run:
    return open_run(resolve(args, spec), **kwargs)
