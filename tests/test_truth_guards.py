"""Issue 14.15 (write side) and 14.5: a second init() warns, too many metric
names warn once with the count, and Experiment/init honour $EXPMAN_DIR."""

from __future__ import annotations

import warnings
from pathlib import Path

import orjson
import pytest

import expman
from expman import experiment
from expman.layout import RUN_FILE


def test_a_second_init_warns_that_it_finishes_the_previous_run(base: Path) -> None:
    first = expman.init("exp", "one", base_dir=base, capture_env=False, handle_signals=False)
    try:
        with pytest.warns(RuntimeWarning, match=r"finished the previous run exp/one"):
            second = expman.init("exp", "two", base_dir=base, capture_env=False,
                                 handle_signals=False)
        assert first.status == "FINISHED" and second.status == "RUNNING"
    finally:
        expman.close()
    assert orjson.loads((base / "exp" / "one" / RUN_FILE).read_bytes())["status"] == "FINISHED"


def test_init_after_close_does_not_warn(base: Path) -> None:
    expman.init("exp", "one", base_dir=base, capture_env=False, handle_signals=False)
    expman.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expman.init("exp", "two", base_dir=base, capture_env=False, handle_signals=False)
    expman.close()


def test_too_many_metric_names_warn_once_with_the_count(make_run, monkeypatch) -> None:
    monkeypatch.setattr(experiment, "MANY_METRIC_NAMES", 300)
    exp = make_run()
    for step in range(400):
        exp.log_metrics({f"loss_{step}": 1.0}, step=step)
    with pytest.warns(RuntimeWarning, match=r"has 400 distinct metric names") as caught:
        exp.info("epoch done")
        exp.info("again")                   # once only
        exp.close()
    assert len(caught) == 1
    assert "f'loss_{step}'" in str(caught[0].message)


def test_the_name_count_warning_also_comes_at_close(make_run, monkeypatch) -> None:
    monkeypatch.setattr(experiment, "MANY_METRIC_NAMES", 10)
    exp = make_run()
    exp.log_metrics({f"m{i}": 0.0 for i in range(11)})
    with pytest.warns(RuntimeWarning, match=r"has 11 distinct metric names"):
        exp.close()


def test_few_names_do_not_warn(make_run) -> None:
    exp = make_run()
    exp.log_metrics({f"m{i}": 0.0 for i in range(50)})
    exp.info("fine")
    exp.close()                             # filterwarnings=error: any warning fails


def test_experiment_and_init_use_expman_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXPMAN_DIR", str(tmp_path / "from_env"))
    with expman.Experiment("exp", "a", capture_env=False) as exp:
        pass
    assert exp.run_dir == tmp_path / "from_env" / "exp" / "a"
    run = expman.init("exp", "b", capture_env=False, handle_signals=False)
    expman.close()
    assert run.run_dir == tmp_path / "from_env" / "exp" / "b"
    explicit = expman.Experiment("exp", "c", base_dir=tmp_path / "explicit", capture_env=False)
    explicit.close()
    assert explicit.run_dir == tmp_path / "explicit" / "exp" / "c"
    monkeypatch.delenv("EXPMAN_DIR")
    with expman.Experiment("exp", "d", capture_env=False) as exp:
        pass
    assert exp.run_dir == tmp_path / "experiments" / "exp" / "d"
