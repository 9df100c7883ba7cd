"""The single-writer lock (issue 14 items 1 and 7): one writer per run, liveness
witnessed by the lock, resume after SIGKILL, fork-safety."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from conftest import need

import expman
from expman import layout, liveness, runlock
from expman.errors import RunLockedError

POSIX = sys.platform != "win32"
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX signals / fork")


def _spawn(code: str, cwd: Path) -> subprocess.Popen:
    """A Python writer in its own process; it talks on stdout, listens on stdin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(expman.__file__).parent.parent), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, f"writer exited early: {proc.wait(10)} {proc.stderr.read()}"
    return line.strip()


def _meta(run_dir: Path) -> dict:
    return orjson.loads((run_dir / layout.RUN_FILE).read_bytes())


def _status(run_dir: Path) -> str:
    return liveness.effective_status(_meta(run_dir), run_dir)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()


WRITER = """
import sys, expman
exp = expman.Experiment("exp", "r3", base_dir={base!r}, capture_env=False, system_metrics=False)
for i in range(100):
    exp.log_metrics({{"loss_A": 111.0, "i": float(i)}}, step=i)
exp.info("A is here")
exp.flush()
print(exp.run_dir, flush=True)
sys.stdin.readline()                  # the test says when to go on
for i in range(100, 200):
    exp.log_metrics({{"loss_A": 111.0, "i": float(i)}}, step=i)
exp.close()
print("closed", flush=True)
"""


def test_second_writer_process_is_refused_naming_the_holder(base):
    a = _spawn(WRITER.format(base=str(base)), base)
    try:
        run_dir = Path(_line(a))
        b = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import expman
                from expman.errors import RunLockedError
                try:
                    expman.Experiment("exp", "r3", base_dir={str(base)!r}, resume=True,
                                      capture_env=False)
                except RunLockedError as e:
                    print(e.holder["pid"], e.holder["host"], "|", e)
                    raise SystemExit(7)
            """)], env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)},
            cwd=base, capture_output=True, text=True, timeout=60)
        assert b.returncode == 7, b.stderr
        pid, host, _, message = b.stdout.split(" ", 3)
        assert int(pid) == a.pid and host == layout.hostname()
        assert f"pid {a.pid} on host {host}" in message and str(run_dir) in message
        a.stdin.write("go\n")
        a.stdin.flush()
        assert _line(a) == "closed" and a.wait(30) == 0
    finally:
        _stop(a)
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED" and run.meta["resumed"] == [] and run.meta["pid"] == a.pid
    assert list(run.metrics["i"].values) == [float(i) for i in range(200)]
    assert set(run.metrics["loss_A"].values) == {111.0} and list(run.metrics) == ["loss_A", "i"]
    assert [e["msg"] for e in run.messages] == ["A is here"]
    raw = (run_dir / layout.EVENTS_FILE).read_bytes()
    assert layout.parse_event_lines(raw)[1] == 0        # no torn or overwritten line
    assert not runlock.is_locked(run_dir)


def test_second_opener_in_the_same_process_is_refused(make_run):
    a = make_run(run_name="r")
    a.log_metrics({"x": 1.0}, step=0)
    with pytest.raises(RunLockedError) as info:
        make_run(run_name="r", resume=True)
    assert info.value.holder["pid"] == os.getpid() and isinstance(info.value, RuntimeError)
    assert info.value.path == str(a.run_dir / layout.LOCK_FILE)
    a.log_metrics({"x": 2.0}, step=1)                   # the holder is untouched
    a.close()
    b = make_run(run_name="r", resume=True)            # free once the holder closed
    b.log_metrics({"x": 3.0}, step=2)
    b.close()
    run = expman.open_run(a.run_dir)
    assert list(run.metrics["x"].values) == [1.0, 2.0, 3.0] and len(run.meta["resumed"]) == 1


@posix_only
def test_stopped_writer_stays_running_killed_one_is_crashed_and_resumable(base):
    """Item 7: a SIGSTOPped writer is alive (its lock is held) long past heartbeat
    staleness; SIGKILLed, it is CRASHED at once, even if its recorded pid names a
    live process (another PID namespace); then the run resumes."""
    a = _spawn(f"""
        import sys, expman, expman.experiment
        expman.experiment.HEARTBEAT_INTERVAL = 0.05      # stale after 6 * 0.05 s
        exp = expman.Experiment("exp", "stopped", base_dir={str(base)!r}, capture_env=False)
        for i in range(50):
            exp.log_metrics({{"a": float(i)}}, step=i)
        exp.flush()
        print(exp.run_dir, flush=True)
        sys.stdin.readline()
    """, base)
    try:
        run_dir = Path(_line(a))
        meta = _meta(run_dir)
        assert meta["heartbeat_interval"] == 0.05
        os.kill(a.pid, signal.SIGSTOP)
        stale = layout.STALE_AFTER * meta["heartbeat_interval"]
        deadline = time.monotonic() + 30
        while time.time() - liveness.heartbeat(run_dir) <= 2 * stale:
            assert time.monotonic() < deadline, "the heartbeat never went stale"
            time.sleep(0.05)
        # stale heartbeat, and the host looks foreign: only the lock can tell it lives
        assert liveness.effective_status({**meta, "host": "elsewhere"}, run_dir) == "RUNNING"
        assert _status(run_dir) == "RUNNING" and liveness.is_locked(run_dir)
        (summary,) = expman.list_runs(base, metrics=False)
        assert summary.status == "RUNNING"
        os.kill(a.pid, signal.SIGKILL)
        a.wait(30)
        # recorded pid alive on this host (pid reuse, another namespace): still CRASHED
        assert liveness.effective_status({**meta, "pid": os.getppid()}, run_dir) == "CRASHED"
        assert _status(run_dir) == "CRASHED" and not runlock.is_locked(run_dir)
        # a free lock of a writer on another host (locks may be client-local there)
        # counts once the heartbeat is stale too
        assert liveness.effective_status({**meta, "host": "elsewhere"}, run_dir) == "CRASHED"
        for name in (layout.METRICS_FILE, layout.EVENTS_FILE, layout.RUN_FILE):
            os.utime(run_dir / name)
        assert liveness.effective_status({**meta, "host": "elsewhere"}, run_dir) == "RUNNING"
        assert _status(run_dir) == "CRASHED"
    finally:
        _stop(a)
    with expman.Experiment("exp", "stopped", base_dir=base, resume=True, capture_env=False) as b:
        assert runlock.is_locked(run_dir) and _status(run_dir) == "RUNNING"
        b.log_metrics({"a": 50.0})
    run = expman.open_run(run_dir)
    assert run.status == "FINISHED" and list(run.metrics["a"].steps) == list(range(51))


@posix_only
def test_forked_child_neither_releases_nor_keeps_the_lock(base):
    """flock belongs to the open file description the child shares: a child closing
    its copy must not free the parent's run, and a child outliving a SIGKILLed
    parent must not keep the dead run 'alive'."""
    p = _spawn(f"""
        import gc, os, sys, time, expman
        exp = expman.Experiment("exp", "forked", base_dir={str(base)!r}, capture_env=False)
        exp.log_metrics({{"a": 1.0}}, step=0)
        exp.flush()
        pid = os.fork()
        if pid == 0:
            try:
                exp.log_metrics({{"a": 2.0}}, step=1)
            except expman.RunClosedError:
                pass
            exp.close()                       # a no-op in the child
            del exp
            gc.collect()
            print("child-done", os.getpid(), flush=True)
            sys.stdin.readline()              # stays alive until the test closes stdin
            os._exit(0)
        print(exp.run_dir, pid, flush=True)
        while True:
            time.sleep(1)
    """, base)
    child = None
    try:
        first, second = _line(p), _line(p)
        parent_line = first if not first.startswith("child-done") else second
        child_line = second if parent_line is first else first
        run_dir, child = Path(parent_line.split()[0]), int(child_line.split()[1])
        assert runlock.is_locked(run_dir) and _status(run_dir) == "RUNNING"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        os.kill(child, 0)                       # the child lives on ...
        assert not runlock.is_locked(run_dir)   # ... without the dead parent's lock
        assert _status(run_dir) == "CRASHED"
    finally:
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _stop(p)
    assert list(expman.open_run(run_dir).metrics["a"].values) == [1.0]


def test_without_lock_support_the_run_falls_back_to_pid_and_heartbeat(make_run, monkeypatch):
    def no_locks(fd: int, exclusive: bool) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock, "_try_lock", no_locks)
    exp = make_run(run_name="nolock")
    assert not (exp.run_dir / layout.LOCK_FILE).exists()   # readers must not trust one
    assert runlock.probe(exp.run_dir) is None and not runlock.is_locked(exp.run_dir)
    assert _status(exp.run_dir) == "RUNNING"                # own pid, fresh heartbeat
    exp.close()
    assert _status(exp.run_dir) == "FINISHED"


@posix_only
def test_lock_is_never_taken_through_a_planted_symlink(make_run, tmp_path):
    exp = make_run(run_name="sym")
    exp.close()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    lock = exp.run_dir / layout.LOCK_FILE
    lock.unlink()
    lock.symlink_to(outside)
    with pytest.raises(OSError) as info:
        make_run(run_name="sym", resume=True)
    assert info.value.errno == errno.ELOOP and str(lock) in str(info.value)
    assert outside.read_text() == "keep me"
    assert runlock.probe(exp.run_dir) is None             # readers do not follow it either


LOCKF = """
import fcntl
def _lockf(fd, exclusive):       # POSIX record locks, as Linux NFS clients emulate flock
    fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
"""


@posix_only
def test_the_writers_own_reads_never_drop_its_lock_under_record_lock_semantics(make_run,
                                                                               monkeypatch):
    """With POSIX record locks (flock on NFS), closing any descriptor of the lock file
    drops the process's lock: the writer's process must never open it to probe."""
    scope: dict = {}
    exec(LOCKF, scope)
    monkeypatch.setattr(runlock, "_try_lock", scope["_lockf"])
    exp = make_run(run_name="nfs")
    exp.log_metrics({"a": 1.0}, step=0)
    exp.flush()
    assert expman.open_run(exp.run_dir).status == "RUNNING"          # reads in the writer's
    assert runlock.is_locked(exp.run_dir)                            # own process ...
    with pytest.raises(RunLockedError):
        make_run(run_name="nfs", resume=True)
    other = subprocess.run(                                          # ... leave it held
        [sys.executable, "-c", LOCKF + textwrap.dedent(f"""
            from pathlib import Path
            from expman import runlock
            runlock._try_lock = _lockf
            print(runlock.is_locked(Path({str(exp.run_dir)!r})))
        """)], env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)},
        capture_output=True, text=True, timeout=60, cwd=exp.run_dir.parent)
    assert other.stdout.strip() == "True", other.stderr
    exp.close()
    assert not runlock.is_locked(exp.run_dir)


# ---- issue 20 item 6: a FIFO planted as the lock file ------------------------------------------

def test_a_fifo_as_the_lock_file_never_hangs_a_listing(tmp_path):
    """A FIFO as writer.lock of a run marked RUNNING hung `expman list`, list_runs,
    clean and the dashboard (each probe opened it for reading and waited)."""
    from conftest import make_crashed_run
    from hostile import runfiles
    from expman import disk
    base = tmp_path / "experiments"
    run_dir = make_crashed_run(base, tmp_path)
    runfiles.fifo(run_dir / layout.LOCK_FILE)
    assert runlock.probe(run_dir) is None            # not a lock: pid and heartbeat decide
    assert runlock.is_locked(run_dir) is False
    assert runlock.holder(run_dir / layout.LOCK_FILE) == {}
    assert [r.status for r in expman.list_runs(base)] == ["CRASHED"]
    chosen, _skipped = disk.runs_to_clean(base, status=["CRASHED"])
    assert [r.path.name for r in chosen] == ["dead"]
    pkg_root = str(Path(expman.__file__).resolve().parent.parent)    # the expman under test
    res = subprocess.run([sys.executable, "-m", "expman", "list", "--base-dir", str(base)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=pkg_root))
    assert res.returncode == 0 and "dead" in res.stdout, res.stderr
    with pytest.raises(OSError, match="not a regular file"):
        runlock.acquire(run_dir)


def test_a_fifo_as_the_lock_file_never_hangs_the_dashboard(tmp_path):
    """/api/runs hung, and with it every later request (listings are shared)."""
    import json
    import urllib.request
    need("starlette")
    need("uvicorn")
    from conftest import make_crashed_run
    from hostile import runfiles
    from expman.dashboard.testing import running_server
    base = tmp_path / "experiments"
    run_dir = make_crashed_run(base, tmp_path)
    runfiles.fifo(run_dir / layout.LOCK_FILE)
    with running_server(base) as url:
        for _ in range(2):
            with urllib.request.urlopen(url + "api/runs", timeout=60) as r:
                body = json.loads(r.read())
            runs = body if isinstance(body, list) else body.get("runs", body)
            assert "dead" in json.dumps(runs) and "CRASHED" in json.dumps(runs)
