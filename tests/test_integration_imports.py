"""The integrations are leaves: ``import expman`` loads no framework, and the shared
helpers (framework params, log splitting) work without one."""

from __future__ import annotations

import dataclasses
import enum
import json
from argparse import Namespace
from pathlib import Path

import pytest

from conftest import run_python
from conftest import need
from expman.errors import ExpmanTypeError
from expman.integrations._metrics import split_logs
from expman.params import framework_params
from expman.readmodel import flatten_params

FRAMEWORKS = ("torch", "lightning", "pytorch_lightning", "transformers", "keras",
              "tensorflow", "accelerate", "omegaconf")


def test_import_expman_loads_no_framework(tmp_path):
    proc = run_python(f"""
        import json, sys
        import expman, expman.integrations
        from expman.integrations import _metrics, _run
        with expman.Experiment("x", base_dir={str(tmp_path)!r}, capture_env=False) as exp:
            exp.log_metrics({{"a": 1.0}}, step=0)
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
    """, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert loaded.isdisjoint(FRAMEWORKS), loaded & set(FRAMEWORKS)


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Optim:
    lr: float = 0.1
    betas: tuple = (0.9, 0.99)


def test_framework_params_keep_nesting_and_name_odd_values():
    def schedule():
        raise AssertionError("a callable param is named, never called")

    params = framework_params({
        "optim": Optim(), "ns": Namespace(depth=2, inner={"k": None}), "path": Path("/d"),
        "color": Color.RED, "big": 2**70, "nan": float("nan"), "fn": schedule, "cls": dict,
        "layers": [{"w": 1}, {"w": 2}], "plain": [1, "a"], "empty": [], "tags": {"b", "a"},
        3: "int key"})
    assert params == {
        "optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "ns": {"depth": 2, "inner": {"k": None}},
        "path": "/d", "color": "red", "big": str(2**70), "nan": "NaN", "fn": "schedule",
        "cls": "dict", "layers": [{"w": 1}, {"w": 2}], "plain": [1, "a"], "empty": [],
        "tags": ["a", "b"], "3": "int key"}
    # the one flattening rule (expman.readmodel) names them for tables and the lake
    flat = flatten_params(params)
    assert flat["optim.lr"] == 0.1 and flat["ns.inner.k"] is None
    assert flat["optim.betas"] == "[0.9,0.99]" and flat["layers"] == '[{"w":1},{"w":2}]'
    assert framework_params(None) == {}


def test_framework_params_odd_objects_become_text():
    class Thing:
        def __str__(self) -> str:
            return "<thing>"

    assert framework_params({"t": Thing()}) == {"t": "<thing>"}
    with pytest.raises(ExpmanTypeError, match="got list"):
        framework_params([1, 2])


def test_framework_params_omegaconf():
    omegaconf = need("omegaconf")
    cfg = omegaconf.OmegaConf.create({"a": {"b": 2, "c": "${a.b}"}, "l": [1, {"x": 3}]})
    assert framework_params(cfg) == {"a": {"b": 2, "c": 2}, "l": [1, {"x": 3}]}


def test_split_logs():
    np = need("numpy")
    numbers, rest = split_logs({"loss": 0.5, "n": 3, "ok": True, "np": np.float32(0.25),
                                "arr": np.zeros(2), "name": "cosine", "none": None})
    assert numbers == {"loss": 0.5, "n": 3.0, "ok": 1.0, "np": 0.25}
    assert set(rest) == {"arr", "name", "none"}
