"""``ExpmanLogger``: a Lightning logger that writes an expman run.

    from expman.integrations.lightning import ExpmanLogger
    trainer = Trainer(logger=ExpmanLogger("mnist"), max_epochs=2)

Subclasses ``lightning.pytorch.loggers.Logger``, or ``pytorch_lightning``'s when
that is the package in use (the one already imported wins; otherwise
``lightning``, then ``pytorch_lightning``). Like Lightning's own loggers it acts on
rank zero only: other ranks get a dummy ``experiment`` and log nothing.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any, Mapping

from expman.experiment import Experiment
from expman.integrations._run import RunHandle, save_checkpoint
from expman.layout import FAILED, FINISHED, RUNNING
from expman.params import framework_params

__all__ = ["ExpmanLogger"]


def _import_lightning() -> tuple[Any, Any, Any]:
    """(Logger, rank_zero_experiment, rank_zero_only) of the Lightning package in use."""
    order = ["lightning.pytorch", "pytorch_lightning"]
    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        order.reverse()     # the script imported pytorch_lightning: its Trainer checks its Logger
    for package in order:
        try:
            logger_mod = __import__(f"{package}.loggers.logger", fromlist=["Logger"])
            rank_mod = __import__(f"{package}.utilities.rank_zero", fromlist=["rank_zero_only"])
        except ImportError:
            continue
        return logger_mod.Logger, logger_mod.rank_zero_experiment, rank_mod.rank_zero_only
    raise ImportError("expman.integrations.lightning needs Lightning: "
                      "pip install 'expman-logger[lightning]' (or lightning, or pytorch_lightning)")


_Logger, rank_zero_experiment, rank_zero_only = _import_lightning()

_END_STATUS = {"success": FINISHED, "finished": FINISHED, "failed": FAILED}


class ExpmanLogger(_Logger):  # type: ignore[misc, valid-type]
    """Log a Lightning run into ``<save_dir>/<name>/<version>/``, an expman run folder.

    Args:
        name: experiment name (the folder under ``save_dir``).
        version: run name; generated (time-sortable) when None.
        save_dir: the expman base dir; None means ``$EXPMAN_DIR`` or ``./experiments``.
        experiment: log into this open Experiment instead (it is left open at the end).
        log_model: store each checkpoint ``ModelCheckpoint`` writes as an artifact
            under ``artifacts/checkpoints/``; ``last.ckpt`` (and any file rewritten
            under one name) once, its final version, when the fit ends.
        prefix: put before every metric key, joined with ``-`` (as Lightning's loggers).
        watch: watchdogs on the run, as ``Experiment(..., watch=...)``: ``["nan",
            "spike:train_loss_step"]``, or True for the default rules (docs/watch.md);
            a rule with ``action=stop`` makes the fit fail with the alert.
        **experiment_options: passed to ``Experiment`` (``flush_interval``, ``capture_env``...).

    Lightning's ``ModelCheckpoint`` saves into ``log_dir/checkpoints``, which is
    inside the run folder.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, name: str = "lightning_logs", version: str | None = None,
                 save_dir: str | os.PathLike[str] | None = None, *,
                 experiment: Experiment | None = None, log_model: bool = False,
                 prefix: str = "", watch: Any = None, **experiment_options: Any) -> None:
        super().__init__()
        self._handle = RunHandle(experiment, name, version, save_dir, experiment_options,
                                 watch)
        self._log_model = log_model
        self._prefix = prefix
        self._stored: dict[str, tuple[int, int]] = {}     # path -> signature stored
        self._rewritten: set[str] = set()       # paths Lightning rewrites: stored at the end
        self._best: tuple[str, Any] = ("", None)

    # ---- identity: where Lightning (and ModelCheckpoint) put files -------------------------
    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def version(self) -> str:
        """The run name. On rank zero, asking before anything was logged opens the run, so a
        generated name is known (``ModelCheckpoint`` broadcasts rank zero's folder)."""
        if self._handle.run_name is None and rank_zero_only.rank == 0:
            return str(self.experiment.run_name)
        return self._handle.run_name or ""

    @property
    def save_dir(self) -> str:
        """The expman base dir."""
        return str(self._handle.base_dir)

    @property
    def root_dir(self) -> str:
        """The experiment folder, which holds one folder per run."""
        return os.path.join(self.save_dir, self.name)

    @property
    def log_dir(self) -> str:
        """The run folder."""
        return os.path.join(self.root_dir, self.version)

    @property
    @rank_zero_experiment
    def experiment(self) -> Experiment:
        """The open expman ``Experiment`` (reopened if ``finalize`` closed it and Lightning
        logs again)."""
        return self._handle.get()

    # ---- logging ----------------------------------------------------------------------------
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        self.experiment.log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace | Any,
                        *args: Any, **kwargs: Any) -> None:
        """Store params as given, nested stays nested (``expman.params.framework_params``).

        Accepts dicts, ``Namespace``, dataclasses and OmegaConf configs, nested;
        listings and the lake show ``{"optim": {"lr": 1}}`` as ``optim.lr``.
        """
        converted = framework_params(params)
        if converted:
            self.experiment.log_params(converted)

    def save(self) -> None:
        """Nothing to do: expman's writer thread flushes on its own interval.

        Lightning calls this after every ``log_metrics``; a flush per step
        would make each step wait for the disk.
        """

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """With ``log_model=True``, copy each new checkpoint into the artifacts.

        A file Lightning rewrites under one name (``last.ckpt``, a fixed
        ``filename=``) would be a new artifact version at every save; it is stored
        once, as it is when the fit ends (``finalize``). A "best checkpoint"
        message is logged when the best checkpoint or its score changes (Lightning
        calls this hook for the top-k save and again for ``last.ckpt``).
        """
        if not self._log_model:
            return
        last = getattr(checkpoint_callback, "last_model_path", "") or ""
        if last:
            self._rewritten.add(last)
        paths = {getattr(checkpoint_callback, "best_model_path", "") or "",
                 *(getattr(checkpoint_callback, "best_k_models", None) or {})}
        exp = self.experiment
        for path in sorted(p for p in paths if p and p not in self._rewritten):
            if path in self._stored:
                if _signature(path) not in (None, self._stored[path]):
                    self._rewritten.add(path)       # rewritten in place: stored at the end
                continue
            self._store(exp, path)
        best = getattr(checkpoint_callback, "best_model_path", "")
        score = getattr(checkpoint_callback, "best_model_score", None)
        if best and (best, score) != self._best:
            self._best = (best, score)
            monitored = (f" ({checkpoint_callback.monitor}={float(score)!r})"
                         if score is not None else "")
            exp.info(f"best checkpoint: {Path(best).name}{monitored}")

    def _store(self, exp: Experiment, path: str) -> None:
        signature = _signature(path)
        if signature is None or self._stored.get(path) == signature:
            return                          # removed by save_top_k meanwhile, or unchanged
        save_checkpoint(exp, path)
        self._stored[path] = signature

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """"success" (and "finished") close the run FINISHED; "failed" closes it FAILED.

        On failure Lightning calls this inside its ``except``: the exception in
        flight is recorded in run.json as a ``with Experiment`` block would. A run
        passed in through ``experiment=`` is left open. Checkpoints Lightning
        rewrote (``last.ckpt``) are stored first, as they are now.
        """
        exp = self._handle.current
        try:
            if exp is not None and exp.status == RUNNING:
                for path in sorted(self._rewritten):    # their final version, once
                    self._store(exp, path)
        finally:                                        # a failed copy still closes the run
            if self._handle.opened:
                self._handle.finish(_END_STATUS.get(status, FAILED))


def _signature(path: str) -> tuple[int, int] | None:
    """(size, mtime) of a checkpoint file, None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
