"""The server's own resources under abuse: open files, connections, slow clients.

Uvicorn accepts every connection and waits for its headers forever (its
keep-alive timeout starts only after a response), so 1,100 half-sent requests
("slowloris") used every file descriptor of a ``ulimit -n 1024`` process before
any token was checked. Here the HTTP protocol is wrapped so that:

- a connection past ``max_connections`` is closed as soon as it is accepted;
- a connection whose request headers are not complete ``header_timeout``
  seconds after it opened (or after its previous response) is closed;

and the process raises its soft ``RLIMIT_NOFILE`` to the hard limit at start
(POSIX), so the cap, not the OS, is what a flood meets first.
"""

from __future__ import annotations

import sys
from typing import Any

HEADER_TIMEOUT = 10.0         # seconds for a client to send its request headers
MAX_CONNECTIONS = 1000        # open connections at once (live streams count: one per page)
SPARE_FILES = 64              # descriptors left for run files, the listing and logs


def raise_nofile() -> int | None:
    """Raise the soft limit of open files to the hard one; returns the soft limit
    now in force (None where there is no such limit, e.g. Windows)."""
    if sys.platform == "win32":
        return None
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if want == resource.RLIM_INFINITY:     # macOS: the kernel's own cap applies instead
        want = max(soft, 1 << 16) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):      # refused (macOS OPEN_MAX): keep what we have
            pass
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(max_connections: int | None, nofile: int | None) -> int:
    """The connection cap: the one asked for, else MAX_CONNECTIONS, and never more
    than the open-file limit leaves room for."""
    cap = MAX_CONNECTIONS if max_connections is None else max_connections
    if nofile is not None:
        cap = min(cap, max(nofile - SPARE_FILES, 8))
    return max(cap, 1)


def guarded_protocol(max_connections: int, header_timeout: float) -> type:
    """Uvicorn's HTTP protocol class with the connection cap and the header
    timeout (module doc); pass it as ``uvicorn.Config(http=...)``."""
    try:
        import httptools  # type: ignore[import-not-found]  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class GuardedProtocol(Base):  # type: ignore[misc, valid-type, unused-ignore]
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.abort()          # closed at once: no descriptor held by a flood
                return
            self._await_headers()

        def _await_headers(self) -> None:
            """Close the connection unless a new request's headers are complete in
            time (a request's cycle is made when its headers are)."""
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late,
                                                      self.cycle)

        def _headers_late(self, cycle: Any) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete   # no request being served
            if self.cycle is cycle and idle and not self.transport.is_closing():
                self.transport.close()

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:    # the headers of a new request are in
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_headers()      # a kept-alive connection's next request too

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedProtocol
