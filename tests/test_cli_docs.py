"""docs/cli.md is in step with the parser: every command has a section whose usage
line names exactly the command's options and positionals (sqlite-utils' test_docs)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from expman.cli import COMMANDS, build_parser

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
SHARED = {"-h", "--help", "--base-dir"}       # every command's; documented once, at the top
# `expman tag` parses its own options (a tag may start with '-': tags.parse_changes)
HAND_PARSED = {"tag": {"--json"}}
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def section(cmd: str) -> str:
    m = re.search(rf"^## `expman {re.escape(cmd)}`\n(.*?)(?=^## |\Z)", DOCS, re.MULTILINE | re.DOTALL)
    assert m, f"docs/cli.md has no section for `expman {cmd}`"
    return m.group(1)


def test_every_registered_command_has_a_section_and_no_other():
    assert set(subparsers()) == set(COMMANDS)
    documented = set(re.findall(r"^## `expman ([\w-]+)`", DOCS, re.MULTILINE))
    assert documented == set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_usage_line_names_every_option_and_argument(cmd):
    p = subparsers()[cmd]
    text = section(cmd)
    m = re.search(rf"^usage: expman {re.escape(cmd)}\b(.*)$", text, re.MULTILINE)
    assert m, f"the `expman {cmd}` section has no usage line"
    usage = m.group(1)
    options = {s for a in p._actions for s in a.option_strings} - SHARED
    options |= HAND_PARSED.get(cmd, set())
    assert set(OPTION.findall(usage)) - {"-TAG"} == options, (
        f"docs/cli.md `expman {cmd}` usage: {usage!r} against the parser's {sorted(options)}")
    for a in p._actions:
        if not a.option_strings and a.dest != "help":
            assert (a.metavar or a.dest) in usage, (cmd, a.metavar or a.dest)
    assert "--base-dir" in p.format_usage() or cmd in HAND_PARSED   # the shared parent


def test_shared_options_are_documented_at_the_top():
    top = DOCS[:DOCS.index("## `expman")]
    for word in ("--base-dir", "EXPMAN_DIR", "BASE_DIR", "--json", "--digits", "s3://"):
        assert word in top, word
