"""An alert: one fired rule, as an object and as the event line that records it.
(No numpy here: the readers that list alerts stay light.)"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from expman.layout import json_float

__all__ = ["Alert", "ALERT_KIND"]

ALERT_KIND = "alert"          # the ``kind`` of an alert event (docs/format.md)


@dataclass(frozen=True)
class Alert:
    """One fired rule. ``rule`` is the rule's spec (``spike:train/loss,k=6``)."""

    id: str
    rule: str
    metric: str | None
    step: int | None
    value: float | None
    rank: int
    message: str
    time: float
    action: str | None = None

    @property
    def kind(self) -> str:
        """The rule's name (``spike``)."""
        return self.rule.partition(":")[0]

    def to_event(self) -> dict[str, Any]:
        """The alert as an event line (JSON-safe: NaN spelled "NaN")."""
        ev: dict[str, Any] = {"kind": ALERT_KIND, "id": self.id, "rule": self.rule,
                              "metric": self.metric, "step": self.step,
                              "value": None if self.value is None else json_float(self.value),
                              "rank": self.rank, "message": self.message, "time": self.time}
        if self.action:
            ev["action"] = self.action
        return ev

    @classmethod
    def from_event(cls, ev: Mapping[str, Any]) -> "Alert | None":
        """An alert from an event read from a file, or None when it is not one (or
        is malformed: files are not trusted)."""
        if ev.get("kind") != ALERT_KIND or not isinstance(ev.get("id"), str):
            return None
        value = ev.get("value")
        if isinstance(value, str):
            value = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
        step, rank, t = ev.get("step"), ev.get("rank"), ev.get("time")
        return cls(
            id=ev["id"][:64], rule=str(ev.get("rule", "?"))[:200],
            metric=ev["metric"] if isinstance(ev.get("metric"), str) else None,
            step=step if isinstance(step, int) and not isinstance(step, bool) else None,
            value=float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
            else None,
            rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else 0,
            message=str(ev.get("message", ""))[:4000],
            time=float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0,
            action=ev.get("action") if ev.get("action") == "stop" else None)
