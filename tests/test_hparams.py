"""expman.hparams: the listing's rows as columns for the hyperparameter views
(flattened params, a metric's last/min/max, the names to choose from)."""

from __future__ import annotations

from pathlib import Path

import pytest

import expman
from expman.hparams import hparam_table, metric_summaries

ROWS = [
    {"id": "e/a", "params": {"lr": 0.1, "optim": {"name": "adam"}, "tags": [1, 2], "fixed": 3},
     "last_metrics": {"loss": 0.5, "acc": 0.9}},
    {"id": "e/b", "params": {"lr": 0.01, "optim": {"name": "sgd"}, "fixed": 3},
     "last_metrics": {"loss": 0.7}},
    {"id": "e/c", "params": {"fixed": 3}, "last_metrics": {}},
]


def test_columns_default_to_the_params_that_vary() -> None:
    got = hparam_table(ROWS, "loss")
    assert got["ids"] == ["e/a", "e/b", "e/c"] and got["total"] == 3 and got["count"] == 3
    assert got["params"] == {"lr": [0.1, 0.01, None], "optim.name": ["adam", "sgd", None]}
    assert got["values"] == [0.5, 0.7, None]
    assert got["param_names"] == [["fixed", 3], ["lr", 2], ["optim.name", 2], ["tags", 1]]
    assert got["metric_names"] == [["loss", 2], ["acc", 1]]


def test_chosen_params_paging_and_non_scalars() -> None:
    got = hparam_table(ROWS, "acc", params=["tags", "fixed"], offset=0, limit=2)
    assert got["params"] == {"tags": ["[1,2]", None], "fixed": [3, 3]}
    assert got["values"] == [0.9, None] and got["count"] == 2 and got["total"] == 3
    assert hparam_table(ROWS)["values"] == []           # no metric asked


def test_min_and_max_come_from_the_runs_summary(tmp_path: Path) -> None:
    with expman.Experiment("e", "r", base_dir=tmp_path, system_metrics=False) as exp:
        for step, v in enumerate([3.0, -1.0, float("nan"), 7.0, 2.0]):
            exp.log_metrics({"loss": v}, step=step)
    run = tmp_path / "e" / "r"
    rows = [{"id": "e/r", "params": {}, "last_metrics": {"loss": 2.0}}]
    assert metric_summaries(run)["loss"].max == 7.0
    assert hparam_table(rows, "loss", "min", run_dir=lambda r: run)["values"] == [-1.0]
    assert hparam_table(rows, "loss", "max", run_dir=lambda r: run)["values"] == [7.0]
    assert hparam_table(rows, "nope", "max", run_dir=lambda r: run)["values"] == [None]
    assert hparam_table(rows, "loss", "max", run_dir=lambda r: None)["values"] == [None]
    assert metric_summaries(tmp_path / "missing") == {}


def test_bad_summary_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="summary='mean'"):
        hparam_table(ROWS, "loss", "mean")
    with pytest.raises(ValueError, match="needs run_dir"):
        hparam_table(ROWS, "loss", "min")
