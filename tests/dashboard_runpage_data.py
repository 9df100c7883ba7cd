"""Runs for the dashboard's alert, rank and media tests: a 2-rank run whose rank 1
failed and that recorded a watchdog alert, and runs logging histograms and images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import expman
from expman.watch import record_alert

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
             "TORCHELASTIC_RESTART_COUNT")
ALERT_STEP = 30


def ranked_run(base: Path) -> Path:
    """exp "ranked", run "job-1": rank 0 logs loss = 1 + step/100 and closes; rank 1
    logs loss = 5 - step/100 and fails (ZeroDivisionError), so rank 1 decides the
    run's FAILED. Rank 0 records a NaN alert on loss at step ALERT_STEP."""
    with pytest.MonkeyPatch.context() as mp:
        for var in RANK_VARS:
            mp.delenv(var, raising=False)

        def as_rank(rank: int) -> None:
            for k, v in {"RANK": rank, "WORLD_SIZE": 2, "LOCAL_RANK": rank,
                         "TORCHELASTIC_RUN_ID": "job-1", "TORCHELASTIC_RESTART_COUNT": 0}.items():
                mp.setenv(k, str(v))
        as_rank(0)
        r0 = expman.Experiment("ranked", base_dir=base, capture_env=False, system_metrics=False)
        as_rank(1)
        r1 = expman.Experiment("ranked", base_dir=base, capture_env=False, system_metrics=False)
        for step in range(60):
            r0.log_metrics({"loss": 1 + step / 100}, step=step)
            r1.log_metrics({"loss": 5 - step / 100}, step=step)
            if step == ALERT_STEP:          # while the run goes on: inside its time range
                record_alert(r0, "loss is NaN at step 30", rule="nan:loss", metric="loss",
                             step=ALERT_STEP, value=math.nan)
        try:
            with r1:
                1 / 0
        except ZeroDivisionError:
            pass
        r0.close()
    return r0.run_dir


def media_run(base: Path, name: str, shift: float, colour: int, steps: int = 5) -> Path:
    """Histograms of N(shift + step, 1)-like counts on fixed edges, and a 6x4 image
    per step, all one colour (channel ``colour`` at 255): the run is told by its
    colour, its histogram by where its mass sits."""
    import numpy as np
    with expman.Experiment("media", name, base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        edges = [float(e) for e in range(-5, 21)]            # 25 unit buckets over -5..20
        for step in range(steps):
            exp.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            centre = shift + step
            counts = [int(round(1000 * math.exp(-((lo + 0.5 - centre) ** 2) / 2)))
                      for lo in edges[:-1]]
            exp.log_histogram("weights", edges=edges, counts=counts, step=step)
            img = np.zeros((4, 6, 3), dtype=np.uint8)
            img[..., colour] = 255 - 40 * step               # darker each step
            exp.log_image("samples", img, step=step)
        return exp.run_dir
