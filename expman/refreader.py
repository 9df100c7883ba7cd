"""The metrics format's executable specification: a plain-Python reader.

Slow and simple on purpose; the tests check the compiled reader against it.
Returns ``{name: [(step, time_seconds, value), ...]}`` and the count of
bytes in a torn last frame. Raises ValueError on damage before the tail.
"""

import struct
import zlib


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def unzigzag(v):
    return (v >> 1) ^ -(v & 1)


def read_metrics(data):
    if data[:8] != b"EXPMANMB" or struct.unpack_from("<I", data, 8)[0] != 1:
        raise ValueError("not an expman metrics file, version 1")
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
        i, step, t_us = 0, 0, 0                           # deltas restart per frame
        while i < len(payload):
            tag, i = payload[i], i + 1
            if tag == 1:                                  # key definition
                kid, i = read_varint(payload, i)
                n, i = read_varint(payload, i)
                keys[kid], i = payload[i:i + n].decode(), i + n
            elif tag == 2:                                # one row
                d, i = read_varint(payload, i)
                step += unzigzag(d)
                d, i = read_varint(payload, i)
                t_us += unzigzag(d)
                n, i = read_varint(payload, i)
                for _ in range(n):
                    kid, i = read_varint(payload, i)
                    (value,) = struct.unpack_from("<d", payload, i)
                    i += 8
                    series.setdefault(keys[kid], []).append((step, t_us / 1e6, value))
            else:
                raise ValueError(f"unknown record tag {tag} in frame at {pos}")
        pos = end + 4
    return series, 0
