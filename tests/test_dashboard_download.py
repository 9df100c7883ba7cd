"""The dashboard's artifact download (issue 20): sent from a descriptor the
guarded layer opened (never through a link, never a FIFO, never '..'), one byte
range per request, in chunks, and a client that leaves stops the reading."""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import need

need("starlette")
need("uvicorn")

import expman  # noqa: E402
from expman import layout  # noqa: E402
from expman.dashboard import download  # noqa: E402
from expman.dashboard.download import RangeNotSatisfiable, byte_range  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and FIFOs: POSIX")
BODY = bytes(range(256)) * 40          # 10,240 bytes, each offset recognisable


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    with expman.Experiment("e", "r", base_dir=tmp_path / "base", capture_env=False,
                           system_metrics=False) as exp:
        src = tmp_path / "w.bin"
        src.write_bytes(BODY)
        exp.save_artifact(src)
        (tmp_path / "other.txt").write_text("another artifact")
        exp.save_artifact(tmp_path / "other.txt")
        return exp.run_dir


def wait_for(cond: Any, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---- the Range header, as parsed --------------------------------------------------------------


def test_byte_range_follows_rfc_9110() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-9", 100) == (0, 10)
    assert byte_range("bytes=90-", 100) == (90, 100)
    assert byte_range("bytes=-10", 100) == (90, 100)
    assert byte_range("bytes=-500", 100) == (0, 100)          # a suffix longer than the file
    assert byte_range("bytes=95-200", 100) == (95, 100)       # the end clamped
    assert byte_range(" Bytes = 1 - 2 ", 100) == (1, 3)
    for ignored in ("bytes=5-3", "bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=a-b",
                    "bytes=" + "9" * 30 + "-", "bytes=\u0661-\u0662"):
        assert byte_range(ignored, 100) is None, ignored     # the whole file (RFC: may ignore)
    for past in ("bytes=100-", "bytes=100-200", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            byte_range(past, 100)
    with pytest.raises(RangeNotSatisfiable):
        byte_range("bytes=-1", 0)


# ---- over a real server -----------------------------------------------------------------------


def test_range_requests(run: Path) -> None:
    with running_server(run.parent.parent) as url:
        u = url + "api/runs/e/r/artifacts/w.bin"
        status, h, body = get(u)
        assert status == 200 and body == BODY and h["accept-ranges"] == "bytes"
        assert h["content-length"] == str(len(BODY)) and h["etag"] and h["last-modified"]
        assert h["content-disposition"] == 'attachment; filename="w.bin"'
        for asked, (start, stop) in (("bytes=0-9", (0, 10)), ("bytes=10000-", (10000, 10240)),
                                     ("bytes=-7", (10233, 10240)), ("bytes=300-299999", (300, 10240))):
            status, h, body = get(u, {"Range": asked})
            assert status == 206 and body == BODY[start:stop], asked
            assert h["content-range"] == f"bytes {start}-{stop - 1}/{len(BODY)}"
            assert h["content-length"] == str(stop - start)
        status, h, body = get(u, {"Range": "bytes=10240-"})
        assert status == 416 and h["content-range"] == f"bytes */{len(BODY)}"
        status, _, body = get(u, {"Range": "bytes=0-1,4-5"})     # several: the whole file
        assert status == 200 and body == BODY
        etag, modified = h["etag"], h["last-modified"]
        # If-Range: the range only if the file is still the one the client has part of
        assert get(u, {"Range": "bytes=0-0", "If-Range": etag})[0] == 206
        assert get(u, {"Range": "bytes=0-0", "If-Range": modified})[0] == 206
        assert get(u, {"Range": "bytes=0-0", "If-Range": '"stale"'})[:3:2] == (200, BODY)
        assert get(u, {"If-None-Match": etag})[0] == 304
        assert get(u, {"If-None-Match": f'"x", W/{etag}'})[0] == 304
        assert get(u, {"If-None-Match": '"x"'})[0] == 200
        status, h, body = get(u, method="HEAD")
        assert status == 200 and body == b"" and h["content-length"] == str(len(BODY))
        status, _, body = get(u + "?head=4")
        assert status == 200 and body == BODY[:4]


def test_dot_dot_and_absolute_paths_are_404(run: Path) -> None:
    (run / layout.ARTIFACTS_DIR / "sub").mkdir()
    with running_server(run.parent.parent) as url:
        u = url + "api/runs/e/r/artifacts/"
        for rel in ("..%2F" + layout.RUN_FILE, "sub/..%2F..%2F" + layout.RUN_FILE,
                    "%2E%2E%2F" + layout.RUN_FILE, "%2Fetc%2Fpasswd", "sub%2F..%2Fw.bin",
                    "sub", "sub/", "nope", "w.bin%00"):
            status, _, body = get(u + rel)
            assert status == 404, (rel, status, body[:100])


@POSIX
def test_a_link_swapped_in_after_listing_is_never_followed(run: Path, tmp_path: Path) -> None:
    """The page lists w.bin; then it (or the folder above it) becomes a link, to a
    secret outside the base or to another artifact: 404, nothing of either sent."""
    secret = tmp_path / "secret.txt"
    secret.write_text("secret of another user")
    art = run / layout.ARTIFACTS_DIR
    with running_server(run.parent.parent) as url:
        listed = {a["name"]: a for a in
                  __import__("json").loads(get(url + "api/runs/e/r")[2])["artifacts"]}
        assert listed["w.bin"]["present"]
        u = url + "api/runs/e/r/artifacts/"
        for target in (secret, art / "other.txt"):
            (art / "w.bin").unlink()
            os.symlink(target, art / "w.bin")
            status, _, body = get(u + "w.bin")
            assert status == 404 and b"secret" not in body and b"another" not in body, target
            assert get(u + "w.bin?head=100")[0] == 404
        # a folder of the path swapped for a link (to a folder holding the secret)
        os.symlink(tmp_path, art / "linked")
        assert get(u + "linked/secret.txt")[0] == 404


@POSIX
def test_a_fifo_is_404_at_once_never_a_hang(run: Path) -> None:
    os.mkfifo(run / layout.ARTIFACTS_DIR / "pipe.txt")
    with running_server(run.parent.parent) as url:
        u = url + "api/runs/e/r/artifacts/pipe.txt"
        assert get(u)[0] == 404
        assert get(u + "?head=10")[0] == 404
        assert get(url + "api/runs/e/r/artifacts/w.bin")[0] == 200      # still serving


def _holds_open(path: Path) -> bool:
    """Whether this process (the test's server thread) has ``path`` open."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(path):
                return True
        except OSError:
            pass
    return False


@POSIX
def test_a_huge_sparse_file_is_streamed_and_a_gone_client_stops_the_reading(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 GiB on 4 KiB: a range at the end comes back at once; the whole file is
    sent in CHUNK pieces (memory is a chunk, not the file), and once the client
    hangs up the server stops reading and closes the file."""
    big = run / layout.ARTIFACTS_DIR / "huge.bin"
    size = 64 << 30
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size - 8)
        f.write(b"THE END!")
    read: list[int] = []
    real = download.read_range

    def counted(fd: int, start: int, end: int) -> bytes:
        read.append(end - start)
        return real(fd, start, end)
    monkeypatch.setattr(download, "read_range", counted)
    with running_server(run.parent.parent) as url:
        u = url + "api/runs/e/r/artifacts/huge.bin"
        status, h, body = get(u, {"Range": "bytes=-8"})
        assert status == 206 and body == b"THE END!"
        assert h["content-range"] == f"bytes {size - 8}-{size - 1}/{size}"
        assert max(read) <= download.CHUNK
        parts = urllib.parse.urlsplit(u)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-length") == str(size)
        assert resp.read(1 << 20) == bytes(1 << 20)
        conn.close()                                       # the client hangs up
        if sys.platform.startswith("linux"):
            wait_for(lambda: not _holds_open(big), "the server to close the file")
        assert get(u, {"Range": "bytes=0-3"})[2] == bytes(4)            # still serving
    assert max(read) <= download.CHUNK and sum(read) < 1 << 30     # not 64 GiB read
