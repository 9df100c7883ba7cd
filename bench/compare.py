"""expman beside the loggers users would pick instead, one process per peer and phase.

    python bench/compare.py --setup-peers      # once: one venv per peer in bench/.peers/
    python bench/compare.py --quick            # ~3 minutes
    python bench/compare.py                    # ~15 minutes, the numbers in docs/benchmarks.md
    python bench/compare.py --plot docs/bench.png --markdown

Every peer runs the same workloads (bench/_worker.py) in its own interpreter,
one after another, never two at once. Peers whose venv is missing are skipped
with a note. Children run in a private network namespace (loopback only) when
`unshare` allows it, and with every peer's offline switches set, so nothing can
reach the internet; a child that hangs is killed at its time limit and reported.
Results (raw JSON) go to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_DIR = HERE / ".peers"
REQUIREMENTS = HERE / "requirements-peers.txt"
WORKER = HERE / "_worker.py"
EXPMAN_SRC = REPO      # --expman-src: where `import expman` finds the package under test

# name -> (venv under bench/.peers, or None for this interpreter; import statement)
PEERS = {
    "expman": (None, "import expman"),
    "noop": (None, ""),
    "jsonl-orjson": (None, "import orjson"),
    "expman-rs": ("expman-rs", "import expman"),
    "tensorboardX": ("tensorboardx", "from tensorboardX import SummaryWriter"),
    "wandb-offline": ("wandb", "import wandb"),
    "mlflow-sync": ("mlflow", "import mlflow"),
    "mlflow-async": ("mlflow", "import mlflow"),
    "trackio": ("trackio", "import trackio"),
}
ORDER = list(PEERS)

OFFLINE_ENV = {
    "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off", "WANDB_X_DISABLE_STATS": "true",
    "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_OFFLINE": "1",
    "GRADIO_ANALYTICS_ENABLED": "False", "TRACKIO_NO_UPDATE_CHECK": "1",
    "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    # the brief and DESIGN.md compare against MLflow's local file store, which 3.x
    # refuses by default in favour of SQLite
    "MLFLOW_ALLOW_FILE_STORE": "true",
}

MODES = {
    # seconds each phase may spend logging, repeats, caps
    "quick": dict(budget=0.6, repeats=3, phase_budget=3.0, import_repeats=3, timeout=120),
    "full": dict(budget=3.0, repeats=7, phase_budget=15.0, import_repeats=7, timeout=400),
}


# ---- set-up --------------------------------------------------------------------

def requirement_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    cur = None
    for line in REQUIREMENTS.read_text().splitlines():
        s = line.strip()
        if s.startswith("# [") and s.endswith("]"):
            cur = s[3:-1]
            sections[cur] = []
        elif s and not s.startswith("#") and cur:
            sections[cur].append(s)
    return sections


def setup_peers(only: list[str] | None) -> None:
    PEERS_DIR.mkdir(exist_ok=True)
    for venv, reqs in requirement_sections().items():
        if only and venv not in only:
            continue
        path = PEERS_DIR / venv
        py = path / "bin" / "python"
        if not py.exists():
            print(f"[setup] creating {path}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        print(f"[setup] {venv}: pip install {' '.join(reqs)}", flush=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *reqs])
        if r.returncode:
            print(f"[setup] {venv}: pip failed ({r.returncode}); that peer will be skipped",
                  flush=True)


# ---- running children ----------------------------------------------------------

def interpreter(peer: str) -> Path | None:
    venv = PEERS[peer][0]
    if venv is None:
        return Path(sys.executable)
    py = PEERS_DIR / venv / "bin" / "python"
    return py if py.exists() else None


def child_env(peer: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRACKIO_DIR")}
    env.update(OFFLINE_ENV)
    if PEERS[peer][0] is None:   # expman from this checkout (built in place) or installed
        env["PYTHONPATH"] = str(EXPMAN_SRC)
    env["HOME"] = env.get("HOME", "/tmp")
    return env


_NETNS: list[str] | None = None


def netns_prefix(enabled: bool) -> list[str]:
    """`unshare -n` with loopback up, where the kernel lets us (root on Linux)."""
    global _NETNS
    if not enabled:
        return []
    if _NETNS is None:
        _NETNS = []
        if sys.platform.startswith("linux") and shutil.which("unshare") and shutil.which("ip"):
            pre = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
            try:
                if subprocess.run(pre + ["true"], capture_output=True, timeout=10).returncode == 0:
                    _NETNS = pre
            except (OSError, subprocess.TimeoutExpired):
                pass
    return _NETNS


def run_child(cmd: list[str], env: dict[str, str], timeout: float, netns: bool) -> tuple[dict | None, str]:
    full = netns_prefix(netns) + cmd
    try:
        p = subprocess.run(full, env=env, capture_output=True, text=True, timeout=timeout,
                           cwd=str(REPO), start_new_session=True)
    except subprocess.TimeoutExpired as e:
        return None, f"timed out after {timeout:.0f} s (hung, maybe on network): " + \
            (e.stderr.decode(errors="replace")[-300:] if isinstance(e.stderr, bytes) else "")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return None, f"exit {p.returncode}: " + " | ".join(tail)
    return json.loads(lines[-1]), ""


def import_time(py: Path, stmt: str, env: dict, repeats: int, netns: bool, timeout: float):
    """Median wall time of the import statement alone, each in a fresh interpreter
    (interpreter start-up and site excluded; bytecode already compiled)."""
    if not stmt:
        return 0.0, ""
    code = f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
    out = []
    for _ in range(repeats):
        try:
            p = subprocess.run(netns_prefix(netns) + [str(py), "-c", code], env=env,
                               capture_output=True, text=True, timeout=timeout, cwd="/")
        except subprocess.TimeoutExpired:
            return None, "import timed out"
        if p.returncode:
            return None, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "import failed"
        out.append(float(p.stdout.strip().splitlines()[-1]))
    return statistics.median(out), ""


def calibrate_busy(target_ns: float = 20_000) -> tuple[int, float]:
    """busy(k) ~ target_ns of CPU: timed in this thread's CPU time, so a busy machine
    (which stretches wall time) does not shrink the step."""
    sys.path.insert(0, str(HERE))
    from _worker import busy
    k = 100
    for _ in range(6):
        times = []
        for _ in range(7):
            t0 = time.thread_time_ns()
            for _ in range(200):
                busy(k)
            times.append((time.thread_time_ns() - t0) / 200)
        per = min(times)
        k = max(10, int(k * target_ns / per))
    return k, per


# ---- one peer ------------------------------------------------------------------

def bench_peer(peer: str, cfg: dict, busy_k: int, busy_ns: float, netns: bool) -> dict:
    py = interpreter(peer)
    res: dict = {"peer": peer, "notes": []}
    if py is None:
        res["skipped"] = f"not installed (run --setup-peers; venv bench/.peers/{PEERS[peer][0]})"
        return res
    env = child_env(peer)
    t_start = time.perf_counter()
    imp, err = import_time(py, PEERS[peer][1], env, cfg["import_repeats"], netns, cfg["timeout"])
    if imp is None:
        res["skipped"] = f"cannot import: {err}"
        return res
    res["import_s"] = imp

    def phase(name: str, args: dict) -> dict | None:
        out, err = run_child([str(py), str(WORKER), peer, name, json.dumps(args)], env,
                             cfg["timeout"], netns)
        if out is None:
            res["notes"].append(f"{name}: {err}")
        return out

    timing = phase("timing", dict(budget=cfg["budget"], repeats=cfg["repeats"], busy_k=busy_k,
                                  busy_ns=busy_ns, max_calls=200_000))
    if timing is None:
        return res
    res["timing"] = timing
    pb = cfg["phase_budget"]
    est2 = max(timing["tight2_ns"], timing["calib_ns"] * 0.5, 50.0)
    est20 = max(timing["tight20_ns"], 10 * est2 * 0.5, 200.0)
    n_close = int(min(200_000, pb * 1e9 / est2))
    res["close"] = phase("close", dict(calls=max(n_close, 100)))
    n_read = int(min(50_000, pb * 1e9 / est20))
    res["read"] = phase("read", dict(calls=max(n_read, 50), repeats=3))
    if peer != "noop":
        n_mem = int(min(200_000, pb * 1e9 / est20))
        res["memory"] = phase("memory", dict(calls=max(n_mem, 50)))
        if peer == "expman":   # bounded: 5x the calls must not cost 5x the memory
            res["memory_5x"] = phase("memory", dict(calls=5 * n_mem))
    if peer != "noop":
        res["cliffs"] = phase("cliffs", dict(budget=pb, pairs=cfg["repeats"] * 2,
                                             max_calls=50_000))
        for note in (res["cliffs"] or {}).get("notes", []):
            res["notes"].append(f"cliffs: {note}")
    res["wall_s"] = time.perf_counter() - t_start
    return res


# ---- report --------------------------------------------------------------------

def fmt_ns(x):
    if x is None:
        return "-"
    if abs(x) >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if abs(x) >= 1e4:
        return f"{x / 1e3:.1f} us"
    return f"{x:.0f} ns"


def kcount(n: int) -> str:
    return f"{n // 1000}k" if n >= 10_000 else (f"{n / 1000:.1f}k" if n >= 1000 else str(n))


def ratio(x, ref):
    if x is None or not ref or ref <= 0:
        return ""
    return f" ({x / ref:.3g}x)"


def rows_for(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["peer", "2 keys tight", "20 keys tight", "2 keys spaced", "loop slowdown",
            "close() after N calls", "read/logged", "B/point", "peak RSS", "import",
            "read 1M points"]
    ref = next((r for r in results if r["peer"] == "expman" and "timing" in r), None)
    rt = ref["timing"] if ref else {}
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["peer"], f"skipped: {r['skipped']}"] + [""] * (len(head) - 2))
            continue
        t = r.get("timing") or {}
        c = r.get("close") or {}
        rd = r.get("read") or {}
        m = r.get("memory") or {}
        row = [r["peer"]]
        for key in ("tight2_ns", "tight20_ns", "spaced_ns"):
            v = t.get(key)
            row.append(fmt_ns(v) + ("" if r["peer"] in ("expman", "noop") else ratio(v, rt.get(key))))
        row.append(f"{t['slowdown_pct']:+.1f} %" if "slowdown_pct" in t else "-")
        if c:
            row.append(f"{c['close_s'] * 1e3:.1f} ms ({kcount(c['calls'])})")
            pr = c.get("points_read")
            row.append("-" if pr is None else f"{pr}/{c['points_logged']}" +
                       (" ok" if pr == c["points_logged"] else " LOST"))
            row.append(f"{c['bytes'] / c['points_logged']:.1f}" if r["peer"] != "noop" else "-")
        else:
            row += ["-", "-", "-"]
        row.append(f"{m['rss_peak_mb']:.0f} MB ({kcount(m['calls'])})" if m else "-")
        row.append(f"{r['import_s'] * 1e3:.0f} ms" if r.get("import_s") else "-")
        if rd and rd.get("read_s") is not None:
            est = rd["read_s"] * 1e6 / rd["points_logged"]
            row.append(f"{est:.3g} s" + ("" if rd["points_logged"] >= 1_000_000
                                         else f" (est. from {kcount(rd['points_logged'])})"))
        else:
            row.append("-")
        rows.append(row)
    return head, rows


def text_table(head, rows) -> str:
    shown = [r for r in rows if not r[1].startswith("skipped")]
    widths = [max(len(str(x[i])) for x in [head] + shown) for i in range(len(head))]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        if r[1].startswith("skipped"):
            out.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            out.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    return "\n".join(out)


def md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r[1].startswith("skipped"):
            out.append(f"| {r[0]} | {r[1]} |" + " |" * (len(head) - 2))
        else:
            out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def targets(results: list[dict]) -> list[tuple[str, str, str, bool | None]]:
    r = next((x for x in results if x["peer"] == "expman" and "timing" in x), None)
    if r is None:
        return []
    t, c, rd, m, m5 = (r.get(k) or {} for k in ("timing", "close", "read", "memory", "memory_5x"))
    out = [
        ("log_metrics 2 keys, tight", "<= 100 ns",
         f"{fmt_ns(t['tight2_ns'])} (thread CPU {fmt_ns(t.get('tight2_cpu_ns'))})", t["tight2_ns"] <= 100),
        ("log_metrics 2 keys, spaced ~20 us", "<= 200 ns", fmt_ns(t["spaced_ns"]), t["spaced_ns"] <= 200),
        ("log_metrics 20 keys, tight", "<= 600 ns",
         f"{fmt_ns(t['tight20_ns'])} (thread CPU {fmt_ns(t.get('tight20_cpu_ns'))})", t["tight20_ns"] <= 600),
        ("CPU-bound loop slowdown", "< 2 %", f"{t['slowdown_pct']:+.2f} %", t["slowdown_pct"] < 2),
    ]
    if c:
        out.append((f"close() after {c['calls'] // 1000}k calls", "< 20 ms",
                    f"{c['close_s'] * 1e3:.1f} ms", c["close_s"] < 0.020))
        bpp = c["bytes"] / c["points_logged"]
        out.append(("bytes on disk per point (2-key rows)", "<= 12", f"{bpp:.2f}", bpp <= 12))
        out.append(("points read back == logged", "equal", f"{c['points_read']}/{c['points_logged']}",
                    c["points_read"] == c["points_logged"]))
    if rd and rd.get("read_s") is not None:
        out.append(("read 1 M points into arrays (open_run)", "< 0.1 s", f"{rd['read_s']:.3f} s",
                    rd["read_s"] < 0.1))
    if m and m5:
        grow = m5["rss_peak_mb"] - m["rss_peak_mb"]
        out.append(("memory bounded (peak RSS, N vs 5N 20-key calls)", "flat",
                    f"{m['rss_peak_mb']:.0f} MB ({m['calls'] // 1000}k) vs {m5['rss_peak_mb']:.0f} MB "
                    f"({m5['calls'] // 1000}k)", grow < 16))
    cl = (r.get("cliffs") or {}).get("ratio", {})
    for case in CLIFF_CASES:
        if case in cl:
            out.append((f"log_metrics {case} vs literal floats", "<= 1.3x", f"{cl[case]:.2f}x",
                        cl[case] <= 1.3))
    out.append(("import expman", "< 30 ms", f"{r['import_s'] * 1e3:.1f} ms", r["import_s"] < 0.030))
    return out


CLIFF_CASES = ["2 f-string", "2 numpy.float64", "2 numpy.float32", "2 numpy.int64",
               "2 python int", "20 f-string"]


def cliff_table(results: list[dict]) -> str:
    """Per peer: each real-loop case as its own ratio to the literal-float case."""
    head = ["peer", "2 literal", "20 literal"] + [f"{c} (x literal)" for c in CLIFF_CASES]
    rows = []
    for r in results:
        c = r.get("cliffs")
        if not c:
            continue
        row = [r["peer"], fmt_ns(c["ns"].get("2 literal")), fmt_ns(c["ns"].get("20 literal"))]
        for case in CLIFF_CASES:
            x = c["ratio"].get(case)
            row.append("-" if x is None else f"{fmt_ns(c['ns'][case])} ({x:.2f}x)")
        rows.append(row)
    if not rows:
        return ""
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(x[i].ljust(widths[i]) for i in range(len(head)))
                     for x in [head, ["-" * w for w in widths]] + rows)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup-peers", action="store_true",
                    help="create/refresh one venv per peer under bench/.peers/ from "
                         "bench/requirements-peers.txt, then run")
    ap.add_argument("--setup-only", action="store_true", help="with --setup-peers: do not run")
    ap.add_argument("--quick", action="store_true", help="short budgets (~3 min in all)")
    ap.add_argument("--peers", default=",".join(ORDER), help="comma list (default: all)")
    ap.add_argument("--expman-src", metavar="DIR", default=str(REPO),
                    help="checkout whose expman (built in place) is measured; default: this "
                         "one (an installed expman is used if it has no build)")
    ap.add_argument("--no-netns", action="store_true",
                    help="do not isolate children in a network namespace")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each peer, wait up to S seconds for the 1-minute load "
                         "average to drop below 1.0 (a shared machine)")
    ap.add_argument("--plot", metavar="PNG", help="draw the per-call and slowdown chart "
                    "(needs matplotlib here or in bench/.peers/tools)")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    ap.add_argument("--json", metavar="PATH", help="raw results (default bench/results/<date>.json)")
    args = ap.parse_args()
    if args.setup_peers:
        setup_peers(None)
        if args.setup_only:
            return
    cfg = MODES["quick" if args.quick else "full"]
    global EXPMAN_SRC
    EXPMAN_SRC = Path(args.expman_src).resolve()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in PEERS:
            ap.error(f"unknown peer {p!r}; known: {', '.join(ORDER)}")
    command = "python bench/compare.py " + " ".join(sys.argv[1:])
    info = machine()
    try:
        info["expman_commit"] = subprocess.run(
            ["git", "-C", str(EXPMAN_SRC), "rev-parse", "--short", "HEAD"], capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["expman_commit"] = None
    busy_k, busy_ns = calibrate_busy()
    if (EXPMAN_SRC / "expman").is_dir():   # as pip does at install: import time excludes compiling
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(EXPMAN_SRC / "expman")],
                       capture_output=True)
    netns = bool(netns_prefix(not args.no_netns))
    print(f"{info['date']}  {info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}"
          + (f"; load avg {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""))
    print(f"expman from {EXPMAN_SRC} (commit {info['expman_commit']}); "
          f"mode {'quick' if args.quick else 'full'}; loop step = busy({busy_k}) ~ {busy_ns / 1e3:.1f} us; "
          f"network namespace: {'yes (loopback only)' if netns else 'no'}", flush=True)
    results = []
    t0 = time.perf_counter()
    for p in peers:
        if args.wait_quiet and hasattr(os, "getloadavg"):
            t_wait = time.perf_counter()
            while os.getloadavg()[0] >= 1.0 and time.perf_counter() - t_wait < args.wait_quiet:
                time.sleep(2)
        print(f"  {p} ...", end="", flush=True)
        r = bench_peer(p, cfg, busy_k, busy_ns, not args.no_netns)
        results.append(r)
        la = (r.get("timing") or {}).get("loadavg")
        print(f" {r.get('skipped') or '%.0f s' % r.get('wall_s', 0)}"
              + (f" (load avg {la:.2f})" if la is not None else "")
              + ("; " + "; ".join(r["notes"]) if r.get("notes") else ""), flush=True)
    print(f"all peers: {time.perf_counter() - t0:.0f} s\n")

    head, rows = rows_for(results)
    print(text_table(head, rows))
    print("\nmedians; (Nx) = peer / expman. 'spaced': one call timed alone between ~20 us of "
          "Python work. 'loop slowdown': a pure-Python loop of ~%.0f us steps logging 2 keys "
          "every step. close/read/B-per-point from N 2-key calls; peak RSS after N 20-key calls; "
          "read 1M extrapolated linearly where a slow peer wrote fewer." % (busy_ns / 1e3))
    ct = cliff_table(results)
    if ct:
        print("\nreal-loop cases (issue 10): thread-CPU ns per call on dicts built before the clock; "
              "(Nx) = median of per-pair ratios to the same peer's literal-float case; "
              "target for expman <= 1.3x")
        print(ct)
    tg = targets(results)
    if tg:
        print("\nexpman vs DESIGN.md targets")
        for what, goal, got, ok in tg:
            print(f"  {'MET ' if ok else 'MISS'}  {what:50} {goal:>10}   measured {got}")
    notes = [f"{r['peer']}: {n}" for r in results for n in r.get("notes", [])]
    if notes:
        print("\nnotes:\n  " + "\n  ".join(notes))
    if args.markdown:
        print("\n" + md_table(head, rows))
        if tg:
            print("\n| target | goal | measured | |\n|---|---|---|---|")
            for what, goal, got, ok in tg:
                print(f"| {what} | {goal} | {got} | {'met' if ok else '**missed**'} |")

    out = Path(args.json) if args.json else HERE / "results" / (
        _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "command": command, "busy_k": busy_k, "busy_ns": busy_ns,
               "netns": netns, "mode": "quick" if args.quick else "full", "results": results}
    out.write_text(json.dumps(payload, indent=1))
    print(f"\nraw results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if args.plot:
        plot(out, Path(args.plot))


def plot(results_json: Path, png: Path) -> None:
    script = HERE / "_plot.py"
    for py in (Path(sys.executable), PEERS_DIR / "tools" / "bin" / "python"):
        if not py.exists():
            continue
        if subprocess.run([str(py), "-c", "import matplotlib"], capture_output=True).returncode:
            continue
        r = subprocess.run([str(py), str(script), str(results_json), str(png)])
        if r.returncode == 0:
            print(f"plot: {png}")
        return
    print("plot: matplotlib not found (pip install matplotlib, or --setup-peers makes "
          "bench/.peers/tools)")


if __name__ == "__main__":
    main()
