"""The one guarded way to touch run files, and safe names.

Every open of a file in a run folder, read or write, local or a synced
target, goes through here (tests/test_hostile.py scans the package for any
other): no symlink is followed (``open_under`` also refuses one in a folder
below the base), only regular files are opened (``O_NONBLOCK`` then ``fstat``:
a FIFO never blocks, a device is refused), metadata is bounded in size and
JSON nesting depth, and a read holds only the bytes the file has on disk (a
sparse file's holes are never materialised). Windows has no ``O_NOFOLLOW`` or
``dir_fd``: there each component is checked with ``lstat`` first.
"""

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
# Bidirectional controls make a name display as another ("run\u202egpj.exe")
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")


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
    bidi = _BIDI.search(value)
    if bidi:
        raise ExpmanValueError(
            f"{kind} {value!r} contains the bidirectional control character "
            f"U+{ord(bidi.group()):04X}, which makes a name display as another; remove it")
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
# ---- opening: no link followed, regular files only --------------------------------------------

# O_NONBLOCK: opening a FIFO planted in a run folder must not wait for a writer;
# it is cleared again once the file is known to be regular
_OPEN_FLAGS = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NONBLOCK", 0))
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_CLOEXEC", 0))
# Folders opened relative to a folder descriptor (POSIX): a link anywhere below the
# base is refused by the kernel, with no window between a check and the open.
# Elsewhere (Windows) each component is lstat-checked before a path-based open.
_BY_DIR_FD = (hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
              and os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd
              and os.mkdir in os.supports_dir_fd and os.unlink in os.supports_dir_fd)


def _is_link(st: os.stat_result) -> bool:
    """A symlink, or (Windows) another reparse point such as a junction."""
    reparse = getattr(st, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)
    return stat.S_ISLNK(st.st_mode) or bool(reparse)


def _refuse_link(path: Path | str, dir_fd: int | None = None) -> None:
    """Raise UnsafePathError if path is a symlink or (Windows) another reparse point."""
    try:
        st = os.lstat(path, dir_fd=dir_fd) if dir_fd is not None else os.lstat(path)
    except FileNotFoundError:
        return
    if _is_link(st):
        raise UnsafePathError(errno.ELOOP, "refusing to open a symlink in a run folder (expman "
                              "never writes through a link)", str(path))


def open_nofollow(path: Path | str, flags: int, mode: int = 0o644) -> int:
    """os.open that never follows a symlink at ``path`` and only opens regular files.

    POSIX: O_NOFOLLOW does it atomically. Windows has no O_NOFOLLOW: a reparse
    point at the path is refused first (lstat), then the file is opened.
    A link or a non-regular file (a FIFO, a device) raises UnsafePathError naming it.
    """
    return open_regular(path, flags, mode)[0]


def open_regular(path: Path | str, flags: int, mode: int = 0o644, dir_fd: int | None = None,
                 shown: Path | str | None = None) -> tuple[int, os.stat_result]:
    """open_nofollow, also returning the fstat it checked (a reader needs the size).
    ``dir_fd``: ``path`` is a name in that folder; ``shown`` is what errors name."""
    shown = path if shown is None else shown
    if sys.platform == "win32":
        _refuse_link(path)
    try:
        fd = (os.open(path, flags | _OPEN_FLAGS, mode, dir_fd=dir_fd) if dir_fd is not None
              else os.open(path, flags | _OPEN_FLAGS, mode))
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK) or (
                e.errno not in (errno.ENOENT, errno.EEXIST) and dir_fd is None
                and os.path.islink(path)):
            _refuse_link(path, dir_fd)
            raise UnsafePathError(e.errno, "refusing to open a symlink in a run folder",
                                  str(shown)) from None
        raise
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(errno.EINVAL, "refusing to open a run file that is not a regular "
                              "file (a FIFO or a device)", str(shown))
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd, st


def _parts(rel: str | os.PathLike[str]) -> list[str]:
    """The components of a path relative to a base; '', '.', '..' and absolute refused."""
    text = os.fspath(rel).replace("\\", "/")
    parts = text.split("/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or any(
            p in ("", ".", "..") or "\0" in p for p in parts):
        raise UnsafePathError(errno.EINVAL, "not a path inside the run folder", text)
    return parts


def _open_dir_under(base: Path | str, parts: list[str], make_dirs: bool) -> int | None:
    """A descriptor of ``base/parts...``, never through a link below ``base`` (the
    base itself is the caller's choice and may be one). ``make_dirs`` creates what
    is missing. Without dir_fd support (Windows): None, after lstat-checking
    (and creating) each component."""
    here = Path(os.fspath(base))
    if make_dirs:
        os.makedirs(here, exist_ok=True)       # the base is the caller's: made as it is
    if not _BY_DIR_FD:
        for part in parts:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if not make_dirs:
                    raise
                try:
                    os.mkdir(here)
                except FileExistsError:
                    pass
                st = os.lstat(here)
            if _is_link(st) or not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(errno.ELOOP, "refusing a folder that is a link (or not a "
                                      "folder) inside a run tree", str(here))
        return None
    fd = os.open(here, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts:
            here = here / part
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make_dirs:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise UnsafePathError(e.errno, "refusing a folder that is a link (or not a "
                                          "folder) inside a run tree", str(here)) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_under(base: Path | str, rel: str | os.PathLike[str], flags: int, mode: int = 0o644,
               make_dirs: bool = False) -> int:
    """os.open of ``base/rel`` through no link at all below ``base`` (a folder or the
    file), and only of a regular file (UnsafePathError naming it otherwise).
    ``make_dirs``: create the missing folders of ``rel`` (for writing)."""
    return open_under_stat(base, rel, flags, mode, make_dirs)[0]


def open_under_stat(base: Path | str, rel: str | os.PathLike[str], flags: int, mode: int = 0o644,
                    make_dirs: bool = False) -> tuple[int, os.stat_result]:
    """open_under, also returning the fstat it checked."""
    parts = _parts(rel)
    shown = Path(os.fspath(base), *parts)
    dfd = _open_dir_under(base, parts[:-1], make_dirs)
    if dfd is None:
        return open_regular(shown, flags, mode)
    try:
        return open_regular(parts[-1], flags, mode, dir_fd=dfd, shown=shown)
    finally:
        os.close(dfd)


def lstat_under(base: Path | str, rel: str | os.PathLike[str]) -> os.stat_result:
    """os.lstat of ``base/rel`` through no link below ``base`` (UnsafePathError)."""
    parts = _parts(rel)
    dfd = _open_dir_under(base, parts[:-1], False)
    if dfd is None:
        return os.lstat(Path(os.fspath(base), *parts))
    try:
        return os.lstat(parts[-1], dir_fd=dfd)
    finally:
        os.close(dfd)


def read_json_nofollow(path: Path | str) -> Any:
    """read_json for a file in a run folder that expman will write again: never
    through a link, never from a FIFO (UnsafePathError naming the path)."""
    fd, st = open_regular(path, os.O_RDONLY)
    try:
        if st.st_size > MAX_JSON_BYTES:
            raise UnsafePathError(errno.EFBIG, f"larger than {MAX_JSON_BYTES >> 20} MiB", str(path))
        return parse_json(_read_fd(fd, 0, st), path)
    finally:
        os.close(fd)


def create_exclusive(path: Path | str, mode: int = 0o644, dir_fd: int | None = None) -> int:
    """A new file opened for writing: O_CREAT|O_EXCL|O_NOFOLLOW. A leftover at
    ``path`` (a stale temp file, or a planted symlink) is unlinked (which removes
    a link, never its target) and the create retried once."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return open_regular(path, flags, mode, dir_fd)[0]
    except FileExistsError:
        pass
    except UnsafePathError:     # Windows: the lstat check saw a link before O_EXCL did
        if not os.path.lexists(path):
            raise
    if dir_fd is not None:
        os.unlink(path, dir_fd=dir_fd)
    else:
        os.unlink(path)
    return open_regular(path, flags, mode, dir_fd)[0]


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write a temp file beside path, fsync it, os.replace it over path: never half a file.

    The temp file is created exclusively without following links; os.replace
    replaces a link at ``path`` itself, never its target."""
    path = Path(os.fspath(path))
    with _atomic(path.parent, [], path.name, mode, False) as f:
        yield f


@contextmanager
def atomic_open_under(base: Path | str, rel: str | os.PathLike[str], mode: str = "wb",
                      ) -> Iterator[IO[Any]]:
    """atomic_open of ``base/rel``, its folders made as needed and never through a
    link below ``base`` (a synced target another user can write into)."""
    parts = _parts(rel)
    with _atomic(Path(os.fspath(base)), parts[:-1], parts[-1], mode, True) as f:
        yield f


@contextmanager
def _atomic(base: Path, folders: list[str], name: str, mode: str,
            make_dirs: bool) -> Iterator[IO[Any]]:
    tmp = f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    text = "b" not in mode
    dfd = _open_dir_under(base, folders, make_dirs)
    where = base.joinpath(*folders)
    try:
        fd = create_exclusive(tmp if dfd is not None else where / tmp, dir_fd=dfd)
        try:
            with open(fd, mode, encoding="utf-8" if text else None,
                      newline="\n" if text else None) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if dfd is not None:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                _replace(where / tmp, where / name)
        except BaseException:
            try:
                if dfd is not None:
                    os.unlink(tmp, dir_fd=dfd)
                else:
                    os.unlink(where / tmp)
            except OSError:
                pass
            raise
    finally:
        if dfd is not None:
            os.close(dfd)


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


# ---- reading: bounded, and only the bytes on disk ---------------------------------------------

MAX_JSON_BYTES = 64 << 20     # run.json / params.json larger than this are damage, not data
# Deeper than this is damage: orjson cannot write it back (the dashboard's answer),
# and recursive readers (flattening, the TensorBoard export) hit RecursionError.
MAX_JSON_DEPTH = 64


def read_json(path: Path | str) -> Any:
    """A JSON metadata file (regular, bounded in size; ValueError when it is not).
    One open, one fstat, one read: a listing reads two per run."""
    return parse_json(read_regular(path, limit=MAX_JSON_BYTES), path)


def read_json_object(path: Path | str) -> dict[str, Any]:
    """read_json of a file that must hold an object (run.json, params.json)."""
    return parse_json_object(read_regular(path, limit=MAX_JSON_BYTES), path)


def parse_json(data: bytes, path: Path | str) -> Any:
    """A metadata file's bytes as JSON, or CorruptRunError naming the file: also
    when it nests deeper than MAX_JSON_DEPTH (one rule for every reader)."""
    import orjson

    from expman.errors import CorruptRunError
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CorruptRunError(f"{path}: not valid JSON ({e})") from None
    if json_depth(doc, data) > MAX_JSON_DEPTH:
        raise CorruptRunError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def json_depth(doc: Any, data: bytes | None = None) -> int:
    """How deep objects and lists nest in ``doc`` (a scalar is 0), without recursion.
    ``data``, the text it was parsed from, lets a file with few brackets skip the walk."""
    if not isinstance(doc, (dict, list)):
        return 0
    if data is not None and data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return 1        # cannot nest past the limit: the exact figure is not needed
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return deepest


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
    from expman.errors import CorruptRunError
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
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
    Reading stops at the first hole of a sparse file (see _read_fd).
    Also returns the fstat of the file read (before reading: a cache keyed on it
    errs towards reading again)."""
    from expman.errors import CorruptRunError
    try:
        fd, st = open_regular(path, os.O_RDONLY)
    except UnsafePathError:
        raise CorruptRunError(f"{path}: not a regular file (a link, a folder, a FIFO or a device); "
                              "expman reads only regular files") from None
    try:
        if limit is not None and st.st_size > limit:
            raise CorruptRunError(f"{path}: larger than {limit >> 20} MiB")
        return _read_fd(fd, offset, st), st
    finally:
        os.close(fd)


READ_CHUNK = 16 << 20
_SEEK_HOLE = getattr(os, "SEEK_HOLE", None)


def _read_fd(fd: int, offset: int, st: os.stat_result) -> bytes:
    """Bytes ``offset`` to the end of an open regular file (``st``: its fstat),
    never holding more than the file has on disk: a sparse file claims any size
    on 4 KiB, and its holes read as zeros, which no run file holds (in
    metrics.bin, zeros to the end are a torn tail). Up to READ_CHUNK a file is
    read whole. Past it, reading stops at the first hole (SEEK_HOLE), and if the
    file still looks sparse (fewer blocks than half its size, or no st_blocks:
    Windows) it is read in chunks and reading stops at a chunk of nothing but
    zeros (a hole the OS does not report). An ordinary large file is one read:
    memory is its size, once."""
    size = st.st_size
    want = max(0, size - offset)
    chunked = False
    if want > READ_CHUNK:
        if _SEEK_HOLE is not None:
            try:
                want = max(0, min(size, os.lseek(fd, offset, _SEEK_HOLE)) - offset)
            except OSError:          # ENXIO (offset past the end), or no hole support
                pass
        blocks = getattr(st, "st_blocks", None)
        chunked = blocks is None or blocks * 512 < size // 2
    os.lseek(fd, offset, os.SEEK_SET)
    chunks, got = [], 0
    if not chunked:
        # one read into one buffer when the OS allows it (no copy to join); a
        # short read (another system's limit, a file cut meanwhile) goes on in chunks
        first = os.read(fd, want) if want else b""
        if len(first) == want or not first:
            return first
        chunks, got = [first], len(first)
    while got < want:
        chunk = os.read(fd, min(want - got, READ_CHUNK))
        if not chunk or (chunked and chunk.count(0) == len(chunk)):
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_under(base: Path | str, rel: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of ``base/rel`` (see open_under): no link below ``base``, a regular
    file, at most ``limit`` bytes (UnsafePathError naming it when larger)."""
    fd, st = open_under_stat(base, rel, os.O_RDONLY)
    try:
        if limit is not None and st.st_size > limit:
            raise UnsafePathError(errno.EFBIG, f"larger than {limit} bytes",
                                  str(Path(os.fspath(base), os.fspath(rel))))
        return _read_fd(fd, 0, st)
    finally:
        os.close(fd)


def read_range(fd: int, start: int, end: int) -> bytes:
    """Bytes [start, end) of an open file (fewer if it is shorter)."""
    os.lseek(fd, start, os.SEEK_SET)
    chunks, got = [], 0
    while got < end - start:
        chunk = os.read(fd, min(end - start - got, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, read in 1 MiB chunks (never a link)."""
    import hashlib
    h = hashlib.sha256()
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
