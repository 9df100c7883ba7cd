"""Issue 23 on every surface: forks and branches in the CLI (show, list, compare,
export, clean), verify, the lake, sync and the dashboard's API."""

from __future__ import annotations

import json

import pytest

from expman._fsutil import atomic_write_json, read_json
from expman.cli import main


def fork(make_run, parent, name: str, step: int, experiment: str = "ft"):
    """A finished run forked from ``parent`` (an Experiment) at ``step``."""
    child = make_run(experiment, name)
    for s in range(step + 1, step + 4):
        child.log_metrics({"loss": 0.1 * s}, step=s)
    child.close()
    meta = read_json(child.run_dir / "run.json")
    meta["fork"] = {"parent": f"{parent.run_dir.parent.name}/{parent.run_dir.name}",
                    "parent_uuid": read_json(parent.run_dir / "run.json")["uuid"], "step": step}
    atomic_write_json(child.run_dir / "run.json", meta)
    return child


@pytest.fixture
def family(make_run):
    """root (10 steps, FAILED) <- child (forked at 5) <- grandchild (forked at 7)."""
    root = make_run("mnist", "root")
    for s in range(10):
        root.log_metrics({"loss": 1.0 / (s + 1)}, step=s)
    root.close(status="FAILED")
    child = fork(make_run, root, "child", 5)
    grandchild = fork(make_run, child, "grandchild", 7)
    return root, child, grandchild


# ---- clean -----------------------------------------------------------------------------------


def test_clean_keeps_a_parent_with_children_unless_forced(base, family, capsys):
    root, child, grandchild = family
    assert main(["clean", str(base), "--status", "FAILED", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert "nothing to remove" in out
    assert "skipped mnist/root: the parent of 1 forked run (ft/child)" in err and "--force" in err
    assert root.run_dir.exists()

    assert main(["clean", str(base), "--status", "FAILED", "--force", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and [r["id"] for r in dry["runs"]] == ["mnist/root"]
    assert dry["breaks"] == {"mnist/root": ["ft/child"]} and root.run_dir.exists()

    assert main(["clean", str(base), "--status", "FAILED", "--force", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert "removed 1 run " in out and not root.run_dir.exists()
    assert "removing mnist/root, the parent of ft/child" in err and "parent_missing" in err
    assert child.run_dir.exists() and grandchild.run_dir.exists()


def test_clean_removes_a_whole_family_chosen_together(base, family, capsys):
    root, child, grandchild = family
    # the chain is kept while its last fork stays, link by link
    assert main(["clean", str(base), "--keep", "0", "-e", "mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []
    assert main(["clean", str(base), "--keep", "0", "--yes", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert sorted(r["id"] for r in done["runs"]) == ["ft/child", "ft/grandchild", "mnist/root"]
    assert done["breaks"] == {} and done["skipped"] == {}
    assert not root.run_dir.exists() and not grandchild.run_dir.exists()


def test_list_json_names_the_parent(base, family, capsys):
    assert main(["list", str(base), "--json"]) == 0
    parents = {r["id"]: r["parent"] for r in json.loads(capsys.readouterr().out)}
    assert parents == {"mnist/root": None, "ft/child": "mnist/root", "ft/grandchild": "ft/child"}


def test_list_table_has_a_parent_column_only_with_forks(base, family, make_run, capsys, tmp_path):
    assert main(["list", str(base)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "PARENT" in lines[0]
    assert any(line.startswith("ft/child ") and " mnist/root " in line for line in lines)
    plain = tmp_path / "plain"
    plain.mkdir()
    make_run("e", "r", base_dir=plain).close()
    assert main(["list", str(plain)]) == 0
    assert "PARENT" not in capsys.readouterr().out
