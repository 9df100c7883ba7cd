"""The ImportError for an expman without its compiled core, saying why and what to do.

The common case (numpy has the same message): a script run from inside the source
clone. Python puts the script's folder (or the current directory) first on
``sys.path``, so ``import expman`` finds the clone's unbuilt ``expman/`` before the
copy ``pip install .`` built and installed. Loaded only on that failure.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from pathlib import Path

SOURCE_MARKERS = ("setup.py", "pyproject.toml")


def _same(a: str, b: Path) -> bool:
    try:
        return Path(a or os.curdir).resolve() == b.resolve()
    except OSError:
        return False


def _has_core(package: Path) -> bool:
    return any((package / f"_core{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)


def installed_elsewhere(source_root: Path) -> Path | None:
    """Another ``expman`` package with a built core on sys.path, shadowed by the source one."""
    for entry in sys.path:
        if not isinstance(entry, str) or _same(entry, source_root):
            continue
        spec = PathFinder.find_spec("expman", [entry or os.curdir])
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            if _has_core(Path(location)):
                return Path(location)
    return None


def core_missing(error: ImportError) -> ImportError:
    package = Path(__file__).resolve().parent
    root = package.parent
    if not any((root / marker).is_file() for marker in SOURCE_MARKERS):
        return ImportError(
            f"expman's compiled core (expman._core) is missing from {package}: the install is "
            "incomplete. Reinstall it: `pip install --force-reinstall expman-logger`. "
            f"Original error: {error}")
    other = installed_elsewhere(root)
    if other is not None:
        return ImportError(
            f"you are running from expman's source folder ({root}), so Python imports its "
            f"unbuilt expman/ instead of the installed copy at {other}. Run your script from "
            "another directory, or build the source folder in place with `pip install -e .`. "
            f"Original error: {error}")
    return ImportError(
        f"expman is imported from its source folder ({root}), where the compiled core "
        "(expman._core) is not built. Install the package with `pip install .` and run from "
        "another directory, or build in place with `pip install -e .` (either needs a C "
        f"compiler and Cython). Original error: {error}")
