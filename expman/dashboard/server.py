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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
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
from expman.bands import STATS, bands
from expman.dashboard.cache import DEFAULT_MAX_BYTES, CachedRun, RunCache
from expman.decimate import window
from expman.hparams import SUMMARIES, hparam_table
from expman.tables import read_version, table_counts, version_records
from expman.dashboard.live import Live
from expman.watch import has_alerts, read_alerts

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

    def __init__(self, base: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 title: str | None = None) -> None:
        from expman.reader import RunListCache
        self.base = base
        self.title = title or base.name     # the page's header: a served URL, else the folder's name
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

    def recent_rows(self, max_age: float) -> list[dict[str, Any]]:
        """The last listing's rows when it ended less than ``max_age`` seconds ago (a
        page that just read /api/runs asks for a view of the same runs), else rows()."""
        with self._rows_cond:
            if self._done and time.monotonic() - self.listed_at < max_age:
                return self._last
        return self.rows()

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
        row["alerted"] = not s.damaged and has_alerts(s.path)
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
                "rank_loss": rank_losses(run.path, meta) or None,
                "parent": layout.fork_parent(meta), "alerted": live_alerted(run)}

    def run_ids(self) -> set[str]:
        """The runs there are now (the live stream's scan, every LIST_INTERVAL)."""
        return {f"{exp}/{name}" for path, exp, name, linked in layout.scan_run_dirs(self.base)
                if os.path.isfile(os.path.join(path, layout.RUN_FILE))
                and (not linked or _inside(Path(path), self.root))}


def live_alerted(run: CachedRun) -> bool:
    """A live row's alert mark, every poll without reading the events again: an alert
    event the cache read (rank 0's events, as they grow), or an ``alerts.jsonl``
    beside the run (a watcher in another process: one stat). Another rank's own
    alert events mark the row when the run is listed again (``has_alerts``)."""
    if run.alerted:
        return True
    try:
        return os.stat(run.path / layout.ALERTS_FILE).st_size > 0
    except OSError:
        return False


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
        scan = d.live.listed()            # before the listing: a stream since it misses nothing
        rows = sort_rows(d.rows(), sort, order == "desc")
        return {"base": d.title, "total": len(rows), "offset": offset, "limit": limit,
                "sort": sort, "order": order, "scan": scan, "runs": rows[offset:offset + limit]}
    return await _answer(page)


DETAIL_METRICS = 100               # summaries in a run's detail; /metrics pages the rest
METRICS_PAGE = 200
MAX_METRICS_PAGE = 5000


def _metric_summary(run: CachedRun, names: list[str]) -> dict[str, Any]:
    """The read model's figures of these metrics (expman.readmodel.MetricSummary):
    of the main history, for a forked or branched run."""
    from expman.readmodel import summarize_points
    hist = _fold(run)
    if hist is not None:
        return {name: layout.jsonable(s.summary().to_dict())
                for name in names if (s := hist.metrics.get(name)) is not None and len(s)}
    with run.lock:
        cols = {k: (c.steps[:c.n], c.times[:c.n], c.values[:c.n])
                for k in names if (c := run.columns.get(k)) is not None}
    return {name: layout.jsonable(summarize_points(*col).to_dict())
            for name, col in cols.items()}


def _metric_names(run: CachedRun, query: str = "") -> list[str]:
    """The run's metric names, sorted, those holding ``query`` (case-insensitive)."""
    hist = _fold(run)
    if hist is not None:
        names = [k for k, v in hist.metrics.items() if len(v)]
    else:
        with run.lock:
            names = list(run.columns)
    q = query.lower()
    return sorted(n for n in names if q in n.lower()) if q else sorted(names)


async def api_metrics(request: Request) -> Response:
    """A page of a run's metrics with their summaries: ``q`` (a substring of the
    name, case-insensitive), ``offset``, ``limit`` (default 200, at most 5,000).
    A run may log 12,000 metric names: the run page asks for what it shows."""
    d = _dash(request)
    offset = _int_arg(request, "offset", 0, 0, 1 << 62)
    limit = _int_arg(request, "limit", METRICS_PAGE, 0, MAX_METRICS_PAGE)
    query = request.query_params.get("q", "")
    run = await anyio.to_thread.run_sync(d.cached, request.path_params["exp"],
                                         request.path_params["run"])

    def page() -> dict[str, Any]:
        names = _metric_names(run, query)
        shown = names[offset:offset + limit]
        summary = _metric_summary(run, shown)
        return {"total": len(names), "offset": offset, "limit": limit, "q": query,
                "metrics": [{"name": n, **summary[n]} for n in shown if n in summary]}
    return await _answer(page)


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


ARTIFACTS_PAGE = 100              # artifacts in a run's detail; /artifact-list pages the rest
MAX_ARTIFACTS_PAGE = 5000
MAX_ALERTS = 1000                 # the newest alerts in a run's detail


def _artifact_events(run: CachedRun) -> list[dict[str, Any]]:
    return [e for e in list(run.events) if e.get("kind") == "artifact"]


def _artifacts(run: CachedRun, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The read model's artifact states (size-checked) of these artifact events, with
    what the page needs to show each: its file under artifacts/ (``file``, for the
    download link). Only the page asked for is checked on disk (a run may record
    100,000 artifacts)."""
    from expman.readmodel import artifact_states
    out = []
    for a in artifact_states(run.path, recorded):
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
        names = _metric_names(run)
        from expman.liveness import run_status
        decided = run_status(dict(run.meta), run.path).to_dict()
        recorded = _artifact_events(run)
        alerts = read_alerts(run.path)
        return {"id": f"{exp}/{name}", "experiment": meta.get("experiment", exp),
                "run_name": meta.get("run_name", name), "status": run.status,
                "status_rank": decided["rank"], "status_reason": decided["reason"],
                "ranks": decided["ranks"], "meta": meta, "params": params,
                "metrics": _metric_summary(run, names[:DETAIL_METRICS]),
                "metric_count": len(names), "metric_names": names,
                "artifacts": _artifacts(run, recorded[:ARTIFACTS_PAGE]),
                "artifact_count": len(recorded), "integrity": _integrity(run),
                "media": _media(run), "tables": table_counts(list(run.events)),
                "alerts": [a.to_event() for a in alerts[-MAX_ALERTS:]], "alert_count": len(alerts)}
    return await _answer(detail)


async def api_alerts(request: Request) -> Response:
    """A run's watchdog alerts (``expman.watch.read_alerts``: every rank's events and
    alerts.jsonl, one per id, in time order), the newest 1,000, and ``total``."""
    d = _dash(request)
    path = d.run_dir(request.path_params["exp"], request.path_params["run"])

    def alerts() -> dict[str, Any]:
        found = read_alerts(path)
        return {"total": len(found), "alerts": [a.to_event() for a in found[-MAX_ALERTS:]]}
    return await _answer(alerts)


async def api_artifact_list(request: Request) -> Response:
    """A page of a run's artifacts (``offset``, ``limit``: default 100, at most
    5,000), each as the detail lists them, and ``total``."""
    d = _dash(request)
    offset = _int_arg(request, "offset", 0, 0, 1 << 62)
    limit = _int_arg(request, "limit", ARTIFACTS_PAGE, 0, MAX_ARTIFACTS_PAGE)
    run = await anyio.to_thread.run_sync(d.cached, request.path_params["exp"],
                                         request.path_params["run"])

    def page() -> dict[str, Any]:
        recorded = _artifact_events(run)
        return {"total": len(recorded), "offset": offset, "limit": limit,
                "artifacts": _artifacts(run, recorded[offset:offset + limit])}
    return await _answer(page)


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


MAX_TABLE_PAGE = 500           # rows a table request returns at most


def _cell(x: Any) -> Any:
    """A table value as JSON holds it for the page: NaN and infinities spelled as in
    run.json, integers beyond 64 bits as text (a crafted file may hold either)."""
    if isinstance(x, float):
        return layout.json_float(x)
    if isinstance(x, int) and not isinstance(x, bool) and not -2**63 <= x < 2**64:
        return str(x)
    if isinstance(x, list):
        return [_cell(v) for v in x]
    if isinstance(x, dict):
        return {k: _cell(v) for k, v in x.items()}
    return x


async def api_table(request: Request) -> Response:
    """One page of one version of a logged table (``log_table``): ``version`` (an index
    into the table's versions, -1 the newest), ``offset`` and ``limit`` rows."""
    d = _dash(request)
    exp, name, table = (request.path_params["exp"], request.path_params["run"],
                        request.path_params["table"])
    version = _int_arg(request, "version", -1, -2**31, 2**31)
    offset = _int_arg(request, "offset", 0, 0, 2**62)
    limit = _int_arg(request, "limit", 50, 1, MAX_TABLE_PAGE)
    run = await anyio.to_thread.run_sync(d.cached, exp, name)

    def compute() -> dict[str, Any]:
        records = version_records(list(run.events)).get(table)
        if not records:
            raise _not_found(f"table {table!r} in {exp}/{name}")
        if not -len(records) <= version < len(records):
            raise HTTPException(400, f"version={version}: the table has {len(records)} versions")
        v = read_version(run.path, records[version])
        if v is None:
            raise _not_found(f"a readable version {version} of table {table!r} (damaged)")
        return {"name": table, "version": version % len(records), "step": v.step,
                "versions": [{"step": r["step"], "rows": r.get("rows"), "time": r.get("time")}
                             for r in records],
                "columns": v.columns, "total": len(v), "offset": offset,
                "rows": _cell(v.rows[offset:offset + limit])}
    return await _answer(compute)


MEDIA_STEPS = 500               # steps of a histogram's distribution sent (evenly picked)


async def api_media(request: Request) -> Response:
    """A run's histograms as distributions over steps (``expman.media_read.percentiles``
    at DISTRIBUTION_FRACTIONS, at most ``steps`` of them, default 500, evenly picked,
    the last always in) and its images (as the detail lists them): what the runs
    view draws to compare the selected runs."""
    from expman.media_read import DISTRIBUTION_FRACTIONS, histograms, percentiles
    d = _dash(request)
    most = _int_arg(request, "steps", MEDIA_STEPS, 1, MAX_MEDIA_PER_TAG * 10)
    run = await anyio.to_thread.run_sync(d.cached, request.path_params["exp"],
                                         request.path_params["run"])

    def media() -> dict[str, Any]:
        view = types.SimpleNamespace(path=run.path, events=list(run.events))
        dists = {}
        for tag, items in histograms(view).items():
            picked = items if len(items) <= most else [
                items[round(i * (len(items) - 1) / (most - 1))] if most > 1 else items[-1]
                for i in range(most)]
            steps, bands = [], []
            for h in picked:
                q = percentiles(h)
                if q is not None:
                    steps.append(h.step)
                    bands.append([layout.json_float(v) for v in q])
            dists[tag] = {"steps": steps, "percentiles": bands, "count": len(items)}
        return {"run": f"{run.path.parent.name}/{run.path.name}",
                "fractions": list(DISTRIBUTION_FRACTIONS), "histograms": dists,
                "images": _media(run)["images"]}
    return await _answer(media)


def _float_arg(request: Request, key: str) -> float | None:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise HTTPException(400, f"{key}={raw!r} is not a number") from None


def _x_axis(request: Request) -> str:
    """``x=``: step, time, rel, or metric:NAME (another metric of the run)."""
    axis = request.query_params.get("x", "step")
    if axis not in X_AXES and not (axis.startswith("metric:") and len(axis) > 7):
        raise HTTPException(400, f"x={axis!r}: use one of {', '.join(X_AXES)} or metric:NAME")
    return axis


def _x_column(run: CachedRun, axis: str, steps: Any, times: Any) -> Any:
    """The x of each point: its step, wall time, time since the start, or for
    ``metric:NAME`` the value NAME had at the point's step (its last value logged
    at or before that step; NaN before NAME's first point)."""
    import numpy as np
    if axis == "step":
        return steps
    if axis == "time":
        return times
    if axis.startswith("metric:"):
        name = axis[7:]
        snap = run.snapshot(name)
        if snap is None:
            raise _not_found(f"x metric {name!r} in {run.path.parent.name}/{run.path.name}")
        x_steps, _, x_values = snap
        order = np.argsort(x_steps, kind="stable")
        at = np.searchsorted(x_steps[order], steps, side="right") - 1
        x = np.asarray(x_values, dtype=np.float64)[order][np.maximum(at, 0)]
        return np.where(at >= 0, x, np.nan)
    start = run.start_time
    if start is None:
        start = float(times[0]) if len(times) else 0.0
    return times - start


def _series_args(request: Request) -> tuple[str, float | None, float | None]:
    metric = request.query_params.get("metric")
    if not metric:
        raise HTTPException(400, "metric= is required (a metric name)")
    return metric, _float_arg(request, "from"), _float_arg(request, "to")


def _xy(run: CachedRun, axis: str, snap: tuple[Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
    """(x, steps, times, values): the points with an x (an x metric has no value
    before its first point), in logged order."""
    import numpy as np
    steps, times, values = snap
    x = _x_column(run, axis, steps, times)
    if axis.startswith("metric:"):
        keep = ~np.isnan(x)
        return x[keep], steps[keep], times[keep], values[keep]
    return x, steps, times, values


def _rank_snapshot(run: CachedRun, rank: int, metric: str) -> tuple[Any, Any, Any] | None:
    """(steps, times, values) of one metric of rank ``rank``'s stream, read on request
    (the cache holds rank 0's): the run page's per-rank curves. None when the rank
    does not log or has no such metric."""
    import numpy as np
    from expman.reader import open_run
    from expman.ranks import logging_ranks
    if rank not in logging_ranks(dict(run.meta)):
        return None
    try:
        series = open_run(run.path, rank=rank).metrics.get(metric)
    except (OSError, ValueError):
        return None
    if series is None:
        return None
    return (np.asarray(series.steps, dtype=np.int64), np.asarray(series.times, dtype=np.float64),
            np.asarray(series.values, dtype=np.float64))


async def api_series(request: Request) -> Response:
    d = _dash(request)
    exp, name = request.path_params["exp"], request.path_params["run"]
    q = request.query_params
    metric, lo, hi = _series_args(request)
    axis = _x_axis(request)
    try:
        pixels = int(q.get("points", "1000"))
    except ValueError:
        raise HTTPException(400, f"points={q.get('points')!r} is not an integer") from None
    if not 1 <= pixels <= MAX_POINTS:
        raise HTTPException(400, f"points={pixels}: use 1..{MAX_POINTS}")
    branch = _branch_arg(request)
    run = await anyio.to_thread.run_sync(d.cached, exp, name)
    rank = _int_arg(request, "rank", 0, 0, 1 << 20)
    append_at: int | None = 0
    if rank:                      # a rank's own curve (the run page's overlay): as logged
        snap = await anyio.to_thread.run_sync(_rank_snapshot, run, rank, metric)
        folded = False
    else:
        snap, folded, append_at = await anyio.to_thread.run_sync(_series_of, run, metric, branch)
    if snap is None:
        raise _not_found(f"metric {metric!r} in {exp}/{name}" + (f" rank {rank}" if rank else "")
                         if branch is None else f"branch {branch} of {exp}/{name}")
    count = len(snap[0])
    if axis.startswith("metric:") and run.snapshot(axis[7:]) is None:
        raise _not_found(f"x metric {axis[7:]!r} in {exp}/{name}")

    def compute() -> dict[str, Any]:
        x, _, _, values = _xy(run, axis, snap)
        w = window(x, values, pixels, lo, hi)
        return {"run": f"{exp}/{name}", "rank": rank, "metric": metric, "x_axis": axis,
                "count": count,
                "total": w.total, "raw": w.raw, "start_time": run.start_time,
                "x": w.x, "y": w.y, "status": run.status, "folded": folded, "branch": branch,
                "append_at": append_at}
    return await _answer(compute)


def _branch_arg(request: Request) -> int | None:
    raw = request.query_params.get("branch")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"branch={raw!r} is not a branch id (an int)") from None


def _fold(run: CachedRun) -> Any:
    """The main history of a forked or branched run (None: the cache's columns are
    the run's history)."""
    from expman.dashboard.branches import fold
    try:
        return fold(run.path, dict(run.meta))
    except (OSError, ValueError):
        return None          # its own stream unreadable: the cache's columns say so


def _series_of(run: CachedRun, metric: str, branch: int | None
               ) -> tuple[tuple[Any, Any, Any] | None, bool, int | None]:
    """(steps, times, values) of a metric as the chart draws it, whether it was
    folded, and where the live stream's points go in it (``append_at``: the index
    of the stream's first point; None when they cannot be appended, a run whose
    branches file may cut its history): the main history (a forked or branched
    run's through expman.branches), or with ``branch``, the points that branch
    wrote which the main history left."""
    if branch is not None:
        from expman.dashboard.branches import abandoned
        try:
            return abandoned(run.path, dict(run.meta), branch, metric), True, None
        except (OSError, ValueError):
            return None, True, None
    hist = _fold(run)
    if hist is None:
        return run.snapshot(metric), False, 0
    s = hist.metrics.get(metric)
    if s is None:
        return None, True, None
    from expman.dashboard.branches import inherited_points
    return (s.steps, s.times, s.values), True, inherited_points(run.path, hist, metric)


async def api_branches(request: Request) -> Response:
    """A run's branches, lineage (parents) and children, and its charts' markers."""
    d = _dash(request)
    exp, name = request.path_params["exp"], request.path_params["run"]
    run = await anyio.to_thread.run_sync(d.cached, exp, name)
    rows = await anyio.to_thread.run_sync(d.rows)

    def compute() -> dict[str, Any]:
        from expman.dashboard.branches import describe
        return describe(run.path, dict(run.meta), rows)
    return await _answer(compute)


CSV_CHUNK = 50_000                 # rows formatted per piece of the streamed answer


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def _csv_chunk(rid: str, cols: tuple[Any, Any, Any, Any], a: int) -> bytes:
    """Rows a..a+CSV_CHUNK of one run's points as CSV lines (repr: every digit of
    the float64 back)."""
    x, steps, times, values = (c[a:a + CSV_CHUNK].tolist() for c in cols)
    run = _csv_field(rid)
    return "".join(f"{run},{xv!r},{s},{t!r},{v!r}\n"
                   for xv, s, t, v in zip(x, steps, times, values)).encode()


async def api_export_csv(request: Request) -> Response:
    """A chart's raw points as CSV, every point of every ``run=`` with ``from <= x
    <= to`` (no decimation): ``run,x,step,time,value``, x in the unit of ``x=``
    (as /series), time in seconds since the epoch; NaN and infinities as Python
    spells them (nan, inf). Streamed: a 10 M-point range is never held as text."""
    import numpy as np
    d = _dash(request)
    metric, lo, hi = _series_args(request)
    axis = _x_axis(request)
    ids = request.query_params.getlist("run")
    if not ids:
        raise HTTPException(400, "run= is required (EXP/RUN, repeatable)")
    snaps = []
    for rid in ids:
        exp, _, name = rid.partition("/")
        run = await anyio.to_thread.run_sync(d.cached, exp, name)
        snap = (await anyio.to_thread.run_sync(_series_of, run, metric, None))[0]
        if snap is None:
            continue                       # a run without the metric adds no lines
        if axis.startswith("metric:") and run.snapshot(axis[7:]) is None:
            raise _not_found(f"x metric {axis[7:]!r} in {rid}")
        snaps.append((rid, run, snap))

    def in_range(run: CachedRun, snap: tuple[Any, Any, Any]) -> tuple[Any, Any, Any, Any]:
        x, steps, times, values = _xy(run, axis, snap)
        keep = np.ones(len(x), dtype=bool)
        if lo is not None:
            keep &= x >= lo
        if hi is not None:
            keep &= x <= hi
        return x[keep], steps[keep], times[keep], values[keep]

    async def body() -> AsyncIterator[bytes]:
        yield b"run,x,step,time,value\n"
        for rid, run, snap in snaps:
            cols = await anyio.to_thread.run_sync(in_range, run, snap)
            for a in range(0, len(cols[0]), CSV_CHUNK):
                yield await anyio.to_thread.run_sync(_csv_chunk, rid, cols, a)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("_") or "metric"
    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="{safe}.csv"', "cache-control": "no-store"})


MAX_BAND_RUNS = 5000               # runs of all groups of one /api/bands request


def _band_groups(request: Request) -> dict[str, list[str]]:
    """``group=LABEL`` followed by that group's ``run=EXP/RUN`` (repeatable), in order."""
    from urllib.parse import parse_qsl
    groups: dict[str, list[str]] = {}
    current = None
    total = 0
    for key, value in parse_qsl(request.scope.get("query_string", b"").decode("latin-1"),
                                keep_blank_values=True):
        if key == "group":
            current = groups.setdefault(value, [])
        elif key == "run":
            if current is None:
                raise HTTPException(400, f"run={value!r} comes before any group=")
            current.append(value)
            total += 1
    if not groups:
        raise HTTPException(400, "group= is required (a label, then its run= ids)")
    if total > MAX_BAND_RUNS:
        raise HTTPException(400, f"{total} runs: at most {MAX_BAND_RUNS} per request")
    return groups


async def api_bands(request: Request) -> Response:
    """Groups of runs as bands (``expman.bands``): for each ``group=LABEL`` and its
    ``run=`` ids, per pixel column the min and max of every point of its runs and
    the ``stat`` (mean or median) of the runs' column means. A run without the
    metric (or not found) is left out of its group and named in ``missing``."""
    d = _dash(request)
    q = request.query_params
    metric = q.get("metric")
    if not metric:
        raise HTTPException(400, "metric= is required (a metric name)")
    axis = q.get("x", "step")
    if axis not in X_AXES:
        raise HTTPException(400, f"x={axis!r}: use one of {', '.join(X_AXES)}")
    stat = q.get("stat", "mean")
    if stat not in STATS:
        raise HTTPException(400, f"stat={stat!r}: use one of {', '.join(STATS)}")
    pixels = _int_arg(request, "points", 1000, 1, MAX_POINTS)
    lo, hi = _float_arg(request, "from"), _float_arg(request, "to")
    groups = _band_groups(request)

    def compute() -> dict[str, Any]:
        series: dict[str, list[tuple[Any, Any]]] = {}
        missing, status = [], {}
        for label, ids in groups.items():
            series[label] = []
            for rid in ids:
                exp, _, name = rid.partition("/")
                try:
                    run = d.cached(exp, name)
                except HTTPException:
                    missing.append(rid)
                    continue
                snap = _series_of(run, metric, None)[0]      # a fork's: its main history
                status[rid] = run.status
                if snap is None:
                    missing.append(rid)
                    continue
                steps, times, values = snap
                series[label].append((_x_column(run, axis, steps, times), values))
        b = bands(series, pixels, lo, hi, stat)
        return {"metric": metric, "x_axis": axis, "stat": stat, "points": pixels,
                "exact": b.exact, "x": b.x,
                "missing": missing, "status": status,
                "groups": [{"label": label, "runs": groups[label], "points": band.points,
                            "lo": band.lo, "hi": band.hi, "mid": band.mid, "n": band.runs}
                           for label, band in b.groups.items()]}
    return await _answer(compute)


HPARAMS_PAGE = 10_000
MAX_HPARAMS_PAGE = 100_000
HPARAMS_ROWS_AGE = 10.0           # seconds a listing serves /api/hparams before a new one


async def api_hparams(request: Request) -> Response:
    """The hyperparameter views' columns (``expman.hparams.hparam_table``) over
    every listed run (from a listing at most HPARAMS_ROWS_AGE seconds old), in the
    runs view's order (newest first): ``param=`` (repeatable;
    none: the params that vary), ``metric=`` with ``summary=`` last, min or max,
    ``offset``/``limit`` (default 10,000, at most 100,000)."""
    d = _dash(request)
    q = request.query_params
    summary = q.get("summary") or "last"
    if summary not in SUMMARIES:
        raise HTTPException(400, f"summary={summary!r}: use one of {', '.join(SUMMARIES)}")
    offset = _int_arg(request, "offset", 0, 0, 1 << 62)
    limit = _int_arg(request, "limit", HPARAMS_PAGE, 0, MAX_HPARAMS_PAGE)
    params = q.getlist("param") or None
    metric = q.get("metric") or None

    def where(row: Mapping[str, Any]) -> Path | None:
        exp, _, name = str(row.get("id")).partition("/")
        try:
            return d.run_dir(exp, name)
        except HTTPException:
            return None

    def table() -> dict[str, Any]:
        rows = sort_rows(d.recent_rows(HPARAMS_ROWS_AGE), "start_time", True)
        return hparam_table(rows, metric, summary, params, where, offset, limit)
    return await _answer(table)


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


def _sse(event: str, data: Any, scan: int | None = None) -> bytes:
    """An event; ``scan`` is its id (a browser reconnecting sends it as Last-Event-ID)."""
    head = b"id: %d\n" % scan if scan is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(
        data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


def _since(request: Request) -> int | None:
    """The last scan a reconnecting page has seen: Last-Event-ID, else ``since``."""
    raw = request.headers.get("last-event-id") or request.query_params.get("since")
    if not raw:
        return None
    if not raw.isdigit():
        raise HTTPException(400, f"since={raw!r}: not a scan number")
    return int(raw)


async def api_stream(request: Request) -> Response:
    """Server-Sent Events: ``points`` (only points past what was sent, with the index
    of the first), ``status`` when a streamed run ends, ``runs`` with new runs and
    updated rows of live runs. ``run=EXP/RUN`` (repeatable) picks the streamed runs;
    ``watch=EXP/RUN`` (repeatable) names live rows of the runs view to keep current;
    ``since=SCAN`` (or Last-Event-ID) the scan the page has seen the new runs of (a
    stream reopened announces the runs that appeared while none was open).
    Every stream is fed by the Dashboard's one poller (``live.Live``)."""
    d = _dash(request)
    since = _since(request)
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
            hello: dict[str, Any] = {"runs": list(cached), "counts": counts}
            if since is not None and live.added_since(since) is not None:
                known_scan = since                   # its next round sends what came since
            elif since is not None:
                hello["lost"] = True                 # too long ago: the page lists again
            hello["scan"] = known_scan
            rows_of = set(watch)
            yield b"retry: 1000\n\n" + _sse("hello", hello, known_scan)
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
                        yield _sse("runs", {"added": added, "rows": rows, "scan": known_scan},
                                   known_scan)
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
               loopback: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
               title: str | None = None) -> Any:
    """The dashboard as an ASGI app over ``base_dir`` (the layout rule: argument,
    $EXPMAN_DIR, ./experiments). ``token``: required on every request when set.
    ``title``: what the page's header names (a served URL; default the folder's name)."""
    base = layout.base_dir(base_dir)
    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/runs", api_runs),
        Route("/api/bands", api_bands),
        Route("/api/hparams", api_hparams),
        Route("/api/stream", api_stream),
        Route("/api/runs/{exp}/{run}", api_run),
        Route("/api/runs/{exp}/{run}/series", api_series),
        Route("/api/runs/{exp}/{run}/metrics", api_metrics),
        Route("/api/export.csv", api_export_csv),
        Route("/api/runs/{exp}/{run}/events", api_events),
        Route("/api/runs/{exp}/{run}/branches", api_branches),
        Route("/api/runs/{exp}/{run}/tables/{table:path}", api_table),
        Route("/api/runs/{exp}/{run}/artifact-list", api_artifact_list),
        Route("/api/runs/{exp}/{run}/media", api_media),
        Route("/api/runs/{exp}/{run}/alerts", api_alerts),
        Route("/api/runs/{exp}/{run}/artifacts/{path:path}", api_artifact),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = Dashboard(base, max_bytes, title)
    guard = Guard(app, token, loopback)
    guard.dashboard = app.state.dashboard
    return guard
