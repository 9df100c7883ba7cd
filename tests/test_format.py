"""The metrics format: the compiled reader agrees with the pure-Python reference."""

from __future__ import annotations

import math
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expman
from expman import _core, refreader

keys = st.sampled_from(["loss", "acc", "lr", "grad/norm", "ü"])
values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2**53, 2**53)
rows = st.lists(
    st.tuples(st.dictionaries(keys, values, max_size=5),
              st.none() | st.integers(0, 2**62)),
    max_size=60)


def bits(x: float) -> bytes:
    return struct.pack("<d", float(x))


def as_bits(series):
    return [(s, bits(v)) for s, _t, v in series]


def test_crc_matches_zlib():
    for data in [b"", b"a", b"hello world" * 100, bytes(range(256))]:
        assert _core.crc32(data) == zlib.crc32(data)


def test_file_header():
    h = _core.file_header()
    assert h[:8] == b"EXPMANMB" and struct.unpack("<II", h[8:]) == (1, 0)
    assert len(h) == _core.HEADER_SIZE == 16


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows, flush_every=st.integers(1, 20))
def test_reference_and_fast_reader_agree(tmp_path_factory, rows, flush_every):
    base = tmp_path_factory.mktemp("fmt")
    exp = expman.Experiment("fmt", base_dir=base, capture_env=False, system_metrics=False,
                            flush_interval=60)
    expected: dict[str, list] = {}
    step = -1
    for i, (metrics, s) in enumerate(rows):
        exp.log_metrics(metrics, step=s)
        step = step + 1 if s is None else s
        for k, v in metrics.items():
            expected.setdefault(k, []).append((step, bits(v)))
        if i % flush_every == 0:
            exp.flush()                          # many frames, deltas restart per frame
    exp.close()
    data = (exp.run_dir / "metrics.bin").read_bytes()
    ref, torn = refreader.read_metrics(data)
    assert torn == 0
    assert {k: as_bits(v) for k, v in ref.items()} == expected
    fast = expman.open_run(exp.run_dir).metrics
    assert set(fast) == set(expected)
    for k, s in fast.items():
        got = [(int(a), bits(b)) for a, b in zip(s.steps, s.values)]
        assert got == expected[k]
        assert [t for _s, t, _v in ref[k]] == [float(t) for t in s.times]


def test_frames_are_checksummed_little_endian(make_run):
    exp = make_run()
    exp.log_metrics({"a": math.pi}, step=5)
    exp.close()
    data = (exp.run_dir / "metrics.bin").read_bytes()
    pos, frames = 16, 0
    while pos < len(data):
        length, crc_len = struct.unpack_from("<II", data, pos)
        assert crc_len == zlib.crc32(data[pos:pos + 4])
        payload = data[pos + 8:pos + 8 + length]
        assert struct.unpack_from("<I", data, pos + 8 + length)[0] == zlib.crc32(payload)
        pos += 12 + length
        frames += 1
    assert pos == len(data) and frames >= 1
    assert bits(math.pi) in data


def test_decode_tail_from_offset(make_run):
    exp = make_run(flush_interval=60)
    exp.log_metrics({"a": 1.0}, step=0)
    exp.flush()
    first = (exp.run_dir / "metrics.bin").read_bytes()
    cols, keys, report = _core.decode_metrics(first)
    exp.log_metrics({"a": 2.0, "b": 3.0}, step=1)
    exp.close()
    whole = (exp.run_dir / "metrics.bin").read_bytes()
    tail, keys2, report2 = _core.decode_metrics(whole, offset=report["end"], keys=keys)
    assert {k: list(v[2]) for k, v in tail.items()} == {"a": [2.0], "b": [3.0]}
    assert report2["end"] == len(whole)


def test_bytes_per_point_is_small(make_run):
    exp = make_run()
    for i in range(10_000):
        exp.log_metrics({"loss": 1.0 / (i + 1), "acc": i / 10_000}, step=i)
    exp.close()
    size = (exp.run_dir / "metrics.bin").stat().st_size
    assert size / 20_000 <= 12


def test_one_metric_file_decodes_to_exact_trimmed_columns(make_run):
    """A file whose points are all one metric's hands its long columns over as
    that metric's (no scatter): they must be trimmed to the points, independent
    between decodes, and equal to the reference reader's, torn tail included."""
    exp = make_run(flush_interval=60)
    for i in range(5000):
        exp.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
        if i % 700 == 0:
            exp.flush()
    exp.close()
    data = (exp.run_dir / "metrics.bin").read_bytes()
    ref, _torn = refreader.read_metrics(data)
    for cut in (len(data), len(data) - 5):          # whole, and a torn last frame
        cols, _keys, report = _core.decode_metrics(data[:cut])
        steps, times, vals = cols["loss"]
        assert (steps.typecode, times.typecode, vals.typecode) == ("q", "d", "d")
        n = report["points"]
        assert len(steps) == len(times) == len(vals) == n
        want = ref["loss"][:n]
        assert [(s, bits(v)) for s, v in zip(steps, vals)] == as_bits(want)
        assert list(times) == [float(t) for _s, t, _v in want]
        assert (cut == len(data)) == (n == 5000)
    again = _core.decode_metrics(data)[0]["loss"]
    again[2][0] = -1.0                              # decodes never share buffers
    assert _core.decode_metrics(data)[0]["loss"][2][0] == 1.0
