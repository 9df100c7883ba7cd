"""The metrics format's executable specification: a plain-Python reader.

Slow and simple on purpose; the tests check the compiled reader against it.
Returns ``{name: [(step, time_seconds, value), ...]}`` and the count of
bytes in a torn last frame. Raises ValueError on damage before the tail, and
on a key definition the format calls corrupt: an id >= 2**32, a name that is
empty or not UTF-8, an id bound to another name, a name bound to another id.
"""

import struct
import zlib


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if value >= 2**64:
                raise ValueError(f"varint longer than 64 bits at {i}")
            return value, i
        if shift >= 70:
            raise ValueError(f"varint longer than 10 bytes at {i}")


def unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def wrap64(v: int) -> int:
    """Steps and times add modulo 2**64, as signed 64-bit integers."""
    return (v + 2**63) % 2**64 - 2**63


def define(keys: dict[int, str], kid: int, name: str, pos: int) -> None:
    """Bind id -> name; the same pair again is fine, any other clash is corrupt."""
    if kid >= 2**32 or not name or keys.get(kid, name) != name or (
            kid not in keys and name in keys.values()):
        raise ValueError(f"bad key definition {kid} -> {name!r} in frame at {pos}")
    keys[kid] = name


def read_metrics(data: bytes) -> tuple[dict[str, list[tuple[int, float, float]]], int]:
    if data[:8] != b"EXPMANMB" or struct.unpack_from("<I", data, 8)[0] != 1:
        raise ValueError("not an expman metrics file, version 1")
    keys: dict[int, str]
    series: dict[str, list[tuple[int, float, float]]]
    keys, series, pos = {}, {}, 16
    while pos < len(data):
        if len(data) - pos < 12:
            return series, len(data) - pos                # torn header
        length, len_crc = struct.unpack_from("<II", data, pos)
        if zlib.crc32(data[pos:pos + 4]) != len_crc:
            raise ValueError(f"bad frame header at {pos}")
        end = pos + 8 + length
        if end + 4 > len(data):
            return series, len(data) - pos                # torn payload
        payload = data[pos + 8:end]
        if zlib.crc32(payload) != struct.unpack_from("<I", data, end)[0]:
            raise ValueError(f"bad frame checksum at {pos}")
        ids: list[int] | None
        i, step, t_us, ids = 0, 0, 0, None                # deltas restart per frame
        while i < len(payload):
            h, i = read_varint(payload, i)
            if h & 1:                                     # key definition
                n, i = read_varint(payload, i)
                if i + n > len(payload):
                    raise ValueError(f"key name runs past its frame at {pos}")
                define(keys, h >> 1, payload[i:i + n].decode(), pos)
                i += n
                continue
            n, same = h >> 2, h & 3 == 2                  # a row; same: previous row's ids
            if same and (ids is None or len(ids) != n):
                raise ValueError(f"row repeats missing ids in frame at {pos}")
            d, i = read_varint(payload, i)
            step = wrap64(step + unzigzag(d))
            d, i = read_varint(payload, i)
            t_us = wrap64(t_us + unzigzag(d))
            row_ids = []
            for j in range(n):
                if same:
                    kid = ids[j]  # type: ignore[index]  # not None: checked above
                else:
                    kid, i = read_varint(payload, i)
                (value,) = struct.unpack_from("<d", payload, i)
                i += 8
                row_ids.append(kid)
                series.setdefault(keys[kid], []).append((step, t_us / 1e6, value))
            ids = row_ids
        pos = end + 4
    return series, 0
