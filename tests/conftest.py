"""Shared fixtures: a temporary base dir, run factories that always close, a watchdog."""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import expman

# A hang must fail fast instead of stalling CI: dump every thread and exit.
WATCHDOG_SECONDS = int(os.environ.get("EXPMAN_TEST_WATCHDOG", "300"))
SLOW = os.environ.get("EXPMAN_SLOW") == "1"


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """An empty base_dir for runs."""
    d = tmp_path / "experiments"
    d.mkdir()
    return d


@pytest.fixture
def make_run(base: Path):
    """Factory for Experiments under ``base``; every one is closed after the test."""
    made: list[expman.Experiment] = []

    def factory(name: str = "exp", run_name: str | None = None, **kwargs) -> expman.Experiment:
        kwargs.setdefault("base_dir", base)
        kwargs.setdefault("capture_env", False)
        exp = expman.Experiment(name, run_name, **kwargs)
        made.append(exp)
        return exp

    yield factory
    for exp in made:
        if exp.status == "RUNNING":
            try:
                exp.close()
            except Exception:
                pass


def run_python(code: str, cwd: Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter (for exit, signal and crash tests)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(expman.__file__).parent.parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def make_crashed_run(base: Path, cwd: Path, exit_code: int = 0) -> Path:
    """A run whose process logged one point, flushed, and died by os._exit: on disk it
    says RUNNING; readers must say CRASHED. Returns base/exp/dead."""
    proc = run_python(f"""
        import os, expman
        exp = expman.Experiment("exp", "dead", base_dir={str(base)!r}, capture_env=False)
        exp.log_metrics({{"loss": 0.5}}, step=0)
        exp.flush()
        os._exit({exit_code})
    """, cwd=cwd)
    assert proc.returncode == exit_code, proc.stderr
    return base / "exp" / "dead"
