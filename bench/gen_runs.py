"""A base dir of many runs, for benches and tests: ``generate(base, runs=N, metrics=K, steps=S)``.

    python bench/gen_runs.py BASE --runs 10000 --metrics 3 --steps 100

Every run is written by ``expman.Experiment`` (the real writer, so the folders
are what users have), with params (lr, seed, a nested optimizer), tags, a group
per lr, and K metrics x S steps. Some runs end otherwise:

- ``failed``: closed with status FAILED;
- ``crashed``: closed, then run.json put back to what a writer killed mid-run
  leaves (RUNNING, a pid that is gone, no end time): readers call it CRASHED;
- ``damaged``: run.json overwritten with bytes that are not JSON;
- ``live``: left open and returned; the caller closes them (``close_all``).

Runs are spread over ``experiments`` experiments, named ``exp<e>/r<i>``, with
start times one second apart in run order, so a listing's order is known.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LRS = (0.1, 0.03, 0.01, 0.003, 0.001)
DEAD_PID = 2 ** 22 + 12345        # above Linux's pid_max default: never a live process


def generate(base: str | os.PathLike[str], runs: int = 100, metrics: int = 3, steps: int = 10,
             *, experiments: int = 2, failed: int = 0, crashed: int = 0, damaged: int = 0,
             live: int = 0, start: int = 0) -> list[Any]:
    """Write runs ``start .. start+runs-1`` under ``base``; returns the live runs'
    open Experiments. The last ``live`` runs stay open, the ``crashed`` before
    them are crashed, then ``damaged``, then ``failed``; the rest finish."""
    import orjson

    import expman
    from expman.layout import EVENTS_FILE, RUN_FILE
    names = [f"m{k}" if k else "loss" for k in range(metrics)]
    open_runs = []
    t0 = time.time() - runs - 10
    kinds = (["finished"] * (runs - failed - damaged - crashed - live) + ["failed"] * failed
             + ["damaged"] * damaged + ["crashed"] * crashed + ["live"] * live)
    for j, kind in enumerate(kinds):
        i = start + j
        lr = LRS[i % len(LRS)]
        exp = expman.Experiment(f"exp{i % experiments}", f"r{i:06d}", base_dir=base,
                                capture_env=False, handle_signals=False, system_metrics=False,
                                tags=["sweep", f"seed{i % 3}"], group=f"lr{lr}")
        exp.log_params({"lr": lr, "seed": i, "optim": {"name": "adam", "beta": 0.9}})
        for s in range(steps):
            exp.log_metrics({n: (1.0 / (s + 1) + (i % 97) * 1e-3) * (k + 1)
                             for k, n in enumerate(names)}, step=s)
        if kind == "live":
            open_runs.append(exp)
            continue
        exp.close(status="FAILED" if kind == "failed" else "FINISHED")
        path = Path(exp.run_dir)
        meta = orjson.loads((path / RUN_FILE).read_bytes())
        meta["start_time"] = t0 + i          # a known order, whatever the clock did
        if kind == "crashed":
            meta.pop("duration", None)
        if kind == "crashed":
            meta.update(status="RUNNING", pid=DEAD_PID)
            for k in ("end_time", "exit"):
                meta.pop(k, None)
            events = path / EVENTS_FILE      # the final status event is never written either
            kept = [line for line in events.read_bytes().splitlines(keepends=True)
                    if orjson.loads(line).get("kind") != "status"]
            _replace(events, b"".join(kept))
        _replace(path / RUN_FILE, b"{not json" if kind == "damaged" else orjson.dumps(meta))
    return open_runs


def _replace(path: Path, data: bytes) -> None:
    """As every metadata write of expman: a temp file renamed over the old one."""
    tmp = path.with_name(path.name + ".gen.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def close_all(open_runs: list[Any]) -> None:
    for exp in open_runs:
        exp.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--metrics", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--experiments", type=int, default=10)
    ap.add_argument("--failed", type=int, default=0)
    ap.add_argument("--crashed", type=int, default=0)
    ap.add_argument("--damaged", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first run number (to add runs)")
    args = ap.parse_args()
    t = time.perf_counter()
    generate(args.base, args.runs, args.metrics, args.steps, experiments=args.experiments,
             failed=args.failed, crashed=args.crashed, damaged=args.damaged, start=args.start)
    print(f"{args.runs} runs in {time.perf_counter() - t:.1f} s under {args.base}")


if __name__ == "__main__":
    main()
