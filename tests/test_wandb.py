"""``import expman.wandb as wandb``: a wandb-style script runs with only its import
changed, and every logged value comes back exactly."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import expman
import expman.wandb as wandb
from expman import media_read
from expman.layout import RUN_FILE
from expman._fsutil import read_json


@pytest.fixture(autouse=True)
def _no_run_left():
    yield
    wandb.finish()


def wandb_script(tmp_path):
    """What a typical wandb training script does (from wandb's quickstart)."""
    run = wandb.init(project="mnist", name="run-1", dir=str(tmp_path),
                     config={"learning_rate": 0.02, "architecture": "CNN", "epochs": 3},
                     tags=["baseline"], notes="quickstart", group="sweep-a")
    wandb.config.batch_size = 64
    wandb.config["dropout"] = 0.1
    wandb.config.update({"epochs": 4}, allow_val_change=True)
    wandb.define_metric("val/acc", summary="max")
    lr = wandb.config.learning_rate
    for epoch in range(wandb.config.epochs):
        loss = 1.0 / (epoch + 1) + lr
        wandb.log({"train/loss": loss, "epoch": epoch})
        wandb.log({"val": {"acc": 0.5 + epoch / 10}}, commit=False)     # joins the next row
    wandb.log({"hist": wandb.Histogram([1.0, 2.0, 2.0, 3.0], num_bins=2),
               "img": wandb.Image(np.zeros((4, 4, 3), dtype=np.uint8), caption="zeros")})
    wandb.summary["best_loss"] = 0.27
    (tmp_path / "model.txt").write_text("weights")
    wandb.save(str(tmp_path / "model.txt"))
    assert (run.name, run.id) == ("run-1", "run-1")
    assert run.dir == str(tmp_path / "mnist" / "run-1")
    wandb.finish()


def test_wandb_script_values_exact(tmp_path):
    wandb_script(tmp_path)
    run = expman.open_run(tmp_path / "mnist" / "run-1")
    assert run.status == "FINISHED"
    assert run.params == {"learning_rate": 0.02, "architecture": "CNN", "epochs": 4,
                          "batch_size": 64, "dropout": 0.1}
    loss = run.metrics["train/loss"]
    assert list(loss.steps) == [0, 1, 2, 3]
    assert list(loss.values) == [1.0 / (e + 1) + 0.02 for e in range(4)]
    assert list(run.metrics["epoch"].values) == [0, 1, 2, 3]
    # commit=False rows are written with the next step, as wandb does
    assert list(run.metrics["val.acc"].steps) == [1, 2, 3, 4]
    assert list(run.metrics["val.acc"].values) == [0.5 + e / 10 for e in range(4)]
    (hist,) = media_read.histograms(run)["hist"]
    assert (hist.step, hist.edges, hist.counts) == (4, [1.0, 2.0, 3.0], [1, 3])
    (img,) = media_read.images(run)["img"]
    assert (img.step, img.width, img.height) == (4, 4, 4)
    assert any(m.get("tag") == "img" and m["msg"] == "zeros" for m in run.messages)
    meta = read_json(run.path / RUN_FILE)
    assert (meta["tags"], meta["notes"], meta["group"]) == (["baseline"], "quickstart", "sweep-a")
    assert meta["summary"]["best_loss"] == 0.27
    assert meta["summary"]["train/loss"] == 0.25 + 0.02
    assert meta["define_metric"]["val/acc"]["summary"] == "max"
    assert [a["name"] for a in run.artifacts] == ["model.txt"]


def test_explicit_steps_follow_wandb_rules(tmp_path):
    wandb.init(project="p", name="r", dir=str(tmp_path))
    wandb.log({"a": 1.0}, step=5)
    wandb.log({"b": 2.0}, step=5)                 # same step: one row
    wandb.log({"a": 3.0}, step=7)
    with pytest.warns(RuntimeWarning, match="below the current step 7"):
        wandb.log({"a": 9.0}, step=6)
    wandb.log({"a": 4.0})                         # no step: the current one, then advance
    wandb.log({"a": 5.0})
    assert wandb.run.step == 9
    wandb.finish()
    run = expman.open_run(tmp_path / "p" / "r")
    a = run.metrics["a"]
    assert list(zip(a.steps, a.values)) == [(5, 1.0), (7, 3.0), (7, 4.0), (8, 5.0)]
    assert list(run.metrics["b"].steps) == [5]


def test_config_access_and_namespace(tmp_path):
    ns = argparse.Namespace(lr=0.1, depth=3)
    wandb.init(project="p", dir=str(tmp_path), config=ns)
    assert wandb.config.lr == 0.1 and wandb.config["depth"] == 3
    assert dict(wandb.config) == {"lr": 0.1, "depth": 3}
    wandb.config.setdefaults({"lr": 9, "width": 8})
    assert wandb.config.width == 8 and wandb.config.lr == 0.1
    with pytest.raises(AttributeError, match="no key 'missing'"):
        wandb.config.missing
    path = wandb.run.dir
    wandb.finish()
    assert read_json(expman.open_run(path).path / "params.json") == {"lr": 0.1, "depth": 3, "width": 8}


def test_np_histogram_second_init_and_config_before_init(tmp_path):
    with pytest.raises(RuntimeError, match="before setting config"):
        wandb.config.lr = 0.1
    first = wandb.init(project="p", name="one", dir=str(tmp_path))
    values = np.random.default_rng(3).normal(size=300)
    counts, edges = np.histogram(values, bins=7)
    wandb.log({"h": wandb.Histogram(np_histogram=(counts, edges))})
    second = wandb.init(project="p", name="two", dir=str(tmp_path))     # finishes the first
    assert first.experiment.status == "FINISHED" and wandb.run is second
    wandb.finish()
    (h,) = media_read.histograms(expman.open_run(tmp_path / "p" / "one"))["h"]
    assert (h.step, h.edges, h.counts) == (0, edges.tolist(), counts.tolist())


def test_finish_with_exit_code_and_resume(tmp_path):
    wandb.init(project="p", name="r", dir=str(tmp_path))
    wandb.log({"x": 1.0})
    wandb.finish(exit_code=3)
    run = expman.open_run(tmp_path / "p" / "r")
    assert run.status == "FAILED" and run.meta["exit"] == {"reason": "exit", "code": 3}
    wandb.init(project="p", name="r", dir=str(tmp_path), resume="allow")
    wandb.log({"x": 2.0}, step=1)
    wandb.finish()
    assert list(expman.open_run(tmp_path / "p" / "r").metrics["x"].values) == [1.0, 2.0]
    with pytest.raises(ValueError, match="resume='must'"):
        wandb.init(project="p", name="nope", dir=str(tmp_path), resume="must")
    with pytest.raises(FileExistsError, match="exists"):
        wandb.init(project="p", name="r", dir=str(tmp_path))


def test_missing_features_are_named(tmp_path):
    with pytest.raises(AttributeError, match="does not provide wandb.Table"):
        wandb.Table
    with pytest.raises(wandb.WandbFeatureMissing, match="wandb.watch"):
        wandb.watch(None)
    with pytest.raises(wandb.WandbFeatureMissing, match=r"wandb.init\(sync_tensorboard=\)"):
        wandb.init(project="p", dir=str(tmp_path), sync_tensorboard=True)
    with pytest.raises(RuntimeError, match="wandb.init"):
        wandb.log({"a": 1})
    wandb.init(project="p", dir=str(tmp_path))
    with pytest.raises(wandb.WandbFeatureMissing, match="key 'text'"):
        wandb.log({"text": "hello"})
    with pytest.raises(wandb.WandbFeatureMissing, match="wandb.run.log_artifact"):
        wandb.run.log_artifact
    with pytest.raises(FileNotFoundError, match="no file matches"):
        wandb.save(str(tmp_path / "*.none"))
    assert not hasattr(wandb, "__wrapped__")
