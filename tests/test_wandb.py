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

from conftest import need


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
    with pytest.raises(AttributeError, match="does not provide wandb.Artifact"):
        wandb.Artifact
    with pytest.raises(wandb.WandbFeatureMissing, match=r"wandb.init\(sync_tensorboard=\)"):
        wandb.init(project="p", dir=str(tmp_path), sync_tensorboard=True)
    with pytest.raises(RuntimeError, match="wandb.init"):
        wandb.log({"a": 1})
    with pytest.raises(RuntimeError, match="wandb.init"):
        wandb.watch(None)
    wandb.init(project="p", dir=str(tmp_path))
    with pytest.raises(wandb.WandbFeatureMissing, match="wandb.run.log_artifact"):
        wandb.run.log_artifact
    with pytest.raises(FileNotFoundError, match="no file matches"):
        wandb.save(str(tmp_path / "*.none"))
    with pytest.raises(ValueError, match="mode must be"):
        wandb.init(project="p", dir=str(tmp_path), mode="sometimes")
    assert not hasattr(wandb, "__wrapped__")


def test_values_that_are_not_numbers_become_messages_and_never_stop_the_script(tmp_path):
    run = wandb.init(project="p", name="r", dir=str(tmp_path))
    table = wandb.Table(columns=["prompt", "reward"], data=[["hi", 0.5]])
    table.add_data("yo", np.float32(0.25))
    wandb.log({"note": "text", "x": None, "loss": 0.5, "lst": [1, 2], "samples": table})
    wandb.log({"loss": 0.25, "a": np.array([3.0]), "nested": {"why": "diverged"}})
    wandb.finish()
    got = expman.open_run(run.dir)
    assert list(got.metrics["loss"].values) == [0.5, 0.25]
    assert list(got.metrics["a"].values) == [3.0]
    by_tag = {m["tag"]: m for m in got.messages if "tag" in m}
    assert (by_tag["note"]["msg"], by_tag["note"]["step"]) == ("text", 0)
    assert (by_tag["x"]["msg"], by_tag["lst"]["msg"]) == ("None", "[1, 2]")
    assert (by_tag["nested.why"]["msg"], by_tag["nested.why"]["step"]) == ("diverged", 1)
    (samples,) = got.tables["samples"]          # a real table, not a message
    assert (samples.step, samples.columns) == (0, ["prompt", "reward"])
    assert samples.rows == [["hi", 0.5], ["yo", 0.25]] and "samples" not in by_tag
    assert "x" not in got.metrics and "note" not in got.metrics


def test_table_shapes():
    pd = need("pandas")
    t = wandb.Table(dataframe=pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert (t.columns, t.data) == (["a", "b"], [[1, "x"], [2, "y"]])
    t.add_column("c", [0.5, 0.25])
    assert t.get_column("c") == [0.5, 0.25]
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        t.add_data(1, 2)
    assert wandb.Table(data=[[1, 2]]).columns == ["Column_1", "Column_2"]


def test_disabled_mode_logs_nothing_and_every_call_works(tmp_path, monkeypatch):
    run = wandb.init(project="p", name="r", dir=str(tmp_path), mode="disabled",
                     config={"lr": 0.1})
    assert wandb.config.lr == 0.1 and run.config["lr"] == 0.1
    wandb.config.update({"bs": 4})
    wandb.log({"loss": 1.0, "note": "text"})
    run.log({"loss": 2.0}, step=5)
    wandb.define_metric("loss", summary="min")
    assert wandb.save(str(tmp_path / "*.none")) == []
    wandb.watch(object(), log=None)
    run.log_artifact("whatever").wait()             # any other call is a no-op too
    art = wandb.Artifact("model", type="model")
    art.add_file("missing.pt")
    wandb.log_artifact(art)
    run.summary["best"] = 1.0
    assert run.url is None and run.name == "r" and run.disabled
    wandb.finish()
    assert not any(tmp_path.iterdir()), "a disabled run wrote files"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.init(project="p", dir=str(tmp_path))
    wandb.log({"loss": 1.0})
    wandb.finish()
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="p", name="off", dir=str(tmp_path))
    wandb.log({"loss": 1.0})
    wandb.finish()
    assert list(expman.open_run(tmp_path / "p" / "off").metrics["loss"].values) == [1.0]


def test_run_url_is_the_run_folder(tmp_path):
    from urllib.parse import urlparse
    from urllib.request import url2pathname
    run = wandb.init(project="p", name="r", dir=str(tmp_path))
    assert run.url.startswith("file://") and run.get_url() == run.url
    assert url2pathname(urlparse(run.url).path) == run.dir
    assert wandb.login() is True


def test_watch_logs_gradient_and_parameter_histograms_every_log_freq_steps(tmp_path):
    torch = need("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    run = wandb.init(project="p", name="w", dir=str(tmp_path))
    wandb.watch(model, log="all", log_freq=2)
    grads_at_4 = {}
    for step in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step == 3:
            grads_at_4 = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        wandb.log({"loss": loss.item()})
    wandb.finish()
    hists = expman.open_run(run.dir).histograms
    names = [n for n, _ in model.named_parameters()]
    assert set(hists) == {f"{kind}/{n}" for kind in ("gradients", "parameters") for n in names}
    for n, p in model.named_parameters():
        grads = hists[f"gradients/{n}"]
        # the 2nd, 4th, 6th backward pass, each at the step being logged then
        assert [h.step for h in grads] == [1, 3, 5]
        assert all(sum(h.counts) == p.numel() for h in grads)
        g = grads_at_4[n]
        if g.numel() > 1:       # binned over [min, max] of the gradient of that pass
            assert grads[1].edges[0] == pytest.approx(g.min().item())
            assert grads[1].edges[-1] == pytest.approx(g.max().item())
        else:                   # one value: a bin of width 1 around it
            assert grads[1].edges[0] < g.item() < grads[1].edges[-1]
        assert [h.step for h in hists[f"parameters/{n}"]] == [1, 3, 5]
    wandb.init(project="p", name="w2", dir=str(tmp_path))
    wandb.watch(model, log_freq=1)
    wandb.unwatch()
    model(x).sum().backward()
    wandb.finish()
    assert expman.open_run(tmp_path / "p" / "w2").histograms == {}
