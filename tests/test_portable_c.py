"""The C core on its own: build ``expman/src/exlog.c`` with a tiny producer
(``tests/c/producer_consumer.c``) under ``-Wall -Wextra -Werror``, natively and,
when MinGW is installed, for Windows, and check what the writer thread wrote.

The native program runs here; the Windows one runs only when ``wine64`` is
installed (Debian: ``gcc-mingw-w64-x86-64``, ``wine64``). Both write a metrics
file that this test reads with the format's reference reader
(``expman/refreader.py``: plain Python and ``zlib.crc32``, independent of the core).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expman import refreader

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "expman" / "src"
PROGRAM = Path(__file__).resolve().parent / "c" / "producer_consumer.c"
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
N = 20000

pytestmark = pytest.mark.skipif(
    not (SRC / "exlog.c").exists() or not PROGRAM.exists(),
    reason="needs the C sources (a source checkout or sdist)")


def _native_cc() -> str | None:
    if sys.platform == "win32":
        return None
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _mingw() -> str | None:
    return shutil.which("x86_64-w64-mingw32-gcc")


def _wine() -> str | None:
    return shutil.which("wine64") or next(
        (p for p in ("/usr/lib/wine/wine64",) if os.access(p, os.X_OK)), None)


def _build(cc: str, out: Path, *flags: str) -> Path:
    cmd = [cc, *WARNINGS, *flags, f"-I{SRC}", str(PROGRAM), str(SRC / "exlog.c"), "-o", str(out)]
    if "mingw" not in Path(cc).name:
        cmd.append("-pthread")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return out


def _check_output(metrics: Path, events: Path, stdout: str, n: int) -> None:
    """The program's file, read by the format's reference reader, holds exactly what it logged."""
    stats = dict(line.split("=", 1) for line in stdout.split())
    assert stats["rows_written"] == str(n) and stats["rows_dropped"] == "0", stats
    assert stats["summary_ok"] == "1"       # the writer's run summary matched (checked in C)
    data = metrics.read_bytes()
    series, torn = refreader.read_metrics(data)
    assert torn == 0
    assert str(len(data) - 16) == stats["bytes_written"]
    assert set(series) == {"loss", "acc", "lr"}
    for k, name in enumerate(["loss", "acc", "lr"]):
        logged = [i for i in range(n) if i % 3 >= k]        # row i logs keys 0..i%3
        assert [(s, v) for s, _t, v in series[name]] == [(i, i + k / 4) for i in logged], name
    lines = events.read_bytes().splitlines()
    assert lines == [b'{"step":%d}' % i for i in range(0, n, 1000)]


@pytest.mark.skipif(_native_cc() is None, reason="no C compiler (cc/gcc) on PATH")
def test_native_build_round_trips(tmp_path: Path) -> None:
    exe = _build(_native_cc(), tmp_path / "pc", "-O2")  # type: ignore[arg-type]
    res = subprocess.run([str(exe), str(tmp_path / "m.bin"), str(tmp_path / "e.jsonl"), str(N)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    _check_output(tmp_path / "m.bin", tmp_path / "e.jsonl", res.stdout, N)


@pytest.mark.skipif(_native_cc() is None, reason="no C compiler (cc/gcc) on PATH")
def test_native_build_under_thread_sanitizer(tmp_path: Path) -> None:
    cc = _native_cc()
    probe = subprocess.run([cc, "-fsanitize=thread", "-x", "c", "-", "-o", str(tmp_path / "p")],
                           input="int main(void){return 0;}", capture_output=True, text=True)
    if probe.returncode != 0 or subprocess.run([str(tmp_path / "p")]).returncode != 0:
        pytest.skip("this compiler cannot build or run -fsanitize=thread programs")
    exe = _build(cc, tmp_path / "pc_tsan", "-O1", "-g", "-fsanitize=thread")  # type: ignore[arg-type]
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:exitcode=66")
    res = subprocess.run([str(exe), str(tmp_path / "m.bin"), str(tmp_path / "e.jsonl"), "5000"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    _check_output(tmp_path / "m.bin", tmp_path / "e.jsonl", res.stdout, 5000)


@pytest.mark.skipif(_mingw() is None,
                    reason="x86_64-w64-mingw32-gcc not installed (Debian: gcc-mingw-w64-x86-64)")
def test_windows_branch_cross_compiles(tmp_path: Path) -> None:
    for opt in (["-O2"], ["-O0", "-g"]):
        exe = _build(_mingw(), tmp_path / "pc.exe", *opt)  # type: ignore[arg-type]
        assert exe.read_bytes()[:2] == b"MZ"
    wine = _wine()
    if wine is None:
        return          # compiled and linked; running it needs wine64
    env = dict(os.environ, WINEPREFIX=str(tmp_path / "wine"), WINEDEBUG="-all")
    try:
        res = subprocess.run([wine, str(exe), "m.bin", "e.jsonl", str(N)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=env,
                             stdin=subprocess.DEVNULL)
    finally:
        server = Path(wine).with_name("wineserver")
        if server.exists():     # stop the wineserver this prefix started
            subprocess.run([str(server), "-k"], env=env, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    _check_output(tmp_path / "m.bin", tmp_path / "e.jsonl", res.stdout.replace("\r", ""), N)
