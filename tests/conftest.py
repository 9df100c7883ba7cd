"""Shared fixtures: a temporary base dir, run factories that always close, a watchdog,
and `need`/`missing` for optional dependencies (a skip locally, a failure in CI)."""

from __future__ import annotations

import faulthandler
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

import expman

# A hang must fail fast instead of stalling CI: dump every thread and exit.
WATCHDOG_SECONDS = int(os.environ.get("EXPMAN_TEST_WATCHDOG", "300"))
SLOW = os.environ.get("EXPMAN_SLOW") == "1"

# Under CI=true (.ci/run, GitHub Actions) every optional dependency and tool is installed
# (the README's test command: the `test` extra, torch, Chromium, MinGW/wine), so a missing
# one fails instead of skipping a test silently. EXPMAN_TEST_WITHOUT names the ones a CI
# job leaves out on purpose (comma-separated; the wheel builders install only `test-core`).
CI = os.environ.get("CI") == "true"
WITHOUT = set(os.environ.get("EXPMAN_TEST_WITHOUT", "").replace(",", " ").split())


def missing(what: str, reason: str) -> NoReturn:
    """Skip because `what` (a package or tool) is not here; under CI=true, fail instead."""
    if CI and what not in WITHOUT:
        pytest.fail(f"{reason}; CI=true needs it (.ci/run and the README's test command "
                    "install every one)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need(module: str) -> ModuleType:
    """Import an optional dependency, or `missing` it. Only a module that is not installed
    counts as missing: one that fails to import is an error, never a skip."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        top = module.split(".")[0]
        missing(top, f"{module} is not installed")


def need_installed(module: str) -> None:
    """Like `need` without importing the module here (a subprocess will)."""
    try:
        if importlib.util.find_spec(module) is not None:
            return
    except ModuleNotFoundError:
        pass
    missing(module.split(".")[0], f"{module} is not installed")


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
    """Factory for Experiments under ``base``; every one is closed after the test. No
    environment probe and no system-metrics sampler unless asked: tests count points,
    and a sampler adds ``system/*`` ones on its own clock (every 10 s by default)."""
    made: list[expman.Experiment] = []

    def factory(name: str = "exp", run_name: str | None = None, **kwargs) -> expman.Experiment:
        kwargs.setdefault("base_dir", base)
        kwargs.setdefault("capture_env", False)
        kwargs.setdefault("system_metrics", False)
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


def nan_alerts_expected(run_dir: Path) -> set[tuple[str, int]]:
    """(metric, step) of each point where a series of the run turns non-finite (its
    first point, or after a finite one): where the ``nan`` watchdog must fire."""
    import math
    out = set()
    for name, series in expman.open_run(run_dir).metrics.items():
        before = True
        for step, value in zip(series.steps, series.values):
            bad = not math.isfinite(value)
            if bad and before:
                out.add((name, int(step)))
            before = not bad
    return out


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
        exp = expman.Experiment("exp", "dead", base_dir={str(base)!r}, capture_env=False,
                                system_metrics=False)
        exp.log_metrics({{"loss": 0.5}}, step=0)
        exp.flush()
        os._exit({exit_code})
    """, cwd=cwd)
    assert proc.returncode == exit_code, proc.stderr
    return base / "exp" / "dead"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto) on 127.0.0.1 for the session; its endpoint URL."""
    import socket
    need("s3fs")
    moto_server = need("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, tmp_path):
    """A fresh bucket on ``s3_server``; credentials and endpoint in the standard AWS_*
    variables, as a user's s3fs reads them."""
    import uuid
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("EXPMAN_CACHE_DIR", str(tmp_path / "cache"))
    from expman import remote
    name = "b" + uuid.uuid4().hex[:12]
    fs, _ = remote.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return name
