"""``ExpmanCallback``: a Hugging Face ``Trainer`` callback that writes an expman run.

    from expman.integrations.transformers import ExpmanCallback
    trainer = Trainer(model, args, callbacks=[ExpmanCallback("bert-tiny")], ...)

Pass ``report_to="none"`` (or a list without "expman") in ``TrainingArguments``:
transformers' ``report_to`` only knows its built-in integrations. Like those, the
callback acts on the world-process-zero process only.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from transformers import TrainerCallback

from expman.experiment import Experiment
from expman.integrations._metrics import split_logs
from expman.integrations._run import RunHandle, save_checkpoint
from expman.layout import FINISHED
from expman.params import framework_params

__all__ = ["ExpmanCallback"]

_CHECKPOINT_PREFIX = "checkpoint"     # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class ExpmanCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Log a ``Trainer``'s params, logs and (optionally) checkpoints into an expman run.

    Args:
        name: experiment name. ``run_name``: the run folder's name; None uses
            ``TrainingArguments.run_name`` when it is set, else a generated name.
        base_dir: the expman base dir; None means ``$EXPMAN_DIR`` or ``./experiments``.
        experiment: log into this open Experiment instead; it stays open after training.
        log_checkpoints: copy each saved ``checkpoint-N`` folder into
            ``artifacts/checkpoints/checkpoint-N/``.
        watch: watchdogs on the run, as ``Experiment(..., watch=...)``: ``["nan",
            "plateau:eval_loss,patience=500"]``, or True for the default rules
            (docs/watch.md). Set ``logging_nan_inf_filter=False`` in
            ``TrainingArguments`` for ``nan`` to see a NaN loss: by default the
            Trainer logs the mean of the finite losses instead.
        **experiment_options: passed to ``Experiment``.

    Metric keys are the ones ``Trainer`` logs (``loss``, ``eval_loss``,
    ``learning_rate``...), at ``state.global_step``: the run holds what
    ``trainer.state.log_history`` holds.
    """

    def __init__(self, name: str = "transformers", run_name: str | None = None,
                 base_dir: str | os.PathLike[str] | None = None, *,
                 experiment: Experiment | None = None, log_checkpoints: bool = False,
                 watch: Any = None, **experiment_options: Any) -> None:
        self._handle = RunHandle(experiment, name, run_name, base_dir, experiment_options,
                                 watch)
        self._log_checkpoints = log_checkpoints
        self._training = False

    @property
    def experiment(self) -> Experiment | None:
        """The run logged into once training began (None before, and on other processes)."""
        return self._handle.current

    def _run(self, args: Any) -> Experiment:
        handle = self._handle
        if not handle.opened and handle.run_name is None:
            given = getattr(args, "run_name", None)
            # transformers defaults run_name to output_dir, a path: only a plain name is a run name
            if given and given != getattr(args, "output_dir", None) and os.sep not in given \
                    and "/" not in given:
                handle.run_name = given
        return handle.get()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        """Store ``TrainingArguments`` under ``args`` and the model config under ``model``
        (nested: ``args.learning_rate`` in listings and the lake)."""
        if not state.is_world_process_zero:
            return
        self._training = True
        exp = self._run(args)
        params: dict[str, Any] = {"args": args.to_dict()}
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            params["model"] = config.to_dict()
        if model is not None and hasattr(model, "num_parameters"):
            params.setdefault("model", {})["num_parameters"] = model.num_parameters()
        exp.log_params(framework_params(params))

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Numbers become metrics at ``state.global_step``; anything else a message."""
        if not state.is_world_process_zero or not logs:
            return
        exp = self._run(args)
        numbers, rest = split_logs(logs)
        for key, value in rest.items():
            exp.info(f"{key} = {value!s:.2000} (step {state.global_step})")
        if numbers:
            exp.log_metrics(numbers, step=state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self._log_checkpoints:
            return
        folder = os.path.join(args.output_dir, f"{_CHECKPOINT_PREFIX}-{state.global_step}")
        if os.path.isdir(folder):
            save_checkpoint(self._run(args), folder)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the run this callback opened (FINISHED); a run passed in stays open."""
        if state.is_world_process_zero:
            self._training = False
            self._handle.finish(FINISHED)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An ``evaluate()`` after ``train()`` reopened the run to log its metrics: close it
        again when the evaluation returns, so its points are on disk and the run reads
        FINISHED (an evaluation during training leaves the run open)."""
        if state.is_world_process_zero and not self._training:
            self._handle.finish(FINISHED)
