"""Who may use the dashboard: the token rule (never an empty one), where it is read
from, and the per-port cookie that carries it. No server code: the app and the
launcher both import it."""

from __future__ import annotations

import ipaddress
import os
import secrets

from expman.errors import ExpmanValueError

__all__ = ["TOKEN_ENV", "cookie_name", "cookie_value", "is_loopback", "pick_token",
           "read_token", "url_for"]

TOKEN_ENV = "EXPMAN_TOKEN"     # a token kept out of the command line (/proc/PID/cmdline)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def pick_token(host: str, token: str | bool | None) -> str | None:
    """None: a random token for a non-loopback host, none on loopback; False: none
    (``--no-token``, the only way to turn auth off); True: a random one; a str: that
    one. An empty or blank str is refused: it is what ``--token "$TOK"`` gives when
    the variable is unset, and must never mean "no auth"."""
    if token is False:
        return None
    if token is True or (token is None and not is_loopback(host)):
        return secrets.token_urlsafe(24)
    if token is None:
        return None
    if not isinstance(token, str):
        raise ExpmanValueError(f"token must be a str, bool or None, got {type(token).__name__}")
    if not token.strip():
        raise ExpmanValueError("the token is empty: give a non-empty token, or --no-token to "
                               "serve without one")
    if any(c.isspace() or not c.isprintable() or c in ';,"\\' for c in token):
        raise ExpmanValueError("the token holds spaces, control characters or ;,\"\\ "
                               "(it travels in a cookie and a URL): pick another")
    return token


def read_token(token: str | None, token_file: str | None,
               environ: dict[str, str] | None = None) -> str | None:
    """The token given by ``--token``, ``--token-file PATH`` (its first line) or
    $EXPMAN_TOKEN, in that order; None when none is given. The file and the
    variable keep the token out of ``/proc/PID/cmdline``. An empty one is
    returned as it is (``pick_token`` refuses it)."""
    if token is not None and token_file is not None:
        raise ExpmanValueError("--token and --token-file: give one of them")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                return f.readline().strip()
        except OSError as e:
            raise ExpmanValueError(f"--token-file {token_file}: {e.strerror or e}") from None
    if token is not None:
        return token
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV)


def cookie_name(port: int) -> str:
    """The token cookie of the server on ``port``: cookies are per host, not per
    port, so two servers on one host (or another service) never share one."""
    return f"expman_token_{port}"


def cookie_value(token: str, port: int) -> str:
    """What the cookie holds: a MAC of the port under the token, not the token. The
    browser sends it to every port of the host; another service there learns
    nothing it can use elsewhere (not the token, not a key to another server
    sharing the token)."""
    import hashlib
    import hmac
    return hmac.new(token.encode(), f"expman-cookie:{port}".encode(), hashlib.sha256).hexdigest()


def url_for(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    from urllib.parse import quote
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")
