"""expman.sql / `expman sql`: every view checked against open_run on a generated base,
and a point logged to a live run is in the next query."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need

import expman
from expman.readmodel import flatten_params
from expman.reader import list_runs, open_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from gen_runs import close_all, generate  # noqa: E402


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for module in ("duckdb", "pyarrow", "pandas"):
        need(module)
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    b = tmp_path / "runs"
    live = generate(b, 12, 2, 6, failed=1, crashed=2, damaged=1, live=1)
    with expman.Experiment("exp0", "arts", base_dir=b, capture_env=False, handle_signals=False,
                           system_metrics=False) as exp:
        (tmp_path / "model.txt").write_text("weights")
        exp.save_artifact(tmp_path / "model.txt")
        exp.info("saved")
        exp.log_params({"list": [1, 2], "flag": True})
    yield b, live
    close_all(live)


def rows(query: str, base: Path) -> list[dict[str, Any]]:
    df = expman.sql(query, base)
    return [{k: (None if v != v else v) if isinstance(v, float) else v for k, v in r.items()}
            for r in df.to_dict("records")]


def test_runs_view_is_the_listing(base: Any) -> None:
    b, _live = base
    got = {r["run"]: r for r in rows("select * from runs", b)}
    want = list_runs(b)
    assert set(got) == {r.id for r in want}
    for r in want:
        g = got[r.id]
        assert (g["status"], g["experiment"], g["run_name"], g["group"], list(g["tags"]),
                g["damaged"], g["path"]) == (r.status, r.experiment, r.run_name, r.group,
                                             r.tags, r.damaged, str(r.path))
        if r.status != "RUNNING":       # a live run's figures move while it writes
            assert g["points"] == r.points
    assert sorted(r.status for r in want).count("CRASHED") == 2


def test_params_metrics_events_artifacts_match_open_run(base: Any) -> None:
    b, _live = base
    params = rows("select run, key, value, number from params", b)
    metrics = rows("select run, rank, metric, step, value from metrics order by run, metric, step",
                   b)
    events = rows("select run, kind, msg from events", b)
    artifacts = rows("select run, name, type, path, size, sha256 from artifacts", b)
    checked = 0
    for line in list_runs(b):
        if line.damaged or line.status == "RUNNING":
            continue
        run = open_run(line.path)
        flat = flatten_params(run.params)
        mine = {r["key"]: r for r in params if r["run"] == line.id}
        assert set(mine) == set(flat)
        for k, v in flat.items():
            assert mine[k]["value"] == (v if isinstance(v, str) else json.dumps(v))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert mine[k]["number"] == float(v)
        for name, series in run.metrics.items():
            pts = [r for r in metrics if r["run"] == line.id and r["metric"] == name]
            assert [p["step"] for p in pts] == list(series.steps)
            assert [p["value"] for p in pts] == list(series.values)
            assert {p["rank"] for p in pts} <= {0}
        assert [e["kind"] for e in events if e["run"] == line.id] == \
            [e["kind"] for e in run.events if e.get("kind") != "key"]
        assert [(a["name"], a["path"], a["size"], a["sha256"]) for a in artifacts
                if a["run"] == line.id] == [(a["name"], a["path"], a["size"], a["sha256"])
                                            for a in run.artifacts]
        checked += 1
    assert checked == 11
    assert {(a["run"], a["name"]) for a in artifacts} == {("exp0/arts", "model.txt")}
    assert {"run": "exp0/arts", "kind": "message", "msg": "saved"} in events


def test_a_point_logged_is_in_the_next_query(base: Any) -> None:
    b, live = base
    q = "select count(*) as n, max(step) as last from metrics where run = 'exp1/r000011'"
    before = rows(q, b)[0]
    live[0].log_metrics({"loss": 0.5}, step=1000)
    live[0].flush()
    after = rows(q, b)[0]
    assert after["last"] == 1000 and after["n"] > before["n"]
    assert rows("select status from runs where run = 'exp1/r000011'", b) == [{"status": "RUNNING"}]


def test_a_deleted_run_leaves_the_views(base: Any) -> None:
    import shutil
    b, _live = base
    q = "select distinct run from metrics where run = 'exp0/r000000'"
    assert rows(q, b) == [{"run": "exp0/r000000"}]
    shutil.rmtree(b / "exp0" / "r000000")
    assert rows(q, b) == []
    assert rows("select run from runs where run = 'exp0/r000000'", b) == []


def test_best_final_loss_per_lr(base: Any) -> None:
    b, _live = base
    got = rows("""
        with final as (select run, arg_max(value, step) as loss from metrics
                       where metric = 'loss' group by run)
        select p.number as lr, min(f.loss) as best from final f join params p using (run)
        join runs r using (run)
        where p.key = 'lr' and r.status = 'FINISHED' group by 1 order by 1""", b)
    want: dict[float, float] = {}
    for line in list_runs(b, status="FINISHED"):
        run = open_run(line.path)
        if "lr" not in run.params or "loss" not in run.metrics:
            continue
        lr, loss = run.params["lr"], run.metrics["loss"]
        want[lr] = min(want.get(lr, float("inf")), loss.values[-1])
    assert [(r["lr"], r["best"]) for r in got] == sorted(want.items())


def test_cli_sql(base: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from expman.cli import main
    b, _live = base
    q = "select run, status from runs where status = 'CRASHED' order by run"
    assert main(["sql", q, str(b), "--json"]) == 0
    crashed = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in crashed] == ["CRASHED", "CRASHED"]
    assert main(["sql", q, str(b), "--csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out))) == \
        [["run", "status"]] + [[r["run"], r["status"]] for r in crashed]
    assert main(["sql", q, str(b)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["run", "status"] and crashed[0]["run"] in text
    assert main(["sql", "select 1.5 as d, 'x'::blob as b, [1.5::decimal(3, 1)] as l, "
                 "date '2024-01-02' as day", str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"d": 1.5, "b": "78", "l": [1.5], "day": "2024-01-02"}]
    assert main(["sql", "select nope from runs", str(b)]) == 1
    assert "nope" in capsys.readouterr().err


def test_import_expman_stays_light() -> None:
    code = "import sys, expman; print(sorted(m for m in ('duckdb', 'pyarrow', 'expman.sqlviews') " \
           "if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent)       # not the source tree (no built core)
    assert proc.stdout.strip() == "[]"
    assert "sql" in dir(expman)


def test_a_warm_query_over_unchanged_runs_reads_no_run_again(base: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """runs/params/metrics come from files in the lake folder, written again only
    when what they hold changed; a tag set behind its back still shows."""
    import expman.lake
    from expman.runmeta import set_tags
    from expman.sqlviews import lake_dir
    b, live = base
    close_all(live)
    q = ("select r.run, list_string_agg(r.tags) as tags, p.number from runs r join params p "
         "using (run) where p.key = 'lr' order by r.run")
    first = rows(q, b)
    points = rows("select count(*) as n from metrics", b)[0]["n"]
    lake = lake_dir(b)
    files = {n: (lake / n).stat().st_ino for n in ("runs-view.json", "params-view.json", "streams.sig")}

    def no_export(*a: Any, **k: Any) -> None:
        raise AssertionError("exported again, nothing changed")
    monkeypatch.setattr(expman.lake, "export_lake", no_export)
    assert rows(q, b) == first
    assert rows("select count(*) as n from metrics", b)[0]["n"] == points > 0
    assert {n: (lake / n).stat().st_ino for n in files} == files
    set_tags(b / "exp0" / "r000000", add=["late"])
    tagged = {r["run"]: r["tags"] for r in rows(q, b)}
    assert tagged["exp0/r000000"].endswith(",late")
    code = ("import sys; from expman.sqlviews import connect; q = 'select count(*) from runs, params';"
            "connect(sys.argv[1], q).sql(q).fetchall();"
            "print('pyarrow' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(b)], capture_output=True, text=True,
                         check=True, cwd=tmp_path,     # not the source tree (no built core)
                         env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)})
    assert out.stdout.split() == ["False", "False"]
