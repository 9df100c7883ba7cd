"""``expman tag RUN +a -b`` and ``expman note RUN TEXT``: edit a closed run's run.json.

Two small CLI modules in one file (``add_parser``/``run`` each): the main CLI
registers them. The work is in expman.runmeta.
"""

from __future__ import annotations

import argparse
from typing import Any

from expman.errors import ExpmanValueError

__all__ = ["add_tag_parser", "run_tag", "add_note_parser", "run_note", "add_parser", "run"]


def _base(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dir", metavar="DIR",
                   help="where runs live (default: $EXPMAN_DIR or ./experiments)")


def add_tag_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "tag", help="add (+name) or remove (-name) tags on a finished run",
        description="add (+name) or remove (-name) tags on a finished run\n\nexample:\n"
                    "  expman tag mnist/latest +baseline -draft",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # '-draft' is a tag to remove, not an option: no option parsing here;
        # --base-dir DIR may follow RUN among the changes (parse_changes)
        prefix_chars="\x00", add_help=False)
    p.add_argument("run", metavar="RUN", help="run folder or EXPERIMENT/RUN_NAME")
    p.add_argument("changes", metavar="+TAG|-TAG", nargs="*", help="tags to add or remove")
    p.set_defaults(func=run_tag, base_dir=None, tag_parser=p)
    return p


def parse_changes(changes: list[str]) -> tuple[list[str], list[str], str | None]:
    """('+a', '-b', '--base-dir', 'X') -> add, remove, base dir."""
    add: list[str] = []
    remove: list[str] = []
    base = None
    it = iter(changes)
    for item in it:
        if item == "--base-dir" or item.startswith("--base-dir="):
            base = item.split("=", 1)[1] if "=" in item else next(it, None)
            if base is None:
                raise ExpmanValueError("--base-dir needs a folder")
        elif item[:1] == "+" and len(item) > 1:
            add.append(item[1:])
        elif item[:1] == "-" and len(item) > 1:
            remove.append(item[1:])
        else:
            raise ExpmanValueError(f"expman tag: {item!r} must be +TAG (add) or -TAG (remove)")
    return add, remove, base


def run_tag(args: argparse.Namespace) -> int:
    if args.run in ("-h", "--help"):        # option parsing is off for this command
        args.tag_parser.print_help()
        return 0
    from expman.layout import resolve_run
    from expman.runmeta import set_tags
    add, remove, base = parse_changes(list(args.changes))
    run_dir = resolve_run(args.run, base or args.base_dir)
    tags = set_tags(run_dir, add, remove)
    print(f"{run_dir.parent.name}/{run_dir.name}: tags " + (" ".join(tags) if tags else "(none)"))
    return 0


def add_note_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "note", help="set the notes of a finished run ('' clears them)",
        description="set the notes of a finished run ('' clears them)\n\nexample:\n"
                    "  expman note mnist/latest \"lr too high after epoch 3\"",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or EXPERIMENT/RUN_NAME")
    p.add_argument("text", metavar="TEXT", help="the new notes")
    _base(p)
    p.set_defaults(func=run_note)
    return p


def run_note(args: argparse.Namespace) -> int:
    from expman.layout import resolve_run
    from expman.runmeta import set_notes
    run_dir = resolve_run(args.run, args.base_dir)
    set_notes(run_dir, args.text or None)
    print(f"{run_dir.parent.name}/{run_dir.name}: notes " + ("set" if args.text else "cleared"))
    return 0


def add_parser(subparsers: Any) -> None:
    """Registers both commands."""
    add_tag_parser(subparsers)
    add_note_parser(subparsers)


def run(args: argparse.Namespace) -> int:
    return int(args.func(args))
