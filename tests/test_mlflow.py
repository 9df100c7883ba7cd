"""``import expman.mlflow as mlflow``: one script written for MLflow, run against
the drop-in and against real MLflow (SQLite store), records the same params,
metric values and steps, tags and artifact names."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import expman
import expman.mlflow as drop_in
from expman import runmeta

from conftest import need


def mlflow_script(mlflow, files: Path) -> tuple[str, str]:
    """A typical MLflow training script, with a nested run (a fold of a CV)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files.mkdir()
    mlflow.set_experiment("mnist")
    with mlflow.start_run(run_name="train", tags={"team": "vision"}) as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"batch_size": 64, "optimizer": "adam", "betas": [0.9, 0.999]})
        mlflow.set_tag("stage", "dev")
        mlflow.set_tags({"seed": 3})
        for epoch in range(3):
            mlflow.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
            mlflow.log_metrics({"acc": 0.5 + epoch / 10, "lr": 0.01 * 0.5 ** epoch}, step=epoch)
        mlflow.log_metric("final_acc", 0.9)             # step 0, MLflow's default
        mlflow.log_metric("final_acc", 0.95)            # a second point at step 0
        mlflow.log_metric("replayed", 0.7, step=5, timestamp=1_600_000_000_123)   # its own time
        (files / "notes.txt").write_text("hello")
        mlflow.log_artifact(str(files / "notes.txt"))
        mlflow.log_artifact(str(files / "notes.txt"), artifact_path="docs")
        out = files / "out"
        (out / "sub").mkdir(parents=True)
        (out / "a.txt").write_text("a")
        (out / "sub" / "b.txt").write_text("b")
        mlflow.log_artifacts(str(out), artifact_path="outputs")
        mlflow.log_dict({"layers": [1, 2]}, "config.json")
        mlflow.log_dict({"depth": 2}, "config.yaml")
        mlflow.log_text("some text", "text/readme.md")
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1.0, 0.5, 0.33])
        mlflow.log_figure(fig, "plots/curve.png")
        plt.close(fig)
        with mlflow.start_run(run_name="fold-1", nested=True) as child:
            mlflow.log_param("fold", 1)
            mlflow.log_metric("fold_loss", 0.5, step=1)
            assert mlflow.active_run().info.run_id == child.info.run_id
        assert mlflow.active_run().info.run_id == run.info.run_id
    assert mlflow.active_run() is None
    return run.info.run_id, child.info.run_id


USER_TAGS = {"team": "vision", "stage": "dev", "seed": "3"}


def mlflow_recorded(client, run_id: str) -> dict:
    """What real MLflow stored for a run, in the shape compared below."""
    run = client.get_run(run_id)
    metrics = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
               for key in run.data.metrics}

    def files(path: str | None = None) -> list[str]:
        out = []
        for f in client.list_artifacts(run_id, path):
            out += files(f.path) if f.is_dir else [f.path]
        return out

    times = {key: [m.timestamp for m in client.get_metric_history(run_id, key)]
             for key in run.data.metrics}
    return {"params": dict(run.data.params), "metrics": metrics,
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "parent": run.data.tags.get("mlflow.parentRunId"), "status": run.info.status,
            "artifacts": sorted(files()), "times": times}


def expman_recorded(run_dir: Path) -> dict:
    run = expman.open_run(run_dir)
    meta = run.meta
    tags = meta.get(drop_in.TAGS_FIELD, {})
    files = sorted(p.relative_to(run.path / "artifacts").as_posix()
                   for p in (run.path / "artifacts").rglob("*") if p.is_file())
    return {"params": {k: json.dumps(v) if isinstance(v, list) else str(v)
                       for k, v in run.params.items()},
            "metrics": {key: list(zip((int(s) for s in s_.steps), (float(v) for v in s_.values)))
                        for key, s_ in run.metrics.items()},
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
            "parent": tags.get("mlflow.parentRunId"), "status": run.status,
            "artifacts": files,
            "times": {key: [round(t * 1000) for t in s_.times] for key, s_ in run.metrics.items()}}


# MLflow's own store (SQLAlchemy, its model registry) warns about its dependencies
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore::UserWarning")
def test_one_mlflow_script_records_the_same_in_expman_and_in_mlflow(tmp_path, monkeypatch):
    mlflow = need("mlflow")
    monkeypatch.chdir(tmp_path)
    t0 = time.time() * 1000
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real_ids = mlflow_script(mlflow, tmp_path / "real-files")
    drop_in.set_tracking_uri(str(tmp_path / "runs"))
    ours_ids = mlflow_script(drop_in, tmp_path / "our-files")
    t1 = time.time() * 1000
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = [mlflow_recorded(client, i) for i in real_ids]
    ours = [expman_recorded(tmp_path / "runs" / "mnist" / i) for i in ours_ids]
    for real_run, our_run in zip(real, ours):
        for field in ("params", "metrics", "tags", "artifacts", "status"):
            assert our_run[field] == real_run[field], field
        # an explicit timestamp is that point's time in both; else the time it was logged
        mine, theirs = our_run["times"], real_run["times"]
        assert mine.pop("replayed", None) == theirs.pop("replayed", None)
        assert all(t0 - 1000 <= t <= t1 + 1000 for ts in [*mine.values(), *theirs.values()]
                   for t in ts)
    assert (real[1]["parent"], ours[1]["parent"]) == (real_ids[0], ours_ids[0])
    assert ours_ids[0] == "train"
    assert real_ids[0] != "train"       # MLflow's ids are uuids; expman's are the run name
    assert real[0]["params"]["betas"] == "[0.9, 0.999]"
    assert real[0]["metrics"]["final_acc"] == [(0, 0.9), (0, 0.95)]
    assert len(real[0]["artifacts"]) == 8 and len(real[0]["metrics"]) == 5
    assert expman_recorded(tmp_path / "runs" / "mnist" / ours_ids[0])["times"]["replayed"] == [
        1_600_000_000_123]
    # the nested run and its parent share one group, named after the parent
    parent, child = (expman.open_run(tmp_path / "runs" / "mnist" / r) for r in ours_ids)
    assert parent.meta[runmeta.GROUP] == child.meta[runmeta.GROUP] == "train"
    assert set(parent.tags) == {"team=vision", "stage=dev", "seed=3"}


def test_tracking_uris_and_runs_started_on_first_use(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    drop_in.set_tracking_uri((tmp_path / "a").as_uri())
    drop_in.set_experiment("e")
    drop_in.log_metric("x", 1.0, step=2)            # starts a run, as MLflow does
    run = drop_in.active_run()
    drop_in.end_run()
    assert drop_in.active_run() is None and drop_in.last_active_run() is run
    got = expman.open_run(tmp_path / "a" / "e" / run.info.run_id)
    assert (list(got.metrics["x"].steps), got.status) == ([2], "FINISHED")
    with pytest.warns(RuntimeWarning, match="not a local folder"):
        drop_in.set_tracking_uri("http://mlflow.example:5000")
    assert drop_in.get_tracking_uri() == (tmp_path / "experiments").as_uri()
    with drop_in.start_run(run_name="same"):
        pass
    with drop_in.start_run(run_name="same") as again:       # MLflow allows a repeated name
        pass
    assert again.info.run_id == "same-2"
    with drop_in.start_run(run_id="same"):                  # resume by id
        drop_in.log_metric("y", 2.0)
    assert list(expman.open_run(tmp_path / "experiments" / "e" / "same").metrics["y"].values) == [2.0]


def test_statuses_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    drop_in.set_tracking_uri(str(tmp_path))
    drop_in.set_experiment("e")
    with pytest.raises(ZeroDivisionError):
        with drop_in.start_run(run_name="boom"):
            1 / 0
    assert expman.open_run(tmp_path / "e" / "boom").status == "FAILED"
    drop_in.start_run(run_name="killed")
    with pytest.raises(ValueError, match="already active"):
        drop_in.start_run()
    drop_in.end_run("KILLED")
    meta = expman.open_run(tmp_path / "e" / "killed").meta
    assert (meta["status"], meta["mlflow_status"]) == ("FAILED", "KILLED")
    with pytest.raises(ValueError, match="status must be"):
        drop_in.start_run(run_name="odd")
        drop_in.end_run("DONE")
    drop_in.end_run()
    with pytest.raises(drop_in.MlflowFeatureMissing, match="mlflow.autolog"):
        drop_in.autolog()
    with pytest.raises(drop_in.MlflowFeatureMissing, match="log_figure of a str"):
        drop_in.log_figure("not a figure", "x.png")
    drop_in.end_run()
    with pytest.raises(expman.ExpmanValueError, match="timestamp"):
        drop_in.log_metric("x", 1.0, timestamp="noon")
    drop_in.end_run()


def test_an_explicit_timestamp_is_kept(tmp_path, monkeypatch):
    """MLflow's log_metric(timestamp=ms) was ignored with a warning; it is the point's time."""
    monkeypatch.chdir(tmp_path)
    drop_in.set_tracking_uri(str(tmp_path))
    drop_in.set_experiment("ts")
    with drop_in.start_run(run_name="t"):
        drop_in.log_metric("x", 1.0, step=1, timestamp=1_600_000_000_123)
        drop_in.log_metrics({"x": 2.0, "y": 3.0}, step=2, timestamp=1_600_000_001_000)
    run = expman.open_run(tmp_path / "ts" / "t")
    assert list(run.metrics["x"].times) == [1_600_000_000.123, 1_600_000_001.0]
    assert list(run.metrics["y"].times) == [1_600_000_001.0]


DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def doc_example(name: str) -> str:
    """The python block after ``<!-- migrate: name -->`` in docs/integrations.md."""
    import re
    m = re.search(rf"<!-- migrate: {name} -->\n```python\n(.*?)```", DOC.read_text("utf-8"), re.S)
    assert m, f"docs/integrations.md has no `{name}` migration example"
    return m.group(1)


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    from conftest import run_python
    monkeypatch.delenv("EXPMAN_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proc = run_python(doc_example("mlflow"), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        ("FINISHED {'lr': 0.01, 'optimizer': 'adam'} [0, 1, 2] baseline "
         "['team=vision', 'stage=dev']"),
        "{'layers': [64, 10]}"]
    folds = [expman.open_run(tmp_path / "experiments" / "mnist" / f"fold-{i}") for i in (0, 1)]
    assert [f.meta["group"] for f in folds] == ["baseline", "baseline"]


def test_runs_left_active_at_exit_keep_the_truth_and_their_tags(tmp_path):
    """MLflow ends an active run FINISHED at exit even when the script crashed;
    expman keeps FAILED (its exit handler runs first) and still writes the tags."""
    from conftest import run_python
    script = """
        import sys
        import expman.mlflow as mlflow
        mlflow.set_tracking_uri("runs")
        mlflow.start_run(run_name=sys.argv[1])
        mlflow.set_tag("k", "v")
        mlflow.log_metric("a", 1.0)
        if sys.argv[1] == "crash":
            raise ValueError("boom")
        if sys.argv[1] == "exit":
            sys.exit(3)
    """
    for name in ("clean", "crash", "exit"):
        run_python(script.replace("sys.argv[1]", repr(name)), tmp_path)
    got = {n: expman.open_run(tmp_path / "runs" / "Default" / n) for n in ("clean", "crash", "exit")}
    assert {n: r.status for n, r in got.items()} == {
        "clean": "FINISHED", "crash": "FAILED", "exit": "FAILED"}
    assert got["crash"].meta["exit"]["type"] == "ValueError"
    assert got["exit"].meta["exit"]["code"] == 3
    assert all(r.meta[drop_in.TAGS_FIELD] == {"k": "v"} and r.tags == ["k=v"]
               for r in got.values())
