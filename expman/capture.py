"""``capture_output=True``: tee stdout and stderr into the run's output.log.

The training loop's ``print`` must never wait for the disk. Each write goes to
the real stream as before and its text into a bounded in-memory queue; a daemon
thread appends the queue to output.log. When the queue is full (a disk slower
than the output), the text is dropped from the log (never from the console)
and counted; the count lands in run.json and as a last line in output.log.

Only Python-level writes to ``sys.stdout``/``sys.stderr`` are captured: output
of C extensions or subprocesses writing to file descriptors 1 and 2 directly is
not (it would need fd redirection, which a library should not impose).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

__all__ = ["OutputCapture", "MAX_PENDING_CHARS"]

MAX_PENDING_CHARS = 4 << 20      # characters waiting for the disk before writes are dropped


class _Tee:
    """Stands in for sys.stdout/sys.stderr: the real stream first, then the queue."""

    def __init__(self, real: TextIO | None, sink: "OutputCapture") -> None:
        self._real = real
        self._sink: OutputCapture | None = sink

    def write(self, text: str) -> int:
        n = self._real.write(text) if self._real is not None else len(text)
        sink = self._sink
        if sink is not None and isinstance(text, str) and text:
            sink.put(text)
        return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._real is not None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:    # encoding, isatty, fileno, buffer, ...
        if self._real is None:
            raise AttributeError(name)
        return getattr(self._real, name)


class OutputCapture:
    """Installs the tees at construction; ``close()`` restores the streams."""

    def __init__(self, path: Path, max_pending: int = MAX_PENDING_CHARS) -> None:
        from expman._fsutil import open_nofollow
        # the guarded open: never through a link, never a FIFO (which would block)
        self._fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._max = max_pending
        self._queue: collections.deque[str] = collections.deque()
        self._pending = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped_writes = 0
        self.dropped_chars = 0
        self.write_error: str | None = None
        self._thread = threading.Thread(target=self._work, name="expman-output", daemon=True)
        self._thread.start()
        self._tees = (_Tee(sys.stdout, self), _Tee(sys.stderr, self))
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = self._tees

    def put(self, text: str) -> None:
        with self._lock:
            if self._pending + len(text) > self._max or self._stopping:
                self.dropped_writes += 1
                self.dropped_chars += len(text)
                return
            self._pending += len(text)
            self._queue.append(text)
        self._wake.set()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            parts = []
            with self._lock:
                while self._queue:
                    parts.append(self._queue.popleft())
                stopping = self._stopping
            if parts:
                data = "".join(parts).encode("utf-8", "backslashreplace")
                self._write(data)
                with self._lock:
                    self._pending -= sum(map(len, parts))
            if stopping and not self._queue:
                return

    def _write(self, data: bytes) -> None:
        if self.write_error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:        # reported in run.json; the console keeps working
            self.write_error = f"{e.strerror or e} ({len(data)} bytes lost)"

    def detach(self) -> None:
        """Stop teeing (in a forked child: the writer thread did not survive the fork)."""
        for tee in self._tees:
            tee._sink = None

    def close(self, timeout: float = 5.0) -> dict[str, Any]:
        """Restore the streams, write what is queued, close the file; returns losses."""
        self.detach()
        # restore only what is still ours: a later redirect (pytest's capsys, a
        # contextlib.redirect_stdout) keeps its stream, and our tee goes inert
        if sys.stdout is self._tees[0]:
            sys.stdout = self._saved[0]
        if sys.stderr is self._tees[1]:
            sys.stderr = self._saved[1]
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self.dropped_writes and not self._thread.is_alive():
            self._write(f"[expman: {self.dropped_writes} writes ({self.dropped_chars} characters) "
                        "were not logged here: the disk was slower than the output]\n".encode())
        try:
            os.close(self._fd)
        except OSError:
            pass
        loss: dict[str, Any] = {}
        if self.dropped_writes:
            loss["dropped_writes"], loss["dropped_chars"] = self.dropped_writes, self.dropped_chars
        if self.write_error:
            loss["write_error"] = self.write_error
        if self._thread.is_alive():
            loss["unfinished"] = f"output.log writer still busy after {timeout} s"
        return loss
