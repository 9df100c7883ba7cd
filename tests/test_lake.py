"""The Parquet lake: DuckDB and Polars over 1,000 runs, checked against open_run;
incremental and crash-safe exports."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import need

import expman
from expman import lake
from expman.lake import export_lake

duckdb = need("duckdb")
need("pyarrow")

LRS = [0.1, 0.03, 0.01, 0.003, 0.001]
N_RUNS = 1000
STEPS = 8


def final_loss(i: int) -> float:
    """A deterministic, run-dependent final loss (so the best per lr is one run)."""
    return ((i * 7919) % 1000) / 1000 + LRS[i % len(LRS)]


def make_sweep(base, start: int, stop: int) -> None:
    for i in range(start, stop):
        with expman.Experiment("sweep", f"r{i:04d}", base_dir=base, capture_env=False,
                               handle_signals=False, system_metrics=False) as exp:
            exp.log_params({"lr": LRS[i % len(LRS)], "seed": i})
            for step in range(STEPS - 1):
                exp.log_metrics({"loss": 5.0 - step * 0.5, "acc": step / STEPS}, step=step)
            exp.log_metrics({"loss": final_loss(i)}, step=STEPS - 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """1,000 real runs. On a RAM disk when there is one: each run's close fsyncs
    three times, which costs ~20 ms a run on a shared disk and is not under test."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        root = Path(tempfile.mkdtemp(prefix="expman-lake-", dir=shm))
    else:
        root = tmp_path_factory.mktemp("lake")
    try:
        make_sweep(root / "experiments", 0, N_RUNS)
        yield root / "experiments"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def one(sql: str):
    return duckdb.sql(sql).fetchall()[0]


def metrics_sql(out) -> str:
    return f"read_parquet('{out}/metrics/**/*.parquet', hive_partitioning=true)"


def runs_sql(out) -> str:
    return f"read_parquet('{out}/runs/**/*.parquet', hive_partitioning=true, union_by_name=true)"


BEST_PER_LR = """
    with final as (
        select experiment, run, arg_max(value, step) as loss
        from {metrics} where metric = 'loss' group by experiment, run)
    select r."params.lr" as lr, min(f.loss) as best
    from final f join {runs} r on r.run_name = f.run and r.experiment = f.experiment
    group by lr order by lr"""


def test_duckdb_best_final_loss_per_lr_over_1000_runs(sweep, tmp_path):
    out = tmp_path / "lake"
    result = export_lake(sweep, out)
    assert result["runs"] == N_RUNS and not result["damaged"] and not result["skipped"]
    assert result["new_points"] == N_RUNS * (2 * STEPS - 1)
    got = duckdb.sql(BEST_PER_LR.format(metrics=metrics_sql(out), runs=runs_sql(out))).fetchall()

    expected: dict[float, float] = {}
    for s in expman.list_runs(sweep, "sweep", metrics=False):
        run = expman.open_run(s.path)
        loss = run.metrics["loss"]
        final = float(loss.values[list(loss.steps).index(max(loss.steps))])
        lr = run.params["lr"]
        expected[lr] = min(expected.get(lr, float("inf")), final)
    assert got == sorted(expected.items())
    # the runs table's summaries agree with the reader's
    last = dict(duckdb.sql(f'select run_name, "metrics.loss.last" from {runs_sql(out)}').fetchall())
    assert last["r0042"] == final_loss(42)
    assert one(f"select count(*) from {metrics_sql(out)}")[0] == \
        result["new_points"]


def test_polars_reads_the_lake(sweep, tmp_path):
    pl = need("polars")
    out = tmp_path / "lake"
    export_lake(sweep, out)
    m = pl.scan_parquet(f"{out}/metrics/**/*.parquet", hive_partitioning=True)
    r0 = (m.filter((pl.col("run") == "r0007") & (pl.col("metric") == "loss"))
          .sort("step").collect())
    run = expman.open_run(sweep / "sweep" / "r0007")
    assert r0["value"].to_list() == list(run.metrics["loss"].values)
    assert r0["step"].to_list() == list(run.metrics["loss"].steps)
    assert r0["time"].to_list() == list(run.metrics["loss"].times)
    assert set(r0["experiment"].to_list()) == {"sweep"}
    runs = pl.read_parquet(f"{out}/runs/**/*.parquet", hive_partitioning=True)
    assert runs.height == N_RUNS and set(runs["status"].to_list()) == {"FINISHED"}


def test_second_export_adds_only_what_is_new(tmp_path):
    base = tmp_path / "experiments"
    make_sweep(base, 0, 20)
    out = tmp_path / "lake"
    first = export_lake(base, out)
    assert first["new_points"] == 20 * (2 * STEPS - 1) and len(first["parts"]) == 1
    again = export_lake(base, out)
    assert again["new_points"] == 0 and again["parts"] == []       # nothing new, nothing written
    with expman.Experiment("sweep", "r0003", base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as exp:
        for step in range(STEPS, STEPS + 10):
            exp.log_metrics({"loss": -1.0 * step}, step=step)
    make_sweep(base, 20, 23)
    with expman.Experiment("other", "x", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"reward": 1.5})
    third = export_lake(base, out)
    assert third["new_points"] == 10 + 3 * (2 * STEPS - 1) + 1
    assert len(third["parts"]) == 2                               # one per experiment
    table = metrics_sql(out)
    total = sum(expman.open_run(s.path).metrics.points for s in expman.list_runs(base))
    assert one(f"select count(*) from {table}")[0] == total
    dupes = one(f"select count(*) - count(distinct (experiment, run, metric, step)) "
                       f"from {table}")[0]
    assert dupes == 0
    # the runs table follows: the resumed run's summary includes the new points
    row = one(f'select "metrics.loss.min", "metrics.loss.last", points from {runs_sql(out)} '
                     f"where run_name = 'r0003'")
    assert row == (-1.0 * (STEPS + 9), -1.0 * (STEPS + 9), 2 * STEPS - 1 + 10)


def test_an_export_killed_before_its_manifest_is_redone_without_duplicates(tmp_path, monkeypatch):
    base = tmp_path / "experiments"
    make_sweep(base, 0, 5)
    out = tmp_path / "lake"
    export_lake(base, out)
    make_sweep(base, 5, 8)

    def die(*a, **k):
        raise KeyboardInterrupt("killed between the parts and the manifest")
    monkeypatch.setattr(lake, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        export_lake(base, out)
    monkeypatch.undo()
    redo = export_lake(base, out)
    assert redo["new_points"] == 3 * (2 * STEPS - 1)
    table = metrics_sql(out)
    assert one(f"select count(*) from {table}")[0] == 8 * (2 * STEPS - 1)


def test_damaged_and_bad_inputs_are_reported(tmp_path, capsys):
    base = tmp_path / "experiments"
    make_sweep(base, 0, 2)
    (base / "sweep" / "r0001" / "run.json").write_text("{not json")
    out = tmp_path / "lake"
    result = export_lake(base, out)
    assert list(result["damaged"]) == ["sweep/r0001"] and result["runs"] == 1
    with pytest.raises(FileNotFoundError, match="no base dir"):
        export_lake(tmp_path / "missing", out)
    (out / lake.MANIFEST_FILE).write_text('{"version": 99}')
    with pytest.raises(expman.ExpmanValueError, match="_expman_lake.json"):
        export_lake(base, out)


def test_cli_module(tmp_path, capsys):
    from expman.cli import lake as lake_cmd
    base = tmp_path / "experiments"
    make_sweep(base, 0, 3)
    parser = argparse.ArgumentParser(prog="expman")
    lake_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-lake", str(base), "-o", str(tmp_path / "lake"), "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"] == 3 and printed["new_points"] == 3 * (2 * STEPS - 1)


def test_every_rank_of_a_multi_rank_run_is_in_the_lake(tmp_path, monkeypatch):
    """Two ranks of one torchrun job: both streams land in the long table, each
    point with its rank, and a second export adds nothing."""
    from expman.lake import export_lake
    base, out = tmp_path / "experiments", tmp_path / "lake"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    runs = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
        runs.append(expman.Experiment("ddp", base_dir=base, capture_env=False,
                                      system_metrics=False))
    for step in range(5):
        for rank, exp in enumerate(runs):
            exp.log_metrics({"loss": step + rank / 10}, step=step)
    for exp in reversed(runs):
        exp.close()
    export_lake(base, out)
    rows = duckdb.sql(f"select rank, step, value from {metrics_sql(out)} "
                      "where metric = 'loss' order by rank, step").fetchall()
    assert rows == [(r, s, s + r / 10) for r in (0, 1) for s in range(5)]
    assert export_lake(base, out)["new_points"] == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="POSIX: FIFOs and /dev/zero")
def test_links_fifos_and_devices_in_a_run_never_reach_the_lake(tmp_path):
    """Issue 20.4: a metrics.bin linked to another user's metrics, linked to /dev/zero,
    or replaced by a FIFO is that run's damage, named in the result; the export never
    follows the link, reads without end or waits, and the other runs are exported."""
    from conftest import run_python
    base, out = tmp_path / "experiments", tmp_path / "lake"
    make_sweep(base, 0, 4)
    other = tmp_path / "other_user"           # someone else's run, outside the base dir
    with expman.Experiment("private", "r", base_dir=other, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"secret": 42.0}, step=0)
    planted = {"r0001": other / "private" / "r" / "metrics.bin", "r0002": Path("/dev/zero")}
    for run, target in planted.items():
        link = base / "sweep" / run / "metrics.bin"
        link.unlink()
        link.symlink_to(target)
    fifo = base / "sweep" / "r0003" / "metrics.bin"
    fifo.unlink()
    os.mkfifo(fifo)
    # in a child: /dev/zero read whole would take the machine's memory (capped here, so it
    # fails as a MemoryError), a FIFO opened for reading waits for a writer (the timeout
    # only turns that hang into a failure)
    proc = run_python(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from expman.lake import export_lake
        print(json.dumps(export_lake({str(base)!r}, {str(out)!r}), default=str))
    """, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert sorted(result["damaged"]) == ["sweep/r0001", "sweep/r0002", "sweep/r0003"]
    for why in result["damaged"].values():
        assert why.startswith("metrics.bin: ") and "not a regular file" in why, why
    assert result["runs"] == 4 and result["new_points"] == 2 * STEPS - 1   # r0000's points
    got = duckdb.sql(f"select distinct run, metric from {metrics_sql(out)} order by all")
    assert got.fetchall() == [("r0000", "acc"), ("r0000", "loss")]
    assert fifo.exists() and not (fifo.stat().st_size)        # nothing was written into it


def test_one_failing_run_never_fails_the_export(tmp_path, monkeypatch):
    """Per-run isolation: a MemoryError decoding one run, a RecursionError building
    another's row and a crafted cursor in the manifest each make that run DAMAGED
    with the reason; every other run is exported."""
    from expman import table
    from expman.tail import RunTail
    base, out = tmp_path / "experiments", tmp_path / "lake"
    make_sweep(base, 0, 5)
    first = export_lake(base, out)
    assert first["runs"] == 5 and not first["damaged"]
    manifest = json.loads((out / lake.MANIFEST_FILE).read_text())
    manifest["runs"]["sweep/r0004"]["streams"]["metrics.bin"]["cursor"]["metrics"] = -1
    (out / lake.MANIFEST_FILE).write_text(json.dumps(manifest))
    make_sweep(base, 5, 8)
    poll, row = RunTail.poll_metrics, table.run_row

    def poll_or_fail(self):
        if self.path.name == "r0005":
            raise MemoryError("a crafted stream")
        return poll(self)

    def row_or_fail(info, *args):
        if info["run_name"] == "r0006":
            raise RecursionError("maximum recursion depth exceeded")
        return row(info, *args)
    monkeypatch.setattr(RunTail, "poll_metrics", poll_or_fail)
    monkeypatch.setattr(table, "run_row", row_or_fail)
    result = export_lake(base, out)
    assert sorted(result["damaged"]) == ["sweep/r0004", "sweep/r0005", "sweep/r0006"]
    assert "MemoryError: a crafted stream" in result["damaged"]["sweep/r0005"]
    assert "RecursionError" in result["damaged"]["sweep/r0006"]
    assert "not a RunTail.cursor" in result["damaged"]["sweep/r0004"]
    assert result["new_points"] == 2 * STEPS - 1                  # r0007, the only good new run
    got = duckdb.sql(f"select distinct run from {metrics_sql(out)} order by run").fetchall()
    assert got == [(f"r{i:04d}",) for i in (0, 1, 2, 3, 4, 7)]
    monkeypatch.undo()                  # fixed: the next export picks the failed runs up
    again = export_lake(base, out)
    assert sorted(again["damaged"]) == ["sweep/r0004"]           # its cursor is still crafted
    assert again["new_points"] == 2 * (2 * STEPS - 1)


def test_cli_names_a_damaged_run_and_exports_the_rest(tmp_path, capsys):
    from expman.cli import lake as lake_cmd
    base = tmp_path / "experiments"
    make_sweep(base, 0, 2)
    link = base / "sweep" / "r0001" / "metrics.bin"
    link.unlink()
    link.symlink_to(base / "sweep" / "r0000" / "metrics.bin")
    parser = argparse.ArgumentParser(prog="expman")
    lake_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-lake", str(base), "-o", str(tmp_path / "lake")])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"2 runs, {2 * STEPS - 1} new points")
    assert captured.err.startswith("expman: warning: sweep/r0001: DAMAGED: metrics.bin: ")


def test_the_lake_lists_through_the_index(tmp_path, monkeypatch):
    """A finished run the listing index holds, exported whole when final and whose
    folder did not change since, is not read again; its row is the same. A run
    resumed since (its folder changed) is read and its new points exported."""
    import expman.index
    from expman.reader import update_index
    monkeypatch.setattr(expman.index, "RACY", 0.0)
    base = tmp_path / "experiments"
    make_sweep(base, 0, 6)
    out = tmp_path / "lake"
    export_lake(base, out)                   # no index yet: every run read
    update_index(base)
    first = duckdb.sql(f"select * from {runs_sql(out)} order by run_name").fetchall()
    read = []
    real = lake._export_run
    monkeypatch.setattr(lake, "_export_run", lambda d, *a: read.append(d.name) or real(d, *a))
    assert export_lake(base, out)["new_points"] == 0
    assert read == []
    assert duckdb.sql(f"select * from {runs_sql(out)} order by run_name").fetchall() == first
    with expman.Experiment("sweep", "r0003", base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": -1.0}, step=STEPS)
    assert export_lake(base, out)["new_points"] == 1 and read == ["r0003"]
    assert one(f"select points from {runs_sql(out)} where run_name = 'r0003'")[0] == 2 * STEPS


def test_a_rewound_run_keeps_its_main_history_row_through_the_index(tmp_path, monkeypatch):
    """The index's fast path (a kept run is not read again) is not taken for a
    branched run: its runs-table row stays the main history's figures."""
    import expman.index
    from expman.reader import update_index
    monkeypatch.setattr(expman.index, "RACY", 0.0)
    base = tmp_path / "experiments"
    with expman.Experiment("sweep", "rw", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for s in range(10):
            exp.log_metrics({"loss": 10.0 + s}, step=s)
        exp.rewind(5)
        for s in range(5, 8):
            exp.log_metrics({"loss": 1.0 * s}, step=s)
    out = tmp_path / "lake"
    export_lake(base, out)
    update_index(base)
    sql = f'select "metrics.loss.max", "metrics.loss.last" from {runs_sql(out)}'
    first = duckdb.sql(sql).fetchall()
    assert first == [(14.0, 7.0)]                 # main history: 10..14 then 5, 6, 7
    export_lake(base, out)
    assert duckdb.sql(sql).fetchall() == first
