"""The single-writer lock: one OS lock per writer stream, held for the run's life.

Why an OS lock and not a pid or a timestamp: the kernel releases it when the
holder dies (SIGKILL, power loss of the client on NFS aside), never while it
lives, whatever namespace or host the reader is in. So it serves both sides:

- the writer (``Experiment``) takes it before it reads, cuts or appends a
  stream, and keeps it until its final ``run.json`` is written; a second opener
  gets ``RunLockedError`` naming the holder's pid and host;
- readers probe it (``probe``, ``is_locked``): a non-blocking attempt that is
  released at once, never held.

POSIX uses ``flock``: the lock belongs to the open file description, so a
forked child's copy of the descriptor keeps it while the parent lives and a
child closing its copy never releases it; the child closes its copy right after
the fork (``forget_in_child``), so it cannot keep a dead parent's run "alive".
Windows uses ``msvcrt.locking`` on one byte far past the holder text, so the
text stays readable. The lock file is never deleted: unlinking a lock file
lets two openers lock two different inodes.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

from expman._fsutil import open_nofollow
from expman.errors import RunLockedError
from expman.layout import LOCK_FILE, rank_file

__all__ = ["RunLock", "acquire", "probe", "is_locked", "holder", "lock_files"]

_UNSUPPORTED = {errno.ENOLCK, errno.EINVAL, errno.ENOSYS,
                getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)}
_WIN_LOCK_OFFSET = 0x7FFFFF00                   # the locked byte, past any holder text
_RETRY_FOR = 0.5    # a reader's probe holds the lock for microseconds: retry that long
MAX_HOLDER_TEXT = 4096
# Lock files this process holds. Never opened again here: where flock is emulated
# with POSIX record locks (Linux NFS clients), closing any descriptor of the file
# drops every lock the process has on it, so a probe by the writer's own process
# (a notebook reading its own run) would release the writer's lock.
_held: set[str] = set()


def _key(path: Path) -> str:
    return os.path.realpath(path)

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int, exclusive: bool) -> None:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EDEADLK):
                raise BlockingIOError(errno.EAGAIN, "locked") from None
            raise

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int, exclusive: bool) -> None:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """A held writer lock. ``release()`` after the final run.json is written."""

    __slots__ = ("path", "_fd", "_pid", "_key")

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd
        self._pid = os.getpid()
        self._key = _key(path)
        if fd is not None:
            _held.add(self._key)

    @property
    def held(self) -> bool:
        """False when the filesystem offers no locks (the run then has no lock file)."""
        return self._fd is not None

    def release(self) -> None:
        """Release and close; idempotent; a no-op in a forked child."""
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return
        _held.discard(self._key)
        try:
            if sys.platform == "win32":
                _unlock(fd)     # POSIX: closing the last descriptor releases it
        except OSError:
            pass
        finally:
            os.close(fd)

    def forget_in_child(self) -> None:
        """After fork, in the child: close the inherited descriptor without unlocking
        (flock: the parent's descriptor keeps the lock, the child must not)."""
        fd, self._fd = self._fd, None
        _held.discard(self._key)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def acquire(run_dir: Path, rank: int = 0, info: dict[str, Any] | None = None) -> RunLock:
    """Take the writer lock of ``rank``'s streams in ``run_dir``, or raise
    RunLockedError naming the holder. On a filesystem without locks, returns an
    unheld RunLock and removes the lock file, so readers use pid and heartbeat."""
    path = run_dir / rank_file(LOCK_FILE, rank)
    if _held and _key(path) in _held:     # this very process writes it (not reopened)
        raise RunLockedError(path, {"pid": os.getpid(), "host": _hostname(), "rank": rank})
    # the guarded open: a link or a FIFO planted as the lock file is refused
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _RETRY_FOR
    try:
        while True:
            try:
                _try_lock(fd, True)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = holder(path, wait=_RETRY_FOR)
                    raise RunLockedError(path, who) from None
                time.sleep(0.01)
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                os.close(fd)
                try:
                    os.unlink(path)
                except OSError:
                    pass
                return RunLock(path, None)
        import orjson
        text = orjson.dumps({"pid": os.getpid(), "host": _hostname(), "rank": rank,
                             "time": time.time(), **(info or {})}, option=orjson.OPT_APPEND_NEWLINE)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    return RunLock(path, fd)


def holder(path: Path, wait: float = 0.0) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} if nothing readable yet: it
    writes right after locking, so a short ``wait`` polls for it)."""
    import orjson
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = open_nofollow(path, os.O_RDONLY)        # never a FIFO: it would block
            try:
                data = os.read(fd, MAX_HOLDER_TEXT)
            finally:
                os.close(fd)
            info = orjson.loads(data) if data.endswith(b"\n") else None
            if isinstance(info, dict):
                return info
        except (OSError, orjson.JSONDecodeError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.01)


def probe(run_dir: Path, rank: int = 0) -> bool | None:
    """Is ``rank``'s writer lock held? None when there is no lock file (a run
    written before locks, or a filesystem without them) or locks are unsupported.
    The attempt is released at once: a reader never holds the lock."""
    return _probe_file(run_dir / rank_file(LOCK_FILE, rank))


def _probe_file(path: Path) -> bool | None:
    if _held and _key(path) in _held:
        return True
    try:
        # guarded: a FIFO planted as the lock file would block every listing, a
        # link would probe another file; neither is a writer's lock
        fd = open_nofollow(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        _try_lock(fd, False)
        if sys.platform == "win32":
            _unlock(fd)
        return False                # got it: nobody holds it (closing releases ours)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise
    finally:
        os.close(fd)


def lock_files(run_dir: Path) -> list[Path]:
    """Every rank's lock file present in ``run_dir``."""
    stem, _, suffix = LOCK_FILE.rpartition(".")
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        if name == LOCK_FILE:
            out.append(run_dir / name)
        elif name.startswith(stem + ".rank") and name.endswith("." + suffix):
            middle = name[len(stem) + 5:-len(suffix) - 1]
            if middle.isdigit():
                out.append(run_dir / name)
    return out


def is_locked(run_dir: str | os.PathLike[str]) -> bool:
    """True while any writer (any rank) holds its lock in ``run_dir``: such a run
    is alive whatever its run.json or heartbeat say, and must never be deleted."""
    return any(_probe_file(p) for p in lock_files(Path(os.fspath(run_dir))))


def _hostname() -> str:
    from expman.layout import hostname
    return hostname()
