"""The ``expman`` command line (also ``python -m expman``).

Each command module registers its commands with ``add_parser(subparsers)``
(shared parents for the base dir and ``--json`` in ``_common``); this module
only assembles them and runs one: ``runs.py`` (list, show, compare, tail),
``files.py`` (export, verify, du, clean), ``demo``, ``serve``, ``tags`` (tag,
note), ``tensorboard`` (import-tensorboard), ``ranks``, ``lake``
(export-lake), ``export_mlflow`` (export-mlflow), ``sync``, ``watch``, ``index``, ``sql``.
RUN is a run folder path, a run's URL, or a run spec under the base dir
(``expman.layout.resolve_run``: ``experiment/run_name``,
``experiment/latest``, a unique prefix); the base dir is in ``_common``.

Errors are one line on stderr and a non-zero exit code: 1 for a failure (or
damage found by ``verify``), 2 for a usage error, 130 on Ctrl-C. Set
``EXPMAN_DEBUG=1`` to see the traceback of an unexpected error. JSON output
spells non-finite floats "NaN", "Infinity", "-Infinity" (``expman.layout``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any

from expman._version import __version__
from expman.cli import _text
from expman.cli._common import BASE_HELP
from expman.cli._text import CliError, note
from expman.errors import ExpmanError

__all__ = ["main", "build_parser", "COMMANDS"]

# each module's add_parser(subparsers) registers its commands, in this order in --help
MODULES = ("demo", "serve", "runs", "files", "tags", "tensorboard", "ranks", "lake",
           "export_mlflow", "sync", "watch", "index", "sql")
# the module registering each command: a command imports only its own module
# (the start-up of `expman list` is part of what a listing costs); --help, an
# unknown command or a bare `expman` import them all
COMMAND_MODULES = {
    "demo": "demo", "serve": "serve", "list": "runs", "show": "runs", "compare": "runs",
    "tail": "runs", "export": "files", "verify": "files", "du": "files", "clean": "files",
    "tag": "tags", "note": "tags", "import-tensorboard": "tensorboard", "ranks": "ranks",
    "export-lake": "lake", "export-mlflow": "export_mlflow", "sync": "sync", "watch": "watch",
    "index": "index", "sql": "sql"}
COMMANDS = tuple(COMMAND_MODULES)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command``'s module only."""
    parser = argparse.ArgumentParser(
        prog="expman", description="Read, compare and tidy expman runs.",
        epilog="RUN is a run folder, or EXPERIMENT/RUN_NAME (or EXPERIMENT/latest) under the base "
               "dir. The base dir is BASE_DIR or --base-dir (before or after the command), else "
               "$EXPMAN_DIR, else ./experiments; commands that read runs also take a URL "
               "that `expman sync` wrote (s3://bucket/runs).")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--base-dir", metavar="DIR", help=BASE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in (COMMAND_MODULES[command],) if command in COMMAND_MODULES else MODULES:
        importlib.import_module(f"expman.cli.{name}").add_parser(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option of
    ``expman`` itself (``--base-dir DIR``, ``--version``, ``-h``)."""
    words = iter(argv)
    for word in words:
        if word == "--base-dir":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    text = str(message)
    sys.stderr.write((text if text.startswith("expman:") else f"expman: warning: {text}") + "\n")


def _utf8_stdout() -> None:
    """Piped output (CSV, JSON) is UTF-8 everywhere, not the Windows ANSI code page;
    a terminal that cannot show a character gets a replacement, not a crash."""
    try:
        if sys.stdout.isatty():
            sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
        elif (sys.stdout.encoding or "").lower().replace("-", "") != "utf8":
            sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    digits = getattr(args, "digits", None)
    warnings.showwarning = _show_warning
    _utf8_stdout()
    try:
        with _text.rounding(digits):
            return args.func(args) or 0
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`expman export ... | head`): not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (CliError, ExpmanError, OSError, ImportError, ValueError) as e:
        if os.environ.get("EXPMAN_DEBUG"):
            raise
        msg = str(e)
        if isinstance(e, OSError) and e.strerror and e.filename:
            msg = e.strerror if str(e.filename) in e.strerror else f"{e.strerror}: {e.filename}"
        note(f"error: {msg}")
        return 1
    except Exception as e:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("EXPMAN_DEBUG"):
            raise
        note(f"internal error: {type(e).__name__}: {e} (EXPMAN_DEBUG=1 shows the traceback)")
        return 1
