"""A dashboard server on a background thread, for tests, benchmarks and the
screenshot script: ``with running_server(base) as url: ...``."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def running_server(base_dir: str | os.PathLike[str], host: str = "127.0.0.1",
                   token: str | bool | None = None, timeout: float = 30.0,
                   **serve_kw: Any) -> Iterator[str]:
    """Serve ``base_dir`` on a free port; yields the printed URL; stops on exit.
    ``serve_kw``: more keywords of ``serve`` (``max_connections``, ``cache_bytes``...)."""
    from expman.dashboard import serve
    out = io.StringIO()
    ready = threading.Event()
    box: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve(base_dir, host, 0, False, token, out=out, ready=ready, server_box=box,
                  warm=False, **serve_kw)
        except BaseException as e:     # surfaced to the caller below
            errors.append(e)
            ready.set()

    thread = threading.Thread(target=target, name="expman-dashboard", daemon=True)
    thread.start()
    if not ready.wait(timeout) or errors or not box or not box[0].started:
        if box:
            box[0].should_exit = True
        thread.join(timeout)
        raise RuntimeError(f"the dashboard did not start: {errors or out.getvalue()!r}")
    url = out.getvalue().splitlines()[0].split(": ", 1)[1]
    try:
        yield url
    finally:
        box[0].should_exit = True
        thread.join(timeout)
