"""Issue 15, the C core and the decoder: no input can crash, hang or escape.

One test per repro (the corpus is tests/hostile/corpus.py). Readers get crafted
metrics files; the ring gets concurrent new keys on a small buffer; the writer
gets stalled. Hangs are guarded by a subprocess timeout or the suite's
watchdog, never judged by a timing assertion.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

import expman
from expman import _core, refreader
from expman.errors import ExpmanValueError, WriterError
from expman.layout import METRICS_FILE

from hostile import corpus

SANITIZED = os.environ.get("EXPMAN_SANITIZE") == "1"
ROOT = Path(__file__).resolve().parent.parent


def decode(data: bytes, salvage: bool = False):
    cols, keys, report = _core.decode_metrics(data, salvage=salvage)
    return {k: (list(s), list(v)) for k, (s, _t, v) in cols.items()}, keys, report


def plant(make_run, data: bytes) -> Path:
    """A real, closed run folder whose metrics.bin is replaced by `data`."""
    exp = make_run()
    exp.close()
    (exp.run_dir / METRICS_FILE).write_bytes(data)
    return exp.run_dir


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Python in a child: a crash or a hang fails this test, not the whole suite."""
    # the expman under test (installed or in place) first, never the source tree by accident
    pkg_root = str(Path(expman.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, str(ROOT / "tests")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT / "tests")


# ---- item 1: key id 0xFFFFFFFF ---------------------------------------------------------------

def test_key_id_ffffffff_is_read_by_every_reader(make_run, base):
    data = corpus.key_id_ffffffff()
    assert len(data) < 64
    cols, keys, report = decode(data)
    assert cols == {"x": ([0], [1.5])} and keys == {0xFFFFFFFF: "x"}
    assert report["corrupt_bytes"] == 0
    assert {k: [(s, v) for s, _t, v in pts] for k, pts in refreader.read_metrics(data)[0].items()} \
        == {"x": [(0, 1.5)]}
    run_dir = plant(make_run, data)
    assert list(expman.open_run(run_dir).metrics["x"].values) == [1.5]
    assert [r.path for r in expman.list_runs(base)] == [run_dir]


# ---- item 2 and the format decision: repeated names, conflicting ids --------------------------

@pytest.mark.parametrize("name", ["same_name_two_ids", "two_invalid_utf8_names",
                                  "one_id_two_names", "key_id_2_32", "empty_name"])
def test_a_conflicting_or_invalid_definition_makes_its_frame_corrupt(name):
    data = corpus.CORPUS[name]()
    cols, _keys, report = decode(data)
    assert report["corrupt_at"] and report["corrupt_bytes"] > 0
    assert all(len(set(k)) for k in cols)             # and never a crash or a half-merged key
    with pytest.raises(ValueError):                    # the reference reader agrees
        refreader.read_metrics(data)


def test_repeating_an_identical_definition_is_harmless():
    cols, _keys, report = decode(corpus.same_definition_twice())
    assert cols == {"a": ([0, 1], [1.0, 2.0])} and not report["corrupt_at"]


def test_salvage_reads_around_a_conflicting_frame():
    data = corpus.valid_frame_then_conflict_then_valid()
    assert decode(data)[0] == {"a": ([0], [1.0])}
    cols, _keys, report = decode(data, salvage=True)
    assert cols == {"a": ([0, 2], [1.0, 3.0])} and report["corrupt_at"] == [50]


def test_a_tail_reader_key_table_is_checked():
    data = corpus.key_id_ffffffff()
    with pytest.raises(ExpmanValueError, match="two ids"):
        _core.decode_metrics(data, 16, {0: "a", 1: "a"})
    with pytest.raises(ExpmanValueError, match="2\\*\\*32"):
        _core.decode_metrics(data, 16, {1 << 32: "a"})


# ---- item 11: ids from 2**28 to 2**32 --------------------------------------------------------

def test_large_key_ids_decode_in_memory_bounded_by_the_file():
    data = corpus.key_ids_2_28_to_2_32()
    cols, _keys, _report = decode(data)
    assert cols == {"k268435456": ([7], [0.0]), "k2147483648": ([7], [1.0]),
                    "k4294967294": ([7], [2.0])}
    if SANITIZED or sys.platform != "linux":
        return      # ASan reserves terabytes of shadow: no address-space limit there
    # 256 MiB of address space for the whole child: the old decoder needed 2-8 GiB here
    res = run_isolated("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
        from hostile import corpus
        from expman import _core
        for name in ("key_ids_2_28_to_2_32", "key_id_ffffffff", "many_keys"):
            _core.decode_metrics(corpus.CORPUS[name]())
        print("ok")
    """)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_many_keys_decode():
    cols, keys, _report = decode(corpus.many_keys())
    assert len(keys) == 20_000 and len(cols) == 20_000
    assert cols["m1000"] == ([0], [1000.0]) and cols["m1"] == ([], [])


# ---- item 10: linear scans -------------------------------------------------------------------

def test_crafted_headers_every_8_bytes_do_not_make_the_scan_quadratic():
    """1 MiB of CRC-valid length headers: minutes before (60 s per MiB and growing
    with its square), well under the child's timeout now. bench/ measures it."""
    res = run_isolated("""
        from hostile import corpus
        from expman import _core
        for end_exactly in (True, False):
            data = corpus._headers_every_8_bytes(1 << 20, end_exactly)
            for salvage in (False, True):
                _c, _k, r = _core.decode_metrics(data, salvage=salvage)
                print(r["frames"], r["torn_bytes"] > 0, r["corrupt_bytes"] > 0)
    """, timeout=90)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:4] == ["1 True False"] * 2 + ["1 False True"] * 2


def test_a_prefix_crc_finds_large_frames_after_damage():
    """Payload CRCs after damage come from prefix CRCs (exlog_crc32_combine): the same answer."""
    big = [corpus.row(i, corpus.T0, [(0, float(j)) for j in range(300)]) for i in range(5)]
    head = corpus.metrics(corpus.key(0, "a") + corpus.row(0, corpus.T0, [(0, 1.0)]))
    data = head + b"\x13" * 777 + b"".join(corpus.frame(p) for p in big)
    cols, _keys, report = decode(data, salvage=True)
    assert report["frames"] == 6 and report["corrupt_bytes"] == 777
    assert cols["a"][1] == [1.0] + [float(j) for _ in range(5) for j in range(300)]


# ---- item 16: shapes a writer never makes ----------------------------------------------------

def test_deltas_wrap_modulo_2_64_like_the_reference():
    data = corpus.step_and_time_deltas_overflow()
    cols, _keys, _report = decode(data)
    ref = refreader.read_metrics(data)[0]
    assert cols["a"][0] == [s for s, _t, _v in ref["a"]] == [2**63 - 1, -2, 2**63 - 2]


@pytest.mark.parametrize("name", ["varint_past_64_bits", "huge_point_count",
                                  "same_keys_row_first", "name_runs_past_frame"])
def test_malformed_payloads_are_corrupt_frames(name):
    cols, _keys, report = decode(corpus.CORPUS[name]())
    assert report["corrupt_at"] == [16] and report["frames"] == 0 and report["points"] == 0


def test_offset_outside_the_data_is_a_clear_error():
    data = corpus.key_id_ffffffff()
    for bad in (-1, -(2**40), 3, len(data) + 1):
        with pytest.raises(ExpmanValueError, match=f"offset {bad}"):
            _core.decode_metrics(data, bad)
    assert decode(data)[2]["end"] == len(data)
    assert _core.decode_metrics(data, len(data))[2]["frames"] == 0


@pytest.mark.parametrize("size", [2**30 + 1, 2**63, 2**64 - 1, 2**64 + 5, -1])
def test_buffer_size_out_of_range_is_refused(base, size):
    with pytest.raises(ExpmanValueError, match="buffer_size"):
        expman.Experiment("exp", base_dir=base, buffer_size=size, capture_env=False)


def test_every_corpus_file_decodes_without_error_in_both_modes(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "hostile" / "corpus.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(list(tmp_path.glob("*.bin"))) == len(corpus.CORPUS)
    for path in sorted(tmp_path.glob("*.bin")):
        for salvage in (False, True):
            _cols, _keys, report = _core.decode_metrics(path.read_bytes(), salvage=salvage)
            assert report["end"] <= path.stat().st_size, path.name


def test_pid_zero_negative_or_huge_is_never_a_live_process():
    from expman.liveness import pid_alive
    assert not any(pid_alive(p) for p in (0, -1, -(2**31), 2**62))
    assert pid_alive(os.getpid())


# ---- names (issue 14 item 15, issue 15 item 15) ----------------------------------------------

@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "esc\x1b[31m", "del\x7f", "c1\x85", "\x9f"])
def test_control_characters_in_metric_names_are_refused(make_run, bad):
    exp = make_run()
    with pytest.raises(ExpmanValueError, match="control character") as info:
        exp.log_metrics({bad: 1.0})
    assert repr(bad)[1:-1][:20] in str(info.value)


@pytest.mark.parametrize("bad", ["bad\n", "bad\ud800", "x" * 5000, ""])
def test_a_rejected_call_leaves_no_phantom_metric(make_run, bad):
    exp = make_run()
    exp.log_metrics({"kept": 1.0}, step=0)
    with pytest.raises(ExpmanValueError):
        exp.log_metrics({"good_new": 1.0, bad: 2.0}, step=1)
    exp.log_metrics({"kept": 2.0}, step=2)
    exp.close()
    assert set(expman.open_run(exp.run_dir).metrics) == {"kept"}
    assert exp.stats()["keys"] == 1


def test_a_resumed_run_with_a_gap_in_its_ids_gets_a_fresh_id(make_run, base):
    data = corpus.metrics(corpus.key(0, "a") + corpus.key(2, "c")
                          + corpus.row(0, corpus.T0, [(0, 1.0), (2, 3.0)]))
    run_dir = plant(make_run, data)
    exp = make_run(run_name=run_dir.name, resume=True)
    exp.log_metrics({"d": 4.0, "c": 5.0}, step=1)
    exp.close()
    cols, _keys, report = decode((run_dir / METRICS_FILE).read_bytes())
    assert not report["corrupt_at"]
    assert cols == {"a": ([0], [1.0]), "c": ([0, 1], [3.0, 5.0]), "d": ([1], [4.0])}


# ---- item 4: threads defining the same new keys on a small ring -------------------------------

def test_threads_defining_the_same_long_new_keys_keep_the_ring_whole(make_run):
    """4 threads, names of about 4 KB, a 64 KiB ring: duplicated records and a hang before."""
    n_threads, n_keys = 4, 60
    names = [f"{i:03d}" + "x" * 4000 for i in range(n_keys)]
    for trial in range(3):
        exp = make_run(run_name=f"t{trial}", buffer_size=64 << 10)
        start = threading.Barrier(n_threads)
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                start.wait()  # noqa: B023 (joined in this iteration)
                for i, name in enumerate(names):
                    exp.log_metrics({name: float(t), f"t{t}": float(i)}, step=i)  # noqa: B023
            except BaseException as e:      # reported below, not lost in the thread
                errors.append(e)  # noqa: B023

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in threads), "a producer hangs"
        assert errors == []
        exp.close()
        stats = exp.stats()
        assert stats["accepted"] == stats["written"] == n_threads * n_keys, stats
        assert stats["keys"] == n_keys + n_threads
        cols, keys, report = decode((exp.run_dir / METRICS_FILE).read_bytes())
        assert not report["corrupt_at"] and report["torn_bytes"] == 0
        assert len(keys) == n_keys + n_threads
        for name in names:
            assert sorted(cols[name][1]) == [float(t) for t in range(n_threads)]
        for t in range(n_threads):
            assert cols[f"t{t}"] == (list(range(n_keys)), [float(i) for i in range(n_keys)])


# ---- item 5: a stalled writer ----------------------------------------------------------------

def _fill(exp, name: str = "v") -> None:
    """Log until the (paused) writer's ring refuses a row."""
    for i in range(1_000_000):
        before = exp.stats()["dropped"]
        exp.log_metrics({name: float(i)})
        if exp.stats()["dropped"] > before:
            return
    raise AssertionError("the ring never filled")


def test_events_and_new_keys_honour_drop_when_the_writer_stalls(make_run):
    exp = make_run(buffer_size=64 << 10, on_full="drop")
    exp._pause_writer(1)
    _fill(exp)
    exp.info("x" * 2000)                    # returns at once: dropped, counted
    dropped = exp.stats()["dropped"]
    exp.log_metrics({"new_key": 1.0})       # no room for its definition or its row: dropped
    stats = exp.stats()
    # the 40-byte definition may still fit where the 48-byte row does not (and then the
    # name's copy in events.jsonl is dropped): either way the call returned at once
    assert stats["events_dropped"] >= 1 and stats["dropped"] == dropped + 1
    exp._pause_writer(0)
    exp.close()
    stats = exp.stats()
    assert stats["accepted"] == stats["written"] + stats["dropped"]
    assert stats["events"] == stats["events_written"] + stats["events_dropped"]


def test_events_and_new_keys_honour_block_timeout_when_the_writer_stalls(make_run):
    exp = make_run(buffer_size=64 << 10, block_timeout=0.2)
    exp._pause_writer(1)
    with pytest.warns(RuntimeWarning, match="dropping a record"):
        _fill(exp)
    with pytest.warns(RuntimeWarning, match="dropping an event"):
        exp.warn("y" * 2000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.log_metrics({"late_key": 1.0})  # the name or, if the name still fits, the row
    assert caught and all("dropping" in str(w.message) for w in caught), caught
    exp._pause_writer(0)
    exp.close()
    stats = exp.stats()
    assert stats["accepted"] == stats["written"] + stats["dropped"] and stats["dropped"] >= 2
    assert stats["events_dropped"] >= 1


def test_close_with_a_frozen_writer_raises_instead_of_hanging(make_run):
    exp = make_run(buffer_size=64 << 10, block_timeout=0.2)
    exp.log_metrics({"a": 1.0}, step=0)
    exp._pause_writer(2)                    # ignores close too, like fsfreeze
    with pytest.raises(WriterError) as info:
        exp._stop(timeout=0.3)
    assert info.value.errno == errno.ETIMEDOUT and "still writing" in str(info.value)
    with pytest.raises(WriterError):        # asked again: waits again, still bounded
        exp._stop(timeout=0.1)
    exp._pause_writer(0)                    # the disk thaws: the writer finishes
    assert exp._stop(timeout=30) is True
    assert exp._stop() is False
    exp._close_fds()
    assert decode((exp.run_dir / METRICS_FILE).read_bytes())[0] == {"a": ([0], [1.0])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp._close_at_exit("FINISHED", None)


def test_close_itself_is_bounded_by_block_timeout(make_run):
    exp = make_run(buffer_size=64 << 10, block_timeout=0.1)
    exp._pause_writer(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fill(exp)
        with pytest.raises(WriterError, match="still writing after 5.0 s"):
            exp.close()                     # status event dropped after 0.1 s, stop after 5 s
    assert any("dropping an event" in str(w.message) for w in caught)
    exp._pause_writer(0)
    assert exp._stop(timeout=30) is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp._close_at_exit("FINISHED", None)
    assert exp.status == "FINISHED"


RUN_FILES = Path(__file__).parent / "hostile" / "runs"


@pytest.mark.parametrize("name", ["world_2000000", "world_1e18"])
def test_a_crafted_world_size_is_damaged_not_a_loop(name, tmp_path, monkeypatch):
    """Issue 20 item 7: a small run.json claiming 2,000,000 or 10**18 ranks lists as
    DAMAGED at once (no rank is probed), opens with the reason in integrity, and
    verify fails naming it; nothing allocates or loops per claimed rank."""
    from expman import liveness
    run = tmp_path / "hostile" / "big"
    run.mkdir(parents=True)
    (run / "run.json").write_bytes((RUN_FILES / f"{name}.json").read_bytes())
    probed = []
    real = liveness.stream_status
    monkeypatch.setattr(liveness, "stream_status",
                        lambda meta, path, rank=0: probed.append(rank) or real(meta, path, rank))
    (line,) = expman.list_runs(tmp_path)
    assert line.status == "DAMAGED" and "world_size" in line.damaged
    assert probed == []
    opened = expman.open_run(run)
    assert "world_size" in opened.integrity["meta_error"]
    assert opened.status == "RUNNING"      # another host, a fresh heartbeat: one stream
    assert len(probed) <= 3
    report = expman.verify_run(run)
    assert not report["ok"] and any("world_size" in p for p in report["problems"])


def test_a_crafted_heartbeat_interval_is_bounded(tmp_path):
    """A heartbeat interval of 1e308 would keep a dead run on another host RUNNING
    forever: it is bounded to a day, so a heartbeat two days old is CRASHED."""
    import time

    from expman import layout, liveness
    from expman._fsutil import read_json
    run = tmp_path / "hostile" / "big"
    run.mkdir(parents=True)
    (run / "run.json").write_bytes((RUN_FILES / "heartbeat_1e308.json").read_bytes())
    old = time.time() - 2 * 86400 * layout.STALE_AFTER
    os.utime(run / "run.json", (old, old))
    meta = read_json(run / "run.json")
    assert meta["heartbeat_interval"] == 1e308
    assert liveness.stream_status(meta, run) == "CRASHED"


# ==== issue 20: the file layer ===============================================================

from hostile import runfiles  # noqa: E402


# ---- item 8: a sparse metrics.bin claims gigabytes on 4 KiB of disk ---------------------------

def test_a_sparse_metrics_file_is_read_only_as_far_as_it_holds_bytes(make_run, base):
    """1 GiB and 64 GiB sparse files under a 400 MiB address-space limit: the whole
    apparent size was read (1.1 GB RSS; MemoryError for the whole base)."""
    exp = make_run()
    exp.close()
    runfiles.sparse(exp.run_dir / METRICS_FILE, runfiles.valid_metrics(3), 1 << 30)
    other = make_run(run_name="other")
    other.close()
    runfiles.sparse(other.run_dir / METRICS_FILE, runfiles.valid_metrics(2), 64 << 30)
    if SANITIZED or sys.platform != "linux":
        return
    res = run_isolated(f"""
        import resource, warnings
        resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))
        warnings.simplefilter("ignore")
        import expman
        print(sorted(len(expman.open_run(r.path).metrics["a"].values)
                     for r in expman.list_runs({str(base)!r})))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[2, 3]"


def test_without_hole_detection_a_run_of_zeros_ends_the_read(tmp_path, monkeypatch):
    """The Windows twin: no SEEK_HOLE, so a chunk of nothing but zeros ends the read."""
    from expman import _fsutil
    monkeypatch.setattr(_fsutil, "_SEEK_HOLE", None)
    monkeypatch.setattr(_fsutil, "READ_CHUNK", 1 << 16)
    path = runfiles.sparse(tmp_path / "m.bin", runfiles.valid_metrics(3), 64 << 20)
    data = _fsutil.read_regular(path)
    assert data.startswith(runfiles.valid_metrics(3)) and len(data) <= 1 << 17
    small = runfiles.sparse(tmp_path / "s.bin", b"x" * 100, 1000)     # below a chunk: as it is
    assert _fsutil.read_regular(small) == b"x" * 100 + bytes(900)


def test_large_files_on_disk_are_read_whole_and_exact(tmp_path, monkeypatch):
    """Past a chunk, a file whose blocks are on disk is one read, zeros and all;
    offsets and chunk boundaries change nothing."""
    from expman import _fsutil
    monkeypatch.setattr(_fsutil, "READ_CHUNK", 1 << 16)
    data = os.urandom(3 << 16) + bytes(2 << 16) + os.urandom(5)   # a whole chunk of real zeros
    (tmp_path / "big.bin").write_bytes(data)
    for offset in (0, 1, (1 << 16) + 3, len(data) - 1, len(data)):
        assert _fsutil.read_regular(tmp_path / "big.bin", offset) == data[offset:]


# ---- item 9: JSON nested past what any reader can handle ---------------------------------------

@pytest.mark.parametrize("depth", [300, 1000])
def test_deeply_nested_params_make_that_run_damaged(make_run, base, depth):
    from expman._fsutil import MAX_JSON_DEPTH, read_json
    from expman.errors import CorruptRunError
    good = make_run(run_name="good")
    good.log_params({"lr": 0.1})
    good.close()
    bad = make_run(run_name="bad")
    bad.close()
    path = bad.run_dir / "params.json"
    path.write_bytes(runfiles.deep_json(depth))
    with pytest.raises(CorruptRunError, match=f"params.json: JSON nested deeper than {MAX_JSON_DEPTH}"):
        read_json(path)
    with pytest.warns(RuntimeWarning, match="nested deeper"):
        assert expman.open_run(bad.run_dir).params == {}       # the metrics stay readable
    assert expman.open_run(good.run_dir).params == {"lr": 0.1}
    listed = {r.path.name: r for r in expman.list_runs(base)}
    assert set(listed) == {"good", "bad"}


def test_nesting_up_to_the_limit_is_read():
    from expman._fsutil import MAX_JSON_DEPTH, json_depth, parse_json
    doc = parse_json(runfiles.deep_json(MAX_JSON_DEPTH), "p.json")
    assert json_depth(doc) == MAX_JSON_DEPTH
    assert json_depth(parse_json(b'[[1], {"a": [2, {"b": []}]}]', "p.json")) == 5
    assert json_depth(parse_json(b'{"a": "[[[[{{{{"}', "p.json")) == 1


# ---- item 20: names that display as other names ------------------------------------------------

@pytest.mark.parametrize("char", list("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                                      "\u200e\u200f\u061c"))
def test_bidi_controls_are_refused_in_names(base, char):
    from expman._fsutil import check_name
    name = f"run{char}gpj.exe"
    with pytest.raises(ExpmanValueError, match=f"U\\+{ord(char):04X}"):
        check_name("run_name", name)
    with pytest.raises(ExpmanValueError, match="bidirectional control"):
        expman.Experiment("exp", name, base_dir=base, capture_env=False)
    with pytest.raises(ExpmanValueError, match="bidirectional control"):
        expman.Experiment(f"e{char}", base_dir=base, capture_env=False)


# ---- item 5: the environment probe in someone else's repository --------------------------------

def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_the_git_probe_never_runs_the_repositorys_commands_nor_takes_its_lock(tmp_path, monkeypatch):
    """`git status` ran the repository's core.fsmonitor command (any program) and
    could take its index.lock."""
    import shutil
    from expman import environment
    monkeypatch.delenv("LD_PRELOAD", raising=False)     # tools/sanitize.sh: git is not ours
    if shutil.which("git") is None:
        if os.environ.get("CI") == "true":
            raise AssertionError("git is needed under CI")
        pytest.skip("git is not installed")
    repo, marker = tmp_path / "repo", tmp_path / "fsmonitor-ran"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f").write_text("x")
    _git(repo, "add", "f")
    _git(repo, "commit", "-qm", "m")
    _git(repo, "config", "core.fsmonitor", f"touch '{marker}'; false")
    index_before = (repo / ".git" / "index").stat().st_mtime_ns
    assert environment.slow(str(repo))["git"]["dirty"] is False
    (repo / "f").write_text("changed")
    git = environment.slow(str(repo))["git"]
    assert git["dirty"] is True and len(git["commit"]) == 40
    assert not marker.exists(), "the repository's fsmonitor command ran"
    assert (repo / ".git" / "index").stat().st_mtime_ns == index_before
    assert not (repo / ".git" / "index.lock").exists()


# ---- item 20: rank variables are ASCII digits, bounded ---------------------------------------

@pytest.mark.parametrize("var, value, says", [
    ("RANK", "1_0", "ASCII digits"), ("RANK", "+1", "ASCII digits"),
    ("RANK", "\u0661", "ASCII digits"), ("RANK", "10**30", "ASCII digits"),
    ("RANK", "-1", "ASCII digits"), ("RANK", "", "ASCII digits"),
    ("WORLD_SIZE", "1" + "0" * 30, "larger than 65536"), ("WORLD_SIZE", "65537", "larger than"),
    ("WORLD_SIZE", "9" * 5000, "larger than"), ("LOCAL_RANK", "0x1", "ASCII digits")])
def test_launcher_numbers_are_ascii_digits_and_bounded(var, value, says):
    from expman import launcher
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "job"}
    env[var] = value
    with pytest.raises(ExpmanValueError, match=f"{var}=.*{says}"):
        launcher.detect(None, env)


def test_launcher_accepts_plain_digits_up_to_the_bound():
    from expman import launcher
    got = launcher.detect(None, {"RANK": " 65535\n", "WORLD_SIZE": "65536", "LOCAL_RANK": "3",
                                 "TORCHELASTIC_RUN_ID": "job"})
    assert (got.rank, got.world_size, got.local_rank) == (65535, 65536, 3)


# ---- the one guarded layer: no other open of a run file in the package ---------------------------

# (file, function, callee) -> why this open is not of a run file, or is guarded otherwise
ALLOWED_OPENS = {
    ("artifacts.py", "_try_reflink", "open"): "reads the user's source file being saved",
    ("artifacts.py", "_copy_and_hash", "open"): "the user's source file, and a descriptor "
                                                "from create_exclusive (guarded)",
    ("artifacts.py", "_hash_fd", "open"): "wraps a descriptor already opened by the caller",
    ("cli/__init__.py", "main", "os.open"): "os.devnull",
    ("cli/demo.py", "cmd_demo", "weights.write_text"): "the demo's own input file, not a run",
    ("disk.py", "_mount_points", "open"): "/proc/self/mountinfo",
    ("experiment.py", "_start_muted", "os.open"): "os.devnull",
    ("experiment.py", "_new_media_file", "os.open"): "O_CREAT|O_EXCL: never follows a link",
    ("experiment.py", "_new_media_file", "os.fdopen"): "the O_EXCL descriptor above",
    ("media.py", "image_to_png", "path.read_bytes"): "the user's image file being logged",
    ("media.py", "image_to_png", "Image.open"): "the user's image file being logged",
    ("refreader.py", "read_history", "open"): "the reference reader: plain Python on "
                                              "purpose, for tests and third-party readers",
    ("refreader.py", "_prefix", "open"): "the reference reader (see read_history)",
    ("sync.py", "put_file", "self.fs.open"): "an object-store upload (fsspec), not a local file",
    ("tbio.py", "_event_values", "im.read_bytes"): "media_read.Image.read_bytes (guarded)",
    ("tbio.py", "read_records", "os.fdopen"): "a descriptor from _fsutil.open_regular",
    # not a run file, or opened by path after a check (documented)
    ("lake.py", "_write_atomic", "open"): "the lake's own output file, not a run file",
    ("dashboard/access.py", "read_token", "open"): "the user's --token-file, not a run file",
    ("watch/rules.py", "parse_config", "open"): "the user's watch config (TOML), not a run file",
    ("mlflow.py", "write", "path.write_text"): "a file of the drop-in's own mkdtemp scratch "
                                               "folder, then saved by save_artifact",
    ("mlflow.py", "log_text", "path.write_text"): "the same scratch folder (log_text)",
    ("index.py", "save", "open"): "wraps the descriptor create_exclusive gave (O_EXCL, no link)",
    ("sqlviews.py", "_exclusive", "os.open"): "the SQL cache's own lock file ($EXPMAN_CACHE_DIR)",
    ("sqlviews.py", "_metrics_view", "mark.write_text"): "the SQL cache's own signature file",
    ("sqlviews.py", "_metrics_view", "mark.read_text"): "the SQL cache's own signature file",
}
_OPENERS = {"open", "read_bytes", "read_text", "write_bytes", "write_text", "fdopen"}
_GUARDED = {"open_nofollow", "create_exclusive", "open_under"}


def _opens_in(path: Path) -> list[tuple[str, str, int]]:
    import ast
    tree = ast.parse(path.read_text(encoding="utf-8"))
    owner: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                owner[id(sub)] = node.name          # innermost function wins (walk order)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "open":
            callee = "open"
        elif isinstance(f, ast.Attribute) and f.attr in _OPENERS:
            callee = f"{ast.unparse(f.value)}.{f.attr}"
        else:
            continue
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Call) and getattr(arg.func, "id", getattr(arg.func, "attr", "")) \
                in _GUARDED:
            continue                                # open(open_nofollow(...)): guarded
        found.append((owner.get(id(node), "<module>"), callee, node.lineno))
    return found


def test_run_files_are_opened_only_through_the_guarded_layer():
    """Every open/read_bytes/read_text/write_* in the package is in expman._fsutil,
    wraps one of its descriptors, or is listed above with the reason it is not a
    run file. A new plain open() of a run file fails here."""
    pkg = ROOT / "expman"
    unlisted = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg).as_posix()
        if rel == "_fsutil.py":
            continue
        for func, callee, line in _opens_in(path):
            if (rel, func, callee) not in ALLOWED_OPENS:
                unlisted.append(f"expman/{rel}:{line} {callee}() in {func}")
    assert unlisted == [], "open run files through expman._fsutil: " + "; ".join(unlisted)


def test_the_scan_sees_a_plain_open(tmp_path):
    """The scan itself: an open() of a path is found, one of a guarded descriptor is not."""
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom pathlib import Path\n"
                   "def f(p):\n    return open(p, 'rb').read() + Path(p).read_bytes()\n"
                   "def g(p):\n    return open(open_nofollow(p, os.O_RDONLY), 'rb')\n")
    assert sorted((f, c) for f, c, _ in _opens_in(src)) == [("f", "Path(p).read_bytes"), ("f", "open")]
