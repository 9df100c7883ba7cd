"""Issue 14.11: a run failed by an error expman raised points at the user's line,
and run.json keeps the formatted traceback, bounded in size."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

import expman
from expman import lifecycle
from expman.layout import RUN_FILE

HERE = Path(__file__).resolve()


def exit_of(run_dir: Path) -> dict:
    meta = orjson.loads((run_dir / RUN_FILE).read_bytes())
    assert meta["status"] == "FAILED"
    return meta["exit"]


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(HERE.read_text().splitlines(), 1) if text in line)


def test_an_error_raised_inside_expman_points_at_the_callers_line(base: Path) -> None:
    with pytest.raises(TypeError):
        with expman.Experiment("exp", "p", base_dir=base, capture_env=False) as exp:
            exp.log_params({"model": {"act": object()}})   # the line that called expman
    info = exit_of(exp.run_dir)
    assert info["location"] == f"{HERE}:{line_of('# the line that called expman')}"
    assert "/expman/params.py:" in info["raised_at"].replace("\\", "/")
    assert "ExpmanTypeError" in info["traceback"] and "params.py" in info["traceback"]


def test_an_error_from_the_compiled_core_points_at_the_callers_line(base: Path) -> None:
    with pytest.raises(TypeError):
        with expman.Experiment("exp", "c", base_dir=base, capture_env=False) as exp:
            exp.log_metrics({"loss": "high"})             # a str is not a number
    info = exit_of(exp.run_dir)
    assert info["location"] == f"{HERE}:{line_of('# a str is not a number')}"


def test_a_user_error_keeps_its_own_innermost_line(base: Path) -> None:
    def inner() -> None:
        raise ValueError("bad batch")                      # innermost user frame

    with pytest.raises(ValueError):
        with expman.Experiment("exp", "u", base_dir=base, capture_env=False):
            inner()
    info = exit_of(base / "exp" / "u")
    assert info["location"] == f"{HERE}:{line_of('# innermost user frame')}"
    assert "raised_at" not in info
    assert info["traceback"].rstrip().endswith("ValueError: bad batch")


def test_the_traceback_and_message_are_bounded(base: Path) -> None:
    def deep(n: int) -> None:
        if n == 0:
            raise RuntimeError("x" * 100_000)
        deep(n - 1)

    limit = sys.getrecursionlimit()
    with pytest.raises(RuntimeError):
        with expman.Experiment("exp", "deep", base_dir=base, capture_env=False):
            deep(min(limit - 100, 500))
    info = exit_of(base / "exp" / "deep")
    assert len(info["traceback"]) <= lifecycle.MAX_TRACEBACK
    assert len(info["message"]) <= lifecycle.MAX_MESSAGE
    assert "characters cut" in info["traceback"]
    assert info["traceback"].rstrip().endswith("x" * 50)    # the tail (the message) is kept
