"""Decoding hostile metrics files: time and memory against file size (issue 15).

    python bench/hostile_decode.py [--sizes 0.25,0.5,1,2,4] [--repeat 3]

For each shape and size (MiB), a fresh child process builds the file, decodes
it (best of --repeat) and reports the time and its peak RSS above the file
itself. Linear means the per-MiB columns stay flat as the size doubles.
Shapes: a normal run (2-key rows), CRC-valid length headers every 8 bytes
running to the end (the old torn-tail scan: 12.7 s for 512 KiB) read plain and
with salvage, the same headers stopping short (corrupt, salvage), random bytes
after one frame (salvage), and thousands of key definitions with large ids.
Absolute figures move with the machine's load; compare the columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import gc, json, os, resource, struct, sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from hostile import corpus
    from expman import _core

    def normal(size):
        out, step = bytearray(corpus.HEADER), 0
        payload = corpus.key(0, "loss") + corpus.key(1, "acc")
        while len(out) < size:
            rows = [corpus.row(step, corpus.T0, [(0, step * 0.5), (1, -step)])]
            rows += [corpus.same_row(1, 1000, [i * 0.5, -i]) for i in range(1, 400)]
            out += corpus.frame(payload + b"".join(rows))
            payload, step = b"", 0
        return bytes(out)

    def random_after_frame(size):
        return corpus.metrics(corpus.key(0, "a") + corpus.row(0, 0, [(0, 1.0)])) + os.urandom(size)

    def many_keys(size):
        n = size // 12
        return corpus.metrics(b"".join(corpus.key(i * 104729 % (1 << 32), "k%d" % i) for i in range(n)))

    shape, size, salvage, repeat = {shape!r}, {size}, {salvage}, {repeat}
    build = dict(normal=normal, random_after_frame=random_after_frame, many_keys=many_keys,
                 torn_headers=lambda s: corpus._headers_every_8_bytes(s, True),
                 corrupt_headers=lambda s: corpus._headers_every_8_bytes(s, False))[shape]
    data = build(size)
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        _c, _k, rep = _core.decode_metrics(data, salvage=salvage)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
        del _c, _k
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(bytes=len(data), seconds=best, rss_kib=peak - base,
                          points=rep["points"], torn=rep["torn_bytes"], corrupt=rep["corrupt_bytes"])))
""")

SHAPES = [("normal", False), ("torn_headers", False), ("torn_headers", True),
          ("corrupt_headers", True), ("random_after_frame", True), ("many_keys", False)]


def measure(shape: str, size: int, salvage: bool, repeat: int) -> dict:
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), shape=shape, size=size,
                        salvage=salvage, repeat=repeat)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ))
    if res.returncode != 0:
        raise SystemExit(f"{shape} {size}: {res.stderr}")
    return json.loads(res.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.25,0.5,1,2,4", help="MiB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(float(s) * (1 << 20)) for s in args.sizes.split(",")]
    print(f"{'shape':<30} {'MiB':>6} {'seconds':>9} {'s/MiB':>8} {'RSS MiB':>8} {'RSS/size':>8}")
    for shape, salvage in SHAPES:
        label = shape + (" (salvage)" if salvage else "")
        for size in sizes:
            r = measure(shape, size, salvage, args.repeat)
            mib = r["bytes"] / (1 << 20)
            print(f"{label:<30} {mib:>6.2f} {r['seconds']:>9.4f} {r['seconds'] / mib:>8.4f} "
                  f"{r['rss_kib'] / 1024:>8.1f} {r['rss_kib'] * 1024 / r['bytes']:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
