"""expman serve, measured: time to first chart for one metric of 10 M points
(server answer and browser paint), the runs view for 5,000 runs, live update
latency, browser CPU with 20 live charts, server memory, ticking a run in a base
holding a 12,000-metric run (`--only wide`); the sweep views
(bench/dashboard_sweep.py): parallel coordinates over 10,000 runs and brushing,
bands of 4 groups of 5 runs of 1 M points, a live band of 8 runs.

    python bench/dashboard.py                    # ~3 minutes; the figures in docs/dashboard.md
    python bench/dashboard.py --only hparams --only bands --only liveband --sweep-dir /tmp/sweep
    python bench/dashboard.py --points 1000000 --runs 500 --quick
    python bench/dashboard.py --only tensorboard --tb-slow   # beside TensorBoard, 200 k and 1 M points

`--tensorboard` runs TensorBoard as a user does (`tensorboard --logdir`, its defaults:
`--load_fast auto`, the Rust tensorboard-data-server); `--tb-slow` adds the pure-Python
loader as a labelled row. Each server's effective settings are printed beside its figures.

The server runs as its own process (`python -m expman.dashboard`), the browser
is Debian's headless Chromium driven by Playwright. Absolute numbers move with
the machine's load; results also go to bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from functools import partial
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
CHROMIUM = os.environ.get("EXPMAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))

MAKE_BIG = textwrap.dedent("""
    import sys, math, expman
    n = int(sys.argv[2])
    log = None
    with expman.Experiment("big", "ten_million", base_dir=sys.argv[1], capture_env=False,
                           buffer_size=64 << 20) as exp:
        log = exp.log_metrics
        for i in range(n):
            v = math.sin(i * 1e-5) + (50.0 if i % 1_000_003 == 777 else 0.0)
            log({"loss": v}, step=i)
""")

MAKE_MANY = textwrap.dedent("""
    import sys, expman
    for r in range(int(sys.argv[2])):
        with expman.Experiment(f"sweep{r % 10}", f"run{r:05d}", base_dir=sys.argv[1],
                               capture_env=False) as exp:
            exp.log_params({"lr": 10 ** -(1 + r % 4), "batch": 32 * (1 + r % 3), "depth": r % 7})
            for s in range(10):
                exp.log_metrics({"loss": 1 / (s + 1 + r % 5), "acc": s / 10}, step=s)
""")

LIVE = textwrap.dedent("""
    import sys, time, math
    from pathlib import Path
    import expman
    stop = Path(sys.argv[2])
    keys = [f"m{k:02d}" for k in range(int(sys.argv[3]))]
    with expman.Experiment("live", "ticker", base_dir=sys.argv[1], capture_env=False,
                           flush_interval=0.05) as exp:
        step = 0
        while not stop.exists():
            exp.log_metrics({k: math.sin(step / 10 + i) for i, k in enumerate(keys)}, step=step)
            step += 1
            time.sleep(0.05)
""")


FRESH = 3          # cold figures: the median over this many fresh servers

# In-page clock for the first chart: from the click on a run's box to the first
# animation frame after its chart got its data (the browser's own time, without
# the driver's round trips, which add ~0.2 s here).
PAINT_CLOCK = """() => {
  window.__painted = null;
  document.addEventListener('click', () => {
    const t0 = performance.now();
    new MutationObserver((ms, obs) => {
      if (document.querySelector('section.chart[data-series="1"] canvas')) {
        obs.disconnect();
        requestAnimationFrame(() => requestAnimationFrame(() => { window.__painted = performance.now() - t0; }));
      }
    }).observe(document.body, {attributes: true, childList: true, subtree: true});
  }, {capture: true, once: true});
}"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_get(url: str) -> tuple[float, bytes]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as r:
        body = r.read()
    return time.perf_counter() - t, body


class Server:
    """`python -m expman.dashboard BASE --port 0` in its own process."""

    def __init__(self, base: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "expman.dashboard", str(base), "--port", "0",
                                      "--no-browser"], env=ENV, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()           # "expman dashboard: URL"
        self.url = line.split(": ", 1)[1].strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def until(check: Any, timeout: float = 120.0, every: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(str(check))
        time.sleep(every)


def bench_big(pw: Any, base: Path, points: int, results: dict[str, Any]) -> None:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", MAKE_BIG, str(base), str(points)], env=ENV, check=True)
    results["big_write_s"] = time.perf_counter() - t
    size = (base / "big" / "ten_million" / "metrics.bin").stat().st_size
    results["big_file_mb"] = size / 1e6
    series = "api/runs/big/ten_million/series?metric=loss&points=1200"
    colds, firsts = [], []
    for attempt in range(FRESH):           # a fresh server each time: nothing decoded yet
        srv = Server(base)
        try:
            results["server_rss_idle_mb"] = rss_mb(srv.proc.pid)
            timed_get(srv.url + "api/runs")       # what the page asks first: the server is up
            cold, body = timed_get(srv.url + series)
            colds.append(cold)
            if attempt == 0:
                warm, _ = timed_get(srv.url + series)
                doc = json.loads(body)
                results.update(series_warm_s=warm, series_points_sent=len(doc["x"]),
                               series_bytes=len(body), series_max=max(doc["y"]),
                               server_rss_loaded_mb=rss_mb(srv.proc.pid))
                zoom, zbody = timed_get(srv.url + series + "&from=5000000&to=5000500")
                results.update(zoom_s=zoom, zoom_raw=json.loads(zbody)["raw"])
        finally:
            srv.close()
        # the browser, on a fresh server: from ticking the run's box to the chart
        # drawn (the run's data fetched, decoded and painted)
        srv = Server(base)
        try:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(srv.url)
            page.locator('#runs tr[data-id="big/ten_million"] input').wait_for()
            page.evaluate(PAINT_CLOCK)
            page.locator('#runs tr[data-id="big/ten_million"] input').check()
            page.wait_for_selector('section.chart[data-metric="loss"][data-series="1"] canvas')
            page.wait_for_function("() => window.__painted !== null")
            firsts.append(page.evaluate("() => window.__painted") / 1000)
            browser.close()
        finally:
            srv.close()
    results.update(series_cold_s=statistics.median(colds), series_cold_all=colds,
                   browser_first_chart_s=statistics.median(firsts), browser_first_chart_all=firsts)


def bench_many(pw: Any, base: Path, runs: int, results: dict[str, Any]) -> None:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", MAKE_MANY, str(base), str(runs)], env=ENV, check=True)
    results["many_write_s"] = time.perf_counter() - t
    srv = Server(base)
    try:
        cold, body = timed_get(srv.url + "api/runs")
        warm, _ = timed_get(srv.url + "api/runs")
        results.update(runs_api_cold_s=cold, runs_api_warm_s=warm, runs_listed=json.loads(body)["total"])
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t = time.perf_counter()
        page.goto(srv.url)
        page.wait_for_selector("#runs tr[data-id]")
        results["browser_runs_view_s"] = time.perf_counter() - t
        t = time.perf_counter()
        page.fill("#expr-filter", "lr < 0.01 and depth >= 3")
        page.locator("#runs tr[data-id]").first.wait_for()
        results["browser_filter_s"] = time.perf_counter() - t
        browser.close()
    finally:
        srv.close()


MAKE_WIDE = textwrap.dedent("""
    import sys, math, warnings, expman
    warnings.simplefilter("ignore", RuntimeWarning)     # the many-names warning, on purpose
    base = sys.argv[1]
    for r in range(20):
        with expman.Experiment("sweep", f"run{r:02d}", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_params({"lr": 10 ** -(1 + r % 4), "seed": r})
            for s in range(1000):
                exp.log_metrics({"loss": math.exp(-s / 300) + r / 100, "acc": s / 1000,
                                 "lr": 0.1}, step=s)
    for name, n in (("five_thousand", 5000), ("twelve_thousand", 12000)):
        with expman.Experiment("wide", name, base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            for s in range(n):
                exp.log_metrics({f"loss_{s}": float(s)}, step=s)
""")

# In-page clock for ticking a run: from the click to the frame after every chart in the
# viewport holds its data (each fetched, decoded and drawn by uPlot), then painted.
TICK_CLOCK = """() => {
  window.__painted = null;
  document.addEventListener('click', () => {
    const t0 = performance.now();
    const check = () => {
      const inView = [...document.querySelectorAll('section.chart')].filter((c) => {
        const r = c.getBoundingClientRect();
        return !c.hidden && r.bottom > 0 && r.top < innerHeight && r.height > 0; });
      if (inView.length && inView.every((c) => c._chart && c._chart.loaded && c._chart.plot))
        requestAnimationFrame(() => { window.__painted = performance.now() - t0; });
      else requestAnimationFrame(check);
    };
    requestAnimationFrame(check);
  }, {capture: true, once: true});
}"""


def bench_wide(pw: Any, base: Path, repeats: int, results: dict[str, Any]) -> None:
    """A base holding a 12,000-metric run (and a 5,000-metric one, and 20 runs of 3
    metrics): from ticking a run's box to its charts painted, each run `repeats` times
    on a warm server, the page opened each time on an empty selection."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", MAKE_WIDE, str(base)], env=ENV, check=True)
    results["wide_write_s"] = time.perf_counter() - t
    srv = Server(base)
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # each run ticked alone, then one ticked beside the 12,000-metric run already charted
        for rid, before in (("sweep/run07", ""), ("wide/five_thousand", ""), ("wide/twelve_thousand", ""),
                            ("sweep/run07", "wide/twelve_thousand")):
            times = []
            for _ in range(repeats + 1):              # the first warms the server's cache
                page.goto(srv.url + "#/?run=" + before)
                page.reload()
                if before:
                    page.wait_for_selector('section.chart[data-series="1"] canvas')
                box = page.locator(f'#runs tr[data-id="{rid}"] input')
                box.wait_for()
                page.evaluate(TICK_CLOCK)
                box.check()
                until(lambda: page.evaluate("() => window.__painted") is not None)
                times.append(page.evaluate("() => window.__painted") / 1000)
            key = rid.split("/")[1] + ("_beside_" + before.split("/")[1] if before else "")
            results[f"wide_tick_{key}_s"] = statistics.median(times[1:])
            results[f"wide_tick_{key}_all"] = times[1:]
            results[f"wide_tick_{key}_charts"] = page.locator("section.chart").count()
        results["wide_runs_table_cells"] = page.locator("#runs td").count()
        browser.close()
    finally:
        srv.close()


def bench_live(pw: Any, base: Path, charts: int, results: dict[str, Any]) -> None:
    stop = base / "stop"
    proc = subprocess.Popen([sys.executable, "-c", LIVE, str(base), str(stop), str(charts)], env=ENV)
    srv = None
    try:
        until(lambda: (base / "live" / "ticker" / "metrics.bin").exists())
        srv = Server(base)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(srv.url)
        page.locator('#runs tr[data-id="live/ticker"] input').check()
        page.wait_for_selector('section.chart[data-metric="m00"][data-series="1"]')
        # latency: a point's logged wall time to its arrival in the page, over the stream
        page.evaluate("""() => { window.__lat = [];
            const es = new EventSource('/api/stream?run=live/ticker');
            es.addEventListener('points', e => { const p = JSON.parse(e.data);
              if (p.metric === 'm00') for (const t of p.times) window.__lat.push(Date.now() / 1000 - t); }); }""")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def task_s() -> float:
            m = {x["name"]: x["value"] for x in cdp.send("Performance.getMetrics")["metrics"]}
            return m["TaskDuration"]
        # every chart scrolled into view once, then back to the top: 20 live charts
        for i in range(charts):
            page.locator(f'section.chart[data-metric="m{i:02d}"]').scroll_into_view_if_needed()
        page.set_viewport_size({"width": 1400, "height": 6000})   # all charts in view
        time.sleep(1.0)
        t0, c0 = time.perf_counter(), task_s()
        time.sleep(10.0)
        t1, c1 = time.perf_counter(), task_s()
        lat = sorted(page.evaluate("window.__lat"))
        stop.touch()                      # the same page once the run has ended: the baseline
        proc.wait(timeout=30)
        time.sleep(2.0)
        t2, c2 = time.perf_counter(), task_s()
        time.sleep(5.0)
        t3, c3 = time.perf_counter(), task_s()
        results["live_browser_cpu_after_end_pct"] = 100 * (c3 - c2) / (t3 - t2)
        results.update(live_charts=charts, live_browser_cpu_pct=100 * (c1 - c0) / (t1 - t0),
                       live_latency_median_ms=1000 * lat[len(lat) // 2],
                       live_latency_p95_ms=1000 * lat[int(len(lat) * 0.95)], live_points=len(lat),
                       live_server_rss_mb=rss_mb(srv.proc.pid))
        browser.close()
    finally:
        stop.touch()
        proc.wait(timeout=30)
        if srv:
            srv.close()


TB_WRITE = textwrap.dedent("""
    import sys, math
    from tensorboardX import SummaryWriter
    w = SummaryWriter(sys.argv[1], max_queue=100000, flush_secs=3600)
    for i in range(int(sys.argv[2])):
        w.add_scalar("loss", math.sin(i * 1e-5) + (50.0 if i % 1_000_003 == 777 else 0.0), i)
    w.close()
""")


def tree_pids(pid: int) -> list[int]:
    """A process and its descendants: TensorBoard's default loader is a child process."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(kids.get(p, []))
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of a server with its child processes."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += rss_mb(p)
        except OSError:
            pass
    return total


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_both(data: Path, points: int, results: dict[str, Any]) -> tuple[Path, Path]:
    """One series of `points` steps with a one-step spike of 50 at step 777, written by
    expman and by tensorboardX (TensorBoard's writer); kept in `data` and reused."""
    ex, tb = data / f"expman-{points}", data / f"tb-{points}"
    for d, cmd, key in ((ex, [MAKE_BIG, str(ex)], "expman"), (tb, [TB_WRITE, str(tb)], "tensorboardX")):
        if d.exists():
            continue
        tmp = d.with_name(d.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", cmd[0], str(tmp), str(points)], env=ENV, check=True)
        results[f"write_{key}_{points}_s"] = time.perf_counter() - t
        tmp.rename(d)
    return ex, tb


def serve_expman(base: Path, points: int, timeout: float) -> dict[str, Any]:
    """From launching `python -m expman.dashboard` to the chart's answer (1,200 px)."""
    t = time.perf_counter()
    srv = Server(base)
    try:
        body = until(lambda: _get(srv.url + "api/runs/big/ten_million/series?metric=loss&points=1200"),
                     timeout, every=0.05)
        took = time.perf_counter() - t
        doc = json.loads(body)
        return {"first_full_answer_s": took, "points_sent": len(doc["x"]), "max": max(doc["y"]),
                "last_step": doc["x"][-1], "rss_mb": tree_rss_mb(srv.proc.pid),
                "settings": "python -m expman.dashboard BASE --port 0 (defaults)"}
    finally:
        srv.close()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return bytes(r.read())
    except OSError:
        return None


def serve_tensorboard(logdir: Path, points: int, flags: list[str], timeout: float) -> dict[str, Any]:
    """From launching `tensorboard --logdir` to an answer holding the series' last step
    (it loads in the background and answers with what it has read until then)."""
    port = free_port()
    tb = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    base = f"http://127.0.0.1:{port}/"
    t = time.perf_counter()
    proc = subprocess.Popen([tb, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last: list[Any] = []
    try:
        def full() -> Any:
            body = _get(base + "data/plugin/scalars/scalars?tag=loss&run=.")
            if body is None:
                return None
            data = json.loads(body)
            last[:] = data
            return data if data and data[-1][1] >= points - 1 else None
        try:
            data = until(full, timeout, every=0.05)
        except TimeoutError:
            return {"first_full_answer_s": None, "timed_out_s": timeout,
                    "last_step": last[-1][1] if last else None, "points_sent": len(last),
                    "rss_mb": tree_rss_mb(proc.pid), "settings": " ".join(flags) or "defaults"}
        took = time.perf_counter() - t
        env = json.loads(_get(base + "data/environment") or b"{}")
        fl = env.get("debug", {}).get("flags", {})
        return {"first_full_answer_s": took, "points_sent": len(data), "max": max(d[2] for d in data),
                "last_step": data[-1][1], "rss_mb": tree_rss_mb(proc.pid),
                "settings": f"load_fast={fl.get('load_fast')} "
                            f"data_provider={env.get('debug', {}).get('data_provider', '?').split('(')[0]} "
                            f"samples_per_plugin={fl.get('samples_per_plugin') or 'default (scalars 1000)'}"}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def bench_tensorboard(data: Path, sizes: list[int], slow: bool, timeout: float,
                      results: dict[str, Any]) -> None:
    """expman serve and TensorBoard on the same series, one size after another. TensorBoard
    runs as `tensorboard --logdir` does by default (`--load_fast auto`: the Rust
    tensorboard-data-server from the tensorboard wheel); `--tb-slow` adds the pure-Python
    loader (`--load_fast false`) as its own, labelled row."""
    import tensorboard
    rows = []
    for n in sizes:
        ex, tb = write_both(data, n, results)
        peers = [("expman serve", partial(serve_expman, ex, n, timeout)),
                 (f"TensorBoard {tensorboard.__version__} (default)", partial(serve_tensorboard, tb, n, [], timeout))]
        if slow:
            peers.append((f"TensorBoard {tensorboard.__version__} --load_fast false",
                          partial(serve_tensorboard, tb, n, ["--load_fast", "false"], timeout)))
        for name, fn in peers:
            runs = []              # the fast servers: the median over FRESH launches
            for _ in range(1 if "load_fast false" in name else FRESH):
                runs.append(fn())
                if runs[-1]["first_full_answer_s"] is None:
                    break
            times = [x["first_full_answer_s"] for x in runs]
            r = runs[len(runs) // 2] if None not in times else runs[-1]
            if None not in times:
                r["first_full_answer_s"] = statistics.median(times)
            r.update(peer=name, points=n, all_s=times, spike_kept=r.get("max") is not None and r["max"] > 25,
                     load_average_1min=os.getloadavg()[0])
            rows.append(r)
            print(json.dumps(r), flush=True)
    results["vs_tensorboard"] = rows
    print(f"\n{'peer':40} {'points':>9} {'first full answer':>18} {'/expman':>8} {'sent':>6} {'spike':>6} "
          f"{'RSS':>8} {'load':>5}  settings")
    ours = {r["points"]: r["first_full_answer_s"] for r in rows if r["peer"] == "expman serve"}
    for r in rows:
        s = r["first_full_answer_s"]
        took = f"{s:.2f} s" if s is not None else f"> {r['timed_out_s']:.0f} s (step {r['last_step']})"
        ratio = f"{s / ours[r['points']]:.1f}x" if s is not None else "-"
        print(f"{r['peer']:40} {r['points']:>9,} {took:>18} {ratio:>8} {r['points_sent']:>6,} "
              f"{'kept' if r['spike_kept'] else 'lost':>6} {r['rss_mb']:>5.0f} MB {r['load_average_1min']:>5.2f}"
              f"  {r['settings']}")


def sweep_parts(pw: Any, args: Any, tmp: Path, results: dict[str, Any]) -> None:
    """The sweep views (bench/dashboard_sweep.py), only when asked for with --only."""
    import dashboard_sweep as sw

    def make_runs(base: Path, n: int) -> None:
        subprocess.run([sys.executable, str(HERE / "gen_runs.py"), str(base), "--runs", str(n),
                        "--metrics", "3", "--steps", "10"], env=ENV, check=True)
    common = dict(server=Server, chromium=CHROMIUM, args=CHROMIUM_ARGS)
    parts = (("hparams", partial(sw.bench_hparams, timed_get=timed_get, make=make_runs), args.hp_runs),
             ("bands", partial(sw.bench_bands, timed_get=timed_get, env=ENV), args.band_points),
             ("liveband", partial(sw.bench_liveband, env=ENV), 15))
    for part, fn, n in parts:
        if part not in (args.only or ()):
            continue
        base = (args.sweep_dir or tmp) / f"{part}-{n}"
        if part == "liveband" and base.exists():
            shutil.rmtree(base)
        base.mkdir(parents=True, exist_ok=True)
        fn(pw, base, n, results, **common)
        if args.sweep_dir is None or part == "liveband":
            shutil.rmtree(base)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in results.items()}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--charts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7, help="ticks of each run in the wide base")
    ap.add_argument("--hp-runs", type=int, default=10_000, help="runs for the hyperparameter views")
    ap.add_argument("--band-points", type=int, default=1_000_000, help="points per run of the bands")
    ap.add_argument("--sweep-dir", type=Path, default=None,
                    help="keep the sweep parts' base dirs here and reuse them (10,000 runs take minutes to write)")
    ap.add_argument("--only", choices=("big", "many", "live", "wide", "tensorboard", "hparams", "bands",
                                       "liveband"), action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--tensorboard", action="store_true",
                    help="also expman serve beside TensorBoard (its defaults) on the same series")
    ap.add_argument("--tb-points", default="200000,1000000", help="series lengths, comma-separated")
    ap.add_argument("--tb-slow", action="store_true",
                    help="add TensorBoard's pure-Python loader (--load_fast false) as its own row")
    ap.add_argument("--tb-timeout", type=float, default=300.0, help="seconds per server to load a series")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the written series here and reuse them (tensorboardX writes 1 M points in ~1 min)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    results: dict[str, Any] = {"points": args.points, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        for part, fn, n in (("big", bench_big, args.points), ("many", bench_many, args.runs),
                            ("live", bench_live, args.charts), ("wide", bench_wide, args.repeats)):
            if args.only and part not in args.only:
                continue
            base = Path(tmp) / part
            base.mkdir()
            fn(pw, base, n, results)
            shutil.rmtree(base)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in results.items()}), flush=True)
        sweep_parts(pw, args, Path(tmp), results)
        if args.tensorboard or "tensorboard" in (args.only or ()):
            data = args.data_dir or Path(tmp) / "vs"
            data.mkdir(parents=True, exist_ok=True)
            bench_tensorboard(data, [int(n) for n in args.tb_points.split(",")], args.tb_slow,
                              args.tb_timeout, results)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    results["load_average_1min"] = os.getloadavg()[0]
    (out / "dashboard.json").write_text(json.dumps(results, indent=2))
    for k, v in results.items():
        if isinstance(v, list):
            continue
        print(f"{k:28} {v:.3f}" if isinstance(v, float) else f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
