"""Metric columns as users hold them: ``Series`` (one metric), ``Metrics`` (name ->
Series), and their conversions to pandas, pyarrow and polars.

Columns are numpy arrays when numpy is installed, ``array.array`` otherwise
(``EXPMAN_NO_NUMPY=1`` forces the latter); numpy is imported on first use.

Duplicate and out-of-order steps are kept exactly as logged. One name, the
``duplicates`` rule, picks one value per step where wanted: ``"last"``,
``"first"`` or ``"mean"`` of the records logged for that step, in logged
order (``Series.reduce``, ``Metrics.reduce``, ``to_pandas(wide=True)``,
``open_run(duplicates=)``, ``expman export --duplicates``). The reduced series
is sorted by step; its time is the time of the step's last record.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from expman.errors import ExpmanValueError

if TYPE_CHECKING:
    from expman.readmodel import MetricSummary

__all__ = ["Series", "Metrics", "DUPLICATES", "numpy"]

DUPLICATES = ("last", "first", "mean")     # the rules for one value per step


def check_duplicates(rule: str | None, allow_none: bool = False) -> None:
    if rule is None and allow_none:
        return
    if rule not in DUPLICATES:
        choices = "None, 'last', 'first' or 'mean'" if allow_none else "'last', 'first' or 'mean'"
        raise ExpmanValueError(f"duplicates must be {choices}, got {rule!r}")


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


def column(a: "array[Any]") -> Any:
    np = numpy()
    if np is None:
        return a
    return np.frombuffer(a, dtype=np.int64 if a.typecode == "q" else np.float64)


def concat(a: Any, b: Any) -> Any:
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

    def summary(self) -> "MetricSummary":
        """The read model's figures (expman.readmodel.MetricSummary): count, NaN
        count, first/last value and step, min/max over every non-NaN value."""
        from expman.readmodel import summarize_points
        return summarize_points(self.steps, self.times, self.values)

    def reduce(self, duplicates: str = "last") -> "Series":
        """One value per step, sorted by step: the 'last', 'first' or 'mean' of the
        records logged for that step (in logged order). Time: the step's last record."""
        how = duplicates
        check_duplicates(how)
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

    def __init__(self, series: dict[str, Series],
                 branches: dict[str, list[tuple[Any, int]]] | None = None) -> None:
        self._series = series
        # expman.branches: per name, (label, count) runs of the points in order (an own
        # branch's id, "exp/run:k" for an inherited point)
        self._branches = branches

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

    def reduce(self, duplicates: str = "last") -> "Metrics":
        """Every series reduced to one value per step (see ``Series.reduce``)."""
        return Metrics({k: s.reduce(duplicates) for k, s in self._series.items()})

    def branch_labels(self, name: str) -> list[Any]:
        """The branch each point of ``name`` was written in: an int branch id of this
        run, or ``"exp/run:k"`` for a point inherited from a fork's parent. A run
        that never branched: 0 for every point."""
        n = len(self._series[name])
        runs = self._branches.get(name) if self._branches is not None else None
        if not runs or sum(c for _lab, c in runs) != n:
            return [0] * n
        return [lab for lab, c in runs for _ in range(c)]

    def to_pandas(self, wide: bool = False, duplicates: str = "last",
                  branch: bool = False) -> Any:
        """Long frame (metric, step, time, value), every record as logged; or wide
        (one column per metric, indexed by step, duplicate steps reduced by the
        ``duplicates`` rule). ``branch=True`` adds a ``branch`` column to the long
        frame (``branch_labels``). Needs the [pandas] extra."""
        rule = duplicates
        check_duplicates(rule)
        if branch and wide:
            raise ExpmanValueError("to_pandas: branch=True needs the long frame (wide=False)")
        pd = need("pandas", "pandas")
        if not wide:
            frames = [pd.DataFrame({"metric": k, "step": s.steps, "time": s.times, "value": s.values,
                                    **({"branch": pd.Series(self.branch_labels(k), dtype=object)}
                                       if branch else {})})
                      for k, s in self._series.items() if len(s)]
            if not frames:
                return pd.DataFrame({"metric": pd.Series([], dtype=object),
                                     "step": pd.Series([], dtype="int64"),
                                     "time": pd.Series([], dtype="float64"),
                                     "value": pd.Series([], dtype="float64"),
                                     **({"branch": pd.Series([], dtype=object)}
                                        if branch else {})})
            return pd.concat(frames, ignore_index=True)
        cols = {}
        for k, s in self._series.items():
            r = s.reduce(rule)
            cols[k] = pd.Series(r.values, index=pd.Index(r.steps, name="step"), dtype="float64")
        frame = pd.DataFrame(cols)
        frame.index.name = "step"
        return frame

    def to_arrow(self) -> Any:
        """A long pyarrow.Table (metric, step, time, value), built without copying the
        columns through Python objects. Needs the [arrow] extra."""
        pa = need("pyarrow", "arrow")
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
        pl = need("polars", "polars")
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


def need(module: str, extra: str) -> Any:
    """An optional dependency, or an ImportError naming the extra that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module}, which is not installed: "
                          f"pip install 'expman-logger[{extra}]'") from None
