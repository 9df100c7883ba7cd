"""Cost of ``Experiment.log_table`` per row, in the calling thread.

    python bench/tables.py [--rows N] [--repeats R]

Appends one version of N rows of (step, prompt, completion, reward) (the issue-22
case: RL samples), R times, and prints the median thread-CPU and wall time per
row of the call (encode, append, event). Target: < 2 us a row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import expman


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows = [(i, f"Write a haiku about the number {i}.", "Silent digits fall " * 3, i / 7)
            for i in range(args.rows)]
    cols = ["step", "prompt", "completion", "reward"]
    cpu, wall = [], []
    with tempfile.TemporaryDirectory() as d:
        with expman.Experiment("bench", "tables", d, capture_env=False,
                               system_metrics=False) as exp:
            for r in range(args.repeats):
                c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                exp.log_table("samples", rows, columns=cols, step=r)
                cpu.append((time.thread_time_ns() - c0) / args.rows)
                wall.append((time.perf_counter_ns() - w0) / args.rows)
    print(f"log_table, {args.rows:,} rows x {args.repeats}: median "
          f"{statistics.median(cpu) / 1000:.2f} us/row thread-CPU, "
          f"{statistics.median(wall) / 1000:.2f} us/row wall (target < 2)")


if __name__ == "__main__":
    main()
