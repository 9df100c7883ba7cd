"""Which rank this process is, and the run name every rank agrees on without talking.

Ranks of one job must open one run folder, but they cannot ask each other for
its name (the logger starts before, or without, any process group). So the name
comes from what the launcher gave every rank alike, in this order:

1. ``run_name=`` passed to Experiment (the same string in every rank);
2. ``TORCHELASTIC_RUN_ID`` (torchrun ``--rdzv-id``, or the uuid of
   ``--standalone``), unless it is torchrun's default ``none``;
3. SLURM: ``slurm-<SLURM_JOB_ID>`` plus ``.<SLURM_STEP_ID>`` when set.

With more than one rank and none of these, Experiment refuses with an
ExpmanValueError: a name drawn per process would split the job into unrelated
runs, and one derived from MASTER_ADDR/PORT repeats across jobs.
Rank and world size come from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun,
accelerate, deepspeed, Lightning's launchers) or ``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from expman.errors import ExpmanValueError

__all__ = ["Launch", "detect"]


@dataclass(frozen=True)
class Launch:
    """This process's place in a (possibly) multi-rank job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_name: str | None = None
    source: str | None = None     # "torchelastic", "slurm", "env" or None (one process)
    restart: int = 0              # torchrun restart count: > 0 means resume the run

    @property
    def joined(self) -> bool:
        """True when several ranks write one run folder."""
        return self.world_size > 1


MAX_WORLD_SIZE = 1 << 16          # ranks of one job; run.json's world_size is bounded alike
_DIGITS = re.compile(r"[0-9]+")


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """A launcher's number: ASCII digits only (int() would also take '1_0' as 10,
    '+1', and Arabic-Indic digits), at most MAX_WORLD_SIZE."""
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ExpmanValueError(f"environment variable {name} is not set")
        return default
    text = raw.strip(" \t\r\n") if isinstance(raw, str) else raw
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        raise ExpmanValueError(f"environment variable {name}={raw!r:.40} is not an integer "
                               "written in ASCII digits 0-9")
    value = int(text) if len(text) <= 12 else MAX_WORLD_SIZE + 1
    if value > MAX_WORLD_SIZE:
        raise ExpmanValueError(f"environment variable {name}={text:.40} is larger than "
                               f"{MAX_WORLD_SIZE}, the most ranks expman supports in one run")
    return value


def agreed_run_name(env: Mapping[str, str]) -> str | None:
    """The run name every rank derives alike from the launcher's variables, or None."""
    run_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id and run_id != "none":
        return run_id
    job = env.get("SLURM_JOB_ID", "").strip()
    if job:
        step = env.get("SLURM_STEP_ID", "").strip()
        return f"slurm-{job}" + (f".{step}" if step else "")
    return None


def detect(run_name: str | None, env: Mapping[str, str] | None = None) -> Launch:
    """This process's rank and world size, and the run name to use (see module doc)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK", 0)
        source = "torchelastic" if "TORCHELASTIC_RUN_ID" in env else "env"
        rank_var = "RANK"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID", 0)
        source, rank_var = "slurm", "SLURM_PROCID"
    else:
        return Launch(run_name=run_name)
    if world < 1 or rank >= world:
        raise ExpmanValueError(f"{rank_var}={rank} is not a rank of a world of {world} processes")
    if world == 1:
        return Launch(run_name=run_name, source=source)
    name = run_name if run_name is not None else agreed_run_name(env)
    if name is None:
        raise ExpmanValueError(
            f"this process is rank {rank} of {world} ({source}), but the ranks have no run "
            "name in common: pass the same run_name= in every rank, or launch with "
            "torchrun --rdzv-id ID (or --standalone), or under SLURM")
    restart = _int(env, "TORCHELASTIC_RESTART_COUNT", 0) if source == "torchelastic" else 0
    return Launch(rank, world, local, name, source, restart)
