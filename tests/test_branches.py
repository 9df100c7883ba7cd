"""Runs that branch (issue 23): fork, rewind, resume at a lower step, and reading them.

Every run here is made with system_metrics=False (the tests count points) and
read back both by the compiled reader and by the reference reader (refreader),
which must give the same curve, branch labels included.
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pytest

import expman
from expman import branches, refreader
from expman.errors import ExpmanValueError, RunNotFoundError
from expman.readmodel import integrity_problems

from conftest import need
from test_reliability import run_script

POSIX = os.name == "posix"


def exp(base: Path, name: str = "e", run: str | None = None, **kw) -> expman.Experiment:
    return expman.Experiment(name, run, base_dir=base, system_metrics=False,
                             capture_env=False, **kw)


def points(run: expman.Run, key: str = "x") -> list[tuple[int, float]]:
    s = run.metrics[key]
    return list(zip((int(x) for x in s.steps), (float(v) for v in s.values)))


def agree(path: Path, rank: int = 0, branch: int | None = None) -> None:
    """refreader and the compiled reader give the same points, times and labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = expman.open_run(path, rank=rank, branch=branch)
    ref = refreader.read_history(str(path), rank, branch)
    got = {n: [(int(s), float(t), float(v), lab) for s, t, v, lab in zip(
        ser.steps, ser.times, ser.values, run.metrics.branch_labels(n))]
        for n, ser in run.metrics.items() if len(ser)}
    assert got == {n: pts for n, pts in ref.items() if pts}


def log_steps(e: expman.Experiment, steps, base_value: float = 0.0) -> None:
    for s in steps:
        e.log_metrics({"x": base_value + s}, step=s)


# ---- fork ----------------------------------------------------------------------------------------

def test_fork_of_a_finished_parent_reads_its_prefix_then_its_own(base):
    with exp(base, run="p") as p:
        p.log_params({"lr": 0.1, "bs": 32})
        log_steps(p, range(10))
    with exp(base, run="c", fork_from="e/p@5") as c:
        assert c.params == {"lr": 0.1, "bs": 32}
        c.log_params({"lr": 0.01})
        log_steps(c, range(6, 9), 100)
    meta = json.loads((base / "e/c/run.json").read_text())
    parent_meta = json.loads((base / "e/p/run.json").read_text())
    assert meta["fork"] == {"parent": "e/p", "parent_uuid": parent_meta["uuid"], "step": 5,
                            "branch": 0}
    run = expman.open_run(base / "e/c")
    assert points(run) == [(s, float(s)) for s in range(6)] + [(s, 100.0 + s) for s in range(6, 9)]
    assert run.params == {"lr": 0.01, "bs": 32}
    assert run.parent == "e/p" and run.fork_step == 5
    assert run.lineage == [("e/p", 5), ("e/c", None)]
    [b0] = run.branches
    assert (b0.id, b0.kind, b0.parent, b0.first_step, b0.last_step, b0.points) == \
        (0, "fork", "e/p", 6, 8, 3)
    assert run.metrics.branch_labels("x") == ["e/p:0"] * 6 + [0] * 3
    # nothing of the parent is copied: the child's stream holds its own 3 points only
    assert (base / "e/c/metrics.bin").stat().st_size < 200
    assert run.integrity["lineage"] == []
    agree(base / "e/c")
    # the listing's last value and point count describe the main history
    [line] = [r for r in expman.list_runs(base) if r.run_name == "c"]
    assert line.points == 9 and line.last_metrics["x"] == 108.0
    assert branches.children(base, "e/p") == ["e/c"] and branches.children(base, "e/c") == []


def test_fork_from_a_running_parent_and_the_tuple_spelling(base):
    p = exp(base, run="p")
    log_steps(p, range(10))
    p.flush()
    with exp(base, run="c", fork_from=("e/p", 4)) as c:
        log_steps(c, range(5, 7), 50)
    log_steps(p, range(10, 20))         # the parent goes on: the child's past does not move
    run = expman.open_run(base / "e/c")
    assert points(run) == [(s, float(s)) for s in range(5)] + [(5, 55.0), (6, 56.0)]
    p.rewind(2)                         # even a rewind of the parent leaves the child's past
    log_steps(p, range(2, 4), -100)
    p.close()
    assert points(expman.open_run(base / "e/c"))[:5] == [(s, float(s)) for s in range(5)]
    agree(base / "e/c")
    agree(base / "e/p")


def test_forks_of_forks_read_through_the_whole_chain(base):
    with exp(base, run="a") as a:
        log_steps(a, range(10))
    with exp(base, run="b", fork_from="e/a@3") as b:
        log_steps(b, range(4, 8), 100)
    with exp(base, run="c", fork_from="e/b@5") as c:
        log_steps(c, range(6, 9), 200)
    run = expman.open_run("e/c", base_dir=base)
    assert points(run) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 104.0), (5, 105.0),
                           (6, 206.0), (7, 207.0), (8, 208.0)]
    assert run.lineage == [("e/a", 3), ("e/b", 5), ("e/c", None)]
    assert run.metrics.branch_labels("x") == ["e/a:0"] * 4 + ["e/b:0"] * 2 + [0] * 3
    agree(base / "e/c")


def test_a_fork_of_a_parent_with_duplicate_steps_keeps_them_in_logged_order(base):
    with exp(base, run="p") as p:
        log_steps(p, range(10))
    with exp(base, run="p", resume="duplicates") as p:
        log_steps(p, range(5, 8), 0.5)
    with exp(base, run="c", fork_from="e/p@6") as c:
        log_steps(c, range(7, 9), 100)
    run = expman.open_run(base / "e/c")
    assert points(run) == [(s, float(s)) for s in range(7)] + [(5, 5.5), (6, 6.5),
                                                               (7, 107.0), (8, 108.0)]
    agree(base / "e/c")


def test_fork_from_names_a_real_parent_or_fails_before_any_folder(base):
    with exp(base, run="p") as p:
        log_steps(p, range(3))
    for bad, err in [("e/p", ExpmanValueError), ("e/p@-1", ExpmanValueError),
                     ("e/p@x", ExpmanValueError), (("e/p",), Exception),
                     ("e/nope@1", RunNotFoundError), (("e/p", True), ExpmanValueError)]:
        with pytest.raises(err):
            exp(base, run="c", fork_from=bad)
    assert not (base / "e/c").exists()


# ---- rewind and resume ---------------------------------------------------------------------------

def test_rewind_on_a_live_run_replaces_the_points_after_it(base):
    e = exp(base, run="r")
    log_steps(e, range(10))
    e.rewind(6)
    for _ in range(3):
        e.log_metrics({"x": -1.0})           # step=None goes on from the rewind: 6, 7, 8
    e.flush()
    live = expman.open_run(base / "e/r")
    assert points(live) == [(s, float(s)) for s in range(6)] + [(6, -1.0), (7, -1.0), (8, -1.0)]
    assert [(b.id, b.kind, b.from_step, b.points) for b in live.branches] == \
        [(0, "root", None, 10), (1, "rewind", 6, 3)]
    e.rewind(2)                              # twice, with no point in between
    e.rewind(1)
    e.log_metrics({"x": 9.0})
    e.close()
    run = expman.open_run(base / "e/r")
    assert points(run) == [(0, 0.0), (1, 9.0)]
    assert points(expman.open_run(base / "e/r", branch=0)) == [(s, float(s)) for s in range(10)]
    assert points(expman.open_run(base / "e/r", branch=2)) == [(0, 0.0), (1, 1.0)]
    assert [b.kind for b in run.branches] == ["root", "rewind", "rewind", "rewind"]
    for k in (None, 0, 1, 2, 3):
        agree(base / "e/r", branch=k)
    with pytest.raises(ExpmanValueError, match="no branch 7"):
        expman.open_run(base / "e/r", branch=7)
    with exp(base, run="z") as z, pytest.raises(ExpmanValueError, match="non-negative int"):
        z.rewind(-1)


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_a_job_killed_at_900_and_restarted_from_800_keeps_one_point_per_step(base):
    """The crash-restart story of issue 23."""
    killed = run_script("""
        e = expman.Experiment("job", "r", base_dir=BASE, system_metrics=False, capture_env=False)
        for s in range(901):
            e.log_metrics({"loss": 1.0 / (s + 1), "x": float(s)}, step=s)
        e.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """, base)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with exp(base, "job", "r", resume=True) as e:       # back from the step-800 checkpoint
        for s in range(800, 1001):
            e.log_metrics({"loss": 2.0 / (s + 1), "x": s + 0.5}, step=s)
        assert type(e) is expman.Experiment            # the one-shot check is gone
    run = expman.open_run(base / "job/r")
    assert [int(s) for s in run.metrics["x"].steps] == list(range(1001))
    assert list(run.metrics["x"].values) == [float(s) for s in range(800)] + \
        [s + 0.5 for s in range(800, 1001)]
    kinds = [(b.id, b.kind, b.from_step, b.first_step, b.last_step) for b in run.branches]
    assert kinds == [(0, "root", None, 0, 900), (1, "resume", 800, 800, 1000)]
    abandoned = expman.open_run(base / "job/r", branch=0)
    assert [int(s) for s in abandoned.metrics["x"].steps] == list(range(901))
    agree(base / "job/r")
    agree(base / "job/r", branch=0)
    summary = expman.list_runs(base)[0]
    assert summary.points == 2 * 1001 and summary.last_metrics["x"] == 1000.5


def test_resume_going_on_above_the_last_step_opens_no_branch(base):
    with exp(base, run="r") as e:
        log_steps(e, range(5))
    with exp(base, run="r", resume=True) as e:
        e.log_metrics({"x": 5.0})
    assert not (base / "e/r/branches.jsonl").exists()
    assert points(expman.open_run(base / "e/r")) == [(s, float(s)) for s in range(6)]


def test_resume_duplicates_keeps_one_history_with_duplicate_steps(base):
    with exp(base, run="r") as e:
        log_steps(e, range(5))
    with exp(base, run="r", resume="duplicates") as e:
        log_steps(e, range(3, 6), 10)
    assert not (base / "e/r/branches.jsonl").exists()
    run = expman.open_run(base / "e/r")
    assert [p[0] for p in points(run)] == [0, 1, 2, 3, 4, 3, 4, 5]
    assert [b.kind for b in run.branches] == ["root"]
    with pytest.raises(ExpmanValueError, match="resume must be"):
        exp(base, run="r", resume="yes")


def test_a_resumed_fork_keeps_its_parent_and_a_second_resume_numbers_on(base):
    with exp(base, run="p") as p:
        log_steps(p, range(10))
    with exp(base, run="c", fork_from="e/p@4") as c:
        log_steps(c, range(5, 8), 100)
    with exp(base, run="c", resume=True) as c:
        log_steps(c, range(3, 5), 300)          # back below the fork step
    with exp(base, run="c", resume=True) as c:
        log_steps(c, range(4, 6), 400)
    run = expman.open_run(base / "e/c")
    assert points(run) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 303.0), (4, 404.0), (5, 405.0)]
    assert [(b.id, b.kind) for b in run.branches] == [(0, "fork"), (1, "resume"), (2, "resume")]
    with pytest.raises(ExpmanValueError, match="not a fork of"):
        exp(base, run="c", resume=True, fork_from="e/p@5")
    agree(base / "e/c")
    for k in (0, 1, 2):
        agree(base / "e/c", branch=k)


def test_each_rank_has_its_own_branches_file(base, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    made = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
        e = exp(base)
        log_steps(e, range(6), 10 * rank)
        made.append(e)
    made[1].rewind(3)
    log_steps(made[1], range(3, 5), 500)
    for e in made:
        e.close()
    path = made[0].run_dir
    assert not (path / "branches.jsonl").exists()
    assert (path / "branches.rank1.jsonl").exists()
    r0, r1 = expman.open_run(path), expman.open_run(path, rank=1)
    assert points(r0) == [(s, float(s)) for s in range(6)]
    assert points(r1) == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 503.0), (4, 504.0)]
    assert [b.kind for b in r1.branches] == ["root", "rewind"]
    need("pandas")
    from expman.ranks import ranks_frame
    frame = ranks_frame(path)
    assert list(frame[frame["rank"] == 1]["value"]) == [10.0, 11.0, 12.0, 503.0, 504.0]
    agree(path, rank=1)
    agree(path, rank=0)


def test_the_hot_path_of_a_branched_run_is_the_compiled_method(base):
    with exp(base, run="r") as e:
        log_steps(e, range(3))
    e = exp(base, run="r", resume=True)
    assert type(e) is not expman.Experiment and isinstance(e, expman.Experiment)
    e.log_metrics({"x": 0.5}, step=1)
    assert type(e) is expman.Experiment
    assert type(e).log_metrics is expman._core.Core.log_metrics
    e.close()


# ---- hostile folders -----------------------------------------------------------------------------

def _rewound(base: Path, run: str = "h") -> Path:
    with exp(base, run=run) as e:
        log_steps(e, range(6))
        e.rewind(3)
        log_steps(e, range(3, 5), 100)
    return base / "e" / run


def test_crafted_branch_lines_are_skipped_and_reported(base):
    path = _rewound(base)
    good = (path / "branches.jsonl").read_bytes()
    size = (path / "metrics.bin").stat().st_size
    line = json.loads(good)
    crafted = [
        good + b'{"id": 2, "kind": "rewind", "from_step": 0, "offset": %d}\n' % (line["offset"] + 3),
        good + b'{"id": 2, "kind": "rewind", "from_step": 0, "offset": %d}\n' % (size + 100),
        good + b'{"id": 2, "kind": "rewind", "from_step": 0, "offset": 20}\n',
        good + b'{"id": 1, "kind": "rewind", "from_step": 0, "offset": %d}\n' % size,
        good + b'{"id": 2, "kind": "fork", "from_step": 0, "offset": %d}\n' % size,
        good + b'{"id": 2, "kind": "rewind", "from_step": -4, "offset": %d}\n' % size,
        good + b'{"id": 2, "kind": "rewind", "from_step": 0, "offset": 1e300}\n',
        good + b'[1, 2]\nnot json\n\x00\xff\n',
        good + b'{"id": 2, "kind": "rewind", "from_step": 0, "offset": %d, "time": "x"}\n' % size,
    ]
    for text in crafted:
        (path / "branches.jsonl").write_bytes(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = expman.open_run(path)
        assert points(run) == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 103.0), (4, 104.0)], text
        assert [b.id for b in run.branches] == [0, 1]
        problems = integrity_problems(run.integrity, run.status)
        assert any("bad_branch_line" in p for p in problems), (text, problems)
        agree(path)
    # a line a crash cut (no newline) is a write in progress: not a problem
    (path / "branches.jsonl").write_bytes(good + b'{"id": 2, "kind": "rew')
    run = expman.open_run(path)
    assert run.integrity["lineage"] == [] and len(run.branches) == 2
    # and the next resume cuts it before appending
    with exp(base, run="h", resume=True) as e:
        log_steps(e, range(1, 2), 1000)
    assert (path / "branches.jsonl").read_bytes().count(b"\n") == 2
    assert points(expman.open_run(path)) == [(0, 0.0), (1, 1001.0)]
    agree(path)


def test_broken_parents_never_crash_or_hang(base):
    with exp(base, run="a") as a:
        log_steps(a, range(5))
    with exp(base, run="b", fork_from="e/a@2") as b:
        log_steps(b, range(3, 5), 10)
    meta_path = base / "e/b/run.json"
    meta = json.loads(meta_path.read_text())

    def with_fork(fork) -> expman.Run:
        meta_path.write_text(json.dumps({**meta, "fork": fork}))
        return expman.open_run(base / "e/b")

    own = [(3, 13.0), (4, 14.0)]
    cases = {
        "parent_missing": {**meta["fork"], "parent": "e/gone"},
        "parent_mismatch": {**meta["fork"], "parent_uuid": "someone-else"},
        "lineage_cycle": {**meta["fork"], "parent": "e/b"},
    }
    for problem, fork in cases.items():
        run = with_fork(fork)
        assert points(run) == own, problem
        assert [p["problem"] for p in run.integrity["lineage"]] == [problem]
        assert any(problem in line for line in integrity_problems(run.integrity, run.status))
        agree(base / "e/b")
    for fork in ("e/a", {"parent": "../../etc"}, {"parent": "e/a", "step": "2"}, [1]):
        run = with_fork(fork)
        assert points(run) == own
        assert run.integrity["lineage"][0]["problem"] == "parent_missing"
    # a cycle of two: a -> b -> a
    meta_path.write_text(json.dumps(meta))
    a_meta = json.loads((base / "e/a/run.json").read_text())
    b_uuid = meta["uuid"]
    (base / "e/a/run.json").write_text(json.dumps(
        {**a_meta, "fork": {"parent": "e/b", "parent_uuid": b_uuid, "step": 10}}))
    run = expman.open_run(base / "e/b")
    assert any(p["problem"] == "lineage_cycle" for p in run.integrity["lineage"])
    assert expman.list_runs(base)       # a listing of such runs still works
    agree(base / "e/b")


def test_a_chain_deeper_than_the_limit_stops_there(base):
    with exp(base, run="r000") as e:
        log_steps(e, range(1))
    depth = 70
    for i in range(1, depth):
        with exp(base, run=f"r{i:03d}", fork_from=f"e/r{i - 1:03d}@{i - 1}") as e:
            log_steps(e, range(i, i + 1))
    run = expman.open_run(base / f"e/r{depth - 1:03d}")
    assert any(p["problem"] == "lineage_too_deep" for p in run.integrity["lineage"])
    assert len(run.lineage) == 64          # the run and 63 ancestors: 64 runs read
    steps = [s for s, _v in points(run)]
    assert steps == list(range(depth - 64, depth))
    agree(base / f"e/r{depth - 1:03d}")


def test_no_numpy_reads_the_same_history(base):
    path = _rewound(base)
    code = f"""
        import expman
        run = expman.open_run({str(path)!r})
        s = run.metrics["x"]
        print(list(s.steps), list(s.values), run.metrics.branch_labels("x"))
    """
    env_before = os.environ.get("EXPMAN_NO_NUMPY")
    os.environ["EXPMAN_NO_NUMPY"] = "1"
    try:
        out = run_script(code, base)
    finally:
        if env_before is None:
            os.environ.pop("EXPMAN_NO_NUMPY")
        else:
            os.environ["EXPMAN_NO_NUMPY"] = env_before
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3, 4] [0.0, 1.0, 2.0, 103.0, 104.0] [0, 0, 0, 1, 1]"


def test_refresh_of_a_live_run_follows_a_rewind(base):
    e = exp(base, run="r")
    log_steps(e, range(5))
    e.flush()
    run = expman.open_run(base / "e/r")
    assert len(run.metrics["x"]) == 5
    e.rewind(2)
    log_steps(e, range(2, 4), 50)
    e.flush()
    run.refresh()
    assert points(run) == [(0, 0.0), (1, 1.0), (2, 52.0), (3, 53.0)]
    assert [b.kind for b in run.branches] == ["root", "rewind"]
    e.close()


def test_branches_module_parses_fork_specs():
    assert branches.parse_fork_from("e/r@12") == ("e/r", 12)
    assert branches.parse_fork_from("a@b/r@3") == ("a@b/r", 3)
    assert branches.parse_fork_from(("e/r", 0)) == ("e/r", 0)


def test_to_pandas_names_each_points_branch(base):
    """``to_pandas(branch=True)``: inherited points carry the parent's branch as
    "exp/run:k", the run's own points their branch id."""
    need("pandas")
    with exp(base, run="p") as p:
        log_steps(p, range(10))
    with exp(base, run="c", fork_from="e/p@5") as c:
        log_steps(c, range(6, 9), 100)
        c.rewind(8)
        log_steps(c, range(8, 10), 200)
    frame = expman.open_run(base / "e/c").metrics.to_pandas(branch=True)
    assert list(frame["branch"]) == ["e/p:0"] * 6 + [0] * 2 + [1] * 2
    assert list(frame["step"]) == list(range(10))
