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
from typing import TYPE_CHECKING, Any

from expman.layout import FAILED, FINISHED, KILLED

if TYPE_CHECKING:
    import traceback

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None    # what SIGTERM did before our handler
_handler: Any = None             # our handler, while installed
_lock = threading.Lock()
# How the interpreter is ending, as far as we can tell: set by the hooks below.
exit_info: dict[str, Any] | None = None


MAX_TRACEBACK = 16 << 10     # characters of formatted traceback kept in run.json
MAX_MESSAGE = 4 << 10
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _in_expman(frame: traceback.FrameSummary) -> bool:
    """A frame of expman's own code: its Python files, or the compiled core
    (Cython frames carry a relative file name and a qualified function name)."""
    filename = frame.filename.replace("\\", "/")
    if frame.name.startswith("expman.") or filename.startswith("expman/"):
        return True
    path = os.path.abspath(frame.filename)
    return path == _PACKAGE_DIR or path.startswith(_PACKAGE_DIR + os.sep)


def _bounded(text: str, limit: int) -> str:
    """text, or its head and tail around a note of what was cut (the tail holds
    the innermost frames and the message, so it gets most of the room)."""
    if len(text) <= limit:
        return text
    head = limit // 8
    tail = limit - head - 64
    return f"{text[:head]}\n... {len(text) - head - tail} characters cut ...\n{text[-tail:]}"


def describe_exception(exc: BaseException, tb: TracebackType | None = None) -> dict[str, Any]:
    """type, message and file:line for run.json, plus the formatted traceback
    (at most MAX_TRACEBACK characters).

    ``location`` is the innermost frame outside expman: when expman raised the
    error (a bad param, a closed run), that is the user's line that called it;
    ``raised_at`` then says where inside expman it was raised."""
    import traceback
    tb = tb if tb is not None else exc.__traceback__
    location = raised_at = None
    if tb is not None:
        frames = traceback.extract_tb(tb)
        innermost = frames[-1]
        user = next((f for f in reversed(frames) if not _in_expman(f)), None)
        chosen = user if user is not None else innermost
        location = f"{chosen.filename}:{chosen.lineno}"
        if chosen is not innermost:
            raised_at = f"{innermost.filename}:{innermost.lineno}"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception as e:          # a __str__ that raises must not lose the run's status
        text = f"{type(exc).__qualname__} (traceback unavailable: {e!r})"
    try:
        message = str(exc)
    except Exception as e:
        message = f"<str() failed: {e!r}>"
    info = {"reason": "exception", "type": type(exc).__qualname__,
            "message": _bounded(message, MAX_MESSAGE), "location": location,
            "traceback": _bounded(text, MAX_TRACEBACK)}
    if raised_at is not None:
        info["raised_at"] = raised_at
    return info


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
    if not _live:
        _restore_sigterm()


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
        return FINISHED, None
    if exit_info.get("reason") == "signal":
        return KILLED, exit_info
    return FAILED, exit_info


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
    _restore_sigterm()          # the child owns no run: SIGTERM kills it as before


def _restore_sigterm() -> None:
    """Give SIGTERM back its previous disposition once no run of this process is
    open (the last close, a forked child). A Python-level handler only runs
    between bytecodes: a SIGTERM that lands just before a blocking C call (a
    multiprocessing Pool worker entering SemLock.acquire on the queue lock its
    parent holds while terminating the pool) is noted but never acted on, and
    the process hangs; the default disposition kills it in the kernel. Only from
    the main thread, and only while our handler is the one installed."""
    global _sigterm_installed
    if not _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _handler:
            signal.signal(signal.SIGTERM, _previous_sigterm)
    except (ValueError, TypeError):
        return
    _sigterm_installed = False


def _install_sigterm() -> None:
    """Drain, fsync and mark KILLED on SIGTERM, then do what SIGTERM would have done."""
    global _sigterm_installed, _previous_sigterm, _handler
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, AttributeError):
        return
    if previous is signal.SIG_IGN or previous is None:
        return                  # SIGTERM is ignored (or set from C): leave it alone
    _previous_sigterm = previous

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
            exp._close_at_exit(KILLED, exit_info)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    _handler = on_sigterm
    _sigterm_installed = True
