"""The evaluation, pure: points in, ``Alert``s out. No files, no threads, no sleeps.

A ``Watcher`` is fed each rank's new points (``feed``) and asked, now and then,
about what only the clock can tell (``check``: stall, straggler, disk). Its clock
and its disk probe are arguments, so a test plays time forward by hand.

An alert's ``id`` is derived from the run, the rule and where it fired (metric,
rank, step), never from when it was seen: the same fault seen again (a watcher
restarted, a second watcher) has the same id, which is how records and webhook
deliveries are kept to one per alert.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expman.watch.alert import Alert
from expman.watch.rules import (
    SYSTEM_PREFIX, Disk, LossOfData, Nan, Plateau, Rule, Spike, Stall, Straggler, parse_rules,
)

__all__ = ["Watcher"]
_MAD_SIGMA = 1.4826           # MAD of a normal sample times this is its standard deviation
_CHUNK = 4096                 # spike windows judged at once (bounds memory on a replay)


@dataclass
class _Progress:
    """One rank's steps: the newest, when it came, and the recent new steps."""

    last_step: int = -1
    last_time: float = 0.0
    started: float = 0.0
    recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=512))
    ended: bool = False


@dataclass
class _Series:
    """What a rule remembers of one series of one rank."""

    hist: np.ndarray = field(default_factory=lambda: np.empty(0))   # spike: the last points
    armed: bool = True
    quiet_until: int = 0          # spike: points left before it judges again
    best: float = math.inf           # plateau: the best so far (negated for mode max)
    hist_steps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    hist_best: np.ndarray = field(default_factory=lambda: np.empty(0))   # best as of each improvement
    seen: int = 0


class Watcher:
    """Evaluates rules over a run's points. Feed it, check it, collect Alerts.

        w = Watcher(["nan", "spike:train/loss"], run_id="mnist/run1", clock=fake.now)
        alerts = w.feed("train/loss", steps, values, times, rank=0)
        alerts += w.check()                       # stall, straggler, disk

    ``disk_usage(path) -> (total, used, free)`` is shutil.disk_usage unless given;
    ``path`` is the run folder (only the disk rule needs it).
    """

    def __init__(self, rules: Iterable[Rule | str] | Rule | str | None = None, *,
                 run_id: str = "", path: Any = None,
                 clock: Callable[[], float] = time.time,
                 disk_usage: Callable[[Any], Any] | None = None) -> None:
        self.rules = parse_rules(rules)
        self.run_id = run_id
        self.path = path
        self.clock = clock
        self.disk_usage = disk_usage or shutil.disk_usage
        self._created = clock()
        self._series: dict[tuple[int, str, int], _Series] = {}
        self._ranks: dict[int, _Progress] = {}
        self._fired: dict[tuple[Any, ...], float] = {}     # rule-level memory (stall, disk...)
        self._losses: dict[int, tuple[int, int, int]] = {}
        self._native: list[int] = []         # native rule index -> index in self.rules
        self.feed_count = 0                  # points fed (the native writer's are not)

    # ---- ids --------------------------------------------------------------------
    def _alert(self, rule: Rule, key: tuple[Any, ...], metric: str | None, step: int | None,
               value: float | None, rank: int, message: str) -> Alert:
        raw = "\x00".join(map(str, (self.run_id, rule.spec, metric, rank, step, *key)))
        aid = hashlib.blake2b(raw.encode("utf-8", "replace"), digest_size=8).hexdigest()
        return Alert(aid, rule.spec, metric, step, value, rank, message, self.clock(),
                     rule.action)

    # ---- ranks --------------------------------------------------------------------
    def _rank(self, rank: int) -> _Progress:
        p = self._ranks.get(rank)
        if p is None:
            p = self._ranks[rank] = _Progress(started=self._created)
        return p

    def start_rank(self, rank: int, when: float) -> None:
        """The rank's stream (re)started at ``when``: silence counts from then at the earliest."""
        p = self._rank(rank)
        p.started, p.ended = when, False

    def end_rank(self, rank: int) -> None:
        """The rank closed its stream: time-based rules stop judging it."""
        self._rank(rank).ended = True

    # ---- points -------------------------------------------------------------------
    def feed(self, metric: str, steps: Any, values: Any, times: Any, rank: int = 0, *,
             progress: bool = True) -> list[Alert]:
        """New points of one series of one rank, in the order logged. ``progress``:
        its steps also tell the rank's progress (stall, straggler)."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        va = np.asarray(values, dtype=np.float64).ravel()
        ti = np.asarray(times, dtype=np.float64).ravel()
        if not (len(st) == len(va) == len(ti)):
            raise ValueError(f"feed({metric!r}): steps, values and times differ in length "
                             f"({len(st)}, {len(va)}, {len(ti)})")
        if not len(st):
            return []
        self.feed_count += len(st)
        if progress and not metric.startswith(SYSTEM_PREFIX):   # the sampler counts its own
            self._progress(rank, st, ti)
        alerts: list[Alert] = []
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, (Nan, Spike, Plateau)) or not rule.matches(metric):
                continue
            s = self._series.get((i, metric, rank))
            if s is None:
                s = self._series[(i, metric, rank)] = _Series()
            if isinstance(rule, Nan):
                alerts += self._nan(rule, s, metric, st, va, rank)
            elif isinstance(rule, Spike):
                alerts += self._spike(rule, s, metric, st, va, rank)
            else:
                alerts += self._plateau(rule, s, metric, st, va, rank)
        return alerts

    def feed_metrics(self, metrics: Mapping[str, Any], rank: int = 0) -> list[Alert]:
        """Every series of a batch (``expman.Metrics`` or name -> Series). The rank's
        progress is read from all of them merged back into the order logged (by time)."""
        rows = [(np.asarray(s.steps, np.int64), np.asarray(s.times, np.float64))
                for name, s in metrics.items() if len(s) and not name.startswith(SYSTEM_PREFIX)]
        if rows:
            st, ti = rows[0]
            if not all(np.array_equal(t, ti) for _s, t in rows[1:]):
                # series of different rows: merge them back into the order logged
                st = np.concatenate([r[0] for r in rows])
                ti = np.concatenate([r[1] for r in rows])
                order = np.argsort(ti, kind="stable")
                st, ti = st[order], ti[order]
            self._progress(rank, st, ti)                # (the usual case: the same rows)
        alerts: list[Alert] = []
        for name, s in metrics.items():
            alerts += self.feed(name, s.steps, s.values, s.times, rank, progress=False)
        return alerts

    def _progress(self, rank: int, steps: np.ndarray, times: np.ndarray) -> None:
        """Each change of step, in the order logged, is progress: a run resumed from
        a checkpoint that logs earlier steps again is moving as much as one going on."""
        p = self._rank(rank)
        change = steps != np.concatenate(([p.last_step], steps[:-1]))
        if not change.any():
            return
        keep = p.recent.maxlen or 0
        p.recent.extend(zip(steps[change][-keep:].tolist(), times[change][-keep:].tolist()))
        p.last_step, p.last_time = p.recent[-1]

    def _nan(self, rule: Nan, s: _Series, metric: str, st: np.ndarray, va: np.ndarray,
             rank: int) -> list[Alert]:
        bad = ~np.isfinite(va)
        if not bad.any():
            s.armed = True
            return []
        before = np.concatenate(([not s.armed], bad[:-1]))
        out = []
        for i in np.flatnonzero(bad & ~before).tolist():
            out.append(self._nan_alert(rule, metric, int(st[i]), float(va[i]), rank))
        s.armed = not bool(bad[-1])
        return out

    def _nan_alert(self, rule: Rule, metric: str, step: int, v: float, rank: int) -> Alert:
        what = "NaN" if v != v else ("+inf" if v > 0 else "-inf")
        return self._alert(rule, (), metric, step, v, rank,
                           f"{metric} is {what} at step {step} (rank {rank})")

    def _spike(self, rule: Spike, s: _Series, metric: str, st: np.ndarray, va: np.ndarray,
               rank: int) -> list[Alert]:
        fin = np.isfinite(va)
        vals, steps = va[fin], st[fin]
        if not len(vals):
            return []
        w = rule.window
        block = max(1, w // 4)
        arr = np.concatenate((s.hist, vals))
        n0 = len(s.hist)
        g0 = s.seen - n0                      # the series index of arr[0]
        g = np.arange(s.seen, s.seen + len(vals))
        starts = g - g % block                # points of a block share the window before it
        judged = starts >= rule.min_points
        flagged: list[tuple[int, float, float, float]] = []     # (index, median, scale, dev)
        if judged.any():
            g, starts = g[judged], starts[judged]
            blocks = np.arange(starts[0], starts[-1] + 1, block)
            which = (starts - starts[0]) // block
            padded = np.concatenate((np.full(w, np.nan), arr))
            windows = np.lib.stride_tricks.sliding_window_view(padded, w)
            for lo in range(0, len(blocks), _CHUNK):
                med, scale = _reference(windows[blocks[lo:lo + _CHUNK] - g0])
                mask = (which >= lo) & (which < lo + len(med))
                flagged += _judge(arr[g[mask] - g0], med[which[mask] - lo],
                                  scale[which[mask] - lo], g[mask] - g0, rule)
        out = []
        for idx, ref, _scale, dev in flagged:
            k = idx - n0                      # index into this batch's finite points
            if s.quiet_until > k + s.seen:
                continue
            s.quiet_until = k + s.seen + w
            out.append(self._spike_alert(rule, metric, int(steps[k]), float(vals[k]), rank,
                                         ref, dev))
        s.seen += len(vals)
        s.hist = arr[-(w + block):].copy()
        return out

    def _spike_alert(self, rule: Spike, metric: str, step: int, v: float, rank: int,
                     ref: float, dev: float) -> Alert:
        return self._alert(
            rule, (), metric, step, v, rank,
            f"{metric} spiked to {v:.6g} at step {step} (rank {rank}): {dev:+.1f} robust "
            f"deviations from the median {ref:.6g} of the last {rule.window} points "
            f"(limit {rule.k:g})")

    def _plateau(self, rule: Plateau, s: _Series, metric: str, st: np.ndarray, va: np.ndarray,
                 rank: int) -> list[Alert]:
        """At each point of step x: the best value now against the best as of step
        x - patience; no better by ``delta`` is a plateau. Vectorised: the best
        only changes at improvements, which are kept (those within reach) with
        their steps."""
        fin = np.isfinite(va)
        steps, vals = st[fin], (va[fin] if rule.mode == "min" else -va[fin])
        if not len(vals):
            return []
        best = np.minimum.accumulate(np.concatenate(([s.best], vals)))
        improved = best[1:] < best[:-1]
        best = best[1:]
        s.hist_steps = np.concatenate((s.hist_steps, steps[improved]))
        s.hist_best = np.concatenate((s.hist_best, best[improved]))
        s.best = float(best[-1])
        k = np.searchsorted(s.hist_steps, steps - rule.patience, side="right") - 1
        known = k >= 0
        cond = np.zeros(len(vals), dtype=bool)
        cond[known] = best[known] >= s.hist_best[k[known]] - rule.delta
        before = np.concatenate(([not s.armed], cond[:-1]))
        out = []
        for i in np.flatnonzero(cond & ~before).tolist():
            j = int(np.searchsorted(s.hist_steps, steps[i], side="right")) - 1
            value = float(best[i]) if rule.mode == "min" else -float(best[i])
            out.append(self._plateau_alert(rule, metric, int(steps[i]), float(va[fin][i]),
                                           rank, int(s.hist_steps[j]), value))
        s.armed = not bool(cond[-1])
        # keep the improvements still in reach, and the last one before them
        cut = max(int(np.searchsorted(s.hist_steps, steps.max() - rule.patience, side="right")) - 1, 0)
        s.hist_steps, s.hist_best = s.hist_steps[cut:], s.hist_best[cut:]
        return out

    def _plateau_alert(self, rule: Plateau, metric: str, step: int, v: float, rank: int,
                       best_step: int, best: float) -> Alert:
        return self._alert(
            rule, (best_step,), metric, step, v, rank,
            f"{metric} has not improved by {rule.delta:g} or more over the last "
            f"{rule.patience} steps (rank {rank}): best {best:.6g} at step {best_step} "
            f"({rule.mode}), now step {step}")

    # ---- the same rules in the native writer (src/exwatch.h) ---------------------------
    def native_plan(self) -> tuple[list[tuple[Any, ...]], Callable[[str], tuple[bool, list[int]]]]:
        """The per-point rules (nan, spike, plateau) as the writer thread takes them
        (``Core._native_watch``), and the matcher it asks about each key: whether
        its rows are progress (not the sampler's) and which of those rules watch it.
        The writer's alerts come back through ``native_alert``."""
        self._native = [i for i, r in enumerate(self.rules) if isinstance(r, (Nan, Spike, Plateau))]
        specs: list[tuple[Any, ...]] = []
        for i in self._native:
            r = self.rules[i]
            if isinstance(r, Nan):
                specs.append((1, 0.0, 0, 0, 0, 0, 0.0, 0))
            elif isinstance(r, Spike):
                specs.append((2, float(r.k), r.window, r.min_points,
                              {"up": 1, "down": 2, "both": 3}[r.direction], 0, 0.0, 0))
            else:
                assert isinstance(r, Plateau)
                specs.append((3, 0.0, 0, 0, 0, int(r.mode == "max"), float(r.delta), r.patience))
        rules = [self.rules[i] for i in self._native]

        def match(name: str) -> tuple[bool, list[int]]:
            return (not name.startswith(SYSTEM_PREFIX),
                    [j for j, r in enumerate(rules) if r.matches(name)])
        return specs, match

    def native_alert(self, found: tuple[Any, ...], rank: int) -> Alert:
        """An alert the writer found: ``(rule, metric, step, value, ref, dev, best_step,
        best)`` from ``Core._native_watch_take``; the same Alert (id, message) as
        ``feed`` makes of the same points."""
        index, metric, step, value, ref, dev, best_step, best = found
        rule = self.rules[self._native[index]]
        if isinstance(rule, Nan):
            return self._nan_alert(rule, metric, step, value, rank)
        if isinstance(rule, Spike):
            return self._spike_alert(rule, metric, step, value, rank, ref, dev)
        assert isinstance(rule, Plateau)
        return self._plateau_alert(rule, metric, step, value, rank, best_step, best)

    def note_steps(self, rank: int, steps: Any, times: Any) -> None:
        """A rank's new steps, from elsewhere than ``feed`` (the native writer): its
        progress for stall and straggler."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        if len(st):
            self._progress(rank, st, np.asarray(times, dtype=np.float64).ravel())

    # ---- what only the clock tells -------------------------------------------------------
    def check(self) -> list[Alert]:
        """Stall, straggler and disk, as of ``clock()``."""
        now = self.clock()
        alerts: list[Alert] = []
        for rule in self.rules:
            if isinstance(rule, Stall):
                alerts += self._stall(rule, now)
            elif isinstance(rule, Straggler):
                alerts += self._straggler(rule, now)
            elif isinstance(rule, Disk):
                alerts += self._disk(rule)
        return alerts

    def _stall(self, rule: Stall, now: float) -> list[Alert]:
        out = []
        for rank, p in sorted(self._ranks.items()):
            if p.ended or len(p.recent) < rule.min_steps:
                continue
            interval = _median_interval(p.recent)
            limit = max(rule.k * interval, rule.floor)
            since = max(p.last_time, p.started)
            key = (rule.spec, "stall", rank, p.last_step)
            if now - since <= limit or key in self._fired:
                continue
            self._fired[key] = now
            out.append(self._alert(
                rule, (), None, p.last_step, None, rank,
                f"rank {rank} logged no new step for {now - since:.0f} s (last step "
                f"{p.last_step}; limit {limit:.0f} s = max({rule.k:g} x median step interval "
                f"{interval:.3g} s, floor {rule.floor:g} s)"))
        return out

    def _straggler(self, rule: Straggler, now: float) -> list[Alert]:
        rates = {}
        for rank, p in self._ranks.items():
            if p.ended or len(p.recent) < 2:
                continue
            window = list(p.recent)[-rule.window:]
            t0 = window[0][1]
            if now > t0:                            # step changes per second, up to now
                rates[rank] = (len(window) - 1) / (now - t0)
        out: list[Alert] = []
        if len(rates) < 2:
            return out
        for rank, rate in sorted(rates.items()):
            others = float(np.median([r for k, r in rates.items() if k != rank]))
            slow_key = (rule.spec, "slow", rank)
            if not (others > 0 and rate < rule.ratio * others):
                self._fired.pop(slow_key, None)
                self._fired.pop((rule.spec, "straggler", rank), None)
                continue
            since = self._fired.setdefault(slow_key, now)
            key = (rule.spec, "straggler", rank)
            if now - since < rule.sustain or key in self._fired:
                continue
            self._fired[key] = now
            step = self._ranks[rank].last_step
            out.append(self._alert(
                rule, (since,), None, step, rate, rank,
                f"rank {rank} is a straggler: {rate:.3g} steps/s against a median of "
                f"{others:.3g} for the other ranks (below {rule.ratio:g}x for "
                f"{now - since:.0f} s; at step {step})"))
        return out

    def _disk(self, rule: Disk) -> list[Alert]:
        if self.path is None:
            return []
        try:
            total, _used, free = self.disk_usage(self.path)
        except OSError:
            return []
        limit = rule.threshold(total)
        key = (rule.spec, "disk")
        if free >= limit:
            self._fired.pop(key, None)        # above the limit again: re-armed
            return []
        if key in self._fired:
            return []
        self._fired[key] = free
        step = max((p.last_step for p in self._ranks.values()), default=-1)
        return [self._alert(rule, (), None, step if step >= 0 else None, float(free), 0,
                            f"only {_size(free)} free on the run folder's disk (limit "
                            f"{_size(limit)}, rule {rule.spec})")]

    # ---- what the writer lost -------------------------------------------------------------
    def data_loss(self, rank: int, record: Mapping[str, Any] | None) -> list[Alert]:
        """A writer's loss record (run.json ``data_loss``, a loss file, or live
        stats with ``dropped``/``events_dropped``/``write_errors``). Fires at the
        first loss of a rank, then when a count has at least doubled."""
        if not isinstance(record, Mapping):
            return []
        rows = _int(record.get("rows_dropped", record.get("dropped")))
        events = _int(record.get("events_dropped"))
        errors = _int(record.get("write_errors"))
        if not (rows or events or errors):
            return []
        counts = (rows, events, errors)
        before = self._losses.get(rank)
        # said again only when a count at least doubles: a writer dropping rows for a
        # minute would otherwise fire every round
        if before is not None and not any(c >= 2 * b and c > b for c, b in zip(counts, before)):
            return []
        self._losses[rank] = counts
        last = record.get("last_error")
        out = []
        for rule in self.rules:
            if isinstance(rule, LossOfData):
                out.append(self._alert(
                    rule, counts, None, None, float(rows), rank,
                    f"rank {rank}: the writer lost data: {rows} rows and {events} events "
                    f"dropped, {errors} failed writes"
                    + (f" ({str(last)[:200]})" if isinstance(last, str) and last else "")))
        return out

    @property
    def watches_loss(self) -> bool:
        return any(isinstance(r, LossOfData) for r in self.rules)

    @property
    def ranks(self) -> dict[int, int]:
        """Each rank's last step seen."""
        return {r: p.last_step for r, p in self._ranks.items()}


def _reference(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust scale (1.4826 x MAD) of each window (NaN pads a short one)."""
    med = _padded_median(windows)
    return med, _MAD_SIGMA * _padded_median(np.abs(windows - med[:, None]))


def _judge(points: np.ndarray, med: np.ndarray, scale: np.ndarray, index: np.ndarray,
           rule: Spike) -> list[tuple[int, float, float, float]]:
    # a constant window (MAD 0, or float noise around a constant) is not judged
    ok = scale > 1e-12 * np.maximum(np.abs(med), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(ok, (points - med) / np.where(ok, scale, 1.0), 0.0)
    if rule.direction == "up":
        hit = dev > rule.k
    elif rule.direction == "down":
        hit = dev < -rule.k
    else:
        hit = np.abs(dev) > rule.k
    return [(int(index[i]), float(med[i]), float(scale[i]), float(dev[i]))
            for i in np.flatnonzero(hit)]


def _padded_median(rows: np.ndarray) -> np.ndarray:
    """Median of each row's non-NaN values (the NaNs pad a short window): sorting
    puts them last, so the middle of the first ``count`` values is the median."""
    ordered = np.sort(rows, axis=1)
    count = np.sum(~np.isnan(rows), axis=1)
    r = np.arange(len(rows))
    middle: np.ndarray = (ordered[r, (count - 1) // 2] + ordered[r, count // 2]) / 2
    return middle


def _median_interval(recent: deque[tuple[int, float]]) -> float:
    times = [t for _s, t in list(recent)[-101:]]
    diffs = [b - a for a, b in zip(times, times[1:])]
    return float(np.median(diffs)) if diffs else 0.0


def _int(v: Any) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 \
        and v == v and v != math.inf else 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
