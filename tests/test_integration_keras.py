"""ExpmanCallback in a real Keras 3 fit on the torch backend, checked against History."""

from __future__ import annotations

import os

import pytest

from conftest import nan_alerts_expected, need

os.environ["KERAS_BACKEND"] = "torch"       # before keras is first imported
need("torch")
keras = need("keras")
import numpy as np  # noqa: E402

import expman  # noqa: E402
from expman.integrations.keras import ExpmanCallback  # noqa: E402
from expman.watch import read_alerts  # noqa: E402

# another test module importing keras first would have fixed another backend
assert keras.backend.backend() == "torch", keras.backend.backend()

pytestmark = [
    # Keras 3.15's torch Variable.__array__ under numpy 2 (inside optimizer.get_config)
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"
                               ":DeprecationWarning"),
]


def tiny_model() -> "keras.Model":
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)], name="tiny")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse", metrics=["mae"])
    return model


def data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")


def test_epoch_values_equal_history(base):
    model = tiny_model()
    cb = ExpmanCallback("keras", "fit", base_dir=base, log_batches=True, capture_env=False)
    x, y = data()
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
                        callbacks=[cb])
    run = expman.open_run(base / "keras" / "fit")
    assert run.status == "FINISHED"
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
    for key, values in history.history.items():
        assert list(run.metrics[key].steps) == [0, 1, 2]
        assert list(run.metrics[key].values) == [float(v) for v in values], key
    # 48 training rows / 16 = 3 batches an epoch, numbered across epochs
    assert list(run.metrics["batch/loss"].steps) == list(range(9))
    assert run.metrics["batch/loss"].values[2] == pytest.approx(history.history["loss"][0])
    p = run.params                                     # stored nested
    assert p["model"] == {"name": "tiny", "count_params": model.count_params()} == {
        "name": "tiny", "count_params": 49}
    assert p["optimizer"]["name"] == "adam"
    assert p["optimizer"]["learning_rate"] == pytest.approx(0.01)
    assert p["fit"] == {"epochs": 3, "steps": 3}


def test_run_passed_in_stays_open_and_batches_every_n(make_run):
    exp = make_run("keras")
    x, y = data()
    tiny_model().fit(x, y, epochs=2, batch_size=16, verbose=0,
                     callbacks=[ExpmanCallback(experiment=exp, log_batches=3)])
    assert exp.status == "RUNNING"
    exp.close()
    run = expman.open_run(exp.run_dir)
    assert list(run.metrics["batch/loss"].steps) == [2, 5]
    assert list(run.metrics["loss"].steps) == [0, 1]


def test_bad_log_batches_names_the_value():
    with pytest.raises(expman.ExpmanValueError, match="log_batches.*-1"):
        ExpmanCallback(log_batches=-1)


def test_watch_records_an_alert_for_a_nan_loss(base, make_run):
    """``ExpmanCallback(watch=...)`` starts the run's watchdogs: NaN targets from the
    third batch on make the loss NaN in a real fit, an ``alert`` at each series'
    first NaN point (the batch series at batch 2, the epoch ones at epoch 0)."""
    with pytest.raises(expman.ExpmanValueError, match="bogus"):
        ExpmanCallback("keras", base_dir=base, watch="bogus")
    x, y = data()
    y[32:] = np.nan                                 # batches of 16, in order: batch 2 on
    cb = ExpmanCallback("keras", "nan", base_dir=base, watch=["nan"], log_batches=True,
                        capture_env=False, system_metrics=False)
    tiny_model().fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[cb])
    run = base / "keras" / "nan"
    expected = nan_alerts_expected(run)
    assert {("batch/loss", 2), ("loss", 0)} <= expected
    alerts = read_alerts(run)
    assert {(a.metric, a.step) for a in alerts} == expected
    assert all(a.rule == "nan" for a in alerts)

    exp = make_run("keras", system_metrics=False)   # a run passed in is watched too
    tiny_model().fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                     callbacks=[ExpmanCallback(experiment=exp, watch=["nan:loss"])])
    exp.close()
    assert [(a.metric, a.step) for a in read_alerts(exp.run_dir)] == [("loss", 0)]
