"""Issue 15.7: resume=True never follows a symlinked events.jsonl / metrics.bin,
and every file expman creates in a run folder is opened without following links."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import expman
from expman.errors import UnsafePathError
from expman.layout import (
    ARTIFACTS_DIR,
    EVENTS_FILE,
    METRICS_FILE,
    PARAMS_FILE,
    RUN_FILE,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt",
                                reason="planting links needs POSIX symlinks")


def closed_run(base: Path) -> Path:
    exp = expman.Experiment("exp", "r", base_dir=base, capture_env=False)
    exp.log_metrics({"loss": 1.0}, step=0)
    exp.close()
    return exp.run_dir


@pytest.mark.parametrize("victim", [EVENTS_FILE, METRICS_FILE])
def test_resume_refuses_a_symlinked_run_file(base: Path, tmp_path: Path, victim: str) -> None:
    run = closed_run(base)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((run / victim).read_bytes() + b"tail without a newline")
    before = outside.read_bytes()
    (run / victim).unlink()
    (run / victim).symlink_to(outside)
    with pytest.raises(UnsafePathError) as info:
        expman.Experiment("exp", "r", base_dir=base, resume=True, capture_env=False)
    assert str(run / victim) in str(info.value)
    assert info.value.filename == str(run / victim)
    assert outside.read_bytes() == before            # not truncated, not appended to


def test_resume_refuses_a_symlinked_artifacts_folder(base: Path, tmp_path: Path) -> None:
    run = closed_run(base)
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    (run / ARTIFACTS_DIR).rmdir()
    (run / ARTIFACTS_DIR).symlink_to(outside)
    with pytest.raises(UnsafePathError, match="artifacts"):
        expman.Experiment("exp", "r", base_dir=base, resume=True, capture_env=False)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("victim", [METRICS_FILE, EVENTS_FILE, RUN_FILE, PARAMS_FILE])
def test_resume_refuses_a_fifo_instead_of_hanging(base: Path, victim: str) -> None:
    run = closed_run(base)
    (run / victim).unlink(missing_ok=True)
    os.mkfifo(run / victim)          # opening it for reading would wait for a writer forever
    with pytest.raises(UnsafePathError, match="not a regular file") as info:
        expman.Experiment("exp", "r", base_dir=base, resume=True, capture_env=False)
    assert info.value.filename == str(run / victim)


@pytest.mark.parametrize("victim", [RUN_FILE, PARAMS_FILE])
def test_resume_refuses_symlinked_metadata(base: Path, tmp_path: Path, victim: str) -> None:
    run = closed_run(base)
    (run / PARAMS_FILE).write_bytes(b"{}")
    outside = tmp_path / "outside.json"
    outside.write_bytes((run / victim).read_bytes())
    (run / victim).unlink()
    (run / victim).symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        expman.Experiment("exp", "r", base_dir=base, resume=True, capture_env=False)


def test_metadata_temp_files_are_never_written_through(make_run, tmp_path: Path) -> None:
    """run.json and params.json are replaced via a temp file beside them: a link
    planted at that temp name is replaced, its target left alone."""
    exp = make_run()
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"untouched")
    tid = threading.get_ident()
    for name in (PARAMS_FILE, RUN_FILE):
        (exp.run_dir / f".{name}.{os.getpid()}.{tid}.tmp").symlink_to(outside)
    exp.log_params({"lr": 0.1})
    exp.close()
    assert outside.read_bytes() == b"untouched"
    assert b'"lr"' in (exp.run_dir / PARAMS_FILE).read_bytes()
    assert b"FINISHED" in (exp.run_dir / RUN_FILE).read_bytes()
    assert not (exp.run_dir / RUN_FILE).is_symlink()
