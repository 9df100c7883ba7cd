"""Reading run folders: ``open_run`` for one run, ``list_runs`` for a base dir,
``RunTail`` (and ``Run.refresh()``) for a run that is still being written.

Metrics are decoded by the compiled core into columns: numpy arrays when numpy
is installed, ``array.array`` otherwise (``EXPMAN_NO_NUMPY=1`` forces the
latter). numpy is imported on the first read, not by ``import expman``.

Duplicate and out-of-order steps are kept exactly as logged. To get one value
per step, pick a rule: ``open_run(path, duplicates="last")`` (or ``"first"``,
``"mean"``), ``Series.reduce(how)``, ``Metrics.reduce(how)``, or
``metrics.to_pandas(wide=True, reduce=how)``. The reduced series is sorted by
step; its time is the time of the last record of that step.

A torn last frame (a crash mid-write) is dropped and counted; damage elsewhere
is reported (a ``RuntimeWarning`` and ``run.integrity``), never returned as
values. ``salvage=True`` resynchronises after damage and keeps the frames that
follow it.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman import _core
from expman.environment import hostname
from expman._fsutil import read_json
from expman.errors import CorruptRunError, ExpmanValueError

__all__ = ["open_run", "list_runs", "Run", "Series", "Metrics", "RunSummary", "RunTail",
           "TailBatch", "effective_status", "STATUSES"]

STALE_AFTER = 6.0        # heartbeats missed before a RUNNING run counts as CRASHED
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED", "CRASHED")
REDUCE_HOW = ("last", "first", "mean")
_EMPTY_REPORT = {"frames": 0, "rows": 0, "points": 0, "torn_bytes": 0, "corrupt_bytes": 0,
                 "corrupt_at": [], "unknown_points": 0, "end": 0}

_np: Any = False          # False: not looked up yet; None: not available


def numpy() -> Any:
    """numpy, imported on first use (``import expman`` stays fast), or None."""
    global _np
    if _np is False:
        if os.environ.get("EXPMAN_NO_NUMPY"):
            _np = None
        else:
            try:
                import numpy as np
                _np = np
            except ImportError:
                _np = None
    return _np


def _column(a: "array[Any]") -> Any:
    np = numpy()
    if np is None:
        return a
    return np.frombuffer(a, dtype=np.int64 if a.typecode == "q" else np.float64)


def _concat(a: Any, b: Any) -> Any:
    np = numpy()
    if np is not None and not isinstance(a, array):
        return np.concatenate([a, b])
    out = array(a.typecode, a)
    out.extend(b)
    return out


@dataclass(frozen=True)
class Series:
    """Every record of one metric, in logged order (duplicate steps kept)."""

    name: str
    steps: Any
    values: Any
    times: Any

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"<Series {self.name!r} [{len(self)} points]>"

    @property
    def last(self) -> float | None:
        """The value logged last (not the value at the largest step)."""
        return float(self.values[-1]) if len(self.values) else None

    @property
    def last_step(self) -> int | None:
        return int(self.steps[-1]) if len(self.steps) else None

    def summary(self) -> dict[str, Any]:
        """count, nan count, min/max (NaN ignored), first, last value and last step."""
        n = len(self)
        if not n:
            return {"count": 0, "nan": 0, "min": None, "max": None, "first": None,
                    "last": None, "last_step": None}
        np = numpy()
        if np is not None and not isinstance(self.values, array):
            v = np.asarray(self.values)
            nan_mask = np.isnan(v)
            nans = int(nan_mask.sum())
            finite = v[~nan_mask] if nans else v
            lo = float(finite.min()) if len(finite) else math.nan
            hi = float(finite.max()) if len(finite) else math.nan
        else:
            vals = [x for x in self.values if x == x]
            nans = n - len(vals)
            lo = min(vals) if vals else math.nan
            hi = max(vals) if vals else math.nan
        return {"count": n, "nan": nans, "min": lo, "max": hi, "first": float(self.values[0]),
                "last": float(self.values[-1]), "last_step": int(self.steps[-1])}

    def reduce(self, how: str = "last") -> "Series":
        """One value per step, sorted by step: the 'last', 'first' or 'mean' of the
        records logged for that step (in logged order). Time: the step's last record."""
        if how not in REDUCE_HOW:
            raise ExpmanValueError(f"reduce: how must be 'last', 'first' or 'mean', got {how!r}")
        np = numpy()
        if np is not None and not isinstance(self.steps, array):
            return self._reduce_numpy(np, how)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(self.steps):
            groups.setdefault(int(s), []).append(i)
        steps = sorted(groups)
        vals, times = array("d"), array("d")
        for s in steps:
            ix = groups[s]
            if how == "last":
                vals.append(float(self.values[ix[-1]]))
            elif how == "first":
                vals.append(float(self.values[ix[0]]))
            else:
                vals.append(math.fsum(float(self.values[i]) for i in ix) / len(ix))
            times.append(float(self.times[ix[-1]]))
        return Series(self.name, array("q", steps), vals, times)

    def _reduce_numpy(self, np: Any, how: str) -> "Series":
        steps = np.asarray(self.steps)
        if len(steps) < 2 or bool(np.all(steps[1:] > steps[:-1])):
            return self                      # already one record per step, in order
        order = np.argsort(steps, kind="stable")   # stable: logged order within a step
        s = steps[order]
        v = np.asarray(self.values)[order]
        t = np.asarray(self.times)[order]
        first = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        last = np.concatenate((first[1:] - 1, [len(s) - 1]))
        if how == "last":
            vals = v[last]
        elif how == "first":
            vals = v[first]
        else:
            vals = np.add.reduceat(v, first) / np.diff(np.concatenate((first, [len(s)])))
        return Series(self.name, s[first], np.ascontiguousarray(vals), t[last])


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

    @property
    def points(self) -> int:
        return sum(len(s) for s in self._series.values())

    def reduce(self, how: str = "last") -> "Metrics":
        """Every series reduced to one value per step (see ``Series.reduce``)."""
        return Metrics({k: s.reduce(how) for k, s in self._series.items()})

    def to_pandas(self, wide: bool = False, reduce: str = "last") -> Any:
        """Long frame (metric, step, time, value), every record as logged; or wide
        (one column per metric, indexed by step, duplicate steps reduced by
        ``reduce``: 'last', 'first' or 'mean'). Needs the [pandas] extra."""
        pd = _need("pandas", "pandas")
        if not wide:
            frames = [pd.DataFrame({"metric": k, "step": s.steps, "time": s.times, "value": s.values})
                      for k, s in self._series.items() if len(s)]
            if not frames:
                return pd.DataFrame({"metric": pd.Series([], dtype=object),
                                     "step": pd.Series([], dtype="int64"),
                                     "time": pd.Series([], dtype="float64"),
                                     "value": pd.Series([], dtype="float64")})
            return pd.concat(frames, ignore_index=True)
        cols = {}
        for k, s in self._series.items():
            r = s.reduce(reduce)
            cols[k] = pd.Series(r.values, index=pd.Index(r.steps, name="step"), dtype="float64")
        frame = pd.DataFrame(cols)
        frame.index.name = "step"
        return frame

    def to_arrow(self) -> Any:
        """A long pyarrow.Table (metric, step, time, value), built without copying the
        columns through Python objects. Needs the [arrow] extra."""
        pa = _need("pyarrow", "arrow")
        names, steps, times, values = [], [], [], []
        for k, s in self._series.items():
            n = len(s)
            names.append(pa.repeat(pa.scalar(k, pa.string()), n))
            steps.append(_arrow_array(pa, pa.int64(), s.steps, n))
            times.append(_arrow_array(pa, pa.float64(), s.times, n))
            values.append(_arrow_array(pa, pa.float64(), s.values, n))
        return pa.table({"metric": pa.chunked_array(names, pa.string()),
                         "step": pa.chunked_array(steps, pa.int64()),
                         "time": pa.chunked_array(times, pa.float64()),
                         "value": pa.chunked_array(values, pa.float64())})

    def to_polars(self) -> Any:
        """A long polars.DataFrame (metric, step, time, value). Needs the [polars] extra."""
        pl = _need("polars", "polars")
        schema = {"metric": pl.Utf8, "step": pl.Int64, "time": pl.Float64, "value": pl.Float64}
        frames = [pl.DataFrame({"metric": pl.repeat(k, len(s), dtype=pl.Utf8, eager=True),
                                "step": _as_list_or_array(s.steps),
                                "time": _as_list_or_array(s.times),
                                "value": _as_list_or_array(s.values)}, schema=schema)
                  for k, s in self._series.items() if len(s)]
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _arrow_array(pa: Any, typ: Any, col: Any, n: int) -> Any:
    """Zero-copy pyarrow array over a numpy array or array.array (both are buffers)."""
    np = numpy()
    if np is not None and not isinstance(col, array):
        col = np.ascontiguousarray(col)
    return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(col)])


def _as_list_or_array(col: Any) -> Any:
    return list(col) if isinstance(col, array) else col


def _need(module: str, extra: str) -> Any:
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module}, which is not installed: "
                          f"pip install 'expman-logger[{extra}]'") from None


# ---- reading files -------------------------------------------------------------------


def _decode(data: Any, offset: int, keys: dict[int, str] | None,
            salvage: bool) -> tuple[dict[str, Series], dict[int, str], dict[str, Any]]:
    columns, keys, report = _core.decode_metrics(data, offset, keys, salvage)
    series = {k: Series(k, _column(s), _column(v), _column(t))
              for k, (s, t, v) in columns.items()}
    return series, keys, report


def _warn_damage(path: Path, report: dict[str, Any], salvage: bool, stacklevel: int) -> None:
    if report["corrupt_bytes"] or report["unknown_points"]:
        warnings.warn(
            f"expman: {path} is damaged: {report['corrupt_bytes']} bytes unreadable at offsets "
            f"{report['corrupt_at'][:5]}" + ("" if salvage else "; open_run(..., salvage=True) "
                                              "recovers frames after the damage"),
            RuntimeWarning, stacklevel=stacklevel)


def read_metrics(path: Path, salvage: bool = False) -> tuple[Metrics, dict[str, Any]]:
    """A whole metrics.bin as Metrics, and the decoder's report."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Metrics({}), dict(_EMPTY_REPORT, corrupt_at=[])
    series, _keys, report = _decode(data, 0, None, salvage)
    _warn_damage(path, report, salvage, 3)
    return Metrics(series), report


def _parse_event_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    import orjson
    events, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(ev, dict):
            events.append(ev)
        else:
            bad += 1
    return events, bad


def read_events(path: Path) -> list[dict[str, Any]]:
    """events.jsonl as dicts; a torn last line is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse_event_lines(data)[0]


# ---- live reading ------------------------------------------------------------------------


@dataclass
class TailBatch:
    """What a ``RunTail.poll()`` found since the previous poll."""

    metrics: Metrics
    events: list[dict[str, Any]]
    status: str
    meta_changed: bool = False

    def __bool__(self) -> bool:
        return bool(self.events) or self.metrics.points > 0


class RunTail:
    """Reads a run folder incrementally: each ``poll()`` decodes only the frames and
    event lines appended since the previous one (a frame or line still being
    written is left for the next poll).

        tail = RunTail("experiments/mnist/run1")
        for batch in tail.follow(interval=0.5):      # stops once the run has ended
            print(batch.metrics, batch.events)

    ``start="end"`` skips what is already on disk. ``integrity`` accumulates the
    decoder's report over every poll.
    """

    def __init__(self, path: str | os.PathLike[str], *, start: str = "beginning",
                 salvage: bool = False) -> None:
        if start not in ("beginning", "end"):
            raise ExpmanValueError(f"start must be 'beginning' or 'end', got {start!r}")
        self.path = Path(os.fspath(path))
        if not (self.path / "run.json").is_file():
            raise FileNotFoundError(2, f"not an expman run folder (no run.json): {self.path}",
                                    str(self.path))
        self.salvage = salvage
        self._meta_sig: tuple[int, int] | None = self._sig("run.json")   # before the read
        self.meta: dict[str, Any] = read_json(self.path / "run.json")
        self._keys: dict[int, str] = {}
        self._moff = 0             # offset in metrics.bin after the last intact frame
        self._eoff = 0             # offset in events.jsonl after the last whole line
        self.bad_event_lines = 0
        self.integrity: dict[str, Any] = dict(_EMPTY_REPORT, corrupt_at=[])
        self._done_at: list[int] = []       # corruption behind the read position
        self._done_bytes = 0
        if start == "end":
            self.poll()

    def _sig(self, name: str) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path / name)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    @property
    def status(self) -> str:
        return effective_status(self.meta, self.path)

    def poll(self) -> TailBatch:
        """New metrics (only the points appended since the last poll) and new events.

        The status is taken before the data is read: a run that has ended wrote
        everything before its final status, so a batch whose status is not
        RUNNING holds all there is.
        """
        changed = False
        sig = self._sig("run.json")
        if sig != self._meta_sig:
            try:
                self.meta = read_json(self.path / "run.json")
                self._meta_sig = sig
                changed = True
            except (OSError, ValueError):
                pass           # replaced under us: read it next time
        status = self.status
        return TailBatch(self._poll_metrics(), self._poll_events(), status, changed)

    def _poll_metrics(self) -> Metrics:
        try:
            with open(self.path / "metrics.bin", "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self._moff:           # cut (repair) or replaced: start over
                    self._moff, self._keys = 0, {}
                    self.integrity = dict(_EMPTY_REPORT, corrupt_at=[])
                    self._done_at, self._done_bytes = [], 0
                if self._moff == 0:
                    f.seek(0)
                    data, offset = f.read(), 0
                else:
                    # decode_metrics reads from ``offset``; give it the header's length
                    # of padding so only the new bytes are read from disk
                    f.seek(self._moff)
                    data, offset = bytes(_core.HEADER_SIZE) + f.read(), _core.HEADER_SIZE
        except FileNotFoundError:
            return Metrics({})
        base = self._moff - offset if self._moff else 0
        if offset == 0 and len(data) < _core.HEADER_SIZE:
            return Metrics({})            # the header itself is not written yet
        if len(data) == offset:
            return Metrics({})
        series, self._keys, report = _decode(data, offset, self._keys, self.salvage)
        end = base + report["end"]
        # corruption before the new end is behind us for good; beyond it, it is
        # re-read (and re-reported, not re-counted) until more data resolves it
        at = [base + p for p in report["corrupt_at"]]
        trailing = [p for p in at if p >= end]
        trailing_bytes = (base + len(data) - trailing[0]) if trailing else 0
        ig = self.integrity
        for k in ("frames", "rows", "points", "unknown_points"):
            ig[k] += report[k]
        self._done_at += [p for p in at if p < end]
        self._done_bytes += report["corrupt_bytes"] - trailing_bytes
        ig["corrupt_at"] = self._done_at + trailing
        ig["corrupt_bytes"] = self._done_bytes + trailing_bytes
        ig["torn_bytes"] = report["torn_bytes"]
        ig["end"] = end
        self._moff = end
        return Metrics({k: s for k, s in series.items() if len(s)})

    def _poll_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.path / "events.jsonl", "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self._eoff:
                    self._eoff = 0
                f.seek(self._eoff)
                data = f.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n") + 1           # a line still being written waits
        if not cut:
            return []
        self._eoff += cut
        events, bad = _parse_event_lines(data[:cut])
        self.bad_event_lines += bad
        return events

    def follow(self, interval: float = 0.5, timeout: float | None = None) -> Iterator[TailBatch]:
        """Poll every ``interval`` seconds, yielding non-empty batches, until the run
        is no longer RUNNING (after one last poll) or ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.poll()
            if batch or batch.meta_changed:
                yield batch
            if batch.status != "RUNNING":
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(interval)


# ---- runs ------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder as read by ``open_run``. ``status`` includes CRASHED for dead
    RUNNING runs. ``refresh()`` reads what the run appended since."""

    path: Path
    meta: dict[str, Any]
    params: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: Metrics
    integrity: dict[str, Any] = field(default_factory=dict)
    _tail: RunTail | None = field(default=None, repr=False, compare=False)
    _duplicates: str | None = field(default=None, repr=False, compare=False)

    @property
    def status(self) -> str:
        return effective_status(self.meta, self.path)

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env") or {}

    @property
    def experiment(self) -> str:
        return str(self.meta.get("experiment", self.path.parent.name))

    @property
    def run_name(self) -> str:
        return str(self.meta.get("run_name", self.path.name))

    @property
    def id(self) -> str:
        """``experiment/run_name``, the way the CLI names a run."""
        return f"{self.experiment}/{self.run_name}"

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "artifact"]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "message"]

    def refresh(self) -> int:
        """Read the frames and events appended since the last read, in place
        (run.json and params.json too, if they changed). Returns the number of
        new points plus new events."""
        if self._tail is None:
            raise ExpmanValueError("this Run was not made by open_run(); nothing to refresh")
        batch = self._tail.poll()
        merged = dict(self.metrics.items())
        for k, s in batch.metrics.items():
            old = merged.get(k)
            if old is not None:
                s = Series(k, _concat(old.steps, s.steps), _concat(old.values, s.values),
                           _concat(old.times, s.times))
            merged[k] = s.reduce(self._duplicates) if self._duplicates is not None else s
        self.metrics = Metrics(merged)
        self.events.extend(batch.events)
        if batch.meta_changed:
            self.meta = self._tail.meta
        if (self.path / "params.json").is_file():
            try:
                self.params = read_json(self.path / "params.json")
            except (OSError, ValueError):
                pass
        self.integrity = dict(self._tail.integrity)
        return batch.metrics.points + len(batch.events)


def open_run(path: str | os.PathLike[str], *, salvage: bool = False,
             duplicates: str | None = None, rank: int | None = None) -> Run:
    """Read a run folder: metadata, params, events, and metrics as columns.

    ``duplicates=None`` keeps every record as logged (duplicate and out-of-order
    steps included); ``"last"``, ``"first"`` or ``"mean"`` gives one value per step,
    sorted by step. ``salvage=True`` keeps the frames after damage in the middle.
    A multi-rank run reads as rank 0, with the whole run's status, by default;
    ``rank=r`` reads rank r's streams and status (expman.ranks).
    """
    if rank:
        from expman.ranks import open_rank
        return open_rank(path, rank, salvage=salvage, duplicates=duplicates)  # type: ignore[no-any-return]
    if duplicates is not None and duplicates not in REDUCE_HOW:
        raise ExpmanValueError(
            f"duplicates must be None, 'last', 'first' or 'mean', got {duplicates!r}")
    tail = RunTail(path, salvage=salvage)
    p = tail.path
    params = read_json(p / "params.json") if (p / "params.json").is_file() else {}
    batch = tail.poll()
    integrity = dict(tail.integrity)
    _warn_damage(p / "metrics.bin", integrity, salvage, 2)
    metrics = batch.metrics
    # keys defined but never given a point still appear, empty, in logged order
    series = {name: metrics[name] if name in metrics else Series(
        name, _column(array("q")), _column(array("d")), _column(array("d")))
        for name in (tail._keys[k] for k in sorted(tail._keys))}
    metrics = Metrics(series)
    if duplicates is not None:
        metrics = metrics.reduce(duplicates)
    return Run(p, tail.meta, params, batch.events, metrics, integrity, tail, duplicates)


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
    except OSError:
        return False
    return True


def effective_status(meta: dict[str, Any], path: Path) -> str:
    """The recorded status, except a RUNNING run whose process is gone is CRASHED
    (the rule, witnessed by the writer lock, lives in expman.layout)."""
    from expman import layout
    return layout.effective_status(meta, path)


def _confirm_crash(path: Path) -> str:
    """``meta`` may predate a clean close: the process may have written its final
    status and exited since it was read. Read run.json again before saying CRASHED."""
    try:
        fresh = read_json(path / "run.json")
    except (OSError, ValueError):
        return "CRASHED"
    status = fresh.get("status", "RUNNING") if isinstance(fresh, dict) else "RUNNING"
    return "CRASHED" if status == "RUNNING" else status


@dataclass(frozen=True)
class RunSummary:
    """One line of ``list_runs``: enough to pick a run."""

    experiment: str
    run_name: str
    status: str
    start_time: float | None
    duration: float | None
    params: dict[str, Any]
    last_metrics: dict[str, float]
    path: Path
    end_time: float | None = None
    points: int = 0
    exit: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.experiment}/{self.run_name}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "experiment": self.experiment, "run_name": self.run_name,
                "status": self.status, "start_time": self.start_time,
                "end_time": self.end_time, "duration": self.duration, "params": self.params,
                "last_metrics": self.last_metrics, "points": self.points, "exit": self.exit,
                "path": str(self.path)}


# (path, metrics.bin size, mtime_ns) -> (last values, points): list_runs in a long-lived
# process (a dashboard) decodes each unchanged run once.
_LAST_CACHE: dict[tuple[str, int, int], tuple[dict[str, float], int]] = {}


def _last_values(run_dir: Path) -> tuple[dict[str, float], int]:
    mpath = run_dir / "metrics.bin"
    try:
        st = os.stat(mpath)
    except OSError:
        return {}, 0
    key = (str(mpath), st.st_size, st.st_mtime_ns)
    hit = _LAST_CACHE.get(key)
    if hit is not None:
        return hit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            metrics, _ = read_metrics(mpath, salvage=True)
        except (OSError, CorruptRunError):
            metrics = Metrics({})
    result = ({k: s.last for k, s in metrics.items() if len(s)}, metrics.points)
    if len(_LAST_CACHE) > 4096:
        _LAST_CACHE.clear()
    _LAST_CACHE[key] = result     # type: ignore[assignment]
    return result                 # type: ignore[return-value]


def iter_run_dirs(base: Path, experiment: str | None = None) -> Iterator[Path]:
    """``base/<experiment>/<run>`` folders holding a run.json (symlinks included)."""
    try:
        exp_dirs = sorted(base.iterdir())
    except OSError:
        return
    for exp_dir in exp_dirs:
        if (experiment and exp_dir.name != experiment) or not exp_dir.is_dir():
            continue
        try:
            runs = sorted(exp_dir.iterdir())
        except OSError:
            continue
        for run_dir in runs:
            if (run_dir / "run.json").is_file():
                yield run_dir


def list_runs(base_dir: str | os.PathLike[str] = "./experiments", experiment: str | None = None,
              status: str | Iterable[str] | None = None, *,
              metrics: bool = True) -> list[RunSummary]:
    """Runs under base_dir, newest first; filter by experiment and status (one
    name or several; CRASHED included). ``metrics=False`` skips decoding metrics
    (``last_metrics`` is then empty), for very large base dirs."""
    base = Path(os.fspath(base_dir))
    if isinstance(status, str):
        wanted = {status.upper()}
    else:
        wanted = {s.upper() for s in status} if status else set()
    out: list[RunSummary] = []
    for run_dir in iter_run_dirs(base, experiment):
        try:
            meta = read_json(run_dir / "run.json")
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        st = effective_status(meta, run_dir)
        if wanted and st not in wanted:
            continue
        last, points = _last_values(run_dir) if metrics else ({}, 0)
        try:
            params = read_json(run_dir / "params.json") if (run_dir / "params.json").is_file() else {}
        except (OSError, ValueError):
            params = {}
        duration = meta.get("duration")
        end_time = meta.get("end_time")
        start = meta.get("start_time")
        if duration is None and start:
            if st == "RUNNING":
                duration = time.time() - start
            elif st == "CRASHED":
                beat = heartbeat(run_dir)
                duration = max(0.0, beat - start) if beat else None
                end_time = beat
        out.append(RunSummary(meta.get("experiment", run_dir.parent.name),
                              meta.get("run_name", run_dir.name), st, start, duration, params,
                              last, run_dir, end_time, points, meta.get("exit")))
    out.sort(key=lambda r: r.start_time or 0.0, reverse=True)
    return out
