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

Kept current incrementally, in the cache folder (``$EXPMAN_CACHE_DIR/sql/<base>``):
``runs`` and ``params`` read ``runs-view.json`` (the listing as ``expman list --json``
prints it, through the listing index) and ``params-view.json``, rewritten only when
the listing changed; ``metrics`` reads a Parquet lake which
``expman.lake.export_lake`` brings up to date, decoding only the frames appended
since, and only when an index entry or a metric stream of a run read from its
folder changed (a point that reached metrics.bin is in the next query). A warm
query over unchanged runs is one listing through the index (a ``stat`` per run
folder) and DuckDB reading those files. ``events`` and ``artifacts`` are built
per query from the run folders, only when the query names them.
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
    if wanted & {"runs", "params", "metrics"}:
        _listing_views(con, base, wanted)
    if wanted & {"events", "artifacts"}:
        from expman.reader import list_runs
        events, artifacts = _events_tables(list_runs(base))
        _register(con, "events", events)
        _register(con, "artifacts", artifacts)
    return con


RUNS_COLUMNS = {"id": "VARCHAR", "experiment": "VARCHAR", "run_name": "VARCHAR",
                "status": "VARCHAR", "start_time": "DOUBLE", "end_time": "DOUBLE",
                "duration": "DOUBLE", "points": "BIGINT", "tags": "VARCHAR[]",
                "group": "VARCHAR", "notes": "VARCHAR", "damaged": "VARCHAR", "path": "VARCHAR"}
PARAMS_COLUMNS = {"run": "VARCHAR", "key": "VARCHAR", "value": "VARCHAR", "number": "DOUBLE"}


def _listing_views(con: Any, base: Path, wanted: set[str]) -> None:
    """``runs``, ``params`` and ``metrics`` from files in the lake folder, each
    written again only when what it holds changed: the listing as JSON (through
    the index: a finished run's line is copied from it, ``reader.list_runs_json``),
    params flattened from it, and the metrics lake, exported again only when an
    index entry used or a stream of a run read from its folder changed. A warm
    query over unchanged runs reads none of the runs' files and never imports pyarrow."""
    from expman.reader import _json_listing
    lake = lake_dir(base)
    with _exclusive(lake):                  # one writer per lake folder at a time
        listing, idx, read = _json_listing(base)
        digest = hashlib.sha256(listing).hexdigest()
        runs_file, params_file = lake / "runs-view.json", lake / "params-view.json"
        if _mark(lake / "runs.sig") != digest or not params_file.exists():
            _replace(runs_file, listing)
            _replace(params_file, _params_json(listing))
            _replace(lake / "runs.sig", digest.encode())
        if "metrics" in wanted:
            _export_metrics(base, lake, idx.hits_digest(), read)
    con.execute(f"create view runs as select id as run, * exclude (id) from "
                f"{_read_json(runs_file, RUNS_COLUMNS)}")
    con.execute(f"create view params as select * from {_read_json(params_file, PARAMS_COLUMNS)}")
    if "metrics" in wanted:
        _metrics_view(con, lake)


def _read_json(path: Path, columns: dict[str, str]) -> str:
    cols = ", ".join(f"{_quote(k)}: '{t}'" for k, t in columns.items())
    return f"read_json({_literal(path)}, format = 'array', columns = {{{cols}}})"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _mark(path: Path) -> str | None:
    from expman._fsutil import read_regular
    try:
        return read_regular(path, limit=1 << 10).decode("ascii", "replace")
    except (OSError, ValueError):
        return None


def _replace(path: Path, data: bytes) -> None:
    from expman._fsutil import atomic_open
    with atomic_open(path) as f:
        f.write(data)


def _params_json(listing: bytes) -> bytes:
    """The params view's rows (run, key, value as text, number) of a JSON listing."""
    import orjson

    from expman.readmodel import flatten_params
    rows = []
    for line in orjson.loads(listing):
        params = line.get("params")
        if not isinstance(params, dict):
            continue
        for k, v in flatten_params(params).items():
            rows.append({"run": line["id"], "key": k,
                         "value": v if isinstance(v, str) else orjson.dumps(v).decode(),
                         "number": float(v) if isinstance(v, (int, float))
                         and not isinstance(v, bool) else None})
    return orjson.dumps(rows)


def _register(con: Any, name: str, table: Any) -> None:
    con.register(f"_{name}_arrow", table)
    con.execute(f"create view {name} as select * from _{name}_arrow")


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


def _export_metrics(base: Path, lake: Path, kept: str, read: list[str]) -> None:
    """Bring the metrics lake up to date unless nothing can have changed: the
    same index entries hit (finished runs whose folders did not change) and every
    metric stream of the runs read from their folders as it was."""
    from expman.lake import export_lake
    sig = kept + _streams_signature(read)
    if _mark(lake / "streams.sig") != sig:
        export_lake(base, lake)
        _replace(lake / "streams.sig", sig.encode())


def _metrics_view(con: Any, lake: Path) -> None:
    from expman.lake import METRICS_DIR
    parts = sorted((lake / METRICS_DIR).glob("*/*.parquet"))
    if not parts:
        con.execute("create view metrics as select * from (values (null::varchar, "
                    "null::varchar, null::bigint, null::varchar, null::bigint, null::double, "
                    "null::double, null::bigint)) t(run, experiment, rank, metric, step, time, "
                    "value, branch) where false")
        return
    files = ", ".join(_literal(p) for p in parts)
    con.execute(f"""create view metrics as
        select experiment || '/' || run as run, experiment, rank::bigint as rank, metric,
               step::bigint as step, time, value, branch::bigint as branch
        from read_parquet([{files}], hive_partitioning = true, union_by_name = true)
        where experiment || '/' || run in (select run from runs)""")   # not deleted runs


def _streams_signature(runs: list[str]) -> str:
    """A digest of the metric streams' (path, inode, size, mtime, ctime) of the
    run folders ``runs``."""
    h = hashlib.sha256()
    for run in runs:
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
