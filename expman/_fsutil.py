"""Small filesystem helpers: safe names and atomic JSON replacement."""

from __future__ import annotations

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
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
    try:
        with open(tmp, mode, **text) as f:
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


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        import orjson
        return orjson.loads(f.read())
