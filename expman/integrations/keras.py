"""``ExpmanCallback``: a Keras 3 callback that writes an expman run.

    from expman.integrations.keras import ExpmanCallback
    model.fit(x, y, epochs=5, validation_split=0.2, callbacks=[ExpmanCallback("mnist")])

Works on any Keras 3 backend (tested on torch). Keras picks its backend from
``KERAS_BACKEND`` when it is first imported; set it before importing this module.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import keras

from expman.experiment import Experiment
from expman.integrations._metrics import split_logs
from expman.integrations._run import RunHandle
from expman.layout import FINISHED
from expman.params import framework_params

__all__ = ["ExpmanCallback"]


class ExpmanCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Log epoch metrics (``val_`` ones included), optionally batch metrics, and params.

    Args:
        name: experiment name; ``run_name``: the run folder's name (generated when None).
        base_dir: the expman base dir; None means ``$EXPMAN_DIR`` or ``./experiments``.
        experiment: log into this open Experiment instead; it stays open after ``fit``.
        log_batches: also log the running batch metrics every N batches (True means
            every batch) as ``batch/<name>`` at the global batch number.
        watch: watchdogs on the run, as ``Experiment(..., watch=...)``: ``["nan",
            "plateau:val_loss,patience=5"]``, or True for the default rules (docs/watch.md).
        **experiment_options: passed to ``Experiment``.

    Epoch metrics use Keras's names at step = epoch index (0-based), the index of
    ``History.history[name]``. Params, nested: the optimizer's config under
    ``optimizer``, ``model`` (``name``, ``count_params``) and ``fit`` (``epochs``,
    ``steps``); listings and the lake show them as ``optimizer.learning_rate``...
    """

    def __init__(self, name: str = "keras", run_name: str | None = None,
                 base_dir: str | os.PathLike[str] | None = None, *,
                 experiment: Experiment | None = None, log_batches: bool | int = False,
                 watch: Any = None, **experiment_options: Any) -> None:
        super().__init__()
        if isinstance(log_batches, bool):
            every = 1 if log_batches else 0
        elif isinstance(log_batches, int) and log_batches >= 0:
            every = log_batches
        else:
            from expman.errors import ExpmanValueError
            raise ExpmanValueError(
                f"log_batches must be a bool or a non-negative int, got {log_batches!r}")
        self._handle = RunHandle(experiment, name, run_name, base_dir, experiment_options,
                                 watch)
        self._every = every
        self._batches = 0

    @property
    def experiment(self) -> Experiment | None:
        """The run logged into, once ``fit`` began (None before); closed again after training."""
        return self._handle.current

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        exp = self._handle.get()
        params: dict[str, Any] = {}
        model = self.model
        if model is not None:
            params["model"] = {"name": model.name}
            try:
                params["model"]["count_params"] = model.count_params()
            except ValueError:
                pass                              # a model not built yet has no count
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None:
                params["optimizer"] = optimizer.get_config()
        fit = {k: v for k, v in (self.params or {}).items() if k in ("epochs", "steps")}
        if fit:
            params["fit"] = fit
        exp.log_params(framework_params(params))

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batches += 1
        if self._every and logs and self._batches % self._every == 0:
            numbers, _ = split_logs(logs)
            if numbers:
                self._handle.get().log_metrics(
                    {f"batch/{k}": v for k, v in numbers.items()}, step=self._batches - 1)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if not logs:
            return
        exp = self._handle.get()
        numbers, rest = split_logs(logs)
        for key, value in rest.items():
            exp.info(f"{key} = {value!s:.2000} (epoch {epoch})")
        if numbers:
            exp.log_metrics(numbers, step=epoch)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """Close the run this callback opened (FINISHED); a run passed in stays open.

        Keras calls no hook when ``fit`` raises: the run then ends with the
        process (FAILED for an uncaught exception) or its ``with`` block.
        """
        self._handle.finish(FINISHED)
