"""How a run learns the way its process ends: exit, exception, SIGTERM, fork.

Installed once, on the first Experiment. Holds only weak references, so an
unclosed Experiment can still be garbage-collected (and close itself).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from types import TracebackType
from typing import Any

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_installed = False
_sigterm_installed = False
_lock = threading.Lock()
# How the interpreter is ending, as far as we can tell: set by the hooks below.
exit_info: dict[str, Any] | None = None


def describe_exception(exc: BaseException, tb: TracebackType | None = None) -> dict[str, Any]:
    """type, message and file:line of the innermost frame, for run.json."""
    import traceback
    tb = tb if tb is not None else exc.__traceback__
    location = None
    if tb is not None:
        frame = traceback.extract_tb(tb)[-1]
        location = f"{frame.filename}:{frame.lineno}"
    return {"reason": "exception", "type": type(exc).__qualname__, "message": str(exc),
            "location": location}


def register(exp: Any, handle_signals: bool) -> None:
    global _installed
    with _lock:
        _live.add(exp)
        if not _installed:
            _installed = True
            atexit.register(_at_exit)
            _wrap_excepthook()
            _wrap_sys_exit()
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
    if handle_signals:
        _install_sigterm()


def unregister(exp: Any) -> None:
    _live.discard(exp)


def live() -> list[Any]:
    return list(_live)


def _wrap_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(tp, value, tb):  # type: ignore[no-untyped-def]
        global exit_info
        exit_info = describe_exception(value, tb)
        previous(tp, value, tb)

    sys.excepthook = excepthook


def _wrap_sys_exit() -> None:
    """sys.exit(n) reaches atexit without trace of n: remember it on the way."""
    previous = sys.exit

    def exit(code: object = None) -> None:
        global exit_info
        if exit_info is not None and exit_info.get("reason") == "signal":
            # a SIGTERM handler (the user's, chained) ending the process: still KILLED
            exit_info = {**exit_info, "code": code if isinstance(code, int) else 1}
        elif code not in (None, 0):
            exit_info = {"reason": "exit", "code": code if isinstance(code, int) else 1,
                         "message": None if isinstance(code, int) else str(code)}
        previous(code)  # type: ignore[arg-type]

    exit.__doc__ = previous.__doc__
    sys.exit = exit  # type: ignore[assignment]


def status_for_exit() -> tuple[str, dict[str, Any] | None]:
    if exit_info is None:
        return "FINISHED", None
    if exit_info.get("reason") == "signal":
        return "KILLED", exit_info
    return "FAILED", exit_info


def _at_exit() -> None:
    status, info = status_for_exit()
    for exp in list(_live):
        exp._close_at_exit(status, info)


def _after_fork_in_child() -> None:
    global exit_info, _lock
    _lock = threading.Lock()    # another parent thread may have held it at fork
    for exp in list(_live):
        exp._after_fork_child()
    _live.clear()
    exit_info = None


def _install_sigterm() -> None:
    """Drain, fsync and mark KILLED on SIGTERM, then do what SIGTERM would have done."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, AttributeError):
        return
    if previous is signal.SIG_IGN or previous is None:
        return                  # SIGTERM is ignored (or set from C): leave it alone

    def on_sigterm(signum: int, frame: Any) -> None:
        global exit_info
        exit_info = {"reason": "signal", "signal": "SIGTERM"}
        if callable(previous):
            # the user's handler decides whether the process ends; make the data
            # durable now, and let atexit mark KILLED if it does end
            for exp in list(_live):
                exp._flush_quietly()
            previous(signum, frame)
            return
        for exp in list(_live):
            exp._close_at_exit("KILLED", exit_info)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _sigterm_installed = True
