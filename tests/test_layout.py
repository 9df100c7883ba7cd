"""The layout's rules (docs/architecture.md), each checked on the source itself:

1. only ``expman/layout.py`` spells a run-folder file name, a status or the
   heartbeat (C keeps its own copies in exlog.h/.c; they must agree);
2. importing the read side never imports the write side;
3. the CLI and every other surface import no ``_core`` and no private name of
   another module, nor call a private method, and library modules never print or exit;
4. the library functions the surfaces call are public, documented and typed.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import typing
from pathlib import Path

import pytest

import expman
from expman import layout

from conftest import run_python

PKG = Path(expman.__file__).resolve().parent
SOURCES = sorted(p for p in PKG.rglob("*.py") if "static" not in p.parts)

CONTRACT = {layout.RUN_FILE, layout.PARAMS_FILE, layout.METRICS_FILE, layout.EVENTS_FILE,
            layout.ARTIFACTS_DIR, *layout.STATUSES, layout.DAMAGED}
for _name in ("SUMMARY_FILE", "OUTPUT_FILE", "LOCK_FILE", "ALERTS_FILE"):
    if hasattr(layout, _name):
        CONTRACT.add(getattr(layout, _name))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant, docstrings excepted (prose may name a file)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _spelled(value: str) -> set[str]:
    """Contract names a string literal spells: the whole string, or a path part of it
    ("artifacts" alone is also a JSON key; as a folder it comes with a separator)."""
    found = {value} & (CONTRACT - {layout.ARTIFACTS_DIR})
    if re.search(r"[/\\]", value) and not value.startswith("/api/"):     # URL routes are not paths
        found |= {part for part in re.split(r"[/\\]", value) if part in CONTRACT}
    return found


def test_rule1_only_the_contract_module_spells_names_and_statuses():
    offenders = []
    for path in SOURCES:
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, value in _strings(tree):
            hit = _spelled(value)
            if hit:
                offenders.append(f"{path.relative_to(PKG.parent)}:{line}: {sorted(hit)}")
    assert not offenders, "spell these through expman.layout:\n" + "\n".join(offenders)


def test_rule1_heartbeat_spelled_once():
    offenders = []
    for path in SOURCES:
        if path.name == "layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?i)heartbeat\w*\s*[:=]\s*10(\.0)?\b", text):
            offenders.append(f"{path.name}: {m.group()}")
    assert not offenders, offenders


def test_rule1_c_constants_agree_with_python():
    from expman import _core
    src = Path(__file__).resolve().parent.parent / "expman" / "src"   # not in the wheel
    c_src = (src / "exlog.c").read_text() + (src / "exlog.h").read_text()
    heartbeat_ms = re.search(r"heartbeat_ms\s*>\s*0\s*\?\s*heartbeat_ms\s*:\s*(\d+)", c_src)
    assert heartbeat_ms, "exlog.c's default heartbeat not found"
    assert int(heartbeat_ms.group(1)) == int(layout.HEARTBEAT_INTERVAL * 1000)
    magic = re.search(r'#define EXLOG_FILE_MAGIC "(\w+)"', c_src)
    assert magic and _core.file_header()[:8] == magic.group(1).encode()
    version = re.search(r"#define EXLOG_FORMAT_VERSION (\d+)u", c_src)
    assert version and int(version.group(1)) == _core.FORMAT_VERSION
    size = re.search(r"#define EXLOG_HEADER_SIZE (\d+)", c_src)
    assert size and int(size.group(1)) == _core.HEADER_SIZE == len(_core.file_header())


READ_SIDE = ["expman.reader", "expman.tail", "expman.series", "expman.verify", "expman.export",
             "expman.disk", "expman.layout", "expman.refreader", "expman.cli", "expman.summary",
             "expman.ranks", "expman.table", "expman.media_read", "expman.remote", "expman.lake",
             "expman.sync", "expman.dashboard", "expman.dashboard.server"]
WRITE_SIDE = ["expman.experiment", "expman.lifecycle", "expman.artifacts", "expman.environment",
              "expman._current", "expman.sysmetrics", "expman.capture", "expman.media"]


@pytest.mark.parametrize("module", READ_SIDE)
def test_rule2_reading_never_loads_the_writer(module, tmp_path):
    proc = run_python(f"""
        import sys
        import {module}
        import expman
        expman.open_run, expman.list_runs, expman.verify_run, expman.export_run   # lazy names
        loaded = [m for m in {WRITE_SIDE!r} if m in sys.modules]
        assert not loaded, loaded
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_rule2_the_cli_reads_a_run_without_the_writer(tmp_path):
    with expman.Experiment("e", "r", base_dir=tmp_path) as exp:
        exp.log_metrics({"loss": 1.0}, step=0)
    proc = run_python(f"""
        import sys
        from expman.cli import main
        for argv in (["list"], ["show", "e/r"], ["verify", "e/r"], ["du"],
                     ["export", "e/r", "-o", {str(tmp_path / 'x.csv')!r}]):
            assert main([*argv, "--base-dir", {str(tmp_path)!r}]) == 0, argv
        loaded = [m for m in {WRITE_SIDE!r} if m in sys.modules]
        assert not loaded, loaded
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_rule3_the_cli_only_calls_public_library_functions():
    offenders = []
    for path in sorted((PKG / "cli").glob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("expman"):
                continue
            if module.startswith("expman.cli"):
                continue                                # the CLI's own helpers
            parts = module.split(".")
            if any(p.startswith("_") for p in parts[1:]) and module != "expman._version":
                offenders.append(f"{path.name}: imports {module}")
            offenders += [f"{path.name}: {module}.{n}" for n in names if n.startswith("_")
                          and n != "__version__"]
    assert not offenders, offenders


SURFACES = ["cli", "integrations", "dashboard", "wandb.py", "tensorboard.py", "tbio.py",
            "lake.py", "sync.py", "mlflow.py", "export_mlflow.py", "watch"]
# the guarded file layer is shared by the library and the surfaces (issue 20: one way to
# touch run files); the version is a constant
SHARED_PRIVATE_MODULES = {"expman._version", "expman._fsutil"}
# known offenders owned elsewhere, each with the change that removes it
PENDING: dict[str, str] = {}       # offenders allowed for now, each with its reason


def _surface_files(surface: str) -> list[Path]:
    path = PKG / surface
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _defined_names(trees: list[ast.AST]) -> set[str]:
    """Every name a surface defines itself (functions, classes, assigned attributes,
    variables, arguments): its own private names are its business."""
    names: set[str] = set()
    for tree in trees:
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                names.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                names.add(n.id)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
    return names


def _private_uses(surface: str) -> list[str]:
    files = _surface_files(surface)
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in files}
    own = _defined_names(list(trees.values()))
    package = "expman." + surface.removesuffix(".py")
    found = []
    for path, tree in trees.items():
        where = path.relative_to(PKG).as_posix()
        for node in ast.walk(tree):
            modules: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [(node.module, [a.name for a in node.names])]
            elif isinstance(node, ast.Import):
                modules = [(a.name, []) for a in node.names]
            for module, names in modules:
                if not module.startswith("expman") or module.startswith(package):
                    continue                        # a surface's own helpers are its own
                if module == "expman":
                    names_private = [n for n in names if n.startswith("_")]
                    found += [f"{where}: imports expman.{n}" for n in names_private]
                    continue
                if any(p.startswith("_") for p in module.split(".")[1:]) \
                        and module not in SHARED_PRIVATE_MODULES:
                    found.append(f"{where}: imports {module}")
                found += [f"{where}: imports {module}.{n}" for n in names
                          if n.startswith("_") and n != "__version__"]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.endswith("__") and node.attr not in own \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_rule3_surfaces_call_only_public_library_api():
    """Issue 19.5: the CLI, the integrations, the dashboard, the drop-ins, the importer,
    the lake and sync import no ``_core`` or other private module or name, and call no
    private method of a library object (``exp._log_event``): what they need is public."""
    offenders = [use for surface in SURFACES for use in _private_uses(surface)]
    unexpected = [use for use in offenders if use not in PENDING]
    assert not unexpected, "make these public library calls:\n" + "\n".join(unexpected)


def test_rule3_the_surface_check_sees_a_private_call(tmp_path, monkeypatch):
    """The check above is not vacuous: it names a private method call, a private
    module and a private name imported from a library module."""
    surface = tmp_path / "surface.py"
    surface.write_text("from expman import _core\nfrom expman.reader import _LAST_CACHE\n"
                       "import expman._fsutil\n"
                       "def f(exp):\n    exp._log_event({})\n    self._mine = exp._mine\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", tmp_path)
    assert _private_uses("surface.py") == [
        "surface.py: imports expman._core", "surface.py: imports expman.reader._LAST_CACHE",
        "surface.py:5: exp._log_event"]


def test_rule3_library_functions_never_print_or_exit():
    offenders = []
    for path in SOURCES:
        rel = path.relative_to(PKG)
        if rel.parts[0] == "cli" or path.name in ("__main__.py",) or "dashboard" in rel.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else (
                    f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "")
                if name in ("print", "sys.exit", "exit", "quit", "os._exit"):
                    offenders.append(f"{rel}:{node.lineno}: {name}()")
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["verify_run", "export_run", "disk_usage", "resolve_run",
                                  "open_run", "list_runs"])
def test_rule4_public_functions_are_documented_and_typed(name):
    func = getattr(expman, name)
    assert name in expman.__all__
    assert func.__doc__ and len(func.__doc__.strip()) > 40, name
    hints = typing.get_type_hints(func)
    assert "return" in hints, name
    params = [p for p in inspect.signature(func).parameters if p not in ("self",)]
    assert all(p in hints for p in params), (name, [p for p in params if p not in hints])


def test_resolve_run_specs(tmp_path, monkeypatch):
    import time
    runs = {}
    for exp_name, run_name in [("a", "20260101-r1"), ("a", "20260102-r2"), ("b", "solo")]:
        with expman.Experiment(exp_name, run_name, base_dir=tmp_path) as exp:
            runs[(exp_name, run_name)] = exp.run_dir
        time.sleep(0.01)
    assert expman.resolve_run("a/latest", tmp_path) == runs[("a", "20260102-r2")]
    assert expman.resolve_run("latest", tmp_path) == runs[("b", "solo")]
    assert expman.resolve_run("a/20260101", tmp_path) == runs[("a", "20260101-r1")]
    assert expman.resolve_run("sol", tmp_path) == runs[("b", "solo")]
    assert expman.resolve_run(runs[("b", "solo")]) == runs[("b", "solo")]
    with pytest.raises(expman.RunNotFoundError, match="ambiguous"):
        expman.resolve_run("a/2026", tmp_path)
    with pytest.raises(expman.RunNotFoundError, match="is an experiment"):
        expman.resolve_run("a", tmp_path)
    with pytest.raises(expman.ExpmanValueError):
        expman.resolve_run("a/../b", tmp_path)
    # the library takes the same specs as the CLI, with the same base-dir rule
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path))
    assert expman.open_run("a/latest").run_name == "20260102-r2"
    assert expman.list_runs()[0].run_name == "solo"
    err = pytest.raises(FileNotFoundError, expman.open_run, "a/nope").value
    assert str(err).count("a/nope") == 1, err


def _import_graph() -> dict[str, set[str]]:
    """expman module -> the expman modules it imports, read with ast: every import
    statement, function-local ones included (a deferred import is still a
    dependency); only ``if TYPE_CHECKING:`` blocks are left out (never run)."""
    import ast
    root = Path(expman.__file__).parent

    def name_of(p: Path) -> str:
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        found: set[str] = set()
        todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
        while todo:
            node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import):
                    found.update(a.name for a in child.names)
                elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                    found.add(child.module)
                    found.update(f"{child.module}.{a.name}" for a in child.names)
                todo.append(child)
        graph[mod] = {m for m in found if m in files and m not in (mod, "expman")}
    return graph


def test_no_import_cycle_in_the_package():
    """Issue 19 item 4: the package's import graph is acyclic (a module may import
    ``expman`` itself, the lazy facade, but no module reaches itself again)."""
    graph = _import_graph()
    assert {"expman.layout", "expman.liveness", "expman.readmodel"} <= set(graph)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [mod, dep])
            elif dep not in state:
                visit(dep, path + [mod])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_contract_module_is_a_leaf():
    """layout.py imports nothing of expman but the errors (liveness lives above it)."""
    assert _import_graph()["expman.layout"] <= {"expman.errors", "expman._fsutil"}
