"""``expman serve`` for the CLI: ``add_parser(subparsers)`` registers it,
``run(args)`` runs it (the CLI package wires both in)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from expman.cli._common import BASE, add_base_positional, base_spec, command

SUMMARY = "serve a live dashboard of the runs in the browser"
EXAMPLE = "expman serve --port 8000"


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "serve", SUMMARY, EXAMPLE, run, [BASE])
    add_base_positional(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; another address needs a token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--token", default=None,
                   help="the token to require (default: $EXPMAN_TOKEN, else a random one for a "
                        "non-loopback host); an empty token is refused. Visible in the process "
                        "list: prefer --token-file or $EXPMAN_TOKEN")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="read the token from the first line of this file")
    p.add_argument("--no-token", action="store_true",
                   help="serve a non-loopback host without a token (anyone who can reach it reads the runs)")
    p.add_argument("--cache-mb", type=int, default=1024,
                   metavar="MB",
                   help="memory for decoded runs, least recently used dropped first (default 1024)")


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("expman serve needs the serve extra: pip install 'expman-logger[serve]'",
              file=sys.stderr)
        return 2
    from expman.dashboard import pick_token, read_token, serve
    from expman.errors import ExpmanValueError
    if args.no_token and (args.token is not None or args.token_file is not None):
        print("expman serve: --token and --no-token contradict each other", file=sys.stderr)
        return 2
    try:
        token: str | bool | None = False if args.no_token else read_token(args.token, args.token_file)
        pick_token(args.host, token)             # an empty token: refused here, said plainly
    except ExpmanValueError as e:
        print(f"expman serve: {e}", file=sys.stderr)
        return 2
    try:
        if args.cache_mb < 0:
            print(f"expman serve: --cache-mb must be 0 or more, got {args.cache_mb}", file=sys.stderr)
            return 2
        serve(base_spec(args, args.base), args.host, args.port, not args.no_browser, token,
              cache_bytes=args.cache_mb << 20)
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"expman serve: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
