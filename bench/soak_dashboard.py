"""The dashboard's memory under a long live run (issue 26, item 6): a run logging
at 10 kHz is streamed to `expman serve` (one SSE client, plus the run page asked
for every few seconds) for N minutes; the server's RSS is printed over time,
then after the run ends, beside a fresh server holding the same finished run.

    python bench/soak_dashboard.py                      # 5 minutes, the issue's soak
    python bench/soak_dashboard.py --minutes 1 --cache-mb 64

Linux only (RSS from /proc). The server and the writer are their own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

WRITER = textwrap.dedent("""
    import sys, time, math, expman
    rate, seconds, width = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    keys = [f"m{k}" for k in range(width)]
    with expman.Experiment("soak", "live", base_dir=sys.argv[1], capture_env=False,
                           system_metrics=False) as exp:
        print("ready", flush=True)
        t0 = time.monotonic()
        step = 0
        while True:
            now = time.monotonic() - t0
            if now >= seconds:
                break
            due = int(now * rate)
            while step < due:
                exp.log_metrics({k: math.sin(step * 1e-3 + i) for i, k in enumerate(keys)}, step=step)
                step += 1
            time.sleep(0.005)
        print(step, flush=True)
""")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(base: Path, cache_mb: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "expman.dashboard", str(base), "--port", "0",
                             "--no-browser", "--cache-mb", str(cache_mb)],
                            env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("expman dashboard: "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split(": ", 1)[1].strip()


def stream(url: str, got: list[int], stop: threading.Event) -> None:
    """Read the run's SSE stream, counting the points received (those already on
    disk when it opened are in its hello's counts)."""
    with urllib.request.urlopen(url + "api/stream?run=soak/live", timeout=60) as r:
        event = None
        for raw in r:
            line = raw.rstrip(b"\n")
            if line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"data: ") and event == b"hello":    # points before the stream
                got[0] += sum(json.loads(line[6:])["counts"].get("soak/live", {}).values())
            elif line.startswith(b"data: ") and event == b"points":
                got[0] += len(json.loads(line[6:])["steps"])
            elif line.startswith(b"data: ") and event == b"status":
                return
            if stop.is_set():
                return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=10_000.0, help="rows a second (default 10 kHz)")
    ap.add_argument("--metrics", type=int, default=4, help="metrics a row (default 4)")
    ap.add_argument("--cache-mb", type=int, default=1024, help="the server's --cache-mb (default 1024)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    args = ap.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "experiments"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(base), str(args.rate),
                                   str(seconds), str(args.metrics)], env=ENV,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        server, url = start_server(base, args.cache_mb)
        got, stop = [0], threading.Event()
        reader = threading.Thread(target=stream, args=(url, got, stop), daemon=True)
        reader.start()
        print(f"# {args.rate:,.0f} rows/s x {args.metrics} metrics for {args.minutes:g} min, "
              f"--cache-mb {args.cache_mb}; server pid {server.pid}")
        print(f"{'t (s)':>7} {'server RSS (MB)':>16} {'points received':>16}")
        t0 = time.monotonic()
        next_page = t0
        rows = []
        try:
            while writer.poll() is None:
                now = time.monotonic()
                rows.append((now - t0, rss_mb(server.pid), got[0]))
                print(f"{rows[-1][0]:7.0f} {rows[-1][1]:16.1f} {rows[-1][2]:16,}", flush=True)
                if now >= next_page:           # the run page, as a person would reload it
                    urllib.request.urlopen(url + "api/runs/soak/live", timeout=60).read()
                    next_page = now + 5        # (after the sample: its own decode is transient)
                time.sleep(args.every)
            written = int(writer.stdout.readline() or 0) * args.metrics
            reader.join(30)
            ended = time.monotonic()
            for _ in range(3):                  # after the run ended: memory given back?
                time.sleep(5)
                print(f"{time.monotonic() - t0:7.0f} {rss_mb(server.pid):16.1f} {got[0]:16,}"
                      "   (run ended)", flush=True)
            after, after_s = rss_mb(server.pid), time.monotonic() - ended
        finally:
            stop.set()
            writer.kill()
            server.terminate()
            server.wait(30)
        # a fresh server holding the same finished run (its page and one chart read)
        fresh, furl = start_server(base, args.cache_mb)
        try:
            urllib.request.urlopen(furl + "api/runs/soak/live", timeout=120).read()
            urllib.request.urlopen(furl + "api/runs/soak/live/series?metric=m0", timeout=120).read()
            fresh_rss = rss_mb(fresh.pid)
        finally:
            fresh.terminate()
            fresh.wait(30)
        peak = max(r[1] for r in rows) if rows else float("nan")
        print(f"# points written {written:,}, received (hello counts + streamed) {got[0]:,} "
              f"({'all' if got[0] == written else 'MISSING ' + str(written - got[0])}); "
              f"peak RSS {peak:.0f} MB, {after:.0f} MB {after_s:.0f} s after "
              f"the end; a fresh server holding the run: {fresh_rss:.0f} MB")


if __name__ == "__main__":
    main()
