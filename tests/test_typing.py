"""The typed surface: ``py.typed``, ``_core.pyi`` and a typed usage file.

mypy is in the ``test`` extra; without it the mypy checks skip (fail under CI=true)
and only the usage file's run remains.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import expman
from conftest import need_installed

HERE = Path(__file__).resolve().parent
USAGE = HERE / "typing_usage.py"
ALLOWLIST = HERE / "stubtest_allowlist.txt"
PKG = Path(expman.__file__).resolve().parent


def test_marker_and_stub_ship_with_the_package() -> None:
    assert (PKG / "py.typed").is_file()
    assert (PKG / "_core.pyi").is_file()


def test_usage_file_runs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("typing_usage", USAGE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory):
    """Run mypy (or stubtest) on the expman that the tests import, with one shared cache."""
    need_installed("mypy")
    cache = tmp_path_factory.mktemp("mypy-cache")
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    site = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    if os.path.realpath(PKG.parent) not in site:    # a source tree, not an installed package
        env["MYPYPATH"] = str(PKG.parent)

    def run(*args: str, module: str = "mypy") -> subprocess.CompletedProcess[str]:
        extra = [] if module == "mypy.stubtest" else ["--cache-dir", str(cache)]
        return subprocess.run([sys.executable, "-m", module, *extra, *args], cwd=cache,
                              env=env, capture_output=True, text=True, timeout=300)
    return run


def test_mypy_strict_accepts_usage_file(mypy) -> None:
    res = mypy("--strict", "--follow-imports=silent", "--no-color-output", str(USAGE))
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_sees_the_core_types(mypy, tmp_path: Path) -> None:
    """Misuse of the compiled methods is caught, so the stub is used (not Any)."""
    bad = tmp_path / "bad_usage.py"
    bad.write_text(
        "from expman import Experiment\n"
        "def f(exp: Experiment) -> None:\n"
        "    exp.flush(timeout='soon')\n"
        "    exp.log_metrics([('loss', 1.0)])\n"
        "    s: str = exp.last_step\n")
    res = mypy("--strict", "--follow-imports=silent", "--no-color-output", "--no-error-summary",
               str(bad))
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["3", "4", "5"], res.stdout + res.stderr


def test_stub_matches_compiled_module(mypy) -> None:
    res = mypy("--allowlist", str(ALLOWLIST), "expman._core", module="mypy.stubtest")
    assert res.returncode == 0, res.stdout + res.stderr
