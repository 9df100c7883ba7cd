"""RunTail's public cursor (issue 19.5): plain JSON, so a tail can be resumed in
another process (the lake keeps one per stream in its manifest)."""

from __future__ import annotations

import json

import pytest

import expman
from expman.errors import ExpmanValueError
from expman.layout import METRICS_FILE
from expman.tail import RunTail


def points(metrics) -> list[tuple[str, int, float]]:
    return sorted((k, int(s), float(v)) for k, series in metrics.items()
                  for s, v in zip(series.steps, series.values))


def test_a_tail_resumed_from_its_cursor_reads_only_what_is_new(make_run):
    exp = make_run("tail", "r", system_metrics=False)
    exp.log_metrics({"loss": 1.0, "acc": 0.5}, step=0)
    exp.flush()
    first = RunTail(exp.run_dir)
    assert points(first.poll_metrics()) == [("acc", 0, 0.5), ("loss", 0, 1.0)]
    cursor = json.loads(json.dumps(first.cursor))          # kept as JSON, as the lake does
    assert cursor["metrics"] > 0 and sorted(cursor["keys"].values()) == ["acc", "loss"]
    exp.log_metrics({"loss": 0.5}, step=1)
    exp.log_metrics({"new_key": 7.0}, step=2)              # a key defined after the cursor
    exp.close()
    resumed = RunTail(exp.run_dir, start=cursor)
    new = points(resumed.poll_metrics())
    assert new == [("loss", 1, 0.5), ("new_key", 2, 7.0)]
    assert points(first.poll_metrics()) == new             # the same as the tail that went on
    assert not resumed.poll_metrics() and resumed.cursor == first.cursor


def test_a_stream_cut_below_the_cursor_is_read_again_and_said(make_run):
    exp = make_run("tail", "cut", system_metrics=False)
    for step in range(3):
        exp.log_metrics({"loss": float(step)}, step=step)
        exp.flush()
    exp.close()
    tail = RunTail(exp.run_dir)
    tail.poll_metrics()
    assert not tail.rewound
    path = exp.run_dir / METRICS_FILE
    path.write_bytes(path.read_bytes()[:tail.cursor["metrics"] - 1])     # cut the last frame
    again = tail.poll_metrics()
    assert tail.rewound and points(again) == [("loss", 0, 0.0), ("loss", 1, 1.0)]


@pytest.mark.parametrize("cursor", [
    {"metrics": -1, "events": 0, "keys": {}},
    {"metrics": 3, "events": 0, "keys": {}},               # inside the file header
    {"metrics": 64, "events": "0", "keys": {}},
    {"metrics": 64, "events": 0, "keys": {"x": "loss"}},
    {"metrics": 64, "events": 0, "keys": {"0": 5}},
    {"metrics": 64, "keys": {}},
    {"metrics": True, "events": 0, "keys": {}},
])
def test_a_damaged_or_crafted_cursor_is_refused_by_name(make_run, cursor):
    exp = make_run("tail", "bad")
    exp.close()
    with pytest.raises(ExpmanValueError, match="cursor"):
        RunTail(exp.run_dir, start=cursor)


def test_rank_streams(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    runs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-cursor")
        runs.append(expman.Experiment("ddp", base_dir=tmp_path, capture_env=False,
                                      system_metrics=False))
    for rank, exp in enumerate(runs):
        exp.log_metrics({"loss": 10.0 + rank}, step=0)
    for exp in reversed(runs):
        exp.close()
    got = {r: points(RunTail(runs[0].run_dir, rank=r).poll_metrics()) for r in (0, 1)}
    assert got == {0: [("loss", 0, 10.0)], 1: [("loss", 0, 11.0)]}
    with pytest.raises(ExpmanValueError, match="rank"):
        RunTail(runs[0].run_dir, rank=-1)
