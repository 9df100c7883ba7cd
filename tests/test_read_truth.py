"""The read side tells the truth about damaged, crafted and lossy run folders
(issue "truth under misuse" items 3, 6, 8, 10, 12, 13, 15, 16; issue "no input can
crash" items 8, 9, 12, 13, 14): every test here failed before its fix."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import expman
from expman._fsutil import atomic_write_json, read_json
from expman.cli import main
from expman.errors import WriterError

from conftest import need, make_crashed_run


def cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "expman", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir(),
                          env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)})
    return proc.returncode, proc.stdout, proc.stderr


def lossy_run(make_run) -> Path:
    """A run whose writer dropped 50 rows on a failing disk, then closed."""
    exp = make_run("lossy", "r", flush_interval=0.005)
    for i in range(20):
        exp.log_metrics({"a": float(i)}, step=i)
    exp.flush()
    exp._set_fault(write_every=1, err=errno.ENOSPC)
    for i in range(20, 70):
        exp.log_metrics({"a": float(i)}, step=i)
    with pytest.raises(WriterError):
        exp.flush()
    exp._set_fault()
    exp.log_metrics({"a": 70.0}, step=70)
    exp.close()
    return exp.run_dir


def test_recorded_loss_is_reported_everywhere(make_run, base):
    run_dir = lossy_run(make_run)
    run = expman.open_run(run_dir)
    assert run.integrity["data_loss"]["rows_dropped"] == 50
    code, out, _ = cli("show", run_dir)
    assert code == 0 and "DATA LOSS" in out and "ok:" not in out, out
    code, out, _ = cli("list", base)
    assert "FINISHED*" in out and "data loss" in out, out
    code, out, _ = cli("verify", run_dir)
    assert code == 1 and "50 rows" in out, out
    report = expman.verify_run(run_dir)
    assert not report["ok"] and report["data_loss"]["rows_dropped"] == 50
    assert expman.list_runs(base)[0].data_loss["rows_dropped"] == 50
    need("pandas")
    assert expman.runs(base)["rows_dropped"].tolist() == [50]          # the table too


def test_the_lake_carries_recorded_loss(make_run, base, tmp_path):
    need("pyarrow")
    duckdb = need("duckdb")
    from expman.lake import export_lake
    run_dir = lossy_run(make_run)
    export_lake(base, tmp_path / "lake")
    got = duckdb.sql(f"select id, rows_dropped from read_parquet('{tmp_path}/lake/runs/**/*.parquet')"
                     ).fetchall()
    assert got == [(f"{run_dir.parent.name}/{run_dir.name}", 50)]


def test_export_format_follows_the_extension(make_run, tmp_path):
    exp = make_run("e", "r")
    exp.log_metrics({"loss": 0.5, "nan": float("nan")}, step=0)
    exp.close()
    run = expman.open_run(exp.run_dir)
    expman.export_run(run, tmp_path / "x.tsv")
    assert (tmp_path / "x.tsv").read_text().splitlines()[0] == "metric\tstep\ttime\tvalue"
    expman.export_run(run, tmp_path / "x.csv.gz")
    text = gzip.decompress((tmp_path / "x.csv.gz").read_bytes()).decode()
    assert text.startswith("metric,step,time,value\n") and "nan" in text
    expman.export_run(run, tmp_path / "x.jsonl.gz")
    rows = [json.loads(line) for line in gzip.decompress(
        (tmp_path / "x.jsonl.gz").read_bytes()).decode().splitlines()]
    assert {r["metric"] for r in rows} == {"loss", "nan"} and "NaN" in {r["value"] for r in rows}
    with pytest.raises(expman.ExpmanValueError, match="x.xlsx"):
        expman.export_run(run, tmp_path / "x.xlsx")
    assert not (tmp_path / "x.xlsx").exists()
    buf = io.BytesIO()
    assert expman.export_run(run, buf, "csv") == 2
    assert buf.getvalue().startswith(b"metric,step")
    code, _, err = cli("export", exp.run_dir, "-o", tmp_path / "y.xlsx")
    assert code == 1 and "extension" in err


def test_refresh_mean_uses_every_record_of_the_step(make_run):
    exp = make_run("e", "r")
    exp.log_metrics({"x": 1.0}, step=5)
    exp.log_metrics({"x": 2.0}, step=5)
    exp.flush()
    run = expman.open_run(exp.run_dir, duplicates="mean")
    assert list(run.metrics["x"].values) == [1.5]
    exp.log_metrics({"x": 3.0}, step=5)
    exp.flush()
    run.refresh()
    assert list(run.metrics["x"].values) == [2.0]          # not (1.5 + 3) / 2


def test_repr_is_one_line_and_html_is_small(make_run):
    exp = make_run("e", "r")
    for i in range(3000):
        exp.info(f"message {i}")
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    run = expman.open_run(exp.run_dir)
    text = repr(run)
    assert "\n" not in text and len(text) < 200 and "e/r" in text, text
    html = run._repr_html_()
    assert "<table>" in html and len(html) < 5000


def test_list_limit_reads_metrics_of_the_runs_it_returns(make_run, base, monkeypatch):
    for i in range(4):
        exp = make_run("e", f"r{i}")
        exp.log_metrics({"loss": float(i)}, step=0)
        exp.close()
    from expman import summary
    calls = []
    real = summary.summarize
    monkeypatch.setattr(summary, "summarize", lambda *a, **k: calls.append(a) or real(*a, **k))
    runs = expman.list_runs(base, limit=1)
    assert len(runs) == 1 and len(calls) == 1 and runs[0].last_metrics == {"loss": 3.0}


def test_tables_numbers_digits_and_wide_characters(make_run, base, capsys):
    exp = make_run("e", "r")
    exp.log_params({"tokens": 123456789, "学习率": 0.91234561})
    exp.log_metrics({"精度": 0.91234561, "acc": 0.91234564}, step=0)
    exp.close()
    assert main(["show", "e/r", "--base-dir", str(base)]) == 0
    out = capsys.readouterr().out
    assert "123456789" in out and "0.91234561" in out and "0.91234564" in out
    lines = [line for line in out.splitlines() if "精度" in line or line.strip().startswith("acc ")]
    from expman.cli._text import width
    assert len({width(line.split("1")[0]) for line in lines}) == 1, lines   # columns align
    assert main(["show", "e/r", "--digits", "3", "--base-dir", str(base)]) == 0
    assert "0.912" in capsys.readouterr().out


def test_plain_tail_of_a_crashed_run_says_so(base, tmp_path):
    dead = make_crashed_run(base, tmp_path)
    code, out, err = cli("tail", dead)
    assert code == 0 and "CRASHED" in err and "loss=0.5" in out


def test_show_summarises_many_series(make_run, base):
    exp = make_run("e", "r")
    exp.log_metrics({f"loss_{i}": float(i) for i in range(400)}, step=0)
    exp.close()
    code, out, _ = cli("show", "e/r", "--base-dir", base)
    assert code == 0 and "and 200 more series" in out and len(out.splitlines()) < 260


# ---- hostile folders: one bad run never breaks a listing -------------------------------------


BAD_META = {
    "a list": [1, 2, 3],
    "a huge pid": {"status": "RUNNING", "pid": 2**62, "host": "x", "start_time": 1.0},
    "string times": {"status": "FINISHED", "start_time": "yesterday", "heartbeat_interval": "x",
                     "duration": "long"},
    "a bad status": {"status": "\x1b[31mPWNED", "start_time": 2.0},
}


def test_one_bad_run_never_breaks_a_listing(make_run, base):
    good = make_run("e", "good")
    good.log_metrics({"loss": 1.0}, step=0)
    good.close()
    for i, meta in enumerate(BAD_META.values()):
        d = base / "e" / f"bad{i}"
        d.mkdir()
        (d / "run.json").write_bytes(json.dumps(meta).encode())
    (base / "e" / "notjson").mkdir()
    (base / "e" / "notjson" / "run.json").write_bytes(b"{not json")
    runs = {r.run_name: r for r in expman.list_runs(base)}
    assert runs["good"].status == "FINISHED" and runs["good"].last_metrics == {"loss": 1.0}
    assert runs["bad0"].status == "DAMAGED" and "not a JSON object" in runs["bad0"].damaged
    assert runs["notjson"].status == "DAMAGED"
    assert runs["bad2"].duration is None and runs["bad2"].start_time is None
    code, out, err = cli("list", base)
    assert code == 0 and "good" in out and "DAMAGED" in out, err
    assert "\x1b" not in out
    code, out, err = cli("clean", base, "--status", "CRASHED", "--status", "FAILED")
    assert code == 0, err


def test_damaged_params_never_hide_the_metrics(make_run, base):
    exp = make_run("e", "r")
    exp.log_params({"lr": 0.1})
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    (exp.run_dir / "params.json").write_bytes(b"[1, 2")
    with pytest.warns(RuntimeWarning, match="params.json"):
        run = expman.open_run(exp.run_dir)
    assert run.params == {} and list(run.metrics["loss"].values) == [1.0]
    code, out, _ = cli("show", exp.run_dir)
    assert code == 0 and "DAMAGED: params.json" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_and_device_links_are_refused_not_read(make_run, base):
    exp = make_run("e", "r")
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    os.replace(exp.run_dir / "metrics.bin", base / "moved.bin")
    os.mkfifo(exp.run_dir / "metrics.bin")                 # would block a reader forever
    os.unlink(exp.run_dir / "events.jsonl")
    os.symlink("/dev/zero", exp.run_dir / "events.jsonl")  # would never end
    with pytest.raises(expman.CorruptRunError, match="not a regular file"):
        expman.open_run(exp.run_dir)
    runs = expman.list_runs(base)                          # returns, and lists the run
    assert [r.run_name for r in runs] == ["r"]
    report = expman.verify_run(exp.run_dir)
    assert not report["ok"]


def test_control_characters_from_files_are_escaped(make_run, base):
    exp = make_run("e", "r")
    exp.log_params({"note": "\x1b]0;owned\x07\r\u202e"})
    exp.info("bell\x07 and \x1b[2J clear")
    exp.close()
    meta = read_json(exp.run_dir / "run.json")
    meta["exit"] = {"reason": "exception", "type": "X\x1b[31m", "message": "m\r"}
    atomic_write_json(exp.run_dir / "run.json", meta)
    for args in (["show", "e/r"], ["list"], ["tail", "e/r"], ["compare", "e/r", "e/r"]):
        code, out, err = cli(*args, "--base-dir", base)
        assert code == 0, err
        assert not any(c in out for c in "\x1b\x07\r\u202e"), (args, out)


def test_verify_repair_never_writes_through_a_planted_link(base, tmp_path):
    from conftest import make_crashed_run
    run_dir = make_crashed_run(base, tmp_path)       # a torn tail needs a writer that died
    import struct
    import zlib
    torn = struct.pack("<I", 100)
    torn += struct.pack("<I", zlib.crc32(torn)) + b"half a payload"   # a frame cut by a crash
    with open(run_dir / "metrics.bin", "ab") as f:
        f.write(torn)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    os.symlink(outside, run_dir / "metrics.bin.torn")
    report = expman.verify_run(run_dir, repair=True)
    assert report["repaired"] and outside.read_bytes() == b"precious"
    assert (run_dir / "metrics.bin.torn2").read_bytes() == torn


def test_clean_never_follows_a_link_inside_a_run(make_run, base, tmp_path):
    exp = make_run("e", "r")
    exp.close(status="FAILED")
    outside = tmp_path / "data"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    os.chmod(outside / "keep.txt", 0o444)
    os.symlink(outside, exp.run_dir / "artifacts" / "dataset")
    os.symlink(outside / "keep.txt", exp.run_dir / "artifacts" / "file_link")
    code, out, err = cli("clean", base, "--status", "FAILED", "--yes")
    assert code == 0, err
    assert not exp.run_dir.exists()
    assert (outside / "keep.txt").read_text() == "x"
    assert oct((outside / "keep.txt").stat().st_mode & 0o777) == oct(0o444)


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="bind mounts need root")
def test_clean_never_crosses_a_mount_point(make_run, base, tmp_path):
    exp = make_run("e", "r")
    exp.close(status="FAILED")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "big.bin").write_bytes(b"d" * 100)
    mnt = exp.run_dir / "artifacts" / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "--bind", str(dataset), str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {res.stderr.decode().strip()}")
    try:
        code, out, err = cli("clean", base, "--status", "FAILED", "--yes")
        assert code == 0 and "mount point" in err, err
        assert (dataset / "big.bin").read_bytes() == b"d" * 100
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_exit_text_without_a_message_has_no_empty_colon():
    from expman.cli.runs import exit_text
    text = exit_text({"reason": "exception", "type": "KeyboardInterrupt", "message": "",
                      "location": "train.py:12"})
    assert text == "KeyboardInterrupt at train.py:12"
    assert exit_text({"reason": "exception", "type": "ValueError", "message": "bad",
                      "location": "t.py:3"}) == "ValueError: bad at t.py:3"


KILLED_AFTER_LOSS = """
import errno, os, sys, expman
from expman.errors import WriterError
exp = expman.Experiment("k", "r", base_dir=sys.argv[1], capture_env=False,
                        system_metrics=False, flush_interval=0.005)
for i in range(20):
    exp.log_metrics({"a": float(i)}, step=i)
exp.flush()
exp._set_fault(write_every=1, err=errno.ENOSPC)
for i in range(20, 70):
    exp.log_metrics({"a": float(i)}, step=i)
try:
    exp.flush()
except WriterError:
    pass
os._exit(0)                # as a SIGKILL: run.json is never rewritten
"""


def test_the_loss_of_a_killed_run_reaches_every_reader_and_a_synced_copy(tmp_path):
    """Rows dropped, then the process dies without a word: run.json says nothing of
    the loss; the loss record does, and so does every reader, also of a synced copy."""
    need("fsspec")
    from expman.sync import sync
    base, mirror = tmp_path / "experiments", tmp_path / "mirror"
    subprocess.run([sys.executable, "-c", KILLED_AFTER_LOSS, str(base)], check=True,
                   cwd=Path(__file__).parent, timeout=120)
    (run_dir,) = [d for d in (base / "k").iterdir() if d.is_dir()]
    assert "data_loss" not in json.loads((run_dir / "run.json").read_text())
    (line,) = expman.list_runs(base)
    assert line.status == "CRASHED" and line.data_loss["rows_dropped"] == 50
    assert expman.open_run(run_dir).integrity["data_loss"]["rows_dropped"] == 50
    assert expman.verify_run(run_dir)["ok"] is False
    assert sync(base, str(mirror))["errors"] == {}
    (copied,) = expman.list_runs(mirror)
    assert copied.data_loss["rows_dropped"] == 50
