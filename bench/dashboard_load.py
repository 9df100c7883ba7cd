"""`expman serve` under load (issue 20, item 13): 10,000 runs and 200 open live
streams; the server's CPU and the latency (median, p95) of a run page, with the
streams open and without them. Loopback only; bounded in time (--seconds per
phase).

    python bench/dashboard_load.py                       # 10,000 runs, 200 streams
    python bench/dashboard_load.py --runs 2000 --streams 50 --seconds 10
    python bench/dashboard_load.py --server-tree /tmp/old   # the server from another checkout

The runs are 100 real runs (expman.Experiment) copied to --runs folders; one
more run stays live, logging 1,000 rows a second, and half the streams follow
it (the run page's stream), the other half watch the runs view (new runs and
live rows). The server is its own process (`python -m expman.dashboard`); its
CPU comes from /proc (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

MAKE = textwrap.dedent("""
    import sys, expman
    for r in range(100):
        with expman.Experiment(f"sweep{r % 10}", f"seed{r:03d}", base_dir=sys.argv[1],
                               capture_env=True, system_metrics=False) as exp:
            exp.log_params({"lr": 10 ** -(1 + r % 4), "batch": 32 * (1 + r % 3), "depth": r % 7})
            exp.info("start")
            for s in range(200):
                exp.log_metrics({"loss": 1 / (s + 1 + r % 5), "acc": s / 200}, step=s)
""")

LIVE = textwrap.dedent("""
    import sys, time, math, expman
    from pathlib import Path
    stop = Path(sys.argv[2])
    with expman.Experiment("live", "ticker", base_dir=sys.argv[1], capture_env=False,
                           system_metrics=False) as exp:
        print("ready", flush=True)
        t0, step = time.monotonic(), 0
        while not stop.exists():
            due = int((time.monotonic() - t0) * 1000)
            while step < due:
                exp.log_metrics({"loss": math.sin(step / 100), "acc": step % 7}, step=step)
                step += 1
            time.sleep(0.01)
""")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_runs(base: Path, n: int) -> list[str]:
    subprocess.run([sys.executable, "-c", MAKE, str(base)], env=ENV, check=True)
    seeds = sorted(p for p in base.glob("sweep*/seed*"))
    ids = [f"{p.parent.name}/{p.name}" for p in seeds]
    for i in range(len(seeds), n):
        src = seeds[i % len(seeds)]
        dst = base / src.parent.name / f"copy{i:05d}"
        shutil.copytree(src, dst)
        ids.append(f"{src.parent.name}/{dst.name}")
    return ids


async def hold_stream(port: int, query: str, opened: list[int], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"event: hello")
    opened[0] += 1
    while not stop.is_set():
        try:
            if not await asyncio.wait_for(reader.read(65536), 0.5):
                break
        except asyncio.TimeoutError:
            continue
    writer.close()


def page_latencies(url: str, ids: list[str], seconds: float, seed: int) -> list[float]:
    """Run pages (the detail JSON) of random runs, one after another, for ``seconds``
    (a seed per phase: each phase meets runs not decoded yet as the other does)."""
    rng = random.Random(seed)
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rid = rng.choice(ids)
        t = time.perf_counter()
        urllib.request.urlopen(f"{url}api/runs/{rid}", timeout=60).read()
        out.append(time.perf_counter() - t)
    return out


def phase(name: str, url: str, pid: int, ids: list[str], seconds: float,
          seed: int) -> dict[str, float]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    lat = page_latencies(url, ids, seconds, seed)
    cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    res = {"pages": len(lat), "median_ms": statistics.median(lat) * 1e3, "p95_ms": p95 * 1e3,
           "cpu": cpu}
    print(f"{name:<34} {res['pages']:>6} {res['median_ms']:>10.1f} {res['p95_ms']:>9.1f} "
          f"{100 * cpu:>9.0f} %", flush=True)
    return res


def idle_cpu(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--server-tree", default=None,
                    help="run the server from this source tree (a before/after comparison)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "experiments"
        t = time.monotonic()
        ids = make_runs(base, args.runs)
        print(f"# {len(ids):,} runs made in {time.monotonic() - t:.0f} s; load average "
              f"{os.getloadavg()[0]:.1f}; {os.cpu_count()} cores", flush=True)
        stop_file = Path(tmp) / "stop"
        live = subprocess.Popen([sys.executable, "-c", LIVE, str(base), str(stop_file)], env=ENV,
                                stdout=subprocess.PIPE, text=True)
        assert live.stdout is not None and live.stdout.readline().strip() == "ready"
        server_env = ENV if args.server_tree is None else dict(
            os.environ, PYTHONPATH=os.pathsep.join([args.server_tree, os.environ.get("PYTHONPATH", "")]))
        server = subprocess.Popen([sys.executable, "-m", "expman.dashboard", str(base), "--port",
                                   "0", "--no-browser"], env=server_env, stdout=subprocess.PIPE,
                                  text=True, cwd=tmp)
        assert server.stdout is not None
        url = server.stdout.readline().split(": ", 1)[1].strip()
        port = int(url.rsplit(":", 1)[1].strip("/"))
        try:
            t = time.monotonic()
            urllib.request.urlopen(url + "api/runs", timeout=600).read()
            print(f"# /api/runs first answer ({len(ids):,} runs, the start-up listing shared): "
                  f"{time.monotonic() - t:.2f} s", flush=True)
            print(f"{'phase':<34} {'pages':>6} {'median ms':>10} {'p95 ms':>9} {'server CPU':>11}")
            results = {"no streams": phase("no streams", url, server.pid, ids, args.seconds, 1)}

            async def with_streams() -> None:
                stop, opened = asyncio.Event(), [0]
                tasks = [asyncio.create_task(hold_stream(
                    port, "run=live/ticker" if i % 2 else "watch=live/ticker", opened, stop))
                    for i in range(args.streams)]
                while opened[0] < args.streams:
                    await asyncio.sleep(0.1)
                cpu = await asyncio.to_thread(idle_cpu, server.pid, args.seconds / 2)
                print(f"{f'{args.streams} streams open, no requests':<34} {'':>6} {'':>10} "
                      f"{'':>9} {100 * cpu:>9.0f} %", flush=True)
                results["streams idle"] = {"cpu": cpu}
                results["streams"] = await asyncio.to_thread(
                    phase, f"{args.streams} streams open", url, server.pid, ids, args.seconds, 2)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run(with_streams())
        finally:
            stop_file.touch()
            live.wait(30)
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
