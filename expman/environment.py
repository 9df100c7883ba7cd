"""What the run ran on: cheap facts now, slow probes (git, packages) in a thread."""

from __future__ import annotations

import os
import sys
from typing import Any

from expman import layout

_ENV_PREFIXES = ("SLURM_", "PBS_", "LSB_", "OMP_", "MKL_", "NCCL_", "TORCHELASTIC_")
_ENV_NAMES = {"CUDA_VISIBLE_DEVICES", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
              "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "HIP_VISIBLE_DEVICES",
              "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_DEFAULT_ENV", "CONDA_PREFIX"}


def quick() -> dict[str, Any]:
    """Facts that cost microseconds: recorded before Experiment() returns."""
    import getpass
    import platform
    try:
        user = getpass.getuser()
    except Exception:          # no login name in some containers
        user = None
    from expman._version import __version__
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": layout.hostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "user": user,
        "expman_version": __version__,
        "env_vars": {k: v for k, v in os.environ.items()
                     if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)},
    }


def _git(args: list[str], cwd: str) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def slow(cwd: str) -> dict[str, Any]:
    """git state and installed packages: tens to hundreds of ms, run off the caller's path."""
    result: dict[str, Any] = {}
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit:
        status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
        result["git"] = {
            "commit": commit,
            "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd),
            "dirty": bool(status) if status is not None else None,
            "root": _git(["rev-parse", "--show-toplevel"], cwd),
        }
    try:
        from importlib import metadata
        packages = {}
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if name:
                packages[name] = dist.version
        result["packages"] = dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))
    except Exception as e:     # a broken dist-info must not fail the run
        result["packages_error"] = repr(e)
    return result
