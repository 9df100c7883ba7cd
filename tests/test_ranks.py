"""Ranks join one run (issue 13 item 1): agreed name, one writer per file, per-rank
views, the run's status over its ranks, ``ranks=``. Real torchrun + DDP (gloo, CPU)."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import need

import expman
from expman import launcher, liveness, ranks, runlock
from expman.cli import ranks as ranks_cli
from expman.errors import ExpmanTypeError, ExpmanValueError, RunExistsError, RunLockedError

HERE = Path(__file__).parent
WORKER = HERE / "ranks_worker.py"
POSIX = sys.platform != "win32"
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
             "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
             "SLURM_JOB_ID", "SLURM_STEP_ID")


@pytest.fixture
def as_rank(monkeypatch):
    """Make the next Experiment() in this process rank ``r`` of a torchrun job."""
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_rank(rank: int, world: int = 2, run_id: str = "job-1", restart: int = 0) -> None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))
    return set_rank


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(expman.__file__).parent.parent), env.get("PYTHONPATH", "")])
    env["GLOO_SOCKET_IFNAME"] = "lo" if sys.platform.startswith("linux") else "lo0"  # loopback only
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the agreed name ----------------------------------------------------------------------

def test_launcher_agrees_on_a_name_or_refuses():
    assert launcher.detect(None, {}) == launcher.Launch()
    tr = launcher.detect(None, {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0",
                                "TORCHELASTIC_RUN_ID": "abc"})
    assert (tr.rank, tr.world_size, tr.run_name, tr.source) == (2, 3, "abc", "torchelastic")
    slurm = launcher.detect(None, {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
                                   "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.run_name) == (1, 4, 1, "slurm-4242.0")
    # torchrun's default id "none" is not a name; SLURM's job id under it is
    assert launcher.detect(None, {"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none",
                                  "SLURM_JOB_ID": "7"}).run_name == "slurm-7"
    assert launcher.detect("mine", {"RANK": "1", "WORLD_SIZE": "2",
                                    "TORCHELASTIC_RUN_ID": "abc"}).run_name == "mine"
    with pytest.raises(ExpmanValueError, match=r"rank 1 of 2 .*no run name in common.*run_name="):
        launcher.detect(None, {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                               "TORCHELASTIC_RUN_ID": "none"})
    with pytest.raises(ExpmanValueError, match=r"WORLD_SIZE='two' is not an integer"):
        launcher.detect(None, {"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ExpmanValueError, match=r"RANK=3 is not a rank of a world of 2"):
        launcher.detect(None, {"RANK": "3", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"})
    assert launcher.detect(None, {"RANK": "0", "WORLD_SIZE": "1"}).run_name is None


def test_ranks_without_an_agreed_name_are_refused_before_touching_disk(base, monkeypatch):
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ExpmanValueError, match="no run name in common"):
        expman.Experiment("exp", base_dir=base)
    assert os.listdir(base) == []


# ---- one folder, one writer per file, status over ranks (in one process) ----------------------

def test_failed_rank_fails_the_run_and_says_which(base, as_rank):
    as_rank(0)
    r0 = expman.Experiment("exp", base_dir=base, capture_env=False, system_metrics=False)
    r0.log_params({"lr": 0.1})
    as_rank(1)
    r1 = expman.Experiment("exp", base_dir=base, capture_env=False, system_metrics=False)
    assert r0.run_dir == r1.run_dir == base / "exp" / "job-1" and (r0.rank, r1.rank) == (0, 1)
    r1.log_params({"lr": 99.0})                       # kept by rank 1, not written
    r1.log_metrics({"loss": 2.0}, step=0)
    src = base.parent / "ckpt.txt"
    src.write_text("rank 1's")
    assert r1.save_artifact(src) == r1.run_dir / "artifacts" / "rank1" / "ckpt.txt"
    with pytest.raises(ZeroDivisionError):
        with r1:
            1 / 0
    r0.log_metrics({"loss": 1.0}, step=0)
    assert expman.open_run(r0.run_dir).status == "RUNNING"      # rank 0 still writes
    r0.close()
    run = expman.open_run(r0.run_dir)
    out = liveness.run_status(run.meta, run.path)
    assert run.status == out.status == "FAILED" and out.rank == 1
    assert "rank 1" in out.reason and "ZeroDivisionError" in out.reason
    assert [(s.rank, s.status) for s in out.ranks] == [(0, "FINISHED"), (1, "FAILED")]
    assert run.params == {"lr": 0.1} and run.meta["world_size"] == 2
    assert list(run.metrics["loss"].values) == [1.0]
    one = expman.open_run(r0.run_dir, rank=1)
    assert one.status == "FAILED" and list(one.metrics["loss"].values) == [2.0]
    assert one.meta["rank"] == 1 and one.params == {"lr": 0.1}
    frame = ranks.ranks_frame(r0.run_dir)
    assert sorted(zip(frame["rank"], frame["value"])) == [(0, 1.0), (1, 2.0)]
    (summary,) = expman.list_runs(base)
    assert summary.status == "FAILED"
    # the CLI leaf: `expman ranks exp/job-1`
    parser = argparse.ArgumentParser()
    ranks_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["ranks", "exp/job-1", "--base-dir", str(base)])
    buf = io.StringIO()
    assert args.func(args, buf) == 1
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("FAILED  (2 ranks)") and "because: rank 1" in lines[1]
    assert lines[3].split()[:2] == ["0", "FINISHED"] and lines[4].split()[:2] == ["1", "FAILED"]
    args = parser.parse_args(["ranks", str(r0.run_dir), "--json"])
    buf = io.StringIO()
    ranks_cli.run(args, buf)
    info = json.loads(buf.getvalue())
    assert (info["status"], info["rank"], info["world_size"]) == ("FAILED", 1, 2)
    assert sorted(os.listdir(r0.run_dir)) == sorted([
        "run.json", "params.json", "metrics.bin", "events.jsonl", "writer.lock", "summary.json",
        "run.rank1.json", "metrics.rank1.bin", "events.rank1.jsonl", "writer.rank1.lock",
        "summary.rank1.json", "loss.json", "loss.rank1.json", "artifacts"])


def test_one_writer_per_rank_and_resume_per_rank(base, as_rank):
    as_rank(1)
    a = expman.Experiment("exp", base_dir=base, capture_env=False)   # rank 1 may come first
    with pytest.raises(RunLockedError, match="rank 1"):
        expman.Experiment("exp", base_dir=base, capture_env=False, resume=True)
    a.log_metrics({"x": 1.0}, step=0)
    a.close()
    with pytest.raises(RunExistsError, match="rank 1 of run exp/job-1 exists"):
        expman.Experiment("exp", base_dir=base, capture_env=False)
    as_rank(1, restart=1)                   # torchrun restarted the job: rank 1 goes on
    with expman.Experiment("exp", base_dir=base, capture_env=False) as b:
        b.log_metrics({"x": 2.0})
    assert list(expman.open_run(b.run_dir, rank=1).metrics["x"].steps) == [0, 1]
    assert not runlock.is_locked(b.run_dir)


def test_ranks_option_mutes_the_other_ranks(base, as_rank):
    as_rank(1, world=3)
    with pytest.raises(ExpmanValueError, match=r"must include 0: rank 0 owns run.json"):
        expman.Experiment("exp", base_dir=base, ranks=[1, 2])
    with pytest.raises(ExpmanValueError, match=r"ranks: 3 is not a rank of a world of 3"):
        expman.Experiment("exp", base_dir=base, ranks=[0, 3])
    with pytest.raises(ExpmanTypeError, match=r"ranks: '1' is not an int"):
        expman.Experiment("exp", base_dir=base, ranks=[0, "1"])
    muted = expman.Experiment("exp", base_dir=base, ranks=[0])
    muted.log_metrics({"loss": 1.0}, step=0)          # accepted, checked, not written
    muted.info("not written")
    with pytest.raises(ExpmanTypeError):
        muted.log_metrics({"loss": "high"})
    muted.close()
    assert muted.status == "FINISHED" and os.listdir(base) == []
    as_rank(0, world=3)
    with expman.Experiment("exp", base_dir=base, capture_env=False, ranks=[0]) as r0:
        r0.log_metrics({"loss": 1.0}, step=0)
    run = expman.open_run(r0.run_dir)
    assert run.meta["ranks"] == [0] and run.status == "FINISHED"
    assert [s.rank for s in liveness.run_status(run.meta, run.path).ranks] == [0]
    assert not any("rank" in name for name in os.listdir(r0.run_dir))


# ---- real processes ----------------------------------------------------------------------------

@pytest.mark.skipif(not POSIX, reason="POSIX signals")
def test_a_sigkilled_rank_keeps_its_data_the_others_complete_and_the_run_says_so(base):
    """Three ranks (SLURM variables), rank 1 SIGKILLed mid-run: its gap-free prefix
    is intact, ranks 0 and 2 finish, and the run is CRASHED naming rank 1."""
    procs = {}
    try:
        for rank, role in ((0, "finish"), (1, "die"), (2, "finish")):
            env = {**_env(), "SLURM_PROCID": str(rank), "SLURM_NTASKS": "3",
                   "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}
            procs[rank] = subprocess.Popen(
                [sys.executable, str(WORKER), "plain", str(base), "300", role], env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 2):
            assert procs[rank].stdout.readline().strip() == "logged", procs[rank].stderr.read()
        flushed = -1
        while flushed < 100:                   # rank 1 is well into its run
            line = procs[1].stdout.readline()
            assert line, procs[1].stderr.read()
            flushed = int(line)
        os.kill(procs[1].pid, signal.SIGKILL)
        assert procs[1].wait(30) == -signal.SIGKILL
        run_dir = base / "job" / "slurm-4242.0"
        run = expman.open_run(run_dir)
        out = liveness.run_status(run.meta, run.path)
        # ranks 0 and 2 still write: the run lives, rank 1 is named dead at once
        assert run.status == "RUNNING" and runlock.is_locked(run_dir)
        assert [(s.rank, s.status) for s in out.ranks] == [
            (0, "RUNNING"), (1, "CRASHED"), (2, "RUNNING")]
        for rank in (0, 2):
            procs[rank].stdin.write("done\n")
            procs[rank].stdin.flush()
            assert procs[rank].wait(60) == 0, procs[rank].stderr.read()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(30)
            for f in (p.stdin, p.stdout, p.stderr):
                f.close()
    run = expman.open_run(run_dir)
    out = liveness.run_status(run.meta, run.path)
    assert run.status == out.status == "CRASHED" and out.rank == 1
    assert "rank 1 (pid" in out.reason and "died without closing" in out.reason
    assert [(s.rank, s.status) for s in out.ranks] == [(0, "FINISHED"), (1, "CRASHED"), (2, "FINISHED")]
    assert not runlock.is_locked(run_dir)
    # rank 0 asked for explicitly: its own status; the whole run's is run_status
    zero = expman.open_run(run_dir, rank=0)
    assert zero.status == "FINISHED" and zero.run_status == out
    assert expman.open_run(run_dir, rank=1).status == "CRASHED"
    assert expman.open_run(run_dir, rank=2).run_status.rank == 1
    for rank in (0, 2):
        r = expman.open_run(run_dir, rank=rank)
        assert list(r.metrics["x"].steps) == list(range(300))
        assert set(r.metrics["rank"].values) == {float(rank)}
    dead = expman.open_run(run_dir, rank=1)
    steps = list(dead.metrics["x"].steps)
    assert steps == list(range(len(steps))) and len(steps) > flushed    # a gap-free prefix
    assert list(dead.metrics["x"].values) == [float(s) for s in steps]
    assert dead.integrity["corrupt_bytes"] == 0 and dead.status == "CRASHED"


def _torchrun(args: list[str], base: Path, steps: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args, str(WORKER), "ddp", str(base),
         str(steps)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check_ddp_run(run_dir: Path, world: int, steps: int) -> None:
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED", liveness.run_status(run.meta, run.path)
    assert run.meta["world_size"] == world and run.meta["launcher"] == "torchelastic"
    assert run.params == {"lr": 0.05, "world_size": world, "set_by_rank": 0}
    sums = set()
    for rank in range(world):
        r = expman.open_run(run_dir, rank=rank)
        loss = r.metrics["loss"]
        assert list(loss.steps) == list(range(steps)) and loss.values[-1] < loss.values[0] / 2
        assert [m["msg"] for m in r.messages] == [f"rank {rank} of {world} starts"]
        sums.add(r.metrics["weight_sum"].last)
    assert len(sums) == 1                      # DDP kept the replicas identical
    assert not runlock.is_locked(run_dir)


@pytest.mark.skipif(not POSIX, reason="torchrun with gloo on loopback")
def test_torchrun_ddp_three_ranks_write_one_run(base):
    need("torch")
    proc = _torchrun(["--standalone", "--nproc-per-node", "3", "--monitor-interval", "0.1"],
                     base, 40)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out
    (run_dir,) = (base / "ddp").iterdir()      # named by torchrun's run id, in every rank
    _check_ddp_run(run_dir, 3, 40)


@pytest.mark.skipif(not POSIX, reason="torchrun with gloo on loopback")
def test_two_nodes_on_one_shared_folder(base):
    """Two torchrun agents (two "nodes", 2 ranks each) rendezvous on 127.0.0.1 and
    share one base dir, as nodes share a filesystem."""
    need("torch")
    port, run_id = _free_port(), f"nodes-{uuid.uuid4().hex[:8]}"
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "static",
              "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-id", run_id,
              "--monitor-interval", "0.1"]
    nodes = [_torchrun([*common, "--node-rank", str(n)], base, 20) for n in (0, 1)]
    outs = [p.communicate(timeout=180)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert [d.name for d in (base / "ddp").iterdir()] == [run_id]
    run_dir = base / "ddp" / run_id
    _check_ddp_run(run_dir, 4, 20)
    locals_ = sorted(expman.open_run(run_dir, rank=r).meta["local_rank"] for r in range(4))
    assert locals_ == [0, 0, 1, 1]


def test_verify_integrity_and_list_cover_every_rank(base, as_rank):
    """Issue 26 item 3: corrupted bytes in metrics.rank1.bin and a data_loss in
    run.rank2.json are reported by verify (non-zero), by open_run(rank=r).integrity
    and rank 0's view (rank_data_loss), and marked by list."""
    from expman._fsutil import atomic_write_json, read_json
    runs = []
    for r in range(3):
        as_rank(r, world=3, run_id="job-every")
        runs.append(expman.Experiment("exp", base_dir=base, capture_env=False))
    for r, e in enumerate(runs):
        for i in range(200):
            e.log_metrics({"x": float(i * r)}, step=i)
            if i % 50 == 49:
                e.flush()
    for e in reversed(runs):
        e.close()
    run_dir = runs[0].run_dir
    assert expman.verify_run(run_dir)["ok"]
    m1 = run_dir / "metrics.rank1.bin"
    data = bytearray(m1.read_bytes())
    data[40:60] = b"\xff" * 20                      # inside the first frame
    m1.write_bytes(bytes(data))
    meta2 = read_json(run_dir / "run.rank2.json")
    meta2["data_loss"] = {"rows_dropped": 5, "events_dropped": 0, "write_errors": 1}
    atomic_write_json(run_dir / "run.rank2.json", meta2)

    report = expman.verify_run(run_dir)
    assert not report["ok"]
    assert report["ranks"]["1"]["metrics"]["corrupt_bytes"] > 0
    assert report["ranks"]["2"]["data_loss"]["rows_dropped"] == 5
    assert any("metrics.rank1.bin" in p for p in report["problems"])
    assert any("rank 2's writer recorded loss" in p for p in report["problems"])
    two = expman.open_run(run_dir, rank=2)
    assert two.integrity["data_loss"]["rows_dropped"] == 5
    with pytest.warns(RuntimeWarning, match="metrics.rank1.bin"):
        one = expman.open_run(run_dir, rank=1)
    assert one.integrity["corrupt_bytes"] > 0 and one.integrity["data_loss"] is None
    zero = expman.open_run(run_dir)
    assert zero.integrity["data_loss"] is None and zero.integrity["rank_data_loss"][2]
    (line,) = expman.list_runs(base)
    assert line.data_loss["rank"] == 2 and line.data_loss["rows_dropped"] == 5
