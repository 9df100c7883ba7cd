"""`import expman` beside expman-rs and `import json`, side by side in one run.

    python bench/import_time.py [--runs 21]

Each sample is a fresh interpreter timing the import statement alone (not the
interpreter's start). The three are interleaved, so load on this shared
machine hits them alike; the ratio is the figure to quote. expman-rs is taken
from bench/.peers/expman-rs (`python bench/compare.py --setup-peers`); it also
imports as `expman`, which is why it runs from its own venv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER = HERE / ".peers" / "expman-rs" / "bin" / "python"
SNIPPET = ("import time; t = time.perf_counter_ns(); import {mod}; "
           "d = time.perf_counter_ns() - t; import sys; "
           "print(d, ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
           "('numpy', 'pandas', 'torch', 'starlette', 'uvicorn', 'polars', 'pyarrow', 'typing'))))")


def sample(python: str, mod: str, env: dict[str, str]) -> tuple[float, str]:
    out = subprocess.run([python, "-c", SNIPPET.format(mod=mod)], capture_output=True,
                         text=True, env=env, check=True, cwd="/").stdout.split(" ", 1)
    return int(out[0]) / 1e6, out[1].strip() if len(out) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    ours = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = {"expman": (sys.executable, "expman", ours), "json": (sys.executable, "json", ours)}
    if PEER.exists():
        cases["expman-rs 1.3.0"] = (str(PEER), "expman", dict(os.environ))
    else:
        print(f"(expman-rs skipped: no venv at {PEER.parent.parent})")
    times: dict[str, list[float]] = {k: [] for k in cases}
    loaded: dict[str, str] = {}
    for _ in range(args.runs):
        for name, (py, mod, env) in cases.items():
            ms, mods = sample(py, mod, env)
            times[name].append(ms)
            loaded[name] = mods
    base = statistics.median(times["expman"])
    print(f"median of {args.runs} fresh interpreters, import statement only")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<16} {med:7.2f} ms  ({med / base:4.2f}x expman)"
              f"  heavy modules loaded: {loaded[name] or 'none'}")


if __name__ == "__main__":
    main()
