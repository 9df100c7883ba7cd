"""``expman serve``: a live dashboard over a base dir, in the browser.

    from expman.dashboard import serve
    serve("./experiments")              # http://127.0.0.1:8000/

Needs the ``serve`` extra (Starlette, Uvicorn, numpy); ``import expman`` never
loads it. The server is read-only: it calls the read side only.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any, TextIO

from expman.dashboard.access import (
    TOKEN_ENV, cookie_name, cookie_value, is_loopback, pick_token, read_token, url_for,
)
from expman.errors import ExpmanValueError

__all__ = ["TOKEN_ENV", "bind", "cookie_name", "cookie_value", "is_loopback", "pick_token",
           "read_token", "serve"]

def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the URL is known before serving."""
    if not 0 <= port <= 65535:
        raise ExpmanValueError(f"port must be 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(base_dir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1",
          port: int = 8000, open_browser: bool = True, token: str | bool | None = None, *,
          out: TextIO | None = None, ready: threading.Event | None = None,
          server_box: list[Any] | None = None, warm: bool = True,
          cache_bytes: int | None = None, max_connections: int | None = None,
          header_timeout: float | None = None) -> None:
    """Serve the dashboard until interrupted. The first line on ``out`` (stdout) is
    ``expman dashboard: URL``. ``base_dir`` may be a URL that ``expman sync`` wrote
    (``s3://bucket/runs``): it is served from a local copy refreshed every few
    seconds. A non-loopback ``host`` gets a random token unless ``token=False``.
    ``cache_bytes`` bounds the decoded runs kept in memory (1 GiB).
    ``max_connections`` (1,000, and what the open-file limit allows) and
    ``header_timeout`` (10 s) hold off slow or flooding clients (``limits``)."""
    import uvicorn

    from expman.dashboard.limits import (
        HEADER_TIMEOUT, connection_cap, guarded_protocol, raise_nofile,
    )
    from expman.dashboard.server import create_app
    from expman.remote import is_url
    remote = os.fspath(base_dir) if base_dir is not None and is_url(base_dir) else None
    if remote is not None:      # a synced URL (s3://...): served from a local copy kept fresh
        from expman.remote import localize
        base_dir = localize(remote)
    tok = pick_token(host, token)
    loopback = is_loopback(host)
    if tok is None and not loopback:
        print(f"expman serve: WARNING: serving {host} WITHOUT A TOKEN (--no-token): anyone "
              "who can reach this address reads every run, its params, messages and "
              "artifacts", file=sys.stderr, flush=True)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    from expman.dashboard.cache import DEFAULT_MAX_BYTES
    if cache_bytes is not None and cache_bytes < 0:
        raise ExpmanValueError(f"cache_bytes must be 0 or more, got {cache_bytes}")
    app = create_app(base_dir, tok, loopback=loopback,
                     max_bytes=DEFAULT_MAX_BYTES if cache_bytes is None else cache_bytes,
                     title=remote)
    url = url_for(host, actual, tok)
    print(f"expman dashboard: {url}", file=out or sys.stdout, flush=True)
    cap = connection_cap(max_connections, raise_nofile())
    protocol = guarded_protocol(cap, HEADER_TIMEOUT if header_timeout is None else header_timeout)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1,
                            lifespan="off", access_log=False, http=protocol,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=16 << 10)
    server = uvicorn.Server(config)
    if server_box is not None:
        server_box.append(server)
    if open_browser:
        import webbrowser
        threading.Timer(0.5, webbrowser.open, (url.replace("0.0.0.0", "127.0.0.1"),)).start()
    if ready is not None:
        threading.Thread(target=_signal_ready, args=(server, ready), daemon=True).start()
    if remote is not None:
        threading.Thread(target=_follow_remote, args=(remote, app.dashboard.stopping),
                         name="expman-remote", daemon=True).start()
    if warm:       # list the runs once started, so the first page load finds the list read
        threading.Thread(target=_warm, args=(app.dashboard, server), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        app.dashboard.stopping.set()
        sock.close()


def _warm(dashboard: Any, server: Any = None) -> None:
    # after the server's own start-up: listing beside it (both need the GIL) made the
    # listing half as slow again, and a first request waits for it
    import time
    deadline = time.monotonic() + 30
    while (server is not None and not server.started and not server.should_exit
           and time.monotonic() < deadline):
        time.sleep(0.01)
    try:
        dashboard.rows()       # first: the page's first request waits for this listing
    except Exception:          # a listing error shows on the page's own request
        pass
    # numpy next (the first chart request would pay for it), once no listing has run for
    # a moment: beside a request's listing the import would take the GIL from it
    while not dashboard.stopping.wait(0.05):
        if not dashboard.listing and time.monotonic() - dashboard.listed_at > 0.3:
            try:
                import numpy  # noqa: F401
            except Exception:
                pass
            return


def _signal_ready(server: Any, ready: threading.Event) -> None:
    import time
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline and not server.should_exit:
        time.sleep(0.01)
    ready.set()


REMOTE_POLL = 5.0       # seconds between fetches of what a synced URL gained


def _follow_remote(url: str, stopping: threading.Event) -> None:
    """Fetch what the URL gained (only new chunks) until the server stops, so runs
    synced while they run stay live in the page."""
    from expman.remote import localize
    while not stopping.wait(REMOTE_POLL):
        try:
            localize(url)
        except Exception:       # a network hiccup: the next round tries again
            pass
