"""The module-level API: ``expman.init()`` makes a current run the other calls act on."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from expman.errors import RunClosedError
from expman.layout import FINISHED, RUNNING
from expman.experiment import Experiment

_current: Experiment | None = None


def init(name: str, run_name: str | None = None, **kwargs: Any) -> Experiment:
    """Start a run and make it current. A current run still open is finished
    (FINISHED) first, with a warning: two init() calls are usually a mistake."""
    global _current
    if _current is not None and _current.status == RUNNING:
        previous = f"{_current.name}/{_current.run_name}"
        _current.close()
        warnings.warn(f"expman.init({name!r}): finished the previous run {previous} first "
                      "(call expman.close() before init() to end it yourself)",
                      RuntimeWarning, stacklevel=2)
    _current = Experiment(name, run_name, **kwargs)
    return _current


def current() -> Experiment:
    """The current run, or RunClosedError when there is none."""
    if _current is None:
        raise RunClosedError("no current run: call expman.init(name) first")
    return _current


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    current().log_metrics(metrics, step)


def log_params(params: Mapping[str, Any] | object) -> None:
    current().log_params(params)


def info(msg: object) -> None:
    current().info(msg)


def warn(msg: object) -> None:
    current().warn(msg)


def error(msg: object) -> None:
    current().error(msg)


def save_artifact(path: str | os.PathLike[str], name: str | None = None) -> Path:
    return current().save_artifact(path, name)


def close(status: str = FINISHED) -> None:
    """Close the current run; a no-op when there is none."""
    global _current
    if _current is not None:
        run, _current = _current, None
        run.close(status)
