"""Every example in docs/integrations.md runs as written, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import expman
from conftest import need_installed

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)\n```", re.S)
# the module each example needs, and a line of its output that shows it worked
NEEDS = {
    "lightning": ("lightning", "artifacts: ['checkpoints/"),
    "transformers": ("transformers", "eval_loss {10: "),
    "keras": ("keras", "epoch metrics equal History: ['loss', 'mae', 'val_loss', 'val_mae']"),
}


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text(encoding="utf-8")))


def test_every_framework_has_an_example():
    assert set(examples()) == set(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_runs_as_written(name, tmp_path):
    module, expected = NEEDS[name]
    need_installed("torch")
    need_installed(module)
    env = {k: v for k, v in os.environ.items() if k not in ("EXPMAN_DIR", "KERAS_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(expman.__file__).parent.parent),
                                         env.get("PYTHONPATH", "")])
    script = tmp_path / f"{name}_example.py"
    script.write_text(examples()[name], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(line.startswith("FINISHED ") for line in proc.stdout.splitlines()), proc.stdout
    assert expected in proc.stdout, proc.stdout
    assert list((tmp_path / "experiments").iterdir()), "the run is under ./experiments"
