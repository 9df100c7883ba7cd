"""Reading run folders: ``open_run`` for one run, ``list_runs`` for a base dir.

The read side never imports the write side (``expman.experiment`` and what it
loads): a dashboard or a CLI command pays only for reading. Columns and
conversions live in ``expman.series``, incremental decoding in ``expman.tail``,
the run-folder rules in ``expman.layout``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expman._fsutil import MAX_JSON_BYTES, parse_json_object, read_regular_stat
from expman.errors import CorruptRunError, ExpmanError, ExpmanValueError
from expman.loss import recorded_loss
from expman.layout import (
    CRASHED, DAMAGED, EVENTS_FILE, FINAL_STATUSES, METRICS_FILE, PARAMS_FILE, RUN_FILE, RUNNING,
    STATUSES, base_dir, fork_parent, rank_file, resolve_run, scan_run_dirs,
)
from expman.liveness import (
    RunStatus, effective_status, heartbeat, logging_ranks, run_status, stream_status,
    world_size, world_size_error,
)
from expman.readmodel import settle_torn_tail
from expman.series import Metrics, Series, check_duplicates, column, concat
from expman.tail import RunTail, TailBatch, read_metrics, warn_damage

__all__ = ["open_run", "list_runs", "list_runs_json", "update_index", "run_duration", "Run",
           "Series", "Metrics", "RunSummary", "RunListCache", "RunStatus", "rank_losses",
           "RunTail", "TailBatch", "effective_status", "STATUSES", "read_metrics", "public_events"]

def run_duration(meta: dict[str, Any], status: str, path: Path) -> float | None:
    """Seconds the run lasted: recorded at close; while running, the time so far;
    for a crash, until its last sign of life. The one place this is computed."""
    d, start = meta.get("duration"), meta.get("start_time")
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        return float(d)
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not start:
        return None
    if status == RUNNING:
        return max(0.0, time.time() - float(start))
    if status == CRASHED:
        beat = heartbeat(path)
        return max(0.0, beat - float(start)) if beat else None
    return None


def read_params(run_dir: Path) -> dict[str, Any]:
    """params.json as a dict ({} when absent); CorruptRunError when it is not one."""
    return _params(os.path.join(run_dir, PARAMS_FILE))[0]


def _params(path: str) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """read_params of the file at ``path``, with its stat key (None when absent)."""
    try:
        data, st = read_regular_stat(path, limit=MAX_JSON_BYTES)
    except FileNotFoundError:
        return {}, None
    except CorruptRunError:
        if not os.path.exists(path):
            return {}, None     # a link to nothing counts as absent, as it always did
        raise
    return parse_json_object(data, path), _key(st)


KEY_KIND = "key"     # events.jsonl's copies of metric-name definitions: the format's, not the user's


def public_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` without the internal ``key`` records (docs/format.md, events.jsonl);
    the key table is ``expman.summary.read_event_keys(run.path)``."""
    return [e for e in events if e.get("kind") != KEY_KIND]


@dataclass
class Run:
    """A run folder as read by ``open_run``. ``status`` includes CRASHED for dead
    RUNNING runs: the whole run's status when no rank was asked for, else the
    asked rank's own (``open_run(path, rank=0)``: rank 0's, even when rank 1
    crashed); ``run_status`` is always the whole run's, with the rank and reason
    that decided it. ``refresh()`` reads what the run appended since."""

    path: Path
    meta: dict[str, Any]
    params: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: Metrics
    integrity: dict[str, Any] = field(default_factory=dict)
    _tail: RunTail | None = field(default=None, repr=False, compare=False)
    _duplicates: str | None = field(default=None, repr=False, compare=False)
    _raw: Metrics = field(default_factory=lambda: Metrics({}), repr=False, compare=False)
    rank: int | None = None
    # expman.branches: what a forked or branched run's fold found (None: it never branched)
    _history: Any = field(default=None, repr=False, compare=False)
    _branch: int | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return (f"<Run {self.id} {self.status} {len(self.metrics)} metrics "
                f"{self.metrics.points} points {len(self.events)} events>")

    def _repr_html_(self) -> str:
        from html import escape
        rows = "".join(
            f"<tr><td>{escape(k)}</td><td>{len(s)}</td><td>{escape(repr(s.last))}</td></tr>"
            for k, s in list(self.metrics.items())[:50])
        more = f"<p>... {len(self.metrics) - 50} more metrics</p>" if len(self.metrics) > 50 else ""
        return (f"<p><b>{escape(self.id)}</b> {escape(self.status)}</p>"
                f"<table><tr><th>metric</th><th>points</th><th>last</th></tr>{rows}</table>{more}")

    @property
    def status(self) -> str:
        if self.rank is None:
            return effective_status(self.meta, self.path)
        return stream_status(self.meta, self.path, self.rank)

    @property
    def run_status(self) -> RunStatus:
        """The whole run's status over its ranks, and which rank decided it and why."""
        if not self.rank:
            return run_status(self.meta, self.path)
        from expman._fsutil import read_json_object
        try:
            meta = read_json_object(self.path / RUN_FILE)
        except (OSError, ValueError):
            meta = {k: v for k, v in self.meta.items() if k != "rank"}
        return run_status(meta, self.path)

    @property
    def duration(self) -> float | None:
        return run_duration(self.meta, self.status, self.path)

    @property
    def tags(self) -> list[str]:
        tags = self.meta.get("tags")
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    @property
    def histograms(self) -> dict[str, list[Any]]:
        """tag -> histograms logged with ``log_histogram``/``add_histogram``, in order."""
        from expman.media_read import histograms
        return histograms(self)

    @property
    def images(self) -> dict[str, list[Any]]:
        """tag -> images logged with ``log_image``/``add_image`` (PNG paths), in order."""
        from expman.media_read import images
        return images(self)

    @property
    def tables(self) -> dict[str, list[Any]]:
        """name -> versions of tables logged with ``log_table``/``wandb.Table``, in
        order (expman.tables.TableVersion: step, columns, rows, ``to_pandas()``)."""
        from expman.tables import read_tables
        return read_tables(self)

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env") or {}

    @property
    def experiment(self) -> str:
        return str(self.meta.get("experiment", self.path.parent.name))

    @property
    def run_name(self) -> str:
        return str(self.meta.get("run_name", self.path.name))

    @property
    def id(self) -> str:
        """``experiment/run_name``, the way the CLI names a run."""
        return f"{self.experiment}/{self.run_name}"

    # ---- branches (expman.branches, docs/format.md) ----
    @property
    def branches(self) -> list[Any]:
        """Every branch of this rank (``expman.branches.Branch``): id, kind ("root",
        "fork", "rewind", "resume"), from_step, first_step, last_step, points,
        parent, time; in the order they were made (the last one is the main history)."""
        from expman.branches import own_branch
        if self._history is not None:
            return list(self._history.branches)
        steps = [x for s in self._raw.values() if len(s)
                 for x in (int(min(s.steps)), int(max(s.steps)))]
        return [own_branch(self.path, self.meta, self._raw.points, min(steps, default=None),
                           max(steps, default=None))]

    @property
    def lineage(self) -> list[tuple[str, int | None]]:
        """``(run spec, fork step)`` from the root ancestor to this run (last, with
        fork step None): the chain of forks this run's history is read through."""
        if self._history is not None:
            return list(self._history.lineage)
        return [(f"{self.path.parent.name}/{self.path.name}", None)]

    @property
    def parent(self) -> str | None:
        """``"experiment/run"`` this run was forked from, or None."""
        fork = self.meta.get("fork")
        parent = fork.get("parent") if isinstance(fork, dict) else None
        return parent if isinstance(parent, str) else None

    @property
    def fork_step(self) -> int | None:
        """The parent's last step this run inherits (inclusive), or None."""
        fork = self.meta.get("fork")
        step = fork.get("step") if isinstance(fork, dict) else None
        return step if isinstance(step, int) and not isinstance(step, bool) else None

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "artifact"]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == "message"]

    def refresh(self) -> int:
        """Read the frames and events appended since the last read, in place
        (run.json and params.json too, if they changed). Returns the number of
        new points plus new events."""
        if self._tail is None:
            raise ExpmanValueError("this Run was not made by open_run(); nothing to refresh")
        if self._history is not None or self._branch is not None or _branched(
                self.path, self.meta, self.rank or 0):
            return self._refresh_branched()
        batch = self._tail.poll()
        # raw records are kept apart from the view: a duplicates rule (a mean) is
        # applied to every record of a step, never to an earlier result
        raw = dict(self._raw.items())
        for k, s in batch.metrics.items():
            old = raw.get(k)
            if old is not None:
                s = Series(k, concat(old.steps, s.steps), concat(old.values, s.values),
                           concat(old.times, s.times))
            raw[k] = s
        self._raw = Metrics(raw)
        self.metrics = self._raw.reduce(self._duplicates) if self._duplicates else self._raw
        events = public_events(batch.events)
        self.events.extend(events)
        if batch.meta_changed:
            self.meta = self._tail.meta
        try:
            self.params = read_params(self.path)
        except (OSError, ValueError):
            pass
        self.integrity = _integrity(self._tail.integrity, self._tail.bad_event_lines,
                                    self.meta, self.path)
        return batch.metrics.points + len(events)


    def _refresh_branched(self) -> int:
        """refresh() of a forked or branched run: the fold is read again (a rewind
        may have moved points out of the main history)."""
        assert self._tail is not None
        before = self.metrics.points
        events = public_events(self._tail.poll_events())
        self.events.extend(events)
        try:
            self.meta = read_meta_quietly(self.path, self.meta)
            self.params = read_params(self.path)
        except (OSError, ValueError):
            pass
        hist = _read_history(self.path, self.rank or 0, self.meta, self._branch,
                             self._tail.salvage)
        self._history = hist
        self._raw = hist.metrics
        self.metrics = self._raw.reduce(self._duplicates) if self._duplicates else self._raw
        self.integrity = _branch_integrity(
            _integrity(hist.report, self._tail.bad_event_lines, self.meta, self.path), hist)
        return max(0, self.metrics.points - before) + len(events)


def read_meta_quietly(path: Path, old: dict[str, Any]) -> dict[str, Any]:
    from expman._fsutil import read_json_object
    try:
        return read_json_object(path / RUN_FILE)
    except (OSError, ValueError):
        return old


def _branched(path: Path, meta: dict[str, Any], rank: int) -> bool:
    from expman.branches import is_branched
    return is_branched(path, meta, rank)


def _read_history(path: Path, rank: int, meta: dict[str, Any], branch: int | None,
                  salvage: bool) -> Any:
    from expman.branches import read_history
    keys = None
    if salvage:
        from expman.summary import read_event_keys
        keys = read_event_keys(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_history(path, rank, meta, branch=branch, salvage=salvage, keys=keys)


def _branch_integrity(ig: dict[str, Any], hist: Any) -> dict[str, Any]:
    """Run.integrity of a branched run: what the fold found wrong (bad branch lines,
    a broken parent) under ``lineage``: ``[{"problem", "detail"}]``."""
    ig["lineage"] = list(hist.problems)
    return ig


def _integrity(report: dict[str, Any], bad_lines: int, meta: dict[str, Any], path: Path,
               rank: int = 0, own: dict[str, Any] | None = None) -> dict[str, Any]:
    """The decoder's report plus what the writer recorded losing (rows it could
    not write on a full disk, events dropped), this rank's and every other
    rank's (``rank_data_loss``): loss is never hidden. A bad last frame of a
    stream its writer closed cleanly is damage, not a torn tail
    (readmodel.settle_torn_tail). ``meta`` is run.json, ``own`` the rank's."""
    closed = stream_status(own or meta, path, rank) in FINAL_STATUSES
    ig = settle_torn_tail(report, closed)
    ig["bad_event_lines"] = bad_lines
    ig["lineage"] = []          # expman.branches: a broken parent or branch line (see _branch_integrity)
    losses = rank_losses(meta, path)
    ig["data_loss"] = losses.get(rank)
    others = {r: v for r, v in losses.items() if r != rank}
    ig["rank_data_loss"] = others or None
    bad_world = world_size_error(meta)
    if bad_world:
        ig["meta_error"] = bad_world
    return ig


def rank_losses(meta: dict[str, Any], path: Path) -> dict[int, dict[str, Any]]:
    """The loss each rank's writer recorded, by rank (``expman.loss.recorded_loss``:
    run.json's or run.rank<r>.json's ``data_loss``, or the loss record a full disk
    or a SIGKILL left, whichever says more); ``meta`` is run.json. Empty when no
    rank lost anything."""
    from expman._fsutil import read_json_object
    out: dict[int, dict[str, Any]] = {}
    if not meta.get("rank"):
        loss = _rank_loss(path, 0, meta)
        if loss:
            out[0] = loss
    if world_size(meta) <= 1:
        return out
    for r in logging_ranks(meta):
        if not r:
            continue
        try:
            own = read_json_object(path / rank_file(RUN_FILE, r)) \
                if os.path.lexists(path / rank_file(RUN_FILE, r)) else None
        except (OSError, ValueError):
            own = None
        loss = _rank_loss(path, r, own)
        if loss:
            out[r] = loss
    return out


def listing_loss(meta: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The loss a listing line shows: rank 0's, else the lowest rank's that lost
    data (with ``rank``); any rank's loss marks the run."""
    losses = rank_losses(meta, path)
    if not losses:
        return None
    r = min(losses)
    return losses[r] if r == 0 else {**losses[r], "rank": r}


def _rank_loss(path: Path, rank: int, own: dict[str, Any] | None) -> dict[str, Any] | None:
    """A rank's recorded loss. A run.json its writer rewrote at close holds the whole
    figure; otherwise (still running, killed, or closed on a full disk that kept
    run.json from being rewritten) the loss record may know more."""
    if own is not None and own.get("status") in FINAL_STATUSES:
        loss = own.get("data_loss")
        return loss if isinstance(loss, dict) and loss else None
    return recorded_loss(path, rank, own)


def open_run(path: str | os.PathLike[str], *, salvage: bool = False,
             duplicates: str | None = None, base_dir: str | os.PathLike[str] | None = None,
             rank: int | None = None, branch: int | None = None) -> Run:
    """Read a run folder: metadata, params, events, and metrics as columns.

    ``path`` is a run folder, a URL of one synced by ``expman sync``, or a run
    spec under the base dir (``exp/latest``, ``exp/run_name``, a unique prefix;
    see ``resolve_run``). ``duplicates=None``
    keeps every record as logged (duplicate and out-of-order steps included);
    ``"last"``, ``"first"`` or ``"mean"`` gives one value per step, sorted by
    step. ``salvage=True`` keeps the frames after damage in the middle.
    A multi-rank run reads as rank 0, with the whole run's status, by default;
    ``rank=r`` reads rank r's streams, with rank r's own status (``Run.status``;
    ``Run.run_status`` is the whole run's either way).
    A forked or branched run reads as its main history (expman.branches,
    docs/format.md); ``branch=k`` reads branch k's history instead (ids in
    ``Run.branches``).
    """
    check_duplicates(duplicates, allow_none=True)
    path = _local(path)
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
        raise ExpmanValueError(f"rank must be a non-negative int, got {rank!r}")
    if branch is not None and (not isinstance(branch, int) or isinstance(branch, bool)):
        raise ExpmanValueError(f"branch must be an int branch id, got {branch!r:.80}")
    if rank:
        where = Path(os.fspath(path))     # a rank may open before rank 0 wrote run.json
        where = where if where.is_dir() else resolve_run(path, base_dir)
        return _open_rank(where, rank, salvage, duplicates, branch)
    tail = RunTail(resolve_run(path, base_dir), salvage=salvage)
    p = tail.path
    if branch is not None or _branched(p, tail.meta, 0):
        return _open_branched(tail, duplicates, branch)
    if salvage:         # names of points whose defining frame is gone: the copies in events
        from expman.summary import read_event_keys
        tail._keys = read_event_keys(p)
    try:
        params, params_error = read_params(p), None
    except (OSError, ValueError) as e:     # damaged params never hide the metrics
        params, params_error = {}, str(e)
    batch = tail.poll()
    integrity = _integrity(tail.integrity, tail.bad_event_lines, tail.meta, p)
    if params_error:
        integrity["params_error"] = params_error
        warnings.warn(f"expman: {params_error}", RuntimeWarning, stacklevel=2)
    warn_damage(p / METRICS_FILE, integrity, salvage, 2)
    metrics = batch.metrics
    # keys defined but never given a point still appear, empty, in logged order
    series = {name: metrics[name] if name in metrics else Series(
        name, column(array("q")), column(array("d")), column(array("d")))
        for name in (tail._keys[k] for k in sorted(tail._keys))}
    raw = Metrics(series)
    view = raw.reduce(duplicates) if duplicates is not None else raw
    return Run(p, tail.meta, params, public_events(batch.events), view, integrity, tail, duplicates,
               raw, rank)


def _open_branched(tail: RunTail, duplicates: str | None, branch: int | None) -> Run:
    """open_run of a forked or branched run (rank 0): the fold of expman.branches."""
    p = tail.path
    try:
        params, params_error = read_params(p), None
    except (OSError, ValueError) as e:
        params, params_error = {}, str(e)
    hist = _read_history(p, 0, tail.meta, branch, tail.salvage)
    events = public_events(tail.poll_events())
    integrity = _branch_integrity(
        _integrity(hist.report, tail.bad_event_lines, tail.meta, p), hist)
    if params_error:
        integrity["params_error"] = params_error
        warnings.warn(f"expman: {params_error}", RuntimeWarning, stacklevel=3)
    warn_damage(p / METRICS_FILE, integrity, tail.salvage, 3)
    raw = hist.metrics
    view = raw.reduce(duplicates) if duplicates is not None else raw
    return Run(p, tail.meta, params, events, view, integrity, tail, duplicates, raw, None,
               hist, branch)


def _open_rank(p: Path, rank: int, salvage: bool, duplicates: str | None,
               branch: int | None = None) -> Run:
    """Rank r's view of a run (r > 0): its metrics, events and meta
    (run.rank<r>.json over run.json), the run's params. It cannot ``refresh()``;
    open it again instead."""
    from expman._fsutil import read_json_object, read_regular
    from expman.layout import parse_event_lines

    def meta_of(name: str) -> dict[str, Any] | None:
        try:
            return read_json_object(p / name)
        except (OSError, ValueError):
            return None
    run_meta = meta_of(RUN_FILE) or {}      # rank 0 may not have opened it yet
    own = meta_of(rank_file(RUN_FILE, rank))
    if own is None:
        if not run_meta:
            raise FileNotFoundError(2, f"not an expman run folder (no {RUN_FILE}, no "
                                       f"{rank_file(RUN_FILE, rank)}): {p}", str(p))
        raise ExpmanValueError(
            f"rank {rank}: no {rank_file(RUN_FILE, rank)} in {p} (the run has "
            f"{world_size(run_meta)} ranks; logging ranks {logging_ranks(run_meta)})")
    meta = {**run_meta, **own}
    if "data_loss" not in own:
        meta.pop("data_loss", None)          # rank 0's loss is not this rank's
    try:
        params = read_params(p)
    except (OSError, ValueError):
        params = {}
    hist = None
    if branch is not None or _branched(p, meta, rank):
        hist = _read_history(p, rank, meta, branch, salvage)
        metrics, report = hist.metrics, hist.report
    else:
        with warnings.catch_warnings():        # warned below, once, with the whole report
            warnings.simplefilter("ignore")
            metrics, report = read_metrics(p / rank_file(METRICS_FILE, rank), salvage=salvage)
    raw = metrics
    if duplicates is not None:
        metrics = metrics.reduce(duplicates)
    try:
        events, bad, _used = parse_event_lines(read_regular(p / rank_file(EVENTS_FILE, rank)))
    except FileNotFoundError:
        events, bad = [], 0
    integrity = _integrity(report, bad, run_meta, p, rank, meta)
    if hist is not None:
        integrity = _branch_integrity(integrity, hist)
    warn_damage(p / rank_file(METRICS_FILE, rank), integrity, salvage, 3)
    return Run(p, meta, params, public_events(events), metrics, integrity, None, duplicates, raw,
               rank, hist, branch)


@dataclass(frozen=True)
class RunSummary:
    """One line of ``list_runs``: enough to pick a run."""

    experiment: str
    run_name: str
    status: str
    start_time: float | None
    duration: float | None
    params: dict[str, Any]
    last_metrics: dict[str, float]
    path: Path
    end_time: float | None = None
    points: int = 0
    exit: dict[str, Any] | None = None
    data_loss: dict[str, Any] | None = None
    damaged: str | None = None        # why this run could not be read, if it could not
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    notes: str | None = None
    status_rank: int | None = None    # the rank that decided ``status`` (RunStatus.rank)
    status_reason: str | None = None  # and why (RunStatus.reason)
    parent: str | None = None         # a forked run's parent, "experiment/run_name"

    @property
    def id(self) -> str:
        return f"{self.experiment}/{self.run_name}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "experiment": self.experiment, "run_name": self.run_name,
                "status": self.status, "start_time": self.start_time,
                "end_time": self.end_time, "duration": self.duration, "params": self.params,
                "last_metrics": self.last_metrics, "points": self.points, "exit": self.exit,
                "data_loss": self.data_loss, "damaged": self.damaged, "tags": self.tags,
                "group": self.group, "notes": self.notes, "path": str(self.path),
                "status_rank": self.status_rank, "status_reason": self.status_reason,
                "parent": self.parent}


# (path, metrics.bin inode, size, mtime_ns, ctime_ns) -> (last values, points):
# list_runs in a long-lived process (a dashboard) decodes each unchanged run once.
# A file replaced (new inode) or rewritten in place, even with its mtime set
# back (ctime moves), is read again.
_LAST_CACHE: dict[tuple[Any, ...], tuple[dict[str, float], int]] = {}
_LAST_CACHE_MAX = 100_000


def _last_values(run_dir: Path | str) -> tuple[dict[str, float], int]:
    """Last value per metric and the point count: from summary.json when it covers
    metrics.bin as it is now, else by decoding (after a crash, say)."""
    try:
        st = os.stat(os.path.join(run_dir, METRICS_FILE))
    except OSError:
        return {}, 0
    return _last_values_at(os.fspath(run_dir), st)


def _last_values_at(run: str, st: os.stat_result, meta: dict[str, Any] | None = None
                    ) -> tuple[dict[str, float], int]:
    """_last_values of the run folder ``run`` whose metrics.bin stat is ``st``
    (``meta``: its run.json, if read already)."""
    key = (os.path.join(run, METRICS_FILE), *_key(st))
    hit = _LAST_CACHE.get(key)
    if hit is not None:
        return hit
    from expman.summary import summarize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            doc = summarize(run, meta)    # summary.json when fresh, else a decode (quietly)
        except (OSError, ExpmanError, ValueError):
            doc = {"metrics": {}}
    figures = doc["metrics"]
    result = ({k: m.last_value for k, m in figures.items() if m.count},
              sum(m.count for m in figures.values()))
    if len(_LAST_CACHE) >= _LAST_CACHE_MAX:
        _LAST_CACHE.clear()
    _LAST_CACHE[key] = result
    return result


def _key(st: os.stat_result) -> tuple[int, ...]:
    """What tells a changed file from an unchanged one: a file replaced (atomic
    rename: a new inode), rewritten in place (size, mtime) or touched back (ctime)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_SEP = os.sep


def _damaged(path: Path, exp: str, name: str, e: BaseException) -> RunSummary:
    return RunSummary(exp, name, DAMAGED, None, None, {}, {}, path,
                      damaged=str(e) or type(e).__name__)


def _number_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _line(run: str, exp: str, name: str, metrics: bool, cache: RunListCache | None = None,
          linked: bool = False,
          keep: Callable[[RunSummary, dict[str, Any]], None] | None = None) -> RunSummary | None:
    """One run's line (None: ``run`` holds no run.json). A damaged run is a line
    that says so (``damaged``), never an error. Each metadata file is read through
    one open; with ``cache``, an unchanged finished run is not read at all."""
    if cache is not None:
        hit = cache._hit(run, linked)
        if hit is not None:
            return hit
        began = time.monotonic()
    path = Path(run)
    where = str(path)              # the spelling errors have always used
    rpath = os.path.join(where, RUN_FILE)
    try:
        data, rst = read_regular_stat(rpath, limit=MAX_JSON_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None                      # not a run folder
    except (OSError, ValueError) as e:
        if not os.path.isfile(rpath):    # a FIFO, a folder, a link to nothing: not a run
            return None
        return _damaged(path, exp, name, e)
    try:
        meta = parse_json_object(data, rpath)
        bad_world = world_size_error(meta)
        if bad_world:
            raise CorruptRunError(bad_world)
        decided = run_status(meta, path)
        st = decided.status
        params, pkey = _params(os.path.join(where, PARAMS_FILE))
    except (OSError, ValueError) as e:
        return _damaged(path, exp, name, e)
    last: dict[str, float] = {}
    points, mkey = 0, None
    if metrics:
        try:
            mst = os.stat(os.path.join(where, METRICS_FILE))
        except OSError:
            pass
        else:
            mkey = _key(mst)
            last, points = _last_values_at(where, mst, meta)
    start = _number_or_none(meta.get("start_time"))
    end = _number_or_none(meta.get("end_time"))
    if end is None and st == CRASHED:
        end = heartbeat(path)
    exit_info = meta.get("exit")
    loss = listing_loss(meta, path)
    tags = meta.get("tags")
    group, notes = meta.get("group"), meta.get("notes")
    line = RunSummary(str(meta.get("experiment", exp)), str(meta.get("run_name", name)), st,
                      start, run_duration(meta, st, path), params, last, path, end, points,
                      exit_info if isinstance(exit_info, dict) else None,
                      data_loss=loss if isinstance(loss, dict) else None,
                      tags=[t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
                      group=group if isinstance(group, str) else None,
                      notes=notes if isinstance(notes, str) else None,
                      status_rank=decided.rank, status_reason=decided.reason,
                      parent=fork_parent(meta))
    if cache is not None and metrics:
        cache._keep(run, (linked, _key(rst), pkey, mkey), line, meta, began)
    if keep is not None:
        keep(line, meta)
    return line


class RunListCache:
    """Lines of ``list_runs`` kept between calls, for a long-lived process (a
    dashboard): a finished run whose run.json, params.json and metrics.bin are
    unchanged (same inode, size, mtime and ctime: three lstat calls) and whose
    folder did not become or stop being a symlink is not read again.

    Only a line that cannot change while those files do not is kept: recorded
    FINISHED, FAILED or KILLED, one rank. A live or crashed run (its status and
    duration come from its lock and the clock), a multi-rank run and a damaged
    one are read every time, and so is a run changed in the last RACY seconds
    (a second change within the filesystem's timestamp tick could keep size and
    mtime). Used by ``list_runs(..., cache=)`` with metrics and without
    ``limit``. Kept lines are shared between calls: treat them as read-only.
    Memory only: it never writes a file."""

    RACY = 2.0

    def __init__(self) -> None:
        self._lines: dict[str, tuple[tuple[Any, ...], RunSummary, float]] = {}
        self._trusted = math.inf

    @contextmanager
    def trusting(self, since: float) -> Iterator[None]:
        """Within this block, lines whose reading began at or after ``since``
        (``time.monotonic()``) are taken as they are, without a stat: for a
        caller that asked at ``since`` and waited for another listing that read
        them (a dashboard's first request during its warm-up)."""
        self._trusted = since
        try:
            yield
        finally:
            self._trusted = math.inf

    def __len__(self) -> int:
        return len(self._lines)

    def _hit(self, run: str, linked: bool) -> RunSummary | None:
        """The kept line of ``run`` if its files are as they were (written for speed:
        a warm listing is this, once per run)."""
        kept = self._lines.get(run)
        if kept is None or kept[0][0] != linked:
            return None
        if kept[2] >= self._trusted:
            return kept[1]          # read after the caller's request came (see trusting)
        key = kept[0]
        try:
            st = os.lstat(run + _SEP + RUN_FILE)
            if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != key[1]:
                return None
            try:
                st = os.lstat(run + _SEP + PARAMS_FILE)
            except FileNotFoundError:
                if key[2] is not None:
                    return None
            else:
                if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != key[2]:
                    return None
            try:
                st = os.stat(run + _SEP + METRICS_FILE)
            except FileNotFoundError:
                return kept[1] if key[3] is None else None
            if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != key[3]:
                return None
        except OSError:
            return None
        return kept[1]

    def _keep(self, run: str, key: tuple[Any, ...], line: RunSummary, meta: dict[str, Any],
              began: float) -> None:
        world = meta.get("world_size")
        changed = max(k[3] for k in key[1:] if k is not None) / 1e9     # newest ctime
        if (line.status not in FINAL_STATUSES or meta.get("status") not in FINAL_STATUSES
                or (isinstance(world, int) and world > 1) or line.damaged
                or time.time() - changed < self.RACY):
            self._lines.pop(run, None)
            return
        self._lines[run] = (key, line, began)

    def _prune(self, seen: set[str]) -> None:
        """Forget the runs a full listing did not find (removed folders)."""
        for run in list(self._lines):       # a copy: another thread may be listing too
            if run not in seen:
                self._lines.pop(run, None)


def list_runs(base_dir: str | os.PathLike[str] | None = None, experiment: str | None = None,
              status: str | Iterable[str] | None = None, *, metrics: bool = True,
              limit: int | None = None, tags: str | Iterable[str] | None = None,
              group: str | None = None, cache: RunListCache | None = None,
              index: bool | None = None) -> list[RunSummary]:
    """Runs under base_dir (see ``layout.base_dir``; a URL synced by ``expman sync``
    is read through a local cache), newest first; filter by
    experiment, status (one name or several; CRASHED included), ``tags`` (runs
    having every one) and ``group``. A damaged run
    is listed with ``damaged`` saying why. ``metrics=False`` skips the last
    metric values; ``limit`` reads metrics only for the runs returned.
    ``cache`` (a RunListCache kept by the caller) spares re-reading unchanged
    finished runs on the next call (with metrics, without ``limit``).
    The base dir's listing index (``expman.index``: one read plus a stat per
    finished run's folder) is read, and rewritten when it missed; with
    ``cache`` (a long-lived reader such as the dashboard, which never writes
    into the base dir) it is only read, unless ``index=True``.
    ``index=False`` reads every run folder, as the index would."""
    base = _base(_local(base_dir) if base_dir is not None else None)
    wanted = _statuses(status)
    early = metrics and limit is None       # one pass: metrics read with the metadata
    idx = None
    if index is not False:
        from expman.index import RunIndex
        idx = RunIndex.load(base)
    out = _scan(base, experiment, early, cache, idx)
    if idx is not None and idx.changed and (index or cache is None):
        idx.save()
    if wanted:
        out = [r for r in out if r.status in wanted]
    if tags or group is not None:
        want_tags = [tags] if isinstance(tags, str) else list(tags or [])
        out = [r for r in out if (group is None or r.group == group)
               and all(t in r.tags for t in want_tags)]
    out.sort(key=lambda r: r.start_time or 0.0, reverse=True)
    if limit is not None:
        out = out[:max(0, limit)]
    if metrics and not early:       # (a line from the index has its metrics already)
        out = [r if idx is not None and (r.points or r.last_metrics) else _with_metrics(r)
               for r in out]
    if not metrics and idx is not None:
        from dataclasses import replace
        out = [replace(r, last_metrics={}, points=0) if r.points or r.last_metrics else r
               for r in out]
    return out


def list_runs_json(base_dir: str | os.PathLike[str] | None = None,
                   experiment: str | None = None, status: str | Iterable[str] | None = None, *,
                   limit: int | None = None, tags: str | Iterable[str] | None = None,
                   group: str | None = None) -> bytes:
    """``list_runs`` as the JSON array ``expman list --json`` prints: each
    line's ``to_dict()`` (non-finite floats spelled), one a line. A line the
    listing index holds is copied from it as stored, never decoded and built
    again: over many finished runs, the listing is one read, a ``stat`` per
    run folder and a join. Live and changed runs are read as ``list_runs`` reads them."""
    if tags or group is not None:       # filters on fields a kept line does not spell out
        import orjson

        from expman.layout import jsonable
        return _json_lines([orjson.dumps(jsonable(r.to_dict())) for r in list_runs(
            base_dir, experiment, status, limit=limit, tags=tags, group=group)])
    base = _base(_local(base_dir) if base_dir is not None else None)
    return _json_listing(base, experiment, _statuses(status), limit)[0]


def _json_listing(base: Path, experiment: str | None = None, wanted: set[str] | None = None,
                  limit: int | None = None) -> tuple[bytes, Any, list[str]]:
    """``list_runs_json`` of ``base``, with the ``RunIndex`` it used (which
    entries it hit: ``hits_digest``) and the run folders it read instead."""
    import orjson
    from operator import itemgetter

    from expman.index import RunIndex, kept_json
    from expman.layout import jsonable
    idx = RunIndex.load(base)
    lines = _scan(base, experiment, True, None, idx, as_json=True)
    if idx.changed:
        idx.save()
    picked = [((line[0][0] if type(line) is tuple else line.start_time) or 0.0, line)
              for line in lines
              if not wanted or (line[0][1] if type(line) is tuple else line.status) in wanted]
    picked.sort(key=itemgetter(0), reverse=True)
    if limit is not None:
        picked = picked[:max(0, limit)]
    data = _json_lines([kept_json(*line) if type(line) is tuple
                        else orjson.dumps(jsonable(line.to_dict())) for _, line in picked])
    return data, idx, [str(line.path) for line in lines if type(line) is not tuple]


def _json_lines(rows: list[bytes]) -> bytes:
    return b"[\n" + b",\n".join(rows) + b"\n]" if rows else b"[]"


def _statuses(status: str | Iterable[str] | None) -> set[str]:
    if isinstance(status, str):
        return {status.upper()}
    return {s.upper() for s in status} if status else set()


def _scan(base: Path, experiment: str | None, early: bool, cache: RunListCache | None,
          idx: Any, as_json: bool = False) -> list[Any]:
    """Every run's line under ``base``, unsorted: from the index ``idx``
    (an ``expman.index.RunIndex``) where it holds the folder as it is, else
    read (with metrics when ``early``, and then offered to the index).
    ``as_json``: a line from the index is a ``(index.Kept, path)`` pair, not decoded."""
    out: list[Any] = []
    seen = set()
    dot = os.fspath(base) == "."            # "./exp/run": Path(run) spells it "exp/run"
    for run, exp, name, linked in scan_run_dirs(base, experiment):
        line: Any = None
        keep = None
        if idx is not None and not linked:      # a link may lead anywhere: always read
            if as_json:
                kept, key = idx.lookup_kept(exp, name, run)
                if kept is not None:
                    line = (kept, run[2:] if dot else run)
            else:
                fields, key = idx.lookup(exp, name, run)
                if fields is not None:
                    line = RunSummary(**fields, path=Path(run))
            if line is None and early:                         # a line without metrics is not kept
                def keep(line: RunSummary, meta: dict[str, Any], exp: str = exp,
                         name: str = name, key: Any = key) -> None:
                    idx.offer(exp, name, key, line, meta)
        if line is None:
            line = _line(run, exp, name, early, cache if early else None, linked, keep)
        if line is not None:
            out.append(line)
            if cache is not None:
                seen.add(run)
    if cache is not None and early and experiment is None:
        cache._prune(seen)
    if idx is not None:
        idx.forget_missing(experiment)
    return out


def update_index(base_dir: str | os.PathLike[str] | None = None, *,
                 rebuild: bool = False) -> dict[str, Any]:
    """Bring ``base_dir``'s listing index (``expman.index``) up to date;
    ``rebuild``: from nothing, reading every run folder again. Returns what
    happened: runs listed, entries found, hits, misses, entries kept, whether
    it was written, and the seconds it took."""
    from expman.index import RunIndex
    began = time.perf_counter()
    base = _base(_local(base_dir) if base_dir is not None else None)
    idx = RunIndex(base, state="rebuilt") if rebuild else RunIndex.load(base)
    lines = _scan(base, None, True, None, idx)
    written = idx.save() if (idx.changed or rebuild or idx.state != "loaded") else False
    return {**idx.stats(), "runs": len(lines), "written": written,
            "seconds": round(time.perf_counter() - began, 4)}


def _with_metrics(r: RunSummary) -> RunSummary:
    if r.damaged:
        return r
    last, points = _last_values(r.path)
    from dataclasses import replace
    return replace(r, last_metrics=last, points=points)


def _local(target: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """A URL (``s3://bucket/runs``, see ``expman sync``) as a local cached copy."""
    from expman.remote import is_url
    if is_url(target):
        from expman.remote import localize
        return localize(target)
    return target


def _base(explicit: str | os.PathLike[str] | None) -> Path:
    return base_dir(explicit)
