"""What every command shares: how it is registered, its base dir, ``--json``,
and turning a RUN argument into a run folder.

Every command module exposes ``add_parser(subparsers)``, which registers its
command(s) through ``command()`` with the shared parents below and sets
``func`` (the handler, ``func(args) -> exit code``); ``expman.cli`` only
assembles them.

The base dir is, first to last: the command's ``BASE_DIR`` positional (where it
has one), ``--base-dir`` (after the command or before it:
``expman --base-dir X list``), ``$EXPMAN_DIR``, ``./experiments``. It may be a
URL that ``expman sync`` wrote (``s3://bucket/runs``, any fsspec URL): commands
that read runs read a local copy (``expman.remote.localize``); commands that
write runs refuse it. A URL is kept a string: ``Path`` would fold ``s3://`` into
``s3:/``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expman.cli._text import FULL, CliError
from expman.layout import BASE_DIR_ENV, DEFAULT_BASE_DIR, is_run_dir, resolve_run
from expman.reader import Run, open_run
from expman.remote import is_url, localize

BASE_HELP = "where runs live: a folder or a synced URL (default: $EXPMAN_DIR, else ./experiments)"


def _parent(*args: str, **kwargs: Any) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(*args, **kwargs)
    return p


# the shared option groups; SUPPRESS keeps a value given before the command
# (`expman --base-dir X list`) when the command itself is given none
BASE = _parent("--base-dir", metavar="DIR", default=argparse.SUPPRESS, help=BASE_HELP)
JSON = _parent("--json", action="store_true", help="machine-readable JSON output")
def _digits(text: str) -> int | str:
    """--digits: 1 to 17, or ``full``."""
    if text == FULL:
        return FULL
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 17:
        raise argparse.ArgumentTypeError(f"must be 1 to 17 or 'full', got {text!r}")
    return n


DIGITS = _parent("--digits", type=_digits, metavar="N",
                 help="floats in tables to N significant digits, or 'full' for the shortest "
                      "exact form (default: 6, more only where a column's different values "
                      "would print alike)")


def command(subparsers: Any, name: str, help: str, example: str,
            func: Callable[..., int], parents: list[argparse.ArgumentParser],
            **kwargs: Any) -> argparse.ArgumentParser:
    """One subcommand: a one-line summary, an example in its --help, the shared parents."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help, description=f"{help}\n\nexample:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents, **kwargs)
    p.set_defaults(func=func)
    return p


def add_base_positional(p: argparse.ArgumentParser) -> None:
    """``[BASE_DIR]`` for commands whose natural argument is the base dir."""
    p.add_argument("base", nargs="?", metavar="BASE_DIR", help=BASE_HELP)


def base_spec(args: argparse.Namespace, positional: str | None = None) -> str:
    """The base dir as given (a path or a URL): BASE_DIR, --base-dir, $EXPMAN_DIR, ./experiments."""
    flag = getattr(args, "base_dir", None)
    if positional and flag and positional != flag:
        raise CliError(f"BASE_DIR {positional} and --base-dir {flag} name different base dirs: "
                       "give one")
    chosen = positional or flag or os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR
    return os.fspath(chosen)


def refuse_url(where: str, writes: str) -> None:
    if is_url(where):
        raise CliError(f"{where} is a URL, and {writes} needs a local folder (runs are written "
                       "locally, then copied with `expman sync`)")


def base_arg(args: argparse.Namespace, positional: str | None = None,
             writes: str | None = None) -> Path:
    """The base dir as a local folder: a URL is read through its local copy, or
    refused when the command (named by ``writes``) writes into it."""
    spec = base_spec(args, positional)
    if writes:
        refuse_url(spec, writes)
    return localize(spec)


def need_base(base: Path) -> Path:
    if not base.is_dir():
        raise CliError(f"no base dir {base} (make a first run with `expman demo`, "
                       "or pass BASE_DIR / --base-dir / EXPMAN_DIR)")
    return base


def resolve(args: argparse.Namespace, spec: str, writes: str | None = None) -> Path:
    """RUN as a local run folder: a path, a run's URL, or a spec under the base dir."""
    if writes:
        refuse_url(spec, writes)
    if is_url(spec):
        return localize(spec)
    if is_run_dir(Path(spec)):
        return Path(spec)
    return resolve_run(spec, base_arg(args, writes=writes))


def remote_run(args: argparse.Namespace, spec: str) -> bool:
    """True when RUN is read from the local copy of a URL."""
    return is_url(spec) or (not is_run_dir(Path(spec)) and is_url(base_spec(args)))


def load(args: argparse.Namespace, spec: str, **kwargs: Any) -> Run:
    return open_run(resolve(args, spec), **kwargs)
