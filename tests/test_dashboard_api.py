"""expman serve's JSON API, over a real Uvicorn server on 127.0.0.1: runs,
series (decimated, ranged, x axes), events, artifacts, the live stream, and the
guards (404 outside the base dir, CSP, token, Host check, read-only)."""

from __future__ import annotations

import http.client
import json
import os
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
np = need("numpy")

import expman  # noqa: E402
from expman import layout  # noqa: E402
from expman.dashboard import cookie_value, is_loopback, pick_token, url_for  # noqa: E402
from expman.dashboard.cache import CachedRun, RunCache  # noqa: E402
from expman.dashboard.testing import running_server  # noqa: E402

from dashboard_data import XSS_IMG, XSS_SCRIPT, demo_run, hostile_run, png_bytes  # noqa: E402


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str) -> Any:
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dash")
    base = root / "experiments"
    base.mkdir()
    a = demo_run(base, "run-a", 0.01, seed=1)
    b = demo_run(base, "run-b", 0.02, seed=2, artifacts=False)
    h = hostile_run(base)
    # a spike run: 200k points, one spike up and one down
    with expman.Experiment("big", "spiky", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for i in range(200_000):
            v = 1000.0 if i == 123_457 else (-1000.0 if i == 7 else float(i % 100))
            exp.log_metrics({"loss": v}, step=i)
    # something outside the base dir, and symlinks to it from inside
    outside = root / "outside"
    (outside / "stolen").mkdir(parents=True)
    (outside / "stolen" / layout.RUN_FILE).write_text(json.dumps({"status": "FINISHED"}))
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "stolen", base / "demo" / "linked")
    os.symlink(outside / "secret.txt", a / layout.ARTIFACTS_DIR / "leak.txt")
    with running_server(base) as url:
        yield {"url": url, "base": base, "a": a, "b": b, "hostile": h}


def snapshot(base: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in base.rglob("*")}


def test_runs_list_and_security_headers(site) -> None:
    status, headers, body = get(site["url"] + "api/runs")
    assert status == 200
    assert headers["content-security-policy"] == "default-src 'self'"
    assert headers["x-content-type-options"] == "nosniff"
    runs = {r["id"]: r for r in json.loads(body)["runs"]}
    assert {"demo/run-a", "demo/run-b", "big/spiky", f"demo/{XSS_IMG}"} == set(runs)
    assert "demo/linked" not in runs          # a symlink out of the base dir is not listed
    a = runs["demo/run-a"]
    assert a["status"] == "FINISHED" and a["params"]["learning_rate"] == 0.01
    assert set(a["last_metrics"]) == {"train_loss", "train_acc", "val_loss"}
    assert runs[f"demo/{XSS_IMG}"]["run_name"] == XSS_SCRIPT     # data stays data, in JSON
    status, headers, page = get(site["url"])
    assert status == 200 and headers["content-security-policy"] == "default-src 'self'"
    assert b"/static/app.js" in page


def test_run_detail(site) -> None:
    d = get_json(site["url"] + "api/runs/demo/run-a")
    assert d["status"] == "FINISHED" and d["params"]["optimizer"]["momentum"] == 0.9
    assert d["metrics"]["train_loss"]["count"] == 400 and d["metrics"]["val_loss"]["count"] == 20
    assert d["meta"]["env"]["python_version"]
    arts = {x["name"]: x for x in d["artifacts"]}
    assert arts["sample.png"]["image"] and arts["sample.png"]["present"]
    assert len(arts["sample.png"]["sha256"]) == 64 and arts["sample.png"]["size"] == len(png_bytes())
    assert arts["notes.txt"]["text"] and not arts["notes.txt"]["image"]
    assert d["integrity"]["ok"], d["integrity"]
    assert d["integrity"]["metrics"]["points"] == 820


def test_series_decimated_keeps_spikes_and_ends(site) -> None:
    s = get_json(site["url"] + "api/runs/big/spiky/series?metric=loss&points=500")
    assert s["count"] == s["total"] == 200_000 and not s["raw"]
    assert len(s["x"]) <= 5 * 500 + 2
    assert max(s["y"]) == 1000.0 and min(s["y"]) == -1000.0      # both spikes
    assert s["x"][0] == 0 and s["x"][-1] == 199_999
    z = get_json(site["url"] + "api/runs/big/spiky/series?metric=loss&points=500"
                 "&from=123400&to=123500")
    assert z["raw"] and z["x"][0] == 123_399 and z["x"][-1] == 123_501
    assert 1000.0 in z["y"]


def test_series_x_axes_and_bad_parameters(site) -> None:
    base = site["url"] + "api/runs/demo/run-a/series?metric=train_loss"
    step = get_json(base + "&x=step")
    wall = get_json(base + "&x=time")
    rel = get_json(base + "&x=rel")
    assert step["raw"] and step["x"] == list(range(400))
    assert wall["x"][0] > 1e9 and 0 <= rel["x"][0] < 60
    assert abs((wall["x"][-1] - wall["x"][0]) - (rel["x"][-1] - rel["x"][0])) < 1e-6
    for query, words in [("&x=epoch", "x='epoch'"), ("&points=abc", "points='abc'"),
                         ("&points=0", "points=0"), ("&from=zz", "from='zz'")]:
        status, _, body = get(base + query)
        assert status == 400 and words in body.decode(), body
    status, _, body = get(site["url"] + "api/runs/demo/run-a/series?metric=nope")
    assert status == 404 and b"nope" in body


def test_series_on_another_metric_as_x(tmp_path: Path) -> None:
    """x=metric:epoch: each point's x is the epoch logged at (or last before) its step;
    points before the first epoch have no x and are left out."""
    base = tmp_path / "experiments"
    with expman.Experiment("e", "r", base_dir=base, capture_env=False, system_metrics=False) as exp:
        for step in range(10):
            exp.log_metrics({"loss": float(step)}, step=step)
            if step % 4 == 2:
                exp.log_metrics({"epoch": step / 4}, step=step)     # 0.5 at 2, 1.5 at 6
    with running_server(base) as url:
        s = get_json(url + "api/runs/e/r/series?metric=loss&x=metric:epoch")
        assert s["x_axis"] == "metric:epoch" and s["count"] == 10
        assert s["x"] == [0.5] * 4 + [1.5] * 4 and s["y"] == [float(i) for i in range(2, 10)]
        z = get_json(url + "api/runs/e/r/series?metric=loss&x=metric:epoch&from=1&to=2")
        assert set(z["x"]) <= {0.5, 1.5} and 9.0 in z["y"]
        status, _, body = get(url + "api/runs/e/r/series?metric=loss&x=metric:nope")
        assert status == 404 and b"nope" in body
        status, _, body = get(url + "api/runs/e/r/series?metric=loss&x=metric:")
        assert status == 400 and b"metric:NAME" in body


def test_a_runs_metrics_are_paged_and_searchable(tmp_path: Path) -> None:
    """A run of 12,000 metrics: its detail carries every name but the summaries of the
    first 100 only; /metrics pages the summaries, searched by a substring."""
    base = tmp_path / "experiments"
    with pytest.warns(RuntimeWarning, match="12000 distinct metric names"):
        with expman.Experiment("w", "wide", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            for step in range(12_000):
                exp.log_metrics({f"loss_{step}": float(step)}, step=step)
    with running_server(base) as url:
        d = get_json(url + "api/runs/w/wide")
        assert d["metric_count"] == 12_000 and len(d["metric_names"]) == 12_000
        assert len(d["metrics"]) == 100 and sorted(d["metrics"]) == d["metric_names"][:100]
        page = get_json(url + "api/runs/w/wide/metrics?offset=200&limit=50")
        assert page["total"] == 12_000 and len(page["metrics"]) == 50
        assert [m["name"] for m in page["metrics"]] == d["metric_names"][200:250]
        found = get_json(url + "api/runs/w/wide/metrics?q=LOSS_1199")
        assert [m["name"] for m in found["metrics"]] == ["loss_1199"] + [f"loss_1199{i}" for i in range(10)]
        assert found["metrics"][0]["count"] == 1 and found["metrics"][0]["last_value"] == 1199.0
        status, _, body = get(url + "api/runs/w/wide/metrics?limit=5001")
        assert status == 400 and b"limit" in body


def test_export_csv_is_every_raw_point_of_the_range(site) -> None:
    """/api/export.csv: the points of each run in [from, to], undecimated, as logged."""
    import csv
    import io
    url = (site["url"] + "api/export.csv?metric=loss&run=big/spiky&run=demo/run-a"
           "&from=123000&to=124000")
    status, headers, body = get(url)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert 'filename="loss.csv"' in headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["run", "x", "step", "time", "value"]
    run = expman.open_run(site["base"] / "big" / "spiky")
    s = run.metrics["loss"]
    want = [(int(st), float(v)) for st, v in zip(s.steps, s.values) if 123000 <= st <= 124000]
    assert [(int(r[2]), float(r[4])) for r in rows[1:]] == want       # run-a has no "loss"
    assert all(r[0] == "big/spiky" and float(r[1]) == int(r[2]) for r in rows[1:])
    assert 1000.0 in [float(r[4]) for r in rows[1:]]
    assert [float(r[3]) for r in rows[1:]] == [float(t) for st, t in zip(s.steps, s.times)
                                                 if 123000 <= st <= 124000]
    status, _, body = get(site["url"] + "api/export.csv?metric=loss")
    assert status == 400 and b"run=" in body


def test_paths_outside_the_base_dir_are_404(site) -> None:
    u = site["url"]
    for path in ["api/runs/demo/linked", "api/runs/demo/..", "api/runs/..%2F..%2Fetc/passwd",
                 "api/runs/demo/run-a%2F..%2Frun-b", "api/runs/nope/nope",
                 "api/runs/demo/run-a/artifacts/leak.txt",
                 "api/runs/demo/run-a/artifacts/..%2F" + layout.RUN_FILE,
                 "api/runs/demo/run-a/artifacts/../../run-b/" + layout.RUN_FILE,
                 "static/..%2F..%2F__init__.py"]:
        status, _, body = get(u + path)
        assert status == 404, (path, status, body[:200])
        assert b"secret" not in body


def test_artifacts_types_and_disposition(site) -> None:
    u = site["url"] + "api/runs/demo/run-a/artifacts/"
    status, h, body = get(u + "sample.png")
    assert status == 200 and h["content-type"] == "image/png" and body == png_bytes()
    assert "attachment" not in h.get("content-disposition", "")
    status, h, body = get(u + "notes.txt")
    assert h["content-type"].startswith("text/plain") and h["content-disposition"].startswith("attachment")
    status, h, _ = get(u + "config.json")
    assert h["content-type"] == "application/json" and h["content-disposition"].startswith("attachment")
    status, h, body = get(u + "notes.txt?head=5")
    assert status == 200 and body == b"epoch"


def test_events_of_a_hostile_run_come_back_verbatim(site) -> None:
    ev = get_json(site["url"] + f"api/runs/demo/{q(XSS_IMG)}/events?kind=message")["events"]
    assert [e["msg"] for e in ev] == [XSS_IMG, XSS_SCRIPT]
    last = get_json(site["url"] + f"api/runs/demo/{q(XSS_IMG)}/events?kind=message&last=1")
    assert last["total"] == 2 and [e["msg"] for e in last["events"]] == [XSS_SCRIPT]
    assert get(site["url"] + f"api/runs/demo/{q(XSS_IMG)}/events?last=-1")[0] == 400
    d = get_json(site["url"] + f"api/runs/demo/{q(XSS_IMG)}")
    assert d["params"] == {"note": XSS_SCRIPT, "title": XSS_IMG}


def test_the_server_never_writes_into_the_base_dir(site) -> None:
    before = snapshot(site["base"])
    for path in ["api/runs", "api/runs/demo/run-a", "api/runs/demo/run-a/events",
                 "api/runs/demo/run-a/series?metric=train_loss",
                 "api/runs/demo/run-a/artifacts/sample.png"]:
        assert get(site["url"] + path)[0] == 200
    assert snapshot(site["base"]) == before


def test_host_header_is_checked_on_loopback(site) -> None:
    status, _, body = get(site["url"] + "api/runs", {"Host": "evil.example:80"})
    assert status == 403 and b"evil.example" in body


def test_token_guards_every_request(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path, token="s3cret-token") as url:
        assert url.endswith("/?token=s3cret-token")
        root = url.split("?")[0]
        status, _, body = get(root + "api/runs")
        assert status == 403 and b"token" in body
        assert get(root + "api/runs?token=wrong")[0] == 403
        port = urllib.parse.urlsplit(url).port
        cookie = f"expman_token_{port}={cookie_value('s3cret-token', port)}"
        status, h, _ = get(root + "api/runs?token=s3cret-token")
        assert status == 200 and h["set-cookie"].startswith(cookie + ";")
        assert "HttpOnly" in h["set-cookie"]
        assert get(root + "api/runs", {"Cookie": cookie})[0] == 200
        assert get(root + "api/runs", {"Authorization": "token s3cret-token"})[0] == 200


def test_token_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    assert pick_token("127.0.0.1", None) is None
    tok = pick_token("0.0.0.0", None)
    assert tok and len(tok) >= 24 and tok != pick_token("0.0.0.0", None)
    assert pick_token("0.0.0.0", False) is None             # --no-token, said explicitly
    assert pick_token("127.0.0.1", "abc") == "abc"
    assert url_for("::1", 8000, "t") == "http://[::1]:8000/?token=t"


def read_events(resp: http.client.HTTPResponse, until: Any, timeout: float = 10.0) -> list:
    """SSE events (name, data) until ``until(events)`` is true or the deadline."""
    events: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    name, buf = None, b""
    while time.monotonic() < deadline and not until(events):
        line = resp.readline()
        if not line:
            break
        line = line.rstrip(b"\n")
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            buf = line[6:]
        elif line == b"" and name:
            events.append((name, json.loads(buf)))
            name, buf = None, b""
    return events


def test_live_stream_sends_only_new_points(tmp_path: Path) -> None:
    exp = expman.Experiment("live", "r1", base_dir=tmp_path, capture_env=False, system_metrics=False)
    try:
        for i in range(100):
            exp.log_metrics({"loss": float(i)}, step=i)
        exp.flush()
        with running_server(tmp_path) as url:
            host, port = urllib.parse.urlsplit(url).netloc.split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/api/stream?run=live/r1&watch=live/r1")
            resp = conn.getresponse()
            assert resp.headers["content-type"].startswith("text/event-stream")
            hello = read_events(resp, lambda ev: len(ev) >= 1)
            assert isinstance(hello[0][1].pop("scan"), int)       # the scan it starts after
            assert hello[0] == ("hello", {"runs": ["live/r1"], "counts": {"live/r1": {"loss": 100}}})
            for i in range(100, 130):
                exp.log_metrics({"loss": float(i)}, step=i)
            exp.flush()
            evs = read_events(resp, lambda ev: sum(len(d["steps"]) for n, d in ev if n == "points") >= 30)
            pts = [d for n, d in evs if n == "points"]
            assert pts[0]["start"] == 100 and pts[0]["steps"][0] == 100      # only new points
            assert [s for d in pts for s in d["steps"]] == list(range(100, 130))
            rows = read_events(resp, lambda ev: any(n == "runs" for n, _ in ev))
            row = next(d for n, d in rows if n == "runs")["rows"][0]
            assert row["id"] == "live/r1" and row["last_metrics"]["loss"] == 129.0
            exp.close()
            end = read_events(resp, lambda ev: any(n == "status" for n, _ in ev))
            assert ("status", {"run": "live/r1", "status": "FINISHED"}) in end
            conn.close()
    finally:
        if exp.status == "RUNNING":
            exp.close()


def test_new_runs_appear_in_the_stream(tmp_path: Path) -> None:
    demo_run(tmp_path, "first", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path) as url:
        host, port = urllib.parse.urlsplit(url).netloc.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/api/stream")
        resp = conn.getresponse()
        read_events(resp, lambda ev: len(ev) >= 1)
        demo_run(tmp_path, "second", 0.01, steps=5, artifacts=False)
        evs = read_events(resp, lambda ev: any(n == "runs" for n, _ in ev))
        runs = next(d for n, d in evs if n == "runs")
        # the scan may catch the run while demo_run still writes it (a slow machine,
        # ASan): the row says what was true then, and the listing what is true now
        assert runs["added"] == ["demo/second"] and runs["rows"][0]["id"] == "demo/second"
        assert runs["rows"][0]["status"] in ("RUNNING", "FINISHED")
        conn.close()
        listed = {r["id"]: r["status"] for r in get_json(url + "api/runs")["runs"]}
        assert listed == {"demo/first": "FINISHED", "demo/second": "FINISHED"}


def open_stream(url: str, query: str = "", headers: dict[str, str] | None = None) -> Any:
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/stream" + query, headers=headers or {})
    return conn, conn.getresponse()


def added_runs(events: list) -> list[str]:
    return [rid for n, d in events if n == "runs" for rid in d["added"]]


def test_a_reopened_stream_announces_the_runs_it_missed(tmp_path: Path) -> None:
    """The page lists the runs, then opens a stream; it reopens it after every ``runs``
    event. A run that appears between the listing and the stream, or between the old
    stream and the new one, is announced all the same: the page says which scan it has
    seen the new runs of (``since``, the listing's ``scan`` or the last event's)."""
    demo_run(tmp_path, "first", 0.01, steps=5, artifacts=False)
    with running_server(tmp_path) as url:
        listing = get_json(url + "api/runs")
        assert [r["id"] for r in listing["runs"]] == ["demo/first"]
        demo_run(tmp_path, "second", 0.01, steps=5, artifacts=False)   # after the listing
        conn, page = open_stream(url, f"?since={listing['scan']}")
        hello = read_events(page, lambda ev: len(ev) >= 1)
        assert hello[0][0] == "hello" and hello[0][1]["scan"] == listing["scan"]
        assert "lost" not in hello[0][1]
        evs = read_events(page, lambda ev: "demo/second" in added_runs(ev))
        assert added_runs(evs) == ["demo/second"]
        seen = next(d for n, d in evs if n == "runs")["scan"]
        keeper, kept = open_stream(url)          # another page's stream: the poller goes on
        read_events(kept, lambda ev: len(ev) >= 1)
        conn.close()                             # the page reopens its stream...
        demo_run(tmp_path, "third", 0.01, steps=5, artifacts=False)    # ...a run appears...
        assert added_runs(read_events(kept, lambda ev: "demo/third" in added_runs(ev))) == ["demo/third"]
        conn, page = open_stream(url, f"?since={seen}")                 # ...scanned before it
        evs = read_events(page, lambda ev: "demo/third" in added_runs(ev))
        assert evs[0][1]["scan"] == seen and added_runs(evs) == ["demo/third"]
        conn.close()
        # the browser's own reconnection says the last event's id (the scan) instead
        conn, page = open_stream(url, "?since=0", {"Last-Event-ID": str(seen)})
        assert added_runs(read_events(page, lambda ev: "demo/third" in added_runs(ev))) == ["demo/third"]
        conn.close()
        # a scan this server never made (it restarted): the page is told to list again
        conn, page = open_stream(url, "?since=99999")
        hello = read_events(page, lambda ev: len(ev) >= 1)[0][1]
        assert hello["lost"] is True and hello["scan"] < 99999
        conn.close()
        keeper.close()
        assert get(url + "api/stream?since=-1")[0] == 400


def test_runs_view_follows_changes_between_requests(tmp_path: Path, monkeypatch) -> None:
    """/api/runs keeps the rows of unchanged finished runs (reader.RunListCache), and
    still shows a changed run's new state, drops a removed run, lists a new one."""
    import shutil

    from expman import reader
    from expman.runmeta import set_tags
    monkeypatch.setattr(reader.RunListCache, "RACY", 0.0)   # trust files written just now
    a = demo_run(tmp_path, "a", 0.01, steps=5, artifacts=False)
    demo_run(tmp_path, "b", 0.02, steps=5, artifacts=False)
    time.sleep(0.05)                # past the timestamp tick of the files just written
    with running_server(tmp_path) as url:
        one = {r["id"]: r for r in get_json(url + "api/runs")["runs"]}
        assert set(one) == {"demo/a", "demo/b"} and one["demo/a"]["tags"] == []
        assert one == {r["id"]: r for r in get_json(url + "api/runs")["runs"]}
        set_tags(a, add=["keep"])
        shutil.rmtree(tmp_path / "demo" / "b")
        demo_run(tmp_path, "c", 0.03, steps=5, artifacts=False)
        two = {r["id"]: r for r in get_json(url + "api/runs")["runs"]}
        assert set(two) == {"demo/a", "demo/c"} and two["demo/a"]["tags"] == ["keep"]
        assert two["demo/a"]["last_metrics"] == one["demo/a"]["last_metrics"]
        assert two["demo/c"]["status"] == "FINISHED" and two["demo/c"]["points"] > 0
        params = a / layout.PARAMS_FILE
        time.sleep(0.05)
        params.write_bytes(params.read_bytes().replace(b"0.01", b"0.07"))   # in place, same size
        three = {r["id"]: r for r in get_json(url + "api/runs")["runs"]}
        assert three["demo/a"]["params"]["learning_rate"] == 0.07


def test_runs_listings_are_shared_not_run_side_by_side(tmp_path: Path, monkeypatch) -> None:
    """Dashboard.rows from many threads at once: one listing at a time, every caller
    gets rows from a listing that began after it called, all the same rows."""
    import threading

    from expman import reader
    from expman.dashboard.server import Dashboard
    for i in range(3):
        demo_run(tmp_path, f"r{i}", 0.01, steps=5, artifacts=False)
    d = Dashboard(tmp_path)
    calls, active, most = [], [0], [0]
    real = reader.list_runs

    def spy(*a: Any, **k: Any) -> Any:
        active[0] += 1
        most[0] = max(most[0], active[0])
        deadline = time.monotonic() + 30
        while not calls and len(d._waiting) < 5:   # the first listing runs until the
            assert time.monotonic() < deadline      # five others wait for the next one
            time.sleep(0.005)
        try:
            calls.append(time.monotonic())
            return real(*a, **k)
        finally:
            active[0] -= 1
    monkeypatch.setattr(reader, "list_runs", spy)
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(d.rows())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 6 and all(g == got[0] for g in got) and len(got[0]) == 3
    assert most[0] == 1 and len(calls) == 2       # one at a time, the five share the second


def test_cache_reads_a_live_run_incrementally_and_is_bounded(tmp_path: Path) -> None:
    exp = expman.Experiment("c", "live", base_dir=tmp_path, capture_env=False, system_metrics=False)
    try:
        for i in range(1000):
            exp.log_metrics({"a": float(i)}, step=i)
        exp.flush()
        run = CachedRun(exp.run_dir)
        off = run.tail.integrity["end"]
        assert run.counts() == {"a": 1000}
        for i in range(1000, 1500):
            exp.log_metrics({"a": float(i)}, step=i)
        exp.flush()
        run.refresh(force=True)
        assert run.counts() == {"a": 1500}
        # the second read started at the old end: frames are counted once, not re-read
        assert run.tail.integrity["end"] > off
        assert run.tail.integrity["points"] == 1500
        steps, _, values = run.snapshot("a")
        assert list(steps) == list(range(1500)) and values[-1] == 1499.0
    finally:
        exp.close()
    for name in ("x", "y", "z"):
        with expman.Experiment("c", name, base_dir=tmp_path, capture_env=False,
                               system_metrics=False) as e:
            for i in range(10_000):
                e.log_metrics({"v": 1.0}, step=i)
    cache = RunCache(max_bytes=400_000)        # one run's columns (240 kB) fit, not two
    for name in ("x", "y", "z"):
        cache.get(tmp_path / "c" / name)
    assert len(cache) == 1 and cache.nbytes <= 400_000



def test_a_run_asked_for_at_once_is_decoded_once(tmp_path: Path, monkeypatch) -> None:
    """The page asks for a run's charts and its live stream together: both wait for
    one decode (a second would double a large run's first chart), and an error
    reaches every asker without being cached."""
    import threading

    from expman.dashboard import cache as cache_mod
    with expman.Experiment("c", "once", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as e:
        for i in range(100):
            e.log_metrics({"v": float(i)}, step=i)
    made, gate = [], threading.Event()
    real = cache_mod.CachedRun

    class Slow(real):
        def __init__(self, path: Path) -> None:
            made.append(path)
            gate.wait(30)
            super().__init__(path)

    waiting: list[int] = []

    class Watched(cache_mod.Future):
        def result(self, timeout: float | None = None) -> Any:
            waiting.append(1)
            return super().result(timeout)

    monkeypatch.setattr(cache_mod, "CachedRun", Slow)
    monkeypatch.setattr(cache_mod, "Future", Watched)
    cache = RunCache()
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(tmp_path / "c" / "once")))
               for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(waiting) < 3:                 # the three others wait on the first one's load
        assert time.monotonic() < deadline
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert len(made) == 1 and len(got) == 4 and all(r is got[0] for r in got)
    assert got[0].counts() == {"v": 100}

    class Broken(real):
        def __init__(self, path: Path) -> None:
            raise OSError("disk gone")

    monkeypatch.setattr(cache_mod, "CachedRun", Broken)
    for _ in range(2):                          # not remembered: asked again, tried again
        with pytest.raises(OSError, match="disk gone"):
            cache.get(tmp_path / "c" / "missing")
    assert len(cache) == 1

def test_a_run_that_dies_is_streamed_as_crashed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    code = ("import sys, time, expman\n"
            "exp = expman.Experiment('live', 'doomed', base_dir=sys.argv[1], capture_env=False,\n"
            "                        system_metrics=False)\n"
            "exp.log_metrics({'loss': 1.0}, step=0); exp.flush()\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n")
    root = Path(expman.__file__).resolve().parent.parent      # the expman under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with running_server(tmp_path) as url:
            host, port = urllib.parse.urlsplit(url).netloc.split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("GET", "/api/stream?run=live/doomed")
            resp = conn.getresponse()
            read_events(resp, lambda ev: len(ev) >= 1)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            evs = read_events(resp, lambda ev: any(n == "status" for n, _ in ev))
            assert ("status", {"run": "live/doomed", "status": "CRASHED"}) in evs
            conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _python(*args: str, **kw: Any) -> Any:
    import subprocess
    import sys
    root = Path(expman.__file__).resolve().parent.parent      # the expman under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    import tempfile
    kw.setdefault("cwd", tempfile.gettempdir())     # never the source tree on sys.path[0]
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_importing_expman_or_the_dashboard_package_loads_no_server() -> None:
    code = ("import sys, expman, expman.dashboard\n"
            "bad = [m for m in ('starlette', 'uvicorn', 'numpy', 'anyio') if m in sys.modules]\n"
            "print(bad)")
    proc = _python("-c", code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "[]"


def test_python_m_expman_dashboard_serves_and_prints_the_url_first(tmp_path: Path) -> None:
    demo_run(tmp_path, "r", 0.01, steps=5, artifacts=False)
    proc = _python("-m", "expman.dashboard", str(tmp_path), "--port", "0", "--no-browser")
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("expman dashboard: http://127.0.0.1:") and first.endswith("/")
        url = first.split(": ", 1)[1]
        assert [r["id"] for r in get_json(url + "api/runs")["runs"]] == ["demo/r"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    bad = _python("-m", "expman.dashboard", str(tmp_path), "--token", "x", "--no-token")
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "--token and --no-token" in err


def test_a_logged_table_is_served_by_version_and_page(tmp_path: Path) -> None:
    """Issue 22.2: the run lists its tables; /tables/NAME gives one version's rows a
    page at a time, the newest version by default; bad arguments are 400, an unknown
    table or a damaged version 404."""
    base = tmp_path / "experiments"
    with expman.Experiment("t", "r", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_table("eval/samples", [[f"p{i}", i / 4] for i in range(120)],
                      columns=["prompt", "reward"], step=10)
        exp.log_table("eval/samples", [["last", float("nan")], ["big", 2**70]],
                      columns=["prompt", "reward"], step=20)
    with running_server(base) as url:
        url_base = url + "api/runs/t/r"
        run = get_json(url_base)
        assert run["tables"] == {"eval/samples": {"versions": 2, "rows": 122}}
        newest = get_json(url_base + "/tables/eval/samples")
        assert (newest["version"], newest["step"], newest["total"]) == (1, 20, 2)
        assert newest["rows"] == [["last", "NaN"], ["big", str(2**70)]]
        assert [v["step"] for v in newest["versions"]] == [10, 20]
        page = get_json(url_base + "/tables/eval/samples?version=0&offset=100&limit=50")
        assert (page["columns"], page["total"], page["offset"]) == (["prompt", "reward"], 120, 100)
        assert page["rows"][0] == ["p100", 25.0] and len(page["rows"]) == 20
        for bad in ("version=2", "limit=0", "limit=501", "offset=-1", "version=x"):
            assert get(url_base + "/tables/eval/samples?" + bad)[0] == 400, bad
        assert get(url_base + "/tables/nope")[0] == 404
        path = exp.run_dir / "artifacts" / "tables" / "eval" / "samples.jsonl"
        path.write_bytes(path.read_bytes()[:-4])            # the newest version cut short
        assert get(url_base + "/tables/eval/samples")[0] == 404
        assert get_json(url_base + "/tables/eval/samples?version=0")["total"] == 120
