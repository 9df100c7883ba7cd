"""The test suite's own rules: a missing optional dependency skips locally and fails
under CI=true (tests/conftest.py `need`), and no test bypasses that rule."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import conftest
from conftest import need, need_installed

HERE = Path(__file__).resolve().parent


def test_need_imports_an_installed_module() -> None:
    assert need("json.decoder") is sys.modules["json.decoder"]


@pytest.mark.parametrize("check", [need, need_installed], ids=["need", "need_installed"])
def test_missing_module_skips_locally_and_fails_in_ci(monkeypatch, check) -> None:
    monkeypatch.setattr(conftest, "CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"no_such_pkg_x1\.sub is not installed"):
        check("no_such_pkg_x1.sub")
    monkeypatch.setattr(conftest, "CI", True)
    with pytest.raises(pytest.fail.Exception, match="no_such_pkg_x1.sub is not installed.*CI=true"):
        check("no_such_pkg_x1.sub")
    monkeypatch.setattr(conftest, "WITHOUT", {"no_such_pkg_x1"})    # left out on purpose
    with pytest.raises(pytest.skip.Exception):
        check("no_such_pkg_x1.sub")


def test_a_module_that_fails_to_import_is_an_error_not_a_skip(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_pkg_x2.py").write_text("import no_such_dependency_x3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(conftest, "CI", False)
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_x3"):
        need("broken_pkg_x2")


def test_no_test_skips_on_a_missing_module_by_itself() -> None:
    """Every optional import goes through `need`; importorskip is left only for modules
    that a platform lacks by design (resource: POSIX only)."""
    offenders = []
    for path in sorted(HERE.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"importorskip\(\"([\w.]+)\"|except ImportError:\s*\n\s*pytest\.skip",
                             text):
            if m.group(1) != "resource" and path.name != "test_suite_rules.py":
                offenders.append(f"{path.name}: {m.group(0)!r}")
    assert offenders == []
