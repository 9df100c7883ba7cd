"""ExpmanCallback in a real Hugging Face Trainer on CPU: a tiny BERT built from a config."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import nan_alerts_expected, need

os.environ["HF_HUB_OFFLINE"] = "1"          # nothing is downloaded: the model is built here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
need("torch")
need("accelerate")
transformers = need("transformers")
import torch  # noqa: E402

import expman  # noqa: E402
from expman.integrations.transformers import ExpmanCallback  # noqa: E402
from expman.readmodel import flatten_params  # noqa: E402
from expman.watch import read_alerts  # noqa: E402


class TinyDataset(torch.utils.data.Dataset):
    """Random token ids, labels = whether token 1 occurs: learnable, tokenizer-free."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 16, (n, 8), generator=g)
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.labels[i]}


def tiny_trainer(out: Path, callback: ExpmanCallback, **args) -> "transformers.Trainer":
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    defaults = dict(output_dir=str(out), max_steps=20, per_device_train_batch_size=8,
                    per_device_eval_batch_size=16, learning_rate=1e-3, logging_steps=5,
                    eval_strategy="steps", eval_steps=10, save_strategy="steps", save_steps=10,
                    report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    defaults.update(args)
    return transformers.Trainer(model=model, args=transformers.TrainingArguments(**defaults),
                                train_dataset=TinyDataset(160, 0), eval_dataset=TinyDataset(32, 1),
                                callbacks=[callback])


def history_points(log_history: list[dict]) -> list[tuple[str, int, float]]:
    return sorted((k, entry["step"], float(v)) for entry in log_history
                  for k, v in entry.items() if k != "step")


def run_points(run: expman.Run) -> list[tuple[str, int, float]]:
    return sorted((k, int(s), float(v)) for k, series in run.metrics.items()
                  for s, v in zip(series.steps, series.values))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    callback = ExpmanCallback("bert-tiny", base_dir=tmp / "experiments", log_checkpoints=True,
                              capture_env=False, system_metrics=False)   # compared point by point
    trainer = tiny_trainer(tmp / "out", callback)
    trainer.train()
    assert callback.experiment.status == "FINISHED"      # reading it does not reopen the run
    return trainer, callback, expman.open_run(callback.experiment.run_dir)


def test_values_equal_log_history(trained):
    trainer, _, run = trained
    assert run.status == "FINISHED"
    history = trainer.state.log_history
    assert sum("eval_loss" in h for h in history) == 2 and sum("loss" in h for h in history) == 4
    assert run_points(run) == history_points(history)


def test_training_arguments_and_model_config_are_params(trained):
    trainer, _, run = trained
    p = run.params                                     # stored nested, as given
    assert p["args"]["learning_rate"] == 1e-3 and p["args"]["max_steps"] == 20
    assert p["args"]["report_to"] == [] and p["args"]["output_dir"] == trainer.args.output_dir
    assert p["model"]["hidden_size"] == 32 and p["model"]["num_hidden_layers"] == 2
    assert p["model"]["num_parameters"] == trainer.model.num_parameters()
    assert p["model"]["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}     # int keys as text
    flat = flatten_params(p)                           # the names listings and the lake use
    assert flat["args.learning_rate"] == 1e-3 and flat["model.id2label.0"] == "LABEL_0"
    assert flat["args.report_to"] == "[]"


def test_checkpoints_stored_as_artifacts(trained):
    trainer, _, run = trained
    names = {a["name"] for a in run.artifacts}
    for step in (10, 20):
        folder = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert files
        for f in files:
            rel = f"checkpoints/{f.relative_to(folder.parent).as_posix()}"
            assert rel in names
            assert (run.path / "artifacts" / rel).read_bytes() == f.read_bytes()


def test_non_numeric_logs_become_messages(make_run):
    exp = make_run("hf")
    cb = ExpmanCallback(experiment=exp)
    state = SimpleNamespace(is_world_process_zero=True, global_step=7)
    cb.on_log(SimpleNamespace(run_name=None, output_dir="x"), state, None,
              logs={"loss": 0.5, "lr_schedule": "cosine", "per_class": [0.1, 0.2],
                    "tensor": torch.tensor(2.5), "none": None})
    cb.on_train_end(None, state, None)
    assert exp.status == "RUNNING"           # a run passed in stays open
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert {k: list(s.values) for k, s in run.metrics.items()} == {"loss": [0.5], "tensor": [2.5]}
    assert [m["msg"] for m in run.messages] == [
        "lr_schedule = cosine (step 7)", "per_class = [0.1, 0.2] (step 7)", "none = None (step 7)"]


def test_other_processes_do_nothing(base):
    cb = ExpmanCallback("hf", "r1", base_dir=base, log_checkpoints=True)
    args = SimpleNamespace(run_name=None, output_dir=str(base), to_dict=dict)
    state = SimpleNamespace(is_world_process_zero=False, global_step=1)
    cb.on_train_begin(args, state, None, model=None)
    cb.on_log(args, state, None, logs={"loss": 1.0})
    cb.on_save(args, state, None)
    cb.on_train_end(args, state, None)
    assert cb.experiment is None and list(base.iterdir()) == []


def test_run_name_from_training_arguments_and_reopen(base):
    cb = ExpmanCallback("hf", base_dir=base, capture_env=False)
    args = SimpleNamespace(run_name="sweep-3", output_dir="out", to_dict=lambda: {"seed": 1})
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    for step in (0, 1):                       # two train() calls: the second resumes the run
        state.global_step = step
        cb.on_train_begin(args, state, None)
        cb.on_log(args, state, None, logs={"loss": float(step)})
        cb.on_train_end(args, state, None)
    run = expman.open_run(base / "hf" / "sweep-3")
    assert run.status == "FINISHED" and len(run.meta["resumed"]) == 1
    assert list(run.metrics["loss"].values) == [0.0, 1.0]
    assert run.params == {"args": {"seed": 1}}


def test_evaluate_after_train_reopens_and_finishes_the_run(tmp_path):
    """train(); evaluate(); open_run() in the same script: the run is FINISHED after each
    call and holds every eval point (issue 22: it read RUNNING and missed the last one)."""
    callback = ExpmanCallback("bert-tiny", base_dir=tmp_path / "experiments",
                              capture_env=False, system_metrics=False)
    trainer = tiny_trainer(tmp_path / "out", callback, save_strategy="no")
    trainer.train()
    run = expman.open_run(callback.experiment.run_dir)
    assert run.status == "FINISHED"
    assert run_points(run) == history_points(trainer.state.log_history)
    metrics = trainer.evaluate()
    run = expman.open_run(callback.experiment.run_dir)
    assert run.status == "FINISHED" and len(run.meta["resumed"]) == 1
    assert run.metrics["eval_loss"].steps[-1] == 20
    assert float(run.metrics["eval_loss"].values[-1]) == metrics["eval_loss"]
    assert run_points(run) == history_points(trainer.state.log_history)
    trainer.evaluate()                       # again: resumed a second time, finished again
    run = expman.open_run(callback.experiment.run_dir)
    assert run.status == "FINISHED" and len(run.meta["resumed"]) == 2
    assert len(run.metrics["eval_loss"].values) == 4


def test_watch_records_an_alert_for_a_nan_loss(tmp_path):
    """``ExpmanCallback(watch=...)`` starts the run's watchdogs: a loss made NaN at
    step 6 of a real Trainer is an ``alert`` at each series' first NaN point."""
    with pytest.raises(expman.ExpmanValueError, match="bogus"):
        ExpmanCallback("hf", base_dir=tmp_path, watch=["nan", "bogus"])

    class NanLossTrainer(transformers.Trainer):
        def compute_loss(self, *args, **kwargs):
            out = super().compute_loss(*args, **kwargs)
            if self.state.global_step == 6:      # the 7th step's loss, and then the weights
                return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) \
                    else out * float("nan")
            return out

    cb = ExpmanCallback("hf", "nan", base_dir=tmp_path / "runs", watch=["nan"],
                        capture_env=False, system_metrics=False)
    plain = tiny_trainer(tmp_path / "out", cb, logging_nan_inf_filter=False, save_strategy="no")
    trainer = NanLossTrainer(model=plain.model, args=plain.args,
                             train_dataset=plain.train_dataset, eval_dataset=plain.eval_dataset,
                             callbacks=[cb])
    trainer.train()
    run = tmp_path / "runs" / "hf" / "nan"
    expected = nan_alerts_expected(run)
    assert {("loss", 10), ("eval_loss", 10)} <= expected
    alerts = read_alerts(run)
    assert {(a.metric, a.step) for a in alerts} == expected
    assert all(a.rule == "nan" for a in alerts)
    assert expman.open_run(run).status == "FINISHED"
