"""Listing many runs: summary.json against decoding every metrics.bin, side by side.

    python bench/list_runs.py [--runs 5000] [--points 10000] [--repeats 3] [--keep DIR]

Makes ``--runs`` finished runs of ``--points`` points each (2 metrics per row):
a few distinct runs written by a real Experiment, copied to fill the count.
Then, in this one process, medians of ``--repeats`` (warm page cache):

  summaries   what a listing costs when it reads the summary: expman.list_runs
              without metrics (run.json, params, status) plus
              expman.summary.summarize for every run
  list_runs   expman.list_runs() itself (it reads summary.json and decodes only a
              run whose summary is missing or stale), and summarize with every
              summary.json hidden (the decode fallback, what listing cost before)

Target (issue 10): listing 5,000 runs of 10,000 points in under 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import expman
from expman.layout import SUMMARY_FILE, iter_run_dirs
from expman.summary import summarize

DISTINCT = 8


def make_runs(base: Path, runs: int, points: int) -> None:
    rows = max(points // 2, 1)
    seeds = []
    for j in range(min(DISTINCT, runs)):
        with expman.Experiment("bench", f"seed{j}", base_dir=base, capture_env=False) as exp:
            exp.log_params({"lr": 10 ** -j, "seed": j})
            log = exp.log_metrics
            for i in range(rows):
                log({"loss": 1.0 / (i + 1 + j), "acc": (i % 100) / 100}, step=i)
        seeds.append(exp.run_dir)
    for i in range(len(seeds), runs):
        shutil.copytree(seeds[i % len(seeds)], base / "bench" / f"run{i:05d}")


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="make (or reuse) the runs here and keep them")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        base = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="expman-list-")
        base = Path(tmp)
    try:
        have = sum(1 for _ in iter_run_dirs(base)) if base.exists() else 0
        if have != args.runs:
            if have:
                sys.exit(f"{base} holds {have} runs, not {args.runs}; pass an empty --keep DIR")
            t0 = time.perf_counter()
            make_runs(base, args.runs, args.points)
            print(f"made {args.runs} runs of {args.points} points in "
                  f"{time.perf_counter() - t0:.0f} s under {base}", flush=True)
        dirs = list(iter_run_dirs(base))
        assert all((d / SUMMARY_FILE).is_file() for d in dirs), "a run has no summary.json"
        listed = expman.list_runs(base, metrics=False)
        assert len(listed) == args.runs

        def by_summary():
            expman.list_runs(base, metrics=False)
            for d in iter_run_dirs(base):
                summarize(d)

        sample = summarize(dirs[0])
        assert sample["source"] == "summary", sample["source"]
        t_meta = timed(lambda: expman.list_runs(base, metrics=False), args.repeats)
        t_sum = timed(by_summary, args.repeats)
        t_list = timed(lambda: expman.list_runs(base), args.repeats)
        hidden = [d / SUMMARY_FILE for d in dirs]
        for p in hidden:
            p.rename(p.with_name(SUMMARY_FILE + ".hidden"))
        try:
            assert summarize(dirs[0])["source"] == "decode"
            t_dec = timed(lambda: [summarize(d) for d in iter_run_dirs(base)], args.repeats)
        finally:
            for p in hidden:
                p.with_name(SUMMARY_FILE + ".hidden").rename(p)
        n = args.runs
        print(f"{n} runs x {args.points} points, median of {args.repeats}, warm cache, "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
        print(f"  list_runs(metrics=False) (no metrics at all)      {t_meta:8.3f} s")
        print(f"  listing via summary.json (the line above + summarize) {t_sum:8.3f} s"
              f"   target < 1 s")
        print(f"  list_runs() (summary.json; decodes stale runs only) {t_list:8.3f} s"
              f"   ({t_list / t_sum:.1f}x the summary listing)")
        print(f"  summarize with summary.json hidden (decode)         {t_dec:8.3f} s"
              f"   ({t_dec / t_sum:.1f}x)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
