"""ns per log_metrics call, net of building the dict, beside a no-op method call.

    python bench/hotpath.py [--calls N] [--repeats R]

Tight: a loop of calls. Spaced: each call timed alone between ~20 us of pure
Python work (cold caches; the writer is never woken per call). Medians of R
repeats; every case runs in this one process, side by side.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time

from expman import Experiment

KEYS20 = [f"metric_{i:02d}" for i in range(20)]


class NoOp:
    def log_metrics(self, metrics, step=None):
        pass


def tight(target, n: int, nkeys: int) -> float:
    log = target.log_metrics
    pc = time.perf_counter_ns
    if nkeys == 2:
        t0 = pc()
        for i in range(n):
            log({"loss": 0.5, "acc": 0.25}, step=i)
        t1 = pc()
        for i in range(n):
            {"loss": 0.5, "acc": 0.25}
        t2 = pc()
    else:
        vals = [float(i) for i in range(20)]
        t0 = pc()
        for i in range(n):
            log(dict(zip(KEYS20, vals)), step=i)
        t1 = pc()
        for i in range(n):
            dict(zip(KEYS20, vals))
        t2 = pc()
    return ((t1 - t0) - (t2 - t1)) / n


def busy(k: int = 150) -> int:
    s = 0
    for j in range(k):
        s += j * j
    return s


def spaced(target, n: int) -> float:
    """Median of per-call times; the dict is built before the clock starts."""
    log = target.log_metrics
    pc = time.perf_counter_ns
    samples = []
    base = []
    for i in range(n):
        busy()
        d = {"loss": 0.5, "acc": 0.25}
        t0 = pc()
        log(d, step=i)
        t1 = pc()
        samples.append(t1 - t0)
        busy()
        t0 = pc()
        t1 = pc()
        base.append(t1 - t0)
    return statistics.median(samples) - statistics.median(base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    gc.disable()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment("bench", base_dir=tmp, capture_env=False)
        noop = NoOp()
        for label, fn in [
            ("2 keys, tight", lambda t: tight(t, args.calls, 2)),
            ("20 keys, tight", lambda t: tight(t, args.calls // 4, 20)),
            ("2 keys, spaced ~20us", lambda t: spaced(t, args.calls // 20)),
        ]:
            e, b = [], []
            for _ in range(args.repeats):
                e.append(fn(exp))
                b.append(fn(noop))
            rows[label] = (statistics.median(e), statistics.median(b))
        t0 = time.perf_counter()
        exp.close()
        close_ms = (time.perf_counter() - t0) * 1e3
        stats = exp.stats()
    print(f"Python {sys.version.split()[0]}, {args.calls} calls, median of {args.repeats}")
    print(f"{'case':24} {'expman ns':>10} {'no-op ns':>10} {'expman-noop':>12}")
    for label, (e, b) in rows.items():
        print(f"{label:24} {e:10.1f} {b:10.1f} {e - b:12.1f}")
    print(f"close() after the run: {close_ms:.2f} ms; records written {stats['written']}, "
          f"dropped {stats['dropped']}")


if __name__ == "__main__":
    main()
