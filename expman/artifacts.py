"""Copying artifacts into the run without blocking the training loop.

The stored content is the file as it was at the call:
- files up to ``SYNC_LIMIT`` bytes are copied during the call (milliseconds);
- larger files are first cloned copy-on-write where the filesystem can
  (Linux FICLONE: btrfs, XFS, ...), which is an instant snapshot, then hashed
  in the background;
- otherwise they are copied in the background and the source's size, mtime
  and inode are compared before and after: if the file changed during the
  copy, the artifact record says ``"consistent": false`` and a warning event
  is logged, so a torn snapshot is never passed off as a good one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

SYNC_LIMIT = 8 << 20
CHUNK = 1 << 20


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _try_reflink(src: Path, dst: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import fcntl
    FICLONE = 0x40049409
    try:
        with open(src, "rb") as fs, open(dst, "wb") as fd:
            fcntl.ioctl(fd.fileno(), FICLONE, fs.fileno())
        return True
    except OSError:
        try:
            os.unlink(dst)
        except OSError:
            pass
        return False


def _copy_and_hash(src: Path, dst: Path) -> tuple[int, str]:
    import hashlib
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fs, open(dst, "wb") as fd:
        while True:
            chunk = fs.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            fd.write(chunk)
            size += len(chunk)
        fd.flush()
        os.fsync(fd.fileno())
    return size, digest.hexdigest()


def _hash(path: Path) -> tuple[int, str]:
    import hashlib
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class ArtifactCopier:
    """One background thread per run, started on the first large artifact."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        self._jobs: deque[tuple | None] = deque()
        self._ready = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self.failures: list[str] = []

    def save(self, src: Path, dst: Path, name: str) -> None:
        st = os.stat(src)                    # FileNotFoundError names the path
        tmp = dst.with_name(f".{dst.name}.partial")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if st.st_size <= SYNC_LIMIT:
            self._finish(src, tmp, dst, name, *_copy_and_hash(src, tmp), True, "copy")
            return
        if _try_reflink(src, tmp):
            self._submit(("hash", src, tmp, dst, name, _signature(st)))
        else:
            self._submit(("copy", src, tmp, dst, name, _signature(st)))

    def _submit(self, job: tuple) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="expman-artifacts",
                                            daemon=True)
            self._thread.start()
        self._jobs.append(job)
        self._ready.release()

    def _work(self) -> None:
        while True:
            self._ready.acquire()
            job = self._jobs.popleft()
            if job is None:
                return
            how, src, tmp, dst, name, before = job
            try:
                if how == "hash":
                    size, sha = _hash(tmp)
                    consistent = True
                else:
                    size, sha = _copy_and_hash(src, tmp)
                    consistent = _signature(os.stat(src)) == before
                self._finish(src, tmp, dst, name, size, sha, consistent, how)
            except Exception as e:      # reported in events and by close()
                self.failures.append(f"{name}: {e}")
                try:
                    self._emit({"kind": "artifact_error", "name": name, "source": str(src),
                                "error": repr(e), "time": time.time()})
                except Exception:
                    pass

    def _finish(self, src: Path, tmp: Path, dst: Path, name: str, size: int, sha: str,
                consistent: bool, how: str) -> None:
        os.replace(tmp, dst)
        event = {"kind": "artifact", "name": name, "path": f"artifacts/{name}",
                 "source": str(src), "size": size, "sha256": sha, "method": how,
                 "consistent": consistent, "time": time.time()}
        self._emit(event)
        if not consistent:
            self._emit({"kind": "message", "level": "warning", "time": time.time(),
                        "msg": f"artifact {name!r} changed while it was being copied; "
                               "the stored copy may mix old and new content"})

    def close(self) -> None:
        """Wait for every pending copy."""
        if self._thread is not None:
            self._jobs.append(None)
            self._ready.release()
            self._thread.join()
            self._thread = None
