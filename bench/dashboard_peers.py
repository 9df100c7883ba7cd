"""expman serve beside the dashboards users pick, on the same data, in one run: time from
launching each server to its first full chart of one series (1 M points with a one-step
spike of 50 at step 777), the points it sends, whether the spike is in them, the server's
memory, and time from launch to a runs view of 1,000 runs.

    python bench/dashboard_peers.py          # expman, MLflow, trackio, Aim; ~30 minutes with the writes
    python bench/dashboard_peers.py --points 200000 --runs 300 --data-dir /tmp/peers
    python bench/dashboard_peers.py --peers expman,aim --aim-python /work/aimvenv/bin/python --log-cost 100000

Each figure is the median over three fresh launches of each server. Every peer runs with
its defaults; a setting that is not a default is printed beside its
figures with its reason (each row's `settings`). Servers listen on 127.0.0.1 only, every
wait is bounded by --timeout, and the bench stops its servers itself. TensorBoard is in
`bench/dashboard.py --only tensorboard`.

MLflow: `mlflow server` with a SQLite store, as installed here (mlflow-skinny: the REST API
the UI calls, without the UI's JavaScript). The chart is what the UI asks for,
`/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval` with the server's default sample
size; the runs view is `runs/search` of the experiment. The 1 M points go through
`MlflowClient.log_batch` for the first and last 1,000 steps and straight into MLflow's own
`metrics` table for the rest (log_batch takes ~6 minutes for 1 M points here; the rows are
the ones it writes). The 1,000 runs go through the client.

Aim: `aim up` (its UI server: uvicorn with 2 workers by default) from a venv of its own, the
`[aim]` one of `--setup-peers` or --aim-python (aim 3.29's pins clash with this project's;
without one the row says "not measured"). Its data is written as Aim's users write it, `aim.Run().track(v, name=, step=)`
with the Run's defaults (~1 M points in 3 to 15 minutes here, 1,000 runs in ~8). The chart is
the Metrics explorer's `runs/search/metric` at its default density of 500, the runs view the
Runs page's `runs/search/run` for all runs; both answers are Aim's streamed tree encoding,
decoded here far enough to read each trace's steps and values (`aim_traces`). --log-cost N
times expman's log_metrics and Aim's Run.track per call, side by side.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

from dashboard import ENV, FRESH, MAKE_BIG, MAKE_MANY, Server, _get, free_port, tree_pids, tree_rss_mb, until

HERE = Path(__file__).resolve().parent
OFFLINE = dict(ENV, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")

MLFLOW_WRITE = textwrap.dedent("""
    import sys, math, time, sqlite3
    from mlflow.tracking import MlflowClient
    from mlflow.entities import Metric, Param
    db, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = MlflowClient(tracking_uri=f"sqlite:///{db}")
    ts = int(time.time() * 1000)
    v = lambda i: math.sin(i * 1e-5) + (50.0 if i % 1_000_003 == 777 else 0.0)
    r = c.create_run(c.create_experiment("big"), run_name="one_series").info.run_id
    c.log_batch(r, metrics=[Metric("loss", v(i), ts, i) for i in range(min(n, 1000))])
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                        "VALUES ('loss', ?, ?, ?, ?, 0)",
                        ((v(i), ts, r, i) for i in range(1000, max(1000, n - 1000))))
    c.log_batch(r, metrics=[Metric("loss", v(i), ts, i) for i in range(max(1000, n - 1000), n)])
    c.set_terminated(r)
    sweep = c.create_experiment("sweep")
    for k in range(runs):
        run = c.create_run(sweep, run_name=f"run{k:05d}").info.run_id
        c.log_batch(run, params=[Param("lr", str(10 ** -(1 + k % 4))), Param("batch", str(32 * (1 + k % 3))),
                                 Param("depth", str(k % 7))],
                    metrics=[Metric(m, x, ts, s) for s in range(10)
                             for m, x in (("loss", 1 / (s + 1 + k % 5)), ("acc", s / 10))])
        c.set_terminated(run)
    print(json.dumps({"run": r, "big": c.get_experiment_by_name("big").experiment_id, "sweep": sweep}))
""").replace("import sys,", "import json, sys,")


def post(url: str, doc: dict[str, Any]) -> bytes | None:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return bytes(r.read())
    except OSError:
        return None


def timed(fetch: Any) -> tuple[float, bytes]:
    t = time.perf_counter()
    body = fetch()
    if body is None:
        raise OSError("no answer")
    return time.perf_counter() - t, body


def measure(launch: Any, chart: Any, runs_view: Any, timeout: float, version: str = "") -> dict[str, Any]:
    """A fresh server for the chart, another for the runs view. `launch(which)` starts one and
    returns (stop, pid, start time, up): launch to `up`'s first answer is `up_s`, then each
    request is timed on its own, cold. `version`: the server's own answer on what it runs,
    printed with its process count as the row's effective settings."""
    stop, pid, t, up = launch("chart")
    try:
        until(up, timeout, every=0.05)
        r: dict[str, Any] = {"up_s": time.perf_counter() - t}
        r["chart_s"], r["body"] = timed(chart)
        r["rss_mb"] = tree_rss_mb(pid)
        said = (_get(version) or b"").decode()[:120] if version else ""
        r["effective"] = f"{len(tree_pids(pid))} processes" + (f", {version.rsplit('/', 1)[1]}: {said}" if said else "")
    finally:
        stop()
    stop, pid, t, up = launch("runs")
    try:
        until(up, timeout, every=0.05)
        r["runs_view_s"], r["runs"] = timed(runs_view)
    finally:
        stop()
    return r


def expman_rows(data: Path, points: int, runs: int, timeout: float) -> dict[str, Any]:
    big, many = data / f"expman-{points}", data / f"expman-runs-{runs}"
    for d, code, n in ((big, MAKE_BIG, points), (many, MAKE_MANY, runs)):
        if not d.exists():
            subprocess.run([sys.executable, "-c", code, str(d) + ".partial", str(n)], env=ENV, check=True)
            (d.parent / (d.name + ".partial")).rename(d)
    url = [""]

    def launch(which: str) -> tuple[Any, int, float, Any]:
        t = time.perf_counter()
        srv = Server(big if which == "chart" else many)
        url[0] = srv.url
        return srv.close, srv.proc.pid, t, partial(_get, srv.url)     # up: the page itself
    r = measure(launch, lambda: _get(url[0] + "api/runs/big/ten_million/series?metric=loss&points=1200"),
                lambda: _get(url[0] + "api/runs"), timeout)
    doc = json.loads(r.pop("body"))
    r.update(points_sent=len(doc["x"]), max=max(doc["y"]), runs_listed=json.loads(r.pop("runs"))["total"],
             settings="python -m expman.dashboard BASE --port 0 (defaults); the chart asks for 1,200 px")
    return r


def mlflow_rows(data: Path, points: int, runs: int, timeout: float) -> dict[str, Any]:
    import mlflow
    db, ids = data / f"mlflow-{points}-{runs}.db", data / f"mlflow-{points}-{runs}.json"
    if not ids.exists():
        out = subprocess.run([sys.executable, "-c", MLFLOW_WRITE, str(db), str(points), str(runs)], env=OFFLINE,
                             check=True, capture_output=True, text=True, timeout=1800).stdout
        ids.write_text(out.strip().splitlines()[-1])
    meta = json.loads(ids.read_text())
    cli = str(Path(sys.executable).with_name("mlflow"))
    port = free_port()
    root = f"http://127.0.0.1:{port}/"
    api = root + "ajax-api/2.0/mlflow/"

    def launch(which: str) -> tuple[Any, int, float, Any]:
        t = time.perf_counter()
        proc = subprocess.Popen([cli, "server", "--backend-store-uri", f"sqlite:///{db}",
                                 "--host", "127.0.0.1", "--port", str(port)], env=OFFLINE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def stop() -> None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        return stop, proc.pid, t, partial(_get, root + "health")
    r = measure(launch, partial(_get, api + f"metrics/get-history-bulk-interval?run_ids={meta['run']}&metric_key=loss"),
                partial(post, api + "runs/search", {"experiment_ids": [meta["sweep"]], "max_results": runs}),
                timeout, root + "version")
    ms = json.loads(r.pop("body"))["metrics"]
    r.update(points_sent=len(ms), max=max(m["value"] for m in ms),
             runs_listed=len(json.loads(r.pop("runs"))["runs"]),
             settings=f"mlflow {mlflow.__version__} server --backend-store-uri sqlite:///DB --host 127.0.0.1 "
                      "(otherwise its defaults: 4 uvicorn workers); the chart is the UI's sampled request, "
                      "max_results left to the server")
    return r


TRACKIO_WRITE = textwrap.dedent("""
    import sys, math, trackio
    n, runs = int(sys.argv[1]), int(sys.argv[2])
    trackio.init(project="big", name="one_series")
    for i in range(n):
        trackio.log({"loss": math.sin(i * 1e-5) + (50.0 if i % 1_000_003 == 777 else 0.0)}, step=i)
    trackio.finish()
    for k in range(runs):
        trackio.init(project="sweep", name=f"run{k:05d}",
                     config={"lr": 10 ** -(1 + k % 4), "batch": 32 * (1 + k % 3), "depth": k % 7})
        for s in range(10):
            trackio.log({"loss": 1 / (s + 1 + k % 5), "acc": s / 10}, step=s)
        trackio.finish()
""")


def trackio_rows(data: Path, points: int, runs: int, timeout: float) -> dict[str, Any]:
    """trackio's own dashboard (`trackio show`, a Starlette app in trackio 0.43) in its own venv
    (bench/.peers/trackio: `python bench/compare.py --setup-peers`)."""
    py = HERE / ".peers" / "trackio" / "bin" / "python"
    if not py.exists():
        raise ImportError(f"no venv at {py.parent.parent} (python bench/compare.py --setup-peers --setup-only)")
    home = data / f"trackio-{points}-{runs}"
    env = dict(OFFLINE, TRACKIO_DIR=str(home), BROWSER="true")
    env.pop("PYTHONPATH", None)
    if not home.exists():
        subprocess.run([str(py), "-c", TRACKIO_WRITE, str(points), str(runs)], check=True, capture_output=True,
                       env=dict(env, TRACKIO_DIR=str(home) + ".partial"), timeout=1800)
        Path(str(home) + ".partial").rename(home)
    version = subprocess.run([str(py), "-c", "import trackio; print(trackio.__version__)"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/"

    def launch(which: str) -> tuple[Any, int, float, Any]:
        t = time.perf_counter()
        proc = subprocess.Popen([str(py), "-m", "trackio.cli", "show"], env=dict(env, GRADIO_SERVER_PORT=str(port)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def stop() -> None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        return stop, proc.pid, t, partial(post, api + "get_all_projects", {})
    r = measure(launch, partial(post, api + "get_logs_batch", {"project": "big", "scalar_only": True,
                                                                "runs": [{"run": "one_series", "run_id": None}]}),
                partial(post, api + "get_runs_for_project", {"project": "sweep"}), timeout,
                f"http://127.0.0.1:{port}/version")
    logs = json.loads(r.pop("body"))["data"][0]["logs"]
    ys = [x["loss"] for x in logs if isinstance(x.get("loss"), (int, float))]
    r.update(points_sent=len(ys), max=max(ys), runs_listed=len(json.loads(r.pop("runs"))["data"]),
             settings=f"trackio {version}: trackio show with TRACKIO_DIR=DIR, GRADIO_SERVER_PORT=P and "
                      "BROWSER=true (no browser here); the chart is the page's get_logs_batch (scalar_only)")
    return r


AIM_WRITE = textwrap.dedent("""
    import sys, math, aim
    big, many, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    run = aim.Run(repo=big, experiment="big")
    run.name = "one_series"
    for i in range(n):
        run.track(math.sin(i * 1e-5) + (50.0 if i % 1_000_003 == 777 else 0.0), name="loss", step=i)
    run.close()
    for k in range(runs):
        run = aim.Run(repo=many, experiment="sweep")
        run.name = f"run{k:05d}"
        run["hparams"] = {"lr": 10 ** -(1 + k % 4), "batch": 32 * (1 + k % 3), "depth": k % 7}
        for s in range(10):
            run.track(1 / (s + 1 + k % 5), name="loss", step=s)
            run.track(s / 10, name="acc", step=s)
        run.close()
""")

# The Metrics explorer's request (aim_ui 3.29: `runs/search/metric` with q = the selected
# metric and p = the chart's point density, "Maximum" = 500 by default).
AIM_CHART = "runs/search/metric/?q=" + urllib.parse.quote('(metric.name == "loss")') + "&p=500"


def aim_traces(body: bytes) -> list[tuple[list[float], list[float]]]:
    """The (steps, values) of each trace in an answer of Aim's streamed search API: records of
    uint32 key length, key, uint32 value length, value, where a key is the path of a value in
    the answer's tree (keys joined by 0xfe) and a value is a type byte and its content (5: bytes).
    A trace's `iters` and `values` are float64 blobs (aim/web/api/runs/utils.py)."""
    blobs: dict[bytes, dict[str, list[float]]] = {}
    at = 0
    while at < len(body):
        (n,) = struct.unpack_from("<I", body, at)
        key = body[at + 4:at + 4 + n]
        at += 4 + n
        (n,) = struct.unpack_from("<I", body, at)
        val = body[at + 4:at + 4 + n]
        at += 4 + n
        for part in ("values", "iters"):
            tail = f"\xfe{part}\xfeblob\xfe".encode("latin-1")
            if key.endswith(tail) and val[:1] == b"\x05":
                blobs.setdefault(key[:-len(tail)], {})[part] = array.array("d", val[1:]).tolist()
    return [(t["iters"], t["values"]) for t in blobs.values() if "iters" in t and "values" in t]


def aim_rows(data: Path, points: int, runs: int, timeout: float, python: Path | None = None) -> dict[str, Any]:
    """`aim up` (Aim's UI server) from Aim's own venv (--aim-python): its pins clash with ours.
    The chart is the Metrics explorer's request at its default density; the runs view is the
    Runs page's request, `runs/search/run`, for all 1,000 (the page asks 45 at a time)."""
    if python is None or not python.exists():
        raise ImportError(f"no Aim venv at {python} (python bench/compare.py --setup-peers --setup-only, "
                          "or --aim-python PY of a venv with aim)")
    big, many = data / f"aim-{points}", data / f"aim-runs-{runs}"
    env = dict(OFFLINE)
    env.pop("PYTHONPATH", None)
    if not (big.exists() and many.exists()):
        for d in (big, many):
            shutil.rmtree(d, ignore_errors=True)
            Path(str(d) + ".partial").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(python), "-c", AIM_WRITE, str(big) + ".partial", str(many) + ".partial", str(points),
                        str(runs)], env=env, check=True, capture_output=True, timeout=3600)
        for d in (big, many):
            Path(str(d) + ".partial").rename(d)
    version = subprocess.run([str(python), "-c", "from aim.__version__ import __version__; print(__version__)"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/"

    def launch(which: str) -> tuple[Any, int, float, Any]:
        t = time.perf_counter()
        proc = subprocess.Popen([str(python.with_name("aim")), "up", "--repo", str(big if which == "chart" else many),
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def stop() -> None:             # aim up -> uvicorn -> its workers: the whole group
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
            try:
                until(lambda: not _group_alive(proc.pid), 30, every=0.1)
            except TimeoutError:
                os.killpg(proc.pid, 9)
        return stop, proc.pid, t, partial(_get, api + "projects/")
    r = measure(launch, partial(_get, api + AIM_CHART), partial(_get, api + "runs/search/run/?q=&limit=0"), timeout)
    (steps, ys), = aim_traces(r.pop("body"))
    listed = r.pop("runs")
    r.update(points_sent=len(ys), max=max(ys), last_step=int(max(steps)),
             runs_listed=listed.count(b"\xfeprops\xfename\xfe"),
             settings=f"aim {version}: aim up --repo DIR --host 127.0.0.1 --port P (otherwise its defaults: "
                      "2 uvicorn workers); the chart is the Metrics explorer's runs/search/metric at its "
                      "default density (p=500)")
    return r


COST_CHUNK = 1000
LOG_COST = textwrap.dedent("""
    import json, math, sys, time
    which, base, n, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    per = []
    if which == "expman":
        import expman
        run = expman.Experiment("cost", "one_key", base_dir=base)
        log = run.log_metrics
        for c in range(0, n, chunk):
            t = time.perf_counter()
            for i in range(c, c + chunk):
                log({"loss": math.sin(i * 1e-5)}, step=i)
            per.append((time.perf_counter() - t) / chunk)
    else:
        import aim
        run = aim.Run(repo=base)
        track = run.track
        for c in range(0, n, chunk):
            t = time.perf_counter()
            for i in range(c, c + chunk):
                track(math.sin(i * 1e-5), name="loss", step=i)
            per.append((time.perf_counter() - t) / chunk)
    t = time.perf_counter()
    run.close()
    per.sort()
    print(json.dumps({"ns_per_call": per[len(per) // 2] * 1e9, "close_s": time.perf_counter() - t}))
""")


def log_cost(data: Path, n: int, aim_python: Path | None) -> list[dict[str, Any]]:
    """What logging costs the training loop: expman's `log_metrics({"loss": v}, step=i)` and Aim's
    `run.track(v, name="loss", step=i)`, each with its defaults in a fresh process of its own venv;
    the median per call over chunks of COST_CHUNK calls (a fresh folder each time)."""
    env = dict(OFFLINE)
    env.pop("PYTHONPATH", None)
    loggers = [("expman Experiment.log_metrics", sys.executable, "expman", ENV),
               ("aim Run.track", str(aim_python), "aim", env)]
    out = []
    for name, py, which, e in loggers:
        if which == "aim" and not (aim_python and aim_python.exists()):
            out.append({"logger": name, "missing": f"not measured: no Aim venv at {aim_python}"})
            continue
        base = Path(tempfile.mkdtemp(prefix=f"cost-{which}-", dir=data))
        try:
            got = subprocess.run([py, "-c", LOG_COST, which, str(base), str(n), str(COST_CHUNK)], env=e, check=True,
                                 capture_output=True, text=True, timeout=3600).stdout
        finally:
            shutil.rmtree(base, ignore_errors=True)
        out.append({"logger": name, **json.loads(got.strip().splitlines()[-1]),
                    "load_average_1min": os.getloadavg()[0]})
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


PEERS = {"expman": ("expman serve", expman_rows), "mlflow": ("MLflow UI (REST, skinny)", mlflow_rows),
         "trackio": ("trackio show", trackio_rows), "aim": ("aim up", aim_rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--peers", default="expman,mlflow,trackio,aim")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per server to answer")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the written data here and reuse it")
    ap.add_argument("--aim-python", type=Path, default=HERE / ".peers" / "aim" / "bin" / "python",
                    help="the python of a venv with aim installed (Aim's pins clash with ours); "
                         "default: the [aim] venv of `python bench/compare.py --setup-peers`")
    ap.add_argument("--log-cost", type=int, default=0, metavar="N",
                    help="also time N calls of expman's log_metrics and of Aim's Run.track, side by side")
    args = ap.parse_args()
    PEERS["aim"] = ("aim up", partial(aim_rows, python=args.aim_python))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        for key in args.peers.split(","):
            name, fn = PEERS[key]
            try:
                got = [fn(data, args.points, args.runs, args.timeout) for _ in range(FRESH)]
                r = got[-1]
                for k in ("up_s", "chart_s", "runs_view_s"):     # the median over FRESH launches
                    r[k + "_all"] = [g[k] for g in got]
                    r[k] = statistics.median(r[k + "_all"])
            except ImportError as e:
                rows.append({"peer": name, "missing": f"not measured: {e}"})
                continue
            except (OSError, subprocess.SubprocessError, TimeoutError) as e:
                rows.append({"peer": name, "missing": f"could not run: {e!r}"[:300]})
                continue
            r.update(peer=name, spike_kept=r["max"] > 25, load_average_1min=os.getloadavg()[0])
            rows.append(r)
            print(json.dumps(r), flush=True)
        cost = log_cost(data, args.log_cost, args.aim_python) if args.log_cost else []
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard_peers.json").write_text(json.dumps({"points": args.points, "runs": args.runs,
                                                          "rows": rows, "log_cost": cost}, indent=2))
    print(f"\n{args.points:,} points, {args.runs:,} runs; launch to up, then each request cold\n"
          f"{'peer':26} {'up':>8} {'chart':>8} {'sent':>6} {'spike':>6} {'RSS':>8} {'runs view':>10} "
          f"{'load':>5}  settings")
    for r in rows:
        if "missing" in r:
            print(f"{r['peer']:26} {r['missing']}")
            continue
        print(f"{r['peer']:26} {r['up_s']:>6.2f} s {r['chart_s']:>6.2f} s {r['points_sent']:>6,} "
              f"{'kept' if r['spike_kept'] else 'lost':>6} {r['rss_mb']:>5.0f} MB {r['runs_view_s']:>8.2f} s "
              f"{r['load_average_1min']:>5.2f}  {r['settings']} (runs listed: {r['runs_listed']}; "
              f"the server: {r['effective']})")
    if cost:
        print(f"\nlogging one key with its step, {args.log_cost:,} calls, median of chunks of {COST_CHUNK:,}")
        for c in cost:
            print(f"{c['logger']:34} {c['ns_per_call']:>10,.0f} ns/call  close {c['close_s']:.3f} s  "
                  f"load {c['load_average_1min']:.2f}" if "ns_per_call" in c else f"{c['logger']:34} {c['missing']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
