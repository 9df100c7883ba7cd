"""Issue 19 item 9: a script run from inside the source clone imports the clone's
unbuilt expman/, which hides the installed copy. The error says so and what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import expman

PKG = Path(expman.__file__).resolve().parent      # the imported copy, with its core
ROOT = Path(__file__).resolve().parents[1]         # the source tree (CI imports an installed copy)
SCRIPT = "import expman\nprint('imported', expman.__file__)\n"
BUILT = ("_core*.so", "_core*.pyd", "*.c", "__pycache__", "static", "node_modules")


def run(script: Path, cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    # -S: no site-packages, so an expman installed in this venv plays no part
    return subprocess.run([sys.executable, "-S", str(script)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A source clone without the built core: setup.py, pyproject.toml, expman/ sans .so."""
    src = tmp_path / "clone"
    shutil.copytree(ROOT / "expman", src / "expman", ignore=shutil.ignore_patterns(*BUILT))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, src / name)
    (src / "use.py").write_text(SCRIPT)
    return src


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """An installed copy, with its core, in a site folder of its own."""
    site = tmp_path / "site"
    shutil.copytree(PKG, site / "expman", ignore=shutil.ignore_patterns("__pycache__", "static"))
    return site


def test_the_clone_shadowing_the_installed_copy_says_so(clone, installed, tmp_path):
    proc = run(clone / "use.py", cwd=clone, pythonpath=[installed])
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: you are running from expman's source folder"), last
    assert str(clone) in last and str(installed / "expman") in last
    assert "another directory" in last and "pip install -e ." in last
    # and the advice works: the same script from elsewhere imports the installed copy
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(clone / "use.py", elsewhere / "use.py")
    ok = run(elsewhere / "use.py", cwd=elsewhere, pythonpath=[installed])
    assert ok.returncode == 0, ok.stderr
    assert f"imported {installed / 'expman' / '__init__.py'}" in ok.stdout


def test_a_clone_with_no_installed_copy_says_to_build(clone):
    proc = run(clone / "use.py", cwd=clone, pythonpath=[])
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "from its source folder" in last and "not built" in last, last
    assert "pip install ." in last and "pip install -e ." in last


def test_an_installed_copy_missing_its_core_says_reinstall(installed, tmp_path):
    for so in (installed / "expman").glob("_core*"):
        if so.suffix in (".so", ".pyd"):
            so.unlink()
    script = tmp_path / "use.py"
    script.write_text(SCRIPT)
    proc = run(script, cwd=tmp_path, pythonpath=[installed])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "install is incomplete" in last, last
