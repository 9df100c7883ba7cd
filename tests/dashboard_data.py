"""Runs for the dashboard tests, made with expman.Experiment: demo-like curves,
a PNG and a text artifact, and a run whose name, param and message are markup."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import expman
from expman import layout

XSS_SCRIPT = "<script>window.__pwned = 1</script>"
XSS_IMG = '"><img src=x onerror="window.__pwned=2">'
CHROMIUM = os.environ.get("EXPMAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch_chromium(pw: Any) -> Any:
    """Debian's Chromium for a test, through Playwright's ``pw``. The browser is not
    under test: a sanitizer preloaded into this Python (tools/sanitize.sh) is not
    passed on to it (Chromium hangs under one)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, env=env)

def png_bytes(width: int = 8, height: int = 8) -> bytes:
    """A small RGB gradient PNG, written by hand (zlib + struct, no imaging library)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 30 % 256, y * 30 % 256, 128))
                    for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def demo_run(base: Path, run_name: str, lr: float, steps: int = 400, seed: int = 0,
             artifacts: bool = True, tags: list[str] | None = None) -> Path:
    """A finished run shaped like `expman demo`'s: train_loss/acc per step, val_* every 20."""
    rng = random.Random(seed)
    with expman.Experiment("demo", run_name, base_dir=base, capture_env=True, tags=tags,
                           system_metrics=False) as exp:     # the tests count series and points
        exp.log_params({"learning_rate": lr, "batch_size": 32, "model": "mlp",
                        "optimizer": {"name": "sgd", "momentum": 0.9}, "seed": seed})
        exp.info("Starting training loop")
        for step in range(steps):
            loss = 2.0 * math.exp(-step * lr / 2) + 0.1 + rng.random() * 0.05
            exp.log_metrics({"train_loss": loss, "train_acc": 1 - loss / 3}, step=step)
            if step % 20 == 19:
                exp.log_metrics({"val_loss": loss * 1.1}, step=step)
        exp.warn("learning rate may be too high")
        if artifacts:
            tmp = base.parent / f"{run_name}-art"
            tmp.mkdir(exist_ok=True)
            (tmp / "sample.png").write_bytes(png_bytes())
            (tmp / "notes.txt").write_text("epoch notes\nline 2 <b>not bold</b>\n")
            (tmp / "config.json").write_text(json.dumps({"lr": lr}))
            for f in ("sample.png", "notes.txt", "config.json"):
                exp.save_artifact(tmp / f)
        return exp.run_dir


def hostile_run(base: Path) -> Path:
    """A run whose folder name, recorded name, param and message are markup."""
    with expman.Experiment("demo", "hostile", base_dir=base, capture_env=False,
                           system_metrics=False) as exp:
        exp.log_params({"note": XSS_SCRIPT, "title": XSS_IMG})
        exp.info(XSS_IMG)
        exp.error(XSS_SCRIPT)
        for step in range(50):
            exp.log_metrics({"train_loss": 1.0 / (step + 1)}, step=step)
        path = exp.run_dir
    target = path.with_name(XSS_IMG.replace("/", "_"))        # a folder name can hold markup
    path.rename(target)
    meta = json.loads((target / layout.RUN_FILE).read_text())
    meta["run_name"] = XSS_SCRIPT                               # and so can a crafted run.json
    (target / layout.RUN_FILE).write_text(json.dumps(meta))
    return target


def failed_run(base: Path) -> Path:
    """A run that ended in an exception: its exit info names the type, message and place."""
    try:
        with expman.Experiment("demo", "failed", base_dir=base, capture_env=False,
                               system_metrics=False) as exp:
            exp.log_metrics({"train_loss": 3.0}, step=0)
            raise ZeroDivisionError("loss exploded")
    except ZeroDivisionError:
        pass
    return exp.run_dir


def sweep_run(base: Path, name: str, lr: float, seed: int, steps: int = 3000) -> Any:
    """A run of the sweep: loss falls with lr; one spike at a seed-dependent step."""
    import numpy as np
    rng = np.random.default_rng(seed * 100 + int(lr * 1000))
    loss = np.exp(-np.arange(steps) * lr / 50) + rng.random(steps) * 0.1
    loss[(500 + 37 * seed) % steps] = 50.0 + seed          # a spike a band must keep
    with expman.Experiment("sweep", name, base_dir=base, system_metrics=False,
                           group=f"lr{lr}", tags=["sweep", f"seed{seed}"]) as exp:
        exp.log_params({"lr": lr, "seed": seed, "optim": {"name": "adam" if lr > 0.05 else "sgd"}})
        for step in range(steps):
            exp.log_metrics({"loss": float(loss[step])}, step=step)
    return loss
