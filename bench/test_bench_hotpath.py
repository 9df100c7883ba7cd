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


# ---- the cliff cases (issue 10): what real loops pass, beside the literal case ----------
# Keys built anew must be built inside the timed call, so each case times build + log;
# the matching `build only` benchmark in the same group is the part to subtract.
PREFIX = "train"
VALS20 = [float(i) for i in range(20)]


def _cases():
    np = pytest.importorskip("numpy")
    return {
        "2 literal": lambda: {"loss": 0.5, "acc": 0.25},
        "2 f-string": lambda: {f"{PREFIX}/loss": 0.5, f"{PREFIX}/acc": 0.25},
        "2 numpy.float64": lambda a=np.float64(0.5): {"loss": a, "acc": a},
        "2 numpy.float32": lambda a=np.float32(0.5): {"loss": a, "acc": a},
        "2 numpy.int64": lambda a=np.int64(5): {"loss": a, "acc": a},
        "2 python int": lambda: {"loss": 5, "acc": 2},
        "20 literal": lambda: dict(zip(KEYS20, VALS20)),
        "20 f-string": lambda: {f"{PREFIX}/m{j}": v for j, v in enumerate(VALS20)},
    }


CASE_NAMES = ["2 literal", "2 f-string", "2 numpy.float64", "2 numpy.float32", "2 numpy.int64",
              "2 python int", "20 literal", "20 f-string"]


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.benchmark(group="cliffs: build + log_metrics", disable_gc=True, warmup=True)
def test_cliff_build_and_log(benchmark, exp, no_gc, case):
    build = _cases()[case]
    log = exp.log_metrics
    benchmark(lambda: log(build()))
    assert exp.stats()["dropped"] == 0


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.benchmark(group="cliffs: build only (subtract)", disable_gc=True, warmup=True)
def test_cliff_build_only(benchmark, no_gc, case):
    benchmark(_cases()[case])
