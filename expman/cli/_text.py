"""Text output for the command line: numbers, tables, times, sizes, progress.

Everything printed from a run folder goes through ``out``, which escapes
control characters (ESC, CR, C1, bidi overrides): a crafted run name cannot
drive the terminal.
"""

from __future__ import annotations

import math
import re
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson

from expman.layout import jsonable


class CliError(Exception):
    """A failure to report as one line, exit code 1."""


# --digits: significant digits in tables: None (the default) the fewest from
# MIN_DIGITS up that keep a column's different values different, N exactly N,
# FULL the shortest exact form. Per call of ``main()`` (``rounding``), never left
# set for the next one.
FULL = "full"
MIN_DIGITS = 6
_DIGITS: ContextVar[int | str | None] = ContextVar("expman_cli_digits", default=None)


@contextmanager
def rounding(digits: int | str | None) -> Iterator[None]:
    """Tables print floats per ``digits`` (see above) inside this block."""
    token = _DIGITS.set(digits)
    try:
        yield
    finally:
        _DIGITS.reset(token)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float_text(v: float, digits: int | None) -> str:
    """v to ``digits`` significant digits (None: ``repr``, exact); a whole number
    below 2**53 as an int, NaN and infinities as nan/inf/-inf."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v) if digits is None else f"{v:.{digits}g}"


def _digits_for(values: Iterable[float]) -> int | None:
    """The digits a column of floats prints with: ``--digits`` if given (None for
    full), else the fewest from MIN_DIGITS up that tell its different values apart."""
    mode = _DIGITS.get()
    if mode == FULL:
        return None
    if isinstance(mode, int):
        return mode
    distinct = {v for v in values if math.isfinite(v)}
    for d in range(MIN_DIGITS, 17):
        if len({_float_text(v, d) for v in distinct}) == len(distinct):
            return d
    return None                  # 17 digits and repr both tell every float apart


def num(v: Any) -> str:
    """A number for a table cell or a ``key=value`` line: ints as they are; a float
    alone to 6 significant digits (``--digits N``: N; ``--digits full``: the
    shortest form that reads back exactly); None as ``-``."""
    if v is None:
        return "-"
    if not _is_number(v):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return _float_text(v, _digits_for([v]))


def num_columns(rows: Iterable[Iterable[Any]], by_row: bool = False) -> list[list[str]]:
    """Rows of cells as text, each column's floats printed with the fewest digits
    (from 6) that still tell that column's different values apart, so 0.30000000000000004
    prints 0.3 unless 0.3 is in the same column; other cells as ``num`` prints them.
    ``by_row``: the values compared are a row's (``compare``: one metric across runs)."""
    grid = [list(r) for r in rows]
    if by_row:
        width = max((len(r) for r in grid), default=0)
        cols = num_columns([[r[i] if i < len(r) else None for r in grid] for i in range(width)])
        return [[cols[i][j] for i in range(len(r))] for j, r in enumerate(grid)]
    ncols = max((len(r) for r in grid), default=0)
    digits = [_digits_for([r[i] for r in grid if i < len(r) and isinstance(r[i], float)])
              for i in range(ncols)]
    return [[_float_text(c, digits[i]) if isinstance(c, float) else num(c)
             for i, c in enumerate(r)] for r in grid]


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{count(n)} {word}{'' if n == 1 else 's'}"


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def clock(ts: float | None) -> str:
    if ts is None:
        return "--:--:--.---"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def duration(sec: float | None) -> str:
    if sec is None:
        return "-"
    if sec < 60:
        return f"{sec:.1f}s"
    m, s = divmod(int(sec), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def param_text(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def width(s: str) -> int:
    """Columns a string takes on a terminal: East Asian wide characters take two."""
    if s.isascii():
        return len(s)
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


def pad(s: str, w: int, right: bool = False) -> str:
    fill = " " * max(0, w - width(s))
    return fill + s if right else s + fill


def table(headers: list[str], rows: Iterable[Iterable[Any]], right: Iterable[int] = (),
          indent: str = "") -> str:
    """Plain-text columns separated by two spaces; ``right`` columns right-aligned."""
    cells = [[safe(str(c)) for c in r] for r in rows]
    widths = [max([width(h)] + [width(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = set(right)

    def line(r: list[str]) -> str:
        return indent + "  ".join(pad(c, w, i in right)
                                  for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(list(headers))] + [line(r) for r in cells])


def emit_json(obj: Any) -> None:
    out(orjson.dumps(jsonable(obj), option=orjson.OPT_INDENT_2).decode())


def emit_json_bytes(data: bytes) -> None:
    """JSON already encoded (UTF-8), printed as ``emit_json`` would print it but
    without decoding it when it holds nothing ``safe`` would change."""
    if (data.isascii() and b"\x7f" not in data and _UNSAFE_ASCII.search(data) is None
            and (sys.stdout.encoding or "").lower().replace("-", "") == "utf8"):
        sys.stdout.flush()
        sys.stdout.buffer.write(data + b"\n")
    else:
        out(data.decode())


_UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)]
           if c not in (0x0A, 0x09)}
_UNSAFE.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A),
                                           0x200E, 0x200F, 0x061C]})

_UNSAFE_ASCII = re.compile(rb"[\x00-\x08\x0b-\x1f]")    # (JSON escapes them anyway)


def safe(text: str) -> str:
    """text with terminal control characters (and bidi overrides) made visible."""
    return text.translate(_UNSAFE)


def out(text: str = "") -> None:
    sys.stdout.write(safe(text) + "\n")


def note(text: str) -> None:
    sys.stderr.write(f"expman: {safe(text)}\n")


class Progress:
    """``\\r``-updated progress on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, 0
        self.on = enabled and total > 0 and sys.stderr.isatty()
        self._last = 0.0
        self._width = 0

    def add(self, n: int, what: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.on and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            pct = 100 * self.done // max(self.total, 1)
            text = f"{self.label}: {pct:3d}% ({count(self.done)} of {count(self.total)}){what}"
            sys.stderr.write("\r" + text.ljust(self._width))
            sys.stderr.flush()
            self._width = len(text)

    def close(self) -> None:
        if self.on and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
