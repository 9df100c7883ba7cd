"""Small filesystem helpers: safe names and atomic JSON replacement."""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from expman.errors import ExpmanTypeError, ExpmanValueError, UnsafePathError

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


# O_NONBLOCK: opening a FIFO planted in a run folder must not wait for a writer;
# it is cleared again once the file is known to be regular
_OPEN_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _refuse_link(path: Path | str) -> None:
    """Raise UnsafePathError if path is a symlink or (Windows) another reparse point."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    reparse = getattr(st, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)
    if stat.S_ISLNK(st.st_mode) or reparse:
        raise UnsafePathError(errno.ELOOP, "refusing to open a symlink in a run folder (expman "
                              "never writes through a link)", str(path))


def open_nofollow(path: Path | str, flags: int, mode: int = 0o644) -> int:
    """os.open that never follows a symlink at ``path`` and only opens regular files.

    POSIX: O_NOFOLLOW does it atomically. Windows has no O_NOFOLLOW: a reparse
    point at the path is refused first (lstat), then the file is opened.
    A link or a non-regular file (a FIFO, a device) raises UnsafePathError naming it.
    """
    return _open_regular(path, flags, mode)[0]


def _open_regular(path: Path | str, flags: int, mode: int = 0o644) -> tuple[int, os.stat_result]:
    """open_nofollow, also returning the fstat it checked (a reader needs the size)."""
    if sys.platform == "win32":
        _refuse_link(path)
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) or (
                e.errno not in (errno.ENOENT, errno.EEXIST) and os.path.islink(path)):
            _refuse_link(path)
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(errno.EINVAL, "refusing to open a run file that is not a regular "
                              "file (a FIFO or a device)", str(path))
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd, st


def read_json_nofollow(path: Path | str) -> Any:
    """read_json for a file in a run folder that expman will write again: never
    through a link, never from a FIFO (UnsafePathError naming the path)."""
    import orjson
    with open(open_nofollow(path, os.O_RDONLY), "rb") as f:
        return orjson.loads(f.read())


def create_exclusive(path: Path | str, mode: int = 0o644) -> int:
    """A new file opened for writing: O_CREAT|O_EXCL|O_NOFOLLOW. A leftover at
    ``path`` (a stale temp file, or a planted symlink) is unlinked (which removes
    a link, never its target) and the create retried once."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return open_nofollow(path, flags, mode)
    except FileExistsError:
        pass
    except UnsafePathError:     # Windows: the lstat check saw a link before O_EXCL did
        if not os.path.lexists(path):
            raise
    os.unlink(path)
    return open_nofollow(path, flags, mode)


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write a temp file beside path, fsync it, os.replace it over path: never half a file.

    The temp file is created exclusively without following links; os.replace
    replaces a link at ``path`` itself, never its target."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    text = "b" not in mode
    try:
        with open(create_exclusive(tmp), mode, encoding="utf-8" if text else None,
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


def read_json(path: Path | str) -> Any:
    """A JSON metadata file (regular, bounded in size; ValueError when it is not).
    One open, one fstat, one read: a listing reads two per run."""
    return parse_json(read_regular(path, limit=MAX_JSON_BYTES), path)


def read_json_object(path: Path | str) -> dict[str, Any]:
    """read_json of a file that must hold an object (run.json, params.json)."""
    return parse_json_object(read_regular(path, limit=MAX_JSON_BYTES), path)


def parse_json(data: bytes, path: Path | str) -> Any:
    """A metadata file's bytes as JSON, or CorruptRunError naming the file."""
    import orjson

    from expman.errors import CorruptRunError
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CorruptRunError(f"{path}: not valid JSON ({e})") from None


def parse_json_object(data: bytes, path: Path | str) -> dict[str, Any]:
    """parse_json of a file that must hold an object: a list or a number is damage."""
    from expman.errors import CorruptRunError
    doc = parse_json(data, path)
    if not isinstance(doc, dict):
        raise CorruptRunError(f"{path}: not a JSON object")
    return doc


def regular_stat(path: Path) -> os.stat_result:
    """lstat of a regular file; CorruptRunError for a link, FIFO, device or folder
    planted where a run file belongs (reading one could hang or never end)."""
    import stat as _stat

    from expman.errors import CorruptRunError
    st = os.lstat(path)
    if not _stat.S_ISREG(st.st_mode):
        raise CorruptRunError(f"{path}: not a regular file; expman reads only regular files")
    return st


def read_regular(path: Path | str, offset: int = 0, limit: int | None = None) -> bytes:
    """The bytes of a regular file (see read_regular_stat)."""
    return read_regular_stat(path, offset, limit)[0]


def read_regular_stat(path: Path | str, offset: int = 0, limit: int | None = None
                      ) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file from offset to its size when opened: never a
    FIFO (which would block), a device (which never ends) or a symlink. Opened by
    open_nofollow, the same guard the writer uses; a reader calls such a file
    damage (CorruptRunError), not an unsafe write. ``limit``: a file larger than
    this many bytes is damage too (a crafted metadata file is not read whole).
    Also returns the fstat of the file read (before reading: a cache keyed on it
    errs towards reading again)."""
    from expman.errors import CorruptRunError
    try:
        fd, st = _open_regular(path, os.O_RDONLY)
    except UnsafePathError:
        raise CorruptRunError(f"{path}: not a regular file (a link, a folder, a FIFO or a device); "
                              "expman reads only regular files") from None
    try:
        if limit is not None and st.st_size > limit:
            raise CorruptRunError(f"{path}: larger than {limit >> 20} MiB")
        want = max(0, st.st_size - offset)
        if offset:
            os.lseek(fd, offset, os.SEEK_SET)
        # one read into one buffer when the OS allows it (no copy to join); a
        # short read (another system's limit, a file cut meanwhile) goes on in chunks
        first = os.read(fd, want) if want else b""
        if len(first) == want or not first:
            return first, st
        chunks, got = [first], len(first)
        while got < want:
            chunk = os.read(fd, min(want - got, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, read in 1 MiB chunks (never a link)."""
    import hashlib
    h = hashlib.sha256()
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
