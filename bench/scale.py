"""Figures for docs/scale.md: lake export, DuckDB/Polars over 1,000 runs, sync throughput;
with --listing, `expman list` over many runs with and without the listing index.

    python bench/scale.py [--runs 1000] [--steps 100] [--sync-mb 64] [--sync-runs 100]
    python bench/scale.py --listing 10000 [--base DIR] [--repeats 5] [--skip-no-index]

Runs are made in a RAM disk when there is one (/dev/shm): making them is not
what is measured, and each close fsyncs. The S3 figures are against moto's
server on 127.0.0.1 in this process: they show the request cost of the layout
(objects per run, bytes per sync), not a real S3's bandwidth.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import expman  # noqa: E402
from expman.lake import export_lake  # noqa: E402
from expman.sync import sync  # noqa: E402

LRS = [0.1, 0.03, 0.01, 0.003, 0.001]


def make_runs(base: Path, start: int, stop: int, steps: int) -> int:
    points = 0
    for i in range(start, stop):
        with expman.Experiment("sweep", f"r{i:05d}", base_dir=base, capture_env=False,
                               handle_signals=False, system_metrics=False) as exp:
            exp.log_params({"lr": LRS[i % len(LRS)], "seed": i, "optim": {"name": "adam"}})
            for s in range(steps):
                exp.log_metrics({"loss": 1.0 / (s + 1) + (i % 97) * 1e-3,
                                 "acc": s / steps, "lr_now": LRS[i % len(LRS)]}, step=s)
            points += 3 * steps
    return points


def timed(fn, repeats: int = 5) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# `expman list --json` as the CLI runs it, but reading every run folder (no index)
NO_INDEX = ("import sys; from expman.cli._text import emit_json; from expman.reader import "
            "list_runs; emit_json([r.to_dict() for r in list_runs(sys.argv[1], index=False)])")
SQL = """with final as (select run, arg_max(value, step) as loss from metrics
                        where metric = 'loss' group by run)
         select p.number as lr, min(f.loss) as best from final f join params p using (run)
         where p.key = 'lr' group by 1 order by 1"""


def drop_caches() -> bool:
    """Empty the page cache (root only): the next read comes from the disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def command_time(argv: list[str], repeats: int, cold: bool) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of a command (output
    to /dev/null), each run after dropping the page cache when ``cold``, after
    one warm-up run. The CPU time is what the command cost whatever the machine's
    load; the wall time is what a user waits, on this shared machine, now.
    Modules are imported from their bytecode cache, as an installed package's
    are (``PYTHONDONTWRITEBYTECODE`` would make every run compile them again)."""
    import resource
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def once() -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    once()                       # (writes the bytecode cache if it is missing)
    ts = []
    for _ in range(repeats):
        if cold:
            drop_caches()
        ts.append(once())
    if not ts:
        return 0.0, 0.0
    return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)


def load() -> str:
    return "load %.1f" % os.getloadavg()[0]


def ms(t: tuple[float, float]) -> str:
    return f"{t[0] * 1e3:6.0f} ms (cpu {t[1] * 1e3:5.0f})"


def figure(label: str, warm: tuple[float, float], cold: tuple[float, float] | None,
           target: str) -> None:
    """One line: the figure, warm and cold (wall, and CPU in brackets), beside
    the issue's target, with the load average when it was taken."""
    got = f"warm {ms(warm)}" + (f", cold {ms(cold)}" if cold is not None else "")
    print(f"{label:<42} {got:<56} target {target:<22} ({load()})", flush=True)


def api_runs_page(base: Path, repeats: int) -> tuple[float, float]:
    """The /api/runs handler's work for its first page (listing, sort, one page
    as JSON), in this process, warm: median of ``repeats`` after one."""
    import orjson

    from expman.dashboard.server import Dashboard, sort_rows
    dash = Dashboard(base)

    def once() -> None:
        rows = sort_rows(dash.rows(), "start_time", True)
        orjson.dumps({"total": len(rows), "runs": rows[:1000]})
    once()
    cpu = time.process_time()
    wall = timed(once, repeats)
    return wall, (time.process_time() - cpu) / repeats


def listing(args: argparse.Namespace) -> None:
    """`expman list --json` over ``--listing`` runs, cold and warm, with and without
    the index; /api/runs' first page; `expman sql` over the same runs. Each figure
    is printed beside the issue's target (issue 24) for that many runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gen_runs import generate
    from expman.index import RunIndex
    from expman.layout import INDEX_FILE
    from expman.reader import update_index
    base = Path(args.base) if args.base else Path(tempfile.mkdtemp(prefix="expman-list-"))
    if not any(base.glob("*/*")):
        t0 = time.perf_counter()
        generate(base, args.listing, 3, args.steps, experiments=10, failed=args.listing // 20,
                 crashed=args.listing // 100, damaged=10)
        print(f"made {args.listing} runs in {time.perf_counter() - t0:.0f} s under {base}")
    n = sum(1 for _ in base.glob("*/*"))
    big = n > 20_000
    can_drop = drop_caches()
    print(f"{n} runs under {base}; page cache dropped for cold figures: {can_drop}; "
          f"medians of {args.repeats}; {os.cpu_count()} CPUs, {load()}")
    py = sys.executable
    t = update_index(base, rebuild=True)
    size = (base / INDEX_FILE).stat().st_size
    print(f"expman index --rebuild: {t['seconds']:.2f} s, {t['kept']} of {t['runs']} runs kept, "
          f"{size / 1e6:.1f} MB")
    rounds = [("python -c pass (start-up alone)", [py, "-c", "pass"], "")]
    if not args.skip_no_index:
        rounds.append(("expman list --json, no index", [py, "-c", NO_INDEX, str(base)], ""))
    rounds.append(("expman list --json, index", [py, "-m", "expman", "list", "--json", str(base)],
                   "warm < 1 s, cold < 5 s" if big else "warm < 150 ms, cold < 1 s"))
    for label, argv, target in rounds:
        warm = command_time(argv, args.repeats, cold=False)
        cold = command_time(argv, args.repeats, cold=True) if can_drop else None
        figure(label, warm, cold, target)
    assert len(RunIndex.load(base)) == t["kept"]
    figure("/api/runs first page (handler, in-process)", api_runs_page(base, args.repeats),
           None, "warm < 200 ms" if big else "")
    sql = [py, "-m", "expman", "sql", SQL, str(base)]
    env_cache = os.environ.setdefault("EXPMAN_CACHE_DIR", str(base.parent / "expman-cache"))
    t0 = time.perf_counter()
    command_time(sql, 0, cold=False)
    print(f"expman sql, first query (exports {n} runs to the lake in {env_cache}): "
          f"{time.perf_counter() - t0:.1f} s ({load()})")
    figure("expman sql, best final loss per lr", command_time(sql, args.repeats, False),
           command_time(sql, args.repeats, True) if can_drop else None,
           "" if big else "warm < 200 ms, cold < 1 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--sync-mb", type=int, default=64, help="size of the one big run synced")
    ap.add_argument("--sync-runs", type=int, default=100, help="small runs synced to S3")
    ap.add_argument("--listing", type=int, metavar="RUNS",
                    help="only the listing bench, over this many runs")
    ap.add_argument("--base", help="--listing: use (or fill) this base dir, on a real disk")
    ap.add_argument("--repeats", type=int, default=5, help="--listing: runs per median")
    ap.add_argument("--skip-no-index", action="store_true",
                    help="--listing: leave out the listing without the index (minutes at 100,000)")
    args = ap.parse_args()
    if args.listing:
        listing(args)
        return
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="expman-scale-",
                                 dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    os.environ["EXPMAN_CACHE_DIR"] = str(root / "cache")
    try:
        base = root / "experiments"
        points = make_runs(base, 0, args.runs, args.steps)
        print(f"{args.runs} runs, {points:,} points under {root}")

        t0 = time.perf_counter()
        import pyarrow.parquet  # noqa: F401  (its first import is not the export's cost)
        print(f"import pyarrow.parquet: {time.perf_counter() - t0:.2f} s")
        lake = root / "lake"
        t0 = time.perf_counter()
        r = export_lake(base, lake)
        t = time.perf_counter() - t0
        print(f"export_lake, first export: {t:.2f} s ({r['new_points'] / t:,.0f} points/s, "
              f"{args.runs / t:,.0f} runs/s)")
        t = timed(lambda: export_lake(base, lake), 3)
        print(f"export_lake, nothing new:  {t:.2f} s")
        make_runs(base, args.runs, args.runs + 10, args.steps)
        t0 = time.perf_counter()
        r = export_lake(base, lake)
        print(f"export_lake, 10 new runs:  {time.perf_counter() - t0:.2f} s "
              f"({r['new_points']:,} new points)")

        import duckdb
        q = f"""
            with final as (
                select run, arg_max(value, step) as loss
                from read_parquet('{lake}/metrics/**/*.parquet', hive_partitioning=true)
                where metric = 'loss' group by run)
            select r."params.lr", min(f.loss) from final f
            join read_parquet('{lake}/runs/**/*.parquet', hive_partitioning=true,
                              union_by_name=true) r on r.run_name = f.run
            group by 1 order by 1"""
        t = timed(lambda: duckdb.sql(q).fetchall())
        print(f"DuckDB, best final loss per lr over {args.runs + 10} runs: {t * 1e3:.0f} ms")
        import polars as pl
        t = timed(lambda: (
            pl.scan_parquet(f"{lake}/metrics/**/*.parquet", hive_partitioning=True)
            .filter(pl.col("metric") == "loss").sort("step")
            .group_by("run").agg(pl.col("value").last())
            .join(pl.scan_parquet(f"{lake}/runs/**/*.parquet", hive_partitioning=True,
                                  missing_columns="insert", extra_columns="ignore")
                  .select("run_name", "params.lr"), left_on="run", right_on="run_name")
            .group_by("params.lr").agg(pl.col("value").min()).collect()))
        print(f"Polars, the same query: {t * 1e3:.0f} ms")
        t = timed(lambda: expman.table.runs(base), 3)
        print(f"expman.runs() over {args.runs + 10} runs (decodes each run): {t:.2f} s")

        mirror = root / "mirror"
        t0 = time.perf_counter()
        r = sync(base, str(mirror))
        t = time.perf_counter() - t0
        print(f"sync to a path, {r['runs']} runs: {t:.2f} s "
              f"({(r['bytes_appended'] + r['bytes_whole']) / t / 1e6:.1f} MB/s)")

        from moto.server import ThreadedMotoServer
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
                          AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
                          NO_PROXY="127.0.0.1,localhost")
        try:
            import logging
            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            from expman.remote import filesystem
            fs, _ = filesystem("s3://bench")
            fs.mkdir("bench")
            small = root / "small"
            make_runs(small, 0, args.sync_runs, args.steps)
            t0 = time.perf_counter()
            r = sync(small, "s3://bench/small")
            t = time.perf_counter() - t0
            print(f"sync to S3 (moto), {args.sync_runs} small runs: {t:.2f} s "
                  f"({args.sync_runs / t:.0f} runs/s, {r['objects']} objects)")
            big = root / "big"
            with expman.Experiment("big", "r", base_dir=big, capture_env=False,
                                   system_metrics=False) as exp:
                vals = {f"m{k:02d}": 0.5 for k in range(20)}
                while (big / "big" / "r" / "metrics.bin").stat().st_size < args.sync_mb << 20:
                    for _ in range(20000):
                        exp.log_metrics(vals)
                    exp.flush()
            size = (big / "big" / "r" / "metrics.bin").stat().st_size
            t0 = time.perf_counter()
            sync(big, "s3://bench/big")
            t = time.perf_counter() - t0
            print(f"sync to S3 (moto), one run of {size / 1e6:.0f} MB: {t:.2f} s "
                  f"({size / t / 1e6:.1f} MB/s)")
            with expman.Experiment("big", "r", base_dir=big, resume=True, capture_env=False,
                                   system_metrics=False) as exp:
                for _ in range(1000):
                    exp.log_metrics(vals)
            t0 = time.perf_counter()
            r = sync(big, "s3://bench/big")
            print(f"sync again after 1,000 more rows: {time.perf_counter() - t0:.3f} s, "
                  f"{r['bytes_appended']:,} bytes appended, {r['bytes_whole']:,} whole")
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
