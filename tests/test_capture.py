"""capture_output=True: stdout/stderr teed into output.log, never blocking, restored at close."""

from __future__ import annotations

import sys

from expman.capture import OutputCapture
from expman.layout import OUTPUT_FILE, RUN_FILE
from expman._fsutil import read_json
from conftest import run_python


def test_capture_tees_and_restores(tmp_path):
    code = f"""
import sys, expman
before = (sys.stdout, sys.stderr)
with expman.Experiment("e", "r", base_dir={str(tmp_path)!r}, capture_output=True,
                       capture_env=False) as exp:
    print("to stdout", 1)
    print("to stderr", file=sys.stderr)
    sys.stdout.write("partial line")
    sys.stdout.writelines([" and more\\n"])
    assert sys.stdout is not before[0]
    assert sys.stdout.encoding == before[0].encoding
assert (sys.stdout, sys.stderr) == before
print("after close")
"""
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "to stdout 1\npartial line and more\nafter close\n"
    assert "to stderr" in proc.stderr
    log = (tmp_path / "e" / "r" / OUTPUT_FILE).read_text()
    assert log == "to stdout 1\nto stderr\npartial line and more\n"
    assert "output_loss" not in read_json(tmp_path / "e" / "r" / RUN_FILE)


def test_off_by_default(make_run):
    exp = make_run()
    print("not captured")
    exp.close()
    assert not (exp.run_dir / OUTPUT_FILE).exists()


def test_full_queue_drops_and_counts(tmp_path, capsys):
    # a queue that can hold 10 characters: a longer write is dropped from the log,
    # never from the console, and counted
    cap = OutputCapture(tmp_path / OUTPUT_FILE, max_pending=10)
    try:
        sys.stdout.write("short\n")
        sys.stdout.write("x" * 50 + "\n")
    finally:
        loss = cap.close()
    assert loss == {"dropped_writes": 1, "dropped_chars": 51}
    assert capsys.readouterr().out == "short\n" + "x" * 50 + "\n"
    log = (tmp_path / OUTPUT_FILE).read_text()
    assert log.startswith("short\n") and "1 writes (51 characters) were not logged" in log


def test_drop_count_reaches_run_json(make_run, monkeypatch):
    import expman.capture
    # the queue bound is a default argument: make it 4 characters for this run
    monkeypatch.setattr(expman.capture.OutputCapture.__init__, "__defaults__", (4,))
    exp = make_run(capture_output=True)
    sys.stdout.write("too long for the queue\n")
    exp.close()
    assert read_json(exp.run_dir / RUN_FILE)["output_loss"]["dropped_writes"] == 1


def test_a_later_redirect_is_left_alone(make_run, tmp_path):
    import contextlib
    import io
    exp = make_run(capture_output=True)
    other = io.StringIO()
    with contextlib.redirect_stdout(other):
        exp.close()                  # our tee is not sys.stdout now: leave the redirect
        assert sys.stdout is other
        print("still redirected")
    assert other.getvalue() == "still redirected\n"
