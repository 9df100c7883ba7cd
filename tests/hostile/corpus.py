"""Hostile metrics files: one builder per repro of issue 15, built from the format's rules.

Each builder returns the bytes of a ``metrics.bin``; ``CORPUS`` names them all.
``tests/test_hostile.py`` holds a test per repro; ``tests/test_fuzz.py`` seeds its
structural mutations from here. ``python tests/hostile/corpus.py DIR`` writes
every case as ``DIR/<name>.bin``, to point other tools at (``expman verify``).
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Callable

HEADER = b"EXPMANMB" + struct.pack("<II", 1, 0)


def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63) if v >= 0 else ((-v - 1) << 1) | 1


def key(kid: int, name: bytes | str) -> bytes:
    name = name.encode() if isinstance(name, str) else name
    return varint(kid << 1 | 1) + varint(len(name)) + name


def row(step: int, t_us: int, points: list[tuple[int, float]]) -> bytes:
    """A row with its ids; step and t_us are deltas from the previous row."""
    out = varint(len(points) << 2) + varint(zigzag(step)) + varint(zigzag(t_us))
    for kid, value in points:
        out += varint(kid) + struct.pack("<d", value)
    return out


def same_row(step: int, t_us: int, values: list[float]) -> bytes:
    out = varint(len(values) << 2 | 2) + varint(zigzag(step)) + varint(zigzag(t_us))
    return out + b"".join(struct.pack("<d", v) for v in values)


def frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return (length + struct.pack("<I", zlib.crc32(length)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


def metrics(*payloads: bytes) -> bytes:
    return HEADER + b"".join(frame(p) for p in payloads)


T0 = 1_700_000_000_000_000          # a plausible time in microseconds

CORPUS: dict[str, Callable[[], bytes]] = {}


def case(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    CORPUS[fn.__name__] = fn
    return fn


# ---- item 1 and 11: key ids near and past 2**32 ------------------------------------------

@case
def key_id_ffffffff() -> bytes:
    """51 bytes; `kid + 1` wrapped to 0 and counts[kid] wrote far past a small buffer."""
    return metrics(key(0xFFFFFFFF, "x") + row(0, T0, [(0xFFFFFFFF, 1.5)]))


@case
def key_ids_2_28_to_2_32() -> bytes:
    """Ids that made the decoder allocate in proportion to the id (2 GiB, 8 GiB)."""
    ids = [1 << 28, 1 << 31, 0xFFFFFFFE]
    return metrics(b"".join(key(k, f"k{k}") for k in ids)
                   + row(7, T0, [(k, float(i)) for i, k in enumerate(ids)]))


@case
def key_id_2_32() -> bytes:
    """An id that does not fit the u32 rows carry (OverflowError before)."""
    return metrics(key(0, "ok") + row(0, T0, [(0, 1.0)]),
                   key(1 << 32, "big") + row(1, T0, [(0, 2.0)]))


# ---- item 2: one name, two ids (or one id, two names) ------------------------------------

@case
def same_name_two_ids() -> bytes:
    """Overwriting result[name] freed the first id's arrays, then the fill loop wrote into them."""
    return metrics(key(0, "loss") + key(1, "loss") + row(0, T0, [(0, 1.0), (1, 2.0)]))


@case
def two_invalid_utf8_names() -> bytes:
    """Both decoded to U+FFFD: the same use-after-free from bytes a writer never emits."""
    return metrics(key(0, b"\xff") + key(1, b"\xfe") + row(0, T0, [(0, 1.0), (1, 2.0)]))


@case
def one_id_two_names() -> bytes:
    return metrics(key(0, "a") + row(0, T0, [(0, 1.0)]), key(0, "b") + row(1, T0, [(0, 2.0)]))


@case
def same_definition_twice() -> bytes:
    """An identical repeat is harmless (not a conflict)."""
    return metrics(key(0, "a") + row(0, T0, [(0, 1.0)]), key(0, "a") + row(1, T0, [(0, 2.0)]))


@case
def valid_frame_then_conflict_then_valid() -> bytes:
    """The conflicting frame is corrupt; salvage reads the frames on both sides."""
    return metrics(key(0, "a") + row(0, T0, [(0, 1.0)]),
                   key(1, "a") + row(1, T0, [(1, 9.0)]),
                   row(2, T0, [(0, 3.0)]))


# ---- item 10: the torn-tail scan -------------------------------------------------------

def _headers_every_8_bytes(size: int, end_exactly: bool) -> bytes:
    """After one good frame, a CRC-valid length header every 8 bytes whose payload
    runs (almost) to the end: each one made the old scan checksum O(n) bytes."""
    head = metrics(key(0, "a") + row(0, T0, [(0, 1.0)]))
    units = max(1, (size - len(head)) // 8)
    n = len(head) + 8 * units + 12
    out = bytearray(head)
    for u in range(units):
        pos = len(head) + 8 * u
        length = n - pos - 12 - (0 if end_exactly else 8)
        lb = struct.pack("<I", max(length, 0))
        out += lb + struct.pack("<I", zlib.crc32(lb))
    out += b"\x01" * (n - len(out))
    return bytes(out)


@case
def torn_tail_headers_every_8_bytes() -> bytes:
    return _headers_every_8_bytes(1 << 20, end_exactly=True)


@case
def corrupt_headers_every_8_bytes() -> bytes:
    return _headers_every_8_bytes(1 << 20, end_exactly=False)


# ---- item 16 and other shapes a writer never makes ------------------------------------------

@case
def step_and_time_deltas_overflow() -> bytes:
    """Deltas that overflow int64: the format adds modulo 2**64 (no signed overflow)."""
    big = (1 << 63) - 1
    return metrics(key(0, "a") + row(big, big, [(0, 1.0)]) + row(big, big, [(0, 2.0)])
                   + same_row(-(1 << 63), 5, [3.0]))


@case
def varint_past_64_bits() -> bytes:
    return metrics(key(0, "a") + b"\x80" * 9 + b"\x7f" + varint(0) + varint(0))


@case
def huge_point_count() -> bytes:
    """A row announcing 2**60 points in a few bytes."""
    return metrics(key(0, "a") + varint((1 << 60) << 2) + varint(0) + varint(0)
                   + varint(0) + struct.pack("<d", 1.0))


@case
def same_keys_row_first() -> bytes:
    return metrics(key(0, "a") + same_row(0, T0, [1.0]))


@case
def name_runs_past_frame() -> bytes:
    return metrics(varint(1) + varint(1000) + b"abc")


@case
def empty_name() -> bytes:
    return metrics(key(0, b"") + row(0, T0, [(0, 1.0)]))


@case
def row_before_its_key_in_another_frame() -> bytes:
    """An id used before any definition: counted as unknown, never guessed."""
    return metrics(row(0, T0, [(5, 1.0)]), key(5, "late") + row(1, T0, [(5, 2.0)]))


@case
def many_keys() -> bytes:
    """20,000 definitions: memory in proportion to the file, not to anything else."""
    return metrics(b"".join(key(i * 7919, f"m{i}") for i in range(20_000))
                   + row(0, T0, [(i * 7919, float(i)) for i in range(0, 20_000, 1000)]))


@case
def zero_filled_tail() -> bytes:
    return metrics(key(0, "a") + row(0, T0, [(0, 1.0)])) + bytes(4096)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tests/hostile/corpus.py DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, build in CORPUS.items():
        (out / f"{name}.bin").write_bytes(build())
    print(f"wrote {len(CORPUS)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
