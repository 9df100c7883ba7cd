"""Issue 23 on every surface: forks and branches in the CLI (show, list, compare,
export, clean), verify, the lake, sync and the dashboard's API."""

from __future__ import annotations

import json

import pytest

import expman
from expman._fsutil import read_json
from expman.cli import main

from conftest import need


def fork(make_run, parent, name: str, step: int, experiment: str = "ft"):
    """A finished run forked from ``parent`` (an Experiment) at ``step``, with 3 own steps."""
    child = make_run(experiment, name,
                     fork_from=f"{parent.run_dir.parent.name}/{parent.run_dir.name}@{step}")
    for s in range(step + 1, step + 4):
        child.log_metrics({"loss": 0.1 * s}, step=s)
    child.close()
    return child


@pytest.fixture
def family(make_run):
    """root (steps 0-9, rewound to 6 and run again to 9; FAILED) <- child (forked at 5)
    <- grandchild (forked at 7)."""
    root = make_run("mnist", "root")
    for s in range(10):
        root.log_metrics({"loss": 1.0 / (s + 1)}, step=s)
    root.rewind(6)
    for s in range(6, 10):
        root.log_metrics({"loss": 2.0 + s}, step=s)
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


# ---- sync ------------------------------------------------------------------------------------


def test_sync_sends_a_branch_line_only_after_the_stream_it_points_into(base, family, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    from expman.sync import sync
    root = family[0].run_dir
    lines = root / "branches.jsonl"                 # the rewind's
    size = (root / "metrics.bin").stat().st_size
    first = lines.read_bytes()
    assert first
    mirror = tmp_path / "mirror"

    def writer_goes_on(path: str, n: int) -> None:
        # a writer that opens a branch once metrics.bin was sent: its line names bytes
        # the copy does not hold yet, so this sync must not send it
        if path.endswith("root/metrics.bin") and lines.read_bytes() == first:
            with open(lines, "ab") as f:
                f.write(json.dumps({"id": 2, "kind": "rewind", "from_step": 1,
                                    "offset": size + 999, "time": 2.0}).encode() + b"\n")

    assert sync(base, str(mirror), progress=writer_goes_on)["errors"] == {}
    assert (mirror / "mnist" / "root" / "branches.jsonl").read_bytes() == first
    sync(base, str(mirror))
    assert (mirror / "mnist" / "root" / "branches.jsonl").read_bytes() == lines.read_bytes()


def test_sync_to_object_storage_sends_branch_lines_after_the_data(base, family, s3_bucket,
                                                                   monkeypatch):
    """A PUT of branches.jsonl's chunk never goes out with (or before) the stream bytes
    its line points into: a reader of the bucket mid-sync never meets a dangling line."""
    import expman.sync as sync_mod
    from expman import remote
    root = family[0].run_dir
    puts: list[set[str]] = []
    real = sync_mod.filesystem

    def recording(url, options=None):
        fs, where = real(url, options)
        pipe = fs.pipe

        def logged(batch, *args, **kwargs):
            puts.append({p.split("/mnist/root/")[1].split(".chunks/")[0]
                         for p in batch if "/mnist/root/" in p})
            return pipe(batch, *args, **kwargs)
        monkeypatch.setattr(fs, "pipe", logged)
        return fs, where
    monkeypatch.setattr(sync_mod, "filesystem", recording)
    url = f"s3://{s3_bucket}/runs"
    assert sync_mod.sync(base, url)["errors"] == {}
    stream = max(i for i, names in enumerate(puts) if "metrics.bin" in names)
    line = min(i for i, names in enumerate(puts) if "branches.jsonl" in names)
    meta = min(i for i, names in enumerate(puts) if "run.json" in names)
    assert stream < line < meta, puts
    copy = remote.localize(url)
    assert (copy / "mnist" / "root" / "branches.jsonl").read_bytes() == \
        (root / "branches.jsonl").read_bytes()
    here, there = expman.open_run(root), expman.open_run(f"{url}/mnist/root")
    assert there.branches == here.branches and len(there.branches) == 2
    assert there.metrics["loss"].values.tolist() == here.metrics["loss"].values.tolist()


def test_sync_of_a_fork_without_its_parent_keeps_the_reference_and_says_so(
        base, family, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    from expman.sync import sync
    root, child, grandchild = family
    alone = tmp_path / "alone"
    (alone / "ft").mkdir(parents=True)
    child.run_dir.rename(alone / "ft" / "child")
    mirror = tmp_path / "mirror"
    result = sync(alone, str(mirror))
    assert result["parents_missing"] == {"ft/child": "mnist/root"}
    assert read_json(mirror / "ft" / "child" / "run.json")["fork"]["parent"] == "mnist/root"
    copy = expman.open_run(mirror / "ft" / "child")
    assert copy.parent == "mnist/root" and copy.metrics["loss"].steps.tolist() == [6, 7, 8]
    assert [p["problem"] for p in copy.integrity["lineage"]] == ["parent_missing"]
    assert sync(base, str(mirror))["parents_missing"] == {}      # the parent now goes along
    copy = expman.open_run(mirror / "ft" / "child")
    assert copy.metrics["loss"].steps.tolist() == list(range(9)) and not copy.integrity["lineage"]
    (alone / "ft" / "child" / "notes.json").write_text("{}")     # changed: sent again
    assert sync(alone, str(mirror))["parents_missing"] == {}     # the target has the parent

    again = tmp_path / "again"
    assert main(["sync", str(alone), str(again)]) == 0
    err = capsys.readouterr().err
    assert "ft/child: a fork of mnist/root, which is neither here nor at" in err
    assert "keeps the reference" in err


# ---- verify ----------------------------------------------------------------------------------


def verify_json(capsys, run) -> tuple[int, dict]:
    code = main(["verify", str(run), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_a_healthy_family(family, capsys, make_run):
    root, child, grandchild = family
    code, report = verify_json(capsys, root.run_dir)
    assert code == 0 and report["problems"] == []
    assert [(b["id"], b["kind"], b["from_step"]) for b in report["branches"]["branches"]] == [
        (0, "root", None), (1, "rewind", 6)]
    code, report = verify_json(capsys, grandchild.run_dir)
    assert code == 0 and report["branches"]["lineage"] == [
        ["mnist/root", 5], ["ft/child", 7], ["ft/grandchild", None]]
    assert main(["verify", str(child.run_dir)]) == 0
    assert "branches      1 branch; forked from mnist/root at step 5" in capsys.readouterr().out
    assert main(["verify", str(root.run_dir)]) == 0
    assert "2 branches (rewind at step 6)" in capsys.readouterr().out
    plain_run = make_run("mnist", "plain")
    plain_run.log_metrics({"loss": 1.0}, step=0)
    plain_run.close()
    code, plain = verify_json(capsys, plain_run.run_dir)
    assert code == 0 and "branches" not in plain


def test_verify_reports_a_parent_gone_or_replaced(base, family, capsys, make_run):
    import shutil
    root, child, grandchild = family
    shutil.rmtree(root.run_dir)
    code, report = verify_json(capsys, child.run_dir)
    assert code == 1
    assert [p["problem"] for p in report["branches"]["problems"]] == ["parent_missing"]
    assert any(p.startswith("parent_missing: ") and "mnist/root" in p for p in report["problems"])
    code, report = verify_json(capsys, grandchild.run_dir)      # the break, one level up
    assert code == 1 and "parent_missing" in report["problems"][0]
    assert "in parent ft/child" in report["problems"][0]
    make_run("mnist", "root").close()                           # another run, same name
    code, report = verify_json(capsys, child.run_dir)
    assert code == 1 and report["branches"]["problems"][0]["problem"] == "parent_mismatch"
    assert main(["verify", str(child.run_dir)]) == 1
    out = capsys.readouterr().out
    assert "a fork whose parent is not read" in out and "DAMAGED: parent_mismatch" in out


@pytest.mark.parametrize("record", ["garbage", {"parent": "../../../etc", "step": 1},
                                    {"parent": "mnist/root", "step": "five"}, [1, 2], 7])
def test_verify_a_crafted_fork_record_is_a_problem_not_a_crash(family, capsys, record):
    from expman._fsutil import atomic_write_json
    child = family[1].run_dir
    meta = read_json(child / "run.json")
    meta["fork"] = record
    atomic_write_json(child / "run.json", meta)
    code, report = verify_json(capsys, child)
    assert code == 1 and report["branches"]["problems"][0]["problem"] == "parent_missing"
    assert "fork" in report["branches"]["problems"][0]["detail"]


def test_verify_reports_branch_lines_readers_skip(family, capsys):
    root = family[0].run_dir
    size = (root / "metrics.bin").stat().st_size
    with open(root / "branches.jsonl", "ab") as f:
        f.write(b"not json\n")
        f.write(json.dumps({"id": 9, "kind": "rewind", "from_step": 1, "offset": size + 10**6,
                            "time": 1.0}).encode() + b"\n")
        f.write(b'{"id": 10, "kind": "rew')                       # torn: not a problem
    code, report = verify_json(capsys, root)
    assert code == 1
    kinds = [p["problem"] for p in report["branches"]["problems"]]
    assert kinds == ["bad_branch_line", "bad_branch_line"], report["branches"]["problems"]
    assert "past the end of metrics.bin" in report["problems"][-1]
    assert len(report["branches"]["branches"]) == 2              # the good line still counts


# ---- show, compare, export ---------------------------------------------------------------------


def test_show_lists_branches_and_lineage(base, family, capsys):
    assert main(["show", "--base-dir", str(base), "ft/grandchild", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parent"] == "ft/child" and info["fork_step"] == 7
    assert info["lineage"] == [["mnist/root", 5], ["ft/child", 7], ["ft/grandchild", None]]
    assert [(b["id"], b["kind"], b["parent"]) for b in info["branches"]] == [
        (0, "fork", "ft/child")]
    assert info["metrics"]["loss"]["count"] == 11            # root 0-5, child 6-7, own 8-10

    assert main(["show", "--base-dir", str(base), "ft/grandchild"]) == 0
    out = capsys.readouterr().out
    assert "lineage   mnist/root @5 -> ft/child @7 -> ft/grandchild" in out

    assert main(["show", "--base-dir", str(base), "mnist/root"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  0 ")
            or line.startswith("  1 ")]
    assert rows[0][:5] == ["0", "root", "-", "0-9", "10"] and rows[0][-1] == "abandoned"
    assert rows[1][:5] == ["1", "rewind", "6", "6-9", "4"] and rows[1][-2:] == ["main", "history"]
    assert "lineage" not in out                                 # not a fork

    assert main(["show", "--base-dir", str(base), "mnist/root", "--branch", "0",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["branch"] == 0 and info["metrics"]["loss"]["last_value"] == 0.1
    assert main(["show", "--base-dir", str(base), "mnist/root", "--branch", "7"]) == 1
    assert "no branch 7" in capsys.readouterr().err


def test_compare_names_forks_and_branches(base, family, capsys):
    assert main(["compare", "--base-dir", str(base), "mnist/root", "ft/child"]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["forked", "from", "-", "mnist/root", "@5"]
               for line in out.splitlines()), out
    assert any(line.split() == ["branches", "2", "1"] for line in out.splitlines()), out
    assert main(["compare", "--base-dir", str(base), "mnist/root", "ft/child", "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert [(r["parent"], r["fork_step"], r["branches"]) for r in cmp["runs"]] == [
        (None, None, 2), ("mnist/root", 5, 1)]
    assert cmp["final_metrics"]["loss"] == [2.0 + 9, 0.1 * 8]   # main histories' last points


def read_csv(path) -> list[dict[str, str]]:
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_main_history_or_one_branch(base, family, tmp_path, capsys):
    out = tmp_path / "root.csv"
    assert main(["export", "--base-dir", str(base), "mnist/root", "-o", str(out)]) == 0
    rows = read_csv(out)
    assert [int(r["step"]) for r in rows] == list(range(10))   # one point per step
    assert [float(r["value"]) for r in rows][6:] == [8.0, 9.0, 10.0, 11.0]
    assert main(["export", "--base-dir", str(base), "mnist/root", "--branch", "0",
                 "-o", str(out)]) == 0
    assert [float(r["value"]) for r in read_csv(out)] == [
        1.0 / (s + 1) for s in range(10)]
    assert main(["export", "--base-dir", str(base), "ft/child", "-o", str(out)]) == 0
    rows = read_csv(out)
    assert [int(r["step"]) for r in rows] == list(range(9))   # inherited 0-5, own 6-8


# ---- the lake and the SQL metrics view -----------------------------------------------------------


def lake_rows(out, run: str) -> list[tuple]:
    duckdb = need("duckdb")
    return duckdb.sql(
        f"select step, value, branch from read_parquet('{out}/metrics/**/*.parquet', "
        f"hive_partitioning=true) where run = '{run}' order by branch, step").fetchall()


def test_the_lake_has_a_branch_column_also_when_exported_midway(base, make_run, tmp_path):
    need("pyarrow")
    from expman.lake import export_lake
    out = tmp_path / "lake"
    exp = make_run("live", "r")
    for s in range(5):
        exp.log_metrics({"loss": float(s)}, step=s)
    exp.flush()
    export_lake(base, out)
    exp.rewind(2)                     # a branch line at the stream's end, no row after it yet
    export_lake(base, out)
    for s in range(2, 6):
        exp.log_metrics({"loss": 10.0 + s}, step=s)
    exp.flush()
    export_lake(base, out)
    exp.rewind(3)
    for s in (3, 4):
        exp.log_metrics({"loss": 20.0 + s}, step=s)
    exp.close()
    export_lake(base, out)
    assert lake_rows(out, "r") == (
        [(s, float(s), 0) for s in range(5)] + [(s, 10.0 + s, 1) for s in range(2, 6)]
        + [(3, 23.0, 2), (4, 24.0, 2)])
    fresh = tmp_path / "fresh"                  # one export of it all: the same rows
    export_lake(base, fresh)
    assert lake_rows(fresh, "r") == lake_rows(out, "r")


def test_the_lake_runs_table_describes_the_main_history_and_names_the_parent(
        base, family, tmp_path):
    duckdb = need("duckdb")
    need("pyarrow")
    from expman.lake import export_lake
    out = tmp_path / "lake"
    export_lake(base, out)
    rows = duckdb.sql(
        f"select run_name, parent, fork_step, points, \"metrics.loss.last\", "
        f"\"metrics.loss.max\" from read_parquet('{out}/runs/**/*.parquet', "
        "hive_partitioning=true, union_by_name=true) order by run_name").fetchall()
    assert rows == [("child", "mnist/root", 5, 9, 0.1 * 8, 1.0),
                    ("grandchild", "ft/child", 7, 11, 0.1 * 10, 1.0),
                    ("root", None, None, 10, 11.0, 11.0)]
    # the metrics table holds each point once, where it was written
    assert [b for (_s, _v, b) in lake_rows(out, "root")] == [0] * 10 + [1] * 4
    assert len(lake_rows(out, "child")) == 3


def test_sql_metrics_view_has_the_branch_column(base, family, tmp_path, monkeypatch):
    need("duckdb")
    need("pyarrow")
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    df = expman.sql("select branch, count(*) as n, max(value) as top from metrics "
                    "where run = 'mnist/root' group by branch order by branch", base)
    assert df.values.tolist() == [[0, 10, 1.0], [1, 4, 11.0]]


# ---- the dashboard's API -----------------------------------------------------------------------


def api(url: str, path: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def test_dashboard_serves_the_main_history_branches_lineage_and_faint_points(base, family):
    need("starlette")
    need("uvicorn")
    need("numpy")
    from expman.dashboard.testing import running_server
    root, child, grandchild = family
    with running_server(base, token=False) as url:
        code, s = api(url, "/api/runs/mnist/root/series?metric=loss")
        assert code == 200 and s["folded"] and s["count"] == 10
        assert s["x"] == list(range(10)) and s["y"][6:] == [8.0, 9.0, 10.0, 11.0]
        code, faint = api(url, "/api/runs/mnist/root/series?metric=loss&branch=0")
        assert code == 200 and faint["x"] == [6, 7, 8, 9]          # what the rewind left
        assert faint["y"] == [1.0 / (s + 1) for s in range(6, 10)]
        code, main_own = api(url, "/api/runs/mnist/root/series?metric=loss&branch=1")
        assert code == 200 and main_own["x"] == []                  # the main history's
        assert api(url, "/api/runs/mnist/root/series?metric=nope&branch=0")[1]["x"] == []
        assert api(url, "/api/runs/mnist/root/series?metric=loss&branch=5")[0] == 404
        assert api(url, "/api/runs/mnist/root/series?metric=loss&branch=x")[0] == 400
        assert s["append_at"] is None                # a rewound run's chart is folded again
        code, s = api(url, "/api/runs/ft/grandchild/series?metric=loss")
        assert s["x"] == list(range(11)) and s["folded"]            # root 0-5, child 6-7, own
        assert s["append_at"] == 8                   # its stream's points follow 8 inherited
        code, run = api(url, "/api/runs/ft/grandchild")
        assert run["metrics"]["loss"]["count"] == 11

        code, b = api(url, "/api/runs/mnist/root/branches")
        assert code == 200 and b["parent"] is None and b["branched"]
        assert [(x["id"], x["kind"], x["main"], x["cut_at"]) for x in b["branches"]] == [
            (0, "root", False, 6), (1, "rewind", True, None)]
        assert [(m["kind"], m["step"]) for m in b["markers"]] == [("rewind", 6)]
        assert b["children"] == [{"run": "ft/child", "status": "FINISHED", "fork_step": 5}]
        code, b = api(url, "/api/runs/ft/grandchild/branches")
        assert [(x["run"], x["fork_step"]) for x in b["lineage"]] == [
            ("mnist/root", 5), ("ft/child", 7), ("ft/grandchild", None)]
        assert [(m["kind"], m["step"]) for m in b["markers"]] == [("fork", 5), ("fork", 7)]
        assert b["children"] == [] and b["problems"] == []
        code, plain = api(url, "/api/runs/mnist/root/series?metric=loss")
        assert code == 200

        import shutil
        shutil.rmtree(root.run_dir)                       # a broken lineage: said, not a 500
        code, b = api(url, "/api/runs/ft/child/branches")
        assert code == 200 and b["problems"][0].startswith("parent_missing")
        assert b["lineage"][0] == {"run": "mnist/root", "fork_step": None, "present": False}
        code, s = api(url, "/api/runs/ft/child/series?metric=loss")
        assert code == 200 and s["x"] == [6, 7, 8]


def test_dashboard_branches_of_a_run_that_never_branched(base, make_run):
    need("starlette")
    need("uvicorn")
    need("numpy")
    from expman.dashboard.testing import running_server
    exp = make_run("e", "plain")
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    with running_server(base, token=False) as url:
        code, b = api(url, "/api/runs/e/plain/branches")
        assert code == 200 and not b["branched"] and b["branches"] == [] and b["markers"] == []
        code, s = api(url, "/api/runs/e/plain/series?metric=loss")
        assert not s["folded"] and s["y"] == [1.0] and s["append_at"] == 0
        assert api(url, "/api/runs/e/plain/series?metric=loss&branch=0")[0] == 404


def test_hostile_fork_records_and_branch_files_never_break_a_surface(base, family, capsys,
                                                                     tmp_path, monkeypatch):
    """A fork record naming a path out of the base dir, and a branches file that is a
    FIFO: every surface answers (a problem said), none hangs or fails."""
    import os
    need("starlette")
    need("uvicorn")
    need("numpy")
    from expman._fsutil import atomic_write_json
    from expman.dashboard.testing import running_server
    root, child, grandchild = family
    meta = read_json(child.run_dir / "run.json")
    meta["fork"] = {"parent": "../../etc", "parent_uuid": None, "step": 3}
    atomic_write_json(child.run_dir / "run.json", meta)
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    (root.run_dir / "branches.jsonl").unlink()
    os.mkfifo(root.run_dir / "branches.jsonl")
    assert main(["list", str(base), "--json"]) == 0
    listed = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["ft/child"]["parent"] is None and listed["mnist/root"]["status"] == "FAILED"
    code, report = verify_json(capsys, child.run_dir)
    assert code == 1 and report["branches"]["problems"][0]["problem"] == "parent_missing"
    code, report = verify_json(capsys, root.run_dir)
    assert code == 1 and any("branches.jsonl" in p for p in report["problems"])
    assert main(["show", str(root.run_dir)]) == 0
    capsys.readouterr()
    with running_server(base, token=False) as url:
        for run in ("mnist/root", "ft/child", "ft/grandchild"):
            code, b = api(url, f"/api/runs/{run}/branches")
            assert code == 200, run
            assert api(url, f"/api/runs/{run}/series?metric=loss")[0] == 200
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    from expman.sync import sync
    result = sync(base, str(tmp_path / "mirror"))
    assert result["parents_missing"] == {}          # no parent it can name: nothing to say
    need("pyarrow")
    from expman.lake import export_lake
    done = export_lake(base, tmp_path / "lake")
    assert done["runs"] == 3 and done["new_points"] == 14 + 3 + 3
