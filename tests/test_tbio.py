"""TensorBoard import and export, checked with the tensorboard package's own reader."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import need

import expman
from expman import media_read, tbio
from expman.cli import tensorboard as cli_tensorboard
from expman.errors import RunExistsError

need("tensorboard")
torch = need("torch")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    HISTOGRAMS, IMAGES, SCALARS, TENSORS, EventAccumulator)
from tensorboard.util import tensor_util  # noqa: E402
from torch.utils.tensorboard import SummaryWriter as TorchWriter  # noqa: E402

GUIDANCE = {SCALARS: 0, TENSORS: 0, HISTOGRAMS: 0, IMAGES: 0}


def _accumulate(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance=GUIDANCE)
    acc.Reload()
    return acc


def _write_tensorboard_logs(logdir):
    with TorchWriter(str(logdir / "lr0.1")) as w:
        for step in range(6):
            w.add_scalar("loss", 1.0 / (step + 1), step)
            w.add_scalar("acc", step * 0.1, step, new_style=True)     # tensor-style scalar
        w.add_scalar("loss", 7.5, 2)                                   # a duplicate step
        w.add_text("notes", "warmup over", 3)
        w.add_histogram("w", np.arange(20.0), 4)
    with TorchWriter(str(logdir / "lr0.2" / "seed1")) as w:
        w.add_hparams({"lr": 0.2, "opt": "sgd"}, {"hp/final": 0.75}, run_name="hp")


def test_import_equals_tensorboards_reader(tmp_path):
    logdir = tmp_path / "tb"
    _write_tensorboard_logs(logdir)
    made = cli_run(["import-tensorboard", str(logdir), "--experiment", "imported",
                    "--base-dir", str(tmp_path / "runs")])
    assert made == 0
    runs = {p.name: expman.open_run(p) for p in sorted((tmp_path / "runs" / "imported").iterdir())}
    assert sorted(runs) == ["lr0.1", "lr0.2__seed1"]      # add_hparams' folder folded in
    run = runs["lr0.1"]
    acc = _accumulate(logdir / "lr0.1")
    tb_loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    ours = list(zip(run.metrics["loss"].steps.tolist(), run.metrics["loss"].values.tolist()))
    assert ours == [(s, float(np.float32(1.0 / (s + 1)))) for s in range(6)] + [(2, 7.5)]
    assert ours == tb_loss                               # the duplicate step too, in file order
    tb_acc = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors("acc")]
    assert list(zip(run.metrics["acc"].steps.tolist(), run.metrics["acc"].values.tolist())) == tb_acc
    (note,) = [m for m in run.messages if m.get("tag") == "notes/text_summary"]
    assert (note["msg"], note["step"]) == ("warmup over", 3)
    (hist,) = media_read.histograms(run)["w"]
    (tb_hist,) = acc.Histograms("w")
    assert hist.edges == list(tb_hist.histogram_value.bucket_limit)    # torch: an empty bucket
    assert hist.counts == list(tb_hist.histogram_value.bucket)[1:]      # first, then numpy's bins
    counts, edges = np.histogram(np.arange(20.0), bins=hist.edges)
    assert hist.counts == counts.tolist() and sum(hist.counts) == 20
    hp = runs["lr0.2__seed1"]
    assert hp.params == {"lr": 0.2, "opt": "sgd"}
    assert hp.metrics["hp/final"].values.tolist() == [0.75]
    with pytest.raises(RunExistsError):
        from expman.tbio import import_tensorboard
        import_tensorboard(logdir, tmp_path / "runs", "imported")


def test_two_writers_with_add_scalars_and_add_hparams_are_two_runs(tmp_path, capsys):
    """Issue 22: two SummaryWriters using add_scalars and add_hparams were 8 runs, the main
    ones without params. Now: one run per writer, add_scalars' sub-writers as tag/key
    metrics, add_hparams' folder as the run's params and metrics."""
    logdir = tmp_path / "tb"
    for lr in (0.01, 0.1):
        with TorchWriter(str(logdir / f"lr{lr}")) as w:
            for step in range(4):
                w.add_scalar("loss", 1.0 / (step + 1) + lr, step)
                w.add_scalars("acc", {"train": 0.5 + step / 10, "val": 0.25 + step / 10}, step)
                w.add_scalars("opt/lr", {"g0": lr}, step)           # a '/' in the main tag
            w.add_hparams({"lr": lr, "bs": 32, "opt": "sgd"}, {"hparam/acc": 0.75 + lr})
    assert len([d for d in logdir.rglob("*") if d.is_dir()]) == 10      # torch's layout
    assert cli_run(["import-tensorboard", str(logdir), "-e", "sweep",
                    "--base-dir", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.split() == ["sweep/lr0.01", "sweep/lr0.1"]
    runs = {p.name: expman.open_run(p) for p in (tmp_path / "runs" / "sweep").iterdir()}
    assert sorted(runs) == ["lr0.01", "lr0.1"]
    for lr in (0.01, 0.1):
        run = runs[f"lr{lr}"]
        assert run.params == {"lr": lr, "bs": 32, "opt": "sgd"}
        assert sorted(run.metrics) == ["acc/train", "acc/val", "hparam/acc", "loss", "opt/lr/g0"]
        folder = logdir / f"lr{lr}"
        for metric, sub, tag in (("loss", folder, "loss"), ("acc/train", folder / "acc_train", "acc"),
                                 ("acc/val", folder / "acc_val", "acc"),
                                 ("opt/lr/g0", folder / "opt_lr_g0", "opt/lr")):
            tb = [(e.step, e.value) for e in _accumulate(sub).Scalars(tag)]
            ours = run.metrics[metric]
            assert list(zip(ours.steps.tolist(), ours.values.tolist())) == tb and len(tb) == 4
        assert run.metrics["hparam/acc"].values.tolist() == [float(np.float32(0.75 + lr))]


def test_import_report_counts_problems_per_run(tmp_path):
    """A damaged record is counted in the report (and named in the run) instead of
    aborting the import; the other runs and the rest of the file are imported."""
    logdir = tmp_path / "tb"
    for name in ("a", "b"):
        with TorchWriter(str(logdir / name)) as w:
            for step in range(5):
                w.add_scalar("loss", float(step), step)
    (events,) = (logdir / "a").glob("*tfevents*")
    data = bytearray(events.read_bytes())
    data[-3] ^= 0xFF                              # the last record's payload: bad checksum
    events.write_bytes(bytes(data))
    report: list[dict] = []
    with pytest.warns(RuntimeWarning, match="bad checksum"):
        made = tbio.import_tensorboard(logdir, tmp_path / "runs", "x", report=report)
    assert [r["run"] for r in report] == made and len(made) == 2
    assert [r["problems"] for r in report] == [1, 0]
    runs = [expman.open_run(p) for p in made]
    assert runs[0].metrics["loss"].values.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert runs[1].metrics["loss"].values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert any("1 problems" in m["msg"] for m in runs[0].messages)
    walls = [e.wall_time for _, e in tbio.read_events(events) if e.summary.value]
    assert (report[0]["first_event_time"], report[0]["last_event_time"]) == (min(walls), max(walls))


def test_import_keeps_each_points_wall_time_and_the_runs_span(tmp_path):
    """Issue 22.6: points and the run's start/end were the time of the import (a
    month-old log looked like it ran today); now each point keeps its event's
    wall_time to the microsecond, and run.json spans the first to the last event."""
    logdir = tmp_path / "tb"
    month_ago = 1_790_000_000.123456
    walls = [month_ago + 7.25 * step + step / 3 for step in range(5)]
    walls[3] = month_ago - 60.0                              # an event out of time order
    with TorchWriter(str(logdir / "old")) as w:
        for step, t in enumerate(walls):
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=t)
            w.add_scalars("acc", {"train": step / 10}, step, walltime=t + 0.5)
        w.add_histogram("w", np.arange(20.0), 2, walltime=walls[2])
        w.add_text("note", "hello", 1, walltime=walls[1])
    (made,) = tbio.import_tensorboard(logdir, tmp_path / "runs", "x")
    run = expman.open_run(made)
    tb = _accumulate(logdir / "old").Scalars("loss")
    assert run.metrics["loss"].steps.tolist() == [e.step for e in tb] == list(range(5))
    assert np.abs(np.asarray(run.metrics["loss"].times) - [e.wall_time for e in tb]).max() < 1e-6
    assert np.abs(np.asarray(run.metrics["acc/train"].times)
                  - [t + 0.5 for t in walls]).max() < 1e-6
    assert [h.time for h in run.histograms["w"]] == [walls[2]]
    assert [m["time"] for m in run.messages if m.get("tag") == "note/text_summary"] == [walls[1]]
    assert run.meta["start_time"] == min(walls)
    assert run.meta["end_time"] == pytest.approx(walls[4] + 0.5, abs=1e-6)
    assert run.meta["duration"] == pytest.approx(walls[4] + 0.5 - min(walls), abs=1e-6)


def test_log_metrics_at_checks_its_time_and_close_its_span(make_run):
    exp = make_run("t", "r")
    exp.log_metrics_at({"a": 1.0}, 3, wall_time=1_600_000_000.000001)
    exp.log_metrics({"a": 2.0})                     # the step sequence goes on from 3
    for bad in (float("nan"), -1.0, 1e10, "1600000000", True):
        with pytest.raises(expman.ExpmanValueError, match="wall_time"):
            exp.log_metrics_at({"a": 1.0}, 5, wall_time=bad)
    with pytest.raises(expman.ExpmanValueError, match="end_time"):
        exp.close(start_time=20.0, end_time=10.0)
    exp.close(start_time=1_600_000_000.0)
    run = expman.open_run(exp.run_dir)
    assert run.metrics["a"].steps.tolist() == [3, 4]
    assert run.metrics["a"].times[0] == 1_600_000_000.000001
    assert run.meta["start_time"] == 1_600_000_000.0 < run.meta["end_time"]


def cli_run(argv) -> int:
    parser = argparse.ArgumentParser()
    cli_tensorboard.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _expman_run(make_run):
    exp = make_run("src", "r1", tags=["t"])
    exp.log_params({"lr": 0.001, "model": {"depth": 4, "act": "relu"}, "flag": True})
    values = [0.1 + 0.2, 1e-310, -2.5, float("inf"), 3.0]
    for step, v in enumerate(values):
        exp.log_metrics({"loss": v, "acc": step / 3}, step=step)
    exp.log_metrics({"loss": 9.0}, step=1)                  # out of order, kept
    exp.info("starting")
    exp.log_histogram("w", edges=[0.0, 0.5, 2.0], counts=[4, 6], step=2)
    exp.log_image("img", np.full((3, 5, 3), 7, dtype=np.uint8), step=3)
    exp.close()
    return exp.run_dir, values


def test_export_is_read_exactly_by_tensorboard(make_run, tmp_path):
    from expman.tbio import export_tensorboard
    run_dir, values = _expman_run(make_run)
    event_file = export_tensorboard(expman.open_run(run_dir), tmp_path / "out")
    assert event_file.parent == tmp_path / "out" and "tfevents" in event_file.name
    acc = _accumulate(tmp_path / "out")
    loss = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors("loss")]
    assert loss == list(enumerate(values)) + [(1, 9.0)]                  # float64, bit-exact
    assert [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors("acc")] == [
        s / 3 for s in range(5)]
    assert acc.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    (text,) = acc.Tensors("messages/info")
    assert tensor_util.make_ndarray(text.tensor_proto).item() == b"starting"
    (h,) = acc.Histograms("w")
    assert (h.step, h.histogram_value.min, list(h.histogram_value.bucket_limit),
            list(h.histogram_value.bucket)) == (2, 0.0, [0.0, 0.5, 2.0], [0.0, 4.0, 6.0])
    (img,) = acc.Images("img")
    assert (img.step, img.width, img.height) == (3, 5, 3)
    assert img.encoded_image_string == (run_dir / "artifacts/media/img/3.png").read_bytes()
    # the hparams plugin (TensorBoard's own parser) sees the params, nested ones flattened
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ssi = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert {k: v.WhichOneof("kind") for k, v in ssi.hparams.items()} == {
        "lr": "number_value", "model.depth": "number_value", "model.act": "string_value",
        "flag": "bool_value"}
    assert ssi.hparams["lr"].number_value == 0.001


def test_export_then_import_round_trip(make_run, tmp_path):
    from expman.tbio import export_tensorboard, import_tensorboard
    run_dir, _ = _expman_run(make_run)
    src = expman.open_run(run_dir)
    export_tensorboard(run_dir, tmp_path / "tb" / "r1")
    (back_dir,) = import_tensorboard(tmp_path / "tb", tmp_path / "again")
    back = expman.open_run(back_dir)
    for name in ("loss", "acc"):
        assert back.metrics[name].steps.tolist() == src.metrics[name].steps.tolist()
        assert back.metrics[name].values.tolist() == src.metrics[name].values.tolist()
    assert back.params == {"lr": 0.001, "model.depth": 4, "model.act": "relu", "flag": True}
    assert [(h.edges, h.counts) for h in media_read.histograms(back)["w"]] == [
        ([0.0, 0.5, 2.0], [4, 6])]
    assert any(m["msg"] == "starting" for m in back.messages)
    (img,) = media_read.images(back)["img"]
    assert img.step == 3 and img.read_bytes() == (run_dir / "artifacts/media/img/3.png").read_bytes()
    assert not [m for m in back.messages if m["level"] == "warning"]      # nothing left behind


def test_export_keeps_logged_order_when_time_stamps_tie(make_run, tmp_path):
    """float64 seconds cannot tell records ~100 ns apart: order must not come from time."""
    from array import array

    from expman.reader import Metrics, Series
    from expman.tbio import export_tensorboard
    run_dir, _ = _expman_run(make_run)
    run = expman.open_run(run_dir)
    same = array("d", [1000.0] * 4)
    run.metrics = Metrics({"loss": Series("loss", array("q", [0, 2, 1, 3]),
                                          array("d", [0.5, 0.25, 9.0, 0.125]), same),
                           "acc": Series("acc", array("q", [3, 0]), array("d", [1.0, 2.0]),
                                         array("d", [1000.0, 1000.0]))})
    export_tensorboard(run, tmp_path / "out")
    acc = _accumulate(tmp_path / "out")
    got = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
           for tag in ("loss", "acc")}
    assert got == {"loss": [(0, 0.5), (2, 0.25), (1, 9.0), (3, 0.125)], "acc": [(3, 1.0), (0, 2.0)]}


# ---- issue 20 items 6 and 18: crafted event files ------------------------------------------------

import warnings  # noqa: E402

from hostile import runfiles  # noqa: E402


def import_one(tmp_path, data: bytes, name: str = "events.out.tfevents.1.host"):
    logdir = tmp_path / "tb"
    (logdir / "run").mkdir(parents=True)
    (logdir / "run" / name).write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = tbio.import_tensorboard(logdir, tmp_path / "runs", "x")
    return made, [str(w.message) for w in caught]


def loss(run_dir):
    s = expman.open_run(run_dir).metrics["loss"]
    return list(zip(s.steps.tolist(), s.values.tolist()))


def test_the_builders_write_what_tensorboard_reads(tmp_path):
    path = tmp_path / "events.out.tfevents.1.h"
    path.write_bytes(runfiles.tb_good())
    acc = EventAccumulator(str(path), size_guidance=GUIDANCE)
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(i, i / 2) for i in range(4)]


def test_a_tensor_declaring_300m_elements_is_skipped_not_allocated(tmp_path):
    """60 bytes declaring 300 M floats: make_ndarray allocated 2.24 GiB."""
    import tracemalloc
    tracemalloc.start()
    try:
        (made,), said = import_one(tmp_path, runfiles.tb_tensor_300m_elements())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert loss(made) == [(1, 1.0)]
    assert any("declares 300000000 elements" in m and "offset" in m for m in said)


def test_a_record_length_of_2_63_is_a_named_problem(tmp_path):
    (made,), said = import_one(tmp_path, runfiles.tb_record_length_2_63())
    assert loss(made) == [(i, i / 2) for i in range(4)]
    assert any("past the end of the file" in m for m in said)


def test_a_bad_checksum_mid_file_is_reported_and_the_rest_kept(tmp_path):
    (made,), said = import_one(tmp_path, runfiles.tb_bad_crc_mid_file())
    assert loss(made) == [(0, 0.0), (1, 1.0), (3, 3.0)]
    assert any("bad checksum of the record at offset" in m and "tfevents" in m for m in said)
    run = expman.open_run(made)
    assert any("bad checksum" in m["msg"] for m in run.messages if m.get("level") == "warning")


@pytest.mark.parametrize("case, kept, says", [
    ("tb_negative_step", [(0, 0.0), (2, 2.0)], "has step -5"),
    ("tb_empty_tag", [(0, 0.5), (1, 1.5)], "tag is empty"),
    ("tb_long_image_tag", [(0, 0.5), (1, 1.5)], "skipped")])
def test_one_bad_value_is_skipped_and_the_rest_imported(tmp_path, case, kept, says):
    (made,), said = import_one(tmp_path, runfiles.TB_CORPUS[case]())
    assert loss(made) == kept
    assert any(says in m for m in said), said


def test_a_fifo_named_like_an_event_file_never_hangs_the_import(tmp_path):
    logdir = tmp_path / "tb"
    (logdir / "a").mkdir(parents=True)
    (logdir / "a" / "events.out.tfevents.1.h").write_bytes(runfiles.tb_good())
    runfiles.fifo(logdir / "a" / "events.out.tfevents.2.h")
    with pytest.warns(RuntimeWarning, match="not a regular file"):
        (made,) = tbio.import_tensorboard(logdir, tmp_path / "runs", "x")
    assert loss(made) == [(i, i / 2) for i in range(4)]
