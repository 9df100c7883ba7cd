"""The reader: run summaries, duplicate steps, live tails, optional extras, no-numpy columns."""

from __future__ import annotations

import math
import os
import struct
import sys
import time
from array import array
from pathlib import Path

import pytest

import expman
from expman import _core, reader, series
from expman._fsutil import atomic_write_json, read_json

from conftest import make_crashed_run, run_python, need


@pytest.fixture(params=["numpy", "array"])
def columns(request, monkeypatch):
    """Run the test with numpy columns and with plain array.array columns."""
    if request.param == "array":
        monkeypatch.setattr(series, "_np", None)
    else:
        need("numpy")
        monkeypatch.setattr(series, "_np", False)
    return request.param


def as_list(col) -> list:
    return [x for x in col.tolist()]


def test_columns_type(make_run, columns):
    exp = make_run()
    exp.log_metrics({"loss": 0.5}, step=3)
    exp.close()
    s = expman.open_run(exp.run_dir).metrics["loss"]
    if columns == "array":
        assert isinstance(s.values, array) and s.steps.typecode == "q"
    else:
        import numpy as np
        assert isinstance(s.values, np.ndarray) and s.steps.dtype == np.int64
    assert as_list(s.steps) == [3] and as_list(s.values) == [0.5] and s.last == 0.5


def test_duplicate_steps_kept_then_reduced(make_run, columns):
    exp = make_run()
    for step, v in [(0, 1.0), (1, 2.0), (1, 4.0), (2, 8.0), (1, 6.0), (0, 3.0)]:
        exp.log_metrics({"x": v}, step=step)
    exp.close()
    run = expman.open_run(exp.run_dir)
    s = run.metrics["x"]
    assert as_list(s.steps) == [0, 1, 1, 2, 1, 0]              # kept as logged
    assert as_list(s.values) == [1.0, 2.0, 4.0, 8.0, 6.0, 3.0]
    assert as_list(s.reduce("last").values) == [3.0, 6.0, 8.0]
    assert as_list(s.reduce("first").values) == [1.0, 2.0, 8.0]
    assert as_list(s.reduce("mean").values) == [2.0, 4.0, 8.0]
    assert as_list(s.reduce("last").steps) == [0, 1, 2]
    times = as_list(s.times)
    assert as_list(s.reduce("first").times) == [times[5], times[4], times[3]]  # the step's last record
    for how in ("last", "first", "mean"):
        r = expman.open_run(exp.run_dir, duplicates=how).metrics["x"]
        assert as_list(r.values) == as_list(s.reduce(how).values)
    assert as_list(run.metrics.reduce("mean")["x"].values) == [2.0, 4.0, 8.0]
    with pytest.raises(ValueError, match="'last', 'first' or 'mean'"):
        s.reduce("max")
    with pytest.raises(ValueError, match="duplicates"):
        expman.open_run(exp.run_dir, duplicates="median")


def test_summary_ignores_nan(make_run, columns):
    exp = make_run()
    for i, v in enumerate([math.nan, 2.0, -math.inf, 5.0, math.nan]):
        exp.log_metrics({"x": v, "only_nan": math.nan}, step=i)
    exp.close()
    m = expman.open_run(exp.run_dir).metrics
    s = m["x"].summary()
    assert (s.count, s.nan_count, s.min, s.max, s.last_step) == (5, 2, -math.inf, 5.0, 4)
    assert math.isnan(s.last_value) and math.isnan(s.first_value) and s.first_step == 0
    n = m["only_nan"].summary()
    assert n.nan_count == 5 and n.min is None and n.max is None


def test_list_runs_summaries_newest_first(base, make_run):
    a = make_run("exp_a", "first")
    a.log_params({"lr": 0.1, "model": {"depth": 4}})
    a.log_metrics({"loss": 1.0, "acc": 0.1}, step=0)
    a.log_metrics({"loss": 0.25}, step=1)
    a.close()
    b = make_run("exp_b", "second")
    b.log_metrics({"loss": 9.0}, step=0)
    b.close(status="FAILED")
    c = make_run("exp_a", "third")                      # still running, in this process
    runs = expman.list_runs(base)
    assert [r.run_name for r in runs] == ["third", "second", "first"]
    first = runs[2]
    assert (first.experiment, first.status, first.params) == (
        "exp_a", "FINISHED", {"lr": 0.1, "model": {"depth": 4}})
    assert first.last_metrics == {"loss": 0.25, "acc": 0.1}
    assert first.points == 3 and first.path == a.run_dir and first.id == "exp_a/first"
    assert first.duration is not None and first.duration >= 0
    assert first.start_time == read_json(a.run_dir / "run.json")["start_time"]
    assert runs[0].status == "RUNNING" and runs[0].duration >= 0
    assert [r.run_name for r in expman.list_runs(base, experiment="exp_a")] == ["third", "first"]
    assert [r.run_name for r in expman.list_runs(base, status="failed")] == ["second"]
    assert {r.run_name for r in expman.list_runs(base, status=["FAILED", "FINISHED"])} == {
        "first", "second"}
    assert expman.list_runs(base, metrics=False)[2].last_metrics == {}
    assert expman.list_runs(base / "nope") == []
    c.close()
    d = runs[2].to_dict()
    assert d["id"] == "exp_a/first" and d["path"] == str(a.run_dir)


def test_crashed_run(base):
    """A process that dies without closing leaves RUNNING on disk; the reader says CRASHED."""
    run_dir = make_crashed_run(base, base, exit_code=3)
    assert read_json(run_dir / "run.json")["status"] == "RUNNING"
    assert expman.open_run(run_dir).status == "CRASHED"
    (s,) = expman.list_runs(base, status="CRASHED")
    assert s.run_name == "dead" and s.last_metrics == {"loss": 0.5}


def test_stale_meta_is_not_called_crashed(base):
    """A Run read while its writer lived, asked for its status after a clean close
    and exit, re-reads run.json instead of guessing CRASHED from the dead pid."""
    proc = run_python(f"""
        import expman
        with expman.Experiment("exp", "ok", base_dir={str(base)!r}, capture_env=False) as e:
            e.log_metrics({{"a": 1.0}})
    """, cwd=base)
    assert proc.returncode == 0, proc.stderr
    run = expman.open_run(base / "exp" / "ok")
    run.meta["status"] = "RUNNING"                     # as if read before the close
    assert run.status == "FINISHED"


def test_run_tail_sees_only_new_frames_and_events(make_run, columns):
    exp = make_run(flush_interval=60)
    tail = reader.RunTail(exp.run_dir)
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.info("hello")
    exp.flush()
    b1 = tail.poll()
    assert b1.status == "RUNNING" and b1
    assert as_list(b1.metrics["loss"].values) == [1.0]
    assert [e.get("msg") for e in b1.events if e["kind"] == "message"] == ["hello"]
    assert not tail.poll()                                   # nothing new
    exp.log_metrics({"loss": 0.5, "acc": 0.9}, step=1)
    exp.flush()
    b2 = tail.poll()
    assert as_list(b2.metrics["loss"].steps) == [1] and as_list(b2.metrics["acc"].values) == [0.9]
    # the only event is the copy of the new key's definition (events.jsonl, kind "key")
    assert [(e["kind"], e["name"]) for e in b2.events] == [("key", "acc")]
    exp.close()
    b3 = tail.poll()
    assert b3.status == "FINISHED" and b3.meta_changed
    assert [e["status"] for e in b3.events if e["kind"] == "status"] == ["FINISHED"]
    assert tail.integrity["points"] == 3 and tail.integrity["frames"] >= 2
    late = reader.RunTail(exp.run_dir, start="end")
    assert not late.poll()


def test_follow_stops_when_run_ends(make_run):
    exp = make_run()
    exp.log_metrics({"x": 1.0}, step=0)
    exp.close()
    batches = list(reader.RunTail(exp.run_dir).follow(interval=0.01, timeout=10))
    assert sum(b.metrics.points for b in batches) == 1 and batches[-1].status == "FINISHED"


def test_refresh_appends_in_place(make_run, columns):
    exp = make_run(flush_interval=60)
    exp.log_metrics({"loss": 3.0}, step=0)
    exp.flush()
    run = expman.open_run(exp.run_dir)
    assert as_list(run.metrics["loss"].values) == [3.0] and run.status == "RUNNING"
    exp.log_metrics({"loss": 2.0, "new": 1.0}, step=1)
    exp.log_params({"lr": 0.1})
    exp.flush()
    assert run.refresh() == 2          # 2 points (the "key" record copying "new"'s name is internal)
    assert as_list(run.metrics["loss"].values) == [3.0, 2.0]
    assert as_list(run.metrics["new"].steps) == [1] and run.params == {"lr": 0.1}
    exp.close()
    run.refresh()
    assert run.meta["status"] == "FINISHED" and run.integrity["points"] == 3


def test_run_events_hold_the_public_kinds_only(make_run):
    """Issue 22.8: run.events held the internal {"kind": "key"} copies of metric names,
    which the README does not list; they stay in events.jsonl, read separately."""
    from expman.summary import read_event_keys
    exp = make_run(flush_interval=60)
    exp.log_metrics({"loss": 1.0, "acc": 0.5}, step=0)
    exp.info("hello")
    exp.flush()
    run = expman.open_run(exp.run_dir)
    exp.log_metrics({"late": 2.0}, step=1)
    exp.close()
    run.refresh()
    assert [e["kind"] for e in run.events] == ["status", "message", "status"]
    assert sorted(read_event_keys(run.path).values()) == ["acc", "late", "loss"]
    assert [e["kind"] for e in expman.open_run(exp.run_dir).events] == [
        "status", "message", "status"]


def test_refresh_with_duplicates_rule(make_run, columns):
    exp = make_run(flush_interval=60)
    exp.log_metrics({"x": 1.0}, step=0)
    exp.flush()
    run = expman.open_run(exp.run_dir, duplicates="last")
    exp.log_metrics({"x": 5.0}, step=0)
    exp.close()
    run.refresh()
    assert as_list(run.metrics["x"].values) == [5.0]


def _frames(data: bytes) -> list[int]:
    """Offsets where each frame starts (length, crc(length), payload, crc)."""
    pos, out = _core.HEADER_SIZE, []
    while pos < len(data):
        out.append(pos)
        pos += 12 + struct.unpack_from("<I", data, pos)[0]
    return out


def test_tail_waits_for_a_frame_being_written(make_run, tmp_path):
    """A half-written last frame is left for the next poll, then read whole."""
    exp = make_run(flush_interval=60)
    for i in range(3):
        exp.log_metrics({"v": float(i)}, step=i)
        exp.flush()
    exp.close()
    data = (exp.run_dir / "metrics.bin").read_bytes()
    starts = _frames(data)
    assert len(starts) == 3
    live = tmp_path / "live"
    live.mkdir()
    atomic_write_json(live / "run.json", {**read_json(exp.run_dir / "run.json"), "status": "RUNNING",
                                          "pid": os.getpid()})
    cut = starts[2] + 5                                     # inside the third frame's header
    (live / "metrics.bin").write_bytes(data[:cut])
    tail = reader.RunTail(live)
    assert as_list(tail.poll().metrics["v"].values) == [0.0, 1.0]
    assert tail.integrity["torn_bytes"] == 5 and tail.integrity["corrupt_bytes"] == 0
    with open(live / "metrics.bin", "ab") as f:
        f.write(data[cut:len(data) - 3])                    # payload, but not its checksum
    assert not tail.poll()
    with open(live / "metrics.bin", "ab") as f:
        f.write(data[len(data) - 3:])
    assert as_list(tail.poll().metrics["v"].values) == [2.0]
    assert tail.integrity["torn_bytes"] == 0 and tail.integrity["points"] == 3


def test_damage_is_reported_not_returned(make_run):
    exp = make_run(flush_interval=60)
    for i in range(3):
        exp.log_metrics({"v": float(i)}, step=i)
        exp.flush()
    exp.close()
    path = exp.run_dir / "metrics.bin"
    data = bytearray(path.read_bytes())
    second = _frames(bytes(data))[1]
    data[second + 9] ^= 0xFF                                # inside the second payload
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="damaged"):
        run = expman.open_run(exp.run_dir)
    assert as_list(run.metrics["v"].values) == [0.0]
    assert run.integrity["corrupt_at"] == [second] and run.integrity["corrupt_bytes"] > 0
    with pytest.warns(RuntimeWarning, match="damaged"):
        saved = expman.open_run(exp.run_dir, salvage=True)
    assert as_list(saved.metrics["v"].values) == [0.0, 2.0]


def test_to_pandas_long_and_wide(make_run):
    pd = need("pandas")
    exp = make_run()
    exp.log_metrics({"a": 1.0, "b": 2.0}, step=0)
    exp.log_metrics({"a": 3.0}, step=0)
    exp.log_metrics({"a": math.nan}, step=1)
    exp.close()
    m = expman.open_run(exp.run_dir).metrics
    long = m.to_pandas()
    assert list(long.columns) == ["metric", "step", "time", "value"] and len(long) == 4
    wide = m.to_pandas(wide=True, duplicates="first")
    assert wide.loc[0, "a"] == 1.0 and math.isnan(wide.loc[1, "a"]) and math.isnan(wide.loc[1, "b"])
    assert m.to_pandas(wide=True).loc[0, "a"] == 3.0
    assert isinstance(wide, pd.DataFrame)


def test_to_arrow_and_polars(make_run, columns):
    need("pyarrow")
    exp = make_run()
    exp.log_metrics({"a": 1.5, "b": -math.inf}, step=7)
    exp.log_metrics({"a": math.nan}, step=8)
    exp.close()
    m = expman.open_run(exp.run_dir).metrics
    t = m.to_arrow()
    assert t.column_names == ["metric", "step", "time", "value"]
    assert t.column("metric").to_pylist() == ["a", "a", "b"]
    assert t.column("step").to_pylist() == [7, 8, 7]
    v = t.column("value").to_pylist()
    assert v[0] == 1.5 and math.isnan(v[1]) and v[2] == -math.inf
    pl = need("polars")
    df = m.to_polars()
    assert isinstance(df, pl.DataFrame) and df.shape == (3, 4)
    assert df["step"].to_list() == [7, 8, 7]


@pytest.mark.parametrize("method, module, extra", [
    ("to_pandas", "pandas", "pandas"), ("to_arrow", "pyarrow", "arrow"),
    ("to_polars", "polars", "polars")])
def test_missing_extra_names_it(make_run, monkeypatch, method, module, extra):
    exp = make_run()
    exp.close()
    m = expman.open_run(exp.run_dir).metrics
    monkeypatch.setitem(sys.modules, module, None)          # import now raises ImportError
    with pytest.raises(ImportError, match=rf"pip install 'expman-logger\[{extra}\]'"):
        getattr(m, method)()


def test_import_expman_does_not_import_numpy(tmp_path):
    proc = run_python("""
        import sys, expman
        assert "numpy" not in sys.modules, "import expman pulled in numpy"
        print("ok")
    """, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run.json"):
        expman.open_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        reader.RunTail(tmp_path / "nope")


def test_empty_run_and_keys_without_points(make_run, columns):
    exp = make_run()
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert len(run.metrics) == 0 and run.integrity["frames"] == 0
    assert run.status == "FINISHED" and run.id == f"exp/{exp.run_name}"
    assert Path(run.path) == exp.run_dir


def test_list_runs_cache_keeps_unchanged_finished_runs_only(base, make_run, monkeypatch):
    """RunListCache: an unchanged finished run is not read again; a change to any of
    its files, a run removed, a new run, a running or crashed run are read afresh."""
    import shutil
    cache = reader.RunListCache()
    a = make_run("e", "a")
    a.log_params({"lr": 0.1})
    a.log_metrics({"loss": 1.0}, step=0)
    a.close()
    first = expman.list_runs(base, cache=cache)
    assert len(cache) == 0          # written just now: within RACY seconds, not trusted yet
    monkeypatch.setattr(reader.RunListCache, "RACY", 0.0)
    b = make_run("e", "b")
    b.log_metrics({"loss": 2.0}, step=0)
    b.close(status="FAILED")
    c = make_run("e", "c")                               # running, in this process
    make_crashed_run(base, base)                         # exp/dead: RUNNING on disk, dead
    time.sleep(0.05)                # past the timestamp tick of the files just written

    def listed():
        got = expman.list_runs(base, cache=cache)
        plain = expman.list_runs(base)
        assert [r.to_dict() | {"duration": None} for r in got] == [
            r.to_dict() | {"duration": None} for r in plain]     # the cache changes nothing
        return {r.id: r for r in got}
    one = listed()
    assert len(cache) == 2 and one["exp/dead"].status == "CRASHED" and one["e/c"].status == "RUNNING"
    assert [r.to_dict() for r in first] == [one["e/a"].to_dict()]
    two = listed()
    assert two["e/a"] is one["e/a"] and two["e/b"] is one["e/b"]          # not read again
    assert two["e/c"] is not one["e/c"] and two["exp/dead"] is not one["exp/dead"]
    # params.json rewritten in place, same size (same inode): seen
    p = a.run_dir / "params.json"
    p.write_bytes(p.read_bytes().replace(b"0.1", b"0.2"))
    three = listed()
    assert three["e/a"].params == {"lr": 0.2} and three["e/b"] is one["e/b"]
    # run.json replaced (tags), a run removed, a new run
    from expman.runmeta import set_tags
    set_tags(b.run_dir, add=["best"])
    shutil.rmtree(a.run_dir)
    d = make_run("e", "d")
    d.close()
    c.log_metrics({"loss": 3.0}, step=0)
    c.close()
    four = listed()
    assert four["e/b"].tags == ["best"] and "e/a" not in four and four["e/d"].status == "FINISHED"
    assert four["e/c"].status == "FINISHED" and four["e/c"].last_metrics == {"loss": 3.0}
    assert str(a.run_dir) not in {k for k in cache._lines}     # a removed run is forgotten
    # metrics.bin grown by a resume: points and last values follow
    time.sleep(0.05)
    listed()
    with expman.Experiment("e", "b", base_dir=base, capture_env=False, system_metrics=False,
                           resume=True) as r:
        r.log_metrics({"loss": 4.0}, step=1)
    five = listed()
    assert five["e/b"].points == 2 and five["e/b"].last_metrics == {"loss": 4.0}
    assert five["e/b"].status == "FINISHED"
    # a run folder swapped for a symlink to the same files: read again (the dashboard
    # checks where a linked run leads)
    moved = base.parent / "elsewhere"
    shutil.move(str(d.run_dir), moved)
    os.symlink(moved, d.run_dir)
    six = listed()
    assert six["e/d"] is not five["e/d"] and six["e/d"].to_dict() == five["e/d"].to_dict()


def test_list_runs_cache_trusting_takes_lines_read_since_without_a_stat(base, make_run,
                                                                        monkeypatch):
    """cache.trusting(t): lines whose reading began at or after t are taken as read
    (the caller asked at t and waited for that listing); older ones are checked."""
    monkeypatch.setattr(reader.RunListCache, "RACY", 0.0)
    a = make_run("e", "a")
    a.log_params({"lr": 0.1})
    a.close()
    time.sleep(0.05)
    cache = reader.RunListCache()
    asked = time.monotonic()
    (first,) = expman.list_runs(base, cache=cache)
    p = a.run_dir / "params.json"
    p.write_bytes(p.read_bytes().replace(b"0.1", b"0.2"))
    with cache.trusting(asked):
        assert expman.list_runs(base, cache=cache)[0] is first       # read after `asked`
    with cache.trusting(time.monotonic()):
        assert expman.list_runs(base, cache=cache)[0].params == {"lr": 0.2}   # checked
    assert cache._trusted == math.inf


def test_list_runs_twice_never_returns_a_stale_last_value(base, make_run):
    """Issue 26 item 5: metrics.bin rewritten in place with its size and mtime put
    back (no summary.json): the second listing sees the new value (the in-process
    cache is keyed on inode and ctime too)."""
    exp = make_run("e", "r")
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    (exp.run_dir / "summary.json").unlink()
    path = exp.run_dir / "metrics.bin"
    (line,) = expman.list_runs(base)
    assert line.last_metrics == {"loss": 1.0}
    st = path.stat()
    data = path.read_bytes()
    two = data.replace(struct.pack("<d", 1.0), struct.pack("<d", 2.0))
    import zlib
    payload_end = len(two) - 4          # one frame: fix its payload CRC
    length = struct.unpack_from("<I", two, 16)[0]
    assert 16 + 12 + length == len(two)
    two = two[:payload_end] + struct.pack("<I", zlib.crc32(two[24:payload_end]))
    with open(path, "r+b") as f:        # in place: same inode and size
        f.write(two)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    while path.stat().st_ctime_ns == st.st_ctime_ns:     # a coarse clock: same tick
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    (line,) = expman.list_runs(base)
    assert line.last_metrics == {"loss": 2.0}
