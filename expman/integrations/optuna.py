"""Optuna: ``study.optimize(objective, callbacks=[ExpmanCallback()])`` makes each
trial a run, all of a study's runs in one group named after the study, so the
dashboard's group and hyperparameter views show the study.

A trial's run holds its params (``trial.params``), its intermediate values
(``trial.report(value, step)``) as the metric ``intermediate_value`` at their
steps, and its objective as ``value`` (``value_0``, ``value_1``, ... for several
objectives, or the names given) at the last reported step. A pruned trial is
tagged ``pruned`` with a message saying at which step; a failed one (a trial
Optuna caught: ``catch=``) is FAILED with an error message. run.json's ``optuna`` field
keeps the trial's number, state, start and end times and user attributes.

Optuna calls a callback once a trial has ended, so the run is written then: the
points carry the time they were written, and the trial's own start and end are
in run.json. Optuna is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from expman import runmeta
from expman.errors import ExpmanValueError
from expman.experiment import Experiment
from expman.layout import FAILED, FINISHED
from expman.params import framework_params

__all__ = ["ExpmanCallback", "INTERMEDIATE", "PRUNED_TAG"]

INTERMEDIATE = "intermediate_value"     # the metric of trial.report(value, step)
PRUNED_TAG = "pruned"
OPTUNA_FIELD = "optuna"                 # run.json: the trial's identity and state


class ExpmanCallback:
    """An Optuna study callback writing each finished trial as an expman run.

    ``experiment`` defaults to the study's name, ``group`` too; ``metric_name``
    names the objective(s) (``"value"``, or a list for a multi-objective study).
    """

    def __init__(self, experiment: str | None = None, base_dir: str | os.PathLike[str] | None = None,
                 *, group: str | None = None, metric_name: str | Sequence[str] = "value",
                 tags: list[str] | None = None) -> None:
        self._experiment, self._base, self._group = experiment, base_dir, group
        self._metric_name = metric_name
        self._tags = runmeta.check_tags(tags)

    def _metric_names(self, n: int) -> list[str]:
        if isinstance(self._metric_name, str):
            return [self._metric_name] if n == 1 else [f"{self._metric_name}_{i}" for i in range(n)]
        names = list(self._metric_name)
        if len(names) != n:
            raise ExpmanValueError(f"ExpmanCallback: metric_name has {len(names)} names for "
                                   f"{n} objectives: {names}")
        return names

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState
        state = trial.state
        pruned = state == TrialState.PRUNED
        tags = self._tags + ([PRUNED_TAG] if pruned else [])
        exp = Experiment(self._experiment or study.study_name, f"trial-{trial.number}", self._base,
                         group=self._group or study.study_name, tags=tags, system_metrics=False)
        try:
            self._write(exp, trial, pruned, state == TrialState.FAIL)
        except BaseException:
            exp.close(FAILED)
            raise
        failed = state == TrialState.FAIL
        exp.close(FAILED if failed else FINISHED)
        record = {"study": study.study_name, "trial": trial.number, "state": state.name,
                  "datetime_start": _iso(trial.datetime_start),
                  "datetime_complete": _iso(trial.datetime_complete),
                  "user_attrs": framework_params(dict(trial.user_attrs), "user_attrs")}
        if failed and trial.system_attrs.get("fail_reason"):
            record["fail_reason"] = str(trial.system_attrs["fail_reason"])
        runmeta.update_closed_run(exp.run_dir, {OPTUNA_FIELD: record})

    def _write(self, exp: Experiment, trial: Any, pruned: bool, failed: bool) -> None:
        exp.log_params(framework_params(dict(trial.params), "trial.params"))
        steps = sorted(trial.intermediate_values)
        for step in steps:
            exp.log_metrics({INTERMEDIATE: trial.intermediate_values[step]}, step=step)
        last = steps[-1] if steps else 0
        values = trial.values
        if values is not None:
            exp.log_metrics(dict(zip(self._metric_names(len(values)), values)), step=last)
        if pruned:
            exp.info(f"trial {trial.number} pruned at step {last}"
                     + (f" (intermediate value {trial.intermediate_values[last]!r})"
                        if steps else ""))
        elif failed:    # Optuna logs the exception; versions before 3 also kept its text
            reason = trial.system_attrs.get("fail_reason")
            exp.error(f"trial {trial.number} failed" + (f": {reason}" if reason else
                                                        " (the exception is in Optuna's log)"))


def _iso(when: Any) -> str | None:
    return when.isoformat() if when is not None else None
