"""``expman tag RUN +a -b`` and ``expman note RUN TEXT``: edit a closed run's run.json
(the work is in expman.runmeta)."""

from __future__ import annotations

import argparse
from typing import Any

from expman.cli._common import BASE, command, resolve
from expman.cli._text import emit_json, out
from expman.errors import ExpmanValueError

__all__ = ["add_parser", "parse_changes", "run_note", "run_tag"]


def add_parser(subparsers: Any) -> None:
    """Registers tag and note."""
    p = command(subparsers, "tag", "add (+name) or remove (-name) tags on a finished run",
                "expman tag mnist/latest +baseline -draft", run_tag, [],
                # '-draft' is a tag to remove, not an option: no option parsing here;
                # --base-dir DIR and --json may come among the changes (parse_changes)
                prefix_chars="\x00", add_help=False)
    p.add_argument("run", metavar="RUN", help="run folder or EXPERIMENT/RUN_NAME")
    p.add_argument("changes", metavar="+TAG|-TAG", nargs="*",
                   help="tags to add or remove; also --base-dir DIR, --json")
    p.set_defaults(tag_parser=p)

    p = command(subparsers, "note", "set the notes of a finished run ('' clears them)",
                "expman note mnist/latest \"lr too high after epoch 3\"", run_note, [BASE])
    p.add_argument("run", metavar="RUN", help="run folder or EXPERIMENT/RUN_NAME")
    p.add_argument("text", metavar="TEXT", help="the new notes")


def parse_changes(changes: list[str]) -> tuple[list[str], list[str], str | None, bool]:
    """('+a', '-b', '--base-dir', 'X', '--json') -> add, remove, base dir, as JSON."""
    add: list[str] = []
    remove: list[str] = []
    base = None
    as_json = False
    it = iter(changes)
    for item in it:
        if item == "--base-dir" or item.startswith("--base-dir="):
            base = item.split("=", 1)[1] if "=" in item else next(it, None)
            if not base:
                raise ExpmanValueError("--base-dir needs a folder")
        elif item == "--json":
            as_json = True
        elif item[:1] == "+" and len(item) > 1:
            add.append(item[1:])
        elif item[:1] == "-" and len(item) > 1:
            remove.append(item[1:])
        else:
            raise ExpmanValueError(f"expman tag: {item!r} must be +TAG (add) or -TAG (remove)")
    return add, remove, base, as_json


def run_tag(args: argparse.Namespace) -> int:
    if args.run in ("-h", "--help"):        # option parsing is off for this command
        args.tag_parser.print_help()
        return 0
    from expman.runmeta import set_tags
    add, remove, base, as_json = parse_changes(list(args.changes))
    if base:
        args.base_dir = base
    run_dir = resolve(args, args.run, writes="tag")
    tags = set_tags(run_dir, add, remove)
    run_id = f"{run_dir.parent.name}/{run_dir.name}"
    if as_json:
        emit_json({"id": run_id, "tags": tags})
    else:
        out(f"{run_id}: tags " + (" ".join(tags) if tags else "(none)"))
    return 0


def run_note(args: argparse.Namespace) -> int:
    from expman.runmeta import set_notes
    run_dir = resolve(args, args.run, writes="note")
    set_notes(run_dir, args.text or None)
    out(f"{run_dir.parent.name}/{run_dir.name}: notes " + ("set" if args.text else "cleared"))
    return 0
