"""``expman.integrations.optuna.ExpmanCallback`` with a real Optuna study: each
trial is a run in the study's group holding what Optuna recorded for it."""

from __future__ import annotations

import pytest

import expman
from expman.integrations.optuna import INTERMEDIATE, PRUNED_TAG, ExpmanCallback

from conftest import need


def test_each_trial_is_a_run_in_the_study_group(tmp_path):
    optuna = need("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        x = trial.suggest_float("x", -3.0, 3.0)
        layers = trial.suggest_int("layers", 1, 4)
        opt = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        trial.set_user_attr("note", f"trial {trial.number}")
        for step in range(4):
            trial.report((x - 1.0) ** 2 + layers / (step + 1), step)
            if trial.number == 2 and step == 1:
                raise optuna.TrialPruned()
        if trial.number == 3:
            raise ValueError("diverged")
        return (x - 1.0) ** 2 + layers + (opt == "sgd")

    study = optuna.create_study(study_name="tune", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=5, callbacks=[ExpmanCallback(base_dir=tmp_path)],
                   catch=(ValueError,))
    runs = {r.run_name: r for r in expman.list_runs(tmp_path)}
    assert set(runs) == {f"trial-{t.number}" for t in study.trials}
    for t in study.trials:
        run = expman.open_run(tmp_path / "tune" / f"trial-{t.number}")
        assert run.meta["group"] == "tune"
        assert run.params == t.params
        inter = run.metrics[INTERMEDIATE]
        assert dict(zip((int(s) for s in inter.steps), (float(v) for v in inter.values))) == \
            t.intermediate_values
        optuna_record = run.meta["optuna"]
        assert (optuna_record["trial"], optuna_record["state"]) == (t.number, t.state.name)
        assert optuna_record["user_attrs"] == {"note": f"trial {t.number}"}
        assert optuna_record["datetime_start"] == t.datetime_start.isoformat()
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert (run.status, run.tags) == ("FINISHED", [])
            assert list(run.metrics["value"].values) == [t.value]
            assert list(run.metrics["value"].steps) == [3]
    pruned = expman.open_run(tmp_path / "tune" / "trial-2")
    assert pruned.meta["optuna"]["state"] == "PRUNED" and pruned.tags == [PRUNED_TAG]
    assert pruned.status == "FINISHED"
    # Optuna gives a pruned trial its last intermediate value as its value; so does the run
    assert study.trials[2].value == study.trials[2].intermediate_values[1]
    assert (list(pruned.metrics["value"].steps), list(pruned.metrics["value"].values)) == (
        [1], [study.trials[2].value])
    assert list(pruned.metrics[INTERMEDIATE].steps) == [0, 1]
    assert any("pruned at step 1" in m["msg"] for m in pruned.messages)
    failed = expman.open_run(tmp_path / "tune" / "trial-3")
    assert failed.status == "FAILED" and failed.meta["optuna"]["state"] == "FAIL"
    assert any(m["level"] == "error" and "trial 3 failed" in m["msg"] for m in failed.messages)
    best = expman.open_run(tmp_path / "tune" / f"trial-{study.best_trial.number}")
    assert best.metrics["value"].last == study.best_value


def test_multi_objective_names(tmp_path):
    optuna = need("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="mo", directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 2.0), n_trials=2,
                   callbacks=[ExpmanCallback("moexp", tmp_path, metric_name=["loss", "acc"],
                                             group="g")])
    run = expman.open_run(tmp_path / "moexp" / "trial-1")
    assert run.meta["group"] == "g"
    assert list(run.metrics["loss"].values) == [study.trials[1].values[0]]
    assert list(run.metrics["acc"].values) == [2.0]
    with pytest.raises(ValueError, match="2 objectives"):
        ExpmanCallback(base_dir=tmp_path, metric_name=["one"])._metric_names(2)


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    from conftest import run_python
    from test_mlflow import doc_example
    need("optuna")
    monkeypatch.delenv("EXPMAN_DIR", raising=False)
    proc = run_python(doc_example("optuna"), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8 {'quadratic'} True"
