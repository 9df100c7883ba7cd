"""Hostile run folders and event files (issue 20): builders for the file layer's repros.

Each builder plants one crafted thing (a sparse file, a FIFO, a deep JSON, a
link) or returns the bytes of a crafted TensorBoard event file, built from the
formats' rules. ``tests/test_hostile.py`` holds one test per repro;
``tests/test_fuzz.py`` seeds the TensorBoard reader's fuzzing from ``TB_CORPUS``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Callable

from hostile import corpus


def sparse(path: Path, data: bytes, size: int) -> Path:
    """``data`` followed by a hole up to ``size``: gigabytes claimed, 4 KiB on disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(size)
    return path


def valid_metrics(points: int = 3) -> bytes:
    return corpus.metrics(corpus.key(0, "a")
                          + b"".join(corpus.row(1, 1, [(0, float(i))]) for i in range(points)))


def deep_json(depth: int, leaf: bytes = b"1") -> bytes:
    """``{"a": {"a": ... leaf ...}}``, ``depth`` objects deep."""
    return b'{"a":' * depth + leaf + b"}" * depth


def fifo(path: Path) -> Path:
    """A FIFO where a run file belongs: opening it for reading waits for a writer."""
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


# ---- TensorBoard event files (TFRecord framing, masked CRC-32C) -----------------------------

def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes, length: int | None = None) -> bytes:
    """One TFRecord: u64 length, masked CRC of it, payload, masked CRC of the payload."""
    head = struct.pack("<Q", len(payload) if length is None else length)
    return head + struct.pack("<I", masked_crc(head)) + payload + struct.pack(
        "<I", masked_crc(payload))


def event(step: int, values: list[bytes], wall_time: float = 1.7e9) -> bytes:
    """An Event proto: wall_time (1), step (2), summary (5) holding ``values``."""
    summary = b"".join(_field(1, v) for v in values)
    return (b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step & (2**64 - 1))
            + _field(5, summary))


def scalar(tag: str | bytes, value: float) -> bytes:
    """Summary.Value with simple_value (2: float32)."""
    t = tag.encode() if isinstance(tag, str) else tag
    return _field(1, t) + b"\x15" + struct.pack("<f", value)


def tensor_value(tag: str, dims: list[int], dtype: int = 1, content: bytes = b"",
                 plugin: str = "scalars") -> bytes:
    """Summary.Value(tag, metadata.plugin_data.plugin_name, tensor(dtype, shape, content))."""
    shape = b"".join(_field(2, b"\x08" + _varint(d)) for d in dims)
    tensor = b"\x08" + _varint(dtype) + _field(2, shape) + (_field(4, content) if content else b"")
    meta = _field(1, _field(1, plugin.encode()))
    return _field(1, tag.encode()) + _field(9, meta) + _field(8, tensor)


def image_value(tag: str, png: bytes) -> bytes:
    image = b"\x08\x01\x10\x01\x18\x03" + _field(4, png)
    return _field(1, tag.encode()) + _field(4, image)


def file_version() -> bytes:
    return record(b"\x09" + struct.pack("<d", 1.7e9) + _field(3, b"brain.Event:2"))


def _varint(v: int) -> bytes:
    return corpus.varint(v)


def _field(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478"
    "9c6360000002000100e221bc330000000049454e44ae426082")

TB_CORPUS: dict[str, Callable[[], bytes]] = {}


def tb_case(fn: Callable[[], bytes]) -> Callable[[], bytes]:
    TB_CORPUS[fn.__name__] = fn
    return fn


@tb_case
def tb_good() -> bytes:
    return file_version() + b"".join(record(event(i, [scalar("loss", i / 2)])) for i in range(4))


@tb_case
def tb_tensor_300m_elements() -> bytes:
    """60 bytes declaring a 300 M-element float tensor: 2.24 GiB from make_ndarray."""
    return file_version() + record(event(0, [tensor_value("t", [300_000_000])])) + \
        record(event(1, [scalar("loss", 1.0)]))


@tb_case
def tb_record_length_2_63() -> bytes:
    return tb_good() + record(b"", length=2**63)


@tb_case
def tb_bad_crc_mid_file() -> bytes:
    bad = bytearray(record(event(2, [scalar("loss", 9.0)])))
    bad[-1] ^= 0xFF
    return (file_version() + record(event(0, [scalar("loss", 0.0)])) + record(event(1, [scalar(
        "loss", 1.0)])) + bytes(bad) + record(event(3, [scalar("loss", 3.0)])))


@tb_case
def tb_negative_step() -> bytes:
    return (file_version() + record(event(0, [scalar("loss", 0.0)])) + record(event(-5, [scalar(
        "loss", 5.0)])) + record(event(2, [scalar("loss", 2.0)])))


@tb_case
def tb_empty_tag() -> bytes:
    return file_version() + record(event(0, [scalar("", 1.0), scalar("loss", 0.5)])) + \
        record(event(1, [scalar("loss", 1.5)]))


@tb_case
def tb_long_image_tag() -> bytes:
    return file_version() + record(event(0, [image_value("i" * 5000, PNG_1x1),
                                             scalar("loss", 0.5)])) + \
        record(event(1, [scalar("loss", 1.5)]))
