"""The metrics format's executable specification: a plain-Python reader.

Slow and simple on purpose; the tests check the compiled reader against it.
``read_metrics`` returns ``{name: [(step, time_seconds, value), ...]}`` and the
count of bytes in a torn last frame. Raises ValueError on damage before the
tail, and on a key definition the format calls corrupt: an id >= 2**32, a name
that is empty or not UTF-8, an id bound to another name, a name bound to another id.

``read_history`` adds runs that branch (docs/format.md, Branches): a rank's
branches file cuts its stream into branches, a fork's run.json names the parent
whose main history (steps <= the fork step) comes first, and each branch
replaces the points at and after its ``from_step``.
"""

import json
import os
import struct
import zlib
from typing import Any, TypeGuard

from expman.layout import BRANCHES_FILE, MAX_LINEAGE, METRICS_FILE, RUN_FILE, rank_file


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
    rows, _frames, torn = read_rows(data)
    series: dict[str, list[tuple[int, float, float]]] = {}
    for _pos, name, step, t, value in rows:
        series.setdefault(name, []).append((step, t, value))
    return series, torn


def read_rows(data: bytes) -> tuple[list[tuple[int, str, int, float, float]], list[int], int]:
    """Every point as ``(frame offset, name, step, time, value)`` in file order, the
    offset of every intact frame plus the end of the last one, and the torn bytes."""
    if data[:8] != b"EXPMANMB" or struct.unpack_from("<I", data, 8)[0] != 1:
        raise ValueError("not an expman metrics file, version 1")
    keys: dict[int, str]
    rows: list[tuple[int, str, int, float, float]]
    keys, rows, pos, frames = {}, [], 16, []
    while pos < len(data):
        frames.append(pos)
        if len(data) - pos < 12:
            return rows, frames, len(data) - pos          # torn header
        length, len_crc = struct.unpack_from("<II", data, pos)
        if zlib.crc32(data[pos:pos + 4]) != len_crc:
            raise ValueError(f"bad frame header at {pos}")
        end = pos + 8 + length
        if end + 4 > len(data):
            return rows, frames, len(data) - pos          # torn payload
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
                rows.append((pos, keys[kid], step, t_us / 1e6, value))
            ids = row_ids
        pos = end + 4
    frames.append(pos)
    return rows, frames, 0


# ---- runs that branch -------------------------------------------------------------------------

Point = tuple[int, float, float, object]      # step, time, value, branch label


def branch_lines(text: bytes, frames: list[int], size: int) -> list[dict[str, Any]]:
    """The lines of a branches file that count: whole JSON lines (a last line
    without its newline is not one) with an int id above the previous one, kind
    "rewind" or "resume", an int from_step >= 0, an int offset that is not below
    the previous one, not past the file, and a frame boundary (``frames``), and a
    number or null time."""
    out: list[dict[str, Any]] = []
    last_id, last_off = 0, 16
    for raw in text[:text.rfind(b"\n") + 1].split(b"\n"):
        try:
            ln = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(ln, dict):
            continue
        kid: Any = ln.get("id")
        off: Any = ln.get("offset")
        step: Any = ln.get("from_step")
        t: Any = ln.get("time")
        if not (_int(kid) and kid > last_id and ln.get("kind") in ("rewind", "resume")
                and _int(step) and step >= 0 and _int(off) and last_off <= off <= size
                and off in frames and (t is None or (_num(t)))):
            continue
        out.append(ln)
        last_id, last_off = kid, off
    return out


def read_history(run_dir: str, rank: int = 0, branch: int | None = None,
                 _seen: tuple[str, ...] = ()) -> dict[str, list[Point]]:
    """A rank's main history (or branch ``branch``'s), ``{name: [(step, time,
    value, label)]}``: label is the branch id of this run the point was written in,
    or ``"exp/run:k"`` for a point inherited from a fork's parent."""
    try:
        with open(os.path.join(run_dir, rank_file(METRICS_FILE, rank)), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = b""
    rows, frames, _torn = read_rows(data) if len(data) >= 16 else ([], [], 0)
    try:
        with open(os.path.join(run_dir, rank_file(BRANCHES_FILE, rank)), "rb") as f:
            lines = branch_lines(f.read(), frames, len(data))
    except FileNotFoundError:
        lines = []
    with open(os.path.join(run_dir, RUN_FILE), "rb") as f:
        meta = json.load(f)
    history: dict[str, list[Point]] = {}
    fork = meta.get("fork")
    if isinstance(fork, dict):
        history = _prefix(run_dir, rank, fork, _seen + (os.path.realpath(run_dir),))
    ids = [0] + [ln["id"] for ln in lines]
    if branch is not None and branch not in ids:
        raise ValueError(f"no branch {branch}")
    opened: list[dict[str, Any] | None] = [None, *lines]
    for i, ln in enumerate(opened):
        if branch is not None and ids[i] > branch:
            break
        start = 0 if ln is None else ln["offset"]
        end = lines[i]["offset"] if i < len(lines) else len(data) + 1
        if ln is not None:          # the branch cuts what it inherited at from_step
            history = {n: [p for p in pts if p[0] < ln["from_step"]]
                       for n, pts in history.items()}
        for pos, name, step, t, value in rows:
            if start <= pos < end:
                history.setdefault(name, []).append((step, t, value, ids[i]))
    return history


def _prefix(run_dir: str, rank: int, fork: dict[str, Any], seen: tuple[str, ...]
            ) -> dict[str, list[Point]]:
    """The parent's history a fork inherits: steps <= the fork step, labelled with
    the parent's spec; nothing when the parent is missing, another run (uuid), a
    cycle or more than 64 forks up."""
    parent: Any = fork.get("parent")
    step: Any = fork.get("step")
    want: Any = fork.get("parent_uuid")
    parts = parent.split("/") if isinstance(parent, str) else []
    if (len(parts) != 2 or any(p in ("", ".", "..") for p in parts) or not _int(step)
            or step < 0):
        return {}
    path = os.path.join(os.path.dirname(os.path.dirname(run_dir)), *parts)
    if os.path.realpath(path) in seen or len(seen) >= MAX_LINEAGE:
        return {}
    try:
        with open(os.path.join(path, RUN_FILE), "rb") as f:
            pmeta = json.load(f)
    except (OSError, ValueError):
        return {}
    if want is not None and pmeta.get("uuid") != want:
        return {}
    kept = fork.get("branch")
    try:
        got = read_history(path, rank, kept, seen)
    except ValueError:
        got = read_history(path, rank, None, seen)      # that branch is gone: the main one
    return {n: [(s, t, v, lab if isinstance(lab, str) else f"{parent}:{lab}")
                for s, t, v, lab in pts if s <= step] for n, pts in got.items()}


def _int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
