"""Copying expman runs into an MLflow tracking store (``expman export-mlflow``).

A team that keeps its runs on an MLflow server can take expman runs there: each
run becomes an MLflow run in the experiment of the same name, with its params
flattened the one way the read model does (expman.readmodel.flatten_params), every
metric point with its step and time (sent in batches), its tags, notes, group and
status, and every artifact file. An exported run is tagged ``expman.run`` with its
id, and a second export of it is skipped, so exporting a base dir again sends
only new runs. One run that cannot be exported never stops the others.

MLflow is imported only here (the ``mlflow`` extra: ``mlflow-skinny`` is enough).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from expman.errors import ExpmanError, ExpmanValueError
from expman.layout import ARTIFACTS_DIR, CRASHED, FAILED, FINISHED, KILLED, RUNNING
from expman.reader import Run, open_run
from expman.readmodel import flatten_params

__all__ = ["export_mlflow", "export_run_mlflow", "mlflow_tags", "RUN_TAG", "BATCH"]

RUN_TAG = "expman.run"      # MLflow tag naming the expman run an MLflow run came from
BATCH = 1000                # MLflow's limit of metric points per log_batch call
_PARAM_BATCH = 100          # and of params and of tags
_MAX_PARAM = 6000           # MLflow's longest param value
# MLflow's RunStatus names are expman's; a run whose process died is FAILED there
_STATUS = {FINISHED: FINISHED, FAILED: FAILED, KILLED: KILLED, CRASHED: FAILED, RUNNING: RUNNING}


def mlflow_tags(run: Run) -> dict[str, str]:
    """The MLflow tags of an expman run: its tags (``key=value`` ones split), the tags
    a script set through expman.mlflow, notes, group, status and its id."""
    tags: dict[str, str] = {}
    for t in run.tags:
        key, eq, value = t.partition("=")
        tags[key if eq else t] = value if eq else ""
    stored = run.meta.get("mlflow_tags")
    if isinstance(stored, dict):
        tags.update({str(k): str(v) for k, v in stored.items()
                     if isinstance(k, str) and k != "mlflow.parentRunId"})
    notes, group = run.meta.get("notes"), run.meta.get("group")
    if isinstance(notes, str) and notes:
        tags["mlflow.note.content"] = notes
    if isinstance(group, str) and group:
        tags["expman.group"] = group
    tags["mlflow.runName"] = run.run_name
    tags["expman.status"] = run.status
    tags[RUN_TAG] = run.id
    return tags


def _ms(seconds: Any) -> int | None:
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        return int(round(float(seconds) * 1000))
    return None


def _artifact_files(run_dir: Path) -> Iterator[tuple[Path, str]]:
    """(file, folder inside the artifacts) of every regular file under artifacts/;
    links are not followed and not exported."""
    root = run_dir / ARTIFACTS_DIR
    if root.is_symlink() or not root.is_dir():
        return
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                rel = Path(folder).relative_to(root).as_posix()
                yield path, "" if rel == "." else rel


def export_run_mlflow(run: Run, client: Any, experiment: str | None = None) -> dict[str, Any]:
    """Write one run through ``client`` (an ``mlflow.MlflowClient``); returns what was
    sent. A run exported before (its ``expman.run`` tag) is skipped."""
    from mlflow.entities import Metric, Param
    name = experiment or run.experiment
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(name)
    if "'" not in run.id:      # MLflow's filter strings cannot quote a quote
        earlier = client.search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{run.id}'",
                                     max_results=1)
        if earlier:
            return {"run": run.id, "mlflow_run_id": earlier[0].info.run_id, "skipped": True}
    tags = mlflow_tags(run)
    created = client.create_run(experiment_id, start_time=_ms(run.meta.get("start_time")),
                                tags=tags, run_name=run.run_name)
    run_id = created.info.run_id
    params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in flatten_params(run.params).items()]
    for i in range(0, len(params), _PARAM_BATCH):
        client.log_batch(run_id, params=params[i:i + _PARAM_BATCH])
    points = 0
    batch: list[Any] = []
    for key, series in run.metrics.items():
        for step, value, t in zip(series.steps, series.values, series.times):
            batch.append(Metric(key, float(value), _ms(t) or 0, int(step)))
            if len(batch) == BATCH:
                client.log_batch(run_id, metrics=batch)
                points += len(batch)
                batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
        points += len(batch)
    artifacts = 0
    for path, folder in _artifact_files(run.path):
        client.log_artifact(run_id, str(path), folder or None)
        artifacts += 1
    status = _STATUS.get(run.status, FAILED)
    if status != RUNNING:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):     # MLflow prints a "View run" link
            client.set_terminated(run_id, status, end_time=_ms(run.meta.get("end_time")))
    return {"run": run.id, "mlflow_run_id": run_id, "skipped": False, "params": len(params),
            "points": points, "artifacts": artifacts, "tags": len(tags), "status": status}


def export_mlflow(runs: Iterable[str | os.PathLike[str]], tracking_uri: str,
                  experiment: str | None = None) -> dict[str, Any]:
    """Export run folders into the MLflow store at ``tracking_uri`` (a server URL,
    ``sqlite:///...``; MLflow 3 refuses new runs in a folder store). Returns
    ``{"exported": [...], "failed": {path: why}}``; one failing run never stops the others."""
    import warnings
    with warnings.catch_warnings():     # MLflow's store warns about its own dependencies
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return _export(runs, tracking_uri, experiment)


def _export(runs: Iterable[str | os.PathLike[str]], tracking_uri: str,
            experiment: str | None) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    try:
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)        # a store that refuses says so now
    except MlflowException as e:
        raise ExpmanValueError(f"MLflow tracking URI {tracking_uri!r}: {e.message}") from None
    exported: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for path in runs:
        try:
            exported.append(export_run_mlflow(open_run(path), client, experiment))
        except (OSError, ExpmanError, ValueError) as e:
            failed[os.fspath(path)] = str(e)
        except MlflowException as e:    # a refused value, a server error: this run only
            failed[os.fspath(path)] = f"MlflowException: {e.message}"
    return {"exported": exported, "failed": failed}
