"""The public Experiment calls the surfaces use instead of private ones (issue 19.5):
``log_text`` (TensorBoard's add_text, wandb captions, the TensorBoard import) and
``close(status, exit=...)`` (``wandb.finish(exit_code=...)``)."""

from __future__ import annotations

import pytest

import expman
from expman.errors import ExpmanTypeError, ExpmanValueError, RunClosedError


def test_log_text_keeps_tag_step_and_an_imported_time(make_run):
    exp = make_run("texts", "r")
    exp.log_text("notes", "before any step")                 # step None: 0 before any metric
    exp.log_metrics({"loss": 1.0}, step=7)
    exp.log_text("notes", "at the current step")             # step None: the last step
    exp.log_text("imported", 42, 3, wall_time=1_500_000_000.5)
    for bad, err in (({"tag": 1}, ExpmanTypeError), ({"step": -1}, ExpmanValueError),
                     ({"wall_time": float("nan")}, ExpmanValueError),
                     ({"wall_time": "now"}, ExpmanValueError)):
        kwargs = {"tag": "t", "text": "x", **bad}
        with pytest.raises(err):
            exp.log_text(**kwargs)
    exp.close()
    with pytest.raises(RunClosedError):
        exp.log_text("late", "after close")
    run = expman.open_run(exp.run_dir)
    got = [(m["tag"], m["msg"], m["step"]) for m in run.messages if "tag" in m]
    assert got == [("notes", "before any step", 0), ("notes", "at the current step", 7),
                   ("imported", "42", 3)]
    assert [m["time"] for m in run.messages if m.get("tag") == "imported"] == [1_500_000_000.5]
    assert all(m["level"] == "info" for m in run.messages)


@pytest.mark.parametrize("status, exit, meta_exit", [
    ("FAILED", 2, {"reason": "exit", "code": 2}),
    ("FAILED", None, {"reason": "close(status='FAILED')"}),
    ("FINISHED", 0, None),
    ("FINISHED", None, None),
])
def test_close_records_an_exit_code(make_run, status, exit, meta_exit):
    exp = make_run("closing")
    exp.close(status, exit=exit)
    run = expman.open_run(exp.run_dir)
    assert run.status == status and run.meta["exit"] == meta_exit


def test_close_refuses_a_contradictory_exit(make_run):
    exp = make_run("closing")
    with pytest.raises(ExpmanValueError, match="non-zero exit"):
        exp.close("FINISHED", exit=1)
    with pytest.raises(ExpmanTypeError, match="exit must be an int"):
        exp.close("FAILED", exit=True)
    assert exp.status == "RUNNING"                 # nothing was closed by a refused call
    exp.close()
