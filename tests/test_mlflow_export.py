"""``expman export-mlflow``: runs written into a real ``mlflow server`` (SQLite
backend, started on 127.0.0.1 here) and read back with ``MlflowClient`` equal what
expman recorded: params (flattened by the read model), every metric point with its
step and time, tags, status and artifact files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import expman
from expman.cli import main
from expman.readmodel import flatten_params

from conftest import need

pytestmark = pytest.mark.filterwarnings(      # MLflow's client warns about its own dependencies
    "ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

SERVER_START_LIMIT = 180.0      # a bound on the wait, not a speed expectation


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    need("mlflow")
    need("sqlalchemy")
    need("flask")
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_LIMIT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {SERVER_START_LIMIT} s: "
                            f"{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)         # polling a subprocess we wait for, not a synchronisation
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def make_runs(base: Path) -> tuple[Path, Path]:
    (base / "src").mkdir(parents=True)
    (base / "src" / "model.pt").write_bytes(b"weights")
    (base / "src" / "ckpt").mkdir()
    (base / "src" / "ckpt" / "config.json").write_text("{}")
    with expman.Experiment("mnist", "good", base, tags=["baseline", "lr=0.1"], notes="first try",
                           group="sweep-a", system_metrics=False) as exp:
        exp.log_params({"optim": {"lr": 0.1, "betas": [0.9, 0.999]}, "model": "cnn",
                        "dropout": None})
        for step in range(2500):        # more than one log_batch of points
            exp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        exp.log_metrics({"acc": 0.5}, step=3)
        exp.log_metrics({"acc": 0.75}, step=3)          # a duplicate step, kept
        exp.log_metrics({"nan": float("nan")}, step=0)
        exp.save_artifact(base / "src" / "model.pt")
        exp.save_artifact(base / "src" / "model.pt")    # model.pt.v2
        exp.save_artifact(base / "src" / "ckpt")
    exp2 = expman.Experiment("mnist", "bad", base, system_metrics=False)
    exp2.log_metrics({"loss": 2.0}, step=0)
    exp2.close("FAILED")
    return base / "mnist" / "good", base / "mnist" / "bad"


def read_back(client, run_id: str) -> dict:
    run = client.get_run(run_id)

    def files(path: str | None = None) -> list[str]:
        out = []
        for f in client.list_artifacts(run_id, path):
            out += files(f.path) if f.is_dir else [f.path]
        return out
    return {"run": run, "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": {k: [(m.step, m.value, m.timestamp)
                            for m in client.get_metric_history(run_id, k)]
                        for k in run.data.metrics},
            "artifacts": sorted(files())}


def test_export_to_a_real_mlflow_server_reads_back_equal(mlflow_server, tmp_path, capsys):
    mlflow = need("mlflow")
    good, _ = make_runs(tmp_path / "runs")
    assert main(["export-mlflow", str(good), "mnist/bad", "--base-dir", str(tmp_path / "runs"),
                 "--tracking-uri", mlflow_server, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] == {}
    ids = {r["run"]: r["mlflow_run_id"] for r in result["exported"]}
    client = mlflow.MlflowClient(mlflow_server)

    got = read_back(client, ids["mnist/good"])
    ours = expman.open_run(good)
    assert got["params"] == {k: str(v) for k, v in flatten_params(ours.params).items()}
    assert got["params"]["optim.betas"] == "[0.9,0.999]" and got["params"]["dropout"] == "None"
    assert set(got["metrics"]) == set(ours.metrics)
    for key, series in ours.metrics.items():
        want = [(int(s), float(v), int(round(t * 1000)))
                for s, v, t in zip(series.steps, series.values, series.times)]
        have = sorted(got["metrics"][key], key=lambda m: (m[0], m[2]))
        if key == "nan":
            assert len(have) == 1 and have[0][1] != have[0][1] and have[0][0] == 0
            continue
        assert sorted(have) == sorted(want), key
    assert len(got["metrics"]["loss"]) == 2500
    assert sorted(v for _, v, _ in got["metrics"]["acc"]) == [0.5, 0.75]
    tags = got["tags"]
    assert (tags["baseline"], tags["lr"], tags["mlflow.note.content"], tags["expman.group"],
            tags["expman.run"], tags["mlflow.runName"]) == (
        "", "0.1", "first try", "sweep-a", "mnist/good", "good")
    run = got["run"]
    assert (run.info.status, run.info.run_name) == ("FINISHED", "good")
    assert run.info.start_time == int(round(ours.meta["start_time"] * 1000))
    on_disk = sorted(p.relative_to(good / "artifacts").as_posix()
                     for p in (good / "artifacts").rglob("*") if p.is_file())
    assert got["artifacts"] == on_disk
    assert {"model.pt", "model.pt.v2", "ckpt/config.json"} <= set(on_disk)

    failed = read_back(client, ids["mnist/bad"])
    assert failed["run"].info.status == "FAILED"
    assert [(s, v) for s, v, _ in failed["metrics"]["loss"]] == [(0, 2.0)]

    # a second export sends nothing new
    assert main(["export-mlflow", str(good), "--tracking-uri", mlflow_server]) == 0
    assert "exported before, skipped" in capsys.readouterr().out
    found = client.search_runs([run.info.experiment_id], "tags.`expman.run` = 'mnist/good'")
    assert len(found) == 1


def test_a_run_that_cannot_be_exported_never_stops_the_others(tmp_path, capsys, monkeypatch):
    need("mlflow")
    need("sqlalchemy")
    monkeypatch.chdir(tmp_path)         # a SQLite store keeps artifacts in ./mlruns, as MLflow does
    good, _ = make_runs(tmp_path / "runs")
    not_a_run = tmp_path / "runs" / "mnist" / "empty"
    not_a_run.mkdir()
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    from expman.export_mlflow import export_mlflow
    result = export_mlflow([not_a_run, good], uri)
    assert [r["run"] for r in result["exported"]] == ["mnist/good"]
    assert str(not_a_run) in result["failed"]
    with pytest.raises(ValueError, match="MLflow tracking URI 'bogus://x'"):
        export_mlflow([good], "bogus://x")          # a store MLflow refuses: one clear error
    assert main(["export-mlflow", str(good), "--tracking-uri", "bogus://x"]) == 1
    assert "expman: error: MLflow tracking URI 'bogus://x'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mlruns").rglob("*") if p.is_file()) == [
        "ckpt.manifest.json", "config.json", "model.pt", "model.pt.v2"]
