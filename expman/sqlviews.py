"""SQL over a base dir's runs, live ones included: ``expman.sql(query, base_dir)`` with DuckDB
(this module is not ``expman.sql``: that name is the function).

Views (``run`` is ``experiment/run_name`` everywhere):

- ``runs``: run, experiment, run_name, status (CRASHED included), start_time,
  end_time, duration, points, tags, "group", notes, damaged, path: the
  listing's lines (``list_runs``, through the listing index);
- ``params``: run, key, value (text), number (the value when it is a number):
  params flattened to dotted keys (``readmodel.flatten_params``);
- ``metrics``: run, experiment, rank, metric, step, time, value: every point;
- ``events``: run, rank, time, kind, level, msg, data (the event as JSON);
- ``artifacts``: run, name, type, path, version, size, sha256, time.

Kept current incrementally: ``metrics`` reads a Parquet lake in the cache
folder (``$EXPMAN_CACHE_DIR/sql/<base>``) which ``expman.lake.export_lake``
brings up to date before each query, decoding only the frames appended since
(a point that reached metrics.bin is in the next query). The other views are
built per query from the run folders, only when the query names them.
Needs the ``sql`` extra (duckdb, pyarrow, pandas for a DataFrame).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["sql", "connect", "VIEWS"]

VIEWS = ("runs", "params", "metrics", "events", "artifacts")


def sql(query: str, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """The result of ``query`` over the runs under ``base_dir`` as a pandas DataFrame."""
    return connect(base_dir, query).sql(query).df()


def connect(base_dir: str | os.PathLike[str] | None = None, query: str | None = None) -> Any:
    """A DuckDB connection (in memory) with the views above over ``base_dir``
    (explicit, $EXPMAN_DIR, ./experiments, or a URL ``expman sync`` wrote); with
    ``query``, only the views it names are built."""
    try:
        import duckdb
    except ImportError:
        from expman.errors import ExpmanError
        raise ExpmanError("expman sql needs DuckDB: pip install 'expman[sql]'") from None
    from expman.layout import base_dir as choose_base
    from expman.reader import _local
    base = choose_base(_local(base_dir) if base_dir is not None else None)
    if not base.is_dir():
        raise FileNotFoundError(2, f"expman sql: no base dir {base}", str(base))
    wanted = set(VIEWS) if query is None else {
        v for v in VIEWS if re.search(rf"\b{v}\b", query, re.IGNORECASE)}
    con = duckdb.connect()
    lines = None
    if wanted & {"runs", "params", "events", "artifacts", "metrics"}:
        from expman.reader import list_runs
        lines = list_runs(base)
    if "runs" in wanted:
        _register(con, "runs", _runs_table(lines or []))
    if "params" in wanted:
        _register(con, "params", _params_table(lines or []))
    if wanted & {"events", "artifacts"}:
        events, artifacts = _events_tables(lines or [])
        _register(con, "events", events)
        _register(con, "artifacts", artifacts)
    if "metrics" in wanted:
        import pyarrow as pa
        con.register("_run_ids", pa.table({"run": pa.array([r.id for r in lines or []],
                                                            pa.string())}))
        _metrics_view(con, base)
    return con


def _register(con: Any, name: str, table: Any) -> None:
    con.register(f"_{name}_arrow", table)
    con.execute(f"create view {name} as select * from _{name}_arrow")


def _runs_table(lines: list[Any]) -> Any:
    import pyarrow as pa
    cols: dict[str, list[Any]] = {k: [] for k in (
        "run", "experiment", "run_name", "status", "start_time", "end_time", "duration",
        "points", "tags", "group", "notes", "damaged", "path")}
    for r in lines:
        for k, v in (("run", r.id), ("experiment", r.experiment), ("run_name", r.run_name),
                     ("status", r.status), ("start_time", r.start_time),
                     ("end_time", r.end_time), ("duration", r.duration), ("points", r.points),
                     ("tags", r.tags), ("group", r.group), ("notes", r.notes),
                     ("damaged", r.damaged), ("path", str(r.path))):
            cols[k].append(v)
    types = {"start_time": pa.float64(), "end_time": pa.float64(), "duration": pa.float64(),
             "points": pa.int64(), "tags": pa.list_(pa.string())}
    return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in cols.items()})


def _params_table(lines: list[Any]) -> Any:
    import orjson
    import pyarrow as pa

    from expman.readmodel import flatten_params
    run, key, value, number = [], [], [], []
    for r in lines:
        for k, v in flatten_params(r.params).items():
            run.append(r.id)
            key.append(k)
            value.append(v if isinstance(v, str) else orjson.dumps(v).decode())
            number.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                          else None)
    return pa.table({"run": pa.array(run, pa.string()), "key": pa.array(key, pa.string()),
                     "value": pa.array(value, pa.string()),
                     "number": pa.array(number, pa.float64())})


def _events_tables(lines: list[Any]) -> tuple[Any, Any]:
    """The events of every run (each rank's stream) and the artifacts among them."""
    import orjson
    import pyarrow as pa

    from expman._fsutil import read_regular
    from expman.layout import EVENTS_FILE, parse_event_lines, rank_file
    ev: dict[str, list[Any]] = {k: [] for k in ("run", "rank", "time", "kind", "level", "msg",
                                                "data")}
    art: dict[str, list[Any]] = {k: [] for k in ("run", "name", "type", "path", "version",
                                                 "size", "sha256", "time")}

    def num(v: Any, kind: type) -> Any:
        return kind(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def text(v: Any) -> str | None:
        return v if isinstance(v, str) else None
    for r in lines:
        if r.damaged:
            continue
        for rank in _ranks(r.path):
            try:
                events, _bad, _used = parse_event_lines(
                    read_regular(r.path / rank_file(EVENTS_FILE, rank)))
            except (OSError, ValueError):
                continue
            for e in events:
                if e.get("kind") == "key":
                    continue            # the metric key table: metrics has the names
                ev["run"].append(r.id)
                ev["rank"].append(rank)
                ev["time"].append(num(e.get("time"), float))
                ev["kind"].append(text(e.get("kind")))
                ev["level"].append(text(e.get("level")))
                ev["msg"].append(text(e.get("msg")))
                ev["data"].append(orjson.dumps(e, option=orjson.OPT_NON_STR_KEYS).decode())
                if e.get("kind") == "artifact":
                    art["run"].append(r.id)
                    for k in ("name", "type", "path", "sha256"):
                        art[k].append(text(e.get(k)))
                    art["version"].append(num(e.get("version"), int))
                    art["size"].append(num(e.get("size"), int))
                    art["time"].append(num(e.get("time"), float))
    ev_types = {"rank": pa.int64(), "time": pa.float64()}
    art_types = {"version": pa.int64(), "size": pa.int64(), "time": pa.float64()}
    return (pa.table({k: pa.array(v, ev_types.get(k, pa.string())) for k, v in ev.items()}),
            pa.table({k: pa.array(v, art_types.get(k, pa.string())) for k, v in art.items()}))


def _ranks(path: Path) -> list[int]:
    from expman._fsutil import read_json_object
    from expman.layout import RUN_FILE
    from expman.liveness import logging_ranks, world_size
    try:
        meta = read_json_object(path / RUN_FILE)
    except (OSError, ValueError):
        return [0]
    return logging_ranks(meta) if world_size(meta) > 1 else [0]


def lake_dir(base: Path) -> Path:
    """Where the metrics view's Parquet lake of ``base`` is kept (one per lake
    version: a newer expman starts a fresh cache rather than read an older one)."""
    from expman.lake import LAKE_VERSION
    from expman.remote import cache_root
    key = hashlib.sha1(f"{os.fspath(base.resolve())}\0{LAKE_VERSION}".encode()).hexdigest()[:16]
    return cache_root() / "sql" / key


def _metrics_view(con: Any, base: Path) -> None:
    from expman.lake import METRICS_DIR, export_lake
    lake = lake_dir(base)
    with _exclusive(lake):              # one exporter per lake at a time
        mark = lake / "streams.sig"
        sig = _streams_signature(base)
        try:
            same = mark.read_text() == sig
        except OSError:
            same = False
        if not same:                    # else no metric stream changed since the last export
            export_lake(base, lake)
            mark.write_text(sig)
    parts = sorted((lake / METRICS_DIR).glob("*/*.parquet"))
    if not parts:
        con.execute("create view metrics as select * from (values (null::varchar, "
                    "null::varchar, null::bigint, null::varchar, null::bigint, null::double, "
                    "null::double, null::bigint)) t(run, experiment, rank, metric, step, time, "
                    "value, branch) where false")
        return
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
    con.execute(f"""create view metrics as
        select experiment || '/' || run as run, experiment, rank::bigint as rank, metric,
               step::bigint as step, time, value, branch::bigint as branch
        from read_parquet([{files}], hive_partitioning = true, union_by_name = true)
        where experiment || '/' || run in (select run from _run_ids)""")   # not deleted runs


def _streams_signature(base: Path) -> str:
    """A digest of every metric stream's (path, inode, size, mtime, ctime): when it
    is what it was at the last export, the lake holds every point (a warm query
    over a base where nothing was logged skips the export's walk)."""
    from expman.layout import scan_run_dirs
    h = hashlib.sha256()
    for run, _exp, _name, _linked in scan_run_dirs(base):
        try:
            with os.scandir(run) as it:
                for e in it:
                    if e.name.endswith(".bin"):
                        st = e.stat(follow_symlinks=False)
                        h.update(f"{e.path}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0"
                                 f"{st.st_ctime_ns}\n".encode())
        except OSError:
            continue
    return h.hexdigest()


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """An OS lock on ``folder/.lock`` (where the OS has flock): two queries at
    once export one after the other, never both into the same lake."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:             # Windows: one query at a time is the rule
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
