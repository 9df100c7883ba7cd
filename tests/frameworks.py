"""Importing a framework for the integration tests: skip locally when it is
missing, fail in CI (``CI=true``), where ``.ci/run`` installs every extra."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str) -> ModuleType:
    """The module; a skip if it is not installed, unless in CI, where that is an error."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def require_installed(module: str) -> None:
    """Like ``require`` without importing the module here (a subprocess will)."""
    import importlib.util
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return
    if os.environ.get("CI") == "true":
        raise ModuleNotFoundError(f"{module} is not installed (CI installs every extra)")
    pytest.skip(f"{module} is not installed")
