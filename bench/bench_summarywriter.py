"""SummaryWriter side by side: expman's drop-in, torch's and tensorboardX's.

    python bench/bench_summarywriter.py            # about a minute
    python bench/bench_summarywriter.py --calls 50000 --repeat 5

Each writer runs the same calls in this process, one after another, writing
into a fresh temporary folder: add_scalar (a Python float, steps 0..n-1),
add_histogram (1,000 float64 values, every 100th step, as training scripts
do), and close() with everything pending. The table gives the best of
--repeat runs per call and each writer's ratio to expman's. Absolute figures
move with the machine's load; judge by the ratios of one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def writers() -> dict[str, Callable[[str], Any]]:
    from expman.tensorboard import SummaryWriter as ExpmanWriter
    out: dict[str, Callable[[str], Any]] = {
        "expman": lambda d: ExpmanWriter(os.path.join(d, "bench", "run"), capture_env=False)}
    try:
        from torch.utils.tensorboard import SummaryWriter as TorchWriter
        out["torch.utils.tensorboard"] = lambda d: TorchWriter(d)
    except ImportError:
        print("torch.utils.tensorboard not installed: skipped", file=sys.stderr)
    try:
        from tensorboardX import SummaryWriter as XWriter
        out["tensorboardX"] = lambda d: XWriter(d)
    except ImportError:
        print("tensorboardX not installed: skipped", file=sys.stderr)
    return out


def measure(make: Callable[[str], Any], calls: int, values: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        w = make(d)
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for step in range(calls):
                w.add_scalar("loss", 0.5, step)
            t1 = time.perf_counter()
            hist_calls = max(calls // 100, 1)
            for step in range(hist_calls):
                w.add_histogram("weights", values, step)
            t2 = time.perf_counter()
            w.close()
            t3 = time.perf_counter()
        finally:
            gc.enable()
    return {"add_scalar_us": (t1 - t0) / calls * 1e6, "add_histogram_us": (t2 - t1) / hist_calls * 1e6,
            "close_ms": (t3 - t2) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import numpy as np
    values = np.random.default_rng(0).normal(size=1000)
    results: dict[str, dict[str, float]] = {}
    for name, make in writers().items():
        runs = [measure(make, args.calls, values) for _ in range(args.repeat)]
        results[name] = {k: min(r[k] for r in runs) for k in runs[0]}
    base = results["expman"]
    print(f"{args.calls} add_scalar calls, {max(args.calls // 100, 1)} add_histogram calls, "
          f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}")
    print("| writer | add_scalar (us) | x expman | add_histogram (us) | x expman | close (ms) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['add_scalar_us']:.2f} | {r['add_scalar_us'] / base['add_scalar_us']:.1f} "
              f"| {r['add_histogram_us']:.1f} | {r['add_histogram_us'] / base['add_histogram_us']:.1f} "
              f"| {r['close_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
