"""Watchdogs: rules that watch a run's streams and say at once when it goes wrong
(a NaN, a spike, a plateau, a stalled or straggling rank, lost data, a full disk).

``rules`` holds the rules and their grammar, ``engine`` the pure evaluation
(points in, Alerts out, the clock injected), ``live`` where they run: a thread in
the training process (``Experiment.watch``; the per-point rules of its own points
run in the native writer thread, src/exwatch.c) or ``expman watch`` in another
one, reading the run's files the way ``RunTail`` does, off the hot path.
docs/watch.md is the guide.
"""

from typing import TYPE_CHECKING, Any

from expman.watch.alert import ALERT_KIND, Alert
from expman.watch.live import (
    AlertLog, AlertTail, RunWatch, WatchLockedError, WatchStop, Webhook, has_alerts, read_alerts,
    record_alert, stop_loop,
)
from expman.watch.rules import (
    DEFAULT_RULES, RULES, Disk, LossOfData, Nan, Plateau, Rule, Spike, Stall, Straggler,
    WatchConfig, parse_config, parse_rule, parse_rules,
)

if TYPE_CHECKING:
    from expman.watch.engine import Watcher

__all__ = ["Alert", "Watcher", "ALERT_KIND", "Rule", "Nan", "Spike", "Plateau", "Stall",
           "Straggler", "LossOfData", "Disk", "DEFAULT_RULES", "RULES", "WatchConfig",
           "parse_config", "parse_rule", "parse_rules", "RunWatch", "Webhook", "AlertLog",
           "AlertTail", "WatchStop", "WatchLockedError", "record_alert", "read_alerts",
           "has_alerts", "stop_loop"]


def __getattr__(name: str) -> Any:
    """``Watcher`` loads numpy: only when asked for (listing alerts does not need it)."""
    if name == "Watcher":
        from expman.watch.engine import Watcher
        return Watcher
    raise AttributeError(f"module 'expman.watch' has no attribute {name!r}")
