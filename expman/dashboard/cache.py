"""Decoded runs kept in memory for the dashboard, bounded in bytes (LRU).

Each run is read once through ``RunTail`` and then only incrementally, by byte
offset: a live run's new frames are decoded and appended to growable columns,
never read from the start again. Readers (chart requests, live streams) see
the columns as they were when they asked; ``count`` is how many points of a
metric exist, and the live stream sends only the points past a client's count.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from expman import layout
from expman.reader import RunTail
from expman.watch import ALERT_KIND

REFRESH_EVERY = 0.1          # seconds: polls of one run closer together than this are skipped
DEFAULT_MAX_BYTES = 1 << 30  # decoded columns kept across runs


class Column:
    """One metric's steps, times and values, with room to grow (amortised O(1) append).
    ``n`` counts every point read; the arrays hold points ``offset`` to ``n`` (a
    run kept only for its live streams drops the points they all have sent)."""

    def __init__(self) -> None:
        import numpy as np
        self.n = 0
        self.offset = 0
        self.steps = np.empty(0, dtype=np.int64)
        self.times = np.empty(0, dtype=np.float64)
        self.values = np.empty(0, dtype=np.float64)

    def append(self, steps: Any, times: Any, values: Any) -> None:
        import numpy as np
        k = len(steps)
        if self.n == 0 and self.offset == 0:
            # the first batch (a whole run, when it is first opened) is taken as it
            # is: copying 10 M points costs as much as decoding them
            self.steps, self.times, self.values = (np.asarray(steps, dtype=np.int64),
                                                   np.asarray(times, dtype=np.float64),
                                                   np.asarray(values, dtype=np.float64))
            self.n = k
            return
        have = self.n - self.offset
        if have + k > len(self.steps):
            self._resize(max(have + k, 2 * len(self.steps), 1024))
        self.steps[have:have + k] = steps
        self.times[have:have + k] = times
        self.values[have:have + k] = values
        self.n += k

    def _resize(self, cap: int, drop: int = 0) -> None:
        import numpy as np
        have = self.n - self.offset
        for name in ("steps", "times", "values"):
            old = getattr(self, name)
            new = np.empty(cap, dtype=old.dtype)
            new[:have - drop] = old[drop:have]
            setattr(self, name, new)

    def compact(self) -> None:
        """Give back the room to grow (a run that ended grows no more)."""
        if len(self.steps) > self.n - self.offset:
            self._resize(self.n - self.offset)

    def trim(self, start: int) -> None:
        """Drop the points before index ``start`` (they are sent everywhere needed)."""
        start = min(start, self.n)
        if start > self.offset:
            drop = start - self.offset
            self._resize(self.n - start, drop)
            self.offset = start

    def last(self) -> float | None:
        return float(self.values[self.n - self.offset - 1]) if self.n > self.offset else None

    def tail(self, start: int) -> tuple[Any, Any, Any]:
        """Views of the points from index ``start`` (at least ``offset``) to ``n``."""
        a, b = max(start, self.offset) - self.offset, self.n - self.offset
        return self.steps[a:b], self.times[a:b], self.values[a:b]

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
        self.followers: list[dict[str, int]] = []   # the counts of the streams sending it
        self.partial = False        # only the points its streams have not all sent are kept
        self._reset_locked()

    def _reset_locked(self) -> None:
        """Read the run from the start (first open, or its streams were rewritten)."""
        self.sigs = file_sigs(self.path)     # before the read: a change meanwhile reads again
        self.tail = RunTail(self.path)
        self.columns: dict[str, Column] = {}
        self.events: list[dict[str, Any]] = []
        self.event_bytes = 0        # what the parsed events hold in memory
        self.alerted = False        # an alert event was read (kept when events are trimmed)
        self.status = layout.RUNNING
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
        if not self.alerted:
            self.alerted = any(ev.get("kind") == ALERT_KIND for ev in batch.events)
        if not self.partial:
            self.events.extend(batch.events)
            self.event_bytes += sum(map(deep_size, batch.events))
        was, self.status = self.status, batch.status
        if was == layout.RUNNING and self.status != layout.RUNNING:
            for col in self.columns.values():
                col.compact()

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
            return c.tail(0)

    def last_values(self) -> tuple[dict[str, float | None], int]:
        """The last value of each metric, and the number of points."""
        with self.lock:
            return ({k: c.last() for k, c in self.columns.items() if c.n},
                    sum(c.n for c in self.columns.values()))

    def trim(self) -> None:
        """Keep only the points some follower has not sent yet, and no events: the
        run is kept for its live streams alone (the cache decodes it afresh for
        any other request)."""
        with self.lock:
            self.partial = True
            self.events, self.event_bytes = [], 0
            for name, col in self.columns.items():
                col.trim(min((f.get(name, 0) for f in self.followers), default=col.n))

    def since(self, counts: dict[str, int]) -> tuple[str, dict[str, tuple[int, Any, Any, Any]]]:
        """The status and the points past ``counts`` per metric, {name: (start, steps,
        times, values)}, taken together: a status other than RUNNING comes with every
        point there is (the tail reads the status before the data), so a stream that
        sends these points and then this status never ends short, whatever other
        requests refresh the run in between. A metric that now has fewer points than
        ``counts`` says (its stream was cut or replaced) is sent again from index 0."""
        out = {}
        with self.lock:
            for name, c in self.columns.items():
                start = counts.get(name, 0)
                if start > c.n:        # fewer points than sent: rewritten, sent again from 0
                    start = 0
                start = max(start, c.offset)
                if c.n > start:
                    out[name] = (start, *c.tail(start))
            return self.status, out

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + self.event_bytes


def deep_size(obj: Any) -> int:
    """Bytes a parsed JSON value holds (objects, their containers and keys): an
    event's real weight, so a run of large histogram events is counted as such.
    Iterative: a crafted event nested 1,000 deep is no RecursionError."""
    size, todo = 0, [obj]
    while todo:
        o = todo.pop()
        size += sys.getsizeof(o)
        if isinstance(o, dict):
            size += sum(map(sys.getsizeof, o))
            todo.extend(o.values())
        elif isinstance(o, list):
            todo.extend(o)
    return size


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise: the decoder's and
    the threadpool's arenas hold on to what evicted or compacted runs freed)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):      # not glibc (musl): nothing to trim
            pass


class RunCache:
    """CachedRuns by folder, bounded in bytes: every column, the events as parsed,
    and runs kept only for live streams all count against ``max_bytes``.

    Least recently used runs no stream follows are evicted first (the run just
    asked for is kept until the next check). When followed runs alone pass the
    bound, they are trimmed: dropped from the map (a chart request decodes the run
    afresh) and kept only for their streams, holding just the points not yet sent
    (``CachedRun.trim``). A run is decoded once however many requests ask for it
    at the same time (the page asks for a run's charts and its live stream
    together)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._runs: OrderedDict[str, CachedRun] = OrderedDict()
        self._followed_out: set[CachedRun] = set()    # trimmed, held by streams only
        self._loading: dict[str, Future[CachedRun]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> CachedRun:
        key = os.fspath(path)
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
            else:
                existing = self._loading.get(key)
                mine = existing is None
                loading: Future[CachedRun] = Future() if existing is None else existing
                if mine:
                    self._loading[key] = loading
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
            freed = self._evict(keep=key)
            del self._loading[key]
        loading.set_result(run)
        if freed:
            release_memory()
        return run

    def follow(self, run: CachedRun, counts: dict[str, int]) -> None:
        """A live stream sends ``run`` from ``counts`` (a dict it keeps current)."""
        with self._lock, run.lock:
            run.followers.append(counts)

    def unfollow(self, run: CachedRun, counts: dict[str, int]) -> None:
        with self._lock:
            with run.lock:
                run.followers = [f for f in run.followers if f is not counts]
                done = not run.followers
            if done and run in self._followed_out:
                self._followed_out.discard(run)
        self.shrink()

    def shrink(self) -> None:
        """Hold the bound now (runs grow without being asked for: live streams call
        this every second)."""
        with self._lock:
            for run in self._followed_out:    # keep only what is still to send
                run.trim()
            freed = self._evict(keep=None)
        if freed:
            release_memory()

    def _evict(self, keep: str | None) -> bool:
        total = (sum(r.nbytes for r in self._runs.values())
                 + sum(r.nbytes for r in self._followed_out))
        if total <= self.max_bytes:
            return False
        for followed in (False, True):       # runs no stream follows first
            for key in list(self._runs):
                if total <= self.max_bytes:
                    return True
                run = self._runs[key]
                if key == keep or bool(run.followers) != followed:
                    continue
                del self._runs[key]
                total -= run.nbytes
                if followed:
                    run.trim()
                    self._followed_out.add(run)
                    total += run.nbytes
        return True

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return (sum(r.nbytes for r in self._runs.values())
                    + sum(r.nbytes for r in self._followed_out))
