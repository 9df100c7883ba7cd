"""Every python example of docs/integrations.md's TensorBoard and wandb part runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import need, run_python

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def test_examples_run_in_order(tmp_path, monkeypatch):
    for module in ("torch", "tensorboard", "numpy", "matplotlib"):
        need(module)
    part = DOC.read_text(encoding="utf-8").split("<!-- tensorboard-wandb")[1]
    part = part.split("\n## Overhead")[0]
    blocks = re.findall(r"```python\n(.*?)```", part, re.S)
    assert len(blocks) >= 6
    monkeypatch.delenv("EXPMAN_DIR", raising=False)
    proc = run_python("\n".join(blocks), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "['resnet__seed0']" in out and "[0, 1, 2]" in out and "2.png" in out
    assert "['best'] True" in out and "epoch 1: loss 0.5\na warning\n" in out
    assert "baseline baseline" in out
