"""One poller for every live stream (``/api/stream``).

Each stream used to poll its runs every 0.25 s and rescan the base dir every
second on its own: 200 open pages meant 200 rescans a second. Here one task
does both for all of them, in one trip to a worker thread per round, and wakes
the streams, which only take what is new for them from the shared runs
(``CachedRun.since``, under the run's lock: no file is touched per stream).
The task runs while at least one stream is open.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio

from expman import layout

LIVE_INTERVAL = 0.25               # seconds between polls of the streamed runs
LIST_INTERVAL = 1.0                # seconds between scans for new runs
KEPT_SCANS = 64                    # scans whose new runs are kept for streams that reopen


class Live:
    """The shared poller of a Dashboard: ``subscribe``/``unsubscribe`` a stream's
    runs, ``ticks()`` wakes a stream after each round."""

    def __init__(self, dashboard: Any) -> None:
        self.d = dashboard
        self.followed: dict[Any, int] = {}     # CachedRun -> number of streams sending it
        self.watched: dict[str, Any] = {}      # run id -> CachedRun of a live row shown
        self._watchers: dict[str, int] = {}
        self.ids: set[str] | None = None       # run ids of the last scan
        self.added: list[tuple[int, str]] = []    # (scan, id) of runs that appeared, recent
        self.forgotten = 0                     # the newest scan whose new runs were dropped
        self.rows: dict[str, dict[str, Any]] = {}   # rows of live runs, from the last scan
        self.scans = 0                         # scans done
        self.rounds = 0                        # rounds done (every LIVE_INTERVAL)
        self.streams = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._scan_lock = threading.Lock()

    # ---- streams ---------------------------------------------------------------------------

    async def subscribe(self, runs: list[Any], watch: dict[str, Any]) -> set[str]:
        """Count a stream in; returns the run ids there are now (its starting point)."""
        self.streams += 1
        for run in runs:
            self.followed[run] = self.followed.get(run, 0) + 1
        for rid, run in watch.items():
            self._watchers[rid] = self._watchers.get(rid, 0) + 1
            self.watched.setdefault(rid, run)
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self.ids is None:
            await anyio.to_thread.run_sync(self._scan)
        return set(self.ids or ())

    def listed(self) -> int:
        """The scan a listing starting now follows (a first scan if none was done): a
        page that lists the runs, then opens a stream ``since`` this scan, misses none."""
        if self.ids is None:
            self._scan()
        return self.scans

    def added_since(self, scan: int) -> list[str] | None:
        """The runs that appeared after scan ``scan``, in order; None when some of them
        are forgotten (more than KEPT_SCANS scans ago) or the scan is not one of this
        server's."""
        if not self.forgotten <= scan <= self.scans:
            return None
        return [rid for s, rid in self.added if s > scan]

    def unsubscribe(self, runs: list[Any], watch: dict[str, Any]) -> None:
        self.streams -= 1
        for run in runs:
            self.followed[run] -= 1
            if not self.followed[run]:
                del self.followed[run]
        for rid in watch:
            self._watchers[rid] -= 1
            if not self._watchers[rid]:
                del self._watchers[rid]
                self.watched.pop(rid, None)
        # the task ends by itself once no stream is left; waking the others here would
        # leave the round's event set, and their next wait would return at once (a spin)

    async def next_round(self) -> None:
        """Wait for the next round (a poll of the live runs; a scan every second).
        The poller sets a round's event and puts a fresh one in its place in one
        step, so a wait always suspends until a round ends."""
        assert self._wake is not None
        await self._wake.wait()

    # ---- the one poller --------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + LIST_INTERVAL
        while self.streams > 0 and not self.d.stopping.is_set():
            await asyncio.sleep(LIVE_INTERVAL)
            scan = loop.time() >= next_scan
            if scan:
                next_scan = loop.time() + LIST_INTERVAL
            await anyio.to_thread.run_sync(self._round, scan)
            wake, self._wake = self._wake, asyncio.Event()
            assert wake is not None
            wake.set()
        wake, self._wake = self._wake, asyncio.Event()
        if wake is not None:
            wake.set()

    def _round(self, scan: bool) -> None:
        for run in list(self.followed):
            if run.status == layout.RUNNING:
                run.refresh()
        if scan:
            self._scan()
            self.d.cache.shrink()      # live runs grew: the bound holds while streaming
        self.rounds += 1

    def _scan(self) -> None:
        """The base dir's run ids, the runs that appeared, the rows of live runs."""
        from starlette.exceptions import HTTPException
        with self._scan_lock:
            now = self.d.run_ids()
            added = sorted(now - self.ids) if self.ids is not None else []
            scan = self.scans + 1
            for rid in added:
                exp, _, name = rid.partition("/")
                try:
                    self.watched[rid] = self.d.cached(exp, name)
                except HTTPException:
                    continue
            rows = {}
            for rid, run in list(self.watched.items()):
                if run.status == layout.RUNNING:
                    run.refresh()
                rows[rid] = self.d.live_row(run)
                if run.status != layout.RUNNING:
                    del self.watched[rid]           # its last row is shown, then it is left
            old = [a for a in self.added if a[0] <= scan - KEPT_SCANS]
            if old:
                self.forgotten = old[-1][0]
            self.added = self.added[len(old):] + [(scan, r) for r in added]
            self.ids, self.rows, self.scans = now, rows, scan
