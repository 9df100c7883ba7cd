"""Overhead of the framework bridges: steps/s of the same tiny fit with each logger.

    python bench/integrations.py                 # both frameworks, 5 rounds, ~3 min
    python bench/integrations.py --only lightning --rounds 3 --steps 300

Lightning: one epoch of ``--steps`` batches of a 4->1 linear model, every step
logged (``log_every_n_steps=1``), with no logger, ``ExpmanLogger``,
``CSVLogger`` and ``TensorBoardLogger``. Hugging Face: ``Trainer.train`` for
``--steps`` steps of the same kind of model, ``logging_steps=1``, with no
reporting, ``ExpmanCallback`` and transformers' ``TensorBoardCallback``.

The model is tiny on purpose: the time per step is the framework's own loop plus
the logger, so the logger's share shows. Variants run interleaved (A B C D, A B C
D, ...) in this one process so they share the machine's load; the table gives the
median steps/s of each and its ratio to running with no logger.

End-to-end steps/s on a shared machine is noisy, so a second table times the
logging hook alone: the call each framework makes per logged step
(``Logger.log_metrics`` with Lightning's metrics dict, ``on_log`` with the
Trainer's logs dict), median microseconds per call over ``--calls`` calls.
Prints Markdown tables (docs/integrations.md quotes them).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the expman built in place


def _data(steps: int, batch: int = 8) -> Any:
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return torch.utils.data.TensorDataset(x, y)


# ---- Lightning --------------------------------------------------------------------------------
def lightning_variants(steps: int, root: Path) -> dict[str, Callable[[], float]]:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from expman.integrations.lightning import ExpmanLogger

    class Linear(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Timer(pl.Callback):
        """From the first batch to the end of training: the loop, not the Trainer's setup."""

        def on_train_batch_start(self, *args: Any) -> None:
            if not hasattr(self, "t0"):
                self.t0 = time.perf_counter()

        def on_train_end(self, *args: Any) -> None:
            self.seconds = time.perf_counter() - self.t0

    loader = torch.utils.data.DataLoader(_data(steps), batch_size=8)
    counter = iter(range(1 << 30))

    def fit(make_logger: Callable[[Path], Any]) -> float:
        out = root / f"pl{next(counter)}"
        timer = Timer()
        trainer = pl.Trainer(logger=make_logger(out), max_epochs=1, accelerator="cpu",
                             log_every_n_steps=1, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=out, callbacks=[timer])
        trainer.fit(Linear(), loader)
        return steps / timer.seconds

    return {
        "no logger": lambda: fit(lambda out: False),
        "ExpmanLogger": lambda: fit(lambda out: ExpmanLogger("bench", save_dir=out,
                                                             capture_env=False)),
        "CSVLogger": lambda: fit(lambda out: CSVLogger(out)),
        "TensorBoardLogger": lambda: fit(lambda out: TensorBoardLogger(out)),
    }


# ---- Hugging Face -----------------------------------------------------------------------------
def transformers_variants(steps: int, root: Path) -> dict[str, Callable[[], float]]:
    import torch
    import transformers
    from transformers.integrations import TensorBoardCallback

    from expman.integrations.transformers import ExpmanCallback

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x: Any, labels: Any) -> dict[str, Any]:
            return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}

    class Timer(transformers.TrainerCallback):
        """From the first step to the end of training (added last: loggers' ends included)."""

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if not hasattr(self, "t0"):
                self.t0 = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds = time.perf_counter() - self.t0

    data = [{"x": x, "labels": y} for x, y in _data(steps)]
    counter = iter(range(1 << 30))

    def train(make_callbacks: Callable[[Path], list[Any]]) -> float:
        out = root / f"hf{next(counter)}"
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = transformers.Trainer(model=Linear(), args=args, train_dataset=data,
                                       callbacks=make_callbacks(out))
        # no log line printed per step
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        timer = Timer()
        trainer.add_callback(timer)
        trainer.train()
        return steps / timer.seconds

    def tensorboard(out: Path) -> list[Any]:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")
        return [TensorBoardCallback()]

    return {
        "no reporting": lambda: train(lambda out: []),
        "ExpmanCallback": lambda: train(lambda out: [ExpmanCallback("bench", base_dir=out,
                                                                    capture_env=False)]),
        "TensorBoardCallback": lambda: train(tensorboard),
    }


def measure(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    next(iter(variants.values()))()            # warm-up: imports, first-call costs
    for _ in range(rounds):
        for name, run in variants.items():
            gc.collect()
            results[name].append(run())
    return results


# ---- the hook alone ---------------------------------------------------------------------------
def hook_costs(calls: int, root: Path, which: list[str]) -> dict[str, float]:
    """Median microseconds per logging call, in blocks of 100 calls."""
    from types import SimpleNamespace
    hooks: dict[str, tuple[Callable[[int], None], Callable[[], None]]] = {}
    if "lightning" in which:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        from expman.integrations.lightning import ExpmanLogger
        metrics = {"train_loss": 0.25, "epoch": 0.0}
        for name, logger in [
                ("ExpmanLogger.log_metrics", ExpmanLogger("hook", save_dir=root / "plh",
                                                          capture_env=False)),
                ("CSVLogger.log_metrics", CSVLogger(root / "plh")),
                ("TensorBoardLogger.log_metrics", TensorBoardLogger(root / "plh"))]:
            def call(step: int, logger: Any = logger) -> None:
                logger.log_metrics(metrics, step)
                logger.save()          # Lightning calls save() after every log_metrics
            hooks[name] = (call, lambda logger=logger: logger.finalize("success"))
    if "transformers" in which:
        from transformers.integrations import TensorBoardCallback

        from expman.integrations.transformers import ExpmanCallback
        logs = {"loss": 0.25, "grad_norm": 1.5, "learning_rate": 1e-4, "epoch": 0.5}
        args = SimpleNamespace(run_name=None, output_dir=str(root / "hfh"),
                               to_dict=lambda: {}, to_json_string=lambda: "{}")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(root / "hfh" / "tb")
        for name, cb in [("ExpmanCallback.on_log", ExpmanCallback("hook", base_dir=root / "hfh",
                                                                 capture_env=False)),
                         ("TensorBoardCallback.on_log", TensorBoardCallback())]:
            state = SimpleNamespace(is_world_process_zero=True, global_step=0,
                                    is_hyper_param_search=False)
            cb.on_train_begin(args, state, None)

            def call(step: int, cb: Any = cb, state: Any = state) -> None:
                state.global_step = step
                cb.on_log(args, state, None, logs=dict(logs))
            hooks[name] = (call, lambda cb=cb, state=state: cb.on_train_end(args, state, None))
    out: dict[str, float] = {}
    for name, (call, close) in hooks.items():
        blocks = []
        step = 0
        for _ in range(max(1, calls // 100)):
            t0 = time.perf_counter_ns()
            for _ in range(100):
                call(step)
                step += 1
            blocks.append((time.perf_counter_ns() - t0) / 100 / 1000)
        close()
        out[name] = statistics.median(blocks)
    return out


def table(title: str, results: dict[str, list[float]]) -> str:
    base_name = next(iter(results))
    base = statistics.median(results[base_name])
    lines = [f"| {title} | steps/s (median) | range | vs {base_name} |", "|---|---:|---:|---:|"]
    for name, values in results.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:,.0f} | {min(values):,.0f}-{max(values):,.0f} "
                     f"| {med / base:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["lightning", "transformers"], action="append")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--calls", type=int, default=5000)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    which = args.only or ["lightning", "transformers"]
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{args.steps} steps x {args.rounds} rounds, interleaved")
    with tempfile.TemporaryDirectory() as tmp:
        if "lightning" in which:
            import lightning
            _quiet()
            print(f"\nlightning {lightning.__version__}\n")
            print(table("Lightning logger", measure(lightning_variants(args.steps, Path(tmp)),
                                                    args.rounds)))
        if "transformers" in which:
            import transformers
            _quiet()
            print(f"\ntransformers {transformers.__version__}\n")
            print(table("HF Trainer reporting", measure(
                transformers_variants(args.steps, Path(tmp)), args.rounds)))
        costs = hook_costs(args.calls, Path(tmp), which)
        print(f"\n| logging hook, one call | us per call (median of {args.calls // 100} "
              "blocks of 100) |\n|---|---:|")
        for name, us in costs.items():
            print(f"| {name} | {us:,.1f} |")
    return 0


def _quiet() -> None:
    """Lightning and transformers set their loggers' levels on import: lower them after."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
