"""The docs describe what exists (issue 22.8): every page and file they link is there,
every `expman COMMAND` they name is a command, every `expman.name` they name is
defined, and none says a built feature is still to come."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from expman.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
COMMAND = re.compile(r"`expman ([a-z][a-z-]*)")
NAME = re.compile(r"(?<![\w/.-])expman(?:\.[A-Za-z_]\w*)+")
# `expman.x` that is not a Python name of this package: the dashboard's browser storage
# keys, the MLflow tags export-mlflow writes, expman-rs's own API in the peers table
NOT_PYTHON = {("dashboard.md", "expman.folded"), ("dashboard.md", "expman.pinned"),
              ("dashboard.md", "expman.columns"), ("dashboard.md", "expman.xaxis"),
              ("dashboard.md", "expman.theme"),          # the page's localStorage keys
              ("cli.md", "expman.status"), ("cli.md", "expman.group"), ("cli.md", "expman.run"),
              ("integrations.md", "expman.run"), ("benchmarks.md", "expman.read_metrics")}
STALE = ("not built yet", "still to come", "until the CLI package registers")


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def test_every_link_to_a_file_or_page_exists():
    missing = [(doc.name, target) for doc in DOCS for target in LINK.findall(_text(doc))
               if not target.startswith(("http://", "https://", "mailto:"))
               and not (doc.parent / target).exists()]
    assert missing == []


def test_every_command_the_docs_name_exists():
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    named = {(doc.name, c) for doc in DOCS for c in COMMAND.findall(_text(doc))}
    assert named and {(d, c) for d, c in named if c not in commands} == set()


def _defines(module_file: Path, attrs: list[str]) -> bool:
    """``attrs[0]`` (then ``attrs[1]`` inside it, a class) is defined at the top of the
    module's source: read with ast, so a module needing an optional library still counts."""
    body: list[ast.stmt] = ast.parse(module_file.read_text(encoding="utf-8")).body
    for attr in attrs:
        found = None
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and node.name == attr:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                    found = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                if any((a.asname or a.name.split(".")[0]) == attr for a in node.names):
                    found = node
        if found is None:
            return False
        body = found.body if isinstance(found, ast.ClassDef) else []
    return True


def _exists(dotted: str) -> bool:
    """The longest importable prefix is a module; the rest is defined in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:           # a prefix that is a module, not a package
            spec = None
        if spec is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if spec.origin and spec.origin.endswith(".py") and _defines(Path(spec.origin), rest):
            return True
        obj: object = importlib.import_module(module)     # the compiled core, or a re-export
        for attr in rest:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_expman_name_the_docs_use_is_defined(doc):
    names = {n for n in NAME.findall(_text(doc)) if (doc.name, n) not in NOT_PYTHON}
    assert [n for n in sorted(names) if not _exists(n)] == []


def test_no_doc_says_a_built_feature_is_still_to_come():
    stale = [(doc.name, phrase) for doc in DOCS for phrase in STALE
             if phrase in _text(doc).lower()]
    assert stale == []
