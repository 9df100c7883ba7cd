"""kill -9 loop for runs that branch (issue 23): a child forks, rewinds or resumes at a
lower step over and over; the parent SIGKILLs it at a random moment. 200 trials.

Every trial must leave the old state or the new one: never a branch line without
its drained rows before it, never a branch row read as part of the branch before
(each row's value says which branch wrote it), never a fork without its parent
record or its params, and the run always readable (compiled reader and refreader agree).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import time
import warnings
from pathlib import Path

import pytest

import expman
from expman import refreader

from conftest import SLOW

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL")

TRIALS = 400 if SLOW else 200
BRANCH = 1_000_000          # a row's value is branch * BRANCH + step

def child_rewind(base: Path, run: str, ready) -> None:
    """Each rewind goes back below the last step logged: every branch cuts its history."""
    e = expman.Experiment("k", run, base_dir=base, system_metrics=False, capture_env=False,
                          flush_interval=0.01)
    for s in range(20):
        e.log_metrics({"x": float(s)}, step=s)
    e.flush()
    ready()
    k = 1
    while True:
        s0 = 5 + k % 7
        e.rewind(s0)
        for s in range(s0, s0 + 10):
            e.log_metrics({"x": float(k * BRANCH + s)}, step=s)
        k += 1


def child_resume(base: Path, run: str, ready) -> None:
    """A job restarted again and again from an earlier checkpoint."""
    e = expman.Experiment("k", run, base_dir=base, system_metrics=False, capture_env=False)
    for s in range(30):
        e.log_metrics({"x": float(s)}, step=s)
    e.close()
    ready()
    k = 1
    while True:
        e = expman.Experiment("k", run, base_dir=base, system_metrics=False, capture_env=False,
                              resume=True, flush_interval=0.01)
        s0 = 20 - k % 10
        for s in range(s0, s0 + 15):
            e.log_metrics({"x": float(k * BRANCH + s)}, step=s)
        e.close()
        k += 1


def child_fork(base: Path, run: str, ready) -> None:
    """Forks of one parent, made one after another."""
    ready()
    k = 0
    while True:
        with expman.Experiment(run, base_dir=base, system_metrics=False, capture_env=False,
                               fork_from=f"k/parent@{k % 40}") as e:
            e.log_metrics({"x": -1.0}, step=100)
        k += 1


CHILD = {"rewind": child_rewind, "resume": child_resume, "fork": child_fork}


def check_branched(run_dir: Path) -> int:
    """The invariants of a rewound or resumed run; returns its branch count."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no damage: a torn tail is not damage
        run = expman.open_run(run_dir)
    assert run.integrity["corrupt_bytes"] == 0
    assert run.integrity["lineage"] == [], run.integrity["lineage"]
    x = run.metrics["x"]
    steps = [int(s) for s in x.steps]
    assert steps == list(range(len(steps))), f"main history is not one point per step: {steps}"
    for v, label in zip(x.values, run.metrics.branch_labels("x")):
        assert int(v) // BRANCH == label, f"a row of branch {int(v) // BRANCH} read in {label}"
    ids = [b.id for b in run.branches]
    for k in sorted(set(ids[:2] + ids[-3:])):   # a branch is readable, its own rows only
        old = expman.open_run(run_dir, branch=k)
        for v, label in zip(old.metrics["x"].values, old.metrics.branch_labels("x")):
            assert int(v) // BRANCH == label
    ref = refreader.read_history(str(run_dir))["x"]
    assert [(s, v, lab) for s, _t, v, lab in ref] == list(zip(
        steps, (float(v) for v in x.values), run.metrics.branch_labels("x")))
    return len(run.branches)


def check_forks(base: Path, experiment: str, parent: dict) -> int:
    """Every fork the child made is whole, or no run at all; returns how many."""
    made = 0
    folder = base / experiment
    for d in sorted(folder.iterdir()) if folder.exists() else []:
        if not (d / "run.json").exists():
            assert not any(r.run_name == d.name for r in expman.list_runs(base, experiment))
            continue
        meta = json.loads((d / "run.json").read_text())
        fork = meta["fork"]
        assert fork["parent"] == "k/parent" and fork["parent_uuid"] == parent["uuid"]
        assert json.loads((d / "params.json").read_text()) == {"lr": 0.5}
        run = expman.open_run(d)
        x = run.metrics["x"]
        inherited = [int(s) for s in x.steps if s <= fork["step"]]
        assert inherited == list(range(fork["step"] + 1))
        assert run.integrity["lineage"] == []
        made += 1
    return made


def trial(base: Path, mode: str, i: int, rng: random.Random, parent: dict) -> int:
    """One child, forked from this process (expman already imported: a trial costs a
    fork, not an interpreter start), SIGKILLed at a random moment after READY."""
    run = f"{mode}{i}"
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: never returns
        try:
            os.close(rfd)
            CHILD[mode](base, run, lambda: os.write(wfd, b"R"))
        finally:
            os._exit(3)
    os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], 60)
        assert ready and os.read(rfd, 1) == b"R", f"trial {run}: the child never got ready"
        time.sleep(rng.uniform(0.0, 0.2))
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, run
    if mode == "fork":
        return check_forks(base, run, parent)
    return check_branched(base / "k" / run)


def test_sigkill_during_fork_rewind_and_resume_leaves_old_or_new_state(base):
    with expman.Experiment("k", "parent", base_dir=base, system_metrics=False,
                           capture_env=False) as p:
        p.log_params({"lr": 0.5})
        for s in range(50):
            p.log_metrics({"x": float(s)}, step=s)
    parent = json.loads((base / "k/parent/run.json").read_text())
    rng = random.Random(os.environ.get("EXPMAN_SEED", "branches"))
    made = {"rewind": 0, "resume": 0, "fork": 0}
    for i in range(TRIALS):
        mode = ("rewind", "resume", "fork")[i % 3]
        made[mode] += trial(base, mode, i, rng, parent)
    # the kills landed while branches and forks were being made, not only before
    assert all(n > 0 for n in made.values()), made
    print(f"\n{TRIALS} kills: branches and forks made before them: {made}")
