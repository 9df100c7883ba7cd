"""Splitting a framework's log dict into metrics (real numbers) and everything else.

Frameworks put strings, lists or None beside their numbers (a learning-rate
schedule's name, a list of per-class scores); those must never turn a logging
call into an error. The integrations log the numbers and keep the rest as messages.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Mapping

__all__ = ["as_number", "split_logs"]


def as_number(value: Any) -> float | None:
    """value as a float if it is a real number (Python, numpy, a 0-d tensor), else None."""
    if type(value) is float:                    # the common case, without the ABC check
        return value
    if isinstance(value, Real):                 # bool and int included: both are Real
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        try:
            item = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(item) if isinstance(item, Real) else None
    return None


def split_logs(logs: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """(numbers, the rest) of a log dict; keys are made ``str``."""
    numbers: dict[str, float] = {}
    rest: dict[str, Any] = {}
    for key, value in logs.items():
        number = as_number(value)
        if number is not None:
            numbers[str(key)] = number
        else:
            rest[str(key)] = value
    return numbers, rest
