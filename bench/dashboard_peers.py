"""expman serve beside the dashboards users pick, on the same data, in one run: time from
launching each server to its first full chart of one series (1 M points with a one-step
spike of 50 at step 777), the points it sends, whether the spike is in them, the server's
memory, and time from launch to a runs view of 1,000 runs.

    python bench/dashboard_peers.py          # expman, MLflow, trackio; ~10 minutes with the writes
    python bench/dashboard_peers.py --points 200000 --runs 300 --data-dir /tmp/peers

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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
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


PEERS = {"expman": ("expman serve", expman_rows), "mlflow": ("MLflow UI (REST, skinny)", mlflow_rows),
         "trackio": ("trackio show", trackio_rows)}
NOT_HERE = {
    "aim": "not measured yet: `aim up` needs the aim wheel and aimrocks in their own venv, and its "
           "chart data is a streamed binary encoding the bench does not decode yet",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--peers", default="expman,mlflow,trackio,aim")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per server to answer")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep the written data here and reuse it")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        for key in args.peers.split(","):
            if key in NOT_HERE:
                rows.append({"peer": key, "missing": NOT_HERE[key]})
                continue
            name, fn = PEERS[key]
            try:
                got = [fn(data, args.points, args.runs, args.timeout) for _ in range(FRESH)]
                r = got[-1]
                for k in ("up_s", "chart_s", "runs_view_s"):     # the median over FRESH launches
                    r[k + "_all"] = [g[k] for g in got]
                    r[k] = statistics.median(r[k + "_all"])
            except (OSError, subprocess.SubprocessError, TimeoutError, ImportError) as e:
                rows.append({"peer": name, "missing": f"could not run: {e!r}"[:300]})
                continue
            r.update(peer=name, spike_kept=r["max"] > 25, load_average_1min=os.getloadavg()[0])
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard_peers.json").write_text(json.dumps({"points": args.points, "runs": args.runs,
                                                          "rows": rows}, indent=2))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
