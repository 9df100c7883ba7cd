"""Runs that branch (issue 23): what a fork costs, what reading one costs, and the hot
path on a branched run. Every case runs in this one process, side by side; medians
of R repeats, the compared cases interleaved.

    python bench/branches.py [--points 10000000] [--repeats 5]

1. Fork of a parent of --points points: seconds to open the child (resolving the
   parent, run.json with the fork record, params.json) and close it, and the bytes
   written (the child folder's files; on Linux also the write() bytes, /proc/self/io).
   Targets: < 50 ms, < 64 KiB.
2. Reading a forked run (open_run().metrics) against reading the same points from
   one plain run; the fork at the parent's last step and at its middle step.
   Target: ratio <= 1.1.
3. log_metrics on a branched run (a resumed run whose first step went back: the
   one-shot check has fired) against a plain run, as bench/hotpath.py times it
   (a tight loop, 2 keys). Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import expman

KW = dict(system_metrics=False, capture_env=False, buffer_size=64 << 20)


def write_run(base: Path, name: str, n: int, start: int = 0, value: float = 0.0) -> None:
    with expman.Experiment("b", name, base_dir=base, **KW) as e:
        e.log_params({"lr": 0.1, "layers": [64, 64]})
        log = e.log_metrics
        for s in range(start, start + n):
            log({"loss": value + s}, step=s)


def wchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_fork(base: Path, points: int, repeats: int) -> None:
    secs, sizes, written, plain, opened = [], [], [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()            # beside it: a new plain run, opened and closed
        expman.Experiment("b", f"new{i}", base_dir=base, **{**KW, "buffer_size": 4 << 20}).close()
        plain.append(time.perf_counter() - t0)
        w0 = wchar()
        t0 = time.perf_counter()
        e = expman.Experiment("b", f"fork{i}", base_dir=base, fork_from=f"b/parent@{points // 2}",
                              **{**KW, "buffer_size": 4 << 20})
        opened.append(time.perf_counter() - t0)
        e.close()
        secs.append(time.perf_counter() - t0)
        w1 = wchar()
        if w0 is not None and w1 is not None:
            written.append(w1 - w0)
        sizes.append(folder_bytes(base / "b" / f"fork{i}"))
    print(f"fork of a {points:,}-point parent: opened in {statistics.median(opened) * 1000:.1f} "
          f"ms; opened and closed: median "
          f"{statistics.median(secs) * 1000:.1f} ms (max {max(secs) * 1000:.1f}); child folder "
          f"{statistics.median(sizes) / 1024:.1f} KiB"
          + (f"; write() bytes {statistics.median(written) / 1024:.1f} KiB" if written else "")
          + f"; a new plain run, opened and closed: {statistics.median(plain) * 1000:.1f} ms")


def read_seconds(path: Path) -> float:
    gc.collect()
    t0 = time.perf_counter()
    run = expman.open_run(path)
    run.metrics["loss"]
    took = time.perf_counter() - t0
    del run
    gc.collect()
    return took


def bench_read(base: Path, points: int, repeats: int, fork_step: int, own: int, tag: str) -> None:
    child, plain = f"child-{tag}", f"plain-{tag}"
    with expman.Experiment("b", child, base_dir=base, fork_from=f"b/parent@{fork_step}",
                           **KW) as e:
        for s in range(fork_step + 1, fork_step + 1 + own):
            e.log_metrics({"loss": -s}, step=s)
    # the same points, in one plain run
    with expman.Experiment("b", plain, base_dir=base, **KW) as e:
        log = e.log_metrics
        for s in range(fork_step + 1):
            log({"loss": float(s)}, step=s)
        for s in range(fork_step + 1, fork_step + 1 + own):
            log({"loss": -s}, step=s)
    a, b = expman.open_run(base / "b" / child), expman.open_run(base / "b" / plain)
    assert list(a.metrics["loss"].values[-5:]) == list(b.metrics["loss"].values[-5:])
    assert len(a.metrics["loss"]) == len(b.metrics["loss"]) == fork_step + 1 + own
    del a, b
    forked, flat = [], []
    for r in range(repeats):                # ABBA: neither case always goes first
        order = [(child, forked), (plain, flat)]
        for name, out in (order if r % 2 else order[::-1]):
            out.append(read_seconds(base / "b" / name))
    f, p = statistics.median(forked), statistics.median(flat)
    print(f"read {fork_step + 1 + own:,} points, fork at step {fork_step:,} of a "
          f"{points:,}-point parent: forked {f * 1000:.0f} ms, plain {p * 1000:.0f} ms, "
          f"ratio {f / p:.2f}")


def tight(e: expman.Experiment, n: int, start: int) -> float:
    log = e.log_metrics
    pc = time.perf_counter_ns
    t0 = pc()
    for i in range(start, start + n):
        log({"loss": 0.5, "acc": 0.25}, step=i)
    return (pc() - t0) / n


def bench_hotpath(base: Path, calls: int, repeats: int) -> None:
    with expman.Experiment("h", "branched", base_dir=base, **KW) as e:
        for s in range(100):
            e.log_metrics({"loss": 0.5, "acc": 0.25}, step=s)
    branched = expman.Experiment("h", "branched", base_dir=base, resume=True, **KW)
    branched.log_metrics({"loss": 0.5, "acc": 0.25}, step=50)    # back: a resume branch
    assert len(expman.open_run(base / "h" / "branched", branch=1).branches) == 2
    plain = expman.Experiment("h", "plain", base_dir=base, **KW)
    b_ns, p_ns = [], []
    step = 1000
    for r in range(3 * repeats):            # ABBA: neither case always goes first
        order = [(branched, b_ns), (plain, p_ns)]
        for e, out in (order if r % 2 else order[::-1]):
            out.append(tight(e, calls, step))
        step += calls
    branched.close()
    plain.close()
    b, p = statistics.median(b_ns), statistics.median(p_ns)
    print(f"log_metrics, 2 keys, tight loop of {calls:,}: branched run {b:.0f} ns, plain run "
          f"{p:.0f} ns, ratio {b / p:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="expman-bench-branches-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        write_run(base, "parent", args.points)
        print(f"(parent: {args.points:,} points written in {time.perf_counter() - t0:.1f} s, "
              f"{os.path.getsize(base / 'b/parent/metrics.bin') / 1e6:.0f} MB)")
        bench_fork(base, args.points, args.repeats)
        bench_read(base, args.points, args.repeats, args.points - 1, 1000, "end")
        bench_read(base, args.points, args.repeats, args.points // 2, 1000, "middle")
        bench_hotpath(base, args.calls, args.repeats)


if __name__ == "__main__":
    main()
