"""The run an integration logs into, and how a framework's ending maps to its status.

Every bridge follows one rule: a run the user passed in is theirs and stays
open; a run the bridge opened is closed by it when the framework says training
ended, and reopened (same folder) if the framework keeps logging afterwards,
as ``trainer.fit()`` followed by ``trainer.test()`` does. The reopened run goes
on with the same history (``resume="duplicates"``): an evaluation logged at the
last training step is not a restart, so it opens no branch (expman.branches).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from expman.experiment import Experiment
from expman.layout import FAILED, FINISHED, RUNNING, base_dir

__all__ = ["RunHandle", "save_checkpoint"]


class RunHandle:
    """Opens the Experiment on first use, or wraps one the user gave.

    ``watch``: the run's watchdogs, as ``Experiment(..., watch=...)`` takes them
    (docs/watch.md); checked here, so a bad rule fails when the bridge is made,
    not mid-training. A run the bridge opens (or reopens) starts them at open;
    a run passed in is watched from now on (``Experiment.watch``)."""

    def __init__(self, experiment: Experiment | None, name: str, run_name: str | None,
                 base: str | os.PathLike[str] | None, options: dict[str, Any],
                 watch: Any = None) -> None:
        if experiment is not None and not isinstance(experiment, Experiment):
            from expman.errors import ExpmanTypeError
            raise ExpmanTypeError(
                f"experiment: expected an expman.Experiment, got {type(experiment).__name__}")
        if watch is not None and watch is not False:
            from expman.watch import parse_rules
            rules = parse_rules(None if watch is True else watch)
            if experiment is not None:
                experiment.watch(rules)
            else:
                options = {**options, "watch": rules}
        self._exp = experiment
        self.owned = experiment is None
        self.name = experiment.name if experiment is not None else name
        self.run_name = experiment.run_name if experiment is not None else run_name
        self.base_dir = (experiment.run_dir.parent.parent if experiment is not None
                         else Path(os.path.abspath(base_dir(base))))
        self._options = options

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Lightning's spawn launchers pickle the Trainer) until the run is opened.

        A run is held by one process (an OS lock), so a copy in another process
        could not write it; the spawned process opens the run itself.
        """
        if self._exp is not None:
            from expman.errors import ExpmanTypeError
            raise ExpmanTypeError(
                f"cannot pickle a logger whose run {self.name}/{self.run_name} is already open "
                "in this process: create the logger (and leave it unused) before the processes "
                "start, so the process that logs opens the run")
        return dict(self.__dict__)

    @property
    def opened(self) -> bool:
        return self._exp is not None

    @property
    def current(self) -> Experiment | None:
        """The Experiment as it is (open or closed), without opening one."""
        return self._exp

    def get(self) -> Experiment:
        """The open run: opened now if it never was, reopened if this handle closed it."""
        exp = self._exp
        if exp is not None and (exp.status == RUNNING or not self.owned):
            return exp
        exp = Experiment(self.name, self.run_name, self.base_dir,
                         resume="duplicates" if exp is not None else False, **self._options)
        self._exp = exp
        self.run_name = exp.run_name
        return exp

    def finish(self, status: str) -> None:
        """Close an owned, open run: FINISHED, or FAILED with the exception in flight.

        A run the user passed in is left open: its ``with`` block or ``close()``
        decides. FAILED records the exception being handled when there is one
        (Lightning calls ``finalize("failed")`` inside its ``except``), the same
        way a ``with Experiment(...)`` block records it; expman's own policy
        then applies (a KeyboardInterrupt is FAILED; KILLED is SIGTERM's).
        """
        exp = self._exp
        if exp is None or not self.owned or exp.status != RUNNING:
            return
        if status == FINISHED:
            exp.close()
            return
        tp, value, tb = sys.exc_info()
        if value is not None:
            exp.__exit__(tp, value, tb)
        else:
            exp.close(FAILED)


def save_checkpoint(exp: Experiment, path: str | os.PathLike[str],
                    prefix: str = "checkpoints") -> list[Path]:
    """Copy a checkpoint file, or every file of a checkpoint folder, into the run's artifacts.

    Stored as ``artifacts/<prefix>/<name>`` (a folder keeps its inner layout); a
    later checkpoint of the same name replaces the earlier copy.
    """
    src = Path(os.fspath(path))
    if src.is_file():
        return [exp.save_artifact(src, f"{prefix}/{src.name}")]
    if not src.is_dir():
        raise FileNotFoundError(2, f"checkpoint not found: {src}", str(src))
    stored = []
    for file in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = file.relative_to(src.parent).as_posix()
        stored.append(exp.save_artifact(file, f"{prefix}/{rel}"))
    return stored

