"""Reliability: signals, exits, crashes, fork, full disks, damaged files, close races, names.

Real processes, real threads, real signals and a real (tmpfs) full disk; the only
hook is the writer's test-only fault injection (``Core._set_fault``). See
docs/durability.md for the contract these tests hold the code to.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import expman
from expman import RunClosedError, WriterError, open_run
from expman import _core, refreader
from expman.errors import CorruptRunError, ExpmanValueError

POSIX = os.name == "posix"
LINUX = sys.platform.startswith("linux")
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX signals / fork")
IS_ROOT = POSIX and os.geteuid() == 0


# ---- helpers -----------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(expman.__file__).parent.parent), env.get("PYTHONPATH", "")])
    env.pop("PYTHONWARNINGS", None)
    return env


def _script(code: str, base: Path) -> str:
    # SIGINT at its default even when the test run was started from a background
    # shell (which makes children inherit it as ignored)
    return (f"import os, sys, time, json, signal, errno, threading\nimport expman\n"
            f"signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"BASE = {str(base)!r}\n" + textwrap.dedent(code))


def run_script(code: str, base: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _script(code, base)], cwd=base, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def spawn(code: str, base: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _script(code, base)], cwd=base, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 30) -> str:
    """The first stdout line starting with prefix (the child prints it, flushed)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            raise AssertionError(f"child never printed {prefix!r}; stderr: {proc.stderr.read()}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=10)
                raise AssertionError(f"child exited ({proc.returncode}) before {prefix!r}; "
                                     f"stderr: {proc.stderr.read()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()                          # never leave a looping child behind
        proc.communicate()
        raise
    return proc.returncode, out, err


def read(path) -> expman.Run:
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a clean run must read without a damage warning
        return open_run(path)


def only_run(base: Path, name: str) -> Path:
    runs = [p for p in (base / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def check_series(run: expman.Run, n: int | None = None) -> int:
    """Metrics a = step * 0.5, b = -step for steps 0..n-1, gap-free; returns n."""
    a, b = run.metrics["a"], run.metrics["b"]
    got = len(a)
    assert len(b) == got
    if n is not None:
        assert got == n
    assert list(a.steps) == list(range(got)), "not a gap-free prefix"
    assert list(b.steps) == list(range(got))
    assert list(a.values) == [i * 0.5 for i in range(got)]
    assert list(b.values) == [float(-i) for i in range(got)]
    return got


def task_count() -> int:
    return len(os.listdir("/proc/self/task")) if LINUX else threading.active_count()


LOG_LOOP = """
exp = expman.Experiment("sig", base_dir=BASE, capture_env=False, system_metrics=False{kw})
for i in range(5000):
    exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
print("READY", exp.run_dir, flush=True)
i = 5000
while True:
    exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
    i += 1
    if i % 1000 == 0:
        time.sleep(0.001)
"""


# ---- 1. signals --------------------------------------------------------------------

@posix_only
def test_sigterm_marks_killed_and_every_accepted_record_is_durable(base):
    proc = spawn(LOG_LOOP.format(kw=""), base)
    run_dir = wait_line(proc, "READY")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)                # a hang fails at finish's timeout
    assert rc == -signal.SIGTERM, err        # the signal still ends the process
    run = read(run_dir)
    assert run.status == "KILLED"
    assert run.meta["exit"] == {"reason": "signal", "signal": "SIGTERM"}
    stats = run.meta["stats"]
    assert stats["accepted"] == stats["written"] and stats["dropped"] == stats["pending"] == 0
    assert check_series(run) == stats["accepted"] >= 5000


@posix_only
@pytest.mark.parametrize("user_exits", [True, False])
def test_sigterm_chains_to_the_users_handler(base, user_exits):
    code = f"""
    seen = []
    def handler(signum, frame):
        seen.append(signum)
        print("USER-HANDLER", flush=True)
        if {user_exits!r}:
            sys.exit(143)
    signal.signal(signal.SIGTERM, handler)
    exp = expman.Experiment("sig", base_dir=BASE, capture_env=False)
    for i in range(3000):
        exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
    print("READY", exp.run_dir, flush=True)
    while not seen:
        time.sleep(0.01)
    # the user's graceful path: a checkpoint, then leave (no close: atexit does it)
    for i in range(3000, 3010):
        exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
    """
    proc = spawn(code, base)
    run_dir = wait_line(proc, "READY")
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    assert "USER-HANDLER" in out
    run = read(run_dir)
    assert run.status == "KILLED"
    assert run.meta["exit"]["signal"] == "SIGTERM"
    if user_exits:
        assert rc == 143, err
        assert run.meta["exit"]["code"] == 143
        assert check_series(run) == 3000
    else:
        assert rc == 0, err
        assert check_series(run) == 3010


@posix_only
@pytest.mark.parametrize("with_block", [True, False])
def test_sigint_marks_failed_keyboardinterrupt(base, with_block):
    body = LOG_LOOP.format(kw="")
    if with_block:
        body = body.replace('exp = expman.Experiment("sig", base_dir=BASE, capture_env=False, '
                            'system_metrics=False)',
                            'with expman.Experiment("sig", base_dir=BASE, capture_env=False, '
                            'system_metrics=False) as exp:')
        head, loop = body.split("as exp:\n", 1)
        body = head + "as exp:\n" + textwrap.indent(loop, "    ")
    proc = spawn(body, base)
    run_dir = wait_line(proc, "READY")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc in (-signal.SIGINT, 1, 130), err
    assert "KeyboardInterrupt" in err
    run = read(run_dir)
    assert run.status == "FAILED"
    assert run.meta["exit"]["type"] == "KeyboardInterrupt"
    stats = run.meta["stats"]
    assert check_series(run) == stats["accepted"] == stats["written"]


@posix_only
def test_sigterm_during_close_still_finishes_the_run(base, tmp_path):
    """SIGTERM landing inside close() (waiting for a background artifact copy). The
    child holds its copy until the main thread waits in close() and again until the
    signal has landed, so the signal always arrives mid-close (no race with the disk)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(300 << 20)           # sparse: cheap to make, copied in the background
    code = f"""
    import expman.artifacts, expman.lifecycle
    real_copy = expman.artifacts._copy_and_hash

    def main_thread_in(name):
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None and frame.f_code.co_name != name:
            frame = frame.f_back
        return frame is not None

    def held_copy(src, fd):
        deadline = time.monotonic() + 60
        while not main_thread_in("close") and time.monotonic() < deadline:
            time.sleep(0.005)
        print("IN_CLOSE", flush=True)
        while expman.lifecycle.exit_info is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return real_copy(src, fd)

    expman.artifacts._copy_and_hash = held_copy
    exp = expman.Experiment("sig", base_dir=BASE, capture_env=False)
    for i in range(1000):
        exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
    exp.save_artifact({str(big)!r})
    exp.close()
    print("CLOSED", flush=True)
    """
    proc = spawn(code, base)
    wait_line(proc, "IN_CLOSE")
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc)
    (run_dir,) = (base / "sig").iterdir()
    run = read(run_dir)
    assert check_series(run) == 1000
    assert "CLOSED" not in out, out
    assert rc == -signal.SIGTERM, err
    assert run.status == "KILLED"


# ---- 2. exit codes, 3. crashes ----------------------------------------------------------

ENDINGS = {
    "sys.exit(0)": ("sys.exit(0)", 0, "FINISHED"),
    "sys.exit(3)": ("sys.exit(3)", 3, "FAILED"),
    "exception": ("raise ValueError('boom at the end')", 1, "FAILED"),
    "os._exit": ("exp.flush(); os._exit(0)", 0, "CRASHED"),
    "SIGKILL": ("exp.flush(); os.kill(os.getpid(), signal.SIGKILL)", -9, "CRASHED"),
    "fall off": ("pass", 0, "FINISHED"),
}


@pytest.mark.parametrize("with_block", [True, False], ids=["with", "bare"])
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_exit_paths_record_the_truth(base, ending, with_block):
    if ending == "SIGKILL" and not POSIX:
        pytest.skip("POSIX signals")
    stmt, want_rc, want_status = ENDINGS[ending]
    log = 'for i in range(700):\n    exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)\n' \
          'print(exp.run_dir, flush=True)\n' + stmt + "\n"
    if with_block:
        code = 'with expman.Experiment("ex", base_dir=BASE, capture_env=False) as exp:\n' \
               + textwrap.indent(log, "    ")
    else:
        code = 'exp = expman.Experiment("ex", base_dir=BASE, capture_env=False)\n' + log
    res = run_script(code, base)
    assert res.returncode == want_rc, res.stderr
    run = read(res.stdout.split("\n")[0].strip())
    assert run.status == want_status
    assert check_series(run) == 700
    exit_info = run.meta["exit"]
    if ending == "sys.exit(3)":
        assert exit_info["reason"] == "exit" and exit_info["code"] == 3
    elif ending == "exception":
        assert exit_info["type"] == "ValueError"
        assert exit_info["message"] == "boom at the end"
        assert exit_info["location"].startswith("<string>:")
    elif want_status == "FINISHED":
        assert exit_info is None
    else:       # crashed: run.json still says RUNNING, the reader knows better
        assert run.meta["status"] == "RUNNING"


def test_crashed_from_a_stale_heartbeat_on_another_host(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1.0}, step=0)
    exp.flush()
    # a run written before writer locks (or on a filesystem without them) has no
    # lock file: only then does a stale heartbeat decide (test_runlock covers the lock)
    exp._lock.release()
    os.unlink(exp.run_dir / "writer.lock")
    meta = json.loads((exp.run_dir / "run.json").read_text())
    meta.update(host="some-other-host", pid=1)
    assert expman.reader.effective_status(meta, exp.run_dir) == "RUNNING"   # fresh files
    old = time.time() - 7 * meta["heartbeat_interval"]
    for name in ("metrics.bin", "events.jsonl", "run.json"):
        os.utime(exp.run_dir / name, (old, old))
    assert expman.reader.effective_status(meta, exp.run_dir) == "CRASHED"


def test_idle_writer_keeps_the_heartbeat_fresh(base, monkeypatch):
    monkeypatch.setattr(expman.experiment, "HEARTBEAT_INTERVAL", 0.05)
    exp = expman.Experiment("hb", base_dir=base, capture_env=False, flush_interval=0.01)
    try:
        exp.log_metrics({"a": 1.0})
        exp.flush()
        path = exp.run_dir / "metrics.bin"
        old = time.time() - 3600
        os.utime(path, (old, old))
        deadline = time.monotonic() + 5
        while os.stat(path).st_mtime < old + 1800 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.stat(path).st_mtime > time.time() - 60, "the idle writer never touched the file"
        assert path.stat().st_size > _core.HEADER_SIZE
    finally:
        exp.close()


# ---- 4. fork ---------------------------------------------------------------------------

FORK_SCRIPT = """
exp = expman.Experiment("fork", base_dir=BASE, capture_env=False, system_metrics=False)
stop = threading.Event()
def busy():                      # the writer is busy (its lock taken often) at fork time
    i = 0
    while not stop.is_set():
        exp.log_metrics({{"bg": float(i)}}, step=i)
        i += 1
bg = threading.Thread(target=busy)
bg.start()
for i in range(100):
    exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    msgs = {{}}
    calls = [("log_metrics", lambda: exp.log_metrics({{"x": 1.0}})), ("flush", exp.flush),
             ("stats", exp.stats), ("info", lambda: exp.info("hi")),
             ("log_params", lambda: exp.log_params({{"p": 1}})), ("close", exp.close)]
    for name, call in calls:
        try:
            call()
            msgs[name] = None
        except Exception as e:
            msgs[name] = type(e).__name__ + ": " + str(e)
    own = expman.Experiment("child", base_dir=BASE, capture_env=False)
    own.log_metrics({{"y": 2.0}}, step=0)
    own.close()
    msgs["own"] = str(own.run_dir)
    os.write(w, json.dumps(msgs).encode())
    os.close(w)
    {ending}
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
_, status = os.waitpid(pid, 0)
stop.set()
bg.join()
for i in range(100, 200):
    exp.log_metrics({{"a": i * 0.5, "b": -i}}, step=i)
exp.close()
print(json.dumps({{"child": json.loads(data), "status": status, "run": str(exp.run_dir)}}))
"""


@posix_only
@pytest.mark.parametrize("ending", ["os._exit(0)", "sys.exit(0)", "raise RuntimeError('child fails')"])
def test_fork_child_gets_a_clear_error_and_never_touches_the_parents_run(base, ending):
    res = run_script(FORK_SCRIPT.format(ending=ending), base, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    child = out["child"]
    for name in ("log_metrics", "flush", "stats", "info", "log_params"):
        assert child[name] and child[name].startswith("RunClosedError"), (name, child[name])
    assert str(os.getpid()) not in child["log_metrics"]
    assert "forked child" in child["log_metrics"]
    assert child["close"] is None            # closing the parent's run is a no-op in the child
    assert read(child["own"]).status == "FINISHED"        # the child's own run works
    assert read(child["own"]).metrics["y"].last == 2.0
    want_code = 1 if ending.startswith("raise") else 0
    assert os.waitstatus_to_exitcode(out["status"]) == want_code
    run = read(out["run"])
    assert run.status == "FINISHED"
    assert run.meta["exit"] is None
    assert check_series(run) == 200
    stats = run.meta["stats"]
    assert stats["accepted"] == stats["written"] == 200 + len(run.metrics["bg"])


@posix_only
def test_multiprocessing_fork_pool_workers(base):
    code = """
    import multiprocessing as mp
    exp = expman.Experiment("pool", base_dir=BASE, capture_env=False)
    def use_parent(i):
        try:
            exp.log_metrics({"w": float(i)})
            return "logged"
        except expman.RunClosedError as e:
            return "RunClosedError"
    def own_run(i):
        with expman.Experiment("worker", base_dir=BASE, capture_env=False) as e:
            e.log_metrics({"v": float(i)}, step=0)
        return str(e.run_dir)
    for i in range(50):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    with mp.get_context("fork").Pool(2) as pool:
        used = pool.map(use_parent, range(8))
        runs = pool.map(own_run, range(4))
    for i in range(50, 100):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    exp.close()
    print(json.dumps({"used": used, "runs": runs, "run": str(exp.run_dir)}))
    """
    res = run_script(code, base, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["used"] == ["RunClosedError"] * 8
    for r in out["runs"]:
        run = read(r)
        assert run.status == "FINISHED" and len(run.metrics["v"]) == 1
    run = read(out["run"])
    assert run.status == "FINISHED"
    assert check_series(run) == 100
    assert "w" not in run.metrics


@posix_only
def test_fork_pools_whose_tasks_open_runs_always_exit(base):
    """Leaving a fork Pool sends its idle workers SIGTERM while the parent holds
    the task queue's lock; a worker that inherited (or installed, for its task's
    run) expman's Python-level handler could note the signal just before
    blocking in SemLock.acquire and never act on it (5 of 60 exits hung). A
    process that owns no open run keeps SIGTERM's default: 200 exits, each
    bounded by a generous timeout (a hang fails), with handle_signals=True."""
    # A watchdog per trial: a hang fails the trial (exit 3, naming it) instead of
    # the test run. Output goes to a file, since a hung worker would hold a pipe
    # open; the script runs in a session of its own, killed whole at the end.
    out = base / "pool.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", _script("""
            import multiprocessing as mp
            parent = expman.Experiment("parent", base_dir=BASE, capture_env=False,
                                       system_metrics=False)
            def task(i):
                with expman.Experiment("pool", base_dir=BASE, capture_env=False,
                                       system_metrics=False) as e:
                    e.log_metrics({"a": float(i)})
                return i
            def hung(trial):
                print("HUNG", trial, flush=True)
                os._exit(3)
            for trial in range(200):
                watchdog = threading.Timer(60, hung, (trial,))
                watchdog.start()
                with mp.get_context("fork").Pool(4) as pool:
                    assert sorted(pool.map(task, range(4))) == [0, 1, 2, 3]
                watchdog.cancel()
            parent.close()
            print("DONE", flush=True)
        """, base)], cwd=base, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=200 * 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)     # the script and any worker left
            proc.wait()
    text = out.read_text()
    assert code == 0 and text.endswith("DONE\n"), text[-2000:]
    assert len(list((base / "pool").iterdir())) == 800


# ---- 5. disk full and I/O errors -----------------------------------------------------------

FAULTS = [errno.ENOSPC, errno.EIO] + ([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])


def accounting_exact(exp) -> dict:
    s = exp.stats()
    assert s["written"] + s["dropped"] + s["pending"] == s["accepted"]
    return s


@pytest.mark.parametrize("err", FAULTS, ids=[errno.errorcode[e] for e in FAULTS])
def test_write_fault_is_raised_counted_and_writing_resumes(make_run, err):
    exp = make_run(flush_interval=0.005)
    for i in range(50):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    exp.flush()
    exp._set_fault(write_every=1, err=err)
    for i in range(50, 100):
        exp.log_metrics({"c": float(i)}, step=i)      # a new key, lost with its frame
    with pytest.raises(WriterError) as info:
        exp.flush()
    assert info.value.errno == err
    assert info.value.filename.endswith("metrics.bin")
    s = accounting_exact(exp)
    assert s["pending"] == 0 and s["dropped"] == 50 and s["written"] == 50
    # the next call raises a new error; the call that raises accepts nothing
    exp.log_metrics({"c": 100.0}, step=100)
    with pytest.raises(WriterError):
        for _ in range(2000):
            exp.flush(timeout=1)
            exp.log_metrics({"c": 101.0}, step=101)
    exp._set_fault()                                 # space is back
    for i in range(200, 300):
        exp.log_metrics({"a": i * 0.5, "c": float(i)}, step=i)
    assert exp.flush() is True
    s = accounting_exact(exp)
    assert s["pending"] == 0
    exp.close()
    run = read(exp.run_dir)
    assert run.integrity["unknown_points"] == 0      # key definitions were rewritten
    assert run.integrity["rows"] == s["written"]
    assert list(run.metrics["c"].steps)[-100:] == list(range(200, 300))
    assert list(run.metrics["c"].values)[-100:] == [float(i) for i in range(200, 300)]
    assert list(run.metrics["a"].steps) == list(range(50)) + list(range(200, 300))
    loss = run.meta["data_loss"]
    assert loss["rows_dropped"] == s["dropped"] > 0
    assert loss["write_errors"] >= 1 and loss["last_error"] == os.strerror(err)
    assert run.meta["stats"]["accepted"] == run.meta["stats"]["written"] + loss["rows_dropped"]


def test_every_third_write_fails_accounting_stays_exact(make_run):
    exp = make_run(flush_interval=0.002, on_error="warn")
    exp._set_fault(write_every=3, err=errno.EIO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(3000):
            exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
            if i % 100 == 99:
                exp.flush()
        exp._set_fault()
        exp.close()
    s = exp.stats()
    assert s["written"] + s["dropped"] == s["accepted"] == 3000
    assert 0 < s["dropped"] < 3000
    run = read(exp.run_dir)
    assert run.integrity["unknown_points"] == 0
    assert len(run.metrics["a"]) == s["written"]
    for k, f in (("a", lambda i: i * 0.5), ("b", lambda i: float(-i))):
        ser = run.metrics[k]
        assert all(ser.values[j] == f(int(ser.steps[j])) for j in range(len(ser)))
        assert list(ser.steps) == sorted(set(ser.steps))
    assert run.meta["data_loss"]["rows_dropped"] == s["dropped"]


def test_on_error_warn_warns_instead_of_raising(make_run):
    exp = make_run(flush_interval=0.005, on_error="warn")
    exp._set_fault(write_every=1, err=errno.ENOSPC)
    exp.log_metrics({"a": 1.0}, step=0)
    with pytest.warns(RuntimeWarning, match="No space left"):
        exp.flush()
    with pytest.warns(RuntimeWarning, match="expman"):
        exp.log_metrics({"a": 2.0}, step=1)
        exp.flush()
    with pytest.warns(RuntimeWarning):
        exp.close()                                   # the last drop is reported at close
    s = exp.stats()
    assert s["dropped"] == s["accepted"] == 2


def test_log_metrics_never_blocks_and_close_is_bounded_while_the_disk_fails(make_run):
    exp = make_run(buffer_size=64 << 10, flush_interval=0.01, on_error="warn", block_timeout=1.0)
    exp._set_fault(write_every=1, fsync_every=1, err=errno.EIO)
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t_end = time.perf_counter() + 0.5
        n = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            exp.log_metrics({"a": float(n), "b": 1.0}, step=n)
            worst = max(worst, time.perf_counter() - t0)
            n += 1
        t0 = time.perf_counter()
        exp.close()
        close_time = time.perf_counter() - t0
    assert worst < 1.5, f"log_metrics blocked {worst:.3f} s"
    assert close_time < 2.0
    s = exp.stats()
    assert s["written"] + s["dropped"] == s["accepted"] == n
    meta = json.loads((exp.run_dir / "run.json").read_text())
    assert meta["data_loss"]["rows_dropped"] == s["dropped"] > 0


def test_fsync_failure_at_close_is_raised_and_recorded(make_run):
    exp = make_run()
    exp.log_metrics({"a": 1.0}, step=0)
    exp._set_fault(fsync_every=1, err=errno.EIO)
    with pytest.raises(WriterError) as info:
        exp.close()
    assert info.value.errno == errno.EIO
    meta = json.loads((exp.run_dir / "run.json").read_text())
    assert "Input/output error" in meta["write_error"]
    assert meta["status"] == "FINISHED"


@contextlib.contextmanager
def _tmpfs(mnt: Path, options: str):
    """A tmpfs mounted on mnt for the block (root on Linux only, else the test skips)."""
    if not (LINUX and IS_ROOT):
        pytest.skip("needs root on Linux to mount a tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 512 KiB tmpfs."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    with _tmpfs(mnt, "size=512k"):
        yield mnt


def _fill(path: Path, leave: int = 0) -> None:
    """Fill the filesystem holding path, leaving about `leave` bytes."""
    st = os.statvfs(path.parent)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with open(path, "wb", buffering=0) as f:
        try:
            f.write(b"\xff" * size)
            while True:
                f.write(b"\xff" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_real_full_disk_then_space_freed(tiny_fs):
    base = tiny_fs / "experiments"
    exp = expman.Experiment("full", base_dir=base, capture_env=False, flush_interval=0.005)
    try:
        for i in range(100):
            exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
        exp.flush()
        _fill(tiny_fs / "filler")
        i = _log_until_full(exp, 100, limit=200_000)
        s = accounting_exact(exp)
        assert s["dropped"] > 0
        os.unlink(tiny_fs / "filler")
        for j in range(i, i + 1000):
            exp.log_metrics({"a": j * 0.5, "b": -j}, step=j)
        assert exp.flush() is True
        exp.close()
    finally:
        if exp.status == "RUNNING":
            exp.close()
    s = exp.stats()
    assert s["written"] + s["dropped"] == s["accepted"]
    run = read(exp.run_dir)
    assert run.integrity["torn_bytes"] == run.integrity["corrupt_bytes"] == 0
    assert run.integrity["unknown_points"] == 0
    assert run.integrity["rows"] == s["written"]
    a = run.metrics["a"]
    assert all(a.values[k] == a.steps[k] * 0.5 for k in range(len(a)))
    assert list(a.steps[-1000:]) == list(range(i, i + 1000))
    assert run.meta["data_loss"]["rows_dropped"] == s["dropped"]


def test_start_on_a_full_disk_raises_and_leaves_nothing(tiny_fs):
    _fill(tiny_fs / "filler")
    before = task_count(), threading.active_count()
    with pytest.raises(OSError) as info:
        expman.Experiment("full", base_dir=tiny_fs / "experiments", capture_env=False)
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tiny_fs)) == ["filler"]
    assert (task_count(), threading.active_count()) == before


@posix_only
def test_run_folder_vanishing_mid_run_is_reported_and_never_hangs(make_run):
    import shutil
    exp = make_run(flush_interval=0.005)
    for i in range(1000):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    exp.flush()
    shutil.rmtree(exp.run_dir)
    deadline = time.monotonic() + 120              # a hang guard, not a speed bound
    with pytest.raises(WriterError) as info:       # noticed within a flush interval or so
        for i in itertools.count(1000):
            exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
            if i % 10_000 == 0:
                time.sleep(0.001)                  # the writer's turn on a busy machine
                if time.monotonic() > deadline:
                    break
    assert info.value.errno == errno.ENOENT and info.value.filename.endswith("metrics.bin")
    with pytest.raises(OSError):                   # close cannot write run.json: says so
        exp.close()
    stats = exp.stats()
    assert stats["dropped"] > 0 and stats["accepted"] == stats["written"] + stats["dropped"]
    assert exp.status == "FINISHED" and not exp.run_dir.exists()
    with pytest.raises(RunClosedError):
        exp.log_metrics({"a": 1.0})


# ---- 6. read-only or missing base dir --------------------------------------------------------

@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    if IS_ROOT:         # root ignores permission bits: a read-only mount instead
        with _tmpfs(d, "ro,size=64k"):
            yield d
    else:
        if not POSIX:
            pytest.skip("permission bits do not make a folder read-only on Windows")
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)


def _assert_fails_cleanly(base_dir, errnos):
    tasks, threads = task_count(), threading.active_count()
    with pytest.raises(OSError) as info:
        expman.Experiment("exp", "run", base_dir=base_dir, capture_env=False)
    assert info.value.errno in errnos, info.value
    assert threading.active_count() == threads
    assert task_count() == tasks, "a native thread was started"
    return info.value


def test_read_only_base_dir(readonly_dir):
    _assert_fails_cleanly(readonly_dir, {errno.EACCES, errno.EROFS, errno.EPERM})
    assert os.listdir(readonly_dir) == []
    _assert_fails_cleanly(readonly_dir / "deeper", {errno.EACCES, errno.EROFS, errno.EPERM})
    assert os.listdir(readonly_dir) == []


def test_base_dir_that_cannot_exist(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _assert_fails_cleanly(blocker / "experiments", {errno.ENOTDIR, errno.ENOENT, errno.EINVAL})
    assert isinstance(err, OSError)
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_failed_start_removes_the_folders_it_made(tmp_path):
    """A run folder that cannot be used (metrics.bin is a folder) leaves nothing behind."""
    base = tmp_path / "new" / "base"
    os.makedirs(base / "exp" / "run" / "metrics.bin")
    with pytest.raises(expman.RunExistsError):
        expman.Experiment("exp", "run", base_dir=base, capture_env=False)
    with pytest.raises(OSError):
        expman.Experiment("exp", "run", base_dir=base, capture_env=False, resume=True)
    assert (base / "exp" / "run" / "metrics.bin").is_dir()      # the user's data is untouched
    fresh = tmp_path / "fresh"
    with pytest.raises(expman.ExpmanValueError):
        expman.Experiment("exp", "run", base_dir=fresh, buffer_size=10, capture_env=False)
    assert not fresh.exists()


# ---- 7. resume after a crash -------------------------------------------------------------------

def _crashed_run(base: Path, n: int = 300) -> Path:
    code = """
    exp = expman.Experiment("res", "r1", base_dir=BASE, capture_env=False)
    for i in range(%d):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
        if i %% 100 == 99:
            exp.flush()
    print(exp.run_dir, flush=True)
    os.kill(os.getpid(), 9) if hasattr(signal, "SIGKILL") else os._exit(1)
    """ % n
    res = run_script(code, base)
    return Path(res.stdout.strip())


@pytest.mark.parametrize("tail", ["torn frame", "zeros", "torn header"])
def test_resume_cuts_a_torn_tail_before_appending(base, tail):
    run_dir = _crashed_run(base)
    metrics = run_dir / "metrics.bin"
    good = metrics.read_bytes()
    assert read(run_dir).status == "CRASHED"
    # a crash mid-write: part of a further frame (or preallocated zeros)
    last_frame = good[-40:]
    junk = {"torn frame": good[16:16 + 30], "zeros": b"\0" * 4096,
            "torn header": last_frame[:5]}[tail]
    with open(metrics, "ab") as f:
        f.write(junk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torn = open_run(run_dir)
    assert torn.integrity["torn_bytes"] == len(junk) and torn.integrity["corrupt_bytes"] == 0
    with expman.Experiment("res", "r1", base_dir=base, capture_env=False, resume=True) as exp:
        for i in range(300, 400):
            exp.log_metrics({"a": i * 0.5, "b": -i})       # step=None continues from 299
    data = metrics.read_bytes()
    assert data[:len(good)] == good                         # appended right after the last frame
    run = read(run_dir)
    assert run.integrity["torn_bytes"] == 0 and run.integrity["corrupt_bytes"] == 0
    assert run.status == "FINISHED" and len(run.meta["resumed"]) == 1
    assert check_series(run) == 400
    series, torn_bytes = refreader.read_metrics(data)
    assert torn_bytes == 0 and len(series["a"]) == 400


def test_resume_refuses_to_append_after_mid_file_damage(base):
    run_dir = _crashed_run(base)
    metrics = run_dir / "metrics.bin"
    data = bytearray(metrics.read_bytes())
    data[frame_ends(bytes(data))[0] + 20] ^= 0x10           # inside the second frame
    metrics.write_bytes(bytes(data))
    with pytest.raises(CorruptRunError):
        expman.Experiment("res", "r1", base_dir=base, capture_env=False, resume=True)
    assert metrics.read_bytes() == bytes(data)              # untouched
    with pytest.warns(RuntimeWarning, match="damaged"):
        run = open_run(run_dir, salvage=True)
    assert run.integrity["corrupt_bytes"] > 0
    assert len(run.metrics["a"]) == 200                     # frames 1 and 3 resynchronised
    assert list(run.metrics["a"].steps) == list(range(100)) + list(range(200, 300))


# ---- 8. reader under damage: exhaustive truncation -------------------------------------------

def _small_metrics(base: Path) -> bytes:
    exp = expman.Experiment("trunc", base_dir=base, capture_env=False)
    for i in range(12):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
        if i % 3 == 2:
            exp.flush()                                     # one frame per flush
        if i == 7:
            exp.log_metrics({"late": float("nan")}, step=i)
    exp.close()
    return (exp.run_dir / "metrics.bin").read_bytes()


def frame_ends(data: bytes) -> list[int]:
    ends, pos = [], _core.HEADER_SIZE
    while pos < len(data):
        (length,) = __import__("struct").unpack_from("<I", data, pos)
        pos += 12 + length
        ends.append(pos)
    assert pos == len(data)
    return ends


def _points(columns) -> dict:
    return {k: [(int(s), float(v).hex()) for s, v in zip(c[0], c[2])] for k, c in columns.items()}


def test_truncation_at_every_offset_keeps_exactly_the_complete_frames(base):
    data = _small_metrics(base)
    ends = frame_ends(data)
    assert len(ends) >= 4 and len(data) < 2000
    full = _points(_core.decode_metrics(data)[0])
    for cut in range(len(data) + 1):
        part = data[:cut]
        columns, _keys, report = _core.decode_metrics(part)
        complete = [e for e in ends if e <= cut]
        assert report["end"] == (complete[-1] if complete else min(cut, _core.HEADER_SIZE)
                                 if cut >= _core.HEADER_SIZE else 0), cut
        assert report["corrupt_bytes"] == 0 and report["unknown_points"] == 0
        assert report["frames"] == len(complete)
        got = _points(columns)
        if cut >= _core.HEADER_SIZE:
            assert report["torn_bytes"] == cut - report["end"]
            ref, torn = refreader.read_metrics(part)
            assert torn == report["torn_bytes"]
            assert got == {k: [(s, float(v).hex()) for s, _t, v in pts] for k, pts in ref.items()}
        # a prefix of what was logged, key by key
        for k, pts in got.items():
            assert pts == full[k][:len(pts)]
        # and exactly the rows of the complete frames
        if complete:
            want = _points(_core.decode_metrics(data[:complete[-1]])[0])
            assert got == want


# ---- 9. close races ---------------------------------------------------------------------------

class PyFloat:
    """A number whose conversion runs Python code: a thread switch can happen mid-call."""

    def __init__(self, v: float) -> None:
        self.v = v

    def __float__(self) -> float:
        return self.v


@pytest.mark.parametrize("value", ["float", "python __float__"])
def test_close_while_8_threads_log(make_run, value):
    # the race with a Python __float__ is narrow: a few rounds make it show reliably
    for _ in range(1 if value == "float" else 4):
        _close_race(make_run, PyFloat if value != "float" else float)


def _close_race(make_run, wrap) -> None:
    exp = make_run(flush_interval=0.01, buffer_size=1 << 16)
    counts = [0] * 8
    errors: list[BaseException] = []
    go = threading.Barrier(9)

    def worker(t: int) -> None:
        go.wait()
        i = 0
        try:
            while True:
                exp.log_metrics({f"t{t}": wrap(float(i)), "all": 1.0}, step=i)
                i += 1
        except RunClosedError:
            pass
        except BaseException as e:      # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            counts[t] = i

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        go.wait()
        deadline = time.monotonic() + 10
        while exp.stats()["accepted"] < 20_000 and time.monotonic() < deadline:
            time.sleep(0.001)
        exp.close()
        for th in threads:
            th.join(timeout=10)
        assert not any(th.is_alive() for th in threads), "a logging thread hung after close()"
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    with pytest.raises(RunClosedError):
        exp.log_metrics({"late": 1.0})
    s = exp.stats()
    assert s["accepted"] == s["written"] == sum(counts) and s["pending"] == 0
    run = read(exp.run_dir)
    for t in range(8):
        if counts[t] == 0:              # starved until close (seen on a loaded machine)
            assert f"t{t}" not in run.metrics
            continue
        ser = run.metrics[f"t{t}"]
        assert list(ser.steps) == list(range(counts[t]))
        assert list(ser.values) == [float(i) for i in range(counts[t])]
    assert len(run.metrics["all"]) == sum(counts)


def test_close_from_many_threads_and_del_is_idempotent(make_run):
    exp = make_run(flush_interval=0.05)
    for i in range(10_000):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    seen_status = []

    def closer() -> None:
        exp.close()
        seen_status.append(exp.status)       # close() returns only once the run is closed

    threads = [threading.Thread(target=closer) for _ in range(4)]
    for th in threads:
        th.start()
    exp.close()
    for th in threads:
        th.join(timeout=10)
    assert seen_status == ["FINISHED"] * 4
    exp.close()
    exp.__del__()
    expman.lifecycle._at_exit()
    run = read(exp.run_dir)
    assert run.status == "FINISHED"
    assert [e["status"] for e in run.events if e.get("kind") == "status"] == ["RUNNING", "FINISHED"]
    assert check_series(run) == 10_000


def test_unclosed_run_closes_at_exit_and_when_collected(base):
    code = """
    import gc, warnings
    warnings.simplefilter("ignore", ResourceWarning)
    a = expman.Experiment("gc", "collected", base_dir=BASE, capture_env=False)
    b = expman.Experiment("gc", "at_exit", base_dir=BASE, capture_env=False)
    for i in range(100):
        a.log_metrics({"a": i * 0.5, "b": -i}, step=i)
        b.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    del a
    gc.collect()
    """
    res = run_script(code, base)
    assert res.returncode == 0, res.stderr
    for name in ("collected", "at_exit"):
        run = read(base / "gc" / name)
        assert run.status == "FINISHED"
        assert check_series(run) == 100


# ---- 11. names ----------------------------------------------------------------------------------

BAD_NAMES = ["..", ".", "../escape", "a/b", "a\\b", "/abs", "\\abs", "a\x00b", "C:", "C:evil",
             "c:\\x", "CON", "nul", "Aux.txt", "com1", "LPT9.log", "", " lead", "trail ", "dot."]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_experiment_and_run_names_are_refused(tmp_path, bad):
    base = tmp_path / "base"
    base.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(ExpmanValueError):
        expman.Experiment(bad, base_dir=base, capture_env=False)
    with pytest.raises(ExpmanValueError):
        expman.Experiment("ok", bad, base_dir=base, capture_env=False)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("bad", ["../x", "../../x", "a/../../x", "/etc/x", "\\x", "C:/x", "C:x",
                                 "\\\\server\\share\\x", "a\x00b", "CON", "ok/NUL.txt", "..", ""])
def test_bad_artifact_names_are_refused(make_run, tmp_path, bad):
    exp = make_run()
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    before = _tree(tmp_path)
    with pytest.raises(ExpmanValueError):
        exp.save_artifact(src, name=bad)
    assert _tree(tmp_path) == before
    dst = exp.save_artifact(src, name="ckpt/epoch1.pt")
    assert dst == exp.run_dir / "artifacts" / "ckpt" / "epoch1.pt" and dst.read_bytes() == b"weights"


@posix_only
def test_symlinked_folders_are_not_followed_out_of_base_dir(tmp_path):
    base = tmp_path / "base"
    outside = tmp_path / "outside"
    (base / "exp").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, base / "exp" / "run")
    os.symlink(outside, base / "linked")
    with pytest.raises(ExpmanValueError):
        expman.Experiment("exp", "run", base_dir=base, capture_env=False, resume=True)
    with pytest.raises(ExpmanValueError):
        expman.Experiment("linked", base_dir=base, capture_env=False)
    with pytest.raises(ExpmanValueError):
        expman.Experiment("linked", "r", base_dir=base, capture_env=False)
    assert os.listdir(outside) == []
    # an artifacts folder replaced by a symlink is not written through
    exp = expman.Experiment("exp", "real", base_dir=base, capture_env=False)
    try:
        art = exp.run_dir / "artifacts"
        os.rmdir(art)
        os.symlink(outside, art)
        src = tmp_path / "f.txt"
        src.write_text("x")
        with pytest.raises(ExpmanValueError):
            exp.save_artifact(src)
        assert os.listdir(outside) == []
    finally:
        exp.close()


# ---- loss is durable before it is forgotten (issue 26 item 1) -----------------------

def _log_until_full(exp, start: int, limit: int = 400_000) -> int:
    """Log 3-key rows until the writer reports ENOSPC; returns the next step."""
    i, raised = start, None
    while raised is None and i < limit:
        try:
            exp.log_metrics({"a": i * 0.5, "b": -i, "c": 1.0}, step=i)
            i += 1
            if i % 500 == 0:
                exp.flush()
        except WriterError as e:
            raised = e
    assert raised is not None and raised.errno == errno.ENOSPC
    return i


def _cli(*args: str) -> subprocess.CompletedProcess:
    # cwd: not the source tree, whose expman/ (without the built core) would shadow
    # the installed package that CI tests
    return subprocess.run([sys.executable, "-m", "expman", *args], env=_env(),
                          cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120)


def test_closed_while_the_disk_is_full_every_reader_reports_the_loss(tiny_fs):
    base = tiny_fs / "experiments"
    exp = expman.Experiment("full", base_dir=base, capture_env=False, flush_interval=0.005,
                            system_metrics=False)
    for i in range(100):
        exp.log_metrics({"a": i * 0.5, "b": -i}, step=i)
    exp.flush()
    _fill(tiny_fs / "filler")
    _log_until_full(exp, 100)
    with pytest.raises(OSError) as info:
        exp.close()                      # still full: run.json cannot be rewritten
    assert info.value.errno == errno.ENOSPC
    s = exp.stats()
    assert s["dropped"] > 0
    meta = json.loads((exp.run_dir / "run.json").read_text())
    assert "data_loss" not in meta       # what the reader must not depend on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = open_run(exp.run_dir).integrity["data_loss"]
    assert loss is not None and loss["rows_dropped"] == s["dropped"]
    assert loss["write_errors"] >= 1 and loss["last_error"] == os.strerror(errno.ENOSPC)
    from expman.verify import verify_run
    report = verify_run(exp.run_dir)
    assert report["ok"] is False and report["data_loss"]["rows_dropped"] == s["dropped"]
    line, = expman.list_runs(base)
    assert line.data_loss and line.data_loss["rows_dropped"] == s["dropped"]
    os.unlink(tiny_fs / "filler")        # room for the CLI's own output, nothing else
    assert _cli("verify", str(exp.run_dir)).returncode != 0
    shown = _cli("list", "--base-dir", str(base))
    assert shown.returncode == 0 and "*" in shown.stdout, shown


def test_sigkill_after_losing_rows_the_loss_is_on_disk(tiny_fs):
    base = tiny_fs / "experiments"
    base.mkdir()
    proc = spawn(f"""
        from pathlib import Path
        from expman import WriterError
        exp = expman.Experiment("kill", base_dir=BASE, capture_env=False,
                                flush_interval=0.005, system_metrics=False)
        for i in range(100):
            exp.log_metrics({{"a": 1.0}}, step=i)
        exp.flush()
        filler = Path({str(tiny_fs / "filler")!r})
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
        i = 100
        while True:
            try:
                exp.log_metrics({{"a": 1.0, "b": 2.0}}, step=i)
                i += 1
                if i % 200 == 0:
                    exp.flush()
            except WriterError:
                break
        filler.unlink()                  # space back: the rest is written
        for j in range(i, i + 100):
            exp.log_metrics({{"a": 1.0}}, step=j)
        exp.flush()
        print("LOST", exp.stats()["dropped"], exp.run_dir, flush=True)
        time.sleep(600)
    """, base)
    try:
        dropped, run_dir = wait_line(proc, "LOST ", timeout=120).split(" ", 1)
    finally:
        proc.kill()
        finish(proc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = open_run(run_dir)
    assert run.status == "CRASHED"
    assert run.integrity["data_loss"]["rows_dropped"] == int(dropped) > 0
    assert expman.list_runs(base)[0].data_loss["rows_dropped"] == int(dropped)


def test_a_rank_streams_loss_is_recorded_for_that_rank_and_the_run(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
                "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-loss")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    exps = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        exps[rank] = expman.Experiment("ranks", base_dir=tmp_path, capture_env=False,
                                       system_metrics=False, on_error="warn")
    exps[1]._set_fault(write_every=1)    # every write of rank 1 fails (ENOSPC)
    for i in range(50):
        exps[0].log_metrics({"a": 1.0}, step=i)
        exps[1].log_metrics({"a": 1.0}, step=i)
    with pytest.warns(RuntimeWarning):
        exps[1].flush()
    lost = exps[1].stats()["dropped"]
    assert lost == 50
    exps[0].close()
    run_dir = exps[0].run_dir
    assert open_run(run_dir, rank=1).integrity["data_loss"]["rows_dropped"] == lost
    whole = open_run(run_dir).integrity          # rank 0's view names every other rank's loss
    assert whole["data_loss"] is None and whole["rank_data_loss"][1]["rows_dropped"] == lost
    from expman.reader import list_runs
    (line,) = list_runs(run_dir.parent.parent)
    assert line.data_loss["rank"] == 1 and line.data_loss["rows_dropped"] == lost
    from expman.verify import verify_run
    assert verify_run(run_dir)["ok"] is False
    exps[1]._set_fault(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exps[1].close()
