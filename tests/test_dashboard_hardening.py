"""The dashboard server under abuse and at its edges (issues 20 and 26): who may
reach it (empty tokens, port-scoped cookies, the token out of the URL and the
command line), wrong answers at the edges (message paging, image paths), and
live views that are complete and current (a stream never ends short, a changed
run is read again whatever its status)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import need

need("starlette")
need("uvicorn")
np = need("numpy")

import expman  # noqa: E402
from expman import layout  # noqa: E402
from expman.dashboard import cookie_name, cookie_value, pick_token, read_token  # noqa: E402
from expman.dashboard.cache import CachedRun, RunCache  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402
from expman.errors import ExpmanValueError  # noqa: E402

from dashboard_data import demo_run, png_bytes  # noqa: E402


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a: Any, **k: Any) -> None:
        return None


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = get(url, headers)
    assert status == 200, body
    return json.loads(body)


def _env() -> dict[str, str]:
    root = Path(expman.__file__).resolve().parent.parent      # the expman under test
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))


# ---- access (issue 20, items 1 and 2) -------------------------------------------------------


def test_an_empty_token_is_refused_never_no_auth(tmp_path: Path) -> None:
    for bad in ("", "   "):
        with pytest.raises(ExpmanValueError, match="empty.*--no-token"):
            pick_token("0.0.0.0", bad)
        with pytest.raises(ExpmanValueError, match="empty"):
            pick_token("127.0.0.1", bad)
    assert pick_token("0.0.0.0", False) is None          # only --no-token turns auth off
    # `expman serve --host 0.0.0.0 --token "$UNSET"`: a clear error, nothing served
    proc = subprocess.run([sys.executable, "-m", "expman.dashboard", str(tmp_path), "--host",
                           "0.0.0.0", "--port", "0", "--no-browser", "--token", ""],
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc
    assert "token is empty" in proc.stderr and "--no-token" in proc.stderr
    assert "expman dashboard:" not in proc.stdout
    # the same through the variable and the file
    (tmp_path / "tok").write_text("\n")
    proc = subprocess.run([sys.executable, "-m", "expman.dashboard", str(tmp_path), "--host",
                           "0.0.0.0", "--port", "0", "--no-browser", "--token-file",
                           str(tmp_path / "tok")],
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "token is empty" in proc.stderr


def test_serving_off_loopback_without_a_token_says_so_loudly(tmp_path: Path, capsys) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, host="0.0.0.0", token=False) as url:
        port = urllib.parse.urlsplit(url).port
        assert get_json(f"http://127.0.0.1:{port}/api/runs")["runs"]
    err = capsys.readouterr().err
    assert "WARNING" in err and "WITHOUT A TOKEN" in err and "0.0.0.0" in err


def test_the_host_check_stays_on_loopback_even_with_a_token(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, token="tok-1") as url:
        root = url.split("?")[0]
        auth = {"Authorization": "token tok-1"}
        assert get(root + "api/runs", auth)[0] == 200
        status, _, body = get(root + "api/runs", {**auth, "Host": "evil.example"})
        assert status == 403 and b"evil.example" in body


def test_the_token_cookie_is_per_port_and_the_token_leaves_the_address(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, token="tok-A") as url_a, \
            running_server(tmp_path, token="tok-B") as url_b:
        port_a, port_b = urllib.parse.urlsplit(url_a).port, urllib.parse.urlsplit(url_b).port
        assert port_a != port_b
        # the page opened with ?token= is sent to the same address without it, the cookie set
        status, h, _ = get(url_a.replace("/?", "/?x=1&") + "#/run/a")
        assert status == 303 and h["location"] == "/?x=1", h
        value_a = cookie_value("tok-A", port_a)
        assert h["set-cookie"].startswith(f"{cookie_name(port_a)}={value_a};")
        assert "tok-A" not in h["set-cookie"]                  # never the token itself
        assert "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
        status, h, _ = get(url_b)
        value_b = cookie_value("tok-B", port_b)
        assert status == 303 and h["location"] == "/"
        assert h["set-cookie"].startswith(f"expman_token_{port_b}={value_b};")
        # a browser holds both cookies (one host): each server takes its own
        both = f"{cookie_name(port_a)}={value_a}; {cookie_name(port_b)}={value_b}"
        for url in (url_a, url_b):
            assert get(url.split("?")[0] + "api/runs", {"Cookie": both})[0] == 200
        # another port's cookie is no key here (even with the same token), nor is the
        # token itself as a cookie, nor the old per-host name
        root_a = url_a.split("?")[0]
        assert get(root_a + "api/runs", {"Cookie": f"{cookie_name(port_a)}={value_b}"})[0] == 403
        assert get(root_a + "api/runs", {"Cookie": f"{cookie_name(port_a)}="
                                         f"{cookie_value('tok-A', port_b)}"})[0] == 403
        assert get(root_a + "api/runs", {"Cookie": f"{cookie_name(port_a)}=tok-A"})[0] == 403
        assert get(root_a + "api/runs", {"Cookie": "expman_token=tok-A"})[0] == 403
        # scripts keep ?token= on the API (no redirect to follow)
        assert get(root_a + "api/runs?token=tok-A")[0] == 200


def test_the_token_can_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert read_token(None, str(f), {}) == "from-file"
    assert read_token(None, None, {"EXPMAN_TOKEN": "from-env"}) == "from-env"
    assert read_token("given", None, {"EXPMAN_TOKEN": "from-env"}) == "given"
    assert read_token(None, None, {}) is None
    with pytest.raises(ExpmanValueError, match="one of them"):
        read_token("given", str(f), {})
    with pytest.raises(ExpmanValueError, match="--token-file .*missing"):
        read_token(None, str(tmp_path / "missing"), {})
    # the CLI takes it from the environment, and it is not on the command line
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    proc = subprocess.Popen([sys.executable, "-m", "expman.dashboard", str(tmp_path), "--port", "0",
                             "--no-browser"], env={**_env(), "EXPMAN_TOKEN": "env-secret"},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("expman dashboard: ") and line.rstrip().endswith("?token=env-secret")
        with open(f"/proc/{proc.pid}/cmdline", "rb") if sys.platform == "linux" else open(os.devnull, "rb") as c:
            assert b"env-secret" not in c.read()
        url = line.split(": ", 1)[1].strip()
        root = url.split("?")[0]
        assert get(root + "api/runs")[0] == 403
        assert get(root + "api/runs", {"Authorization": "token env-secret"})[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# ---- wrong answers (issue 20, items 16 and 17) ----------------------------------------------


def test_the_newest_messages_are_all_there_when_fewer_than_asked(tmp_path: Path) -> None:
    for n in (1500, 1999):
        with expman.Experiment("m", f"n{n}", base_dir=tmp_path, capture_env=False) as exp:
            for i in range(n):
                exp.info(f"message {i}")
    with running_server(tmp_path) as url:
        for n in (1500, 1999):
            got = get_json(url + f"api/runs/m/n{n}/events?kind=message&last=2000")
            assert got["total"] == n and len(got["events"]) == n
            assert got["events"][-1]["msg"] == f"message {n - 1}"
            got = get_json(url + f"api/runs/m/n{n}/events?kind=message&last=10")
            assert [e["msg"] for e in got["events"]] == [f"message {i}" for i in range(n - 10, n)]


def test_an_image_path_with_dotdot_inside_media_is_served_not_a_500(tmp_path: Path) -> None:
    with expman.Experiment("m", "img", base_dir=tmp_path, capture_env=False) as exp:
        exp.log_metrics({"x": 1.0}, step=0)
        run = exp.run_dir
    media = run / layout.ARTIFACTS_DIR / layout.MEDIA_DIR
    media.mkdir(parents=True, exist_ok=True)
    (media / "pic.png").write_bytes(png_bytes())
    events = [{"kind": "image", "tag": "pic", "step": 0, "width": 8, "height": 8,
               "path": f"{layout.ARTIFACTS_DIR}/{layout.MEDIA_DIR}/../{layout.MEDIA_DIR}/pic.png"},
              {"kind": "image", "tag": "out", "step": 0, "width": 8, "height": 8,
               "path": f"{layout.ARTIFACTS_DIR}/{layout.MEDIA_DIR}/../../run.json"}]
    with open(run / layout.EVENTS_FILE, "ab") as f:
        f.writelines(json.dumps(ev).encode() + b"\n" for ev in events)
    with running_server(tmp_path) as url:
        d = get_json(url + "api/runs/m/img")
        assert d["media"]["images"] == {"pic": [{"step": 0, "path": "media/pic.png",
                                                 "width": 8, "height": 8}]}
        status, _, body = get(url + "api/runs/m/img/artifacts/media/pic.png")
        assert status == 200 and body == png_bytes()


# ---- live views (issue 26, items 4 and 5) ---------------------------------------------------


def _stream(app: Any, query: str) -> Any:
    """The body of /api/stream?query as an async iterator of SSE chunks, driven by hand."""
    from starlette.requests import Request

    from expman.dashboard.server import api_stream
    scope = {"type": "http", "method": "GET", "path": "/api/stream", "headers": [],
             "query_string": query.encode(), "app": app.app}
    return api_stream(Request(scope))


def _parse(chunk: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in chunk.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"event" in lines:
            out.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return out


def test_the_stream_sends_every_point_before_the_final_status(tmp_path: Path) -> None:
    """Another client's request refreshes the run between the stream's points and
    its status check (interleaved by hand, no timing): the points the refresh read
    are still sent before FINISHED."""
    from expman.dashboard.server import create_app
    exp = expman.Experiment("live", "r", base_dir=tmp_path, capture_env=False,
                            system_metrics=False)
    try:
        for i in range(100):
            exp.log_metrics({"loss": float(i)}, step=i)
        exp.flush()
        app = create_app(tmp_path)

        async def drive() -> list[tuple[str, Any]]:
            resp = await _stream(app, "run=live/r")
            it = resp.body_iterator
            got = _parse(await it.__anext__())
            assert isinstance(got[0][1].pop("scan"), int)
            assert got[0] == ("hello", {"runs": ["live/r"], "counts": {"live/r": {"loss": 100}}})
            for i in range(100, 200):
                exp.log_metrics({"loss": float(i)}, step=i)
            exp.flush()
            while not any(n == "points" for n, _ in got):
                got += _parse(await it.__anext__())    # the stream is paused at this yield
            for i in range(200, 300):                  # meanwhile the run ends ...
                exp.log_metrics({"loss": float(i)}, step=i)
            exp.close()
            app.app.state.dashboard.cache.get(tmp_path / "live" / "r").refresh(force=True)
            while not any(n == "status" for n, _ in got):     # ... and another page read it
                got += _parse(await it.__anext__())
            await it.aclose()
            return got

        got = asyncio.run(drive())
        steps = [s for n, d in got if n == "points" for s in d["steps"]]
        assert steps == list(range(100, 300))
        assert got[-1] == ("status", {"run": "live/r", "status": "FINISHED"})
    finally:
        if exp.status == "RUNNING":
            exp.close()


def test_a_cached_run_is_read_again_when_its_files_change(tmp_path: Path, monkeypatch) -> None:
    """Resume, tag, edit: the cache shows the run as it is now, whatever its status."""
    from expman.dashboard import cache as cache_mod
    from expman.runmeta import set_tags
    monkeypatch.setattr(cache_mod, "REFRESH_EVERY", 0.0)     # every get polls a live run
    with expman.Experiment("c", "r", base_dir=tmp_path, capture_env=False) as exp:
        for i in range(10):
            exp.log_metrics({"a": float(i)}, step=i)
        run_dir = exp.run_dir
    cache = RunCache()
    run = cache.get(run_dir)
    assert run.status == "FINISHED" and run.counts() == {"a": 10}
    set_tags(run_dir, add=["best"])
    assert cache.get(run_dir).meta.get("tags") == ["best"]
    with expman.Experiment("c", "r", base_dir=tmp_path, capture_env=False, resume=True) as exp:
        for i in range(10, 25):
            exp.log_metrics({"a": float(i)}, step=i)
        exp.flush()
        live = cache.get(run_dir)
        live.refresh(force=True)
        assert live.status == "RUNNING" and live.counts() == {"a": 25}
    again = cache.get(run_dir)
    assert again.status == "FINISHED" and again.counts() == {"a": 25}
    assert list(again.snapshot("a")[0]) == list(range(25))
    # metrics.bin rewritten (a repair cut it, a sync replaced it): read from the start
    with expman.Experiment("c", "other", base_dir=tmp_path, capture_env=False) as exp:
        for i in range(5):
            exp.log_metrics({"b": float(i)}, step=i)
        other = exp.run_dir
    os.replace(other / layout.METRICS_FILE, run_dir / layout.METRICS_FILE)
    assert cache.get(run_dir).counts() == {"b": 5}


def test_a_crashed_run_that_is_resumed_is_not_shown_crashed(tmp_path: Path, monkeypatch) -> None:
    import signal

    from expman.dashboard import cache as cache_mod
    monkeypatch.setattr(cache_mod, "REFRESH_EVERY", 0.0)
    code = ("import sys, time, expman\n"
            "exp = expman.Experiment('c', 'k', base_dir=sys.argv[1], capture_env=False)\n"
            "exp.log_metrics({'a': 1.0}, step=0); exp.flush()\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    run_dir = tmp_path / "c" / "k"
    cache = RunCache()
    assert cache.get(run_dir).status == "CRASHED"
    with expman.Experiment("c", "k", base_dir=tmp_path, capture_env=False, resume=True) as e2:
        e2.log_metrics({"a": 2.0}, step=1)
        e2.flush()
        assert cache.get(run_dir).status == "RUNNING"
    shown = cache.get(run_dir)
    assert shown.status == "FINISHED" and shown.counts() == {"a": 2}


# ---- the server's own resources (issue 20, items 13 and 14) ---------------------------------


def test_an_unterminated_events_line_is_never_read_again_from_its_start(tmp_path: Path,
                                                                         monkeypatch) -> None:
    """A run that stays RUNNING with an events.jsonl line that never ends: each poll
    reads only the bytes appended since the last one."""
    from expman import tail as tail_mod
    from expman.tail import RunTail
    run = tmp_path / "e" / "r"
    run.mkdir(parents=True)
    (run / layout.RUN_FILE).write_text(json.dumps({"status": "RUNNING"}))
    events = run / layout.EVENTS_FILE
    events.write_bytes(b'{"kind": "message", "msg": "first"}\n' + b'{"x": "' + b"a" * (3 << 20))
    read: list[int] = []
    real = tail_mod.read_regular

    def counting(path: Any, offset: int = 0, limit: Any = None) -> bytes:
        data = real(path, offset, limit)
        if Path(path).name == layout.EVENTS_FILE:
            read.append(len(data))
        return data

    monkeypatch.setattr(tail_mod, "read_regular", counting)
    tail = RunTail(run)
    assert [e["msg"] for e in tail.poll().events] == ["first"]
    for _ in range(20):                      # the line grows by 256 KiB a poll, unterminated
        with open(events, "ab") as f:
            f.write(b"a" * (256 << 10))
        assert tail.poll().events == []
    with open(events, "ab") as f:
        f.write(b'"}\n{"kind": "message", "msg": "after"}\n')
    assert [e["msg"] for e in tail.poll().events] == ["after"]
    assert tail.bad_event_lines == 1                 # the over-long line, counted once
    size = events.stat().st_size
    assert sum(read) <= size + (1 << 20) + 4096, (sum(read), size)   # not 20 x 3 MiB


def test_every_stream_shares_one_scanner_and_one_poller(tmp_path: Path, monkeypatch) -> None:
    """40 open streams: the base dir is scanned once per round of the shared poller,
    not once per stream; streams that close leave the others waiting for rounds
    (not spinning on a round that already ended)."""
    from expman.dashboard.live import Live
    from expman.dashboard.server import Dashboard, create_app
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    scans: list[int] = []
    real = Dashboard.run_ids
    monkeypatch.setattr(Dashboard, "run_ids", lambda self: scans.append(1) or real(self))
    app = create_app(tmp_path)
    live = app.app.state.dashboard.live
    waits = [0]
    real_wait = Live.next_round

    async def counted(self: Live) -> None:
        waits[0] += 1           # each stream waits once a round; a spin waits without end
        if waits[0] > 40 * (self.rounds + 2):
            raise AssertionError(f"{waits[0]} waits in {self.rounds} rounds: a stream spins")
        await real_wait(self)

    monkeypatch.setattr(Live, "next_round", counted)

    async def drive() -> None:
        streams = [(await _stream(app, "watch=demo/r")).body_iterator for _ in range(40)]
        for it in streams:
            assert _parse(await it.__anext__())[0][0] == "hello"
        for it in streams[20:]:                     # half the pages close
            await it.aclose()
        streams = streams[:20]
        while live.scans < 3:                       # rounds of the one poller
            await asyncio.gather(*(it.__anext__() for it in streams))
        for it in streams:
            await it.aclose()

    asyncio.run(drive())
    assert live.streams == 0
    assert len(scans) == live.scans, (len(scans), live.scans)     # not 40 per round


def _histogram_run(base: Path, name: str, n: int = 40, buckets: int = 5000) -> Path:
    with expman.Experiment("h", name, base_dir=base, capture_env=False) as exp:
        exp.log_metrics({"x": 1.0}, step=0)
        run = exp.run_dir
    edges = [float(i) for i in range(buckets + 1)]
    with open(run / layout.EVENTS_FILE, "ab") as f:
        for step in range(n):
            ev = {"kind": "histogram", "tag": "w", "step": step, "edges": edges,
                  "counts": [step] * buckets}
            f.write(json.dumps(ev).encode() + b"\n")
    return run


def test_the_cache_counts_the_bytes_events_really_hold(tmp_path: Path) -> None:
    import tracemalloc
    run_dir = _histogram_run(tmp_path, "a")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = CachedRun(run_dir)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held > 4 << 20                    # 40 events of 10,000 numbers each
    assert run.nbytes >= held // 2, (run.nbytes, held)     # was 512 B an event: 20 kB
    cache = RunCache(max_bytes=16 << 20)
    for name in "bcd":
        cache.get(_histogram_run(tmp_path, name))
    assert cache.nbytes <= 16 << 20 and len(cache) == 1


def test_runs_followed_by_streams_count_against_the_bound(tmp_path: Path) -> None:
    """A live run sent by a stream stays bounded: past the bound it is trimmed to the
    points its streams have not sent, and still streams every new point."""
    exp = expman.Experiment("c", "live", base_dir=tmp_path, capture_env=False)
    try:
        for i in range(20_000):
            exp.log_metrics({"a": float(i)}, step=i)
        exp.flush()
        cache = RunCache(max_bytes=300_000)      # the live run's columns: 480 kB and more
        run = cache.get(exp.run_dir)
        counts = run.counts()
        cache.follow(run, counts)
        for i in range(20_000, 20_100):
            exp.log_metrics({"a": float(i)}, step=i)
        exp.flush()
        run.refresh(force=True)
        cache.shrink()
        assert cache.nbytes <= 300_000 and len(cache) == 0 and run.partial
        status, new = run.since(counts)
        start, steps, _, values = new["a"]
        assert status == "RUNNING" and start == 20_000 and list(steps) == list(range(20_000, 20_100))
        counts["a"] = 20_100
        cache.shrink()
        assert cache.nbytes < 10_000                # what was sent is let go
        # a chart request meanwhile decodes the run afresh, whole
        whole = cache.get(exp.run_dir)
        assert whole is not run and whole.counts() == {"a": 20_100}
        assert len(whole.snapshot("a")[0]) == 20_100
        assert cache.nbytes > 300_000         # the run just asked for is kept for its answer
        cache.unfollow(run, counts)            # ... and the bound holds again after it
        assert cache.nbytes == 0 and len(cache) == 0
    finally:
        exp.close()


def test_json_answers_are_built_off_the_event_loop(tmp_path: Path, monkeypatch) -> None:
    """Serializing a big run happens in a worker thread, never on the loop that
    serves every other request."""
    import threading

    from expman.dashboard import server
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    where: list[str] = []
    real = server.orjson.dumps

    def spy(*a: Any, **k: Any) -> bytes:
        where.append(threading.current_thread().name)
        return real(*a, **k)

    with running_server(tmp_path) as url:
        monkeypatch.setattr(server.orjson, "dumps", spy)
        for path in ("api/runs", "api/runs/demo/r", "api/runs/demo/r/events",
                     "api/runs/demo/r/series?metric=train_loss"):
            get_json(url + path)
    assert len(where) >= 4 and "expman-dashboard" not in where, where   # the loop's thread


# ---- what is exposed, paging (issue 20, item 15) --------------------------------------------


def test_runs_are_paged_and_sorted_on_the_server(tmp_path: Path) -> None:
    for i, lr in enumerate((0.3, 0.1, 0.2, 0.5, 0.4)):
        demo_run(tmp_path, f"r{i}", lr, steps=5 + i, artifacts=False)
    with running_server(tmp_path) as url:
        page = get_json(url + "api/runs?offset=0&limit=2&sort=param:learning_rate&order=asc")
        assert page["total"] == 5 and page["offset"] == 0 and page["limit"] == 2
        assert [r["params"]["learning_rate"] for r in page["runs"]] == [0.1, 0.2]
        page = get_json(url + "api/runs?offset=2&limit=2&sort=param:learning_rate&order=asc")
        assert [r["params"]["learning_rate"] for r in page["runs"]] == [0.3, 0.4]
        page = get_json(url + "api/runs?sort=points&order=desc&limit=3")
        assert [r["run_name"] for r in page["runs"]] == ["r4", "r3", "r2"]
        page = get_json(url + "api/runs?sort=metric:train_loss&order=desc&offset=4")
        assert len(page["runs"]) == 1 and page["total"] == 5
        # the newest first by default; no absolute path anywhere in the answer
        page = get_json(url + "api/runs")
        assert [r["run_name"] for r in page["runs"]] == ["r4", "r3", "r2", "r1", "r0"]
        assert page["base"] == tmp_path.name and "base_dir" not in page
        assert str(tmp_path) not in json.dumps(page)
        for bad, word in (("limit=-1", "limit"), ("limit=100000", "limit"),
                          ("offset=x", "offset"), ("sort=nope", "sort"), ("order=up", "order")):
            status, _, body = get(url + "api/runs?" + bad)
            assert status == 400 and word.encode() in body, (bad, body)


def test_the_run_page_does_not_expose_secrets_in_argv_or_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py", "--lr", "0.1", "--api-key", "sk-AAA",
                                      "--token=tok-BBB", "WANDB_API_KEY=CCC", "--epochs", "3"])
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_AUTH_TOKEN", "DDD")
    with expman.Experiment("s", "r", base_dir=tmp_path, capture_env=True) as exp:
        exp.log_metrics({"x": 1.0}, step=0)
    raw = (tmp_path / "s" / "r" / layout.RUN_FILE).read_text()
    assert "sk-AAA" in raw and "DDD" in raw              # the writer records them as they were
    with running_server(tmp_path) as url:
        status, _, body = get(url + "api/runs/s/r")
    assert status == 200
    for secret in (b"sk-AAA", b"tok-BBB", b"CCC", b"DDD"):
        assert secret not in body
    env = json.loads(body)["meta"]["env"]
    assert env["argv"] == ["train.py", "--lr", "0.1", "--api-key", "[redacted]",
                           "--token=[redacted]", "WANDB_API_KEY=[redacted]", "--epochs", "3"]
    assert env["env_vars"]["SLURM_JOB_ID"] == "42"
    assert env["env_vars"]["SLURM_AUTH_TOKEN"] == "[redacted]"
    assert env["python_version"] and env["hostname"]


# ---- loss is shown (issue 26) ---------------------------------------------------------------


def test_the_run_page_shows_what_every_rank_lost(tmp_path: Path) -> None:
    with expman.Experiment("l", "r", base_dir=tmp_path, capture_env=False) as exp:
        exp.log_metrics({"x": 1.0}, step=0)
        run = exp.run_dir
    meta = json.loads((run / layout.RUN_FILE).read_text())
    meta["world_size"] = 3                      # a 3-rank job: rank 2's writer lost rows
    (run / layout.RUN_FILE).write_text(json.dumps(meta))
    rank2 = dict(meta, rank=2, data_loss={"rows_dropped": 4146, "events_dropped": 0,
                                          "write_errors": 3, "last_error": "No space left on device"})
    (run / layout.rank_file(layout.RUN_FILE, 2)).write_text(json.dumps(rank2))
    with running_server(tmp_path) as url:
        ig = get_json(url + "api/runs/l/r")["integrity"]
        row = get_json(url + "api/runs")["runs"][0]
    assert row["rank_loss"] == {"2": rank2["data_loss"]}      # the runs view's row too
    assert not ig["ok"]
    assert ig["data_loss"] == {"2": rank2["data_loss"]}
    assert any("rank 2" in p and "4146 rows" in p and "No space left" in p
               for p in ig["problems"]), ig["problems"]


# ---- slow and flooding clients (issue 20, item 12) ------------------------------------------


def _half_sent(port: int) -> Any:
    """A connection that sends the start of a request and never finishes its headers."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return s


def _closed_by_server(s: Any) -> bool:
    """Blocks until the server closes the connection (True) or sends something."""
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_after_the_header_timeout(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, max_connections=5, header_timeout=0.5) as url:
        port = urllib.parse.urlsplit(url).port
        slow = [_half_sent(port) for _ in range(5)]
        try:
            assert all(_closed_by_server(s) for s in slow)   # never answered, closed
        finally:
            for s in slow:
                s.close()
        assert get_json(url + "api/runs")["runs"]          # their places are free again


def test_connections_past_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, max_connections=4, header_timeout=60) as url:
        port = urllib.parse.urlsplit(url).port
        slow = [_half_sent(port) for _ in range(4)]
        try:
            extra = _half_sent(port)             # accepted after the four (one queue)
            assert _closed_by_server(extra)       # closed without waiting for the timeout
            extra.close()
        finally:
            for s in slow:
                s.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    if sys.platform == "win32":
        pytest.skip("no RLIMIT_NOFILE on Windows")
    import resource

    from expman.dashboard.limits import connection_cap, raise_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        now = raise_nofile()
        want = hard if hard != resource.RLIM_INFINITY else max(lowered, 1 << 16)
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_cap(None, 1024) == 1024 - 64          # room kept for run files
    assert connection_cap(None, 1 << 20) == 1000 and connection_cap(50, 1 << 20) == 50


def test_a_run_that_ends_gives_back_its_room_to_grow(tmp_path: Path) -> None:
    """Columns of a live run grow by doubling; once it ends they hold just its points
    (the 26.6 soak: memory returns when runs end)."""
    exp = expman.Experiment("c", "grow", base_dir=tmp_path, capture_env=False)
    try:
        exp.log_metrics({"a": 0.0}, step=0)
        exp.flush()
        run = CachedRun(exp.run_dir)
        for i in range(1, 3000):
            exp.log_metrics({"a": float(i)}, step=i)
            if i % 500 == 0:
                exp.flush()
                run.refresh(force=True)
        exp.flush()
        run.refresh(force=True)
        assert run.status == "RUNNING" and run.counts() == {"a": 3000}
        assert run.columns["a"].nbytes > 3000 * 24            # room to grow
    finally:
        exp.close()
    run.refresh(force=True)
    assert run.status == "FINISHED" and run.counts() == {"a": 3000}
    assert run.columns["a"].nbytes == 3000 * 24
    assert list(run.snapshot("a")[0]) == list(range(3000))


def test_a_stream_sends_a_rewritten_run_again_from_the_start(tmp_path: Path) -> None:
    """A run whose metrics.bin was replaced by a shorter one (a repair cut it, a sync
    replaced it): a stream that had sent more points gets the run again from 0."""
    with expman.Experiment("c", "r", base_dir=tmp_path, capture_env=False) as exp:
        for i in range(50):
            exp.log_metrics({"a": float(i)}, step=i)
        run_dir = exp.run_dir
    with expman.Experiment("c", "short", base_dir=tmp_path, capture_env=False) as exp:
        for i in range(5):
            exp.log_metrics({"a": 100.0 + i}, step=i)
        short = exp.run_dir
    cache = RunCache()
    run = cache.get(run_dir)
    counts = run.counts()
    assert counts == {"a": 50} and run.since(counts)[1] == {}
    os.replace(short / layout.METRICS_FILE, run_dir / layout.METRICS_FILE)
    run = cache.get(run_dir)
    status, new = run.since(counts)
    start, steps, _, values = new["a"]
    assert start == 0 and list(steps) == list(range(5)) and values[0] == 100.0
