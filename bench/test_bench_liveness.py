"""pytest-benchmark: what a reader pays to tell a live RUNNING run from a dead one.

    pytest bench/test_bench_liveness.py --benchmark-only

Side by side on the same live run (its writer in another process): the lock
probe (open, non-blocking shared flock, close) that liveness.effective_status
uses now, and the pid/heartbeat rule it falls back to when a run has no lock
file (a failed open of the lock file, the host name, kill(pid, 0), three stats).
Only RUNNING runs pay either; finished runs return at the status check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

import expman
from expman import layout, liveness


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("liveness")
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, expman
        e = expman.Experiment("x", "live", base_dir={str(base)!r}, capture_env=False)
        print("ready", flush=True)
        sys.stdin.readline()
        e.close()
    """)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    run = base / "x" / "live"
    yield run, orjson.loads((run / layout.RUN_FILE).read_bytes())
    writer.stdin.write("\n")
    writer.stdin.close()
    writer.wait(30)
    writer.stdout.close()


@pytest.mark.benchmark(group="liveness")
def test_lock_probe(benchmark, live_run):
    run, meta = live_run
    assert benchmark(liveness.effective_status, meta, run) == "RUNNING"


@pytest.mark.benchmark(group="liveness")
def test_pid_heartbeat_rule_without_a_lock_file(benchmark, live_run):
    run, meta = live_run
    lock, away = run / layout.LOCK_FILE, run / (layout.LOCK_FILE + ".away")
    os.rename(lock, away)
    try:
        assert benchmark(liveness.effective_status, meta, run) == "RUNNING"
    finally:
        os.rename(away, lock)
