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


# The working directory may be a repository someone else configured: git must not
# run its commands (core.fsmonitor is one, executed by status and diff-index alike)
# nor write to it (a refreshed index under index.lock, which a git in the user's
# shell would then find taken). So every call disables the fsmonitor and optional
# locks, and the dirty check is diff-index (stat data only: no clean filters run,
# no index written), which may call a touched but unchanged file dirty.
_GIT_SAFE = ["-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
             "--no-optional-locks"]


def _git_run(args: list[str], cwd: str) -> tuple[int, str] | None:
    import subprocess
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    try:
        out = subprocess.run(["git", *_GIT_SAFE, *args], cwd=cwd, capture_output=True, text=True,
                             timeout=5, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.returncode, out.stdout.strip()


def _git(args: list[str], cwd: str) -> str | None:
    got = _git_run(args, cwd)
    return got[1] if got is not None and got[0] == 0 else None


def slow(cwd: str) -> dict[str, Any]:
    """git state and installed packages: tens to hundreds of ms, run off the caller's path."""
    result: dict[str, Any] = {}
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit:
        dirty = _git_run(["diff-index", "--quiet", "HEAD", "--"], cwd)
        result["git"] = {
            "commit": commit,
            "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd),
            "dirty": {0: False, 1: True}.get(dirty[0]) if dirty is not None else None,
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
