"""docs/architecture.md's module map names every module of the package (issue 19:
"docs/architecture.md current, every module"), with its line count as `wc -l` gives it
checked only for presence here: counts move with every change and are refreshed by hand."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
MAP = DOC[DOC.index("```\nexpman/"):]
MAP = MAP[:MAP.index("```", 4)]
SOURCES = (".py", ".pyx", ".pxd", ".pxi")


def test_every_module_and_package_is_in_the_map() -> None:
    pkg = ROOT / "expman"
    names = sorted(p.name for p in pkg.iterdir() if p.suffix in SOURCES)
    names += sorted(f"{p.name}/" for p in pkg.iterdir()
                    if p.is_dir() and (p / "__init__.py").is_file())
    missing = [n for n in names if not re.search(rf"^\s+{re.escape(n)}\s+[\d,]+\s", MAP, re.M)]
    assert not missing, f"docs/architecture.md's map does not name {missing}"
