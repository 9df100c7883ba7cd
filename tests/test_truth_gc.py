"""Issue 14.2: an unclosed run collected by the GC in one of its own helper
threads still closes FINISHED (it used to try to join the current thread,
leaving run.json RUNNING behind a RuntimeWarning)."""

from __future__ import annotations

import gc
import threading
import warnings
from pathlib import Path

import orjson

import expman
from expman import environment
from expman.layout import RUN_FILE

RUNS = 500
FORCED_EVERY = 10       # a full collection in the probe thread for every 10th run (cost)


def test_runs_collected_in_their_own_env_thread_end_finished(base: Path, monkeypatch) -> None:
    """Each run is dropped without close(); its env-probe thread then allocates
    (gen-0 passes with threshold 50) and, for every 10th run, runs a full
    collection, so those runs' finalizers surely run inside that very thread."""
    gates: list[tuple[threading.Event, threading.Event]] = []
    finalized_in: list[str] = []

    def probe_that_collects(cwd: str) -> dict:
        go, done = gates[-1]
        forced = len(gates) % FORCED_EVERY == 0
        try:
            assert go.wait(30), "the test never released the probe"
            junk = [{"i": i, "l": [i]} for i in range(200)]
            if forced:
                gc.collect()
            return {"probe": len(junk)}
        finally:
            done.set()

    real_del = expman.Experiment.__del__

    def noting_del(self) -> None:
        finalized_in.append(threading.current_thread().name)
        real_del(self)

    monkeypatch.setattr(environment, "slow", probe_that_collects)
    monkeypatch.setattr(expman.Experiment, "__del__", noting_del)
    old = gc.get_threshold()
    gc.set_threshold(50)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(RUNS):
                go, done = threading.Event(), threading.Event()
                gates.append((go, done))
                # no sampler: its thread holds the run for a moment each tick, which
                # would let a run outlive the final gc.collect() below
                exp = expman.Experiment("gc", f"r{i:03d}", base_dir=base, capture_env=True,
                                        handle_signals=False, system_metrics=False)
                exp.log_metrics({"x": float(i)}, step=0)
                # rebound without close: the GC closes it. Not in this thread before
                # the probe is released, though: that close would wait for the probe
                gc.disable()
                del exp
                go.set()
                gc.enable()
                assert done.wait(30)
            for t in threading.enumerate():
                if t.name == "expman-env":
                    t.join(timeout=30)
            gc.collect()
    finally:
        gc.set_threshold(*old)
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert runtime == []
    statuses: dict[str, int] = {}
    for i in range(RUNS):
        meta = orjson.loads((base / "gc" / f"r{i:03d}" / RUN_FILE).read_bytes())
        statuses[meta["status"]] = statuses.get(meta["status"], 0) + 1
    assert statuses == {"FINISHED": RUNS}
    # the point of the test: the finalizers really ran inside the env-probe threads
    assert finalized_in.count("expman-env") >= RUNS // FORCED_EVERY, finalized_in[:10]
