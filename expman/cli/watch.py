"""``expman watch RUN``: watchdogs on a run from another process (expman.watch).

Reads the run's streams as they grow, records each alert once in the run's
``alerts.jsonl`` (this process's own file; the run's writer keeps events.jsonl)
and prints it; ``--webhook`` POSTs each alert once; ``--follow`` keeps watching
until the run ends.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from expman.cli._common import BASE, JSON, command, resolve
from expman.cli._text import CliError, clock, note, out, plural
from expman.layout import CRASHED, RUNNING, jsonable
from expman.watch import (
    DEFAULT_RULES, Alert, AlertLog, RunWatch, parse_config, parse_rules, read_alerts,
)

__all__ = ["add_parser", "cmd_watch"]


def add_parser(subparsers: Any) -> None:
    """Registers watch."""
    p = command(subparsers, "watch",
                "watchdogs on a run from another process: NaN, spikes, plateaus, stalled or "
                "slow ranks, lost data, a full disk (docs/watch.md)",
                "expman watch mnist/latest --rule nan --rule 'spike:train/loss,k=6' --follow",
                cmd_watch, [BASE, JSON])
    p.add_argument("run", metavar="RUN", help="run folder or EXPERIMENT/RUN_NAME")
    p.add_argument("-r", "--rule", action="append", default=[], metavar="RULE",
                   help="a rule (repeatable): nan, spike, plateau, stall, straggler, "
                        "loss_of_data, disk, with options (spike:train/loss,k=6); "
                        "'default' is the default set, which is used when no rule is given")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="a TOML file whose [watch] section gives rules, webhook, interval")
    p.add_argument("--webhook", metavar="URL",
                   help="POST each alert as JSON to this http(s) URL, once (retried with back-off)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep watching until the run ends (else: one pass over what is there)")
    p.add_argument("--interval", type=float, default=None, metavar="SEC",
                   help="seconds between looks with --follow (default 0.5, or the config's)")


def _line(a: Alert, as_json: bool) -> str:
    if as_json:
        return orjson.dumps(jsonable(a.to_event())).decode()
    where = f" rank {a.rank}" if a.rank else ""
    return f"{clock(a.time)}  ALERT  [{a.rule}]{where} {a.message}"


def cmd_watch(args: argparse.Namespace) -> int:
    path = resolve(args, args.run, writes="expman watch (it records alerts in the run folder)")
    rules: list[Any] = []
    webhook, interval = args.webhook, args.interval
    if args.config:
        cfg = parse_config(args.config)
        rules += list(cfg.rules)
        webhook = webhook or cfg.webhook
        interval = interval if interval is not None else cfg.interval
    rules += args.rule
    interval = 0.5 if interval is None else interval
    if not 0.01 <= interval <= 3600:
        raise CliError(f"--interval must be seconds in [0.01, 3600], got {interval}")
    chosen = parse_rules(rules) if rules else DEFAULT_RULES
    log = AlertLog(path)
    shown: set[str] = set()

    def show(a: Alert) -> None:
        if a.id not in shown:
            shown.add(a.id)
            out(_line(a, args.json))

    try:
        rw = RunWatch(path, chosen, record=log, on_alert=show, webhook=webhook)
        rw.poll()
        for a in read_alerts(path):       # what was on record before, and this pass's
            show(a)
        while args.follow and rw.status == RUNNING:
            time.sleep(interval)
            rw.poll()
        if rw.webhook is not None and rw.webhook.pending:
            note(f"{len(rw.webhook.pending)} alerts not delivered to the webhook yet "
                 f"({rw.webhook.last_error}); the next `expman watch` delivers them")
    finally:
        log.close()
    if not args.json:
        note(f"{path.name}: {plural(len(shown), 'alert')} ({', '.join(r.spec for r in chosen)})")
    if rw.status == CRASHED:
        note(f"{path.name}: the process stopped without closing the run (CRASHED)")
    return 0
