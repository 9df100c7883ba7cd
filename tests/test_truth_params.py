"""Issue 14.14: configs as users have them are accepted at any depth, and a
dotted key never merges with a nested one."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from conftest import need

from expman.errors import ExpmanTypeError, ExpmanValueError
from expman.layout import PARAMS_FILE


def stored(exp) -> dict:
    return orjson.loads((exp.run_dir / PARAMS_FILE).read_bytes())


class FrozenMapping(Mapping):
    """A read-only Mapping that is not a dict (as Hydra/ml_collections configs are)."""

    def __init__(self, **items):
        self._items = items

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)


def test_mappings_dataclasses_and_namespaces_at_any_depth(make_run) -> None:
    exp = make_run()
    exp.log_params(FrozenMapping(model=FrozenMapping(depth=4)))
    exp.log_params(Optim())                                   # a dataclass at the top level
    exp.log_params(argparse.Namespace(epochs=3, sched=argparse.Namespace(kind="cos")))
    exp.log_params({"nested": [FrozenMapping(a=1), Optim(lr=0.5), argparse.Namespace(b=2)]})
    exp.close()
    assert stored(exp) == {
        "model": {"depth": 4}, "lr": 1e-3, "betas": [0.9, 0.999], "epochs": 3,
        "sched": {"kind": "cos"}, "nested": [{"a": 1}, {"lr": 0.5, "betas": [0.9, 0.999]}, {"b": 2}],
    }


def test_omegaconf_configs_go_through_to_container(make_run) -> None:
    omegaconf = need("omegaconf")
    cfg = omegaconf.OmegaConf.create(
        {"optim": {"lr": 0.01, "warmup_lr": "${optim.lr}"}, "layers": [64, 32], "name": "run"})
    exp = make_run()
    exp.log_params(cfg)                                       # DictConfig at the top level
    exp.log_params({"hydra": {"cfg": cfg.optim, "list": cfg.layers}})    # and nested
    exp.close()
    assert stored(exp) == {
        "optim": {"lr": 0.01, "warmup_lr": 0.01}, "layers": [64, 32], "name": "run",
        "hydra": {"cfg": {"lr": 0.01, "warmup_lr": 0.01}, "list": [64, 32]},
    }


def test_torch_device_and_dtype_are_stored_as_strings(make_run) -> None:
    torch = need("torch")
    exp = make_run()
    exp.log_params({"device": torch.device("cpu"), "dtypes": [torch.float32, torch.bfloat16],
                    "cuda": torch.device("cuda", 1)})
    exp.close()
    assert stored(exp) == {"device": "cpu", "dtypes": ["torch.float32", "torch.bfloat16"],
                           "cuda": "cuda:1"}


def test_a_dotted_key_and_a_nested_one_stay_distinct(make_run) -> None:
    exp = make_run()
    exp.log_params({"optim": {"lr": 1, "wd": 0}})
    exp.log_params({"optim.lr": 5})
    exp.close()
    assert stored(exp) == {"optim": {"lr": 1, "wd": 0}, "optim.lr": 5}


def test_unusable_params_name_the_key(make_run, tmp_path: Path) -> None:
    exp = make_run()
    with pytest.raises(ExpmanTypeError, match=r"params\['model'\]\['act'\]: cannot store object"):
        exp.log_params(FrozenMapping(model=FrozenMapping(act=object())))
    with pytest.raises(ExpmanTypeError, match="expected a dict, a Mapping, a dataclass"):
        exp.log_params([("a", 1)])
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ExpmanValueError, match="levels deep"):
        exp.log_params(loop)
    exp.close()
    assert not (exp.run_dir / PARAMS_FILE).exists()


# ---- issue 19.2: one params rule across every entry point ------------------------------------

CONFIG = {"optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "sched": {"warmup": 10}},
          "seed": 3, "tags": ("a", "b"), "dropout": None, "amp": True}


def _via_log_params(base: Path, config: dict) -> Path:
    import expman
    with expman.Experiment("same", "log_params", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_params(config)
    return exp.run_dir


def _via_lightning(base: Path, config: dict) -> Path:
    from conftest import need
    need("lightning")
    from expman.integrations.lightning import ExpmanLogger
    logger = ExpmanLogger("same", "lightning", save_dir=base, capture_env=False,
                          system_metrics=False)
    logger.log_hyperparams(argparse.Namespace(**config))      # as save_hyperparameters() gives
    logger.finalize("success")
    return Path(logger.log_dir)


def _via_wandb(base: Path, config: dict) -> Path:
    from expman import wandb
    first = dict(list(config.items())[:2])
    run = wandb.init(project="same", name="wandb", dir=base, config=first)
    wandb.config.update({k: v for k, v in config.items() if k not in first})
    folder = Path(run.dir)
    wandb.finish()
    return folder


def _via_tensorboard(base: Path, config: dict) -> Path:
    from expman.tensorboard import SummaryWriter
    with SummaryWriter(base / "same" / "tensorboard", capture_env=False,
                       system_metrics=False) as writer:
        writer.add_hparams(config, {})
    return base / "same" / "tensorboard"


ENTRY_POINTS = [_via_log_params, _via_lightning, _via_wandb, _via_tensorboard]


def test_one_config_has_the_same_param_names_through_every_entry_point(tmp_path: Path) -> None:
    """log_params, the Lightning bridge, expman.wandb and the SummaryWriter drop-in store
    the same nested params.json, so listings, filters and the lake name them alike."""
    import expman
    from expman.readmodel import flatten_params
    base = tmp_path / "experiments"
    folders = {f.__name__: f(base, CONFIG) for f in ENTRY_POINTS}
    expected = {"optim": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.999],
                          "sched": {"warmup": 10}},
                "seed": 3, "tags": ["a", "b"], "dropout": None, "amp": True}
    for how, folder in folders.items():
        assert orjson.loads((folder / PARAMS_FILE).read_bytes()) == expected, how
    flat = flatten_params(expected)
    assert flat == {"amp": True, "dropout": None, "optim.betas": "[0.9,0.999]",
                    "optim.lr": 1e-3, "optim.name": "adamw", "optim.sched.warmup": 10,
                    "seed": 3, "tags": '["a","b"]'}
    rows = expman.runs(base)                  # one table: every run has the same columns
    assert len(rows) == len(ENTRY_POINTS)
    for row in rows.to_dict("records") if hasattr(rows, "to_dict") else rows:
        assert {k[len("params."):]: v for k, v in row.items() if k.startswith("params.")} == flat


def test_hugging_face_arguments_are_nested_under_args(tmp_path: Path) -> None:
    """The HF bridge stores TrainingArguments under ``args`` and the model config under
    ``model``, nested: the same names as logging ``{"args": args.to_dict()}`` by hand."""
    import os
    from types import SimpleNamespace

    from conftest import need
    os.environ["HF_HUB_OFFLINE"] = "1"
    need("torch")
    need("accelerate")
    transformers = need("transformers")
    from expman.integrations.transformers import ExpmanCallback
    from expman.readmodel import flatten_params
    base = tmp_path / "experiments"
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=8, max_position_embeddings=8, num_labels=2))
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-3,
                                          report_to=[], use_cpu=True, seed=3,
                                          adam_beta1=0.9, adam_beta2=0.999)
    cb = ExpmanCallback("same", "hf", base_dir=base, capture_env=False, system_metrics=False)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    cb.on_train_begin(args, state, None, model=model)
    cb.on_train_end(args, state, None)
    hf = flatten_params(orjson.loads((base / "same" / "hf" / PARAMS_FILE).read_bytes()))
    assert hf["args.learning_rate"] == 1e-3 and hf["args.report_to"] == "[]"
    assert hf["model.hidden_size"] == 8 and hf["model.id2label.0"] == "LABEL_0"
    assert not any("/" in k for k in hf)
    by_hand = {"args": args.to_dict()}
    for via in (_via_log_params, _via_lightning, _via_wandb):
        other = flatten_params(orjson.loads((via(tmp_path / via.__name__, by_hand)
                                             / PARAMS_FILE).read_bytes()))
        assert other == {k: v for k, v in hf.items() if k.startswith("args.")}, via.__name__


def test_list_params_never_break_runs_or_the_lake(tmp_path: Path) -> None:
    """AdamW's default betas (a list) once made runs() and export-lake raise
    ``TypeError: unhashable type: 'list'`` for the whole base dir."""
    from conftest import need

    import expman
    need("pyarrow")
    base = tmp_path / "experiments"
    for i, betas in enumerate(([0.9, 0.999], (0.8, 0.99))):
        with expman.Experiment("adamw", f"r{i}", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_params({"optim": {"betas": betas}, "layers": [{"w": 1}], "lr": 0.1})
            exp.log_metrics({"loss": 1.0}, step=0)
    table = expman.runs(base)
    records = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert sorted(r["params.optim.betas"] for r in records) == ["[0.8,0.99]", "[0.9,0.999]"]
    from expman.lake import export_lake
    result = export_lake(base, tmp_path / "lake")
    assert result["runs"] == 2 and not result["damaged"]
    import pyarrow.parquet as pq
    runs = pq.read_table(next((tmp_path / "lake").rglob("runs.parquet"))).to_pylist()
    assert sorted(r["params.optim.betas"] for r in runs) == ["[0.8,0.99]", "[0.9,0.999]"]
    assert {r["params.layers"] for r in runs} == {'[{"w":1}]'}


def test_the_tensorboard_export_names_params_by_the_one_rule(tmp_path: Path) -> None:
    """``export_tensorboard``'s hparams carry the read model's names and values: nested
    keys dotted, lists as JSON text, deep nesting included (tbio's own recursive
    flattening is gone)."""
    import expman
    from conftest import need
    need("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from expman.readmodel import flatten_params
    from expman.tbio import export_tensorboard
    deep: dict = {"leaf": 1}
    from expman.params import MAX_DEPTH
    for _ in range(MAX_DEPTH - 2):               # as deep as log_params takes (and readers read)
        deep = {"d": deep}
    params = {**CONFIG, "deep": deep}
    with expman.Experiment("tb", "r", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_params(params)
        exp.log_metrics({"loss": 1.0}, step=0)
    export_tensorboard(expman.open_run(exp.run_dir), tmp_path / "tb")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ssi = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    got = {k: getattr(v, v.WhichOneof("kind")) for k, v in ssi.hparams.items()}
    expected = {k: v for k, v in flatten_params(exp.params).items() if v is not None}
    assert got == expected
    assert got["optim.betas"] == "[0.9,0.999]" and got["deep." + "d." * (MAX_DEPTH - 2) + "leaf"] == 1
