"""ExpmanLogger in real Lightning fits on CPU, checked against Lightning's own CSVLogger."""

from __future__ import annotations

import csv
import dataclasses
import pickle
import signal
from argparse import Namespace
from pathlib import Path

import pytest

from conftest import nan_alerts_expected, run_python
from conftest import need

need("torch")
pl = need("lightning.pytorch")
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import expman  # noqa: E402
from expman.integrations.lightning import ExpmanLogger  # noqa: E402
from expman.watch import read_alerts  # noqa: E402

pytestmark = [
    # Lightning's advice for a tiny CPU fit (num_workers, small log interval, no GPU)
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
    # Lightning 2.6 against torch 2.13's pytree: Lightning's own deprecation, not ours
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated:FutureWarning"),
]


class TinyRegressor(pl.LightningModule):
    """y = Xw + noise, one Linear layer; fails at ``fail_at_step`` when asked."""

    def __init__(self, lr: float = 0.05, optim: dict | None = None, fail_at_step: int = -1,
                 interrupt_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at_step:
            raise RuntimeError("boom at step %d" % self.global_step)
        if self.global_step == self.hparams.interrupt_at_step:
            raise KeyboardInterrupt
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def loader(n: int = 64, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def trainer(loggers, tmp_path: Path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 2)
    return pl.Trainer(logger=loggers, default_root_dir=tmp_path, accelerator="cpu",
                      log_every_n_steps=1, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def csv_points(path: Path) -> list[tuple[str, int, float]]:
    points = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            points += [(k, step, float(v)) for k, v in row.items() if v != ""]
    return sorted(points)


def expman_points(run: expman.Run) -> list[tuple[str, int, float]]:
    points = []
    for key, series in run.metrics.items():
        points += [(key, int(s), float(v)) for s, v in zip(series.steps, series.values)]
    return sorted(points)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One 2-epoch fit with ExpmanLogger(log_model=True) and CSVLogger, then a validate."""
    tmp = tmp_path_factory.mktemp("fit")
    logger = ExpmanLogger("tiny", save_dir=tmp / "experiments", log_model=True, capture_env=False,
                          system_metrics=False)    # compared point by point with CSVLogger
    csv_logger = CSVLogger(tmp / "csv", name="tiny")
    ckpt = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    model = TinyRegressor(optim={"name": "sgd", "nesterov": False, "betas": [0.9, 0.99]})
    t = trainer([logger, csv_logger], tmp, callbacks=[ckpt], max_epochs=3)
    t.fit(model, loader(), loader(32, seed=1))
    after_fit = expman.open_run(logger.log_dir)
    csv_after_fit = csv_points(Path(csv_logger.log_dir) / "metrics.csv")
    t.validate(model, loader(32, seed=1))
    return logger, csv_logger, ckpt, after_fit, csv_after_fit


def test_fit_values_equal_csvlogger(fitted):
    logger, csv_logger, _, run, csv_after_fit = fitted
    assert run.status == "FINISHED"
    assert Path(run.path) == Path(logger.log_dir)
    assert run.experiment == "tiny" and run.run_name == logger.version
    points = expman_points(run)
    # 3 epochs x 4 batches, every step logged; epoch means; validation each epoch
    assert {k for k, _, _ in points} == {"train_loss_step", "train_loss_epoch", "val_loss", "epoch"}
    assert len([p for p in points if p[0] == "train_loss_step"]) == 12
    assert points == csv_after_fit
    assert not any(p[0] == "epoch" and p[2] not in (0.0, 1.0, 2.0) for p in points)


def test_hyperparams_stored_nested_as_saved(fitted):
    run = fitted[3]
    assert run.params == {"lr": 0.05, "fail_at_step": -1, "interrupt_at_step": -1,
                          "optim": {"name": "sgd", "nesterov": False, "betas": [0.9, 0.99]}}


def test_checkpoints_in_run_folder_and_artifacts(fitted):
    logger, _, ckpt, run, _ = fitted
    assert Path(ckpt.dirpath) == Path(logger.log_dir) / "checkpoints"
    last = Path(ckpt.last_model_path)
    top = [Path(p) for p in ckpt.best_k_models]
    assert len(top) == 2 and all(p.parent == last.parent == Path(ckpt.dirpath) for p in top)
    records = [e for e in run.events if e.get("kind") == "artifact"]      # every version
    names = [e["name"] for e in records]
    # last.ckpt, rewritten at each of the 3 epochs, is stored once: its final version
    assert names.count("checkpoints/last.ckpt") == 1
    stored = {e["name"]: e for e in records}
    assert (run.path / stored["checkpoints/last.ckpt"]["path"]).read_bytes() == last.read_bytes()
    for path in top:                            # each top-k file once, as Lightning wrote it
        assert names.count(f"checkpoints/{path.name}") == 1
        assert (run.path / stored[f"checkpoints/{path.name}"]["path"]).read_bytes() \
            == path.read_bytes()
    # one message per change of the best checkpoint, not one per hook call (two per epoch)
    best = [m["msg"] for m in run.messages if m["msg"].startswith("best checkpoint: ")]
    assert 1 <= len(best) <= 3 and len(best) == len(set(best))
    assert best[-1].startswith(f"best checkpoint: {Path(ckpt.best_model_path).name} (val_loss=")


def test_validate_after_fit_reopens_the_same_run(fitted):
    logger, csv_logger, _, after_fit, _ = fitted
    run = expman.open_run(logger.log_dir)
    assert run.status == "FINISHED"
    assert len(run.meta["resumed"]) == 1
    assert len(run.metrics["val_loss"]) == len(after_fit.metrics["val_loss"]) + 1
    assert expman_points(run) == csv_points(Path(csv_logger.log_dir) / "metrics.csv")


def test_failed_fit_records_the_exception(tmp_path):
    logger = ExpmanLogger("tiny", save_dir=tmp_path / "experiments", capture_env=False)
    with pytest.raises(RuntimeError, match="boom at step 3"):
        trainer(logger, tmp_path).fit(TinyRegressor(fail_at_step=3), loader())
    run = expman.open_run(logger.log_dir)
    assert run.status == "FAILED"
    assert run.meta["exit"]["type"] == "RuntimeError"
    assert "boom at step 3" in run.meta["exit"]["message"]
    assert len(run.metrics["train_loss_step"]) == 3


def test_ctrl_c_during_fit_is_failed_with_keyboardinterrupt(tmp_path):
    """Lightning catches Ctrl-C, finalizes its loggers with "failed", then exits 1."""
    logger = ExpmanLogger("tiny", save_dir=tmp_path / "experiments", capture_env=False)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            trainer(logger, tmp_path).fit(TinyRegressor(interrupt_at_step=2), loader())
    finally:
        signal.signal(signal.SIGINT, sigint)      # Lightning ignores further Ctrl-C
    run = expman.open_run(logger.log_dir)
    assert run.status == "FAILED" and run.meta["exit"]["type"] == "KeyboardInterrupt"
    assert len(run.metrics["train_loss_step"]) == 2


def test_finalize_status_mapping(make_run, base):
    for status, expected in [("success", "FINISHED"), ("finished", "FINISHED"),
                             ("failed", "FAILED")]:
        logger = ExpmanLogger("map", status, save_dir=base, capture_env=False)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize(status)
        assert expman.open_run(logger.log_dir).status == expected
    own = make_run("mine")
    ExpmanLogger(experiment=own).finalize("success")
    assert own.status == "RUNNING"           # a run passed in is the caller's to close


def test_run_passed_in_is_used_and_left_open(make_run, tmp_path):
    exp = make_run("mine")
    logger = ExpmanLogger(experiment=exp)
    assert (logger.name, logger.version) == ("mine", exp.run_name)
    assert Path(logger.log_dir) == exp.run_dir
    trainer(logger, tmp_path, max_epochs=1, limit_train_batches=2,
            limit_val_batches=0).fit(TinyRegressor(), loader())
    assert exp.status == "RUNNING"
    exp.close()
    assert len(expman.open_run(exp.run_dir).metrics["train_loss_step"]) == 2


def test_other_ranks_log_nothing(monkeypatch, base):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = ExpmanLogger("ranks", "r1", save_dir=base, log_model=True)
    assert type(logger.experiment).__name__ == "_DummyExperiment"
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_hyperparams({"lr": 0.1})
    logger.after_save_checkpoint(ModelCheckpoint())
    logger.finalize("success")
    assert logger.version == "r1"
    assert list(base.iterdir()) == []        # no run folder was even created


def test_log_hyperparams_namespace_dataclass_omegaconf(base):
    omegaconf = need("omegaconf")

    @dataclasses.dataclass
    class Data:
        root: Path = Path("/data")
        sizes: tuple = (1, 2)

    cfg = omegaconf.OmegaConf.create({"model": {"width": 8, "depth": "${model.width}"}})
    logger = ExpmanLogger("hp", "one", save_dir=base, capture_env=False)
    logger.log_hyperparams(Namespace(cfg=cfg, data=Data(), act=torch.nn.ReLU, seed=3,
                                     stages=[{"lr": 0.1}, {"lr": 0.01}]))
    logger.finalize("success")
    assert expman.open_run(logger.log_dir).params == {      # stored nested, as given
        "cfg": {"model": {"width": 8, "depth": 8}}, "data": {"root": "/data", "sizes": [1, 2]},
        "act": "ReLU", "seed": 3, "stages": [{"lr": 0.1}, {"lr": 0.01}]}


def test_pickles_until_the_run_is_opened(base):
    """Lightning's spawn launchers pickle the Trainer, loggers included."""
    logger = ExpmanLogger("pickled", "one", save_dir=base, capture_env=False)
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"loss": 1.0}, step=0)          # the copy opens the run itself
    copy.finalize("success")
    assert expman.open_run(copy.log_dir).status == "FINISHED"
    assert copy.experiment.status == "RUNNING"       # Lightning logging again reopens it
    with pytest.raises(expman.ExpmanTypeError, match="pickled/one is already open"):
        pickle.dumps(copy)
    copy.finalize("success")


def test_prefix_and_save_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path / "from_env"))
    logger = ExpmanLogger("pre", "one", prefix="train", capture_env=False)
    logger.log_metrics({"loss": 0.25}, step=4)
    logger.finalize("success")
    assert Path(logger.save_dir) == tmp_path / "from_env"
    series = expman.open_run(logger.log_dir).metrics["train-loss"]
    assert (list(series.steps), list(series.values)) == ([4], [0.25])


def test_works_with_pytorch_lightning_alone(tmp_path):
    need("pytorch_lightning")
    proc = run_python(f"""
        import sys, warnings
        sys.modules["lightning"] = None          # as if only pytorch_lightning were installed
        warnings.simplefilter("ignore")
        import torch, pytorch_lightning as pl
        from expman.integrations.lightning import ExpmanLogger
        assert issubclass(ExpmanLogger, pl.loggers.Logger)
        assert "lightning" not in {{m.split(".")[0] for m in sys.modules if sys.modules[m]}}

        class M(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)
            def training_step(self, batch, i):
                loss = self.layer(batch[0]).pow(2).mean()
                self.log("loss", loss)
                return loss
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)),
                                           batch_size=4)
        logger = ExpmanLogger("pl", "only", save_dir={str(tmp_path)!r}, capture_env=False)
        pl.Trainer(logger=logger, max_epochs=1, log_every_n_steps=1, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False).fit(M(), data)
        print(logger.log_dir)
    """, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = expman.open_run(proc.stdout.strip().splitlines()[-1])
    assert run.status == "FINISHED" and len(run.metrics["loss"]) == 2


class NanRegressor(TinyRegressor):
    """TinyRegressor whose loss turns NaN at ``nan_at_step`` (and stays NaN: the
    weights it updates become NaN)."""

    def __init__(self, nan_at_step: int) -> None:
        super().__init__()
        self.nan_at_step = nan_at_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.global_step == self.nan_at_step:
            loss = loss * float("nan")
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


def test_watch_records_an_alert_for_a_nan_loss(tmp_path):
    """``ExpmanLogger(watch=...)`` starts the run's watchdogs: a loss turned NaN in a
    real fit is an ``alert`` in the run, at the point where each series turned NaN."""
    with pytest.raises(expman.ExpmanValueError, match="bogus"):
        ExpmanLogger("lit", save_dir=tmp_path, watch=["bogus"])      # before any folder
    assert not (tmp_path / "lit").exists()
    logger = ExpmanLogger("lit", "nan", save_dir=tmp_path, watch=["nan"], capture_env=False,
                          system_metrics=False)
    trainer([logger], tmp_path, max_epochs=2).fit(NanRegressor(nan_at_step=3), loader(),
                                                  loader(seed=1))
    run = Path(logger.log_dir)
    alerts = read_alerts(run)
    expected = nan_alerts_expected(run)
    assert {("train_loss_step", 3), ("train_loss_epoch", 3), ("val_loss", 3)} <= expected
    assert {(a.metric, a.step) for a in alerts} == expected
    assert all(a.rule == "nan" and a.rank == 0 for a in alerts)
    assert expman.open_run(run).status == "FINISHED"


def test_watch_on_a_run_passed_in(make_run, tmp_path):
    exp = make_run("lit", system_metrics=False)
    logger = ExpmanLogger(experiment=exp, watch=["nan"])
    trainer([logger], tmp_path, max_epochs=1).fit(NanRegressor(nan_at_step=1), loader())
    exp.close()
    assert ("train_loss_step", 1) in {(a.metric, a.step) for a in read_alerts(exp.run_dir)}
