"""``expman demo``: a short synthetic training loop that writes a real run and
shows it, then suggests where to look next (``expman serve`` among them)."""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

from expman.cli._common import BASE, base_arg, command
from expman.cli._text import CliError, Progress, out
from expman.layout import BASE_DIR_ENV


def _demo_data(rng: Any, n: int, dims: int) -> tuple[list[list[float]], list[int]]:
    """Two overlapping Gaussian blobs with 5 % label noise: learnable, not trivially."""
    xs, ys = [], []
    for _ in range(n):
        y = rng.random() < 0.5
        x = [rng.gauss(0.6 if y else -0.6, 1.0) * (1.0 + 0.3 * j) for j in range(dims)]
        if rng.random() < 0.05:
            y = not y
        xs.append(x)
        ys.append(int(y))
    return xs, ys


def _loss_acc(w: list[float], b: float, xs: list[list[float]], ys: list[int]) -> tuple[float, float]:
    loss = correct = 0.0
    for x, y in zip(xs, ys):
        z = b + sum(wi * xi for wi, xi in zip(w, x))
        p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
        loss -= math.log(max(p, 1e-12)) if y else math.log(max(1.0 - p, 1e-12))
        correct += (p >= 0.5) == bool(y)
    return loss / len(xs), correct / len(xs)


def _next_seed(base: Path) -> int:
    """The number of demo runs already in ``base``: each `expman demo` draws a
    different curve (the seed is recorded in the run's params, so ``--seed`` redoes one)."""
    exp_dir = base / "demo"
    try:
        return sum(1 for p in exp_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import json
    import random
    import tempfile

    from expman import Experiment

    if args.steps < 1:
        raise CliError("--steps must be at least 1")
    base = base_arg(args, writes="demo")
    seed = _next_seed(base) if args.seed is None else args.seed
    rng = random.Random(seed)
    dims, batch, lr0 = 4, 32, 0.02
    train_x, train_y = _demo_data(rng, 1024, dims)
    val_x, val_y = _demo_data(rng, 256, dims)
    evals = max(1, args.steps // 10)
    params = {"model": "logistic_regression", "optimizer": "sgd", "learning_rate": lr0,
              "lr_schedule": "cosine", "batch_size": batch, "steps": args.steps,
              "seed": seed, "data": {"features": dims, "train_size": len(train_x),
                                           "val_size": len(val_x), "label_noise": 0.05}}
    w = [rng.gauss(-0.4, 0.2) for _ in range(dims)]     # a bad start: a visible curve
    b = 0.0
    progress = Progress(args.steps, "demo: training")
    with Experiment("demo", base_dir=base) as exp:
        exp.log_params(params)
        exp.info(f"Starting training loop: {args.steps} steps of SGD, batch {batch}")
        for step in range(args.steps):
            lr = lr0 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            idx = [rng.randrange(len(train_x)) for _ in range(batch)]
            gw, gb = [0.0] * dims, 0.0
            for i in idx:
                x, y = train_x[i], train_y[i]
                z = b + sum(wi * xi for wi, xi in zip(w, x))
                err = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))) - y
                gb += err
                for j in range(dims):
                    gw[j] += err * x[j]
            w = [wi - lr * g / batch for wi, g in zip(w, gw)]
            b -= lr * gb / batch
            loss, acc = _loss_acc(w, b, [train_x[i] for i in idx], [train_y[i] for i in idx])
            exp.log_metrics({"train_loss": loss, "train_acc": acc, "lr": lr}, step=step)
            if step % evals == evals - 1 or step == args.steps - 1:
                vloss, vacc = _loss_acc(w, b, val_x, val_y)
                exp.log_metrics({"val_loss": vloss, "val_acc": vacc}, step=step)
                exp.info(f"step {step + 1}/{args.steps}: val_loss={vloss:.4f} val_acc={vacc:.3f}")
            progress.add(1)
            if args.delay:
                time.sleep(args.delay)
        progress.close()
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.json"
            weights.write_text(json.dumps({"weights": w, "bias": b}, indent=2))
            exp.save_artifact(weights)
        exp.info("Training finished; weights saved as artifacts/model.json")
        run_dir = exp.run_dir
        run_id = f"demo/{exp.run_name}"
    out(f"demo run written to {run_dir}")
    out()
    from expman.cli.runs import print_show, run_info
    from expman.reader import open_run
    print_show(run_info(open_run(run_dir), 5))
    default = not (getattr(args, "base_dir", None) or os.environ.get(BASE_DIR_ENV))
    flag = "" if default else f" --base-dir {base}"
    out()
    out("look further:")
    for cmd in (f"expman list{'' if default else ' ' + str(base)}",
                f"expman show {run_id}{flag}",
                f"expman tail {run_id}{flag}",
                f"expman export {run_id} -o demo.csv{flag}",
                f"expman compare demo/latest {run_id}{flag}   # after a second `expman demo`",
                f"expman serve{'' if default else ' ' + str(base)}   # the dashboard, in a browser"):
        out(f"  {cmd}")
    return 0


def add_parser(subparsers: Any) -> None:
    p = command(subparsers, "demo",
                "run a short synthetic training loop into ./experiments and show it",
                "expman demo --steps 300", cmd_demo, [BASE])
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--delay", type=float, default=0.01,
                   help="seconds to sleep per step, so there is time to `expman tail --follow` "
                        "it (default 0.01)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: the number of demo runs already in the base dir, "
                        "so each demo differs)")
