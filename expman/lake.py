"""A Parquet lake of many runs, exported incrementally: ``export_lake(base, out)``.

    out/
      runs/experiment=<name>/runs.parquet         one row per run (expman.table columns)
      metrics/experiment=<name>/part-<seq>.parquet  run, rank, metric, step, time, value, branch
      _expman_lake.json                            the manifest: what is exported already

Both tables are hive-partitioned by experiment, so DuckDB and Polars read them
as they are:

    duckdb.sql("select * from read_parquet('out/metrics/**/*.parquet', hive_partitioning=true)")
    polars.scan_parquet("out/metrics/**/*.parquet", hive_partitioning=True)

Why incremental: a sweep keeps running while it is analysed. The manifest keeps,
per run stream, the ``RunTail.cursor`` after the last exported frame (its byte
offset and the stream's key table), so the next export resumes a ``RunTail``
there, decodes only the frames appended since and writes them as one new part
per experiment. The per-metric
summaries (the read model's MetricSummary) are kept in the manifest too, so the runs
table is rebuilt from it without decoding old data; it is small and rewritten
whole (atomically) each time, because statuses change without new data (a dead
run turns CRASHED).

Crash safety: parts are written first and the manifest last. A part's name is
the export's sequence number, which only advances with the manifest, so an
export killed midway is redone by the next one into the same part names
(overwritten, never duplicated). One exporter per lake at a time.

``time`` is Unix seconds (float64), as in metrics.bin. ``branch`` is the id of
the branch each point was written in (0 for a run that never rewound; a rewind
or a resume at a lower step opens branch 1, 2, ...: docs/format.md). The lake
holds every point as written, each once: a fork's inherited points are its
parent's rows (``runs.parent`` and ``runs.fork_step`` say where), and a rewound
run's abandoned points stay with their branch id. A stream that shrank
below its exported offset (replaced by hand) is not re-exported: it is
reported in ``skipped``; export to a fresh folder to start over.

Hostile runs: streams are read through ``RunTail``, the guarded reader (never
through a link, never a FIFO or a device). One bad run never fails the export:
whatever is wrong with it (unreadable metadata, a planted link, damage, even a
MemoryError) lands in ``damaged`` with the reason, and the other runs are
exported.
"""

from __future__ import annotations

import os
import time
import warnings
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import quote

from expman import layout
from expman._fsutil import atomic_write_json, read_json, read_json_object
from expman.branches import branches_file, is_branched, read_history
from expman.errors import ExpmanValueError
from expman.liveness import effective_status
from expman.reader import listing_loss
from expman.readmodel import merge_summaries, summary_from_json, summary_to_json
from expman.series import Series

__all__ = ["export_lake", "MANIFEST_FILE", "RUNS_DIR", "METRICS_DIR"]

MANIFEST_FILE = "_expman_lake.json"
RUNS_DIR = "runs"
METRICS_DIR = "metrics"
RUNS_TABLE = "runs.parquet"
LAKE_VERSION = 3           # 2: streams keep a RunTail.cursor; summaries are readmodel's
                           # 3: metric parts carry ``branch``; streams keep theirs


def _pa() -> Any:
    from expman.series import need as _need
    _need("pyarrow", "lake")
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401  (registers pa.parquet)
    return pa


def partition(experiment: str) -> str:
    """The hive folder of an experiment (names are single folder names already;
    '%' and '=' are escaped the way hive readers undo)."""
    return "experiment=" + quote(experiment, safe=" -_.,+@()[]{}~!$&'")


def rank_streams(run_dir: Path, meta: dict[str, Any]) -> list[tuple[int, Path]]:
    """The metric streams of a run and their rank: rank 0's metrics.bin, and for a
    multi-rank run every logging rank's metrics.rank<r>.bin that exists."""
    from expman.liveness import logging_ranks
    out = [(0, run_dir / layout.METRICS_FILE)]
    for r in logging_ranks(meta):
        path = run_dir / layout.rank_file(layout.METRICS_FILE, r)
        if r and os.path.lexists(path):
            out.append((r, path))
    return out


def _load_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST_FILE
    if not path.exists():
        return {"version": LAKE_VERSION, "seq": 0, "runs": {}}
    m = read_json(path)
    if not isinstance(m, dict) or m.get("version") != LAKE_VERSION:
        raise ExpmanValueError(f"{path} is not an expman lake manifest of version {LAKE_VERSION} "
                               "(made by another expman version?); export to a fresh folder")
    return m


def export_lake(base_dir: str | os.PathLike[str] | None,
                out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Export every run under ``base_dir`` to a Parquet lake in ``out_dir``, adding
    only what is new since the last export. Returns counts: ``runs``,
    ``new_points``, ``parts`` written, ``damaged`` and ``skipped`` runs (id -> why)."""
    pa = _pa()
    import pyarrow.parquet as pq
    t0 = time.perf_counter()
    base = layout.base_dir(base_dir)
    out = Path(os.fspath(out_dir))
    if not base.is_dir():
        raise FileNotFoundError(2, f"export_lake: no base dir {base}", str(base))
    out.mkdir(parents=True, exist_ok=True)
    manifest = _load_manifest(out)
    seq = int(manifest["seq"]) + 1
    known: dict[str, Any] = manifest["runs"]
    chunks: dict[str, _Columns] = {}             # experiment -> new metric rows
    rows: dict[str, list[dict[str, Any]]] = {}   # experiment -> runs table rows
    damaged: dict[str, str] = {}
    skipped: dict[str, str] = {}
    new_points = 0
    from expman.index import RunIndex
    index = RunIndex.load(base)         # read, never written here
    for run_dir in layout.iter_run_dirs(base):
        exp, name = run_dir.parent.name, run_dir.name
        rid = f"{exp}/{name}"
        line, key = index.lookup(exp, name, str(run_dir))
        old = known.get(rid)
        if (line is not None and old is not None and old.get("folder") == list(key or ())
                and line.get("parent") is None
                and not os.path.lexists(run_dir / branches_file(0))):
            rows.setdefault(exp, []).append(_kept_row(run_dir, line, old))
            continue        # exported whole when final, its folder unchanged since
        try:
            row = _export_run(run_dir, old, damaged, skipped)
        except Exception as e:  # noqa: BLE001  (MemoryError, RecursionError too: one run only)
            damaged[rid] = f"not exported: {type(e).__name__}: {e}"
            continue
        if row is None:
            continue
        entry, run_row, new = row
        if key is not None and run_row["status"] in layout.FINAL_STATUSES and rid not in damaged:
            entry["folder"] = list(key)     # its folder's key, taken before it was read
        known[rid] = entry
        rows.setdefault(exp, []).append(run_row)
        for rank, branch, metrics in new:
            for metric, series in metrics.items():
                if len(series):
                    new_points += len(series)
                    acc = chunks.get(exp)
                    if acc is None:
                        acc = chunks[exp] = _Columns()
                    acc.add(name, rank, metric, series, branch)

    parts = []
    for exp, acc in chunks.items():
        folder = out / METRICS_DIR / partition(exp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{seq:08d}.parquet"
        _write_atomic(pq, acc.table(pa), path)
        parts.append(str(path))
    from expman.table import arrow_table, columns_of
    for exp, exp_rows in rows.items():
        folder = out / RUNS_DIR / partition(exp)
        folder.mkdir(parents=True, exist_ok=True)
        cols = columns_of(exp_rows)
        cols.pop("experiment")           # the partition column says it
        _write_atomic(pq, arrow_table(cols), folder / RUNS_TABLE)
    if parts:
        manifest["seq"] = seq
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return {"runs": sum(len(r) for r in rows.values()), "new_points": new_points,
            "parts": parts, "damaged": damaged, "skipped": skipped,
            "seconds": time.perf_counter() - t0}


def _kept_row(run_dir: Path, line: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The runs-table row of a run the listing index holds (``line``: its
    fields) whose streams the manifest ``entry`` holds to their end, neither a
    fork nor branched (their figures are the main history's, which the
    manifest's summaries over every row written are not)."""
    from expman.table import run_row
    info = {"id": f"{run_dir.parent.name}/{run_dir.name}", "experiment": run_dir.parent.name,
            "run_name": run_dir.name, "path": run_dir,
            **{k: line[k] for k in ("status", "start_time", "end_time", "duration", "exit",
                                    "data_loss")}}
    row = run_row(info, line["params"],
                  {m: summary_from_json(s) for m, s in entry["summary"].items()})
    row["parent"] = row["fork_step"] = None     # neither forked nor branched (the caller's rule)
    return row


def _export_run(run_dir: Path, old: dict[str, Any] | None, damaged: dict[str, str],
                skipped: dict[str, str]
                ) -> tuple[dict[str, Any], dict[str, Any], list[tuple[int, int, Any]]] | None:
    """(its new manifest entry, its runs-table row, the new metrics of each rank and
    branch) for
    one run, or None when its metadata cannot be read (reported in ``damaged``).
    Nothing is changed before the whole run is read: the caller commits it."""
    from expman.table import run_row
    from expman.tail import RunTail
    rid = f"{run_dir.parent.name}/{run_dir.name}"
    try:
        meta = read_json_object(run_dir / layout.RUN_FILE)
        params_path = run_dir / layout.PARAMS_FILE
        params = read_json_object(params_path) if os.path.lexists(params_path) else {}
    except (OSError, ValueError) as e:
        damaged[rid] = f"unreadable metadata: {e}"
        return None
    entry: dict[str, Any] = {"streams": dict(old["streams"]) if old else {},
                             "summary": dict(old["summary"]) if old else {}}
    new: list[tuple[int, int, Any]] = []
    for rank, stream in rank_streams(run_dir, meta):
        known = entry["streams"].get(stream.name)
        try:
            tail = RunTail(run_dir, start=known["cursor"] if known else "beginning", rank=rank)
            parts, branch = _poll_branches(tail, run_dir, rank, known)
        except (OSError, ValueError) as e:       # a link, a FIFO, a device, a bad header...
            damaged[rid] = f"{stream.name}: {e}"
            continue
        if tail.rewound:
            skipped[rid] = (f"{stream.name} is shorter than the {known['cursor']['metrics']} "
                            "bytes already exported (cut or replaced); export to a fresh folder")
            continue
        report = tail.integrity
        if report["corrupt_bytes"]:
            damaged[rid] = (f"{stream.name}: {report['corrupt_bytes']} damaged bytes at "
                            f"{report['corrupt_at'][0]}; exported up to there")
        entry["streams"][stream.name] = {"rank": rank, "cursor": tail.cursor, "branch": branch}
        for part_branch, metrics in parts:
            if rank == 0:
                for metric, series in metrics.items():
                    old = entry["summary"].get(metric)
                    now = series.summary()
                    entry["summary"][metric] = summary_to_json(
                        now if old is None else merge_summaries(summary_from_json(old), now))
            new.append((rank, part_branch, metrics))
    summaries = {m: summary_from_json(s) for m, s in entry["summary"].items()}
    if is_branched(run_dir, meta, 0):
        # a fork or a rewound run: its figures are its main history's (the fold of
        # expman.branches), not those of every row written; read whole, only such runs
        try:
            hist = read_history(run_dir, 0, meta)
            summaries = {m: s.summary() for m, s in hist.metrics.items() if len(s)}
        except (OSError, ValueError) as e:
            damaged[rid] = f"not folded into its main history: {e}"
    info = {"id": rid, "experiment": run_dir.parent.name, "run_name": run_dir.name,
            "status": effective_status(meta, run_dir),
            "start_time": meta.get("start_time"), "end_time": meta.get("end_time"),
            "duration": meta.get("duration"), "exit": meta.get("exit"), "path": run_dir,
            "data_loss": listing_loss(meta, run_dir)}
    row = run_row(info, params, summaries)
    fork = meta.get(layout.FORK)
    step = fork.get("step") if isinstance(fork, dict) else None
    row["parent"] = layout.fork_parent(meta)
    row["fork_step"] = step if type(step) is int and row["parent"] else None
    return entry, row, new


def _poll_branches(tail: Any, run_dir: Path, rank: int, known: dict[str, Any] | None
                   ) -> tuple[list[tuple[int, Any]], int]:
    """The new points of a stream, split where branches start: ``([(branch id,
    metrics)], the branch the stream ends in)``. The branches file is read before
    the stream (its writer appends a line before the branch's first row), and a
    line counts only when a frame ends exactly at its offset (the readers' rule)."""
    from expman.branches import read_lines
    lines, _problems = read_lines(run_dir, rank)
    done = tail.cursor["metrics"]
    branch = known.get("branch", 0) if known else 0
    if not isinstance(branch, int) or isinstance(branch, bool):
        branch = 0
    parts: list[tuple[int, Any]] = []
    for line in lines:
        if line.id <= branch or line.offset < done:
            continue                        # exported before (or not at a frame then)
        if line.offset == done:             # the cursor is a frame's end: it starts here
            branch = line.id
            continue
        parts.append((branch, tail.poll_metrics(until=line.offset)))
        if tail.rewound:
            return parts, branch
        done = tail.cursor["metrics"]
        if done == line.offset:
            branch = line.id
    parts.append((branch, tail.poll_metrics()))
    return parts, branch


class _Columns:
    """The new rows of one experiment: each series' own step/time/value buffers
    (no copy, no object per point); run and metric names are dictionary indices
    until the table is built."""

    def __init__(self) -> None:
        self.names: dict[str, dict[str, int]] = {"run": {}, "metric": {}}
        self.run, self.rank, self.metric = array("i"), array("i"), array("i")
        self.branch = array("i")
        self.pieces: list[Series] = []

    def add(self, run: str, rank: int, metric: str, series: Series, branch: int = 0) -> None:
        n = len(series)
        if not n:
            return
        for col, table, name in ((self.run, self.names["run"], run),
                                 (self.metric, self.names["metric"], metric)):
            col.extend(array("i", [table.setdefault(name, len(table))]) * n)
        self.rank.extend(array("i", [rank]) * n)
        self.branch.extend(array("i", [branch]) * n)
        self.pieces.append(series)

    def table(self, pa: Any) -> Any:
        def names(col: array[int], kind: str) -> Any:
            idx = _buffer_array(pa, pa.int32(), col)
            words = pa.array(list(self.names[kind]), pa.string())
            return pa.DictionaryArray.from_arrays(idx, words).dictionary_decode()

        def joined(field: str, typ: Any) -> Any:
            return pa.concat_arrays([_buffer_array(pa, typ, getattr(p, field))
                                     for p in self.pieces])
        return pa.Table.from_arrays(
            [names(self.run, "run"), _buffer_array(pa, pa.int32(), self.rank),
             names(self.metric, "metric"), joined("steps", pa.int64()),
             joined("times", pa.float64()), joined("values", pa.float64()),
             _buffer_array(pa, pa.int32(), self.branch)],
            names=["run", "rank", "metric", "step", "time", "value", "branch"])


def _buffer_array(pa: Any, typ: Any, col: Any) -> Any:
    """An Arrow array over an array.array's or a numpy array's memory (no per-element
    Python objects)."""
    return pa.Array.from_buffers(typ, len(col), [None, pa.py_buffer(col)])


def _write_atomic(pq: Any, table: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
