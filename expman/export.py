"""Writing a run's metrics as CSV, TSV, JSON lines or Parquet: ``export_run``.

Every float comes back bit-exact: finite floats are written with ``repr`` (the
shortest round-trip form); CSV/TSV write non-finite ones as ``nan``, ``inf``,
``-inf`` (``float()``, pandas and polars read them back); JSON lines spell them
"NaN", "Infinity", "-Infinity" (``expman.layout.json_float``); Parquet stores
IEEE doubles as they are. A ``.gz`` suffix compresses a text format.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from expman._fsutil import atomic_open
from expman.errors import ExpmanValueError
from expman.layout import json_float, jsonable
from expman.series import Metrics

__all__ = ["export_run", "export_format", "FORMATS"]

FORMATS = ("csv", "tsv", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
               ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
CHUNK_POINTS = 1 << 16        # points formatted per write


def export_format(path: str | os.PathLike[str] | None, fmt: str | None = None) -> tuple[str, bool]:
    """(format, gzip) for an output path: ``fmt`` if given, else from the extension
    (``.csv``, ``.tsv``, ``.jsonl``, ``.parquet``, each text one optionally
    ``.gz``). An unknown extension without ``fmt`` is an ExpmanValueError."""
    name = os.fspath(path) if path is not None else ""
    gz = name.lower().endswith(".gz")
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExpmanValueError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if gz and fmt == "parquet":
            raise ExpmanValueError("export: Parquet is compressed already; drop the .gz suffix")
        return fmt, gz
    if not name or name == "-":
        return "csv", False
    suffix = Path(name[:-3] if gz else name).suffix.lower()
    found = _EXTENSIONS.get(suffix)
    if found is None or (gz and found == "parquet"):
        raise ExpmanValueError(
            f"export: cannot tell the format of {name!r} from its extension; use .csv, .tsv, "
            ".jsonl or .parquet (optionally .gz for text), or pass the format")
    return found, gz


def export_run(run: Any, out: str | os.PathLike[str] | IO[bytes], fmt: str | None = None, *,
               metrics: list[str] | None = None,
               progress: Callable[[int], None] | None = None) -> int:
    """Write ``run``'s metrics (a ``Run`` from open_run) to ``out``, a path
    (written atomically) or a binary file object, as a long table
    (metric, step, time, value). Returns the number of points written.

    ``fmt``: csv, tsv, jsonl or parquet; from the path's extension when None.
    ``metrics``: only these names (ExpmanValueError naming a missing one).
    ``progress(n)`` is called with the points written since its last call.
    """
    is_path = isinstance(out, (str, os.PathLike))
    fmt, gz = export_format(out if is_path else None, fmt)   # type: ignore[arg-type]
    series: Metrics = run.metrics
    if metrics:
        missing = [m for m in metrics if m not in series]
        if missing:
            raise ExpmanValueError(f"export: no metric {missing[0]!r} in {run.id} "
                                   f"(it has: {', '.join(series) or 'none'})")
        series = Metrics({k: series[k] for k in metrics})
    report = progress or (lambda n: None)
    if fmt == "parquet":
        pq = parquet_module()
        table = series.to_arrow()
        import orjson
        meta = {"expman.run": orjson.dumps(jsonable(
            {"id": run.id, "status": run.status, "params": run.params,
             "start_time": run.meta.get("start_time")})).decode()}
        table = table.replace_schema_metadata(meta)
        if is_path:
            with atomic_open(Path(os.fspath(out)), "wb") as f:   # type: ignore[arg-type]
                pq.write_table(table, f)
        else:
            pq.write_table(table, out)
        report(series.points)
        return series.points
    if is_path:
        with atomic_open(Path(os.fspath(out)), "wb") as f:      # type: ignore[arg-type]
            _write_text(series, f, fmt, gz, report)
    else:
        _write_text(series, out, fmt, gz, report)                 # type: ignore[arg-type]
    return series.points


def parquet_module() -> Any:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise ImportError("Parquet export needs pyarrow, which is not installed: "
                          "pip install 'expman-logger[arrow]' (or export csv or jsonl)") from None
    return pq


def _write_text(series: Metrics, raw: IO[bytes], fmt: str, gz: bool,
                report: Callable[[int], None]) -> None:
    import gzip
    target: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else raw
    text = io.TextIOWrapper(target, encoding="utf-8", newline="\n", write_through=False)
    try:
        sep = "\t" if fmt == "tsv" else ","
        if fmt in ("csv", "tsv"):
            text.write(sep.join(("metric", "step", "time", "value")) + "\n")
        for name, s in series.items():
            line = (_delimited_line(_field(name, sep), sep) if fmt != "jsonl"
                    else _jsonl_line(_json_str(name)))
            for i in range(0, len(s), CHUNK_POINTS):
                steps = s.steps[i:i + CHUNK_POINTS].tolist()
                times = s.times[i:i + CHUNK_POINTS].tolist()
                values = s.values[i:i + CHUNK_POINTS].tolist()
                text.write("".join(map(line, steps, times, values)))
                report(len(steps))
        text.flush()
    finally:
        text.detach()
        if gz:
            target.close()          # writes the gzip trailer; the caller's file stays open


def _json_str(s: str) -> str:
    import orjson
    return orjson.dumps(s).decode()


def _field(s: str, sep: str) -> str:
    if any(c in s for c in (sep, '"', "\r", "\n")) or s != s.strip():
        return '"' + s.replace('"', '""') + '"'
    return s


def _delimited_line(q: str, sep: str) -> Callable[[int, float, float], str]:
    return lambda a, b, c: f"{q}{sep}{a}{sep}{b!r}{sep}{c!r}\n"


def _jnum(x: float) -> str:
    v = json_float(x)
    return repr(v) if isinstance(v, float) else f'"{v}"'


def _jsonl_line(q: str) -> Callable[[int, float, float], str]:
    return lambda a, b, c: f'{{"metric":{q},"step":{a},"time":{_jnum(b)},"value":{_jnum(c)}}}\n'

