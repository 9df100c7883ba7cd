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


FileSig = tuple[int, int, int, int]
WATCHED = (layout.RUN_FILE, layout.PARAMS_FILE, layout.METRICS_FILE, layout.EVENTS_FILE)


def file_sigs(path: Path) -> tuple[FileSig | None, ...]:
    """(inode, size, mtime_ns, ctime_ns) of the files that make a run's page: any
    change (a resume appending, an edit in place, a tag written by rename) shows."""
    out: list[FileSig | None] = []
    for name in WATCHED:
        try:
            st = os.lstat(path / name)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _appended(old: FileSig | None, new: FileSig | None) -> bool:
    """The file only grew (or is unchanged): reading on from the offset is right."""
    if old is None or new is None:
        return old is None
    return new[0] == old[0] and (new[1] > old[1] or new[1:] == old[1:])


class CachedRun:
    """A run folder decoded into Columns, kept current by ``refresh()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._polled = 0.0
        self._reset_locked()

    def _reset_locked(self) -> None:
        """Read the run from the start (first open, or its streams were rewritten)."""
        self.sigs = file_sigs(self.path)     # before the read: a change meanwhile reads again
        self.tail = RunTail(self.path)
        self.columns: dict[str, Column] = {}
        self.events: list[dict[str, Any]] = []
        self.status = layout.RUNNING
        self.generation = getattr(self, "generation", -1) + 1   # streams restart on a change
        self._refresh_locked()

    @property
    def meta(self) -> dict[str, Any]:
        return self.tail.meta

    @property
    def start_time(self) -> float | None:
        t = self.meta.get("start_time")
        return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    def refresh(self, force: bool = False) -> None:
        """Read what the run appended since the last refresh (cheap when nothing was).
        A live run is polled (at most every REFRESH_EVERY); an ended one is read again
        when its files changed, whatever its status (a resume, an edit, a tag): from
        its offsets when its streams only grew, from the start otherwise."""
        with self.lock:
            if self.status == layout.RUNNING and not force:
                if time.monotonic() - self._polled >= REFRESH_EVERY:
                    self.sigs = file_sigs(self.path)
                    self._refresh_locked()
                return
            sigs = file_sigs(self.path)
            if sigs == self.sigs and not force:
                return
            streams = (WATCHED.index(layout.METRICS_FILE), WATCHED.index(layout.EVENTS_FILE))
            if all(_appended(self.sigs[i], sigs[i]) for i in streams):
                self.sigs = sigs
                self._refresh_locked()
            else:
                self._reset_locked()

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

    def since(self, counts: dict[str, int]) -> tuple[str, dict[str, tuple[int, Any, Any, Any]]]:
        """The status and the points past ``counts`` per metric, {name: (start, steps,
        times, values)}, taken together: a status other than RUNNING comes with every
        point there is (the tail reads the status before the data), so a stream that
        sends these points and then this status never ends short, whatever other
        requests refresh the run in between."""
        out = {}
        with self.lock:
            for name, c in self.columns.items():
                start = counts.get(name, 0)
                if c.n > start:
                    out[name] = (start, c.steps[start:c.n], c.times[start:c.n],
                                 c.values[start:c.n])
            return self.status, out

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
