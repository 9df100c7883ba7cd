"""Watchdogs (expman.watch, docs/watch.md): each rule and action with a planted fault,
no false alert on clean runs, and where they run (a thread in the training process,
``expman watch`` beside it). Time-based rules get an injected clock: no test sleeps
to make time pass, and none asserts how long anything took."""

from __future__ import annotations

import http.server
import json
import math
import re
import signal
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import orjson
import pytest

import expman
from expman.cli import main
from expman.errors import ExpmanValueError
from expman.layout import ALERTS_FILE, EVENTS_FILE, LOSS_FILE, RUN_FILE, rank_file
from expman.watch import (
    DEFAULT_RULES, Alert, AlertLog, Disk, Nan, Plateau, RunWatch, Spike, Stall, Straggler,
    Watcher, WatchLockedError, WatchStop, Webhook, has_alerts, parse_config, parse_rule, parse_rules, read_alerts,
)

HERE = Path(__file__).parent    # children run here: the source tree's expman/ (no built core)
                                 # would shadow the installed package CI tests

DEADLINE = 120.0        # generous: waiting for a file on a loaded machine, never a measure


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_for(predicate, what: str, deadline: float = DEADLINE):
    """Poll a condition on files until it holds (a deadline, not a timing assert)."""
    end = time.monotonic() + deadline
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def feed_steps(w: Watcher, metric: str, steps, values, t0: float, dt: float, rank: int = 0):
    steps = np.asarray(steps)
    return w.feed(metric, steps, np.asarray(values, float), t0 + steps * dt, rank)


# ---- the grammar -----------------------------------------------------------------------------


def test_grammar_reads_each_rule_and_spells_it_back():
    assert parse_rule("nan") == Nan()
    assert parse_rule("nan:train/loss") == Nan(metric="train/loss")
    assert parse_rule("spike:train/loss,k=6,window=50") == Spike(metric="train/loss", k=6.0)
    assert parse_rule("plateau:val/acc,mode=max,delta=0.001,patience=500") == \
        Plateau(metric="val/acc", mode="max", delta=0.001, patience=500)
    assert parse_rule("stall:floor=60,k=5") == Stall(k=5.0)
    assert parse_rule("straggler:ratio=0.3,sustain=10") == Straggler(ratio=0.3, sustain=10.0)
    assert parse_rule("disk:free=5%") == Disk(free="5%")
    assert parse_rule("loss").name == "loss_of_data"
    assert parse_rule("nan,action=stop") == Nan(action="stop")
    for text in ("spike:train/loss,k=6", "plateau:val/loss,patience=5", "nan:action=stop",
                 "disk:free=500M", "stall"):
        assert parse_rule(text).spec == text
        assert parse_rule(parse_rule(text).spec) == parse_rule(text)
    assert parse_rules(None) == DEFAULT_RULES
    assert parse_rules(["default", "nan"]) == DEFAULT_RULES       # the same rule once
    assert parse_rule("nan:train/*").matches("train/loss")
    assert not parse_rule("nan:train/*").matches("val/loss")
    assert not Spike().matches("system/cpu_percent")


@pytest.mark.parametrize("text, words", [
    ("bogus", "unknown watch rule 'bogus'"),
    ("spike:k=-1", "k must be > 0"),
    ("spike:k=abc", "k must be a number"),
    ("spike:window=2.5", "window must be a number"),
    ("spike:colour=red", "spike has no option 'colour'"),
    ("plateau", "plateau needs a metric"),
    ("plateau:loss,mode=sideways", "mode must be min or max"),
    ("disk:free=lots", "free must be a size"),
    ("straggler:ratio=2", "ratio must be in (0, 1)"),
    ("nan,action=explode", "action must be 'stop'"),
    ("spike:k=1,k=2", "k given twice"),
    ("nan:a,,b", "empty option"),
])
def test_grammar_errors_name_what_is_wrong(text, words):
    with pytest.raises(ExpmanValueError) as e:
        parse_rule(text)
    assert words in str(e.value)


def test_config_file_watch_section(tmp_path):
    cfg = tmp_path / "watch.toml"
    cfg.write_text(textwrap.dedent("""
        [watch]
        rules = ["nan,action=stop", "spike:train/loss,k=6"]
        webhook = "http://127.0.0.1:9/hook"
        interval = 0.25

        [[watch.rule]]
        rule = "plateau"
        metric = "val/loss,clean"
        patience = 500
    """))
    got = parse_config(cfg)
    assert got.rules == (Nan(action="stop"), Spike(metric="train/loss", k=6.0),
                         Plateau(metric="val/loss,clean", patience=500))
    assert got.webhook == "http://127.0.0.1:9/hook" and got.interval == 0.25
    bad = tmp_path / "bad.toml"
    bad.write_text('[watch]\nrules = ["nan"]\ncolour = 1\n')
    with pytest.raises(ExpmanValueError, match="no key 'colour'"):
        parse_config(bad)
    bad.write_text('[watch]\n[[watch.rule]]\nrule = "spike"\nk = "x"\n')
    with pytest.raises(ExpmanValueError, match="k must be a number"):
        parse_config(bad)
    bad.write_text("[other]\n")
    with pytest.raises(ExpmanValueError, match="no \\[watch\\] section"):
        parse_config(bad)
    bad.write_text("[watch\n")
    with pytest.raises(ExpmanValueError, match="not valid TOML"):
        parse_config(bad)


# ---- each rule, with a planted fault (the pure Watcher) ------------------------------------------------


def noisy_loss(rng: np.random.Generator, n: int) -> np.ndarray:
    steps = np.arange(n)
    scale = rng.uniform(0.5, 3.0)
    return scale * np.exp(-steps / rng.uniform(50, 400)) + 0.1 + rng.normal(0, 0.02 * scale, n)


def test_nan_fires_once_per_series_at_the_first_non_finite_point():
    w = Watcher(["nan"], run_id="e/r")
    values = np.linspace(1, 0.1, 100)
    values[40], values[41], values[70], values[99] = math.nan, math.nan, -math.inf, math.nan
    alerts = feed_steps(w, "loss", range(100), values, 0, 1)
    assert [(a.step, a.metric) for a in alerts] == [(40, "loss"), (70, "loss"), (99, "loss")]
    assert "NaN at step 40" in alerts[0].message and "-inf" in alerts[1].message
    assert math.isnan(alerts[0].value)
    # a later batch keeps the memory: a NaN right after the batch's NaN is the same episode
    assert feed_steps(w, "loss", [100], [math.nan], 0, 1) == []
    assert feed_steps(w, "loss", [101, 102], [1.0, math.inf], 0, 1)[0].step == 102
    assert feed_steps(w, "acc", [0], [math.nan], 0, 1)[0].metric == "acc"


def test_spike_fires_at_the_planted_jump_only():
    rng = np.random.default_rng(1)
    w = Watcher(["spike:loss,k=6"], run_id="e/r")
    values = noisy_loss(rng, 400)
    values[300] += 50 * values[280:300].std() + 1
    alerts = []
    for lo in range(0, 400, 37):           # in uneven batches, as a tail delivers them
        alerts += feed_steps(w, "loss", range(lo, min(lo + 37, 400)),
                             values[lo:lo + 37], 0, 1)
    assert [a.step for a in alerts] == [300]
    assert "robust deviations" in alerts[0].message
    whole = Watcher(["spike:loss,k=6"], run_id="e/r")
    assert [a.id for a in feed_steps(whole, "loss", range(400), values, 0, 1)] == \
        [a.id for a in alerts]                 # batching never changes what fires
    early = Watcher(["spike:loss,k=6"])      # in the first, still filling window
    assert [a.step for a in feed_steps(early, "loss", range(40),
                                       np.r_[noisy_loss(rng, 30), 99, noisy_loss(rng, 9)],
                                       0, 1)] == [30]


def test_plateau_fires_after_patience_steps_without_improvement():
    w = Watcher(["plateau:val/loss,delta=0.001,patience=50"], run_id="e/r")
    values = np.concatenate((np.linspace(1.0, 0.5, 100), np.full(100, 0.4999)))
    alerts = feed_steps(w, "val/loss", range(200), values, 0, 1)
    assert [(a.step, a.rule) for a in alerts] == [(149, "plateau:val/loss,delta=0.001,patience=50")]
    assert "best 0.4999 at step 100" in alerts[0].message
    w = Watcher(["plateau:acc,mode=max,patience=10"])
    assert feed_steps(w, "acc", range(30), np.linspace(0, 1, 30), 0, 1) == []
    # flat for 10 steps: fires; improves: re-armed; flat again: fires again
    acc = np.concatenate((np.full(15, 1.0), np.linspace(1.1, 2, 10), np.full(15, 2.0)))
    got = feed_steps(w, "acc", range(30, 70), acc, 0, 1)
    assert [a.step for a in got] == [39, 64] and "best 2 at step 54" in got[1].message


def test_stall_names_the_silent_rank_by_the_injected_clock():
    clock = Clock(1000.0)
    w = Watcher(["stall:k=10,floor=30"], run_id="e/r", clock=clock)
    for rank in range(4):
        w.start_rank(rank, 1000.0)
        feed_steps(w, "loss", range(20), np.ones(20), 1000.0, 1.0, rank)   # 1 step/s
    clock.t = 1019.0 + 25
    assert w.check() == []                 # 25 s silent < max(10 x 1 s, 30 s)
    for rank in (0, 1, 3):                 # rank 2 is hung; the others go on
        feed_steps(w, "loss", range(20, 60), np.ones(40), 1000.0, 1.0, rank)
    clock.t = 1019.0 + 31
    alerts = w.check()
    assert [(a.kind, a.rank, a.step) for a in alerts] == [("stall", 2, 19)]
    assert "rank 2 logged no new step for 31 s" in alerts[0].message
    assert w.check() == []                 # said once
    w.end_rank(1)
    clock.t = 2000.0
    assert sorted(a.rank for a in w.check()) == [0, 3]     # an ended rank is not stalled


def test_stall_counts_from_a_restart_not_from_old_records():
    clock = Clock(5000.0)
    w = Watcher(["stall:floor=30"], clock=clock)
    w.start_rank(0, 4990.0)                # resumed 10 s ago; its last step is an hour old
    feed_steps(w, "loss", range(10), np.ones(10), 1400.0, 1.0)
    assert w.check() == []
    clock.t = 5021.0
    assert len(w.check()) == 1


def test_a_run_resumed_from_an_earlier_step_is_not_stalled():
    """Preempted at step 99, resumed from a checkpoint at step 50: logging steps 50..60
    again is progress (a stall judged by 'a step above every step before' would fire)."""
    clock = Clock(0.0)
    w = Watcher(["stall:floor=60"], clock=clock)
    w.start_rank(0, 0.0)
    feed_steps(w, "loss", range(100), np.ones(100), 0.0, 1.0)
    w.start_rank(0, 200.0)                                  # the resumed process
    feed_steps(w, "loss", range(50, 61), np.ones(11), 150.0, 1.0)   # times 200..210
    clock.t = 265.0
    assert w.check() == []
    clock.t = 271.0
    assert [(a.kind, a.step) for a in w.check()] == [("stall", 60)]


def test_progress_is_read_from_rows_in_the_order_logged():
    """Two series of the same rows: the second one's steps are not new steps again."""
    clock = Clock(0.0)
    w = Watcher(["stall:k=10,floor=0"], clock=clock)
    steps = np.arange(20)
    series = namedtuple("series", "steps values times")
    w.feed_metrics({"loss": series(steps, np.ones(20), steps * 1.0),
                    "acc": series(steps, np.ones(20), steps * 1.0),
                    "system/cpu_percent": series(np.arange(3), np.ones(3), np.array([30.0] * 3))})
    assert w.ranks == {0: 19}
    clock.t = 19 + 9.5
    assert w.check() == []                                  # 9.5 s < 10 x 1 s
    clock.t = 19 + 10.5
    assert len(w.check()) == 1


def test_straggler_is_the_rank_slower_than_the_others_for_long_enough():
    clock = Clock(0.0)
    w = Watcher(["straggler:ratio=0.5,window=20,sustain=30"], clock=clock)
    step = {r: 0 for r in range(4)}
    for second in range(1, 200):
        clock.t = float(second)
        for r in range(4):
            per_s = 1 if (r == 3 and second > 60) else 4        # rank 3 slows to 1/4
            w.feed("loss", np.arange(step[r], step[r] + per_s), np.ones(per_s),
                   np.full(per_s, float(second)), r)
            step[r] += per_s
        alerts = w.check()
        if alerts:
            break
    assert [(a.rule.split(":")[0], a.rank) for a in alerts] == [("straggler", 3)]
    assert second >= 60 + 30                # sustained, not at the first slow second
    assert "rank 3 is a straggler" in alerts[0].message


def test_loss_of_data_from_run_json_and_loss_records(tmp_path):
    w = Watcher(["loss_of_data"], run_id="e/r")
    assert w.data_loss(0, {"rows_dropped": 0, "events_dropped": 0, "write_errors": 0}) == []
    a = w.data_loss(1, {"rows_dropped": 12, "events_dropped": 1, "write_errors": 3,
                        "last_error": "No space left on device"})
    assert len(a) == 1 and a[0].rank == 1 and "12 rows" in a[0].message \
        and "No space left" in a[0].message
    assert w.data_loss(1, {"rows_dropped": 12, "events_dropped": 1, "write_errors": 3}) == []
    assert w.data_loss(1, {"dropped": 20, "events_dropped": 1, "write_errors": 3}) == []
    assert len(w.data_loss(1, {"dropped": 24})) == 1          # live stats() spelling, doubled

    # crafted run folders: run.json's data_loss (rank 0) and a loss record of rank 1
    with expman.Experiment("e", "r", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_metrics({"loss": 1.0})
    run = exp.run_dir
    meta = json.loads((run / RUN_FILE).read_text())
    meta.update(world_size=2, data_loss={"rows_dropped": 5, "events_dropped": 0,
                                         "write_errors": 1, "last_error": "Input/output error"})
    (run / RUN_FILE).write_text(json.dumps(meta))
    (run / rank_file(LOSS_FILE, 1)).write_text(json.dumps({"rows_dropped": 7}))
    (run / LOSS_FILE).write_text("[not an object")                  # hostile: skipped
    recorded = []
    rw = RunWatch(run, ["loss_of_data"], record=recorded.append)
    got = rw.poll()
    assert sorted((a.rank, a.value) for a in got) == [(0, 5.0), (1, 7.0)]
    assert [e["kind"] for e in recorded] == ["alert", "alert"]
    assert rw.poll() == []


def test_loss_of_data_from_the_live_writer_of_a_failing_disk(make_run):
    """Every write fails (the core's fault hook): the in-process watcher reads the
    writer's live counters and says so; the alert cannot be written with the rest,
    the callback still has it."""
    import errno
    seen = []
    exp = make_run(system_metrics=False, on_error="warn")
    rw = exp.watch(["loss_of_data"], on_alert=seen.append, interval=3600)
    wait_for(lambda: rw.rounds >= 1, "the watcher's first round")
    exp._set_fault(write_every=1, err=errno.ENOSPC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the writer's error (on_error="warn")
        for i in range(10):
            exp.log_metrics({"loss": 1.0}, step=i)
        exp.flush()
    assert exp.stats()["write_errors"] > 0
    rw.poll()
    assert [a.kind for a in seen] == ["loss_of_data"]
    assert re.search(r"rank 0: the writer lost data: .* [1-9][0-9]* failed writes", seen[0].message)


def test_disk_by_injected_free_space_and_re_armed_above_the_limit(tmp_path):
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 10 << 30}
    w = Watcher(["disk:free=1G", "disk:free=5%"], path=tmp_path,
                disk_usage=lambda p: usage(100 << 30, 0, free["bytes"]))
    assert w.check() == []
    free["bytes"] = 3 << 30                # below 5 % of 100 GiB, above 1 GiB
    assert [a.rule for a in w.check()] == ["disk:free=5%"]
    free["bytes"] = 500 << 20
    alerts = w.check()
    assert [a.rule for a in alerts] == ["disk"] and "500.0 MiB free" in alerts[0].message
    assert w.check() == []
    free["bytes"] = 10 << 30
    assert w.check() == []
    free["bytes"] = 100
    assert len(w.check()) == 2


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0,
                    reason="mounting a tmpfs needs root on Linux (CI runs as root)")
def test_disk_on_a_full_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mount tmpfs failed under CI: {proc.stderr}")
        pytest.skip(f"this container cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        w = Watcher(["disk:free=1M"], path=mnt)
        assert w.check() == []
        with open(mnt / "filler", "wb") as f:       # fill it: writes stop at ENOSPC
            try:
                while True:
                    f.write(b"\0" * (256 << 10))
                    f.flush()
            except OSError:
                pass
        alerts = w.check()
        assert len(alerts) == 1 and alerts[0].rule == "disk:free=1M"
        assert alerts[0].value < 1 << 20
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_no_alert_on_a_thousand_clean_runs_with_the_default_rules():
    """The false-positive test: noisy decreasing losses, rising accuracies, cosine and
    step learning-rate schedules, a steady clock; the default rules stay quiet."""
    rng = np.random.default_rng(20261205)
    usage = namedtuple("usage", "total used free")
    fired = []
    for run in range(1000):
        n = int(rng.integers(100, 600))
        steps = np.arange(n)
        dt = rng.uniform(0.05, 2.0)
        times = 1000.0 + np.cumsum(dt * rng.uniform(0.8, 1.2, n))
        clock = Clock(float(times[0]))
        w = Watcher(None, run_id=f"e/{run}", path="/", clock=clock,
                    disk_usage=lambda p: usage(100 << 30, 0, 50 << 30))
        w.start_rank(0, 1000.0)
        loss = noisy_loss(rng, n)
        acc = 1 - noisy_loss(rng, n) / 4
        lr_cos = 0.1 * 0.5 * (1 + np.cos(np.pi * steps / n))
        lr_step = 0.1 * 0.1 ** (steps // max(n // 3, 1))
        for lo in range(0, n, 100):
            sl = slice(lo, lo + 100)
            for name, values in (("train/loss", loss), ("train/acc", acc),
                                 ("lr", lr_cos), ("lr_step", lr_step)):
                fired += w.feed(name, steps[sl], values[sl], times[sl])
            clock.t = float(times[min(lo + 99, n - 1)]) + dt
            fired += w.check()
        assert w.ranks == {0: n - 1}
    assert fired == []


# ---- alert ids, records and files ----------------------------------------------------------------------


def test_alert_ids_are_stable_and_events_round_trip():
    a = Watcher(["nan"], run_id="e/r").feed("loss", [5], [math.nan], [1.0])[0]
    b = Watcher(["nan"], run_id="e/r").feed("loss", [5], [math.nan], [2.0])[0]
    c = Watcher(["nan"], run_id="e/other").feed("loss", [5], [math.nan], [1.0])[0]
    assert a.id == b.id != c.id
    ev = orjson.loads(orjson.dumps(a.to_event()))
    assert ev["value"] == "NaN" and ev["kind"] == "alert"
    back = Alert.from_event(ev)
    assert back.id == a.id and math.isnan(back.value) and back.step == 5
    assert Alert.from_event({"kind": "alert", "id": 3}) is None
    odd = Alert.from_event({"kind": "alert", "id": "x", "step": "7", "rank": True, "value": [1]})
    assert odd.step is None and odd.rank == 0 and odd.value is None


def make_closed_run(base: Path, nan_at: int | None = 30, n: int = 60) -> Path:
    with expman.Experiment("e", "r", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for i in range(n):
            exp.log_metrics({"loss": math.nan if i == nan_at else 1.0 / (i + 1)})
    return exp.run_dir


def test_alert_log_is_one_writer_and_hostile_lines_never_break_readers(tmp_path):
    run = make_closed_run(tmp_path)
    log = AlertLog(run)
    with pytest.raises(WatchLockedError, match="another watcher"):
        AlertLog(run)
    rw = RunWatch(run, ["nan"], record=log)
    first = rw.poll()
    assert [a.step for a in first] == [30]
    log.close()
    with open(run / ALERTS_FILE, "ab") as f:
        f.write(b'not json\n{"kind": "alert"}\n[1]\n{"kind":"alert","id":"zz","time":"x"}\n')
    alerts = read_alerts(run)
    assert {a.id for a in alerts} == {"zz", first[0].id} and has_alerts(run)
    # a second watcher sees the first one's alerts: nothing recorded twice
    log = AlertLog(run)
    assert RunWatch(run, ["nan"], record=log).poll() == []
    log.close()
    assert (run / ALERTS_FILE).read_bytes().count(b'"rule":"nan"') == 1


def test_a_crafted_run_json_never_breaks_a_watcher(tmp_path):
    run = make_closed_run(tmp_path)
    meta = json.loads((run / RUN_FILE).read_text())
    meta.update(world_size=5000, ranks="all", resumed=5, start_time="yesterday", status=7,
                data_loss="lots")
    (run / RUN_FILE).write_text(json.dumps(meta))
    (run / rank_file(EVENTS_FILE, 3)).mkdir()           # a folder where a stream belongs
    (run / rank_file(RUN_FILE, 2)).write_text('{"resumed": {"a": 1}, "data_loss": [1]}')
    rw = RunWatch(run, None, record=lambda ev: None)
    assert [a.kind for a in rw.poll()] == ["nan"]
    assert sorted(rw._tails) == [0, 2, 3]                # a tail only where a rank wrote
    assert [a.step for a in read_alerts(run)] == [] and not has_alerts(run)


def test_watched_ranks_are_the_readers_logging_ranks(tmp_path):
    """One rule for a run's ranks (issue 19): the watcher believes the world every
    reader believes (liveness.MAX_WORLD_SIZE, not a cap of its own), watches the
    ranks that wrote, and a world beyond the bound counts as one rank."""
    from expman.liveness import MAX_WORLD_SIZE, logging_ranks
    from expman.watch.live import watched_ranks
    run = make_closed_run(tmp_path)
    meta = json.loads((run / RUN_FILE).read_text())
    far = MAX_WORLD_SIZE - 1                             # beyond any smaller cap
    data = (run / "metrics.bin").read_bytes()
    (run / rank_file("metrics.bin", far)).write_bytes(data)
    for world, want in ((MAX_WORLD_SIZE, [0, far]), (MAX_WORLD_SIZE + 1, [0]), (10**18, [0])):
        meta["world_size"] = world
        (run / RUN_FILE).write_text(json.dumps(meta))
        assert watched_ranks(run) == want
        assert set(want) <= set(logging_ranks(meta))
    meta["world_size"] = MAX_WORLD_SIZE
    (run / RUN_FILE).write_text(json.dumps(meta))
    rw = RunWatch(run, ["nan"], record=lambda ev: None)
    assert sorted((a.rank, a.step) for a in rw.poll()) == [(0, 30), (far, 30)]
    assert sorted(rw._tails) == [0, far]
    meta.update(ranks=[0, True])                         # a bool is not a rank
    assert logging_ranks(meta) == list(range(MAX_WORLD_SIZE))


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_alert_log_never_writes_through_a_planted_link(tmp_path):
    run = make_closed_run(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, run / ALERTS_FILE)
    with pytest.raises(OSError):
        AlertLog(run)
    assert target.read_text() == ""


RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID",
             "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID")


def test_run_watch_reads_every_rank_and_names_the_silent_one(tmp_path, monkeypatch):
    """Three ranks of one job in one folder: a NaN of rank 2 is rank 2's alert; ranks
    0 and 1 closed their streams, rank 2 did not: only rank 2 stalls."""
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    runs = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
        runs.append(expman.Experiment("e", base_dir=tmp_path, capture_env=False,
                                      system_metrics=False, handle_signals=False))
    try:
        for step in range(10):
            for rank, exp in enumerate(runs):
                exp.log_metrics({"loss": math.nan if (rank, step) == (2, 7) else 1.0}, step=step)
        for exp in runs:
            exp.flush()
        runs[0].close()
        runs[1].close()
        run = runs[0].run_dir
        last = max(json.loads(line).get("time", 0)
                   for r in range(3) for line in (run / rank_file(EVENTS_FILE, r)).read_text().splitlines())
        clock = Clock(last + 10_000)
        recorded = []
        rw = RunWatch(run, ["nan", "stall:floor=60"], record=recorded.append, clock=clock)
        got = sorted((a.kind, a.rank, a.step) for a in rw.poll())
        assert got == [("nan", 2, 7), ("stall", 2, 9)]
        assert {e["rank"] for e in recorded} == {2}
    finally:
        for exp in runs:
            if exp.status == "RUNNING":
                exp.close()


def last_record_time(run: Path, rank: int) -> float:
    """The wall time of a rank's newest point (0 before any)."""
    try:
        metrics = expman.open_run(run, rank=rank).metrics
    except (OSError, ValueError):
        return 0.0
    return max((float(s.times[-1]) for s in metrics.values() if len(s)), default=0.0)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_stall_names_a_sigstopped_rank_of_a_real_two_rank_job(tmp_path):
    """Two real processes of one job; rank 1 stops itself (SIGSTOP) after 10 steps while
    rank 0 goes on. A watcher whose clock is 61 s past rank 1's last point (and less
    than 60 s past rank 0's) names rank 1, and only it."""
    base, flag = tmp_path / "runs", tmp_path / "done"
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   TORCHELASTIC_RUN_ID="job-7",
                   PYTHONPATH=str(Path(expman.__file__).parent.parent))
        procs.append(subprocess.Popen(cwd=HERE, args=[sys.executable, "-c", textwrap.dedent(f"""
            import os, signal, time, expman
            with expman.Experiment("e", base_dir={str(base)!r}, capture_env=False,
                                   system_metrics=False) as exp:
                step = 0
                while not os.path.exists({str(flag)!r}):
                    exp.log_metrics({{"loss": 1.0 / (step + 1)}}, step=step)
                    step += 1
                    if {rank} == 1 and step == 10:
                        exp.flush()
                        os.kill(os.getpid(), signal.SIGSTOP)
                    time.sleep(0.01)
        """)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    run = base / "e" / "job-7"
    try:
        stopped = wait_for(lambda: last_record_time(run, 1) if (run / rank_file(RUN_FILE, 1)).exists()
                           and len(open_steps(run, 1)) >= 10 else 0.0, "rank 1's 10 steps")
        wait_for(lambda: last_record_time(run, 0) > stopped + 2, "rank 0 to go on")
        rw = RunWatch(run, ["stall:floor=60"], record=lambda ev: None,
                      clock=lambda: stopped + 61)
        alerts = rw.poll()
        assert [(a.kind, a.rank, a.step) for a in alerts] == [("stall", 1, 9)]
        assert "rank 1 logged no new step for 61 s" in alerts[0].message
        assert rw.status == "RUNNING"          # a stopped process still holds its lock
    finally:
        flag.touch()
        os.kill(procs[1].pid, signal.SIGCONT)
        for p in procs:
            p.communicate(timeout=DEADLINE)
    assert [p.returncode for p in procs] == [0, 0]


def open_steps(run: Path, rank: int) -> list[int]:
    from expman.reader import open_run as _open_run
    try:
        s = _open_run(run, rank=rank).metrics.get("loss")
    except (OSError, ValueError):
        return []
    return [] if s is None else s.steps.tolist()


def test_a_stop_recorded_by_another_watcher_stops_a_watching_run(tmp_path):
    with expman.Experiment("e", "r", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as exp:
        rw = exp.watch(["loss_of_data"], interval=3600)      # the run's own, quiet watcher
        wait_for(lambda: rw.rounds >= 1, "the watcher's first round")
        exp.log_metrics({"loss": math.nan})
        exp.flush()
        log = AlertLog(exp.run_dir)                          # `expman watch --rule nan,action=stop`
        assert [a.action for a in RunWatch(exp.run_dir, ["nan,action=stop"], record=log).poll()] \
            == ["stop"]
        log.close()
        rw.poll()                                            # the run's watcher reads it
        with pytest.raises(WatchStop, match="loss is NaN"):
            exp.log_metrics({"loss": 1.0})


# ---- the webhook -------------------------------------------------------------------------------------------


class Receiver:
    """An http.server on 127.0.0.1 that records each POSTed alert; it can be down."""

    def __init__(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()                           # nothing listens: connection refused
        self.got: list[dict] = []
        self.server: http.server.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        got = self.got

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append({**json.loads(body), "_key": self.headers["Idempotency-Key"]})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def test_webhook_down_then_up_delivers_every_alert_exactly_once_across_restarts(tmp_path):
    base = tmp_path / "runs"
    with expman.Experiment("e", "r", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        for i in range(100):
            exp.log_metrics({"loss": math.nan if i in (20, 60) else 1.0,
                             "acc": math.inf if i == 40 else 0.5})
    run = exp.run_dir
    rx = Receiver()
    clock = Clock(0.0)
    try:
        # 1. the receiver is down: alerts are recorded, none delivered, retries back off
        log = AlertLog(run)
        rw = RunWatch(run, ["nan"], record=log,
                      webhook=Webhook(rx.url, clock=clock, base_delay=1, max_delay=8))
        assert len(rw.poll()) == 3
        assert rx.got == [] and rw.webhook.failures == 1 and len(rw.webhook.pending) == 3
        clock.t = 0.5
        rw.pump()
        assert rw.webhook.failures == 1            # not due yet: no attempt
        for t in (1, 3, 7):
            clock.t = t
            rw.pump()
        assert rw.webhook.failures == 4 and rx.got == []
        log.close()                                 # 2. the watcher dies before delivering
        # 3. a restarted watcher, the receiver back up: each alert exactly once
        rx.up()
        log = AlertLog(run)
        rw = RunWatch(run, ["nan"], record=log, webhook=Webhook(rx.url, clock=clock))
        assert rw.poll() == []                      # nothing new to record...
        assert sorted(g["step"] for g in rx.got) == [20, 40, 60]     # ...all delivered
        assert all(g["_key"] == g["id"] and g["run"] == "e/r" for g in rx.got)
        rw.poll()
        log.close()
        # 4. restarted again: the ledger (alert_delivered lines) says they are done
        log = AlertLog(run)
        RunWatch(run, ["nan"], record=log, webhook=Webhook(rx.url, clock=clock)).poll()
        log.close()
        assert len(rx.got) == 3
        lines = [json.loads(x) for x in (run / ALERTS_FILE).read_text().splitlines()]
        assert sum(x["kind"] == "alert_delivered" for x in lines) == 3
        assert rx.url not in (run / ALERTS_FILE).read_text()      # a hash, never the URL
        # a webhook of another URL is a ledger of its own
        rx2 = Receiver()
        rx2.up()
        try:
            log = AlertLog(run)
            RunWatch(run, ["nan"], record=log, webhook=Webhook(rx2.url, clock=clock)).poll()
            log.close()
            assert len(rx2.got) == 3
        finally:
            rx2.down()
    finally:
        rx.down()


def test_an_alert_that_cannot_be_recorded_still_reaches_the_callback(tmp_path):
    run = make_closed_run(tmp_path)
    seen = []

    def full_disk(event):
        raise OSError(28, "No space left on device")

    rw = RunWatch(run, ["nan"], record=full_disk, on_alert=seen.append)
    with pytest.warns(RuntimeWarning, match="cannot record the alert line.*No space left"):
        assert [a.step for a in rw.poll()] == [30]
    assert [a.step for a in seen] == [30]


def test_webhook_url_must_be_http():
    with pytest.raises(ExpmanValueError, match="http"):
        Webhook("file:///etc/passwd")


# ---- in the training process ---------------------------------------------------------------------------------


def alert_events(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("kind") == "alert":
            out.append(ev)
    return out


def test_watch_thread_in_a_real_run_records_the_nan(tmp_path):
    """A subprocess logs a NaN and keeps training; its own watcher thread writes the
    alert event into events.jsonl while the run is still open."""
    base = tmp_path / "runs"
    flag = tmp_path / "stop-now"
    proc = subprocess.Popen(cwd=HERE, args=[sys.executable, "-c", textwrap.dedent(f"""
        import math, os, time, expman
        seen = []
        with expman.Experiment("e", "live", base_dir={str(base)!r}, capture_env=False,
                               system_metrics=False) as exp:
            exp.watch(["nan"], on_alert=seen.append, interval=0.05)
            step = 0
            while not os.path.exists({str(flag)!r}):
                exp.log_metrics({{"loss": math.nan if step == 100 else 1.0 / (step + 1)}})
                step += 1
                time.sleep(0.002)
        print("callback", [(a.rule, a.metric, a.step) for a in seen])
    """)], env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = base / "e" / "live" / EVENTS_FILE
        got = wait_for(lambda: alert_events(events), "the alert event in events.jsonl")
        assert got[0]["rule"] == "nan" and got[0]["step"] == 100 and got[0]["value"] == "NaN"
        assert proc.poll() is None              # written while the run goes on
    finally:
        flag.touch()
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "callback [('nan', 'loss', 100)]" in out
    assert len(alert_events(events)) == 1


def test_action_stop_raises_at_the_next_log_metrics_and_the_run_fails_with_the_alert(tmp_path):
    base = tmp_path / "runs"
    with pytest.raises(WatchStop) as e:
        with expman.Experiment("e", "stopped", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.watch(["nan,action=stop"], interval=0.02)
            step = 0
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:          # until the watcher stops the loop
                exp.log_metrics({"loss": math.nan if step == 10 else 1.0})
                step += 1
                time.sleep(0.001)
    assert e.value.alert.step == 10 and "loss is NaN at step 10" in str(e.value)
    meta = json.loads((exp.run_dir / RUN_FILE).read_text())
    assert meta["status"] == "FAILED"
    assert meta["exit"]["type"].endswith("WatchStop") and "NaN" in meta["exit"]["message"]
    assert isinstance(exp, expman.Experiment)


def test_stop_loop_is_immediate_and_leaves_the_rest_of_the_run_working(make_run):
    from expman.watch import stop_loop
    exp = make_run(system_metrics=False)
    exp.log_metrics({"loss": 1.0})
    alert = Watcher(["nan"]).feed("loss", [1], [math.nan], [0.0])[0]
    stop_loop(exp, alert)
    with pytest.raises(WatchStop, match="loss is NaN"):
        exp.log_metrics({"loss": 2.0})
    exp.info("still logging messages")
    exp.close()
    assert exp.status == "FINISHED"


def test_close_runs_a_last_round_and_watch_twice_is_refused(make_run):
    exp = make_run(system_metrics=False)
    rw = exp.watch(["nan"], interval=3600)       # the thread's first round sees nothing
    with pytest.raises(ExpmanValueError, match="watched already"):
        exp.watch(["spike"])
    exp.log_metrics({"loss": math.nan})
    exp.close()                                   # the last round finds it
    assert [a["metric"] for a in alert_events(exp.run_dir / EVENTS_FILE)] == ["loss"]
    assert rw.errors == []


def test_wandb_alert_is_an_alert_event_a_watching_run_acts_on(tmp_path):
    import expman.wandb as wandb
    seen = []
    run = wandb.init(project="p", name="w", dir=str(tmp_path), config={})
    try:
        rw = run.experiment.watch(["nan"], on_alert=seen.append, interval=3600)
        wait_for(lambda: rw.rounds >= 1, "the watcher's first round")
        wandb.log({"loss": 1.0})
        wandb.alert(title="low accuracy", text="acc 0.1 < 0.5", level="WARN")
        wandb.alert(title="low accuracy", text="again", wait_duration=300)   # skipped
    finally:
        wandb.finish()
    alerts = read_alerts(run.experiment.run_dir)
    assert [(a.rule, a.message) for a in alerts] == [("wandb.alert", "low accuracy: acc 0.1 < 0.5")]
    ev = alert_events(run.experiment.run_dir / EVENTS_FILE)[0]
    assert ev["level"] == "WARN" and ev["step"] == 1
    assert [a.rule for a in seen] == ["wandb.alert"] and rw.errors == []


# ---- expman watch, beside a live run ------------------------------------------------------------------------------


def test_cli_watch_on_a_live_run_then_show_list_and_tail_mark_it(tmp_path, capsys):
    base = tmp_path / "runs"
    flag = tmp_path / "go-on"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(cwd=HERE, args=[sys.executable, "-c", textwrap.dedent(f"""
        import math, os, time, expman
        with expman.Experiment("e", "live", base_dir={str(base)!r}, capture_env=False,
                               system_metrics=False) as exp:
            for i in range(50):
                exp.log_metrics({{"loss": math.nan if i == 25 else 1.0}})
            exp.flush()
            open({str(ready)!r}, "w").close()
            while not os.path.exists({str(flag)!r}):
                time.sleep(0.01)
    """)], env={**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready.exists, "the run to log its points")
        assert main(["watch", "e/live", "--base-dir", str(base), "--rule", "nan",
                     "--rule", "stall:floor=3600", "--json"]) == 0
        printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [(p["rule"], p["step"]) for p in printed] == [("nan", 25)]
        run = base / "e" / "live"
        assert alert_events(run / ALERTS_FILE)[0]["id"] == printed[0]["id"]
        assert alert_events(run / EVENTS_FILE) == []   # the writer's file is left alone
        assert main(["tail", "e/live", "--base-dir", str(base)]) == 0
        assert "ALERT    [nan] loss is NaN at step 25" in capsys.readouterr().out
        assert main(["list", str(base)]) == 0
        assert "RUNNING!" in capsys.readouterr().out
        assert main(["show", "e/live", "--base-dir", str(base)]) == 0
        assert "alerts (1)" in capsys.readouterr().out
        assert main(["watch", "e/live", "--base-dir", str(base), "--rule", "nan"]) == 0
        again = capsys.readouterr()
        assert again.out.count("ALERT") == 1         # shown again, recorded once
        assert (run / ALERTS_FILE).read_bytes().count(b'"kind":"alert"') == 1
    finally:
        flag.touch()
        proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0
    assert main(["show", "e/live", "--base-dir", str(base), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [a["step"] for a in info["alerts"]] == [25]


def test_tail_follow_prints_an_alert_of_another_watcher_while_the_run_is_silent(tmp_path):
    """A live run that logs nothing more (as a stalled one): an alert appended to
    alerts.jsonl still shows in `expman tail --follow` at once."""
    base, flag, ready = tmp_path / "runs", tmp_path / "end", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(expman.__file__).parent.parent)}
    run_proc = subprocess.Popen(cwd=HERE, args=[sys.executable, "-c", textwrap.dedent(f"""
        import os, time, expman
        with expman.Experiment("e", "quiet", base_dir={str(base)!r}, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_metrics({{"loss": 1.0}})
            exp.flush()
            open({str(ready)!r}, "w").close()
            while not os.path.exists({str(flag)!r}):
                time.sleep(0.01)
    """)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = None
    try:
        wait_for(ready.exists, "the run to start")
        tail = subprocess.Popen(cwd=HERE, args=[sys.executable, "-m", "expman", "tail", "e/quiet", "--follow",
                                 "--interval", "0.05", "--base-dir", str(base)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = [tail.stdout.readline() for _ in range(2)]      # what was there
        assert any("loss=1" in x for x in first) and any("RUNNING" in x for x in first)
        log = AlertLog(base / "e" / "quiet")
        alert = Watcher(["nan"], run_id="e/quiet").feed("loss", [0], [math.nan], [0.0])
        log(alert[0].to_event())
        log.close()
        line = tail.stdout.readline()                      # blocks until printed
        assert "ALERT    [nan] loss is NaN at step 0 (rank 0)" in line, line
    finally:
        flag.touch()
        run_proc.communicate(timeout=DEADLINE)
        if tail is not None:
            out, err = tail.communicate(timeout=DEADLINE)   # ends with the run
            assert tail.returncode == 0, err


def test_cli_watch_follow_ends_with_the_run_and_reads_a_config(tmp_path, capsys):
    run = make_closed_run(tmp_path / "runs", nan_at=None, n=200)
    cfg = tmp_path / "w.toml"
    cfg.write_text('[watch]\nrules = ["plateau:loss,mode=max,patience=20"]\n')
    assert main(["watch", str(run), "--config", str(cfg), "--follow", "--interval", "0.01"]) == 0
    out = capsys.readouterr()
    assert "[plateau:loss,mode=max,patience=20]" in out.out and "1 alert " in out.err
    assert main(["watch", str(run), "--rule", "bogus"]) == 1
    assert "unknown watch rule 'bogus'" in capsys.readouterr().err


def test_experiment_watch_argument_starts_the_watchdogs(tmp_path):
    """``Experiment(..., watch=[...])`` is ``exp.watch([...])`` at open: a NaN logged
    becomes an alert event while the run is open; a bad rule fails before any folder."""
    with pytest.raises(expman.ExpmanValueError):
        expman.Experiment("e", "bad", base_dir=tmp_path, capture_env=False,
                          system_metrics=False, watch=["no-such-rule"])
    assert not (tmp_path / "e" / "bad").exists()
    with expman.Experiment("e", "w", base_dir=tmp_path, capture_env=False,
                           system_metrics=False, watch=["nan"]) as exp:
        exp.log_metrics({"loss": 1.0}, step=0)
        exp.log_metrics({"loss": math.nan}, step=1)
        exp.flush()
        events = exp.run_dir / EVENTS_FILE
        got = wait_for(lambda: alert_events(events), "the alert of the run's own watcher")
    assert got[0]["rule"] == "nan" and got[0]["step"] == 1
    assert len(alert_events(events)) == 1


# ---- the per-point rules in the writer thread (src/exwatch.c) ----------------------------------------


def _planted_series(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Noisy series with every fault the per-point rules look for: NaN and inf runs,
    jumps up and down, a constant stretch (MAD 0), plateaus."""
    t = np.arange(n)
    loss = 2.0 * np.exp(-t / 400) + rng.normal(0, 0.02, n)
    loss[1500:1900] = loss[1499]                   # flat: a plateau, and a constant window
    loss[[300, 301, 302, 800, 2500]] = [np.nan, np.nan, np.inf, np.nan, -np.inf]
    loss[[1000, 1205, 2222]] += [5.0, -3.0, 40.0]  # spikes both ways
    acc = np.minimum(0.3 + t / 2000, 0.9) + rng.normal(0, 0.01, n)
    acc[[700, 2600]] -= 0.5
    acc[[1234]] = np.nan
    sysx = rng.normal(50, 5, n)
    sysx[[10, 11, 400]] = [np.nan, 1e6, np.nan]
    q = np.round(rng.normal(0, 1, n)) + np.where(t % 97 == 0, 6, 0)   # many ties
    return {"loss": loss, "val/acc": acc, "system/x": sysx, "q": q}


NATIVE_RULES = ["nan", "spike", "spike:loss,k=3,window=8,min_points=5,direction=up",
                "spike:*acc,k=4,window=20,direction=down",
                "spike:q,k=2,window=13,min_points=7",      # odd windows, ties at the median
                "plateau:loss,delta=0.001,patience=30", "plateau:val/acc,mode=max,patience=40"]


def test_writer_watchdogs_find_what_the_python_engine_finds(tmp_path):
    """The same points through the writer thread's rules (the run's own watch) and
    through the reference engine (fed in uneven batches): the same alerts, ids and
    messages; rows of different shapes, values logged as ints too."""
    rng = np.random.default_rng(25)
    n = 3000
    data = _planted_series(rng, n)
    shape = rng.integers(0, 4, n)           # which series each row holds
    rows = []
    for i in range(n):
        row = {"loss": float(data["loss"][i]), "q": float(data["q"][i])}
        if shape[i] != 1:
            row["val/acc"] = float(data["val/acc"][i])
        if shape[i] >= 2:
            row["system/x"] = float(data["system/x"][i]) if shape[i] == 2 \
                else int(data["system/x"][i]) if np.isfinite(data["system/x"][i]) else math.nan
        rows.append(row)
    with expman.Experiment("e", "native", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as exp:
        rw = exp.watch(NATIVE_RULES, interval=3600)
        for i, row in enumerate(rows):
            exp.log_metrics(row, step=i)
    native = {(a.id, a.rule, a.metric, a.step, a.message) for a in read_alerts(exp.run_dir)}
    assert rw.native is not None and rw.errors == []
    assert rw.watcher.feed_count == 0           # no point went through the Python engine

    ref = Watcher(NATIVE_RULES, run_id="e/native")
    expected = set()
    for name in data:
        steps = np.array([i for i, r in enumerate(rows) if name in r])
        values = np.array([float(rows[i][name]) for i in steps])
        cuts = sorted(set(rng.integers(1, len(steps), 40).tolist()))
        for st, va in zip(np.split(steps, cuts), np.split(values, cuts)):
            for a in ref.feed(name, st, va, st * 0.01):
                expected.add((a.id, a.rule, a.metric, a.step, a.message))
    kinds = {rule.partition(":")[0] for _i, rule, *_r in expected}
    assert kinds == {"nan", "spike", "plateau"} and len(expected) > 15
    assert native == expected


def test_writer_watchdogs_give_the_rank_s_progress_to_stall(tmp_path):
    """The rank's own steps come from the writer (no decode in the watcher): a run
    silent for longer than the stall window fires at its last step; the sampler's
    series (system/...) never count as a step."""
    from expman.watch import live
    clock = Clock(time.time())
    with expman.Experiment("e", "stall", base_dir=tmp_path, capture_env=False,
                           system_metrics=False) as exp:
        rw = live.start(exp, ["stall:floor=60"], interval=3600, clock=clock,
                        native=(expman._core.Core._native_watch,
                                expman._core.Core._native_watch_take))
        for i in range(10):
            exp.log_metrics({"loss": 1.0 / (i + 1)}, step=i)
        exp.log_metrics({"system/cpu": 5.0}, step=50)
        exp.flush()
        assert rw.poll() == [] and rw.watcher.ranks == {0: 9}
        clock.t += 3600
        fired = rw.poll()
        assert [(a.kind, a.step, a.rank) for a in fired] == [("stall", 9, 0)]


def test_writer_watchdogs_watch_keys_defined_later_from_many_threads(make_run):
    """Keys defined after watch() starts, by several threads at once, are bound to their
    rules before any row uses them: the first point of each, a NaN, is an alert."""
    exp = make_run(system_metrics=False)
    rw = exp.watch(["nan", "spike:k*"], interval=3600)

    def log(t: int) -> None:
        for i in range(50):
            exp.log_metrics({f"k{t}/{i}": math.nan, "loss": 1.0}, step=i)

    threads = [threading.Thread(target=log, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    exp.close()
    got = [(a.rule, a.metric, a.step) for a in read_alerts(exp.run_dir)]
    assert sorted(got) == sorted(("nan", f"k{t}/{i}", i) for t in range(4) for i in range(50))
    assert rw.errors == [] and rw.watcher.feed_count == 0


def test_a_rule_the_writer_refuses_leaves_the_run_watchable(make_run):
    """The writer takes its rules all at once or not at all: a spike window too large
    for it is a clear error, and a watch() after it starts from a clean slate."""
    exp = make_run(system_metrics=False)
    with pytest.raises(ExpmanValueError, match="window is at most 1,000,000"):
        exp.watch(["nan", "spike:window=2000000"])
    rw = exp.watch(["spike:loss,k=3,window=8,min_points=5", "nan"], interval=3600)
    for i in range(40):
        exp.log_metrics({"loss": math.nan if i == 30 else 1.0 + 0.01 * (i % 3)}, step=i)
    exp.log_metrics({"loss": 50.0}, step=40)
    exp.close()
    got = sorted((a.kind, a.step) for a in read_alerts(exp.run_dir))
    assert got == [("nan", 30), ("spike", 40)] and rw.errors == []
