"""One exception family for expman.

Each subclass also inherits the builtin whose meaning it shares, so a plain
``except ValueError`` or ``except OSError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "ExpmanError",
    "ExpmanTypeError",
    "ExpmanValueError",
    "RunClosedError",
    "RunExistsError",
    "WriterError",
    "CorruptRunError",
    "RunNotFoundError",
    "RunLockedError",
    "UnsafePathError",
]


class ExpmanError(Exception):
    """Base class of every error expman raises on purpose."""


class ExpmanTypeError(ExpmanError, TypeError):
    """A value of the wrong type (a metric value, a key, a step, a param)."""


class ExpmanValueError(ExpmanError, ValueError):
    """A value of the right type but unusable (empty key, negative step, bad name)."""


class RunClosedError(ExpmanError, RuntimeError):
    """The run is closed (or belongs to the parent of a forked process)."""


class RunExistsError(ExpmanError, FileExistsError):
    """The run folder exists already and ``resume=True`` was not given."""


class WriterError(ExpmanError, OSError):
    """The writer thread failed to write (disk full, I/O error, vanished folder).

    Carries ``errno``, ``strerror`` and ``filename`` like any ``OSError``.
    """


class CorruptRunError(ExpmanError, ValueError):
    """A run file is damaged where no crash could have damaged it."""


class RunNotFoundError(ExpmanError, FileNotFoundError):
    """No run folder matches a path or a run spec (``exp/latest``, a name prefix)."""


class RunLockedError(ExpmanError, RuntimeError):
    """Another process is writing this run (it holds the run's writer lock).

    ``holder`` is what that process wrote into the lock file: pid, host, rank, time.
    """

    def __init__(self, path: object, holder: dict[str, object]) -> None:
        self.path = str(path)
        self.holder = dict(holder)
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        rank = holder.get("rank")
        who = f"pid {pid} on host {host}" + (f" (rank {rank})" if rank else "")
        import os.path
        super().__init__(f"run {os.path.dirname(self.path)} is being written by {who}: one "
                         f"writer at a time. Wait for it to end, or start a new run "
                         f"(lock file: {self.path})")


class UnsafePathError(ExpmanError, OSError):
    """A file expman writes in a run folder is a symlink (or another non-regular
    file): it is never written through. Carries ``errno`` and ``filename``."""
