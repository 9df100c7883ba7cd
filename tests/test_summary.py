"""summary.json agrees exactly with a full decode of metrics.bin: after close,
while open, after a resume, after kill -9 (stale: the reader decodes), and after
a disk-full episode; key names survive a destroyed first frame; fsync_interval
makes the writer fsync on its cadence (issue 10, items 3-5)."""

from __future__ import annotations

import errno
import math
import os
import struct
import time

import pytest

import expman.experiment
from expman import _core
from expman.errors import ExpmanValueError, WriterError
from expman.layout import EVENTS_FILE, METRICS_FILE, SUMMARY_FILE, parse_event_lines
from expman.summary import keys_from_events, read_event_keys, read_summary, summarize

from conftest import run_python


def by_decode(run_dir) -> dict:
    """The figures computed here, independently, from a plain full decode."""
    columns, _keys, report = _core.decode_metrics((run_dir / METRICS_FILE).read_bytes())
    assert report["corrupt_bytes"] == 0 and report["unknown_points"] == 0
    out = {}
    for name, (steps, times, values) in columns.items():
        if not len(steps):
            continue
        finite = [v for v in values if not math.isnan(v)]
        out[name] = {"count": len(values), "nan_count": len(values) - len(finite),
                     "first_step": steps[0], "first_value": values[0], "last_step": steps[-1],
                     "last_value": values[-1], "last_time": times[-1],
                     "min": min(finite) if finite else None,
                     "max": max(finite) if finite else None}
    return out


def bits(metrics: dict) -> dict:
    """Comparable exactly: floats by their bit pattern (NaN payloads, signed zero)."""
    def b(v):
        return ("f", struct.pack("<d", v)) if isinstance(v, float) else v
    return {name: {k: b(v) for k, v in (e if isinstance(e, dict) else e.to_dict()).items()}
            for name, e in metrics.items()}


def log_mixed(exp, start: int, n: int) -> None:
    """Keys that come and go, NaN, infinities, -0.0, duplicate and backward steps."""
    for i in range(start, start + n):
        row = {"loss": 1.0 / (i + 1), "acc": float(i % 7)}
        if i % 5 == 0:
            row["sparse"] = math.nan if i % 10 == 0 else -float(i)
        if i % 13 == 0:
            row["edge"] = [math.inf, -math.inf, -0.0, 0.0, math.nan][(i // 13) % 5]
        exp.log_metrics(row, step=i if i % 11 else max(i - 3, 0))


def assert_fresh_and_exact(run_dir) -> dict:
    s = read_summary(run_dir)
    assert s is not None, "summary.json missing or stale"
    assert s["metrics_bytes"] == (run_dir / METRICS_FILE).stat().st_size
    assert bits(s["metrics"]) == bits(by_decode(run_dir))
    assert summarize(run_dir)["source"] == "summary"
    return s


def test_summary_after_close_equals_decode(make_run):
    exp = make_run()
    log_mixed(exp, 0, 3000)
    exp.log_metrics({"all_nan": math.nan, "one": 7.0})
    exp.log_metrics({f"k{j}": float(j) for j in range(80)}, step=5)     # > 64 keys per row
    exp.close()
    s = assert_fresh_and_exact(exp.run_dir)
    assert s["metrics"]["all_nan"].min is None and s["metrics"]["all_nan"].nan_count == 1
    assert s["metrics"]["edge"].max == math.inf and s["metrics"]["edge"].min == -math.inf
    assert s["metrics"]["loss"].count == 3000


def test_summary_is_refreshed_while_open_and_stale_data_is_decoded(make_run, monkeypatch):
    monkeypatch.setattr(expman.experiment, "SUMMARY_INTERVAL", 0.05)
    exp = make_run()
    log_mixed(exp, 0, 500)
    exp.flush()
    size = (exp.run_dir / METRICS_FILE).stat().st_size
    deadline = time.monotonic() + 30
    while read_summary(exp.run_dir) is None:          # the timer thread writes it
        assert time.monotonic() < deadline, "summary.json never caught up"
        time.sleep(0.02)
    assert read_summary(exp.run_dir)["metrics_bytes"] == size
    assert_fresh_and_exact(exp.run_dir)
    monkeypatch.setattr(expman.experiment, "SUMMARY_INTERVAL", 3600)
    exp._summary_stop.set()                             # no more refreshes: go stale
    exp._summary_thread.join(timeout=10)
    log_mixed(exp, 500, 300)
    exp.flush()
    assert read_summary(exp.run_dir) is None            # covers fewer bytes than the file
    fallback = summarize(exp.run_dir)
    assert fallback["source"] == "decode"
    assert bits(fallback["metrics"]) == bits(by_decode(exp.run_dir))
    exp.close()
    assert_fresh_and_exact(exp.run_dir)


def test_summary_after_resume_covers_both_sessions(make_run):
    first = make_run(run_name="r")
    log_mixed(first, 0, 1000)
    first.close()
    second = make_run(run_name="r", resume=True)
    log_mixed(second, 1000, 700)
    second.log_metrics({"new_after_resume": 3.0})
    second.close()
    s = assert_fresh_and_exact(second.run_dir)
    assert s["metrics"]["loss"].count == 1700 and s["metrics"]["loss"].first_step == 0
    assert s["metrics"]["new_after_resume"].count == 1


def test_after_kill_9_the_stale_summary_is_not_trusted(base, tmp_path):
    proc = run_python(f"""
        import math, os, signal, expman
        exp = expman.Experiment("exp", "killed", base_dir={str(base)!r}, capture_env=False)
        for i in range(2000):
            exp.log_metrics({{"loss": 1.0 / (i + 1), "odd": math.nan if i % 3 else i}}, step=i)
        exp.flush()
        assert exp._write_summary()
        for i in range(2000, 2500):
            exp.log_metrics({{"loss": -1.0 * i, "late": 1.0}}, step=i)
        exp.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """, cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr
    run_dir = base / "exp" / "killed"
    assert (run_dir / SUMMARY_FILE).exists()
    assert read_summary(run_dir) is None
    s = summarize(run_dir)
    assert s["source"] == "decode"
    assert bits(s["metrics"]) == bits(by_decode(run_dir))
    assert s["metrics"]["loss"].count == 2500 and s["metrics"]["late"].count == 500


def test_summary_after_disk_full_counts_only_what_reached_the_file(make_run):
    exp = make_run(on_error="raise")
    log_mixed(exp, 0, 200)
    exp.flush()
    exp._set_fault(write_every=1, err=errno.ENOSPC)
    for i in range(200, 300):
        exp.log_metrics({"loss": float(i), "lost_key": 1.0}, step=i)     # dropped frames
    with pytest.raises(WriterError):
        exp.flush()
    exp._set_fault()                                    # space is back
    log_mixed(exp, 300, 200)
    exp.flush()
    exp.close()
    stats = exp.stats()
    assert stats["dropped"] > 0
    s = assert_fresh_and_exact(exp.run_dir)
    assert s["metrics"]["loss"].count == stats["written"]


def test_damaged_or_foreign_summary_is_ignored(make_run):
    exp = make_run()
    log_mixed(exp, 0, 100)
    exp.close()
    path = exp.run_dir / SUMMARY_FILE
    good = path.read_bytes()
    for bad in (b"{not json", b"[]", good.replace(b'"count"', b'"cnt"', 1),
                good.replace(b'"format": 2', b'"format": 99', 1),
                good.replace(b'"nan_count": 0', b'"nan_count": "x"', 1)):
        assert bad != good
        path.write_bytes(bad)
        assert read_summary(exp.run_dir) is None
        s = summarize(exp.run_dir)
        assert s["source"] == "decode" and bits(s["metrics"]) == bits(by_decode(exp.run_dir))
    path.unlink()
    assert read_summary(exp.run_dir) is None
    if hasattr(os, "O_NOFOLLOW"):               # a planted symlink is not followed
        elsewhere = exp.run_dir.parent / "planted.json"
        elsewhere.write_bytes(good)
        path.symlink_to(elsewhere)
        assert read_summary(exp.run_dir) is None


def test_key_names_survive_a_destroyed_first_frame(make_run):
    exp = make_run()
    for i in range(50):
        exp.log_metrics({"loss": float(i), "acc": i / 100}, step=i)
    exp.flush()                                         # frame 1 defines both keys
    for i in range(50, 120):
        exp.log_metrics({"loss": float(i), "acc": i / 100}, step=i)
    exp.close()
    path = exp.run_dir / METRICS_FILE
    data = bytearray(path.read_bytes())
    first_len = struct.unpack_from("<I", data, 16)[0]
    data[16:16 + 12 + first_len] = b"\xff" * (12 + first_len)     # destroy frame 1
    path.write_bytes(bytes(data))

    _cols, _keys, blind = _core.decode_metrics(bytes(data), 0, None, True)
    assert blind["unknown_points"] == 140               # the stream alone cannot name them
    events, _bad, _used = parse_event_lines((exp.run_dir / EVENTS_FILE).read_bytes())
    keys = keys_from_events(events)
    assert keys == read_event_keys(exp.run_dir) and sorted(keys.values()) == ["acc", "loss"]
    columns, _keys, report = _core.decode_metrics(bytes(data), 0, keys, True)
    assert report["unknown_points"] == 0 and report["corrupt_bytes"] > 0
    assert list(columns["loss"][0]) == list(range(50, 120))
    assert list(columns["acc"][2]) == [i / 100 for i in range(50, 120)]
    # the listing's fallback uses them too (damage in place keeps the size, so the
    # summary would still be trusted: it says what was logged; drop it to decode)
    (exp.run_dir / SUMMARY_FILE).unlink()
    assert summarize(exp.run_dir)["metrics"]["loss"].count == 70


def test_keys_from_events_ignores_malformed_entries():
    events = [{"kind": "key", "id": 0, "name": "a"}, {"kind": "message", "id": 1, "name": "b"},
              {"kind": "key", "id": "2", "name": "c"}, {"kind": "key", "id": True, "name": "d"},
              {"kind": "key", "id": 3, "name": ""}, {"kind": "key", "id": -1, "name": "e"},
              {"kind": "key", "id": 4, "name": 5}, {"kind": "key", "id": 5, "name": "f"}]
    assert keys_from_events(events) == {0: "a", 5: "f"}


def test_fsync_interval_makes_the_writer_fsync_while_the_run_is_open(make_run):
    with pytest.raises(ExpmanValueError, match="fsync_interval"):
        make_run(fsync_interval=0)
    with pytest.raises(ExpmanValueError, match="fsync_interval"):
        make_run(fsync_interval="1")
    plain = make_run("plain")
    plain._set_fault(fsync_every=1, err=errno.EIO)      # any fsync before close fails
    exp = make_run(fsync_interval=0.01)
    exp._set_fault(fsync_every=1, err=errno.EIO)
    deadline = time.monotonic() + 30
    i = 0
    with pytest.raises(WriterError) as info:            # reported by a later call
        while True:
            assert time.monotonic() < deadline, "the writer never fsynced"
            exp.log_metrics({"loss": 0.5}, step=i)
            plain.log_metrics({"loss": 0.5}, step=i)
            i += 1
            if i % 100 == 0:
                exp.flush()
    assert info.value.errno == errno.EIO
    assert plain.flush() is True                        # no cadence: no fsync before close
    plain._set_fault()
    exp._set_fault()
    plain.close()


def test_writer_and_decode_share_one_rule_for_infinities_and_nan(make_run):
    """Issue 19: [1.0, inf, 2.0] has max inf everywhere; NaN is counted, never a
    min/max; -inf is a min. The C writer's figures (summary.json) equal the read
    model's over the decoded points, and the pure-Python path agrees."""
    from expman.readmodel import MetricSummary, summarize_points
    exp = make_run()
    series = {"up": [1.0, math.inf, 2.0], "nan": [math.nan, 3.0, math.nan],
              "down": [0.5, -math.inf, 1.5], "all_nan": [math.nan, math.nan]}
    for i in range(3):
        exp.log_metrics({k: v[i] for k, v in series.items() if i < len(v)}, step=i)
    exp.close()
    s = assert_fresh_and_exact(exp.run_dir)["metrics"]
    assert s["up"].max == math.inf and s["up"].min == 1.0
    assert (s["nan"].nan_count, s["nan"].min, s["nan"].max) == (2, 3.0, 3.0)
    assert math.isnan(s["nan"].first_value) and math.isnan(s["nan"].last_value)
    assert s["down"].min == -math.inf and s["down"].max == 1.5
    assert s["all_nan"].min is None and s["all_nan"].max is None
    for name, values in series.items():     # lists, no numpy: the same figures
        plain = summarize_points(list(range(len(values))), [0.0] * len(values), values)
        assert isinstance(plain, MetricSummary)
        mine, writer = bits({"x": plain})["x"], bits({"x": s[name]})["x"]
        del mine["last_time"], writer["last_time"]
        assert mine == writer


def test_summary_floats_round_trip_bit_for_bit(make_run):
    """Issue 26 item 9: a NaN payload and sign survive summary.json, so a listing
    shows what open_run decodes."""
    import expman
    odd_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000123))[0]
    exp = make_run()
    exp.log_metrics({"x": 1.0}, step=0)
    exp.log_metrics({"x": odd_nan, "z": -0.0}, step=1)
    exp.close()
    text = (exp.run_dir / SUMMARY_FILE).read_text()
    assert "NaN:0xfff8000000000123" in text
    s = read_summary(exp.run_dir)
    assert s is not None
    assert struct.pack("<d", s["metrics"]["x"].last_value) == struct.pack("<d", odd_nan)
    assert struct.pack("<d", s["metrics"]["z"].min) == struct.pack("<d", -0.0)
    (line,) = expman.list_runs(exp.run_dir.parent.parent)
    assert struct.pack("<d", line.last_metrics["x"]) == struct.pack("<d", odd_nan)


def test_a_forged_or_stale_summary_is_detected_and_decoded_instead(make_run):
    """Issue 19 item 3: a summary that keeps metrics_bytes but changes a figure
    fails its digest; one whose digest was recomputed but that covers other bytes
    (same size, another last frame) fails the end CRC. Either way the reader
    decodes, and says why."""
    import orjson

    from expman.summary import _digest, check_summary
    exp = make_run()
    for i in range(100):
        exp.log_metrics({"loss": float(i)}, step=i)
    exp.close()
    path = exp.run_dir / SUMMARY_FILE
    doc = orjson.loads(path.read_bytes())
    assert check_summary(exp.run_dir)[1] is None
    doc["metrics"]["loss"]["max"] = 1e9                         # forged by hand
    path.write_bytes(orjson.dumps(doc))
    assert read_summary(exp.run_dir) is None
    assert "digest" in check_summary(exp.run_dir)[1]
    assert summarize(exp.run_dir)["metrics"]["loss"].max == 99.0
    doc["digest"] = _digest(doc)                                # forged with care
    doc["end_crc"] ^= 1
    doc["digest"] = _digest(doc)
    path.write_bytes(orjson.dumps(doc))
    assert read_summary(exp.run_dir) is None
    assert "last frame" in check_summary(exp.run_dir)[1]
    assert summarize(exp.run_dir)["source"] == "decode"
