"""The ``expman`` command line (also ``python -m expman``).

Each command parses its arguments, calls public library functions and prints:
``runs.py`` (list, show, compare, tail), ``files.py`` (export, verify, du,
clean), ``demo.py``. RUN is a run folder path or a run spec under the base dir
(``expman.layout.resolve_run``: ``experiment/run_name``, ``experiment/latest``,
a unique prefix); the base dir is ``--base-dir``, else ``$EXPMAN_DIR``, else
``./experiments``.

Errors are one line on stderr and a non-zero exit code: 1 for a failure (or
damage found by ``verify``), 2 for a usage error, 130 on Ctrl-C. Set
``EXPMAN_DEBUG=1`` to see the traceback of an unexpected error. JSON output
spells non-finite floats "NaN", "Infinity", "-Infinity" (``expman.layout``).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Callable

from expman._version import __version__
from expman.cli import _text
from expman.cli._text import CliError, note
from expman.cli.demo import cmd_demo
from expman.cli.files import cmd_clean, cmd_du, cmd_export, cmd_verify, parse_age
from expman.cli.runs import cmd_compare, cmd_list, cmd_show, cmd_tail
from expman.errors import ExpmanError
from expman.export import FORMATS
from expman.layout import CRASHED, DAMAGED, FINAL_STATUSES, STATUSES
from expman.series import DUPLICATES

__all__ = ["main", "build_parser", "COMMANDS"]


COMMANDS = ("demo", "serve", "list", "show", "export", "tail", "compare", "verify", "du", "clean",
            "tag", "note", "import-tensorboard", "ranks", "export-lake", "sync")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expman", description="Read, compare and tidy expman runs.",
        epilog="RUN is a run folder, or EXPERIMENT/RUN_NAME (or EXPERIMENT/latest) under the base "
               "dir. The base dir is --base-dir, else $EXPMAN_DIR, else ./experiments.")
    parser.add_argument("--version", action="version", version=f"expman {__version__}")
    parser.add_argument("--base-dir", dest="top_base_dir", metavar="DIR", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    based = argparse.ArgumentParser(add_help=False)
    based.add_argument("--base-dir", metavar="DIR",
                       help="where runs live (default: $EXPMAN_DIR or ./experiments)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable JSON output")
    as_json.add_argument("--digits", type=int, metavar="N",
                         help="round floats in tables to N significant digits (default: the "
                              "shortest form that reads back exactly)")

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int],
            parents: list[argparse.ArgumentParser], example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter, parents=parents)
        p.set_defaults(func=func)
        return p

    p = add("demo", "run a short synthetic training loop into ./experiments and show it",
            cmd_demo, [based], "expman demo --steps 300")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--delay", type=float, default=0.01,
                   help="seconds to sleep per step, so there is time to `expman tail --follow` "
                        "it (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = add("list", "a table of runs, newest first", cmd_list, [based, as_json],
            "expman list -e demo --status FINISHED")
    p.add_argument("base", nargs="?", metavar="BASE_DIR",
                   help="default: $EXPMAN_DIR, else ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper, choices=list(STATUSES),
                   help="only runs with this status (repeatable)")
    p.add_argument("-n", "--limit", type=int, help="at most this many runs")
    p.add_argument("--tag", action="append", metavar="TAG",
                   help="only runs with this tag (repeatable: all of them)")
    p.add_argument("--group", metavar="NAME", help="only runs of this group")

    p = add("show", "one run: params, environment, metric summary, messages, artifacts, integrity",
            cmd_show, [based, as_json], "expman show demo/latest")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-m", "--messages", type=int, default=10, help="last messages to show (default 10)")

    p = add("export", "a run's metrics as CSV, JSONL or Parquet (long: metric, step, time, value)",
            cmd_export, [based], "expman export demo/latest --format csv -o demo.csv")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--format", choices=[*FORMATS, "tensorboard"],
                   help="default: from the -o extension (.csv, .tsv, .jsonl, .parquet, text "
                        "ones optionally .gz), else csv; tensorboard writes event files into "
                        "the -o folder")
    p.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    p.add_argument("--metric", action="append", metavar="NAME", help="only this metric (repeatable)")
    p.add_argument("--duplicates", "--reduce", dest="duplicates", choices=list(DUPLICATES),
                   help="one value per step for duplicate steps (default: every record as "
                        "logged); --reduce is its old name")
    p.add_argument("--salvage", action="store_true",
                   help="keep the frames after damage in the middle of the file")

    p = add("tail", "the last metrics and messages of a run; --follow prints new ones as they come",
            cmd_tail, [based, as_json], "expman tail demo/latest --follow")
    p.add_argument("run", metavar="RUN")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing until the run ends (Ctrl-C to stop)")
    p.add_argument("-n", "--lines", type=int, default=10, help="lines to show first (default 10)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")

    p = add("compare", "params that differ and final metrics, side by side", cmd_compare,
            [based, as_json], "expman compare demo/latest demo/20250101-120000-ab12cd")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--all", action="store_true", help="show params that are equal too")

    p = add("verify", "check a run's files (frames, torn tail, corruption); --repair cuts a torn tail",
            cmd_verify, [based, as_json], "expman verify demo/latest --repair")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--repair", action="store_true",
                   help="cut a torn tail (the bytes cut are kept in metrics.bin.torn)")

    p = add("du", "disk use per experiment (or per run)", cmd_du, [based, as_json], "expman du --runs")
    p.add_argument("base", nargs="?", metavar="BASE_DIR",
                   help="default: $EXPMAN_DIR, else ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--runs", action="store_true", help="one line per run, largest first")

    p = add("clean", "remove runs by status, age or count; a dry run unless --yes", cmd_clean,
            [based], "expman clean --status FAILED --status CRASHED --older-than 7d --yes")
    p.add_argument("base", nargs="?", metavar="BASE_DIR",
                   help="default: $EXPMAN_DIR, else ./experiments")
    p.add_argument("-e", "--experiment", help="only this experiment")
    p.add_argument("--status", action="append", type=str.upper,
                   choices=[*FINAL_STATUSES, CRASHED, DAMAGED],
                   help="remove runs with this status (repeatable); RUNNING runs are never removed")
    p.add_argument("--older-than", type=parse_age, metavar="AGE",
                   help="remove runs started longer ago than AGE: 90s, 30m, 12h, 7d, 2w")
    p.add_argument("--keep", type=int, metavar="N",
                   help="always keep the newest N runs of each experiment")
    p.add_argument("--yes", action="store_true", help="remove for real (default: dry run)")

    from expman.cli import lake, ranks, serve, sync, tags, tensorboard   # leaves with own parsers
    for leaf in (serve, tags, tensorboard, ranks, lake, sync):
        leaf.add_parser(sub)
    return parser


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "keep", None) is not None and args.keep < 0:
        parser.error("--keep must be 0 or more")
    if getattr(args, "digits", None) is not None:
        if not 1 <= args.digits <= 17:
            parser.error("--digits must be between 1 and 17")
        _text.DIGITS = args.digits
    warnings.showwarning = _show_warning
    _utf8_stdout()
    try:
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
