"""Sending a run file over HTTP from the descriptor the guarded layer opened
(``expman._fsutil.open_under_stat``: no link below the run folder, a regular
file), never by its path again: what was checked is what is sent.

One byte range per request (RFC 9110 §14): 206 with Content-Range, 416 when it
starts past the end; several ranges, another unit or a malformed header are
ignored (the whole file, as the RFC allows). ETag and Last-Modified let a
browser resume (If-Range) and revalidate (If-None-Match: 304). The bytes go out
in CHUNK pieces read in a worker thread, so a slow disk or a 64 GiB sparse file
never blocks the event loop nor fills memory, and a client that goes away stops
the reading."""

from __future__ import annotations

import os
import re
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import Response

from expman._fsutil import read_range

__all__ = ["CHUNK", "FileSend", "RangeNotSatisfiable", "byte_range", "file_response"]

CHUNK = 256 << 10
# RFC 9110 §14.1.2: a single `bytes=first-last`, `bytes=first-` or `bytes=-suffix`
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,20})\s*-\s*([0-9]{0,20})\s*", re.IGNORECASE)


class RangeNotSatisfiable(ValueError):
    """The one range asked for starts at or past the end of the file."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, stop)`` a Range header asks of a file of ``size`` bytes, or
    None for the whole file (no header, several ranges, another unit, malformed).
    RangeNotSatisfiable when the range is well-formed but holds no byte of it."""
    m = _RANGE.fullmatch(header) if header else None
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first:
        if not last:
            return None                       # `bytes=-`: malformed
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None                           # `bytes=5-3`: malformed, ignored
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, min(int(last) + 1, size) if last else size


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def _disposition(kind: str, filename: str) -> str:
    quoted = quote(filename)
    if quoted != filename:
        return f"{kind}; filename*=utf-8''{quoted}"
    return f'{kind}; filename="{filename}"'


class FileSend(Response):
    """Bytes ``[start, stop)`` of an open file, sent in CHUNK pieces read off the
    event loop; it owns ``fd`` and closes it when done (also on HEAD, a
    disconnect or an error)."""

    def __init__(self, fd: int, start: int, stop: int, status_code: int,
                 headers: dict[str, str], media_type: str | None) -> None:
        self.fd, self.start, self.stop = fd, start, stop
        super().__init__(None, status_code, {**headers, "content-length": str(stop - start)},
                         media_type)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if scope.get("method") == "HEAD" or self.stop == self.start:
                await send({"type": "http.response.body", "body": b""})
                return
            async with anyio.create_task_group() as tg:
                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()
                tg.start_soon(until_disconnect)
                await self._body(send)
                tg.cancel_scope.cancel()
        finally:
            os.close(self.fd)

    async def _body(self, send: Any) -> None:
        pos = self.start
        while pos < self.stop:
            end = min(pos + CHUNK, self.stop)
            chunk = await anyio.to_thread.run_sync(read_range, self.fd, pos, end)
            if not chunk:
                return       # cut while it was sent: the client sees a short body, not a wrong one
            pos += len(chunk)
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": pos < self.stop})


def file_response(request: Request, fd: int, st: os.stat_result, filename: str,
                  media_type: str, inline: bool, headers: dict[str, str]) -> Response:
    """The answer to a GET or HEAD of an open regular file (``st``: its fstat);
    takes ``fd`` over (closed by the response, or here when none sends it)."""
    size = st.st_size
    etag = _etag(st)
    modified = formatdate(st.st_mtime, usegmt=True)
    common = {**headers, "accept-ranges": "bytes", "etag": etag, "last-modified": modified}
    # If-None-Match compares weakly (a W/ tag matches), and `*` matches any file
    tags = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if etag in tags or "*" in tags:
        os.close(fd)
        return Response(None, 304, common)
    if_range = request.headers.get("if-range")
    asked = request.headers.get("range") if if_range in (None, etag, modified) else None
    try:
        span = byte_range(asked, size)
    except RangeNotSatisfiable:
        os.close(fd)
        return Response(f"range {asked!r} is past the end of a {size}-byte file", 416,
                        {**common, "content-range": f"bytes */{size}"}, "text/plain")
    common["content-disposition"] = _disposition("inline" if inline else "attachment", filename)
    if span is None:
        return FileSend(fd, 0, size, 200, common, media_type)
    start, stop = span
    common["content-range"] = f"bytes {start}-{stop - 1}/{size}"
    return FileSend(fd, start, stop, 206, common, media_type)
