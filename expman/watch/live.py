"""Where the watchdogs run: over a run folder's files, off the hot path.

``RunWatch`` reads every watched rank's streams incrementally by byte offset
(as ``RunTail`` does), feeds a ``Watcher``, records each new alert once and acts
on it. It runs either

- in the training process, as a daemon thread started by ``Experiment.watch``:
  the per-point rules of its own rank run in the writer thread (src/exwatch.c),
  whose alerts and new steps the thread takes instead of reading those points;
  alerts are events in the run's own ``events.jsonl`` (through the writer, like
  any event), so ``log_metrics`` costs what it cost; or
- in another process (``expman watch RUN``): alerts go to ``alerts.jsonl``,
  that watcher's own file (one writer per file: it holds an OS lock on it), and
  readers merge the two by alert id (``read_alerts``).

Actions: a callback, a webhook (``Webhook``: JSON POST, exponential back-off,
each alert delivered once: deliveries are recorded in the same file as the
alerts, as ``alert_delivered`` lines naming the id and a hash of the URL, and a
restarted watcher reads them back) and ``action=stop`` (``stop_loop``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from expman._fsutil import open_nofollow, read_json_object, read_regular, regular_stat
from expman.errors import ExpmanError, ExpmanValueError
from expman.layout import (
    ALERTS_FILE, EVENTS_FILE, FINAL_STATUSES, LOSS_FILE, RUN_FILE, RUNNING,
    jsonable, parse_event_lines, rank_file,
)
from expman.liveness import effective_status, logging_ranks
from expman.tail import RunTail
from expman.watch.alert import ALERT_KIND, Alert
from expman.watch.rules import Rule

__all__ = ["RunWatch", "Webhook", "AlertLog", "AlertTail", "WatchStop", "WatchLockedError",
           "record_alert", "read_alerts", "has_alerts", "stop_loop", "start", "stop",
           "DELIVERED_KIND"]

DELIVERED_KIND = "alert_delivered"     # a webhook delivery, recorded beside the alerts
_RANK_NAME = re.compile(r"\.rank([1-9][0-9]{0,5})\.[^.]+\Z")   # layout.rank_file's names


class WatchLockedError(ExpmanError, RuntimeError):
    """Another watcher process records alerts for this run (``alerts.jsonl`` is locked)."""


class WatchStop(ExpmanError, RuntimeError):
    """Raised by ``log_metrics`` after an alert whose rule says ``action=stop``."""

    def __init__(self, alert: Alert) -> None:
        self.alert = alert
        where = f"{alert.metric} " if alert.metric else ""
        super().__init__(f"expman watch stopped the run: {alert.message} (rule {alert.rule}, "
                         f"{where}step {alert.step}, rank {alert.rank}, alert {alert.id})")


def stop_loop(exp: Any, alert: Alert) -> None:
    """Make ``exp.log_metrics`` raise WatchStop from its next call on.

    ``log_metrics`` is the compiled method itself (no Python frame to check a
    flag in), so the run's class is swapped for a subclass whose ``log_metrics``
    raises: Python's documented ``__class__`` assignment, atomic under the GIL,
    free until it happens. Everything else of the run works as before (close
    records the exception as the FAILED run's reason)."""
    cls = type(exp)
    if getattr(cls, "_watch_stop", None) is not None:
        return                          # the first stop wins

    def log_metrics(self: Any, metrics: Any, step: Any = None) -> None:
        raise WatchStop(alert)

    exp.__class__ = type(cls.__name__, (cls,), {
        "__slots__": (), "__module__": cls.__module__, "__doc__": cls.__doc__,
        "log_metrics": log_metrics, "_watch_stop": alert})


# ---- reading -----------------------------------------------------------------------------------


class AlertTail:
    """New lines of ``alerts.jsonl`` (another process's watcher) since the last poll."""

    def __init__(self, run_dir: Path) -> None:
        self.events = run_dir / ALERTS_FILE
        self._eoff = 0

    def poll(self) -> list[dict[str, Any]]:
        return _poll_lines(self.events, self)


def _poll_lines(path: Path, owner: Any) -> list[dict[str, Any]]:
    try:
        if regular_stat(path).st_size < owner._eoff:
            owner._eoff = 0
        data = read_regular(path, owner._eoff)
    except (OSError, ValueError):
        return []
    events, _bad, used = parse_event_lines(data)
    owner._eoff += used
    return events


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return read_json_object(path)
    except (OSError, ValueError):
        return None


def watched_ranks(run_dir: Path, meta: Mapping[str, Any] | None = None) -> list[int]:
    """The logging ranks (``liveness.logging_ranks``: run.json's world, bounded by
    MAX_WORLD_SIZE like every reader) that have a file in the folder yet. One
    listing, then a set lookup per rank: a world run.json may inflate to 65,536
    costs no probe, no open and no tail per rank that never wrote."""
    meta = meta if meta is not None else (_read_meta(run_dir / RUN_FILE) or {})
    ranks = logging_ranks(dict(meta))
    if ranks == [0]:
        return ranks
    try:
        names = os.listdir(run_dir)
    except OSError:
        names = []
    present = {int(m.group(1)) for n in names if (m := _RANK_NAME.search(n))}
    return [r for r in ranks if r == 0 or r in present]


def _event_files(run_dir: Path) -> list[Path]:
    return [run_dir / rank_file(EVENTS_FILE, r) for r in watched_ranks(run_dir)] + \
        [run_dir / ALERTS_FILE]


def read_alerts(run_dir: str | os.PathLike[str]) -> list[Alert]:
    """Every alert of a run, merged from each rank's events and ``alerts.jsonl``,
    one per id (the first record wins), in time order."""
    path = Path(os.fspath(run_dir))
    seen: dict[str, Alert] = {}
    for f in _event_files(path):
        try:
            events, _bad, _used = parse_event_lines(read_regular(f))
        except (OSError, ValueError):
            continue
        for ev in events:
            a = Alert.from_event(ev)
            if a is not None and a.id not in seen:
                seen[a.id] = a
    return sorted(seen.values(), key=lambda a: (a.time, a.id))


_MARK = b'"kind":"alert"'


def has_alerts(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run recorded an alert: ``alerts.jsonl`` is not empty, or an
    events file (any rank's, found by one directory scan) holds an alert event
    (a byte search, no JSON parsing). Cheap enough for a listing."""
    stem, _, suffix = EVENTS_FILE.rpartition(".")
    try:
        with os.scandir(run_dir) as it:
            names = [e.name for e in it]
    except OSError:
        return False
    for name in names:
        path = Path(os.fspath(run_dir)) / name
        try:
            if name == ALERTS_FILE:
                if regular_stat(path).st_size:
                    return True
            elif name == EVENTS_FILE or (name.startswith(stem + ".rank") and name.endswith("." + suffix)):
                if _MARK in read_regular(path):
                    return True
        except (OSError, ValueError):
            continue
    return False


# ---- writing (another process's watcher) ------------------------------------------------------------


class AlertLog:
    """``alerts.jsonl``, appended by one watcher process at a time (an OS lock on the
    file, released when the process ends), each line written whole and fsynced."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ALERTS_FILE
        self._fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                 | getattr(os, "O_BINARY", 0))
        try:
            _lock(self._fd)
        except OSError:
            os.close(self._fd)
            raise WatchLockedError(f"another watcher is recording alerts in {self.path}: one "
                                 "`expman watch` per run at a time") from None

    def __call__(self, event: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(jsonable(event), option=orjson.OPT_APPEND_NEWLINE))
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)          # the lock goes with the descriptor
            self._fd = -1


if sys.platform == "win32":                                     # pragma: no cover
    def _lock(fd: int) -> None:
        import msvcrt
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, 0x7FFFFF00, os.SEEK_SET)       # a byte past any content
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        finally:
            os.lseek(fd, pos, os.SEEK_SET)
else:
    def _lock(fd: int) -> None:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---- the webhook ----------------------------------------------------------------------------------


def url_tag(url: str) -> str:
    """What a delivery record says of its URL: a hash (a webhook URL often holds a secret)."""
    return hashlib.blake2b(url.encode(), digest_size=8).hexdigest()


class Webhook:
    """POSTs each alert as JSON to ``url``, in order; a failed POST is retried after
    ``base_delay`` × 2^(failures-1) seconds (at most ``max_delay``), the others wait
    behind it. ``pump()`` does the work due by ``clock()``; it never sleeps.

    ``record(event)`` writes each delivery (``alert_delivered``) where the watcher
    writes its alerts; ``delivered`` is the ledger read back from there, so an
    alert already delivered (by this watcher before a restart, or another) is
    never posted again. The body carries the alert id, and ``Idempotency-Key``
    too, for a receiver that dedups a POST whose reply was lost.
    """

    def __init__(self, url: str, *, run: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 5.0,
                 base_delay: float = 1.0, max_delay: float = 300.0) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ExpmanValueError(f"webhook must be an http:// or https:// URL, got {url!r}")
        self.url, self.tag = url, url_tag(url)
        self.run = dict(run or {})
        self.clock, self.timeout = clock, timeout
        self.base_delay, self.max_delay = base_delay, max_delay
        self.delivered: set[str] = set()
        self.pending: dict[str, Alert] = {}
        self.failures = 0
        self.due = 0.0
        self.last_error: str | None = None

    def add(self, alert: Alert) -> None:
        if alert.id not in self.delivered:
            self.pending.setdefault(alert.id, alert)

    def mark_delivered(self, alert_id: str) -> None:
        self.delivered.add(alert_id)
        self.pending.pop(alert_id, None)

    def pump(self, record: Callable[[dict[str, Any]], None]) -> list[str]:
        """Deliver what is pending, while the receiver answers; returns the ids sent."""
        sent: list[str] = []
        while self.pending and self.clock() >= self.due:
            alert = next(iter(self.pending.values()))
            try:
                self._post(alert)
            except Exception as e:
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.due = self.clock() + min(self.base_delay * 2 ** (self.failures - 1),
                                              self.max_delay)
                break
            self.failures, self.last_error = 0, None
            self.mark_delivered(alert.id)
            record({"kind": DELIVERED_KIND, "id": alert.id, "to": self.tag, "time": time.time()})
            sent.append(alert.id)
        return sent

    def _post(self, alert: Alert) -> None:
        import urllib.request
        body = orjson.dumps(jsonable({**alert.to_event(), **self.run}))
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": alert.id,
            "User-Agent": "expman-watch"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")


# ---- the loop body ----------------------------------------------------------------------------------


class RunWatch:
    """Watches one run folder: each ``poll()`` reads what the watched ranks appended,
    evaluates the rules and returns the alerts recorded in this round.

    ``record(event)`` writes an alert or delivery line (the run's writer in
    process, an AlertLog outside). ``on_alert(alert)`` and ``stop(alert)`` (for
    rules with ``action=stop``) see the alerts new in this watcher's life,
    including ones another source records meanwhile (``expman.wandb.alert``, an
    ``expman watch`` beside a watching run); the webhook gets every alert of the
    run it has not delivered yet. ``live_loss()`` returns the writer's live
    counters (in process). ``ranks``: which ranks to read (default: all).
    """

    def __init__(self, run_dir: str | os.PathLike[str],
                 rules: Iterable[Rule | str] | Rule | str | None = None, *,
                 record: Callable[[dict[str, Any]], None],
                 on_alert: Callable[[Alert], Any] | None = None,
                 webhook: Webhook | str | None = None,
                 stop: Callable[[Alert], None] | None = None,
                 ranks: Iterable[int] | None = None,
                 live_loss: Callable[[], tuple[int, Mapping[str, Any]] | None] | None = None,
                 clock: Callable[[], float] = time.time,
                 disk_usage: Callable[[Any], Any] | None = None,
                 native: Callable[[], tuple[list[Any], list[int], list[float], int]] | None = None,
                 native_rank: int = 0) -> None:
        from expman.watch.engine import Watcher      # numpy: loaded when a watch starts
        self.path = Path(os.fspath(run_dir))
        meta = _read_meta(self.path / RUN_FILE) or {}
        self.run_id = f"{meta.get('experiment', self.path.parent.name)}/" \
                      f"{meta.get('run_name', self.path.name)}"
        self.watcher = Watcher(rules, run_id=self.run_id, path=self.path, clock=clock,
                               disk_usage=disk_usage)
        self.record, self.on_alert, self.stop = record, on_alert, stop
        if isinstance(webhook, str):
            webhook = Webhook(webhook, clock=clock)
        if webhook is not None and not webhook.run:
            webhook.run = {"run": self.run_id, "run_dir": str(self.path)}
        self.webhook = webhook
        self.live_loss = live_loss
        self.native, self.native_rank = native, native_rank
        self._native_lost = 0
        self._fixed_ranks = None if ranks is None else sorted(set(ranks))
        self._tails: dict[int, RunTail] = {}
        self._alerts_tail = AlertTail(self.path)
        self._meta_sig: dict[Path, tuple[int, int] | None] = {}
        self.known: set[str] = set()
        self.rounds = 0
        self._lock = threading.Lock()
        self.status = RUNNING
        self.errors: list[str] = []

    def _ranks(self) -> list[int]:
        return self._fixed_ranks if self._fixed_ranks is not None else watched_ranks(self.path)

    def poll(self) -> list[Alert]:
        """One round; never raises for what it reads (a damaged file is skipped).
        Rounds never overlap (the thread's and the last one at close)."""
        with self._lock:
            new = self._poll(first=self.rounds == 0)
            self.rounds += 1
            return new

    def _poll(self, first: bool) -> list[Alert]:
        meta = _read_meta(self.path / RUN_FILE) or {}
        self.status = effective_status(meta, self.path) if meta else RUNNING
        ranks = self._ranks()
        batches = []
        seen_events: list[dict[str, Any]] = []
        fresh: list[Alert] = []
        for r in ranks:
            tail = self._tails.get(r)
            if tail is None:
                try:
                    tail = self._tails[r] = RunTail(self.path, rank=r)
                except (OSError, ValueError, ExpmanError):
                    continue                    # no run.json yet: the next round
            try:
                if self.native is not None and r == self.native_rank:
                    metrics, events = {}, tail.poll_events()    # its points: the writer's
                else:
                    metrics, events = dict(tail.poll_metrics()), tail.poll_events()
            except (OSError, ValueError, ExpmanError):
                metrics, events = {}, []        # a damaged stream: nothing to watch there
            batches.append((r, metrics))
            seen_events += events
            fresh += self._rank_meta(r, meta if r == 0 else None)
        seen_events += self._alerts_tail.poll()
        # alerts and deliveries already on record, from any source
        foreign: list[Alert] = []
        for ev in seen_events:
            kind = ev.get("kind")
            if kind == DELIVERED_KIND and self.webhook is not None and ev.get("to") == self.webhook.tag \
                    and isinstance(ev.get("id"), str):
                self.webhook.mark_delivered(ev["id"])
            elif kind == ALERT_KIND:
                a = Alert.from_event(ev)
                if a is not None and a.id not in self.known:
                    self.known.add(a.id)
                    foreign.append(a)
        for r, metrics in batches:
            fresh += self.watcher.feed_metrics(metrics, r)
        if self.native is not None:
            fresh += self._poll_native()
        if self.live_loss is not None and self.watcher.watches_loss:
            got = self.live_loss()
            if got is not None:
                fresh += self.watcher.data_loss(*got)
        fresh += self.watcher.check()
        new: list[Alert] = []
        for a in fresh:
            if a.id in self.known:
                continue
            self.known.add(a.id)
            self._record(a.to_event())
            new.append(a)
        for a in foreign:
            if self.webhook is not None:
                self.webhook.add(a)
        acted = new + ([] if first else foreign)      # history found at start is not news
        for a in acted:
            if self.webhook is not None:
                self.webhook.add(a)
            if self.on_alert is not None:
                try:
                    self.on_alert(a)
                except Exception as e:          # a user callback never ends the watch
                    self._error(f"on_alert raised {type(e).__name__}: {e}")
            if a.action == "stop" and self.stop is not None:
                self.stop(a)
        self.pump()
        return new

    def _poll_native(self) -> list[Alert]:
        """What the writer thread's watchdogs found: its alerts, and the rank's new
        steps (its progress, for stall and straggler)."""
        assert self.native is not None
        found, steps, times, lost = self.native()
        self.watcher.note_steps(self.native_rank, steps, times)
        if lost > self._native_lost:
            self._native_lost = lost
            self._error(f"the writer's watchdogs lost alerts ({lost} so far): more than it "
                        "holds between two rounds, or no memory for a metric's rules")
        return [self.watcher.native_alert(f, self.native_rank) for f in found]

    def pump(self) -> None:
        if self.webhook is not None:
            self.webhook.pump(self._record)

    def _record(self, event: dict[str, Any]) -> None:
        """Record a line; a failure (a full disk: the very thing a rule may be saying)
        is warned about, and the alert still reaches the callback and the webhook."""
        try:
            self.record(event)
        except Exception as e:
            self._error(f"cannot record the {event.get('kind')} line: {type(e).__name__}: {e}")

    def _rank_meta(self, rank: int, meta: dict[str, Any] | None) -> list[Alert]:
        """A rank's run file and loss record, when they changed: its (re)start time,
        whether it ended, and what its writer lost."""
        out: list[Alert] = []
        for name in (RUN_FILE, LOSS_FILE):
            path = self.path / rank_file(name, rank)
            try:
                st = regular_stat(path)
                sig: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
            except (OSError, ValueError):
                sig = None
            if sig is None or self._meta_sig.get(path) == sig:
                continue
            data = meta if (name == RUN_FILE and meta is not None) else _read_meta(path)
            if data is None:
                continue                        # replaced under us: read it next round
            self._meta_sig[path] = sig
            if name == LOSS_FILE:
                out += self.watcher.data_loss(rank, data)
                continue
            resumed = data.get("resumed")
            starts = [data.get("start_time")] + (resumed[-1:] if isinstance(resumed, list) else [])
            times = [float(t) for t in starts
                     if isinstance(t, (int, float)) and not isinstance(t, bool) and t == t]
            if times:
                self.watcher.start_rank(rank, max(times))
            if data.get("status") in FINAL_STATUSES:
                self.watcher.end_rank(rank)
            out += self.watcher.data_loss(rank, data.get("data_loss"))
        return out

    def _error(self, text: str) -> None:
        """Warn once per distinct problem (a watcher polls forever)."""
        if text not in self.errors:
            self.errors.append(text)
            warnings.warn(f"expman watch: {text}", RuntimeWarning, stacklevel=2)


# ---- in the training process ----------------------------------------------------------------------

_watching: "weakref.WeakKeyDictionary[Any, tuple[RunWatch, threading.Thread, threading.Event]]" = \
    weakref.WeakKeyDictionary()


def start(exp: Any, rules: Iterable[Rule | str] | Rule | str | None = None, *,
          on_alert: Callable[[Alert], Any] | None = None, webhook: str | None = None,
          interval: float = 0.5, clock: Callable[[], float] = time.time,
          disk_usage: Callable[[Any], Any] | None = None,
          native: tuple[Callable[..., Any], Callable[[Any], Any]] | None = None) -> RunWatch:
    """Watch ``exp``'s run from a daemon thread of this process (Experiment.watch).

    Rank 0 reads every rank's streams (stall and straggler compare ranks) and
    delivers the webhook; rank r > 0 reads its own (its alerts, callback and
    stop; the webhook is rank 0's). The thread holds the run weakly: an
    abandoned run is still collected and closed.

    ``native``: ``(setup, take)``, the run's writer-side watchdogs (the core's
    ``setup(exp, specs, match)`` and ``take(exp)``): the per-point rules of this
    rank's own points then run in the writer thread, and this thread reads only
    their results (and the rank's events), not its points."""
    if exp in _watching:
        raise ExpmanValueError(f"{exp!r} is watched already: give every rule in one watch() call")
    if not (isinstance(interval, (int, float)) and 0.01 <= interval <= 3600):
        raise ExpmanValueError(f"watch: interval must be seconds in [0.01, 3600], got {interval!r}")
    ref = weakref.ref(exp)
    rank = exp.rank

    def record(event: dict[str, Any]) -> None:
        e = ref()
        if e is not None:
            e.log_alert(event)

    def stop(alert: Alert) -> None:
        e = ref()
        if e is not None:
            stop_loop(e, alert)

    def live_loss() -> tuple[int, Mapping[str, Any]] | None:
        e = ref()
        return None if e is None else (rank, e.stats())

    rw = RunWatch(exp.run_dir, rules, record=record, on_alert=on_alert,
                  webhook=webhook if rank == 0 else None, stop=stop,
                  ranks=None if rank == 0 else [rank], live_loss=live_loss, clock=clock,
                  disk_usage=disk_usage)
    if native is not None:
        setup, take = native
        specs, match = rw.watcher.native_plan()
        setup(exp, specs, match)

        def native_take() -> tuple[list[Any], list[int], list[float], int]:
            e = ref()
            return ([], [], [], 0) if e is None else take(e)
        rw.native, rw.native_rank = native_take, rank
    done = threading.Event()
    thread = threading.Thread(target=_loop, args=(ref, rw, done, float(interval)),
                              name="expman-watch", daemon=True)
    _watching[exp] = (rw, thread, done)
    thread.start()
    return rw


def _loop(ref: "weakref.ref[Any]", rw: RunWatch, done: threading.Event, interval: float) -> None:
    while ref() is not None:
        _round(rw)
        if done.wait(interval):
            return


def _round(rw: RunWatch) -> None:
    try:
        rw.poll()
    except Exception as e:             # the watch never takes the run down with it
        rw._error(f"{type(e).__name__}: {e}")


def stop(exp: Any, timeout: float = 5.0) -> None:
    """End ``exp``'s watch thread after a last round over everything logged
    (called by the run's close, before the writer drains: the last alerts are
    written with the rest)."""
    entry = _watching.pop(exp, None)
    if entry is None:
        return
    rw, thread, done = entry
    done.set()
    if thread is not threading.current_thread():
        thread.join(timeout)
    try:
        exp.flush(timeout=2.0)
    except Exception:
        pass
    _round(rw)


def record_alert(exp: Any, message: str, *, rule: str = "user", metric: str | None = None,
                 step: int | None = None, value: float | None = None,
                 extra: Mapping[str, Any] | None = None) -> Alert:
    """Record an alert raised by code (``expman.wandb.alert``, a framework bridge) in
    the run's events, the way a watchdog does: a watcher of the run acts on it
    (callback, webhook, ``stop``) like on its own."""
    if not isinstance(message, str):
        raise ExpmanValueError(f"alert: message must be a string, got {type(message).__name__}")
    now = time.time()
    raw = "\x00".join(map(str, (exp.name, exp.run_name, exp.rank, rule, message, step, now,
                                os.urandom(4).hex())))
    aid = hashlib.blake2b(raw.encode("utf-8", "replace"), digest_size=8).hexdigest()
    alert = Alert(aid, rule, metric, step, value, exp.rank, message, now)
    exp.log_alert({**alert.to_event(), **dict(extra or {})})
    return alert
