"""The reader under damage: Hypothesis mutations of a real metrics file.

Bit flips, zeroed 512 B / 4 KiB blocks, appended garbage, duplicated blocks and
truncations, alone or combined. The reader must never return a value that was
not logged, never crash, never hang; without salvage it returns a prefix of the
logged frames (everything before the first damaged byte) and reports mid-file
damage; with salvage it resynchronises on the next valid frame.

A few hundred cases per property by default; EXPMAN_SLOW=1 runs thousands.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import expman
from expman import _core, refreader
from expman.errors import CorruptRunError

from conftest import SLOW, need

N_FRAMES = 60
ROWS_PER_FRAME = 8
EXAMPLES = 5000 if SLOW else 300
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, database=None, derandomize=not SLOW,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECIAL = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308]


def value(key: str, step: int) -> float:
    if key == "special":
        return SPECIAL[step % len(SPECIAL)]
    return step * 0.25 if key == "loss" else -step / 3.0


def bits(v: float) -> bytes:
    return struct.pack("<d", v)


class Original:
    """The file before damage, and what each prefix of frames decodes to."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ends = []
        pos = _core.HEADER_SIZE
        while pos < len(data):
            (length,) = struct.unpack_from("<I", data, pos)
            pos += 12 + length
            self.ends.append(pos)
        assert pos == len(data)
        self.prefix = [points(_core.decode_metrics(data[:e])[0]) for e in [_core.HEADER_SIZE] + self.ends]
        self.all = self.prefix[-1]
        self.universe = {(k, s, b) for k, pts in self.all.items() for s, b in pts}
        self.frame_points = []
        for j in range(len(self.ends)):
            before, after = self.prefix[j], self.prefix[j + 1]
            self.frame_points.append(
                {k: after[k][len(before.get(k, [])):] for k in after})


def points(columns) -> dict[str, list[tuple[int, bytes]]]:
    return {k: [(int(s), bits(v)) for s, v in zip(c[0], c[2])] for k, c in columns.items()}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    base = tmp_path_factory.mktemp("fuzz")
    exp = expman.Experiment("fuzz", base_dir=base, capture_env=False, system_metrics=False,
                            flush_interval=60)
    step = 0
    for _ in range(N_FRAMES):
        for _ in range(ROWS_PER_FRAME):
            exp.log_metrics({k: value(k, step) for k in ("loss", "acc", "special")}, step=step)
            step += 1
        exp.flush()                                 # one frame per flush
    exp.close()
    orig = Original((exp.run_dir / "metrics.bin").read_bytes())
    assert len(orig.ends) == N_FRAMES and len(orig.data) > 3 * 4096
    return orig


# ---- mutations ---------------------------------------------------------------------

def mutation():
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
        st.tuples(st.just("zero"), st.sampled_from([512, 4096]), st.integers(0, 1 << 30)),
        st.tuples(st.just("append"), st.binary(min_size=1, max_size=600)),
        st.tuples(st.just("dup"), st.sampled_from([512, 4096]), st.integers(0, 1 << 30),
                  st.integers(0, 1 << 30), st.booleans()),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 30)),
    )


def apply(data: bytes, muts) -> bytes:
    buf = bytearray(data)
    for m in muts:
        if not buf:
            break
        kind = m[0]
        if kind == "flip":
            buf[m[1] % len(buf)] ^= 1 << m[2]
        elif kind == "zero":
            size = m[1]
            start = (m[2] % max(len(buf) // size, 1)) * size
            buf[start:start + size] = bytes(len(buf[start:start + size]))
        elif kind == "append":
            buf += m[1]
        elif kind == "dup":
            size, nblocks = m[1], max(len(buf) // m[1], 1)
            src = (m[2] % nblocks) * size
            dst = (m[3] % nblocks) * size
            block = bytes(buf[src:src + size])
            if m[4]:
                buf[dst:dst] = block                        # inserted
            else:
                buf[dst:dst + len(block)] = block           # written over another block
        elif kind == "truncate":
            del buf[m[1] % (len(buf) + 1):]
    return bytes(buf)


def first_difference(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def valid_frame_at(data: bytes, pos: int) -> bool:
    if len(data) - pos < 12:
        return False
    length, crc = struct.unpack_from("<II", data, pos)
    if zlib.crc32(data[pos:pos + 4]) != crc or pos + 12 + length > len(data):
        return False
    return zlib.crc32(data[pos + 8:pos + 8 + length]) == struct.unpack_from(
        "<I", data, pos + 8 + length)[0]


def decode(data: bytes, salvage: bool):
    """A hang is the watchdog's to catch (conftest), not a timing assertion's."""
    try:
        columns, _keys, report = _core.decode_metrics(data, salvage=salvage)
    except CorruptRunError:
        return None, None
    return points(columns), report


def assert_only_logged_values(original: Original, got) -> None:
    for k, pts in got.items():
        for s, b in pts:
            assert (k, s, b) in original.universe, f"wrong value {k}@{s}"


# ---- properties ---------------------------------------------------------------------

@FUZZ
@given(muts=st.lists(mutation(), min_size=1, max_size=3))
def test_damage_never_yields_a_wrong_value(original, muts):
    data = apply(original.data, muts)
    damaged_at = first_difference(original.data, data)
    got, report = decode(data, salvage=False)
    if got is None:                                  # only a damaged header may refuse
        assert damaged_at < _core.HEADER_SIZE         # bad magic or version
        return
    assert_only_logged_values(original, got)
    intact = sum(1 for e in original.ends if e <= damaged_at)
    duplicated = any(m[0] == "dup" for m in muts)
    if not duplicated:
        # a prefix of the logged frames, and at least every frame before the damage
        assert got in original.prefix, "not a prefix of the logged frames"
        assert original.prefix.index(got) >= intact or got == original.prefix[intact]
    else:
        for k, pts in original.prefix[intact].items():
            assert got.get(k, [])[:len(pts)] == pts
    assert report["unknown_points"] == 0
    assert report["end"] <= len(data)
    # damage in the middle (a valid frame lies beyond what was returned) is reported
    later = any(valid_frame_at(data, p) for p in range(report["end"] + 1, len(data) - 11))
    if later:
        assert report["corrupt_bytes"] > 0 and report["corrupt_at"]
    else:
        assert report["corrupt_bytes"] + report["torn_bytes"] == len(data) - report["end"]
    # the pure-Python reference agrees whenever it accepts the file
    try:
        ref, _torn = refreader.read_metrics(data)
    except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError):
        return
    assert {k: [(s, bits(v)) for s, _t, v in p] for k, p in ref.items()} == got


@FUZZ
@given(muts=st.lists(mutation(), min_size=1, max_size=3))
def test_salvage_returns_only_logged_values_and_at_least_the_plain_read(original, muts):
    data = apply(original.data, muts)
    got, report = decode(data, salvage=True)
    if got is None:
        assert data[:8] == b"EXPMANMB"               # a valid magic with another version
        return
    assert_only_logged_values(original, got)
    plain, _ = decode(data, salvage=False)
    if plain is not None:
        for k, pts in plain.items():
            assert Counter(got[k]) >= Counter(pts)


@settings(max_examples=min(EXAMPLES, 400), deadline=2000, database=None, derandomize=not SLOW)
@given(frame=st.integers(1, N_FRAMES - 2), offset=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_salvage_resynchronises_after_one_damaged_frame(original, frame, offset, bit):
    start = original.ends[frame - 1]
    end = original.ends[frame]
    data = bytearray(original.data)
    data[start + offset % (end - start)] ^= 1 << bit
    got, report = decode(bytes(data), salvage=True)
    assert report["corrupt_at"] and report["corrupt_bytes"] > 0
    want = {k: original.prefix[frame][k] + [p for j in range(frame + 1, N_FRAMES)
                                            for p in original.frame_points[j][k]]
            for k in original.all}
    assert got == want                               # everything but the damaged frame
    plain, plain_report = decode(bytes(data), salvage=False)
    assert plain == original.prefix[frame]
    assert plain_report["corrupt_at"] == [start]


def test_zeroed_first_block_is_salvaged(original):
    """The header and the first frames (with the key names) are gone: salvage still
    finds every later frame; its points cannot be named, so they are counted, not
    returned under a guessed name (see docs/durability.md)."""
    data = bytes(4096) + original.data[4096:]
    with pytest.raises(CorruptRunError):
        _core.decode_metrics(data)
    got, report = decode(data, salvage=True)
    assert report["corrupt_at"][0] == 0
    first_intact = next(j for j, e in enumerate(original.ends) if e > 4096) + 1
    assert got == {}
    assert report["frames"] == N_FRAMES - first_intact
    assert report["unknown_points"] == 3 * ROWS_PER_FRAME * (N_FRAMES - first_intact)
    # given the key table (as a resumed writer or a tail reader has it), all of it is back
    keys = _core.decode_metrics(original.data[:original.ends[0]])[1]
    tail_cols, _k, tail_report = _core.decode_metrics(data, original.ends[first_intact - 1], keys)
    assert tail_report["unknown_points"] == 0
    for k in original.all:
        tail = [p for j in range(first_intact, N_FRAMES) for p in original.frame_points[j][k]]
        assert points(tail_cols)[k] == tail


def test_open_run_reports_damage_with_a_warning(original, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"status": "FINISHED"}')
    data = bytearray(original.data)
    data[original.ends[10] + 30] ^= 0x01
    (run / "metrics.bin").write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="damaged"):
        r = expman.open_run(run)
    assert len(r.metrics["loss"]) == 11 * ROWS_PER_FRAME
    assert r.integrity["corrupt_at"] == [original.ends[10]]
    with pytest.warns(RuntimeWarning, match="damaged"):
        r = expman.open_run(run, salvage=True)
    assert len(r.metrics["loss"]) == (N_FRAMES - 1) * ROWS_PER_FRAME
    # a run that closed cleanly has no torn tail: a cut last frame is damage
    (run / "metrics.bin").write_bytes(original.data[:-5])
    with pytest.warns(RuntimeWarning, match="closed cleanly"):
        r = expman.open_run(run)
    assert r.integrity["torn_bytes"] == 0 and r.integrity["corrupt_bytes"] > 0
    # a torn tail of a writer that died (CRASHED) is not damage: no warning
    from expman.layout import hostname
    (run / "run.json").write_text(json.dumps({"status": "RUNNING", "pid": 0x7FFFFFFE,
                                              "host": hostname()}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = expman.open_run(run)
    assert r.status == "CRASHED"
    assert r.integrity["torn_bytes"] == original.ends[-1] - original.ends[-2] - 5


# ---- structural mutations, seeded from the hostile corpus (issue 15) -----------------
#
# atheris (coverage-guided) does not build here (it needs clang's libFuzzer), so this
# is the bounded fallback the issue names: Hypothesis edits the *structure* of
# corpus files (records inside payloads, key ids near 2**32, names that clash or
# are not UTF-8, frames duplicated, dropped or cut) and re-checksums every frame,
# so the payload parser sees the damage instead of the CRC check stopping it.
# The compiled reader must never crash and must agree with the reference reader
# wherever the reference reads the file without complaint. EXPMAN_SLOW=1 runs
# thousands of cases; tools/sanitize.sh runs these under ASan + UBSan.

from hostile import corpus  # noqa: E402

SEEDS = {name: build() for name, build in corpus.CORPUS.items()}
SEEDS = {name: data for name, data in SEEDS.items() if len(data) < 64 << 10}
INTERESTING_IDS = [0, 1, 2, 5, (1 << 28), 0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1]
NAMES = [b"a", b"loss", b"", b"\xff", b"\xc3", "é".encode(), b"x" * 300]


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the leading valid frames, and whatever follows them."""
    pos, payloads = _core.HEADER_SIZE, []
    while valid_frame_at(data, pos):
        (length,) = struct.unpack_from("<I", data, pos)
        payloads.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return payloads, data[pos:]


def structural_edit():
    pos = st.integers(0, 1 << 20)
    return st.one_of(
        st.tuples(st.just("key"), pos, pos, st.sampled_from(INTERESTING_IDS), st.sampled_from(NAMES)),
        st.tuples(st.just("row"), pos, pos, st.lists(st.sampled_from(INTERESTING_IDS), max_size=4),
                  st.integers(-(1 << 63), (1 << 63) - 1), st.booleans()),
        st.tuples(st.just("varint"), pos, pos, st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("byte"), pos, pos, st.integers(0, 255)),
        st.tuples(st.just("cut_payload"), pos, pos),
        st.tuples(st.just("dup_frame"), pos, pos),
        st.tuples(st.just("drop_frame"), pos),
        st.tuples(st.just("cut_file"), pos),
    )


def apply_structural(data: bytes, edits) -> bytes:
    payloads, rest = split_frames(data)
    cut = None
    for e in edits:
        kind = e[0]
        if kind == "cut_file":
            cut = e[1]
            continue
        if not payloads:
            payloads.append(b"")
        f = e[1] % len(payloads)
        p = payloads[f]
        at = e[2] % (len(p) + 1) if len(e) > 2 else 0
        if kind == "key":
            p = p[:at] + corpus.key(e[3], e[4]) + p[at:]
        elif kind == "row":
            ids, step, same = e[3], e[4], e[5]
            rec = (corpus.same_row(step, 1, [1.0] * len(ids)) if same
                   else corpus.row(step, 1, [(i, 2.0) for i in ids]))
            p = p[:at] + rec + p[at:]
        elif kind == "varint":
            p = p[:at] + corpus.varint(e[3]) + p[at:]
        elif kind == "byte":
            p = p[:at] + bytes([e[3]]) + p[at + 1:]
        elif kind == "cut_payload":
            p = p[:at]
        elif kind == "dup_frame":
            payloads.insert(e[2] % (len(payloads) + 1), p)
        elif kind == "drop_frame":
            del payloads[f]
            continue
        payloads[f] = p
    out = corpus.HEADER + b"".join(corpus.frame(p) for p in payloads) + rest
    return out if cut is None else out[:_core.HEADER_SIZE + cut % (len(out) + 1)]


def reference(data: bytes):
    try:
        series, torn = refreader.read_metrics(data)
    except (ValueError, KeyError, IndexError, struct.error):
        return None
    return {k: [(s, bits(v)) for s, _t, v in pts] for k, pts in series.items()}, torn


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not SLOW,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.sampled_from(sorted(SEEDS)), edits=st.lists(structural_edit(), min_size=1, max_size=4))
def test_structural_mutations_of_the_hostile_corpus(seed, edits):
    data = apply_structural(SEEDS[seed], edits)
    for salvage in (False, True):
        columns, keys, report = _core.decode_metrics(data, salvage=salvage)
        got = points(columns)
        assert report["end"] <= len(data)
        assert report["points"] == sum(len(v) for v in got.values())
        assert len(set(keys.values())) == len(keys)         # one name, one id
        assert all(0 <= k <= 0xFFFFFFFF for k in keys)
    ref = reference(data)
    if ref is not None and ref[1] == 0:
        plain = points(_core.decode_metrics(data)[0])
        assert {k: v for k, v in plain.items() if v} == {k: v for k, v in ref[0].items() if v}


# ---- the TensorBoard reader (issue 20) --------------------------------------------------------
# Structure-aware mutations of crafted event files (tests/hostile/runfiles.py): records are
# split, their payloads edited (bytes, protobuf fields, tensors declaring any shape) and
# re-checksummed, so the protobuf parser and the value checks see the damage; raw edits
# (lengths, checksums, cuts) hit the record framing. The reader must never raise past its
# own checks, never allocate beyond the bytes present, and yield only checksummed records.
# tools/sanitize.sh runs these under ASan + UBSan (the protobuf parser is C).

from hostile import runfiles  # noqa: E402

TB_SEEDS = {name: build() for name, build in runfiles.TB_CORPUS.items()}
TB_EXAMPLES = 2000 if SLOW else 200


def split_records(data: bytes) -> tuple[list[bytes], bytes]:
    pos, out = 0, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        if length > len(data) - pos - 16:
            break
        out.append(data[pos + 12:pos + 12 + length])
        pos += 16 + length
    return out, data[pos:]


def tb_edit():
    pos = st.integers(0, 1 << 16)
    dims = st.lists(st.integers(0, (1 << 63) - 1) | st.integers(0, 4), max_size=4)
    return st.one_of(
        st.tuples(st.just("byte"), pos, pos, st.integers(0, 255)),
        st.tuples(st.just("cut_payload"), pos, pos),
        st.tuples(st.just("tensor"), pos, dims, st.sampled_from([0, 1, 2, 7, 9, 99]),
                  st.binary(max_size=24), st.sampled_from(["scalars", "text", "x"])),
        st.tuples(st.just("event"), pos, st.integers(-(1 << 63), (1 << 63) - 1),
                  st.binary(max_size=40)),
        st.tuples(st.just("dup"), pos, pos),
        st.tuples(st.just("drop"), pos),
        st.tuples(st.just("raw_byte"), pos, st.integers(0, 255)),
        st.tuples(st.just("raw_length"), pos, st.integers(0, (1 << 64) - 1)),
        st.tuples(st.just("cut_file"), pos),
    )


def apply_tb(data: bytes, edits) -> bytes:
    records, rest = split_records(data)
    raw = []
    for e in edits:
        kind = e[0]
        if kind in ("raw_byte", "raw_length", "cut_file"):
            raw.append(e)
            continue
        if not records:
            records.append(b"")
        r = e[1] % len(records)
        p = records[r]
        if kind == "byte":
            at = e[2] % (len(p) + 1)
            p = p[:at] + bytes([e[3]]) + p[at + 1:]
        elif kind == "cut_payload":
            p = p[:e[2] % (len(p) + 1)]
        elif kind == "tensor":
            value = runfiles.tensor_value("t", e[2], e[3], e[4], e[5])
            p = runfiles.event(1, [value])
        elif kind == "event":
            p = runfiles.event(e[2], [runfiles.scalar(e[3], 1.0)])
        elif kind == "dup":
            records.insert(e[2] % (len(records) + 1), p)
            continue
        elif kind == "drop":
            del records[r]
            continue
        records[r] = p
    out = bytearray(b"".join(runfiles.record(p) for p in records) + rest)
    for e in raw:
        if not out:
            break
        at = e[1] % len(out)
        if e[0] == "raw_byte":
            out[at] = e[2]
        elif e[0] == "raw_length":
            out[at:at + 8] = struct.pack("<Q", e[2])
        else:
            del out[at:]
    return bytes(out)


def read_all(path, size: int) -> list[str]:
    from expman import tbio
    problems: list[str] = []
    last = -1
    for offset, event in tbio.read_events(path, problems):
        assert last < offset < size
        last = offset
        for value in event.summary.value:
            if value.WhichOneof("value") == "tensor":
                try:
                    arr = tbio._checked_ndarray(value.tensor)
                except tbio._VALUE_ERRORS:
                    continue
                assert arr.size <= max(1, size)             # never more than the bytes hold
    return problems


@settings(max_examples=TB_EXAMPLES, deadline=None, database=None, derandomize=not SLOW,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(TB_SEEDS)), edits=st.lists(tb_edit(), min_size=1, max_size=4))
def test_structural_mutations_of_event_files(tmp_path, seed, edits):
    need("tensorboard")
    data = apply_tb(TB_SEEDS[seed], edits)
    path = tmp_path / "events.out.tfevents.fuzz"
    path.write_bytes(data)
    read_all(path, len(data))


@settings(max_examples=25 if not SLOW else 300, deadline=None, database=None,
          derandomize=not SLOW, suppress_health_check=[HealthCheck.too_slow,
                                                       HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(sorted(TB_SEEDS)), edits=st.lists(tb_edit(), min_size=1, max_size=3))
def test_a_mutated_event_file_never_aborts_the_import(tmp_path_factory, seed, edits):
    """The whole import: damage is a warning and a skipped value, never an exception."""
    need("tensorboard")
    from expman import tbio
    work = tmp_path_factory.mktemp("tbfuzz")
    (work / "tb" / "r").mkdir(parents=True)
    (work / "tb" / "r" / "events.out.tfevents.1.h").write_bytes(apply_tb(TB_SEEDS[seed], edits))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = tbio.import_tensorboard(work / "tb", work / "runs", "x")
        for run_dir in made:
            expman.open_run(run_dir)
