"""Reading run folders: ``open_run`` for one run, ``list_runs`` for a base dir.

Metrics are decoded by the compiled core into columns (numpy arrays when numpy
is installed, ``array.array`` otherwise). A torn last frame is dropped and
counted; damage elsewhere is reported (a warning and ``run.integrity``),
never returned as values.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman import _core
from expman._fsutil import read_json
from expman.errors import CorruptRunError, ExpmanValueError

__all__ = ["open_run", "list_runs", "Run", "Series", "Metrics", "RunSummary"]

STALE_AFTER = 6.0        # heartbeats missed before a RUNNING run counts as CRASHED


try:  # optional: faster columns and to_pandas()
    import numpy as _np
except ImportError:  # pragma: no cover - exercised in the no-numpy CI step
    _np = None


def _column(a: array) -> Any:
    return _np.frombuffer(a, dtype=_np.int64 if a.typecode == "q" else _np.float64) \
        if _np is not None else a


@dataclass(frozen=True)
class Series:
    """Every record of one metric, in logged order (duplicates kept)."""

    name: str
    steps: Any
    values: Any
    times: Any

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def last(self) -> float | None:
        return float(self.values[-1]) if len(self.values) else None

    def reduce(self, how: str = "last") -> "Series":
        """One value per step: 'last', 'first' or 'mean' of duplicate steps (sorted by step)."""
        if how not in ("last", "first", "mean"):
            raise ExpmanValueError(f"reduce: how must be 'last', 'first' or 'mean', got {how!r}")
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(self.steps):
            groups.setdefault(int(s), []).append(i)
        steps = sorted(groups)
        pick = {"last": lambda ix: ix[-1:], "first": lambda ix: ix[:1], "mean": lambda ix: ix}[how]
        vals, times = array("d"), array("d")
        for s in steps:
            ix = pick(groups[s])
            vals.append(sum(float(self.values[i]) for i in ix) / len(ix))
            times.append(float(self.times[ix[-1]]))
        return Series(self.name, _column(array("q", steps)), _column(vals), _column(times))


class Metrics(Mapping[str, Series]):
    """name -> Series, in the order the names were first logged."""

    def __init__(self, series: dict[str, Series]) -> None:
        self._series = series

    def __getitem__(self, name: str) -> Series:
        return self._series[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._series)

    def __len__(self) -> int:
        return len(self._series)

    def __repr__(self) -> str:
        return f"<Metrics {', '.join(f'{k}[{len(v)}]' for k, v in self._series.items())}>"

    def to_pandas(self, wide: bool = False, reduce: str = "last") -> Any:
        """Long frame (metric, step, time, value); or wide (one column per metric,
        indexed by step, duplicates reduced by ``reduce``). Needs the [pandas] extra."""
        pd = _need("pandas", "pandas")
        if not wide:
            frames = [pd.DataFrame({"metric": k, "step": s.steps, "time": s.times, "value": s.values})
                      for k, s in self._series.items()]
            if not frames:
                return pd.DataFrame(columns=["metric", "step", "time", "value"])
            return pd.concat(frames, ignore_index=True)
        cols = {}
        for k, s in self._series.items():
            r = s.reduce(reduce)
            cols[k] = pd.Series(r.values, index=pd.Index(r.steps, name="step"))
        return pd.DataFrame(cols)

    def to_arrow(self) -> Any:
        """A long pyarrow.Table (metric, step, time, value). Needs the [arrow] extra."""
        pa = _need("pyarrow", "arrow")
        names, steps, times, values = [], [], [], []
        for k, s in self._series.items():
            names.extend([k] * len(s))
            steps.extend(int(x) for x in s.steps)
            times.extend(float(x) for x in s.times)
            values.extend(float(x) for x in s.values)
        return pa.table({"metric": pa.array(names, pa.string()), "step": pa.array(steps, pa.int64()),
                         "time": pa.array(times, pa.float64()),
                         "value": pa.array(values, pa.float64())})

    def to_polars(self) -> Any:
        """A long polars.DataFrame (metric, step, time, value). Needs the [polars] extra."""
        pl = _need("polars", "polars")
        return pl.from_arrow(self.to_arrow()) if _has("pyarrow") else pl.DataFrame({
            "metric": [k for k, s in self._series.items() for _ in range(len(s))],
            "step": [int(x) for s in self._series.values() for x in s.steps],
            "time": [float(x) for s in self._series.values() for x in s.times],
            "value": [float(x) for s in self._series.values() for x in s.values]})


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _need(module: str, extra: str) -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module}: pip install 'expman-logger[{extra}]'") from None


@dataclass
class Run:
    """A run folder, read once. ``status`` includes CRASHED for dead RUNNING runs."""

    path: Path
    meta: dict[str, Any]
    params: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: Metrics
    integrity: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return effective_status(self.meta, self.path)

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env", {})

    @property
    def experiment(self) -> str:
        return self.meta.get("experiment", self.path.parent.name)

    @property
    def run_name(self) -> str:
        return self.meta.get("run_name", self.path.name)

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "artifact"]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "message"]


def read_metrics(path: Path, salvage: bool = False) -> tuple[Metrics, dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Metrics({}), {"frames": 0, "rows": 0, "points": 0, "torn_bytes": 0,
                             "corrupt_bytes": 0, "corrupt_at": [], "unknown_points": 0, "end": 0}
    columns, _keys, report = _core.decode_metrics(data, salvage=salvage)
    series = {k: Series(k, _column(s), _column(v), _column(t)) for k, (s, t, v) in columns.items()}
    if report["corrupt_bytes"] or report["unknown_points"]:
        warnings.warn(
            f"expman: {path} is damaged: {report['corrupt_bytes']} bytes unreadable at offsets "
            f"{report['corrupt_at'][:5]}" + ("" if salvage else "; open_run(..., salvage=True) "
                                              "recovers frames after the damage"),
            RuntimeWarning, stacklevel=3)
    return Metrics(series), report


def read_events(path: Path) -> list[dict[str, Any]]:
    import orjson
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue        # a torn last line
    return events


def open_run(path: str | os.PathLike[str], *, salvage: bool = False) -> Run:
    """Read a run folder (metadata, params, events, metrics as columns)."""
    p = Path(os.fspath(path))
    if not (p / "run.json").is_file():
        raise FileNotFoundError(2, f"not an expman run folder (no run.json): {p}", str(p))
    meta = read_json(p / "run.json")
    params = read_json(p / "params.json") if (p / "params.json").is_file() else {}
    metrics, report = read_metrics(p / "metrics.bin", salvage=salvage)
    return Run(p, meta, params, read_events(p / "events.jsonl"), metrics, report)


def heartbeat(path: Path) -> float | None:
    """Last sign of life: the newest mtime of the files the writer touches."""
    times = []
    for name in ("metrics.bin", "events.jsonl", "run.json"):
        try:
            times.append(os.stat(path / name).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_status(meta: dict[str, Any], path: Path) -> str:
    """The recorded status, except a RUNNING run whose process is gone is CRASHED:
    same host and dead pid, or (any host) no heartbeat for STALE_AFTER intervals."""
    status = meta.get("status", "RUNNING")
    if status != "RUNNING":
        return status
    pid, host = meta.get("pid"), meta.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        if pid == os.getpid():
            return "RUNNING"
        if not _pid_alive(pid):
            return "CRASHED"
    beat = heartbeat(path)
    interval = float(meta.get("heartbeat_interval") or 10.0)
    if beat is not None and time.time() - beat > STALE_AFTER * interval:
        return "CRASHED"
    return "RUNNING"


@dataclass(frozen=True)
class RunSummary:
    """One line of ``list_runs``: enough to pick a run without decoding others."""

    experiment: str
    run_name: str
    status: str
    start_time: float | None
    duration: float | None
    params: dict[str, Any]
    last_metrics: dict[str, float]
    path: Path


def list_runs(base_dir: str | os.PathLike[str] = "./experiments", experiment: str | None = None,
              status: str | None = None) -> list[RunSummary]:
    """Runs under base_dir, newest first; filter by experiment and status."""
    base = Path(os.fspath(base_dir))
    out: list[RunSummary] = []
    if not base.is_dir():
        return out
    wanted = status.upper() if status else None
    for exp_dir in sorted(base.iterdir()):
        if not exp_dir.is_dir() or (experiment and exp_dir.name != experiment):
            continue
        for run_dir in exp_dir.iterdir():
            if not (run_dir / "run.json").is_file():
                continue
            try:
                meta = read_json(run_dir / "run.json")
            except (OSError, ValueError):
                continue
            st = effective_status(meta, run_dir)
            if wanted and st != wanted:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    metrics, _ = read_metrics(run_dir / "metrics.bin")
                except (OSError, CorruptRunError):
                    metrics = Metrics({})
            params = read_json(run_dir / "params.json") if (run_dir / "params.json").is_file() else {}
            duration = meta.get("duration")
            if duration is None and meta.get("start_time") and st == "RUNNING":
                duration = time.time() - meta["start_time"]
            out.append(RunSummary(meta.get("experiment", exp_dir.name),
                                  meta.get("run_name", run_dir.name), st, meta.get("start_time"),
                                  duration, params,
                                  {k: s.last for k, s in metrics.items() if len(s)}, run_dir))
    out.sort(key=lambda r: r.start_time or 0.0, reverse=True)
    return out
