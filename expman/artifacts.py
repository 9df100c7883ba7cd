"""Copying artifacts into the run without blocking the training loop, and
checking them later.

The stored content is the file (or folder) as it was at the call:
- files up to ``SYNC_LIMIT`` bytes are copied during the call (milliseconds);
- larger files are first cloned copy-on-write where the filesystem can
  (Linux FICLONE: btrfs, XFS, ...), which is an instant snapshot, then hashed
  in the background;
- otherwise they are copied in the background and the source's size, mtime
  and inode are compared before and after: if the file changed during the
  copy, the artifact record says ``"consistent": false`` and a warning event
  is logged, so a torn snapshot is never passed off as a good one.
- a folder (``save_pretrained`` output, a checkpoint dir) is saved whole: its
  file list is taken at the call, the files are copied (in the background when
  they total more than ``SYNC_LIMIT``) into a temporary folder that is renamed
  into place when complete, and a manifest of per-file sizes and sha256 is
  written beside it.

Saving a name again keeps every version: ``name``, then ``name.v2``,
``name.v3``, ... (docs/format.md). Each event records the stored path.

Nothing is written through a symlink: temporary files are created with
O_CREAT|O_EXCL|O_NOFOLLOW, and a rename replaces a link, never its target.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections import deque
from pathlib import Path
from collections.abc import Callable
from typing import Any

from expman._fsutil import create_exclusive, open_nofollow
from expman.errors import ExpmanValueError
from expman.layout import ARTIFACTS_DIR, MANIFEST_SUFFIX

SYNC_LIMIT = 8 << 20
COPY_CHUNK_BYTES = 1 << 20

Signature = tuple[int, int, int]


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def version_name(name: str, version: int) -> str:
    """The stored name of a version: ``name`` for the first, ``name.vN`` after."""
    return name if version == 1 else f"{name}.v{version}"


def _partial(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.partial")


def _clear(path: Path) -> None:
    """Remove a leftover temp (file, link or folder) without following links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil
        shutil.rmtree(path)         # never descends into links
    else:
        os.unlink(path)             # a link: removes the link only


def _try_reflink(src: Path, fd_dst: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import fcntl
    FICLONE = 0x40049409
    try:
        with open(src, "rb") as fs:
            fcntl.ioctl(fd_dst, FICLONE, fs.fileno())
        return True
    except OSError:
        return False


def _copy_and_hash(src: Path, fd_dst: int) -> tuple[int, str]:
    """Copy src into the open fd, fsynced; (size, sha256). Always closes fd_dst."""
    import hashlib
    digest = hashlib.sha256()
    size = 0
    with open(fd_dst, "wb") as fd, open(src, "rb") as fs:
        while True:
            chunk = fs.read(COPY_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            fd.write(chunk)
            size += len(chunk)
        fd.flush()
        os.fsync(fd.fileno())
    return size, digest.hexdigest()


def _hash_fd(fd: int) -> tuple[int, str]:
    """(size, sha256) of an open file, read from its start (closes it)."""
    import hashlib
    digest = hashlib.sha256()
    size = 0
    with open(fd, "rb") as f:
        while True:
            chunk = f.read(COPY_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _snapshot_dir(src: Path) -> list[tuple[str, Path, Signature]]:
    """The files of a folder at the call: (relative path, source, signature).
    Links to files are saved as their content; links to folders are not entered."""
    files = []
    for top, dirs, names in os.walk(src, followlinks=False):
        dirs.sort()
        for n in sorted(names):
            p = Path(top) / n
            try:
                st = os.stat(p)
            except OSError:
                continue            # a dangling link
            if stat.S_ISREG(st.st_mode):
                files.append((p.relative_to(src).as_posix(), p, _signature(st)))
    return files


class ArtifactCopier:
    """Copies artifacts for one run; a background thread runs while copies are pending.

    The thread exits when the queue is empty, so an unclosed run is not kept
    alive by it (and can still be closed by the GC, from any thread).
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        # reentrant: a GC pass inside a locked block may run a finalizer that closes
        # a run in this thread; that must never deadlock on this lock
        self._lock = threading.RLock()
        self._jobs: deque[tuple[Any, ...]] = deque()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._reserved: set[Path] = set()
        self._root: Path | None = None
        self.failures: list[str] = []

    # ---- the call --------------------------------------------------------------------------
    def save(self, src: Path, root: Path, name: str) -> Path:
        """Store src (a file or a folder) as the next version of ``name`` under root
        (the run's artifacts folder); returns the stored path."""
        st = os.stat(src)                    # FileNotFoundError names the path
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISREG(st.st_mode):
            raise ExpmanValueError(f"save_artifact: {src} is neither a file nor a folder")
        files = _snapshot_dir(src) if is_dir else None
        self._root = root
        dst, version = self._reserve(root, name)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = _partial(dst)
            _clear(tmp)
            if files is not None:
                job: tuple[Any, ...] = ("dir", src, tmp, dst, name, version, files)
                if sum(f[2][0] for f in files) <= SYNC_LIMIT:
                    self._run(job)
                else:
                    self._submit(job)
                return dst
            fd = create_exclusive(tmp)
            if st.st_size <= SYNC_LIMIT:
                self._finish_file(src, tmp, dst, name, version,
                                  *_copy_and_hash(src, fd), True, "copy")
            elif _try_reflink(src, fd):
                os.fsync(fd)
                os.close(fd)        # the clone is the snapshot; it is hashed by reading tmp
                self._submit(("hash", src, tmp, dst, name, version, None, _signature(st)))
            else:
                self._submit(("copy", src, tmp, dst, name, version, fd, _signature(st)))
        except BaseException:
            with self._lock:
                self._reserved.discard(dst)
            raise
        return dst

    def _reserve(self, root: Path, name: str) -> tuple[Path, int]:
        """The first version of name whose stored path (and manifest) is free."""
        with self._lock:
            version = 1
            while True:
                dst = root / version_name(name, version)
                side = dst.with_name(dst.name + MANIFEST_SUFFIX)
                if (dst not in self._reserved and not os.path.lexists(dst)
                        and not os.path.lexists(side)):
                    self._reserved.add(dst)
                    return dst, version
                version += 1

    # ---- the background thread ---------------------------------------------------------------
    def _submit(self, job: tuple[Any, ...]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="expman-artifacts",
                                                daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    self._idle.notify_all()
                    return
                job = self._jobs.popleft()
            self._run(job)

    def _run(self, job: tuple[Any, ...]) -> None:
        how, src, tmp, dst, name, version = job[:6]
        try:
            if how == "dir":
                self._copy_dir(src, tmp, dst, name, version, job[6])
            elif how == "hash":
                size, sha = _hash_fd(open_nofollow(tmp, os.O_RDONLY))
                self._finish_file(src, tmp, dst, name, version, size, sha, True, how)
            else:
                size, sha = _copy_and_hash(src, job[6])
                consistent = _signature(os.stat(src)) == job[7]
                self._finish_file(src, tmp, dst, name, version, size, sha, consistent, how)
        except Exception as e:      # reported in events and by close()
            self.failures.append(f"{name}: {e}")
            try:
                self._emit({"kind": "artifact_error", "name": name, "source": str(src),
                            "error": repr(e), "time": time.time()})
            except Exception:
                pass

    def _copy_dir(self, src: Path, tmp: Path, dst: Path, name: str, version: int,
                  files: list[tuple[str, Path, Signature]]) -> None:
        import orjson
        os.mkdir(tmp)               # fails on anything planted there since _clear
        manifest = []
        consistent = True
        for rel, path, before in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            size, sha = _copy_and_hash(path, create_exclusive(target))
            try:
                consistent = consistent and _signature(os.stat(path)) == before
            except OSError:
                consistent = False
            manifest.append({"path": rel, "size": size, "sha256": sha})
        body = orjson.dumps({"files": manifest}, option=orjson.OPT_INDENT_2)
        side = dst.with_name(dst.name + MANIFEST_SUFFIX)
        side_tmp = _partial(side)
        with open(create_exclusive(side_tmp), "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        os.replace(side_tmp, side)
        import hashlib
        self._record({"kind": "artifact", "name": name, "type": "dir",
                      "path": self._rel(dst), "version": version, "source": str(src),
                      "files": len(manifest), "size": sum(m["size"] for m in manifest),
                      "manifest": self._rel(side), "sha256": hashlib.sha256(body).hexdigest(),
                      "method": "copy", "consistent": consistent, "time": time.time()})

    def _finish_file(self, src: Path, tmp: Path, dst: Path, name: str, version: int,
                     size: int, sha: str, consistent: bool, how: str) -> None:
        os.replace(tmp, dst)
        self._record({"kind": "artifact", "name": name, "type": "file", "path": self._rel(dst),
                      "version": version, "source": str(src), "size": size, "sha256": sha,
                      "method": how, "consistent": consistent, "time": time.time()})

    def _record(self, event: dict[str, Any]) -> None:
        self._emit(event)
        if not event["consistent"]:
            self._emit({"kind": "message", "level": "warning", "time": time.time(),
                        "msg": f"artifact {event['name']!r} changed while it was being copied; "
                               "the stored copy may mix old and new content"})

    def _rel(self, dst: Path) -> str:
        """``artifacts/...``: the stored path relative to the run folder, '/'-separated."""
        assert self._root is not None
        return f"{ARTIFACTS_DIR}/{dst.relative_to(self._root).as_posix()}"

    def close(self) -> None:
        """Wait for every pending copy. Called from the copier's own thread (a GC
        finalizer can run there), it returns at once: that thread is already
        working through the queue and never waits for itself."""
        with self._lock:
            while self._thread is not None and self._thread is not threading.current_thread():
                self._idle.wait()


__all__ = ["SYNC_LIMIT", "ArtifactCopier", "version_name"]
