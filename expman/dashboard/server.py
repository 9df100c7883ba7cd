"""The dashboard's HTTP side: a Starlette app serving the built page and a
read-only JSON API over a base dir (docs/dashboard.md lists every endpoint).

It only calls the read side (``expman.list_runs``, ``RunTail`` through the
cache, ``expman.layout``); it never writes into a run folder. Every response
carries ``Content-Security-Policy: default-src 'self'``; a path or symlink that
leads outside the base dir is a 404; a token, when set, guards every request.
"""

from __future__ import annotations

import hmac
import math
import mimetypes
import os
import re
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from expman import layout
from expman.dashboard.cache import DEFAULT_MAX_BYTES, CachedRun, RunCache
from expman.decimate import window
from expman.dashboard.live import Live

STATIC_DIR = Path(__file__).resolve().parent / "static"
X_AXES = ("step", "time", "rel")
MAX_POINTS = 20_000                # pixels a client may ask for
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
# an artifact is shown alone (Chromium's image viewer styles itself inline); it runs nothing
ARTIFACT_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


async def _answer(compute: Callable[[], Any]) -> Response:
    """Build and serialize an answer in a worker thread: a run holding 100 MB of
    events takes seconds to turn into JSON, and no other request waits for it."""
    def work() -> bytes:
        return orjson.dumps(compute(), option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(await anyio.to_thread.run_sync(work), media_type="application/json")


def _not_found(what: str) -> HTTPException:
    return HTTPException(404, f"not found: {what}")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _component(value: str) -> bool:
    return bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0")


class Dashboard:
    """The API's state: the base dir (resolved once) and the run cache."""

    def __init__(self, base: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        from expman.reader import RunListCache
        self.base = base
        self.root = base.resolve()
        self.cache = RunCache(max_bytes)
        self.live = Live(self)                # the one poller of every live stream
        self.stopping = threading.Event()     # set on shutdown: live streams end
        self.lines = RunListCache()           # list_runs' lines of unchanged finished runs
        self._rows: dict[int, tuple[Any, dict[str, Any] | None]] = {}   # id(line) -> row
        self._rows_cond = threading.Condition()   # listings: one at a time, shared (rows)
        self._listing = False
        self._started = self._done = 0            # numbers of the last listing begun, ended
        self._last: list[dict[str, Any]] = []
        self._waiting: list[float] = []           # when each caller of rows() came
        self.listed_at = 0.0                      # time.monotonic() when the last listing ended

    # ---- locating runs ---------------------------------------------------------------------

    def run_dir(self, exp: str, run: str) -> Path:
        """The folder of experiment/run, or 404 if it is not a run inside the base dir."""
        if not (_component(exp) and _component(run)):
            raise _not_found(f"{exp}/{run}")
        path = self.base / exp / run
        if not _inside(path, self.root) or not layout.is_run_dir(path):
            raise _not_found(f"{exp}/{run}")
        return path

    def cached(self, exp: str, run: str) -> CachedRun:
        path = self.run_dir(exp, run)
        try:
            return self.cache.get(path)
        except (OSError, ValueError) as e:
            raise HTTPException(404, f"unreadable run {exp}/{run}: {e}") from None

    # ---- rows of the runs view -------------------------------------------------------------

    def listed_inside(self, path: Path) -> bool:
        """A listed run (base/exp/run) is inside the base dir unless its experiment or
        run folder is a symlink leading out; two lstat calls instead of a realpath."""
        where = os.fspath(path)
        if not (os.path.islink(where) or os.path.islink(os.path.dirname(where))):
            return True
        return _inside(path, self.root)

    def rows(self) -> list[dict[str, Any]]:
        """The runs view's rows, from a listing that started after this call did.
        Listings run one at a time and are shared: callers that arrive while one
        runs (the warm-up at start, another request) wait for it, then share the
        next one, which finds the runs just read in ``self.lines`` (and takes the
        lines read after the earliest of them arrived without even a stat)
        instead of reading every run a second time alongside the first."""
        arrived = time.monotonic()
        with self._rows_cond:
            need = self._started + 1          # the first listing to start from now on
            self._waiting.append(arrived)
            try:
                while self._done < need:
                    if not self._listing:
                        self._listing = True
                        self._started += 1
                        mine = self._started
                        since = min(self._waiting)     # every waiter shares this listing
                        break
                    self._rows_cond.wait()
                else:
                    return self._last
            finally:
                self._waiting.remove(arrived)
        out = None
        try:
            with self.lines.trusting(since):
                out = self._list()
        finally:
            with self._rows_cond:
                self._listing = False
                self.listed_at = time.monotonic()
                if out is not None:
                    self._done, self._last = mine, out
                self._rows_cond.notify_all()
        return out

    @property
    def listing(self) -> bool:
        """A listing is running now."""
        return self._listing

    def _list(self) -> list[dict[str, Any]]:
        from expman.reader import list_runs
        before, now = self._rows, {}
        out = []
        for s in list_runs(self.base, cache=self.lines):
            kept = before.get(id(s))
            row = kept[1] if kept is not None and kept[0] is s else self._row(s)
            now[id(s)] = (s, row)     # the line is held, so its id is not reused
            if row is not None:
                out.append(row)
        self._rows = now
        return out

    def _row(self, s: Any) -> dict[str, Any] | None:
        """A line of list_runs as a row (None: it leads outside the base dir)."""
        if not self.listed_inside(s.path):
            return None
        row: dict[str, Any] = s.to_dict()
        row["id"] = f"{s.path.parent.name}/{s.path.name}"
        row["last_metrics"] = {k: layout.json_float(v) for k, v in s.last_metrics.items()}
        loss = s.data_loss           # the listing's: rank 0's, else the first rank's that lost
        row["rank_loss"] = {str(loss.get("rank", 0)): {k: v for k, v in loss.items() if k != "rank"}
                            } if loss else None
        del row["path"]
        return row

    def live_row(self, run: CachedRun) -> dict[str, Any]:
        """A runs-view row from a cached run (a live run's row changes every poll)."""
        from expman.reader import read_params, run_duration
        meta = run.meta
        try:
            params = read_params(run.path)
        except (OSError, ValueError):
            params = {}
        start = run.start_time
        end = meta.get("end_time")
        values, points = run.last_values()
        last = {k: layout.json_float(v) for k, v in values.items() if v is not None}
        duration = run_duration(meta, run.status, run.path)   # the one rule (reader.py)
        return {"id": f"{run.path.parent.name}/{run.path.name}",
                "experiment": meta.get("experiment", run.path.parent.name),
                "run_name": meta.get("run_name", run.path.name), "status": run.status,
                "start_time": start, "end_time": end, "duration": duration,
                "params": params if isinstance(params, dict) else {}, "last_metrics": last,
                "points": points, "exit": meta.get("exit"),
                "tags": [t for t in meta.get("tags") or [] if isinstance(t, str)]
                if isinstance(meta.get("tags"), list) else [],
                "group": meta.get("group") if isinstance(meta.get("group"), str) else None,
                "data_loss": meta.get("data_loss") if isinstance(meta.get("data_loss"), dict)
                else None, "damaged": None,
                "rank_loss": rank_losses(run.path, meta) or None}

    def run_ids(self) -> set[str]:
        """The runs there are now (the live stream's scan, every LIST_INTERVAL)."""
        return {f"{exp}/{name}" for path, exp, name, linked in layout.scan_run_dirs(self.base)
                if os.path.isfile(os.path.join(path, layout.RUN_FILE))
                and (not linked or _inside(Path(path), self.root))}


# ---- handlers --------------------------------------------------------------------------------


def _dash(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return PlainTextResponse(
            "expman's dashboard page is not built: run `npm ci && npm run build` in the "
            "source tree (pip install builds it), then restart `expman serve`.", 503)
    return FileResponse(page, headers={"cache-control": "no-cache"})


RUNS_PAGE = 1000                  # rows per /api/runs answer unless limit= says otherwise
MAX_RUNS_PAGE = 10_000
ROW_SORTS = ("start_time", "end_time", "duration", "status", "experiment", "run_name", "id",
             "points")


def _int_arg(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{key}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise HTTPException(400, f"{key}={value}: use {lo}..{hi}")
    return value


def _sort_key(sort: str) -> Callable[[dict[str, Any]], Any]:
    """A row's value for ``sort``: a row field, ``param:NAME`` (a flattened param,
    dotted) or ``metric:NAME`` (its last value)."""
    if sort.startswith("param:"):
        path = sort[6:].split(".")

        def param(row: dict[str, Any]) -> Any:
            v: Any = row.get("params")
            for part in path:
                v = v.get(part) if isinstance(v, dict) else None
            return v
        return param
    if sort.startswith("metric:"):
        name = sort[7:]
        return lambda row: (row.get("last_metrics") or {}).get(name)
    if sort not in ROW_SORTS:
        raise HTTPException(400, f"sort={sort!r}: use one of {', '.join(ROW_SORTS)}, "
                                 "param:NAME or metric:NAME")
    return lambda row: row.get(sort)


def sort_rows(rows: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    """Rows ordered by ``sort``; rows without a value (or with NaN) come last either
    way; numbers and text are sorted apart (numbers first in ascending order)."""
    key = _sort_key(sort)
    have, missing = [], []
    for row in rows:
        v = key(row)
        if v is None or isinstance(v, bool) or (isinstance(v, float) and math.isnan(v)):
            missing.append(row)
        else:
            have.append(((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)), row))
    have.sort(key=lambda kv: kv[0], reverse=descending)
    return [row for _, row in have] + missing


async def api_runs(request: Request) -> Response:
    """One page of the runs view, sorted on the server: ``offset``, ``limit``
    (default 1,000, at most 10,000), ``sort`` (default start_time) and ``order``
    (desc by default); ``total`` counts every run."""
    d = _dash(request)
    offset = _int_arg(request, "offset", 0, 0, 1 << 62)
    limit = _int_arg(request, "limit", RUNS_PAGE, 0, MAX_RUNS_PAGE)
    sort = request.query_params.get("sort") or "start_time"
    order = request.query_params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise HTTPException(400, f"order={order!r}: use asc or desc")
    _sort_key(sort)                       # a bad sort= is a 400 before any listing

    def page() -> dict[str, Any]:
        rows = sort_rows(d.rows(), sort, order == "desc")
        return {"base": d.base.name, "total": len(rows), "offset": offset, "limit": limit,
                "sort": sort, "order": order, "runs": rows[offset:offset + limit]}
    return await _answer(page)


def _metric_summary(run: CachedRun) -> dict[str, Any]:
    """The read model's figures of every metric (expman.readmodel.MetricSummary)."""
    from expman.readmodel import summarize_points
    with run.lock:
        cols = {k: (c.steps[:c.n], c.times[:c.n], c.values[:c.n])
                for k, c in run.columns.items()}
    return {name: layout.jsonable(summarize_points(*col).to_dict())
            for name, col in cols.items()}


def _integrity(run: CachedRun) -> dict[str, Any]:
    """The read model's integrity lines (``readmodel.integrity_problems``) over the
    decoder's report, every rank's recorded loss and the size-checked artifact
    states: the checks of ``expman verify`` that need no extra read."""
    from expman.liveness import stream_status
    from expman.readmodel import artifact_states, integrity_problems, settle_torn_tail
    closed = stream_status(run.meta, run.path) in layout.FINAL_STATUSES
    ig = settle_torn_tail(run.tail.integrity, closed)
    ig["bad_event_lines"] = run.tail.bad_event_lines
    losses = rank_losses(run.path, run.meta)
    ig["data_loss"] = losses.get("0")
    ig["rank_data_loss"] = {r: loss for r, loss in losses.items() if r != "0"}
    problems = integrity_problems(ig, run.status, artifact_states(run.path, list(run.events)))
    return {"ok": not problems, "problems": problems, "data_loss": losses or None,
            "metrics": {k: ig.get(k) for k in ("frames", "rows", "points", "torn_bytes",
                                                "corrupt_bytes", "unknown_points")},
            "bad_event_lines": run.tail.bad_event_lines}


def _artifacts(run: CachedRun) -> list[dict[str, Any]]:
    """The read model's artifact states (size-checked), with what the page needs
    to show each: its file under artifacts/ (``file``, for the download link)."""
    from expman.readmodel import artifact_states
    out = []
    for a in artifact_states(run.path, list(run.events)):
        file = a.path.split("/", 1)[1] if a.path and "/" in a.path else a.name
        ctype = (mimetypes.guess_type(a.name)[0] or "application/octet-stream"
                 if a.kind == "file" else "inode/directory")
        out.append({**a.to_dict(), "file": file, "content_type": ctype,
                    "image": ctype in INLINE_TYPES,
                    "text": ctype.startswith("text/") or ctype in (
                        "application/json", "application/x-yaml", "application/yaml")})
    return out


async def api_run(request: Request) -> Response:
    d = _dash(request)
    exp, name = request.path_params["exp"], request.path_params["run"]
    run = await anyio.to_thread.run_sync(d.cached, exp, name)

    def detail() -> dict[str, Any]:
        from expman._fsutil import read_json
        try:
            params = read_json(run.path / layout.PARAMS_FILE)
        except (OSError, ValueError):
            params = {}
        meta = public_meta(run.meta)
        from expman.liveness import run_status
        decided = run_status(dict(run.meta), run.path).to_dict()
        return {"id": f"{exp}/{name}", "experiment": meta.get("experiment", exp),
                "run_name": meta.get("run_name", name), "status": run.status,
                "status_rank": decided["rank"], "status_reason": decided["reason"],
                "ranks": decided["ranks"], "meta": meta, "params": params, "metrics": _metric_summary(run),
                "artifacts": _artifacts(run), "integrity": _integrity(run),
                "media": _media(run)}
    return await _answer(detail)


SECRET_NAME = re.compile(r"(?i)(token|secret|passw|pwd|key|auth|cred|cookie|session|signature)")
REDACTED = "[redacted]"


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """run.json as the run page shows it: the environment without what may hold
    secrets. Command-line values after (or joined to) a secret-looking option, and
    environment variables with secret-looking names, are redacted; what a person
    needs (Python, host, platform, git commit, packages) stays."""
    out = dict(meta)
    env = out.get("env")
    if not isinstance(env, dict):
        return out
    env = dict(env)
    argv = env.get("argv")
    if isinstance(argv, list):
        shown: list[Any] = []
        hide_next = False
        for arg in argv:
            if hide_next and isinstance(arg, str) and not arg.startswith("-"):
                shown.append(REDACTED)
                hide_next = False
                continue
            hide_next = False
            if isinstance(arg, str) and SECRET_NAME.search(arg.split("=", 1)[0]):
                if "=" in arg:
                    arg = arg.split("=", 1)[0] + "=" + REDACTED
                elif arg.startswith("-"):
                    hide_next = True
            shown.append(arg)
        env["argv"] = shown
    env_vars = env.get("env_vars")
    if isinstance(env_vars, dict):
        env["env_vars"] = {k: (REDACTED if SECRET_NAME.search(str(k)) else v)
                           for k, v in env_vars.items()}
    out["env"] = env
    return out


def rank_losses(path: Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each rank's writer recorded losing, by rank (as a str, a JSON key):
    the reader's one rule (``expman.reader.rank_losses``)."""
    from expman.reader import rank_losses as losses
    try:
        return {str(r): loss for r, loss in losses(meta, path).items()}
    except (OSError, ValueError):
        return {}


MAX_MEDIA_PER_TAG = 1000       # the newest; a run logging a histogram every step is paged


def _media(run: CachedRun) -> dict[str, Any]:
    """Histograms (edges and counts per step) and images (an artifacts-relative
    path per step) by tag, in logged order, for the run page's step sliders."""
    from expman.media_read import histograms, images
    view = types.SimpleNamespace(path=run.path, events=list(run.events))
    art_root = run.path / layout.ARTIFACTS_DIR
    hists = {tag: [{"step": h.step, "edges": [layout.json_float(e) for e in h.edges],
                    "counts": h.counts} for h in items[-MAX_MEDIA_PER_TAG:]]
             for tag, items in histograms(view).items()}
    real_root = os.path.realpath(art_root)
    imgs = {}
    for tag, items in images(view).items():
        shown = []
        for i in items[-MAX_MEDIA_PER_TAG:]:
            # the file images() checked is inside media; a path spelled with ".." is
            # served by the name it resolves to (never a 500)
            rel = os.path.relpath(os.path.realpath(i.path), real_root)
            if rel.startswith(".."):
                continue
            shown.append({"step": i.step, "path": Path(rel).as_posix(),
                          "width": i.width, "height": i.height})
        if shown:
            imgs[tag] = shown
    return {"histograms": hists, "images": imgs}


def _float_arg(request: Request, key: str) -> float | None:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise HTTPException(400, f"{key}={raw!r} is not a number") from None


def _x_column(run: CachedRun, axis: str, steps: Any, times: Any) -> Any:
    if axis == "step":
        return steps
    if axis == "time":
        return times
    start = run.start_time
    if start is None:
        start = float(times[0]) if len(times) else 0.0
    return times - start


async def api_series(request: Request) -> Response:
    d = _dash(request)
    exp, name = request.path_params["exp"], request.path_params["run"]
    q = request.query_params
    metric = q.get("metric")
    if not metric:
        raise HTTPException(400, "metric= is required (a metric name)")
    axis = q.get("x", "step")
    if axis not in X_AXES:
        raise HTTPException(400, f"x={axis!r}: use one of {', '.join(X_AXES)}")
    try:
        pixels = int(q.get("points", "1000"))
    except ValueError:
        raise HTTPException(400, f"points={q.get('points')!r} is not an integer") from None
    if not 1 <= pixels <= MAX_POINTS:
        raise HTTPException(400, f"points={pixels}: use 1..{MAX_POINTS}")
    lo, hi = _float_arg(request, "from"), _float_arg(request, "to")
    run = await anyio.to_thread.run_sync(d.cached, exp, name)
    snap = run.snapshot(metric)
    if snap is None:
        raise _not_found(f"metric {metric!r} in {exp}/{name}")
    steps, times, values = snap

    def compute() -> dict[str, Any]:
        x = _x_column(run, axis, steps, times)
        w = window(x, values, pixels, lo, hi)
        return {"run": f"{exp}/{name}", "metric": metric, "x_axis": axis, "count": len(steps),
                "total": w.total, "raw": w.raw, "start_time": run.start_time,
                "x": w.x, "y": w.y, "status": run.status}
    return await _answer(compute)


async def api_events(request: Request) -> Response:
    d = _dash(request)
    run = await anyio.to_thread.run_sync(d.cached, request.path_params["exp"],
                                         request.path_params["run"])
    kind = request.query_params.get("kind")
    events = await anyio.to_thread.run_sync(
        lambda: [e for e in list(run.events) if kind is None or e.get("kind") == kind])
    total = len(events)
    raw = request.query_params.get("last")
    if raw is not None:          # the newest N only: a run may hold millions of messages
        try:
            last = int(raw)
        except ValueError:
            raise HTTPException(400, f"last={raw!r} is not an integer") from None
        if last < 0:
            raise HTTPException(400, f"last={last}: use 0 or more")
        events = events[max(0, total - last):] if last else []
    return await _answer(lambda: {"total": total, "events": events})


async def api_artifact(request: Request) -> Response:
    """A file under the run's artifacts/, sent from a descriptor the guarded layer
    opened (no link below the run folder, no '..', a regular file: 404 otherwise),
    in chunks off the event loop, with one byte range (``download``). ``?head=N``:
    its first N bytes (at most 1 MiB) as text, for a preview."""
    from expman._fsutil import open_under_stat, read_range
    from expman.dashboard.download import file_response
    d = _dash(request)
    exp, name, rel = (request.path_params["exp"], request.path_params["run"],
                      request.path_params["path"])
    run_dir = d.run_dir(exp, name)
    head = request.query_params.get("head")
    try:
        n = None if head is None else max(0, min(int(head), 1 << 20))
    except ValueError:
        raise HTTPException(400, f"head={head!r} is not an integer") from None
    try:
        fd, st = await anyio.to_thread.run_sync(
            open_under_stat, run_dir, f"{layout.ARTIFACTS_DIR}/{rel}", os.O_RDONLY)
    except (OSError, ValueError):
        raise _not_found(f"artifact {rel!r} of {exp}/{name}") from None
    if n is not None:           # a text preview: the first bytes, as plain text
        try:
            data = await anyio.to_thread.run_sync(read_range, fd, 0, n)
        finally:
            os.close(fd)
        return Response(data, media_type="text/plain; charset=utf-8")
    filename = rel.rsplit("/", 1)[-1]
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return file_response(request, fd, st, filename, ctype, inline=ctype in INLINE_TYPES,
                         headers={"content-security-policy": ARTIFACT_CSP})


async def favicon(request: Request) -> Response:
    icon = STATIC_DIR / "favicon.svg"
    if not icon.is_file():
        raise _not_found("favicon")
    return FileResponse(icon, media_type="image/svg+xml")


# ---- live stream ----------------------------------------------------------------------------


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(
        data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


async def api_stream(request: Request) -> Response:
    """Server-Sent Events: ``points`` (only points past what was sent, with the index
    of the first), ``status`` when a streamed run ends, ``runs`` with new runs and
    updated rows of live runs. ``run=EXP/RUN`` (repeatable) picks the streamed runs;
    ``watch=EXP/RUN`` (repeatable) names live rows of the runs view to keep current.
    Every stream is fed by the Dashboard's one poller (``live.Live``)."""
    d = _dash(request)
    ids = request.query_params.getlist("run")
    cached: dict[str, CachedRun] = {}
    for rid in ids:
        exp, _, name = rid.partition("/")
        cached[rid] = await anyio.to_thread.run_sync(d.cached, exp, name)
    watch: dict[str, CachedRun] = {}
    for rid in request.query_params.getlist("watch"):
        exp, _, name = rid.partition("/")
        try:
            run = await anyio.to_thread.run_sync(d.cached, exp, name)
        except HTTPException:
            continue
        if run.status == layout.RUNNING:
            watch[rid] = run
    stopping, live = d.stopping, d.live

    async def events() -> AsyncIterator[bytes]:
        counts = {rid: run.counts() for rid, run in cached.items()}
        streamed = {rid for rid, run in cached.items() if run.status == layout.RUNNING}
        pinned = sorted(streamed)
        followed = [cached[rid] for rid in pinned]
        for rid in pinned:          # the cache counts them, and keeps what is still to send
            d.cache.follow(cached[rid], counts[rid])
        try:
            await live.subscribe(followed, watch)    # counted before its first await
            known_scan = live.scans
            rows_of = set(watch)
            yield b"retry: 1000\n\n" + _sse("hello", {"runs": list(cached), "counts": counts})
            while not stopping.is_set():
                await live.next_round()
                for rid in sorted(streamed):
                    status, new = cached[rid].since(counts[rid])   # together: see since()
                    for metric, (start, steps, times, values) in new.items():
                        counts[rid][metric] = start + len(steps)
                        yield _sse("points", {"run": rid, "metric": metric, "start": start,
                                              "steps": steps, "times": times, "values": values})
                    if status != layout.RUNNING:
                        streamed.discard(rid)
                        yield _sse("status", {"run": rid, "status": status})
                if live.scans != known_scan:
                    added = [rid for scan, rid in live.added if scan > known_scan]
                    known_scan = live.scans
                    rows_of.update(added)
                    rows = [live.rows[rid] for rid in sorted(rows_of) if rid in live.rows]
                    rows_of -= {r["id"] for r in rows if r["status"] != layout.RUNNING}
                    if rows or added:
                        yield _sse("runs", {"added": added, "rows": rows})
                    else:
                        yield b": ping\n\n"
        finally:
            live.unsubscribe(followed, watch)
            for rid in pinned:
                d.cache.unfollow(cached[rid], counts[rid])

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# ---- middleware -----------------------------------------------------------------------------


class Guard:
    """Security headers on every response; the token check when a token is set;
    for a loopback server, a Host header check whether or not there is a token (a
    page on another site cannot reach it by DNS rebinding).

    The token is accepted as ``?token=``, as the cookie ``expman_token_<port>``
    (one per port: cookies are scoped per host, so a per-host name would go to
    every other service on the host, and two servers would overwrite each
    other's; it holds ``cookie_value``, not the token), or as
    ``Authorization: token T``. A page opened with ``?token=``
    is redirected to the same address without it, the cookie set: the token
    does not stay in the address bar or the history."""

    def __init__(self, app: ASGIApp, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback
        self.dashboard: Dashboard | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        set_cookie = None
        if self.loopback:
            host = headers.get("host", "").rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost", "[::1]", "::1", ""):
                await _plain(send, 403, f"Host {host!r} refused: this server answers to "
                             "127.0.0.1 and localhost only")
                return
        if self.token:
            from expman.dashboard.access import cookie_name, cookie_value
            port = _port(scope)
            name, value = cookie_name(port), cookie_value(self.token, port)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"),
                             keep_blank_values=True)
            given = query.get("token", [""])[0]
            cookie = _cookie(headers.get("cookie", ""), name)
            auth = headers.get("authorization", "")
            auth = auth[6:] if auth.lower().startswith("token ") else ""
            ok = [hmac.compare_digest(given.encode(), self.token.encode()),
                  hmac.compare_digest(cookie.encode(), value.encode()),
                  hmac.compare_digest(auth.encode(), self.token.encode())]
            if not any(ok):
                await _plain(send, 403, "a token is required: open the URL that `expman serve` "
                             "printed (it ends with ?token=...)")
                return
            if ok[0]:
                set_cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict".encode()
                if scope.get("method") in ("GET", "HEAD") and not scope["path"].startswith("/api/"):
                    await _redirect_without_token(send, scope, query, set_cookie)
                    return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in SECURITY_HEADERS if h[0] not in have] + (
                    [(b"set-cookie", set_cookie)] if set_cookie else [])
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _port(scope: Scope) -> int:
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else 0


async def _redirect_without_token(send: Any, scope: Scope, query: dict[str, list[str]],
                                  set_cookie: bytes) -> None:
    from urllib.parse import quote, urlencode
    rest = urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
    where = quote(scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", where.encode("latin-1")), (b"set-cookie", set_cookie),
                            (b"cache-control", b"no-store"),
                            (b"content-length", b"0")] + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": b""})


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


async def _plain(send: Any, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")] + SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": text.encode()})


def create_app(base_dir: str | os.PathLike[str] | None = None, token: str | None = None, *,
               loopback: bool = True, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """The dashboard as an ASGI app over ``base_dir`` (the layout rule: argument,
    $EXPMAN_DIR, ./experiments). ``token``: required on every request when set."""
    base = layout.base_dir(base_dir)
    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/runs", api_runs),
        Route("/api/stream", api_stream),
        Route("/api/runs/{exp}/{run}", api_run),
        Route("/api/runs/{exp}/{run}/series", api_series),
        Route("/api/runs/{exp}/{run}/events", api_events),
        Route("/api/runs/{exp}/{run}/artifacts/{path:path}", api_artifact),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = Dashboard(base, max_bytes)
    guard = Guard(app, token, loopback)
    guard.dashboard = app.state.dashboard
    return guard
