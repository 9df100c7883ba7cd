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
