"""Issue 14.2: an unclosed run collected by the GC in one of its own helper
threads still closes FINISHED (it used to try to join the current thread)."""

from __future__ import annotations

import gc
import threading
import warnings
from pathlib import Path

import orjson

import expman
from expman import environment
from expman.layout import RUN_FILE


def _busy_probe(cwd: str) -> dict:
    """Stands in for git/package probing: allocates containers, so with a low GC
    threshold the collector runs inside the env-probe thread."""
    junk = [{"i": i, "l": [i]} for i in range(400)]
    return {"probe": len(junk)}


def test_runs_collected_in_helper_threads_end_finished(base: Path, monkeypatch) -> None:
    monkeypatch.setattr(environment, "slow", _busy_probe)
    old = gc.get_threshold()
    helper_collections = []

    def note(phase: str, info: dict) -> None:
        if phase == "start" and threading.current_thread().name.startswith("expman-"):
            helper_collections.append(threading.current_thread().name)

    gc.callbacks.append(note)
    gc.set_threshold(50)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(500):
                exp = expman.Experiment("gc", f"r{i:03d}", base_dir=base, capture_env=True,
                                        handle_signals=False)
                exp.log_metrics({"x": float(i)}, step=0)
                del exp          # rebound without close: the GC closes it, in any thread
            gc.collect()
            for t in threading.enumerate():
                if t.name == "expman-env":
                    t.join(timeout=30)
            gc.collect()
    finally:
        gc.set_threshold(*old)
        gc.callbacks.remove(note)
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert runtime == []
    statuses = {}
    for i in range(500):
        meta = orjson.loads((base / "gc" / f"r{i:03d}" / RUN_FILE).read_bytes())
        statuses[meta["status"]] = statuses.get(meta["status"], 0) + 1
    assert statuses == {"FINISHED": 500}
    # the point of the test: some of those closes really ran in a helper thread
    assert helper_collections, "the GC never ran in an expman helper thread"
