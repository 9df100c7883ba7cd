"""A Parquet lake of many runs, exported incrementally: ``export_lake(base, out)``.

    out/
      runs/experiment=<name>/runs.parquet         one row per run (expman.table columns)
      metrics/experiment=<name>/part-<seq>.parquet  run, rank, metric, step, time, value
      _expman_lake.json                            the manifest: what is exported already

Both tables are hive-partitioned by experiment, so DuckDB and Polars read them
as they are:

    duckdb.sql("select * from read_parquet('out/metrics/**/*.parquet', hive_partitioning=true)")
    polars.scan_parquet("out/metrics/**/*.parquet", hive_partitioning=True)

Why incremental: a sweep keeps running while it is analysed. The manifest keeps,
per run stream, the byte offset after the last exported frame and the stream's
key table, so the next export decodes only the frames appended since (the
``RunTail`` way) and writes them as one new part per experiment. The per-metric
summaries (the read model's MetricSummary) are kept in the manifest too, so the runs
table is rebuilt from it without decoding old data; it is small and rewritten
whole (atomically) each time, because statuses change without new data (a dead
run turns CRASHED).

Crash safety: parts are written first and the manifest last. A part's name is
the export's sequence number, which only advances with the manifest, so an
export killed midway is redone by the next one into the same part names
(overwritten, never duplicated). One exporter per lake at a time.

``time`` is Unix seconds (float64), as in metrics.bin. A stream that shrank
below its exported offset (replaced by hand) is not re-exported: it is
reported in ``skipped``; export to a fresh folder to start over.
"""

from __future__ import annotations

import os
import time
import warnings
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import quote

from expman import _core, layout
from expman._fsutil import atomic_write_json, read_json
from expman.errors import ExpmanValueError
from expman.liveness import effective_status
from expman.readmodel import (
    merge_summaries, summarize_points, summary_from_json, summary_to_json,
)

__all__ = ["export_lake", "MANIFEST_FILE", "RUNS_DIR", "METRICS_DIR"]

MANIFEST_FILE = "_expman_lake.json"
RUNS_DIR = "runs"
METRICS_DIR = "metrics"
RUNS_TABLE = "runs.parquet"
LAKE_VERSION = 2     # 2: per-metric summaries as expman.readmodel writes them


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


def rank_streams(run_dir: Path) -> list[tuple[int, Path]]:
    """The metric streams of a run and their rank: rank 0's metrics.bin, and for a
    multi-rank run every logging rank's metrics.rank<r>.bin that exists."""
    from expman.liveness import logging_ranks
    try:
        meta = read_json(run_dir / layout.RUN_FILE)
    except (OSError, ValueError):
        meta = {}
    ranks = logging_ranks(meta) if isinstance(meta, dict) else [0]
    out = [(0, run_dir / layout.METRICS_FILE)]
    for r in ranks:
        path = run_dir / layout.rank_file(layout.METRICS_FILE, r)
        if r and path.is_file():
            out.append((r, path))
    return out


def _read_tail(path: Path, offset: int) -> tuple[bytes, int, int] | None:
    """(data, decode offset, file size) from ``offset``; the header's length of
    zero padding stands in for what is already exported (decode_metrics reads
    from ``offset``)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if offset == 0:
                f.seek(0)
                return f.read(), 0, size
            f.seek(offset)
            return bytes(_core.HEADER_SIZE) + f.read(), _core.HEADER_SIZE, size
    except FileNotFoundError:
        return None


def _load_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST_FILE
    if not path.exists():
        return {"version": LAKE_VERSION, "seq": 0, "runs": {}}
    m = read_json(path)
    if not isinstance(m, dict) or m.get("version") != LAKE_VERSION:
        raise ExpmanValueError(f"{path} is not an expman lake manifest (version {LAKE_VERSION})")
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
    from expman.table import run_row
    for run_dir in layout.iter_run_dirs(base):
        exp, name = run_dir.parent.name, run_dir.name
        rid = f"{exp}/{name}"
        try:
            meta = read_json(run_dir / layout.RUN_FILE)
            params = read_json(run_dir / layout.PARAMS_FILE) \
                if (run_dir / layout.PARAMS_FILE).is_file() else {}
        except (OSError, ValueError) as e:
            damaged[rid] = f"unreadable metadata: {e}"
            continue
        if not isinstance(meta, dict) or not isinstance(params, dict):
            damaged[rid] = "run.json or params.json is not a JSON object"
            continue
        entry = known.setdefault(rid, {"streams": {}, "summary": {}})
        for rank, stream in rank_streams(run_dir):
            st = entry["streams"].setdefault(stream.name, {"rank": rank, "offset": 0, "keys": {}})
            got = _read_tail(stream, st["offset"])
            if got is None:
                continue
            data, offset, size = got
            if size < st["offset"]:
                skipped[rid] = (f"{stream.name} shrank to {size} bytes, below the "
                                f"{st['offset']} already exported; export to a fresh folder")
                continue
            if offset == 0 and size < _core.HEADER_SIZE:
                continue
            keys = {int(k): v for k, v in st["keys"].items()}
            try:
                columns, keys, report = _core.decode_metrics(data, offset, keys)
            except ValueError as e:           # CorruptRunError: a bad header
                damaged[rid] = f"{stream.name}: {e}"
                continue
            if report["corrupt_bytes"]:
                damaged[rid] = (f"{stream.name}: {report['corrupt_bytes']} damaged bytes at "
                                f"{st['offset'] - offset + report['corrupt_at'][0]}; "
                                "exported up to there")
            base_off = st["offset"] - offset if st["offset"] else 0
            st["offset"] = base_off + report["end"]
            st["keys"] = {str(k): v for k, v in keys.items()}
            for metric, (steps, times, values) in columns.items():
                n = len(steps)
                if not n:
                    continue
                new_points += n
                if rank == 0:
                    old = entry["summary"].get(metric)
                    new = summarize_points(steps, times, values)
                    entry["summary"][metric] = summary_to_json(
                        new if old is None else merge_summaries(summary_from_json(old), new))
                acc = chunks.get(exp)
                if acc is None:
                    acc = chunks[exp] = _Columns()
                acc.add(name, rank, metric, steps, times, values)
        summaries = {m: summary_from_json(s) for m, s in entry["summary"].items()}
        info = {"id": rid, "experiment": exp, "run_name": name,
                "status": effective_status(meta, run_dir),
                "start_time": meta.get("start_time"), "end_time": meta.get("end_time"),
                "duration": meta.get("duration"), "exit": meta.get("exit"), "path": run_dir}
        rows.setdefault(exp, []).append(
            run_row(info, params, summaries))

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


class _Columns:
    """The new rows of one experiment, as flat C arrays (no object per point);
    names are dictionary indices until the table is built."""

    def __init__(self) -> None:
        self.names: dict[str, dict[str, int]] = {"run": {}, "metric": {}}
        self.run, self.rank, self.metric = array("i"), array("i"), array("i")
        self.step, self.time, self.value = array("q"), array("d"), array("d")

    def add(self, run: str, rank: int, metric: str, steps: "array[int]",
            times: "array[float]", values: "array[float]") -> None:
        n = len(steps)
        for col, table, name in ((self.run, self.names["run"], run),
                                 (self.metric, self.names["metric"], metric)):
            col.extend(array("i", [table.setdefault(name, len(table))]) * n)
        self.rank.extend(array("i", [rank]) * n)
        self.step.extend(steps)
        self.time.extend(times)
        self.value.extend(values)

    def table(self, pa: Any) -> Any:
        def names(col: "array[int]", kind: str) -> Any:
            idx = _buffer_array(pa, pa.int32(), col)
            words = pa.array(list(self.names[kind]), pa.string())
            return pa.DictionaryArray.from_arrays(idx, words).dictionary_decode()
        return pa.Table.from_arrays(
            [names(self.run, "run"), _buffer_array(pa, pa.int32(), self.rank),
             names(self.metric, "metric"), _buffer_array(pa, pa.int64(), self.step),
             _buffer_array(pa, pa.float64(), self.time),
             _buffer_array(pa, pa.float64(), self.value)],
            names=["run", "rank", "metric", "step", "time", "value"])


def _buffer_array(pa: Any, typ: Any, col: "array[Any]") -> Any:
    """An Arrow array over an array.array's memory (no per-element Python objects)."""
    return pa.Array.from_buffers(typ, len(col), [None, pa.py_buffer(col)])


def _write_atomic(pq: Any, table: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
