"""Reading a run folder's streams incrementally: ``RunTail`` decodes only the
frames and event lines appended since its last poll, by byte offset, never from
the start again. ``open_run`` and the dashboard's live view are built on it.

A torn last frame (a crash mid-write) is dropped and counted; damage elsewhere
is reported (a ``RuntimeWarning`` and ``integrity``), never returned as
values. ``salvage=True`` resynchronises after damage and keeps the frames that
follow it. Only regular files are read (a FIFO or a device planted in a run
folder is refused), and never beyond the size they had when opened.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expman import _core
from expman._fsutil import read_json_object, read_regular
from expman.errors import ExpmanValueError, RunNotFoundError
from expman.layout import (
    EVENTS_FILE, MAX_EVENT_LINE, METRICS_FILE, RUN_FILE, RUNNING, parse_event_lines, rank_file,
)
from expman.liveness import effective_status
from expman.series import Metrics, Series, column

__all__ = ["RunTail", "TailBatch", "read_metrics", "EMPTY_REPORT"]

EMPTY_REPORT = {"frames": 0, "rows": 0, "points": 0, "torn_bytes": 0, "corrupt_bytes": 0,
                "corrupt_at": [], "unknown_points": 0, "end": 0}


def empty_report() -> dict[str, Any]:
    return dict(EMPTY_REPORT, corrupt_at=[])


def decode(data: Any, offset: int, keys: dict[int, str] | None,
            salvage: bool) -> tuple[dict[str, Series], dict[int, str], dict[str, Any]]:
    columns, keys, report = _core.decode_metrics(data, offset, keys, salvage)
    series = {k: Series(k, column(s), column(v), column(t))
              for k, (s, t, v) in columns.items()}
    return series, keys, report


def warn_damage(path: Path, report: dict[str, Any], salvage: bool, stacklevel: int) -> None:
    if report["corrupt_bytes"] or report["unknown_points"]:
        closed = report.get("closed_damage")
        warnings.warn(
            f"expman: {path} is damaged: {report['corrupt_bytes']} bytes unreadable at offsets "
            f"{report['corrupt_at'][:5]}"
            + ("; the run closed cleanly, so a bad last frame is damage, not a torn tail"
               if closed else "")
            + ("" if salvage or closed else "; open_run(..., salvage=True) "
               "recovers frames after the damage"),
            RuntimeWarning, stacklevel=stacklevel)


def read_metrics(path: Path, salvage: bool = False) -> tuple[Metrics, dict[str, Any]]:
    """A whole metrics.bin as Metrics, and the decoder's report."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return Metrics({}), empty_report()
    series, _keys, report = decode(data, 0, None, salvage)
    warn_damage(path, report, salvage, 3)
    return Metrics(series), report


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

    ``start="end"`` skips what is already on disk; ``start=cursor`` (a ``cursor``
    kept from an earlier tail, even in another process: it is plain JSON) goes on
    where that tail stopped, which is how the lake exports only what is new.
    ``rank=r`` reads rank r's streams of a multi-rank run. ``integrity``
    accumulates the decoder's report over every poll.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 start: str | dict[str, Any] = "beginning", salvage: bool = False,
                 rank: int = 0) -> None:
        cursor = _check_cursor(start) if isinstance(start, dict) else None
        if cursor is None and start not in ("beginning", "end"):
            raise ExpmanValueError(f"start must be 'beginning', 'end' or a RunTail.cursor, "
                                   f"got {start!r:.80}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ExpmanValueError(f"rank must be a non-negative int, got {rank!r}")
        self.path = Path(os.fspath(path))
        self.metrics_path = self.path / rank_file(METRICS_FILE, rank)
        self.events_path = self.path / rank_file(EVENTS_FILE, rank)
        if not (self.path / RUN_FILE).is_file():
            raise RunNotFoundError(2, f"not an expman run folder (no {RUN_FILE}): {self.path}",
                                   str(self.path))
        self.salvage = salvage
        self._meta_sig: tuple[int, int, int, int] | None = self._sig(RUN_FILE)   # before the read
        self.meta: dict[str, Any] = read_meta(self.path)
        self._keys: dict[int, str] = {}
        self._moff = 0             # offset in metrics.bin after the last intact frame
        self._eoff = 0             # offset in events.jsonl after the last whole line
        self._escan = 0            # offset up to which it was read (a line in progress)
        self.bad_event_lines = 0
        self.integrity: dict[str, Any] = empty_report()
        self._done_at: list[int] = []       # corruption behind the read position
        self._done_bytes = 0
        self.rewound = False       # the last poll found a stream cut below the read position
        if cursor is not None:
            self._moff, self._eoff, self._keys = cursor
        elif start == "end":
            self.poll()

    @property
    def cursor(self) -> dict[str, Any]:
        """Where the next poll starts: the byte offsets after the last intact frame and
        the last whole event line, and the stream's key table (keys are defined once,
        in-stream). Plain JSON; ``RunTail(path, start=cursor)`` resumes from it."""
        return {"metrics": self._moff, "events": self._eoff,
                "keys": {str(k): v for k, v in self._keys.items()}}

    def _sig(self, name: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path / name)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

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
        sig = self._sig(RUN_FILE)
        if sig != self._meta_sig:
            try:
                self.meta = read_meta(self.path)
                self._meta_sig = sig
                changed = True
            except (OSError, ValueError):
                pass           # replaced under us: read it next time
        status = self.status
        return TailBatch(self.poll_metrics(), self.poll_events(), status, changed)

    def poll_metrics(self, until: int | None = None) -> Metrics:
        """Only the metric points appended since the last poll (``poll`` without the
        events or the status). A stream cut below the read position (repaired or
        replaced) is read again from its start, and ``rewound`` says so. ``until``:
        read no frame past this byte offset (a branch's start: the lake splits a
        stream there; ``cursor`` then says whether a frame ended exactly at it)."""
        path = self.metrics_path
        self.rewound = False
        try:
            size = regular_size(path)
            if size < self._moff:           # cut (repair) or replaced: start over
                self.rewound = True
                self._moff, self._keys = 0, {}
                self.integrity = empty_report()
                self._done_at, self._done_bytes = [], 0
            if self._moff == 0:
                data, offset = read_regular(path), 0
            else:
                # decode_metrics reads from ``offset``; give it the header's length
                # of padding so only the new bytes are read from disk
                data = bytes(_core.HEADER_SIZE) + read_regular(path, self._moff)
                offset = _core.HEADER_SIZE
        except FileNotFoundError:
            return Metrics({})
        base = self._moff - offset if self._moff else 0
        if until is not None:
            data = data[:max(offset, until - base)]
        if offset == 0 and len(data) < _core.HEADER_SIZE:
            return Metrics({})            # the header itself is not written yet
        if len(data) == offset:
            return Metrics({})
        series, self._keys, report = decode(data, offset, self._keys, self.salvage)
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

    def poll_events(self) -> list[dict[str, Any]]:
        """Only the whole event lines appended since the last poll. A line still being written is read again
        next time, but only up to MAX_EVENT_LINE bytes: past that it is skipped to
        its newline, reading only bytes not read before (an unterminated line that
        grows forever is never re-read from its start)."""
        path = self.events_path
        try:
            size = regular_size(path)
            if size < self._eoff:
                self._eoff = self._escan = 0
            elif size < self._escan:
                self._escan = self._eoff
            skipping = self._escan - self._eoff > MAX_EVENT_LINE
            start = self._escan if skipping else self._eoff
            data = read_regular(path, start)
        except FileNotFoundError:
            return []
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._escan += len(data)
                return []
            self.bad_event_lines += 1              # the over-long line, never kept
            self._eoff, data = start + nl + 1, data[nl + 1:]
        events, bad, used = parse_event_lines(data)   # a line still being written waits
        self._escan = self._eoff + len(data)
        self._eoff += used
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
            if batch.status != RUNNING:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(interval)




def _check_cursor(cursor: dict[str, Any]) -> tuple[int, int, dict[int, str]]:
    """(metrics offset, events offset, key table) of a ``RunTail.cursor``; a cursor
    read back from a file may be damaged or crafted: ExpmanValueError naming it."""
    try:
        moff, eoff, keys = cursor["metrics"], cursor["events"], cursor["keys"]
        ok = all(type(o) is int and o >= 0 for o in (moff, eoff)) and isinstance(keys, dict)
        table = {int(k): v for k, v in keys.items()} if ok else {}
        ok = ok and all(isinstance(v, str) and k >= 0 for k, v in table.items())
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ExpmanValueError(f"not a RunTail.cursor (metrics and events offsets, keys): "
                               f"{cursor!r:.120}")
    if moff and moff < _core.HEADER_SIZE:
        raise ExpmanValueError(f"RunTail.cursor: metrics offset {moff} is inside the file header")
    return moff, eoff, table


def read_meta(run_dir: Path) -> dict[str, Any]:
    """run.json as a dict, or CorruptRunError naming the file (a list, a number...)."""
    return read_json_object(run_dir / RUN_FILE)


def regular_size(path: Path) -> int:
    """The size of a regular file (ValueError for a FIFO, device or folder)."""
    from expman._fsutil import regular_stat
    return regular_stat(path).st_size
