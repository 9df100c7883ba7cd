"""Loop slowdown with the system-metrics sampler on (every 0.1 s) vs off.

    python bench/sysmetrics.py [--steps N] [--repeats R] [--interval S]

A CPU-bound Python loop logs every step into a run; the same loop runs with
the sampler off and on, interleaved, R times each, in this one process. The
figure is the ratio of medians (on/off); within the off-runs' own spread is
"within noise". The sampler is 100x more frequent than the default (10 s) so
its cost is visible at all.

On a core with ``Core._log_side`` the sampler is the run's own
(``Experiment(system_metrics=S)``); on a core without it, the sampler thread
logs the same rows into a second run, the same work on the same writer path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import expman  # noqa: E402
from expman import sysmetrics  # noqa: E402

SIDE_CHANNEL = hasattr(expman._core.Core, "_log_side")


class SideRun:
    """A stand-in sink: the sampler's rows go into a second real run."""

    def __init__(self, run: expman.Experiment) -> None:
        self.run = run

    def _log_side(self, metrics: dict, step: int) -> None:
        self.run.log_metrics(metrics, step=step)

    def warn(self, msg: object) -> None:
        self.run.warn(msg)


def work(k: int = 60) -> int:
    s = 0
    for j in range(k):
        s += j * j
    return s


def loop(base: str, steps: int, interval: float | None) -> tuple[float, int]:
    option = interval if (interval and SIDE_CHANNEL) else False
    with expman.Experiment("bench", base_dir=base, capture_env=False, handle_signals=False,
                           system_metrics=option) as exp:
        side = sampler = None
        if interval and not SIDE_CHANNEL:
            side_run = expman.Experiment("bench-side", base_dir=base, capture_env=False,
                                         handle_signals=False, system_metrics=False)
            side = SideRun(side_run)
            sampler = sysmetrics.start_for(side, interval)
        log = exp.log_metrics
        t0 = time.perf_counter()
        for i in range(steps):
            log({"loss": work() * 1e-9, "acc": 0.5}, step=i)
        elapsed = time.perf_counter() - t0
        samples = 0
        if sampler is not None:
            samples = sampler.samples
            sampler.stop()
            side.run.close()
        elif interval and exp._sampler is not None:
            samples = exp._sampler.samples
    return elapsed, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--interval", type=float, default=0.1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as base:
        loop(base, args.steps // 10, None)                      # warm up
        off, on, samples = [], [], []
        for _ in range(args.repeats):
            off.append(loop(base, args.steps, None)[0])
            t, n = loop(base, args.steps, args.interval)
            on.append(t)
            samples.append(n)
    m_off, m_on = statistics.median(off), statistics.median(on)
    spread = (max(off) - min(off)) / m_off
    print(f"sampler via {'Core._log_side' if SIDE_CHANNEL else 'a second run (no _log_side yet)'}, "
          f"interval {args.interval} s, {args.steps} steps x {args.repeats} repeats")
    print(f"off: median {m_off * 1e9 / args.steps:7.1f} ns/step  (spread {spread:.1%})")
    print(f"on:  median {m_on * 1e9 / args.steps:7.1f} ns/step  "
          f"({statistics.median(samples):.0f} samples per loop)")
    print(f"slowdown on/off: {m_on / m_off:.3f}x")


if __name__ == "__main__":
    main()
