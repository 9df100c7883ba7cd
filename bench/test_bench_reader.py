"""pytest-benchmark: reading 1 M points back into columns.

    pytest bench/test_bench_reader.py --benchmark-only

Two shapes of the same million points: 50 k rows of 20 keys, and 500 k rows of
2 keys (more per-row overhead). decode_metrics is the compiled decoder alone on
bytes already in memory; open_run adds the file read, metadata and the column
wrapping (numpy arrays when numpy is installed).
"""

from __future__ import annotations

import pytest

import expman
from expman import Experiment, _core

KEYS20 = [f"metric_{i:02d}" for i in range(20)]
POINTS = 1_000_000


def _write(base, name, nkeys):
    keys = KEYS20[:nkeys] if nkeys <= 20 else None
    exp = Experiment("bench", run_name=name, base_dir=base, capture_env=False)
    vals = [float(i) for i in range(nkeys)]
    for i in range(POINTS // nkeys):
        vals[0] = float(i)
        exp.log_metrics(dict(zip(keys, vals)), step=i)
    exp.close()
    return exp.run_dir


@pytest.fixture(scope="module", params=[20, 2], ids=["20-key rows", "2-key rows"])
def run_dir(request, tmp_path_factory):
    return _write(tmp_path_factory.mktemp("reader"), f"k{request.param}", request.param)


@pytest.mark.benchmark(group="read 1M points", disable_gc=True)
def test_decode_metrics_1m_points(benchmark, run_dir, no_gc):
    data = (run_dir / "metrics.bin").read_bytes()
    columns, _keys, report = benchmark(_core.decode_metrics, data)
    assert report["points"] == POINTS
    assert sum(len(c[0]) for c in columns.values()) == POINTS


@pytest.mark.benchmark(group="read 1M points", disable_gc=True)
def test_open_run_1m_points(benchmark, run_dir, no_gc):
    run = benchmark(expman.open_run, run_dir)
    assert sum(len(s) for s in run.metrics.values()) == POINTS
