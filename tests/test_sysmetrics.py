"""The system-metrics sampler: its rows, its thread, its rules (docs in expman/sysmetrics.py)."""

from __future__ import annotations

import gc
import inspect
import subprocess
import sys
import threading
import time

import pytest

import expman
from conftest import run_python, need
from expman import sysmetrics
from expman.errors import ExpmanTypeError, ExpmanValueError

psutil = need("psutil")

PROC_KEYS = {"system/proc/cpu_percent", "system/proc/rss_bytes", "system/proc/threads"}
NODE_KEYS = {"system/cpu_percent", "system/mem_used_bytes", "system/mem_percent"}


class FakeRun:
    """A sink with the core's side channel: records (row, step) like _log_side would."""

    def __init__(self) -> None:
        self.rows: list[tuple[dict[str, float], int]] = []
        self.warnings: list[str] = []
        self.lock = threading.Lock()

    def _log_side(self, metrics: dict[str, float], step: int) -> None:
        with self.lock:
            self.rows.append((dict(metrics), step))

    def warn(self, msg: object) -> None:
        self.warnings.append(str(msg))


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


def test_sample_has_process_and_node_series_with_sane_values():
    sampler = sysmetrics.SystemSampler(psutil, node=True)
    # the child says when it has started: its memory no longer grows under the sample
    child = subprocess.Popen([sys.executable, "-c",
                              "import time; print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        own = psutil.Process().memory_info().rss
        child_rss = psutil.Process(child.pid).memory_info().rss
        row = sampler.sample()
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert PROC_KEYS | NODE_KEYS <= set(row)
    assert all(k.startswith("system/") for k in row)
    assert all(isinstance(v, float) for v in row.values())
    # RSS counts the child too (a DataLoader worker's memory is the run's memory)
    assert row["system/proc/rss_bytes"] >= own + child_rss * 0.5
    assert row["system/proc/threads"] >= 1
    assert 0 <= row["system/mem_percent"] <= 100
    assert 0 < row["system/mem_used_bytes"] <= psutil.virtual_memory().total
    for k, v in row.items():
        if k.endswith("_per_s"):
            assert v >= 0, k


def test_io_rates_are_per_second_deltas():
    # read before the sampler takes its base, and after it samples: the counters only
    # grow, so other processes' traffic meanwhile cannot make the bound false
    before = psutil.net_io_counters().bytes_sent
    sampler = sysmetrics.SystemSampler(psutil, node=True)
    if sampler._last_io is None or sampler._last_io[2] != sampler._last_io[2]:
        pytest.skip("this host exposes no network counters")
    import socket
    a, b = socket.socketpair()
    with a, b:                                    # loopback traffic shows in the counters
        for _ in range(64):
            a.sendall(b"x" * 65536)
            b.recv(1 << 20)
    sampler._last_t -= 1.0                        # pretend a second passed: rate = delta
    row = sampler.sample()
    after = psutil.net_io_counters().bytes_sent
    assert "system/net_sent_bytes_per_s" in row
    assert row["system/net_sent_bytes_per_s"] <= (after - before) * 1.01 + 1


def test_node_metrics_only_on_local_rank_zero(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not sysmetrics.samples_node()
    row = sysmetrics.SystemSampler(psutil).sample()
    assert set(row) == PROC_KEYS                 # no host-wide series from rank 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert sysmetrics.samples_node()
    monkeypatch.delenv("LOCAL_RANK")
    assert sysmetrics.samples_node()


def test_thread_logs_side_rows_with_sample_index_as_step():
    sink = FakeRun()
    sampler = sysmetrics.start_for(sink, 0.02)
    assert sampler is not None and sampler.thread.daemon
    try:
        wait_for(lambda: len(sink.rows) >= 3)
    finally:
        sampler.stop()
    assert not sampler.thread.is_alive()
    steps = [step for _, step in sink.rows]
    assert steps == list(range(len(steps)))      # the step is the sample index
    assert all(PROC_KEYS <= set(row) for row, _ in sink.rows)
    assert sampler.error is None


class PerThreadCpu:
    """psutil, with psutil's rule for ``cpu_percent(None)`` made exact: a thread's
    first call only primes its clock (0.0); later calls measure (here: 50.0)."""

    def __init__(self) -> None:
        self.primed: set[int] = set()

    def cpu_percent(self, interval=None):
        tid = threading.get_ident()
        if tid not in self.primed:
            self.primed.add(tid)
            return 0.0
        return 50.0

    def __getattr__(self, name):
        return getattr(psutil, name)


def test_the_first_node_cpu_sample_is_measured_not_the_priming_zero():
    """Issue 22.8: the first system/cpu_percent was always 0.0, because the sampler
    was primed in the thread that made it and psutil keeps that base per thread."""
    sink = FakeRun()
    thread = sysmetrics.SamplerThread(sink, 0.001, sysmetrics.SystemSampler(
        PerThreadCpu(), node=True, gpus=False)).start()
    try:
        wait_for(lambda: len(sink.rows) >= 1)
    finally:
        thread.stop()
    first, step = sink.rows[0]
    assert (step, first["system/cpu_percent"]) == (0, 50.0)


def test_stop_from_the_sampler_thread_does_not_join_itself():
    sink = FakeRun()
    holder: dict[str, sysmetrics.SamplerThread] = {}
    done = threading.Event()

    def log_side(metrics, step):
        holder["s"].stop(timeout=30)             # as a close() run on this thread would
        done.set()

    sink._log_side = log_side                     # type: ignore[method-assign]
    holder["s"] = sysmetrics.start_for(sink, 0.01)
    assert done.wait(20)
    holder["s"].thread.join(20)
    assert not holder["s"].thread.is_alive()


def test_a_failing_sink_stops_the_thread_quietly():
    class Closed(FakeRun):
        def _log_side(self, metrics, step):
            raise expman.RunClosedError("run exp/r is finished")
    sink = Closed()
    s = sysmetrics.start_for(sink, 0.01)
    s.thread.join(20)
    assert not s.thread.is_alive()
    assert isinstance(s.error, expman.RunClosedError)


def test_thread_holds_no_strong_reference_to_the_run():
    sink = FakeRun()
    s = sysmetrics.start_for(sink, 0.01)
    wait_for(lambda: len(sink.rows) >= 1)  # noqa: F821 (deleted only below)
    del sink
    gc.collect()
    s.thread.join(20)                             # it notices the run is gone and ends
    assert not s.thread.is_alive()


def test_options_off_default_and_bad_values():
    assert sysmetrics.interval_from_option(False) is None
    assert sysmetrics.interval_from_option(0) is None
    assert sysmetrics.interval_from_option(True) == sysmetrics.DEFAULT_INTERVAL == 10.0
    default = inspect.signature(expman.Experiment.__init__).parameters["system_metrics"].default
    assert default is None                  # the documented default: every 10 s with psutil
    assert sysmetrics.interval_from_option(None) is None    # validates; start_for decides
    assert sysmetrics.interval_from_option(2) == 2.0
    assert sysmetrics.start_for(FakeRun(), False) is None
    with pytest.raises(ExpmanTypeError, match="system_metrics.*'10s'"):
        sysmetrics.interval_from_option("10s")
    with pytest.raises(ExpmanValueError, match="system_metrics.*-1"):
        sysmetrics.interval_from_option(-1)
    with pytest.raises(ExpmanValueError, match="nan"):
        sysmetrics.interval_from_option(float("nan"))


def test_experiment_rejects_a_bad_option_before_making_a_folder(base):
    with pytest.raises(ExpmanTypeError, match="system_metrics"):
        expman.Experiment("e", base_dir=base, system_metrics="often", capture_env=False)
    assert list(base.iterdir()) == []


def test_without_psutil_the_run_is_told_once_and_nothing_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)     # import psutil -> ImportError
    sink = FakeRun()
    assert sysmetrics.start_for(sink, 0.01) is None
    assert len(sink.warnings) == 1
    assert "psutil" in sink.warnings[0] and "expman-logger[system]" in sink.warnings[0]
    quiet = FakeRun()                       # the default, not asked for: nothing to say
    assert sysmetrics.start_for(quiet, None) is None and quiet.warnings == []


def test_a_core_without_the_side_channel_gets_no_sampler():
    class NoSide:
        def warn(self, msg):
            raise AssertionError("nothing to say: sampling is simply not possible")
    assert sysmetrics.start_for(NoSide(), 0.01) is None


def test_experiment_records_system_series_without_touching_the_step_counter(base):
    with expman.Experiment("e", base_dir=base, capture_env=False, system_metrics=0.02) as exp:
        for i in range(5):
            exp.log_metrics({"loss": 1.0 / (i + 1)})
        wait_for(lambda: exp._sampler is not None and exp._sampler.samples >= 3)
        exp.log_metrics({"loss": 0.0})
    run = expman.open_run(exp.run_dir)
    assert list(run.metrics["loss"].steps) == list(range(6))      # the counter is the user's
    cpu = run.metrics["system/proc/cpu_percent"]
    assert list(cpu.steps) == list(range(len(cpu)))               # sample index
    assert len(cpu) >= 3
    assert list(cpu.times) == sorted(cpu.times)


class SideProbe(expman.Experiment):
    """An Experiment whose side channel records rows in memory: tests the
    start-at-init / stop-at-close wiring on any core."""

    def _log_side(self, metrics, step):
        self.side_rows.append((dict(metrics), step))


def test_experiment_starts_the_sampler_and_close_stops_it(base):
    SideProbe.side_rows = []
    exp = SideProbe("e", base_dir=base, capture_env=False, system_metrics=0.02)
    try:
        exp.log_metrics({"loss": 1.0})
        sampler = exp._sampler
        assert sampler is not None and sampler.thread.is_alive()
        wait_for(lambda: len(SideProbe.side_rows) >= 2)
    finally:
        exp.close()
    assert not sampler.thread.is_alive()              # joined by close, before the drain
    n = len(SideProbe.side_rows)
    assert [step for _, step in SideProbe.side_rows] == list(range(n))
    assert exp.last_step == 0                          # the user's counter: one call, step 0
    off = SideProbe("e", base_dir=base, capture_env=False, system_metrics=False)
    assert off._sampler is None
    off.close()


def test_import_expman_loads_no_sampler_nor_scale_libraries(tmp_path):
    proc = run_python("""
        import sys, expman
        heavy = {"psutil", "pynvml", "fsspec", "s3fs", "duckdb", "pyarrow", "expman.sysmetrics"}
        assert not heavy & set(sys.modules), heavy & set(sys.modules)
        expman.Experiment("e", base_dir="runs", capture_env=False, system_metrics=False).close()
        assert "psutil" not in sys.modules, "a run without system metrics loaded psutil"
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
