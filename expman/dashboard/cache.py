"""Decoded runs kept in memory for the dashboard, bounded in bytes (LRU).

Each run is read once through ``RunTail`` and then only incrementally, by byte
offset: a live run's new frames are decoded and appended to growable columns,
never read from the start again. Readers (chart requests, live streams) see
the columns as they were when they asked; ``count`` is how many points of a
metric exist, and the live stream sends only the points past a client's count.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from expman import layout
from expman.reader import RunTail

REFRESH_EVERY = 0.1          # seconds: polls of one run closer together than this are skipped
DEFAULT_MAX_BYTES = 1 << 30  # decoded columns kept across runs


class Column:
    """One metric's steps, times and values, with room to grow (amortised O(1) append)."""

    def __init__(self) -> None:
        import numpy as np
        self.n = 0
        self.steps = np.empty(0, dtype=np.int64)
        self.times = np.empty(0, dtype=np.float64)
        self.values = np.empty(0, dtype=np.float64)

    def append(self, steps: Any, times: Any, values: Any) -> None:
        import numpy as np
        k = len(steps)
        if self.n == 0:
            # the first batch (a whole run, when it is first opened) is taken as it
            # is: copying 10 M points costs as much as decoding them
            self.steps, self.times, self.values = (np.asarray(steps, dtype=np.int64),
                                                   np.asarray(times, dtype=np.float64),
                                                   np.asarray(values, dtype=np.float64))
            self.n = k
            return
        if self.n + k > len(self.steps):
            cap = max(self.n + k, 2 * len(self.steps), 1024)
            for name in ("steps", "times", "values"):
                old = getattr(self, name)
                new = np.empty(cap, dtype=old.dtype)
                new[:self.n] = old[:self.n]
                setattr(self, name, new)
        self.steps[self.n:self.n + k] = steps
        self.times[self.n:self.n + k] = times
        self.values[self.n:self.n + k] = values
        self.n += k

    @property
    def nbytes(self) -> int:
        return self.steps.nbytes + self.times.nbytes + self.values.nbytes


class CachedRun:
    """A run folder decoded into Columns, kept current by ``refresh()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.tail = RunTail(path)
        self.columns: dict[str, Column] = {}
        self.events: list[dict[str, Any]] = []
        self.status = layout.RUNNING
        self._polled = 0.0
        self._refresh_locked()

    @property
    def meta(self) -> dict[str, Any]:
        return self.tail.meta

    @property
    def start_time(self) -> float | None:
        t = self.meta.get("start_time")
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def refresh(self, force: bool = False) -> None:
        """Read what the run appended since the last refresh (cheap when nothing was)."""
        with self.lock:
            if force or (self.status == layout.RUNNING
                         and time.monotonic() - self._polled >= REFRESH_EVERY):
                self._refresh_locked()

    def _refresh_locked(self) -> None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # damage is shown in the integrity report
            batch = self.tail.poll()
        self._polled = time.monotonic()
        for name, s in batch.metrics.items():
            col = self.columns.get(name)
            if col is None:
                col = self.columns[name] = Column()
            col.append(s.steps, s.times, s.values)
        self.events.extend(batch.events)
        self.status = batch.status

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: c.n for k, c in self.columns.items()}

    def snapshot(self, name: str) -> tuple[Any, Any, Any] | None:
        """(steps, times, values) of one metric as they are now (views, not copies:
        columns only ever grow past them)."""
        with self.lock:
            c = self.columns.get(name)
            if c is None:
                return None
            n = c.n
            return c.steps[:n], c.times[:n], c.values[:n]

    def since(self, counts: dict[str, int]) -> dict[str, tuple[int, Any, Any, Any]]:
        """Points past ``counts`` per metric: {name: (start, steps, times, values)}."""
        out = {}
        with self.lock:
            for name, c in self.columns.items():
                start = counts.get(name, 0)
                if c.n > start:
                    out[name] = (start, c.steps[start:c.n], c.times[start:c.n],
                                 c.values[start:c.n])
        return out

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + 512 * len(self.events)


class RunCache:
    """CachedRuns by folder, least recently used evicted first once the decoded
    columns pass ``max_bytes`` (the run just asked for is always kept). A run is
    decoded once however many requests ask for it at the same time (the page asks
    for a run's charts and its live stream together)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, CachedRun] = OrderedDict()
        self._loading: dict[str, Future[CachedRun]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> CachedRun:
        key = os.fspath(path)
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
            else:
                loading = self._loading.get(key)
                mine = loading is None
                if mine:
                    loading = self._loading[key] = Future()
        if run is not None:
            run.refresh()
            return run
        assert loading is not None
        if not mine:
            return loading.result()           # the first asker's run, or its error
        try:
            fresh = CachedRun(path)           # decoded outside the lock: others keep going
        except BaseException as e:
            with self._lock:
                del self._loading[key]
            loading.set_exception(e)
            raise
        with self._lock:
            run = self._runs.setdefault(key, fresh)
            self._runs.move_to_end(key)
            self._evict(keep=key)
            del self._loading[key]
        loading.set_result(run)
        return run

    def _evict(self, keep: str) -> None:
        total = sum(r.nbytes for r in self._runs.values())
        for key in list(self._runs):
            if total <= self.max_bytes:
                break
            if key != keep:
                total -= self._runs.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self._runs.values())
