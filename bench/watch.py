"""Loop slowdown with the watchdogs on (all rules, a watcher thread) vs off.

    python bench/watch.py [--steps N] [--repeats R] [--interval S] [--work K] [--rule RULE ...]

A CPU-bound Python loop logs 2 metrics every step into a run; the same loop runs
with no watcher and with ``exp.watch(every rule)``, interleaved in pairs, R times
each, in this one process. The watcher polls every ``--interval`` seconds (default
0.1: five times more often than the default 0.5 s, so its cost shows at all).
``--work K`` sets the pure-Python work per step (default 60: ~3 us, a loop far
tighter than training; the watcher's work grows with the points logged per
second). Printed: the median ns per step of each side, the off-runs' own spread, the ratio
of medians (on/off; the target is <= 1.02), and the median of the per-pair ratios.
Then what the watchdogs cost in CPU, less sensitive to the machine's load: the CPU
time of every thread (the per-point rules run in the writer thread, src/exwatch.c)
per point, on minus off; and the CPU per point of one round of the Python engine
over a closed run of ``--steps`` steps (what ``expman watch`` from another process
spends; ``time.thread_time``, median of R rounds).
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

RULES = ["nan", "spike", "plateau:loss,patience=100000", "stall", "straggler",
         "loss_of_data", "disk"]


def work(k: int = 60) -> int:
    s = 0
    for j in range(k):
        s += j * j
    return s


def loop(base: str, steps: int, interval: float | None, k: int = 60,
         rules: list[str] = RULES) -> tuple[float, int, float]:
    """Wall seconds of the loop, watcher rounds, and the CPU seconds of every thread
    (the loop, the writer and the watcher) up to the writer having drained it."""
    with expman.Experiment("bench", base_dir=base, capture_env=False, handle_signals=False,
                           system_metrics=False) as exp:
        rw = exp.watch(rules, interval=interval) if interval else None
        log = exp.log_metrics
        c0 = time.process_time()
        t0 = time.perf_counter()
        for i in range(steps):
            log({"loss": work(k) * 1e-9 + 1.0 / (i + 1), "acc": 0.5}, step=i)
        elapsed = time.perf_counter() - t0
        exp.flush()
        cpu = time.process_time() - c0
    return elapsed, rw.rounds if rw is not None else 0, cpu


def round_cost(base: str, steps: int, rules: list[str], repeats: int) -> float:
    """CPU seconds per point of one watcher round over a whole run."""
    from expman.watch import RunWatch
    with expman.Experiment("bench-round", base_dir=base, capture_env=False,
                           handle_signals=False, system_metrics=False) as exp:
        for i in range(steps):
            exp.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5}, step=i)
    costs = []
    for _ in range(repeats):
        rw = RunWatch(exp.run_dir, rules, record=lambda ev: None)
        t0 = time.thread_time()
        rw.poll()
        costs.append(time.thread_time() - t0)
    return statistics.median(costs) / (2 * steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--work", type=int, default=60)
    ap.add_argument("--rule", action="append", help="the rules (default: every rule)")
    args = ap.parse_args()
    rules = args.rule or RULES
    with tempfile.TemporaryDirectory() as base:
        loop(base, args.steps // 10, None, args.work)           # warm up
        loop(base, args.steps // 10, args.interval, args.work, rules)
        off, on, rounds, cpu_off, cpu_on = [], [], [], [], []
        for r in range(args.repeats):
            pair = [(None, off, cpu_off), (args.interval, on, cpu_on)]
            for interval, out, cpu in pair if r % 2 == 0 else pair[::-1]:
                t, n, c = loop(base, args.steps, interval, args.work, rules)
                out.append(t)
                cpu.append(c)
                if interval:
                    rounds.append(n)
    m_off, m_on = statistics.median(off), statistics.median(on)
    spread = (max(off) - min(off)) / m_off
    print(f"{args.steps} steps x {args.repeats} pairs, watcher every {args.interval} s, "
          f"work {args.work}, rules: {', '.join(rules)}")
    print(f"off: median {m_off * 1e9 / args.steps:7.1f} ns/step  (spread {spread:.1%})")
    print(f"on:  median {m_on * 1e9 / args.steps:7.1f} ns/step  "
          f"({statistics.median(rounds):.0f} watcher rounds per loop)")
    print(f"ratio of medians on/off: {m_on / m_off:.3f}x; median of paired ratios: "
          f"{statistics.median(a / b for a, b in zip(on, off)):.3f}x")
    extra = (statistics.median(cpu_on) - statistics.median(cpu_off)) / (2 * args.steps)
    print(f"CPU of all threads per point logged: off {statistics.median(cpu_off) / (2 * args.steps) * 1e9:.0f} ns, "
          f"on {statistics.median(cpu_on) / (2 * args.steps) * 1e9:.0f} ns "
          f"(the watchdogs: {extra * 1e9:+.0f} ns, in the writer thread and the watcher)")
    with tempfile.TemporaryDirectory() as base:
        per_point = round_cost(base, args.steps, rules, args.repeats)
    print(f"`expman watch` (another process, the Python engine) CPU per point: "
          f"{per_point * 1e9:.0f} ns (one round over {2 * args.steps} points)")


if __name__ == "__main__":
    main()
