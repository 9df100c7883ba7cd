"""ns per log_metrics call, beside a no-op method call.

    python bench/hotpath.py [--calls N] [--repeats R]

Tight: a loop of calls. Spaced: each call timed alone between ~20 us of pure
Python work (cold caches; the writer is never woken per call). Medians of R
repeats; every case runs in this one process, side by side.

The cliff cases (issue 10) time what real training code passes: keys built
anew each call (f-strings) and numpy / int values, each beside the literal-key
Python-float case built the same way, and print the ratio (target <= 1.3x).
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


def _build(nkeys: int, kind: str):
    """A function returning the dict of one cliff case (a new dict per call)."""
    import numpy as np
    prefix = "train"
    if nkeys == 2:
        if kind == "literal":
            return lambda: {"loss": 0.5, "acc": 0.25}
        if kind == "fstring":
            return lambda: {f"{prefix}/loss": 0.5, f"{prefix}/acc": 0.25}
        a, b = {"float64": (np.float64(0.5), np.float64(0.25)),
                "float32": (np.float32(0.5), np.float32(0.25)),
                "numpy int": (np.int64(5), np.int64(2)),
                "python int": (5, 2)}[kind]
        return lambda: {"loss": a, "acc": b}
    vals = [float(i) for i in range(20)]
    if kind == "literal":
        return lambda: dict(zip(KEYS20, vals))
    if kind == "fstring":
        return lambda: {f"{prefix}/m{j}": v for j, v in enumerate(vals)}
    raise ValueError(kind)


CLIFF_CASES = [  # (label, keys, kind, the literal case it is compared with)
    ("2 keys literal, float", 2, "literal", None),
    ("2 keys f-string, float", 2, "fstring", "2 keys literal, float"),
    ("2 keys numpy.float64", 2, "float64", "2 keys literal, float"),
    ("2 keys numpy.float32", 2, "float32", "2 keys literal, float"),
    ("2 keys numpy.int64", 2, "numpy int", "2 keys literal, float"),
    ("2 keys python int", 2, "python int", "2 keys literal, float"),
    ("20 keys literal, float", 20, "literal", None),
    ("20 keys f-string, float", 20, "fstring", "20 keys literal, float"),
]


BATCH = 256   # dicts built before the clock: fresh key objects each, in L2


def tight_built(target, n: int, build) -> float:
    """ns per call on dicts built beforehand by the same function, in this
    thread's CPU time (a shared machine's descheduling does not count).

    A batch of BATCH fresh dicts (new key objects each, as a real loop makes) is
    logged in turn, net of the same loop without the call. Building them outside
    the clock keeps the build's cost and its noise out of the figure: for 20
    f-string keys the build costs ten times the call it would be subtracted from.
    """
    batch = [build() for _ in range(BATCH)]
    log = target.log_metrics
    pc = time.thread_time_ns
    mask = BATCH - 1
    t0 = pc()
    for i in range(n):
        log(batch[i & mask], step=i)
    t1 = pc()
    for i in range(n):
        batch[i & mask]
    t2 = pc()
    return ((t1 - t0) - (t2 - t1)) / n


def cliffs(exp, calls: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per case: median ns per call (on dicts built before the clock) and the median of
    per-pair ratios against its literal-float case, timed back to back in
    alternating order (a shared machine drifts less within one pair)."""
    built = {label: (nkeys, _build(nkeys, kind)) for label, nkeys, kind, _ in CLIFF_CASES}
    net: dict[str, list[float]] = {label: [] for label in built}
    ratios: dict[str, list[float]] = {label: [] for label in built}
    for r in range(repeats * 3):
        for label, nkeys, _, ref in CLIFF_CASES:
            n = calls if nkeys == 2 else calls // 4
            if ref is None:
                net[label].append(tight_built(exp, n, built[label][1]))
                continue
            pair = [(label, built[label][1]), (ref, built[ref][1])]
            got = {lab: tight_built(exp, n, fn) for lab, fn in (pair if r % 2 else pair[::-1])}
            net[label].append(got[label])
            ratios[label].append(got[label] / got[ref])
    return {label: (statistics.median(net[label]),
                    statistics.median(ratios[label]) if ratios[label] else 1.0)
            for label in built}


def fsync_cost(base: str, calls: int, repeats: int) -> list[tuple[str, float, float, float]]:
    """fsync_interval's price, side by side: per-call thread-CPU ns of a tight
    2-key loop, wall seconds of a loop of ~20 us steps logging every step (the
    writer fsyncs meanwhile), and close(); median of repeats, settings interleaved."""
    settings = [None, 1.0, 0.1, 0.01]
    got: dict = {str(x): ([], [], []) for x in settings}
    for r in range(repeats):
        for x in settings:
            exp = Experiment("fsync", base_dir=base, capture_env=False, fsync_interval=x)
            log = exp.log_metrics
            tc = time.thread_time_ns
            c0 = tc()
            for i in range(calls):
                log({"loss": 0.5, "acc": 0.25}, step=i)
            c1 = tc()
            t0 = time.perf_counter()
            for i in range(calls // 20):
                busy()
                log({"loss": 0.5, "acc": 0.25}, step=calls + i)
            t1 = time.perf_counter()
            exp.close()
            t2 = time.perf_counter()
            got[str(x)][0].append((c1 - c0) / calls)
            got[str(x)][1].append(t1 - t0)
            got[str(x)][2].append((t2 - t1) * 1e3)
    return [(k, statistics.median(a), statistics.median(b), statistics.median(c))
            for k, (a, b, c) in got.items()]


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
    ap.add_argument("--cliffs-only", action="store_true", help="only the issue-10 cliff cases")
    ap.add_argument("--fsync", action="store_true", help="also measure fsync_interval's cost")
    args = ap.parse_args()
    gc.disable()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment("bench", base_dir=tmp, capture_env=False)
        noop = NoOp()
        cliff = cliffs(exp, args.calls // 10, args.repeats)
        fsync_rows = fsync_cost(tmp, args.calls // 4, args.repeats) if args.fsync else []
        for label, fn in [] if args.cliffs_only else [
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
    print(f"\ncliff cases: thread-CPU ns per call on dicts built before the clock; "
          f"{args.calls // 10} calls (20 keys: /4), {3 * args.repeats} pairs, medians")
    print(f"{'case':26} {'ns/call':>8} {'vs literal (pairs)':>19}  target <= 1.3x")
    for label, _, _, ref in CLIFF_CASES:
        e, r = cliff[label]
        print(f"{label:26} {e:8.1f} {f'{r:.2f}x' if ref else '':>19}")
    if fsync_rows:
        base_loop = fsync_rows[0][2]
        print(f"\nfsync_interval: {args.calls // 4} tight 2-key calls, then {args.calls // 80} "
              f"~20 us steps logging each step; medians of {args.repeats}")
        print(f"{'fsync_interval':15} {'tight ns/call':>14} {'spaced loop s':>14} {'vs off':>7} "
              f"{'close ms':>9}")
        for k, ns, loop_s, close_ms in fsync_rows:
            print(f"{k:15} {ns:14.1f} {loop_s:14.3f} {loop_s / base_loop:6.3f}x {close_ms:9.2f}")


if __name__ == "__main__":
    main()
