"""expman.tensorboard.SummaryWriter as a drop-in, and integrations.tensorboard.patch().

One TensorBoard-style script runs unchanged against torch's real SummaryWriter
and against expman's (only the import differs); every value comes back exactly.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from conftest import need

import expman
from expman import media_read

torch = need("torch")
need("tensorboard")
tbx = need("tensorboardX")
matplotlib = need("matplotlib")
matplotlib.use("Agg")
from torch.utils.tensorboard import SummaryWriter as TorchWriter  # noqa: E402

from expman.tensorboard import UNSUPPORTED, SummaryWriter  # noqa: E402

LOSSES = [2.5, 1.25, 0.1 + 0.2, float("nan"), 1e-300]


def tensorboard_script(SummaryWriter, log_dir):
    """A typical training script's logging, written against torch's API."""
    import matplotlib.pyplot as plt
    torch.manual_seed(0)
    with SummaryWriter(log_dir) as writer:
        for step, loss in enumerate(LOSSES):
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", torch.tensor(0.01 * (step + 1), dtype=torch.float64), step)
            writer.add_scalars("acc", {"train": step / 10, "val": step / 20}, step)
        weights = torch.randn(1000, dtype=torch.float64)
        writer.add_histogram("weights", weights, 4)
        writer.add_histogram("weights", weights * 2, 5, bins=10)
        writer.add_image("sample", torch.rand(3, 8, 6), 4)
        writer.add_image("sample_hwc", np.full((4, 5, 3), 200, dtype=np.uint8), 4, dataformats="HWC")
        fig = plt.figure(figsize=(2, 2), dpi=20)
        plt.plot([0, 1], [1, 0])
        writer.add_figure("curve", fig, 4)
        writer.add_histogram_raw("raw", min=-1.0, max=3.0, num=6, sum=4.0, sum_squares=12.0,
                                 bucket_limits=[0.0, 1.0, 3.0], bucket_counts=[1, 2, 3],
                                 global_step=4)
        writer.add_images("batch", torch.zeros(2, 1, 3, 5), 4)              # NCHW
        writer.add_text("notes", "epoch 4 done", 4)
        writer.add_hparams({"lr": 0.01, "optimizer": "adam", "layers": 3}, {"hparam/best": 0.25})
        writer.flush()
    return weights


def test_same_script_both_writers_values_exact(tmp_path):
    torch_dir = tmp_path / "tb" / "runs" / "exp1"
    tensorboard_script(TorchWriter, str(torch_dir))
    ours = tmp_path / "expman" / "runs" / "exp1"           # log_dir *is* the run folder
    weights = tensorboard_script(SummaryWriter, str(ours))
    run = expman.open_run(ours)
    assert run.status == "FINISHED" and run.experiment == "runs" and run.run_name == "exp1"
    loss = run.metrics["train/loss"]
    assert list(loss.steps) == [0, 1, 2, 3, 4]
    assert np.array_equal(loss.values, np.array(LOSSES), equal_nan=True)     # bit-exact, NaN kept
    assert list(run.metrics["train/lr"].values) == [0.01 * (s + 1) for s in range(5)]
    assert list(run.metrics["acc/train"].values) == [s / 10 for s in range(5)]
    assert list(run.metrics["acc/val"].values) == [s / 20 for s in range(5)]
    assert list(run.metrics["hparam/best"].values) == [0.25]
    assert run.params == {"lr": 0.01, "optimizer": "adam", "layers": 3}
    (text,) = [m for m in run.messages if m.get("tag") == "notes"]
    assert (text["msg"], text["step"]) == ("epoch 4 done", 4)
    hist = media_read.histograms(run)["weights"]
    counts, edges = np.histogram(weights.numpy(), bins=64)
    assert (hist[0].step, hist[0].counts, hist[0].edges) == (4, counts.tolist(), edges.tolist())
    counts, edges = np.histogram(weights.numpy() * 2, bins=10)
    assert (hist[1].step, hist[1].counts, hist[1].edges) == (5, counts.tolist(), edges.tolist())
    (raw,) = media_read.histograms(run)["raw"]
    assert (raw.step, raw.edges, raw.counts) == (4, [-1.0, 0.0, 1.0, 3.0], [1, 2, 3])
    imgs = media_read.images(run)
    assert {k: [(i.step, i.width, i.height) for i in v] for k, v in imgs.items()} == {
        "sample": [(4, 6, 8)], "sample_hwc": [(4, 5, 4)], "curve": [(4, 40, 40)],
        "batch": [(4, 5, 3), (4, 5, 3)]}
    assert [i.path.name for i in imgs["batch"]] == ["4.png", "4_1.png"]

    # what torch's writer kept, read with TensorBoard's own reader, agrees
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator, IMAGES, SCALARS)
    acc = EventAccumulator(str(torch_dir), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    tb_loss = [e.value for e in acc.Scalars("train/loss")]
    assert np.array_equal(np.array(tb_loss), np.array(LOSSES, dtype=np.float32).astype(float),
                          equal_nan=True)
    assert {(i.width, i.height) for i in acc.Images("sample")} == {(6, 8)}


def test_every_other_public_method_raises_naming_itself(tmp_path):
    public = {n for cls in (TorchWriter, tbx.SummaryWriter) for n in dir(cls) if not n.startswith("_")}
    implemented = {n for n in public if n not in UNSUPPORTED}
    assert implemented == {"add_scalar", "add_scalars", "add_hparams", "add_text", "add_histogram",
                           "add_image", "add_images", "add_figure", "flush", "close", "get_logdir",
                           "add_histogram_raw"}
    with SummaryWriter(tmp_path / "e" / "r") as w:
        for name in sorted(public & set(UNSUPPORTED)):
            with pytest.raises(NotImplementedError, match=f"SummaryWriter.{name} is not supported"):
                getattr(w, name)("tag", 1)
        with pytest.raises(NotImplementedError, match="purge_step"):
            SummaryWriter(tmp_path / "e" / "r2", purge_step=3)
        # the signatures of what is implemented accept what torch's accept
        for name in implemented:
            ours = inspect.signature(getattr(SummaryWriter, name)).parameters
            assert set(inspect.signature(getattr(TorchWriter, name)).parameters) <= set(ours), name


def test_default_log_dir_and_reopen(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path))
    with SummaryWriter(comment="_lr0.1") as w:
        w.add_scalar("x", 1.0, 0)
        first = w.get_logdir()
    assert first.startswith(str(tmp_path / "runs")) and first.endswith("_lr0.1")
    with SummaryWriter(first) as w:                        # an existing run is appended to
        w.add_scalar("x", 2.0, 1)
    assert list(expman.open_run(first).metrics["x"].values) == [1.0, 2.0]


def test_log_dir_of_tensorboard_files_is_refused_an_empty_one_used(tmp_path):
    TorchWriter(str(tmp_path / "tb" / "r")).close()
    with pytest.raises(ValueError, match="holds files but no expman run"):
        SummaryWriter(tmp_path / "tb" / "r")
    (tmp_path / "tb" / "empty").mkdir()
    with SummaryWriter(tmp_path / "tb" / "empty") as w:
        w.add_scalar("a", 1.0, 0)
    assert expman.open_run(tmp_path / "tb" / "empty").status == "FINISHED"


def test_writer_into_an_open_experiment_leaves_it_open(make_run):
    exp = make_run()
    w = SummaryWriter(experiment=exp)
    w.add_scalar("a", 3.0, 7)
    w.close()
    assert exp.status == "RUNNING"
    exp.close()
    assert list(expman.open_run(exp.run_dir).metrics["a"].steps) == [7]


def test_exception_in_with_block_marks_the_run_failed(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with SummaryWriter(tmp_path / "e" / "r") as w:
            w.add_scalar("a", 1.0, 0)
            1 / 0
    assert expman.open_run(tmp_path / "e" / "r").status == "FAILED"


@pytest.mark.parametrize("Writer", [TorchWriter, tbx.SummaryWriter], ids=["torch", "tensorboardX"])
def test_patch_mirrors_real_writers(tmp_path, monkeypatch, Writer):
    from expman.integrations import tensorboard as integration
    import matplotlib.pyplot as plt
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path / "expman"))
    integration.patch()
    try:
        w = Writer(str(tmp_path / "tb" / "runs" / "mnist"))
        for step, loss in enumerate(LOSSES[:3]):
            w.add_scalar("loss", loss, step)
        w.add_scalars("acc", {"train": 0.5}, 2)
        w.add_text("t", "hi", 1)
        w.add_histogram("h", np.arange(10.0), 2)
        w.add_image("img", np.zeros((3, 4, 4)), 2)
        w.add_images("batch", np.zeros((2, 3, 4, 4)), 2)
        fig = plt.figure(figsize=(1, 1), dpi=10)
        w.add_figure("fig", fig, 2)
        w.add_hparams({"lr": 0.1}, {"best": 1.5})
        w.close()
    finally:
        integration.unpatch()
    assert not integration.is_patched()
    run = expman.open_run(tmp_path / "expman" / "runs" / "mnist")
    assert run.status == "FINISHED"
    assert list(run.metrics["loss"].values) == LOSSES[:3]
    assert list(run.metrics["acc/train"].values) == [0.5]
    assert list(run.metrics["best"].values) == [1.5]
    assert run.params == {"lr": 0.1}
    assert [(m["tag"], m["msg"]) for m in run.messages if "tag" in m] == [("t", "hi")]
    assert list(media_read.histograms(run)) == ["h"]
    imgs = media_read.images(run)
    assert {k: len(v) for k, v in imgs.items()} == {"img": 1, "batch": 2, "fig": 1}  # figure once
    assert len(list((tmp_path / "expman").glob("*/*"))) == 1           # no run for add_hparams' child
    # TensorBoard still got everything
    files = list((tmp_path / "tb" / "runs" / "mnist").glob("events.out.tfevents*"))
    assert files and all(f.stat().st_size > 0 for f in files)
    # after unpatch, a new writer logs to TensorBoard only
    w = Writer(str(tmp_path / "tb" / "runs" / "other"))
    w.add_scalar("loss", 1.0, 0)
    w.close()
    assert not (tmp_path / "expman" / "runs" / "other").exists()
