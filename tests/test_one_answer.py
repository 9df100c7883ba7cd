"""Issue 19, "Done means": one corpus of runs, every surface gives the same answer.

The corpus: a run with +-inf and NaN series, list/tuple/nested params, a file
saved twice (``w``, ``w.v2``) and a folder artifact; a three-rank run whose rank
1 was killed (its process exits without closing); a run whose summary.json was
edited by hand. The truth is ``open_run`` and the read model
(``expman.readmodel``); the surfaces are the CLI's ``--json`` (``show``,
``list``), the dashboard API, the lake, ``expman.runs()`` and the TensorBoard
export (read back by ``import_tensorboard``). ``verify`` catches the forgery.
"""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

import expman
from expman.layout import SUMMARY_FILE, jsonable
from expman.readmodel import flatten_params

from conftest import run_python

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
             "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID",
             "SLURM_LOCALID", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR", "MASTER_PORT")
PARAMS = {"optim": {"lr": 0.1, "betas": [0.9, 0.999], "sched": {"kind": "cos"}},
          "pair": (1, 2), "seed": 7, "name": None}
SERIES = {"up": [1.0, math.inf, 2.0], "nan": [math.nan, 3.0, math.nan],
          "down": [0.5, -math.inf, 1.5]}
RUNS = ("answers/figures", "answers/job-killed", "answers/forged")


def _rank_env(rank: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_RANK": str(rank),
            "TORCHELASTIC_RUN_ID": "job-killed", "TORCHELASTIC_RESTART_COUNT": "0"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one_answer")
    base = root / "experiments"
    opts: dict[str, Any] = {"base_dir": base, "capture_env": False, "system_metrics": False}
    with expman.Experiment("answers", "figures", **opts) as exp:
        exp.log_params(PARAMS)
        for i in range(3):
            exp.log_metrics({k: v[i] for k, v in SERIES.items()}, step=i)
        src = root / "w.bin"
        src.write_bytes(b"first")
        exp.save_artifact(src, name="w")
        src.write_bytes(b"second, longer")
        exp.save_artifact(src, name="w")
        folder = root / "model"
        (folder / "sub").mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"\x00" * 100)
        (folder / "sub" / "config.json").write_text('{"depth": 4}')
        exp.save_artifact(folder, name="model")

    with pytest.MonkeyPatch.context() as mp:
        for var in RANK_VARS:
            mp.delenv(var, raising=False)
        for k, v in _rank_env(0).items():
            mp.setenv(k, v)
        r0 = expman.Experiment("answers", **opts)
        r0.log_params({"optim": {"lr": 0.01}})
        r0.log_metrics({"loss": 1.0}, step=0)
        for k, v in _rank_env(1).items():
            mp.setenv(k, v)
        proc = run_python(f"""
            import os, expman
            exp = expman.Experiment("answers", base_dir={str(base)!r}, capture_env=False,
                                    system_metrics=False)
            exp.log_metrics({{"loss": 2.0}}, step=0)
            exp.flush()
            os._exit(0)                       # killed: no final status, lock released
        """, cwd=root)
        assert proc.returncode == 0, proc.stderr
        for k, v in _rank_env(2).items():
            mp.setenv(k, v)
        r2 = expman.Experiment("answers", **opts)
        r2.log_metrics({"loss": 3.0}, step=0)
        r2.close()
        r0.close()

    with expman.Experiment("answers", "forged", **opts) as exp:
        for i in range(50):
            exp.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
    path = base / "answers" / "forged" / SUMMARY_FILE
    doc = orjson.loads(path.read_bytes())
    doc["metrics"]["loss"]["min"] = 1e-9       # by hand: same metrics_bytes, a better loss
    doc["metrics"]["loss"]["last_value"] = 1e-9
    path.write_bytes(orjson.dumps(doc))
    return base


def _truth(base: Path, rid: str) -> dict[str, Any]:
    run = expman.open_run(base / rid)
    decided = run.run_status
    return {"status": decided.status, "rank": decided.rank,
            "figures": {k: jsonable(s.summary().to_dict()) for k, s in run.metrics.items()
                        if len(s)},
            "last": {k: jsonable(s.summary().last_value) for k, s in run.metrics.items()
                     if len(s)},
            "params": sorted(flatten_params(run.params)),
            "set_params": sorted(k for k, v in flatten_params(run.params).items()
                                 if v is not None),
            "artifacts": [(a["label"], a["present"]) for a in
                          (x.to_dict() for x in expman.readmodel.artifact_states(run.path,
                                                                                 run.events))]}


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    from expman.cli import main
    assert main([*argv]) == 0
    return json.loads(capsys.readouterr().out)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def test_the_truth_is_what_it_should_be(corpus: Path) -> None:
    fig = _truth(corpus, "answers/figures")
    assert fig["figures"]["up"]["max"] == "Infinity" and fig["figures"]["up"]["min"] == 1.0
    assert fig["figures"]["nan"]["nan_count"] == 2 and fig["figures"]["nan"]["min"] == 3.0
    assert fig["figures"]["down"]["min"] == "-Infinity"
    assert fig["params"] == ["name", "optim.betas", "optim.lr", "optim.sched.kind", "pair",
                             "seed"]
    assert fig["artifacts"] == [("w", True), ("w (v2)", True), ("model", True)]
    killed = _truth(corpus, "answers/job-killed")
    assert (killed["status"], killed["rank"]) == ("CRASHED", 1)
    assert _truth(corpus, "answers/forged")["figures"]["loss"]["min"] == 1 / 50


def test_cli_show_and_list_json(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listed = {r["id"]: r for r in _cli_json(capsys, "list", "--json", "--base-dir", str(corpus))}
    for rid in RUNS:
        truth = _truth(corpus, rid)
        shown = _cli_json(capsys, "show", rid, "--json", "--base-dir", str(corpus))
        assert {k: v for k, v in shown["metrics"].items() if v["count"]} == truth["figures"]
        assert shown["status"] == truth["status"] == listed[rid]["status"]
        assert sorted(flatten_params(shown["params"])) == truth["params"]
        assert [(a["label"], a["present"]) for a in shown["artifacts"]] == truth["artifacts"]
        assert listed[rid]["last_metrics"] == truth["last"]
        assert listed[rid]["status_rank"] == truth["rank"]
        assert sorted(flatten_params(listed[rid]["params"])) == truth["params"]


def test_dashboard_api(corpus: Path) -> None:
    from expman.dashboard.testing import running_server
    with running_server(corpus) as url:
        rows = {r["id"]: r for r in _get(url + "api/runs")["runs"]}
        for rid in RUNS:
            truth = _truth(corpus, rid)
            d = _get(url + "api/runs/" + "/".join(urllib.request.quote(p, safe="")
                                                  for p in rid.split("/")))
            assert {k: v for k, v in d["metrics"].items() if v["count"]} == truth["figures"]
            assert d["status"] == rows[rid]["status"] == truth["status"]
            assert d["status_rank"] == truth["rank"]
            if truth["rank"]:
                assert "rank 1 (pid" in d["status_reason"]
                assert [r["status"] for r in d["ranks"]] == ["FINISHED", "CRASHED", "FINISHED"]
            assert [(a["label"], a["present"]) for a in d["artifacts"]] == truth["artifacts"]
            assert rows[rid]["last_metrics"] == truth["last"]
            assert d["integrity"]["ok"], d["integrity"]


def _row_matches(row: dict[str, Any], truth: dict[str, Any]) -> None:
    assert row["status"] == truth["status"]
    for name, fig in truth["figures"].items():
        for column, field in (("last", "last_value"), ("min", "min"), ("max", "max")):
            got, want = row[f"metrics.{name}.{column}"], fig[field]
            got = jsonable(float(got)) if got is not None else None
            assert got == want, (name, column, got, want)
    # a table holds every run's param columns: this run's are those it has a value in
    params = sorted(k[len("params."):] for k, v in row.items()
                    if k.startswith("params.") and v is not None)
    assert params == truth["set_params"], params


def test_runs_and_the_lake(corpus: Path, tmp_path: Path) -> None:
    df = expman.runs(corpus)
    rows = {r["id"]: r for r in df.to_dict("records")}
    from expman.lake import export_lake
    import pyarrow.parquet as pq
    export_lake(corpus, tmp_path / "lake")
    table = pq.read_table(next((tmp_path / "lake").rglob("runs.parquet")))
    lake_rows = {r["id"]: r for r in table.to_pylist()}
    for rid in RUNS:
        truth = _truth(corpus, rid)
        _row_matches({k: (None if isinstance(v, float) and math.isnan(v) and k.startswith(
            "params.") else v) for k, v in rows[rid].items()}, truth)
        _row_matches(lake_rows[rid], truth)


def test_tensorboard_export_round_trip(corpus: Path, tmp_path: Path) -> None:
    from expman.tbio import export_tensorboard, import_tensorboard
    truth = _truth(corpus, "answers/figures")
    export_tensorboard(expman.open_run(corpus / "answers" / "figures"), tmp_path / "tb" / "r")
    (back,) = import_tensorboard(tmp_path / "tb", tmp_path / "base", experiment="tb")
    again = expman.open_run(back)
    figures = {k: jsonable(s.summary().to_dict()) for k, s in again.metrics.items() if len(s)}
    for fig in (*figures.values(), *truth["figures"].values()):
        fig.pop("last_time")          # the event's wall time, not the point's microseconds
    assert figures == truth["figures"]
    assert sorted(flatten_params(again.params)) == truth["set_params"]   # hparams hold no None


def test_verify_catches_the_forged_summary(corpus: Path) -> None:
    report = expman.verify_run(corpus / "answers" / "forged")
    assert not report["ok"] and report["summary"]["state"] == "differs"
    assert any("'loss' min" in d for d in report["summary"]["differences"])
    assert any("'loss' last_value" in d for d in report["summary"]["differences"])
    assert expman.verify_run(corpus / "answers" / "figures")["ok"]


def test_verify_catches_a_careful_forgery_the_listing_cannot(corpus: Path, tmp_path: Path
                                                             ) -> None:
    """A forger who recomputes the digest and keeps the last frame's binding gets
    past the listing's cheap check (documented); verify decodes and catches it."""
    import shutil

    from expman.summary import _digest
    run = tmp_path / "answers" / "careful"
    shutil.copytree(corpus / "answers" / "figures", run)
    path = run / SUMMARY_FILE
    doc = orjson.loads(path.read_bytes())
    doc["metrics"]["up"]["max"] = 2.0
    doc["digest"] = _digest(doc)
    path.write_bytes(orjson.dumps(doc))
    report = expman.verify_run(run)
    assert not report["ok"]
    assert report["summary"]["differences"] == [
        "'up' max: the summary says 2.0, the data inf"]
