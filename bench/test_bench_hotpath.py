"""pytest-benchmark: the log_metrics hot path beside a no-op method call (the floor).

    pytest bench/test_bench_hotpath.py --benchmark-only

The dict is built once, outside the timed call, so the numbers are the call
itself. bench/compare.py measures the same thing against the peers.
"""

from __future__ import annotations

import pytest

from expman import Experiment

KEYS20 = [f"metric_{i:02d}" for i in range(20)]


class NoOp:
    def log_metrics(self, metrics, step=None):
        pass


@pytest.fixture
def exp(tmp_path):
    e = Experiment("bench", base_dir=tmp_path, capture_env=False)
    yield e
    e.close()


def _twenty():
    return {k: float(i) for i, k in enumerate(KEYS20)}


@pytest.mark.benchmark(group="log_metrics 2 keys", disable_gc=True, warmup=True)
def test_log_metrics_2_keys(benchmark, exp, no_gc):
    d = {"loss": 0.5, "acc": 0.25}
    benchmark(exp.log_metrics, d)          # step=None: last step + 1
    assert exp.stats()["dropped"] == 0


@pytest.mark.benchmark(group="log_metrics 2 keys", disable_gc=True, warmup=True)
def test_log_metrics_2_keys_explicit_step(benchmark, exp, no_gc):
    d = {"loss": 0.5, "acc": 0.25}
    benchmark(exp.log_metrics, d, 7)


@pytest.mark.benchmark(group="log_metrics 2 keys", disable_gc=True, warmup=True)
def test_noop_method_2_keys(benchmark, no_gc):
    d = {"loss": 0.5, "acc": 0.25}
    benchmark(NoOp().log_metrics, d)


@pytest.mark.benchmark(group="log_metrics 20 keys", disable_gc=True, warmup=True)
def test_log_metrics_20_keys(benchmark, exp, no_gc):
    benchmark(exp.log_metrics, _twenty())
    assert exp.stats()["dropped"] == 0


@pytest.mark.benchmark(group="log_metrics 20 keys", disable_gc=True, warmup=True)
def test_noop_method_20_keys(benchmark, no_gc):
    benchmark(NoOp().log_metrics, _twenty())


@pytest.mark.benchmark(group="close", disable_gc=True)
def test_close_after_200k_calls(benchmark, tmp_path, no_gc):
    """close() (drain, fsync, join, final metadata) after 200 k 2-key calls."""
    runs = iter(range(10 ** 6))

    def setup():
        e = Experiment("bench", run_name=f"r{next(runs)}", base_dir=tmp_path, capture_env=False)
        log = e.log_metrics
        for i in range(200_000):
            log({"loss": 0.5, "acc": 0.25}, step=i)
        return (e,), {}

    benchmark.pedantic(lambda e: e.close(), setup=setup, rounds=5, iterations=1)
