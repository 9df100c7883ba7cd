"""Tables logged with ``Experiment.log_table`` (and ``wandb.Table``): writing and reading.

A table is rows of named columns (prompts and completions, per-class scores).
Each ``log_table(name, ...)`` call is one *version* of that table at a step. Its
values are appended to ``artifacts/tables/<name>.jsonl`` as columnar JSON lines,
``{"_step": 3, "prompt": ["...", ...], "reward": [0.5, ...]}`` (one line per
10,000 rows), which pandas (``read_json(lines=True)``, then ``explode``) and
DuckDB (``read_json_auto``, then ``unnest``) read as they are; a ``table`` event
in events.jsonl names the version: its step, columns, row count and byte range
in the file (docs/format.md, tables). Columnar because one version is then one
C-level JSON encode (under 2 us a row, bench/tables.py). The file is only ever
appended to, and the event is written after the values, so a version an event
names is whole.

The read side (``read_tables``, ``Run.tables``) follows only those events: a
byte range that is missing, or lines that do not parse, skip that version, and
a path that leaves the run folder (a link) is never opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expman import layout
from expman.errors import ExpmanTypeError, ExpmanValueError

__all__ = ["TableVersion", "TABLE_KIND", "STEP_COLUMN", "table_relpath", "encode_version",
           "check_columns", "columns_of", "read_tables", "table_counts", "version_records",
           "read_version"]

TABLE_KIND = "table"
STEP_COLUMN = "_step"           # each stored row's version step; no user column may take it
TABLES_DIR = "tables"           # under ARTIFACTS_DIR
MAX_COLUMNS = 4096
LINE_ROWS = 10_000              # rows per stored line: DuckDB's read_json takes objects < 16 MB


@dataclass(frozen=True)
class TableVersion:
    """One ``log_table`` call as read back: ``data`` maps each column to its values."""

    name: str
    step: int
    columns: list[str]
    data: dict[str, list[Any]]
    time: float | None = None

    def __len__(self) -> int:
        return len(self.data[self.columns[0]]) if self.columns else 0

    @property
    def rows(self) -> list[list[Any]]:
        """The rows, each a list in ``columns`` order."""
        return [list(r) for r in zip(*(self.data[c] for c in self.columns))]

    def to_pandas(self) -> Any:
        """The version as a pandas DataFrame with these columns (the [pandas] extra)."""
        from expman.series import need
        pd = need("pandas", "pandas")
        return pd.DataFrame({c: self.data[c] for c in self.columns}, columns=self.columns)


def table_relpath(name: str) -> str:
    """``artifacts/tables/<escaped name>.jsonl``: each '/'-part a folder, escaped as
    media tags are (expman.media.tag_parts), so a name never leaves the folder."""
    from expman.media import tag_parts
    parts = tag_parts(name)
    return "/".join([layout.ARTIFACTS_DIR, TABLES_DIR, *parts[:-1], parts[-1] + ".jsonl"])


# ---- writing -----------------------------------------------------------------------------------


def check_columns(columns: object, where: str) -> list[str]:
    """Column names: distinct non-empty strs, none of them ``_step``."""
    if isinstance(columns, (str, bytes)) or not isinstance(columns, Iterable):
        raise ExpmanTypeError(f"{where}: columns must be a list of str, got {columns!r:.80}")
    out = list(columns)
    if not 0 < len(out) <= MAX_COLUMNS:
        raise ExpmanValueError(f"{where}: a table needs 1-{MAX_COLUMNS} columns, got {len(out)}")
    for c in out:
        if not isinstance(c, str) or not c:
            raise ExpmanValueError(f"{where}: column names must be non-empty str, got {c!r:.80}")
    if STEP_COLUMN in out:
        raise ExpmanValueError(f"{where}: the column name {STEP_COLUMN!r} is the stored rows' "
                               "step; rename that column")
    if len(set(out)) != len(out):
        dup = sorted({c for c in out if out.count(c) > 1})
        raise ExpmanValueError(f"{where}: column names repeat: {dup}")
    return out


def columns_of(data: Any, columns: Sequence[str] | None, where: str
               ) -> tuple[list[str], list[Sequence[Any]], int]:
    """(column names, one sequence of values per column, row count) from a pandas or
    polars DataFrame, a list of dicts, or a list of rows (sequences) with ``columns``."""
    if hasattr(data, "columns") and hasattr(data, "__getitem__") and hasattr(data, "shape"):
        if columns is not None:
            raise ExpmanValueError(f"{where}: a DataFrame names its own columns; "
                                   "leave columns=None")
        cols = check_columns([str(c) for c in data.columns], where)
        return cols, [data[c].to_list() for c in data.columns], int(data.shape[0])
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise ExpmanTypeError(f"{where}: data must be a DataFrame, a list of dicts or a list "
                              f"of rows, got {type(data).__name__}")
    rows = data if isinstance(data, list) else list(data)
    if columns is None and rows and all(isinstance(r, Mapping) for r in rows):
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        cols = check_columns(keys, where)
        return cols, [[r.get(c) for r in rows] for c in cols], len(rows)
    if columns is None:
        raise ExpmanValueError(f"{where}: rows that are not dicts need columns=[...]")
    cols = check_columns(columns, where)
    n = len(cols)
    try:
        sizes = set(map(len, rows))
    except TypeError:
        sizes = set()
    textual = any(issubclass(t, (str, bytes, Mapping)) for t in set(map(type, rows)))
    if rows and (sizes != {n} or textual):
        bad = next((i for i, r in enumerate(rows) if isinstance(r, (str, bytes, Mapping))
                    or not isinstance(r, Sequence) or len(r) != n), 0)
        raise ExpmanValueError(f"{where}: row {bad} must be a sequence of {n} values "
                               f"(one per column {cols}), got {rows[bad]!r:.80}")
    return cols, list(zip(*rows)) if rows else [() for _ in cols], len(rows)


def _cell(value: Any) -> Any:
    """What JSON cannot hold as it is: numpy/torch values as numbers (lists for
    arrays), anything else (an image, an object) as its ``str``."""
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        try:
            return _plain(value.tolist())
        except (TypeError, ValueError):
            pass
    return str(value)


def _plain(x: Any) -> Any:
    """x with non-finite floats spelled as in run.json ("NaN", "Infinity")."""
    if isinstance(x, float):
        return layout.json_float(x)
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    return x


_ENCODE = json.JSONEncoder(allow_nan=False, default=_cell, separators=(",", ":"),
                           check_circular=False).encode


def encode_version(step: int, columns: list[str], values: list[Sequence[Any]], n: int) -> bytes:
    """The JSON lines of one version: ``{"_step": step, column: [values], ...}``, one
    line per LINE_ROWS rows. Columnar, so a whole line is one C-level encode (the
    bench: < 2 us a row); non-finite floats are stored as "NaN"/"Infinity"/
    "-Infinity" (JSON has no such numbers), values JSON cannot hold by their
    number (numpy) or ``str``."""
    lines = []
    for lo in range(0, max(n, 1), LINE_ROWS):
        obj: dict[str, Any] = {STEP_COLUMN: step}
        for c, v in zip(columns, values):
            obj[c] = v[lo:lo + LINE_ROWS] if n > LINE_ROWS else v
        try:
            lines.append(_ENCODE(obj))
        except ValueError:              # a NaN or an infinity somewhere in these rows
            lines.append(_ENCODE(_plain(obj)))
    lines.append("")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


# ---- reading -----------------------------------------------------------------------------------


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def version_records(events: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """name -> its well-formed ``table`` events in logged order (no file is read).
    A record with a wrong type, or a path other than the name's own file, is left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if ev.get("kind") != TABLE_KIND:
            continue
        name, cols, rel = ev.get("name"), ev.get("columns"), ev.get("path")
        if (isinstance(name, str) and name and _int(ev.get("step")) is not None
                and _int(ev.get("offset")) is not None and _int(ev.get("length")) is not None
                and isinstance(cols, list) and all(isinstance(c, str) for c in cols)
                and isinstance(rel, str) and rel == table_relpath(name)):
            out.setdefault(name, []).append(dict(ev))
    return out


def read_version(run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> TableVersion | None:
    """The version one record of ``version_records`` names, or None when its bytes are
    missing or do not parse (a damaged file), or its file is a link or not a file."""
    from expman._fsutil import open_under, read_range
    try:
        fd = open_under(Path(os.fspath(run_dir)), record["path"], os.O_RDONLY)
    except OSError:                 # missing, a link, a FIFO: that version is not read
        return None
    try:
        offset, length = record["offset"], record["length"]
        data = _parse(read_range(fd, offset, offset + length), length, record["columns"])
    finally:
        os.close(fd)
    if data is None:
        return None
    t = record.get("time")
    return TableVersion(record["name"], record["step"], list(record["columns"]), data,
                        float(t) if isinstance(t, (int, float)) and not isinstance(t, bool)
                        else None)


def read_tables(run: Any) -> dict[str, list[TableVersion]]:
    """name -> its versions in logged order, from ``run.events`` and the table files
    (a version that cannot be read is left out)."""
    out: dict[str, list[TableVersion]] = {}
    for name, records in version_records(run.events).items():
        versions = [v for v in (read_version(run.path, r) for r in records) if v is not None]
        if versions:
            out[name] = versions
    return out


def table_counts(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """name -> {"versions", "rows"} as the events record them (no table file is read:
    for listings such as ``expman show``)."""
    return {name: {"versions": len(records), "rows": sum(_int(r.get("rows")) or 0 for r in records)}
            for name, records in version_records(events).items()}


def _parse(data: bytes, length: int, columns: list[str]) -> dict[str, list[Any]] | None:
    """The columns of one version's bytes, or None if they are not whole and valid."""
    if len(data) != length or not columns:
        return None
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for line in data.splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not all(isinstance(obj.get(c), list) for c in columns):
            return None
        if len({len(obj[c]) for c in columns}) != 1:
            return None
        for c in columns:
            out[c].extend(obj[c])
    return out
