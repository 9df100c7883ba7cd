"""Small filesystem helpers: safe names and atomic JSON replacement."""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from expman.errors import ExpmanTypeError, ExpmanValueError

# Reserved on Windows whatever the extension; refused everywhere so a run folder
# made on Linux can be copied to Windows.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')


def check_name(kind: str, value: object) -> str:
    """Return value if it is a safe single path component, else raise naming it."""
    if not isinstance(value, str):
        raise ExpmanTypeError(f"{kind} must be a str, got {type(value).__name__} ({value!r})")
    if not value or value.strip() != value or value in (".", ".."):
        raise ExpmanValueError(f"{kind} {value!r} is not a usable folder name")
    bad = _BAD_CHARS.search(value)
    if bad:
        raise ExpmanValueError(
            f"{kind} {value!r} contains {bad.group()!r}; names are one folder level, "
            "without separators, NUL, control or Windows-reserved characters")
    if value.split(".")[0].upper() in _WINDOWS_RESERVED or value.endswith("."):
        raise ExpmanValueError(f"{kind} {value!r} is reserved on Windows")
    return value


def check_relative(kind: str, value: str) -> str:
    """A relative path of safe components ('ckpt/model.pt'), normalised to '/'."""
    if not isinstance(value, str):
        raise ExpmanTypeError(f"{kind} must be a str, got {type(value).__name__} ({value!r})")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ExpmanValueError(f"{kind} {value!r} must be relative to the artifacts folder")
    for part in parts:
        check_name(kind, part)
    return "/".join(parts)


def inside(root: Path, path: Path) -> bool:
    """True if path (resolved) lies within root (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write a temp file beside path, fsync it, os.replace it over path: never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    text = "b" not in mode
    try:
        with open(tmp, mode, encoding="utf-8" if text else None,
                  newline="\n" if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Replace path with JSON atomically (see atomic_open)."""
    import orjson           # imported where used: `import expman` stays fast
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    with atomic_open(path) as f:
        f.write(payload)


def _replace(tmp: Path, path: Path) -> None:
    """os.replace; on Windows retried briefly, since a reader holding the file open
    makes it fail with PermissionError (POSIX has no such window)."""
    for attempt in range(20):
        try:
            os.replace(tmp, path)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == 19:
                raise
            time.sleep(0.005 * (attempt + 1))


MAX_JSON_BYTES = 64 << 20     # run.json / params.json larger than this are damage, not data


def read_json(path: Path) -> Any:
    """A JSON metadata file (regular, bounded in size; ValueError when it is not)."""
    import orjson

    from expman.errors import CorruptRunError
    if regular_stat(path).st_size > MAX_JSON_BYTES:
        raise CorruptRunError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return orjson.loads(read_regular(path))
    except orjson.JSONDecodeError as e:
        raise CorruptRunError(f"{path}: not valid JSON ({e})") from None


O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


def regular_stat(path: Path) -> os.stat_result:
    """lstat of a regular file; CorruptRunError for a link, FIFO, device or folder
    planted where a run file belongs (reading one could hang or never end)."""
    import stat as _stat

    from expman.errors import CorruptRunError
    st = os.lstat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise CorruptRunError(f"{path}: not a regular file; expman reads only regular files")
    return st


def read_regular(path: Path, offset: int = 0) -> bytes:
    """The bytes of a regular file from offset to its size when opened: never a
    FIFO (which would block), a device (which never ends) or a symlink."""
    import stat as _stat

    from expman.errors import CorruptRunError
    if sys.platform == "win32":
        regular_stat(path)       # no O_NOFOLLOW: refuse links and reparse points first
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_BINARY)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptRunError(
                f"{path}: a symlink; expman never follows links inside a run folder") from None
        raise
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            raise CorruptRunError(f"{path}: not a regular file; expman reads only regular files")
        want = max(0, st.st_size - offset)
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        chunks, got = [], 0
        while got < want:
            chunk = os.read(fd, min(want - got, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, read in 1 MiB chunks (never a link)."""
    import hashlib
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_BINARY)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
