"""sync to object storage (a real moto S3 server on 127.0.0.1) and to a path:
live runs, SIGKILL mid-upload, resume, byte-for-byte copies, reading back from s3://."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from typing import Any
from pathlib import Path

import pytest

from conftest import need

import expman
from expman import remote
from expman.sync import sync

need("s3fs")
need("moto.server")

ROOT = Path(__file__).resolve().parents[1]

LIVE_WRITER = """
import sys, time, pathlib, expman
base, stop, art = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
with expman.Experiment("live", "r1", base_dir=base, capture_env=False, flush_interval=0.01,
                       system_metrics=False) as exp:
    exp.log_params({"lr": 0.1, "depth": 3})
    exp.save_artifact(art)
    i = 0
    while not stop.exists():
        exp.log_metrics({"loss": 1.0 / (i + 1), "acc": i * 1e-3})
        if i % 200 == 0:
            exp.info(f"step {i}")
        if i % 10 == 0:
            time.sleep(0.001)       # a training loop's pace, not a disk benchmark
        i += 1
"""

KILLABLE_SYNC = """
import sys, pathlib, time
from expman.sync import sync
marker, seen = pathlib.Path(sys.argv[3]), []
def progress(path, nbytes):
    seen.append(path)
    if len(seen) == 5:
        marker.touch()          # the test SIGKILLs us now, midway through the uploads
        time.sleep(3600)        # held here until the kill (however slow the machine)
sync(sys.argv[1], sys.argv[2], progress=progress, batch=2)   # small groups: a kill lands midway
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the expman under test (installed in CI), never the source tree ahead of it
    env["PYTHONPATH"] = os.pathsep.join([str(Path(expman.__file__).resolve().parent.parent),
                                         env.get("PYTHONPATH", "")])
    return env


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


def run_files(run_dir: Path) -> dict[str, bytes]:
    """A run's files, less the writer locks (machine-local: never synced)."""
    from expman.layout import is_machine_local
    return {p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")
            and not is_machine_local(p.name)}


def assert_exact_copy(base: Path, copy: Path) -> None:
    local = {f"{d.parent.name}/{d.name}" for d in base.glob("*/*") if (d / "run.json").is_file()}
    copied = {f"{d.parent.name}/{d.name}" for d in copy.glob("*/*") if (d / "run.json").is_file()}
    assert copied == local
    for rid in sorted(local):
        assert run_files(copy / rid) == run_files(base / rid), rid


def make_finished(base: Path, n: int, points: int = 400) -> None:
    art = base.parent / "weights.bin"
    art.write_bytes(os.urandom(50_000))
    for i in range(n):
        with expman.Experiment("done", f"r{i:02d}", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_params({"lr": 10.0 ** -i, "i": i})
            for step in range(points):
                exp.log_metrics({"loss": 1.0 / (step + 1), "i": float(i)}, step=step)
            exp.info(f"run {i}")
            if i % 10 == 0:
                exp.save_artifact(art)


def test_live_run_sync_killed_midway_then_resumed_is_an_exact_copy(s3_bucket, tmp_path):
    base = tmp_path / "experiments"
    make_finished(base, 12)
    url = f"s3://{s3_bucket}/team/experiments"
    stop, art = tmp_path / "stop", tmp_path / "config.yaml"
    art.write_text("lr: 0.1\n")
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(base), str(stop), str(art)],
                              env=child_env(), cwd=tmp_path)
    try:
        metrics = base / "live" / "r1" / "metrics.bin"
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 4096, what="live data")

        # 1. a sync killed with SIGKILL in the middle of its uploads
        marker = tmp_path / "uploading"
        killed = subprocess.Popen([sys.executable, "-c", KILLABLE_SYNC, str(base), url,
                                   str(marker)], env=child_env(), cwd=tmp_path)
        wait_for(lambda: marker.exists() or killed.poll() is not None, what="first uploads")
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(30) == -signal.SIGKILL, "the sync ended before it could be killed"

        # what a reader sees now is consistent: a run.json never points past the data
        partial = remote.localize(url, cache_dir=tmp_path / "partial")
        seen = [d for d in partial.glob("*/*") if (d / "run.json").is_file()]
        assert len(seen) < 13                               # it was stopped midway
        for d in seen:
            run = expman.open_run(d)
            if run.meta["status"] == "FINISHED":
                assert run.integrity["rows"] == run.meta["stats"]["written"], d
                assert run.integrity["torn_bytes"] == 0

        # 2. sync again while the run is live: resumes where the kill left it
        live = sync(base, url)
        assert live["errors"] == {} and live["runs"] == 13
    finally:
        stop.touch()
        assert writer.wait(60) == 0
    # 3. the run has ended: one more sync, and the copy is exact, byte for byte
    final = sync(base, url)
    assert final["bytes_appended"] > 0                       # the live run's tail
    copy = remote.localize(url, cache_dir=tmp_path / "fresh")
    assert_exact_copy(base, copy)
    assert sync(base, url, verify=True)["objects"] == 0      # nothing left to send

    # 4. read it back through the URL
    run = expman.open_run(remote.localize(f"{url}/live/r1"))        # one run by its URL
    here = expman.open_run(base / "live" / "r1")
    assert run.status == "FINISHED" and run.params == {"lr": 0.1, "depth": 3}
    assert list(run.metrics["loss"].values) == list(here.metrics["loss"].values)
    assert [a["name"] for a in run.artifacts] == ["config.yaml"]
    listed = expman.list_runs(remote.localize(url, cache_dir=copy))   # a refresh: no chunk re-read
    assert sorted(r.id for r in listed) == sorted(r.id for r in expman.list_runs(base))


def test_only_appended_bytes_are_sent(s3_bucket, tmp_path):
    base = tmp_path / "experiments"
    make_finished(base, 2, points=50)
    url = f"s3://{s3_bucket}/x"
    first = sync(base, url)
    assert first["objects"] > 0
    assert sync(base, url)["objects"] == 0                   # unchanged: nothing sent
    run_dir = base / "done" / "r01"
    sizes = {n: (run_dir / n).stat().st_size for n in ("metrics.bin", "events.jsonl")}
    with expman.Experiment("done", "r01", base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as exp:
        for step in range(50, 80):
            exp.log_metrics({"loss": -1.0}, step=step)
    growth = sum((run_dir / n).stat().st_size - s for n, s in sizes.items())
    again = sync(base, url)
    assert again["bytes_appended"] == growth                 # exactly the new bytes
    metas = sum((run_dir / n).stat().st_size for n in ("run.json", "summary.json"))
    assert again["bytes_whole"] == metas                     # params unchanged: not re-sent
    fs, root = remote.filesystem(url)
    chunks = fs.ls(f"{root}/done/r01/metrics.bin.chunks")
    assert len(chunks) == 2                                  # the old chunk and the new one
    assert_exact_copy(base, remote.localize(url))


def test_a_cut_tail_is_resent(s3_bucket, tmp_path):
    """A crash leaves a torn frame; the resumed run cuts it and writes on. The
    synced copy follows the file, not the bytes it once had."""
    base = tmp_path / "experiments"
    make_finished(base, 1, points=30)
    url = f"s3://{s3_bucket}/cut"
    metrics = base / "done" / "r00" / "metrics.bin"
    with open(metrics, "ab") as f:
        f.write(bytes(4096))           # space a crash allocated but never filled: a torn tail
    sync(base, url)
    with expman.Experiment("done", "r00", base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": 0.5}, step=99)
    sync(base, url)
    copy = remote.localize(url)
    assert_exact_copy(base, copy)
    assert expman.open_run(copy / "done" / "r00").metrics["loss"].last == 0.5


def test_sync_to_a_path_is_a_plain_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base, mirror = tmp_path / "experiments", tmp_path / "mnt" / "shared"
    make_finished(base, 3, points=40)
    assert sync(base, str(mirror))["errors"] == {}
    assert_exact_copy(base, mirror)
    assert remote.localize(f"file://{mirror}") == mirror
    run_dir = base / "done" / "r02"
    before = (run_dir / "metrics.bin").stat().st_size
    with expman.Experiment("done", "r02", base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": 0.1}, step=100)
    again = sync(base, str(mirror))
    grown = (run_dir / "metrics.bin").stat().st_size - before
    assert grown > 0 and again["bytes_appended"] >= grown
    assert_exact_copy(base, mirror)
    assert expman.open_run(mirror / "done" / "r02").metrics["loss"].last == 0.1


def test_errors_name_what_is_wrong(s3_bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="no base dir"):
        sync(tmp_path / "nothing", str(tmp_path / "out"))
    with pytest.raises(expman.errors.RunNotFoundError, match=f"nothing at s3://{s3_bucket}/nope"):
        remote.localize(f"s3://{s3_bucket}/nope")


def test_cli_module(tmp_path, monkeypatch, capsys):
    import json

    from expman.cli import sync as sync_cmd
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "experiments"
    make_finished(base, 2, points=10)
    parser = argparse.ArgumentParser(prog="expman")
    sync_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sync", str(base), str(tmp_path / "copy"), "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runs"] == 2 and printed["objects"] > 0
    assert_exact_copy(base, tmp_path / "copy")


def test_the_dashboard_serves_a_synced_url(s3_bucket, tmp_path, monkeypatch):
    """`expman serve s3://...`: the runs a sync uploaded, listed and charted, and a run
    synced after the server started appears within the refresh interval."""
    import json
    import urllib.request
    from expman import dashboard
    from expman.dashboard.testing import running_server
    monkeypatch.setattr(dashboard, "REMOTE_POLL", 0.2)
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "experiments"
    make_finished(base, 1, points=40)
    url = f"s3://{s3_bucket}/served"
    sync(base, url)
    with running_server(url) as page:
        def runs() -> list[str]:
            with urllib.request.urlopen(page + "api/runs", timeout=10) as r:
                return sorted(x["id"] for x in json.load(r)["runs"])
        assert runs() == ["done/r00"]
        with urllib.request.urlopen(page + "api/runs/done/r00/series?metric=loss&points=100",
                                    timeout=10) as r:
            series = json.load(r)
        assert series["count"] == 40 and series["raw"] and series["y"][0] == 1.0
        with expman.Experiment("done", "r01", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_metrics({"loss": 0.5}, step=0)
        sync(base, url)
        wait_for(lambda: runs() == ["done/r00", "done/r01"], timeout=30, what="the new run")


# ---- issue 20: a shared target others can write into, and crafted buckets -----------------------

import threading  # noqa: E402

from hostile import runfiles  # noqa: E402


def one_run(base: Path, name: str = "r", exp: str = "e", points: int = 5) -> Path:
    with expman.Experiment(exp, name, base_dir=base, capture_env=False,
                           system_metrics=False) as run:
        for step in range(points):
            run.log_metrics({"loss": float(step)}, step=step)
    return run.run_dir


def grow(base: Path, name: str = "r", exp: str = "e") -> None:
    with expman.Experiment(exp, name, base_dir=base, resume=True, capture_env=False,
                           system_metrics=False) as run:
        run.log_metrics({"loss": 99.0}, step=99)


def test_sync_never_writes_through_a_link_planted_in_the_target(tmp_path, monkeypatch):
    """Another user of a shared mirror replaced metrics.bin with a link to their file:
    the next sync truncated it and wrote metrics into it."""
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base, mirror = tmp_path / "experiments", tmp_path / "mirror"
    one_run(base)
    assert sync(base, str(mirror))["errors"] == {}
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"theirs")
    (mirror / "e" / "r" / "metrics.bin").unlink()
    (mirror / "e" / "r" / "metrics.bin").symlink_to(victim)
    grow(base)
    result = sync(base, str(mirror))
    assert victim.read_bytes() == b"theirs"
    assert "e/r" in result["errors"] and "symlink" in result["errors"]["e/r"]
    assert (mirror / "e" / "r" / "metrics.bin").is_symlink()


def test_a_linked_folder_in_the_target_never_sends_a_run_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base, mirror, elsewhere = tmp_path / "experiments", tmp_path / "mirror", tmp_path / "elsewhere"
    one_run(base, exp="e")
    one_run(base, exp="f", name="r")
    one_run(base, exp="g", name="ok")
    mirror.mkdir()
    elsewhere.mkdir()
    (mirror / "e").symlink_to(elsewhere, target_is_directory=True)     # the experiment folder
    (mirror / "f").mkdir()
    (mirror / "f" / "r").symlink_to(elsewhere, target_is_directory=True)   # the run folder
    result = sync(base, str(mirror))
    assert list(elsewhere.iterdir()) == []
    assert set(result["errors"]) == {"e/r", "f/r"}
    assert all("link" in why for why in result["errors"].values())
    assert expman.open_run(mirror / "g" / "ok").metrics["loss"].last == 4.0


@pytest.mark.parametrize("where", ["notes.json", "artifacts/weights.bin", "output.log"])
def test_a_fifo_in_a_run_folder_never_hangs_sync(tmp_path, monkeypatch, where):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base, mirror = tmp_path / "experiments", tmp_path / "mirror"
    run_dir = one_run(base)
    (run_dir / where).parent.mkdir(parents=True, exist_ok=True)
    runfiles.fifo(run_dir / where)
    out: list = []
    th = threading.Thread(target=lambda: out.append(sync(base, str(mirror))), daemon=True)
    th.start()
    th.join(120)
    assert not th.is_alive(), "sync hangs on a FIFO"
    assert out[0]["errors"] == {}
    assert not (mirror / "e" / "r" / where).exists()
    assert expman.open_run(mirror / "e" / "r").metrics["loss"].last == 4.0


def run_uuid(run_dir: Path) -> str:
    return expman._fsutil.read_json(run_dir / "run.json")["uuid"]


@pytest.mark.parametrize("kind", ["path", "s3"])
def test_two_machines_never_replace_each_others_run(tmp_path, monkeypatch, request, kind):
    """The same run id from two machines (fixed names, SLURM ids of two clusters):
    the second sync used to replace the first's data silently."""
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    if kind == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/team"
    else:
        url = str(tmp_path / "mirror")
    a = one_run(tmp_path / "machine-a", points=5)
    b = one_run(tmp_path / "machine-b", points=3)
    assert run_uuid(a) != run_uuid(b)
    assert sync(a.parent.parent, url)["errors"] == {}
    refused = sync(b.parent.parent, url)
    assert "another run" in refused["errors"]["e/r"] and run_uuid(a) in refused["errors"]["e/r"]
    got = remote.localize(url, cache_dir=tmp_path / "look1") if kind == "s3" else Path(url)
    assert run_uuid(got / "e" / "r") == run_uuid(a)
    assert expman.open_run(got / "e" / "r").metrics["loss"].last == 4.0
    grow(a.parent.parent)                       # the owner goes on syncing
    assert sync(a.parent.parent, url)["errors"] == {}
    assert sync(b.parent.parent, url, force=True)["errors"] == {}
    got = remote.localize(url, cache_dir=tmp_path / "look2") if kind == "s3" else Path(url)
    assert run_uuid(got / "e" / "r") == run_uuid(b)
    assert list(expman.open_run(got / "e" / "r").metrics["loss"].values) == [0.0, 1.0, 2.0]


def test_cli_force_replaces_another_machines_run(tmp_path, monkeypatch, capsys):
    from expman.cli import sync as sync_cmd
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    a, b = one_run(tmp_path / "a"), one_run(tmp_path / "b", points=2)
    parser = argparse.ArgumentParser(prog="expman")
    sync_cmd.add_parser(parser.add_subparsers(dest="command"))
    target = str(tmp_path / "copy")
    for base, extra, code in ((a, [], 0), (b, [], 1), (b, ["--force"], 0)):
        args = parser.parse_args(["sync", str(base.parent.parent), target, *extra])
        assert args.func(args) == code
    assert "--force" in capsys.readouterr().err
    assert run_uuid(tmp_path / "copy" / "e" / "r") == run_uuid(b)


def test_a_run_made_before_uuids_gets_one_on_resume(tmp_path):
    run_dir = one_run(tmp_path / "x")
    meta = expman._fsutil.read_json(run_dir / "run.json")
    del meta["uuid"]
    expman._fsutil.atomic_write_json(run_dir / "run.json", meta)
    grow(tmp_path / "x")
    assert len(run_uuid(run_dir)) == 36


# ---- reading a bucket: per-run isolation, streamed objects, capped metadata ---------------------

def memory_bucket(tmp_path: Path, monkeypatch) -> tuple[Any, str]:
    import fsspec
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    root = f"/b{uuid.uuid4().hex[:10]}"
    base = tmp_path / "experiments"
    one_run(base, "good")
    one_run(base, "bad1")
    one_run(base, "bad2")
    assert sync(base, f"memory://{root}")["errors"] == {}
    return fs, root


def test_one_crafted_key_never_aborts_localize_for_the_base(s3_bucket, tmp_path):
    base, url = tmp_path / "experiments", f"s3://{s3_bucket}/team"
    for name in ("good", "bad1", "bad2"):
        one_run(base, name)
    assert sync(base, url)["errors"] == {}
    fs, root = remote.filesystem(url)
    fs.pipe({f"{root}/e/bad1/.chunks/{remote.chunk_name(0, 3, zlib.crc32(b'abc'))}": b"abc",
             f"{root}/e/bad2/notes": b"a file",                 # a file, and a prefix too
             f"{root}/e/bad2/notes/inner.txt": b"under it"})
    with pytest.warns(RuntimeWarning, match="not copied"):
        local = remote.localize(url, cache_dir=tmp_path / "local")
    for name in ("good", "bad1", "bad2"):
        assert expman.open_run(local / "e" / name).metrics["loss"].last == 4.0
    assert (local / "e" / "bad2" / "notes").read_bytes() == b"a file"


def test_localize_streams_objects_and_caps_metadata(tmp_path, monkeypatch):
    """open_run('s3://...') read every object whole: a 512 MiB artifact was 2.27 GB RSS."""
    import tracemalloc

    from expman import _fsutil
    fs, root = memory_bucket(tmp_path, monkeypatch)
    big = os.urandom(1 << 20) * 48
    fs.pipe({f"{root}/e/good/artifacts/model.pt": big})
    fs.info(f"{root}/e/good/artifacts/model.pt")    # the memory fs copies it once, not us
    tracemalloc.start()
    try:
        local = remote.localize(f"memory://{root}", cache_dir=tmp_path / "local")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (local / "e" / "good" / "artifacts" / "model.pt").stat().st_size == len(big)
    assert peak < 2 * remote.PIECE + (4 << 20), peak    # pieces, never the 48 MiB object
    monkeypatch.setattr(_fsutil, "MAX_JSON_BYTES", 1 << 10)
    fs.pipe({f"{root}/e/bad1/params.json": b'{"x": "' + b"y" * 2000 + b'"}'})
    with pytest.warns(RuntimeWarning, match="bad1.*larger than"):
        local = remote.localize(f"memory://{root}", cache_dir=tmp_path / "local2")
    assert expman.open_run(local / "e" / "good").metrics["loss"].last == 4.0
    assert not (local / "e" / "bad1" / "params.json").exists()


def test_a_damaged_run_json_is_mirrored_and_never_stops_the_sync(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    base, mirror = tmp_path / "experiments", tmp_path / "mirror"
    bad, _good = one_run(base, "bad"), one_run(base, "good")
    (bad / "run.json").write_bytes(runfiles.deep_json(500))
    result = sync(base, str(mirror))
    assert result["errors"] == {}
    assert (mirror / "e" / "bad" / "run.json").read_bytes() == runfiles.deep_json(500)
    assert expman.open_run(mirror / "e" / "good").metrics["loss"].last == 4.0


def test_a_large_artifact_is_streamed_to_object_storage(tmp_path, monkeypatch):
    """Past CHUNK_BYTES an artifact goes up from the guarded descriptor in pieces."""
    import fsspec

    from expman import sync as sync_mod
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sync_mod, "CHUNK_BYTES", 1 << 16)
    base = tmp_path / "experiments"
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(5 << 16) + b"end")
    with expman.Experiment("e", "r", base_dir=base, capture_env=False,
                           system_metrics=False) as run:
        run.save_artifact(src)
        run.log_metrics({"loss": 1.0}, step=0)
    root = f"/b{uuid.uuid4().hex[:10]}"
    result = sync(base, f"memory://{root}")
    assert result["errors"] == {}
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(f"{root}/e/r/artifacts/model.pt") == src.read_bytes()
    assert result["bytes_whole"] >= len(src.read_bytes())
