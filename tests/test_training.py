"""fit_model: resume after an interruption, early stopping with best-weight restore (also on a
metric a callback logs), artifacts."""
import dataclasses
import json
import os

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.retrieval import RetrievalConfig, build_retrieval_model
from recommenders_tf.models.training import (
    TrainingConfig,
    ValidationMetrics,
    count_examples,
    fit_model,
    plot_history,
)


class Interrupt(Exception):
    pass


class InterruptAfter(tf.keras.callbacks.Callback):
    """Simulates a crash at the end of epoch `n` (after fit_model's checkpoint of it)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.n:
            raise Interrupt(f"killed after epoch {self.n}")


USERS = ["u0", "u1", "u2", "u3"]
ITEMS = ["i0", "i1", "i2", "i3", "i4"]


def retrieval_setup():
    cfg = RetrievalConfig(embedding_dim=4, id_embedding_dim=4, hidden_dims=(8,), history_len=2,
                          optimizer="adagrad", learning_rate=0.1, epochs=3, patience=0,
                          restore_best=False, verbose=0, seed=0, monitor="example_loss")
    data = {"user_id": np.array(USERS * 3),
            "item_id": np.array([ITEMS[(u + k) % 5] for k in range(3) for u in range(4)]),
            "history": np.array([["", ITEMS[u]] for _ in range(3) for u in range(4)])}
    ds = tf.data.Dataset.from_tensor_slices(data).batch(4)  # 3 steps per epoch, fixed order
    model = build_retrieval_model(cfg, USERS, ITEMS, item_counts=[3, 3, 2, 2, 2])
    return cfg, model, ds


def weights(model):
    return [v.numpy() for v in model.trainable_variables]  # same build order in every copy


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg, model, ds = retrieval_setup()
    straight = fit_model(model, ds, None, cfg, str(tmp_path / "straight"))
    expected = weights(model)
    assert straight.epochs_done == 3 and straight.initial_epoch == 0

    run = str(tmp_path / "interrupted")
    _, first, ds = retrieval_setup()
    with pytest.raises(Interrupt):
        fit_model(first, ds, None, cfg, run, callbacks=[InterruptAfter(1)])
    # A fresh process: new model object, same run_dir.
    _, second, ds = retrieval_setup()
    resumed = fit_model(second, ds, None, cfg, run)
    assert resumed.initial_epoch == 1 and resumed.epochs_done == 3
    assert int(second.optimizer.iterations.numpy()) == 3 * 3
    assert len(resumed.history["example_loss"]) == 3
    np.testing.assert_allclose(resumed.history["example_loss"],
                               straight.history["example_loss"], rtol=1e-5)
    # Equal weights need the Adagrad accumulators restored too, not just the model.
    for got, want in zip(weights(second), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with open(os.path.join(run, "history.json")) as f:
        assert len(json.load(f)["example_loss"]) == 3

    # Running again on a finished run trains nothing more, and the model gets the final
    # weights once built (deferred restoration).
    _, third, ds = retrieval_setup()
    again = fit_model(third, ds, None, cfg, run)
    assert again.initial_epoch == 3 and again.epochs_done == 3 and again.train_seconds == 0
    assert int(third.optimizer.iterations.numpy()) == 3 * 3
    third(next(iter(ds)))
    for got, want in zip(weights(third), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_steps_per_execution_trains_the_same_steps(tmp_path):
    """Grouping steps into one call changes dispatch, not arithmetic: the same weights, even
    when the 3 steps of an epoch do not divide into groups of 2."""
    cfg, model, ds = retrieval_setup()
    one = fit_model(model, ds, None, cfg, str(tmp_path / "one"))
    cfg2, grouped_model, ds2 = retrieval_setup()
    grouped = fit_model(grouped_model, ds2, None,
                        dataclasses.replace(cfg2, steps_per_execution=2), str(tmp_path / "two"))
    assert grouped.epochs_done == one.epochs_done == 3
    for a, b in zip(weights(model), weights(grouped_model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grouped.history["example_loss"], one.history["example_loss"],
                               rtol=1e-6)


def linear_model():
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, use_bias=False,
                                                       kernel_initializer="zeros")])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_early_stopping_restores_best_weights_by_hand(tmp_path):
    # Train on y = x at x = 1 from w = 0 with SGD(0.1): w <- w - 0.1 * 2 (w - 1), so
    # w = 0.2, 0.36, 0.488, ... The validation target is y = -x, val loss (w + 1)^2 grows
    # every epoch: best is epoch 1; patience 2 stops after epoch 3 and restores w = 0.2.
    train = tf.data.Dataset.from_tensor_slices(([[1.0]], [[1.0]])).batch(1)
    val = tf.data.Dataset.from_tensor_slices(([[1.0]], [[-1.0]])).batch(1)
    cfg = TrainingConfig(epochs=10, patience=2, monitor="val_loss", verbose=0)
    model = linear_model()
    result = fit_model(model, train, val, cfg, str(tmp_path))
    assert result.epochs_done == 3 and result.stopped_early
    assert result.best_epoch == 1
    np.testing.assert_allclose(result.history["val_loss"], [1.44, 1.8496, 2.214144], rtol=1e-5)
    assert result.best_value == pytest.approx(1.44, rel=1e-5)
    assert float(model.layers[0].kernel.numpy()[0, 0]) == pytest.approx(0.2, rel=1e-6)
    assert result.examples_per_epoch == 1
    assert result.examples_per_second is not None and result.examples_per_second > 0

    with open(tmp_path / "training_curves.png", "rb") as f:
        assert f.read(4) == b"\x89PNG"
    assert os.listdir(tmp_path / "tensorboard")
    # Resuming a run that already ran out of patience does not train on.
    again = fit_model(linear_model(), train, val, cfg, str(tmp_path))
    assert again.epochs_done == 3 and again.stopped_early


class RecordLogs(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))


def test_validation_metrics_callback_drives_early_stopping_by_hand(tmp_path):
    # As above, w = 0.2, 0.36, 0.488, 0.5904, 0.67232 after epochs 1..5. The metric computed
    # from the weights, -(w - 0.5)^2, peaks at epoch 3; patience 2 stops after epoch 5, and the
    # restored weights are epoch 3's.
    train = tf.data.Dataset.from_tensor_slices(([[1.0]], [[1.0]])).batch(1)
    model = linear_model()

    def closeness():
        w = float(model.layers[0].kernel.numpy()[0, 0])
        return {"closeness": -(w - 0.5) ** 2, "w": w}

    seen = RecordLogs()
    cfg = TrainingConfig(epochs=10, patience=2, monitor="val_closeness", monitor_mode="max",
                         verbose=0)
    lines = []
    result = fit_model(model, train, None, cfg, str(tmp_path), callbacks=[seen],
                       metric_callbacks=[ValidationMetrics(closeness, ["closeness"],
                                                           log=lines.append)])
    ws = [0.2, 0.36, 0.488, 0.5904, 0.67232]
    assert result.epochs_done == 5 and result.stopped_early
    assert result.best_epoch == 3
    np.testing.assert_allclose(result.history["val_closeness"],
                               [-(w - 0.5) ** 2 for w in ws], rtol=1e-4)
    assert "val_w" not in result.history  # only the names asked for are logged
    assert [sorted(k for k in logs if k.startswith("val_")) for logs in seen.logs] == \
        [["val_closeness"]] * 5
    assert float(model.layers[0].kernel.numpy()[0, 0]) == pytest.approx(0.488, rel=1e-6)
    assert len(lines) == 5 and lines[2].startswith("  epoch 3: val_closeness=")
    with open(tmp_path / "history.json") as f:
        assert len(json.load(f)["val_closeness"]) == 5
    with pytest.raises(KeyError, match=r"\['nope'\] not among the computed metrics \['w'\]"):
        fit_model(linear_model(), train, None, dataclasses.replace(cfg, epochs=1),
                  str(tmp_path / "again"),
                  metric_callbacks=[ValidationMetrics(lambda: {"w": 0.0}, ["nope"])])


def test_unknown_monitor_fails_with_the_available_metrics(tmp_path):
    train = tf.data.Dataset.from_tensor_slices(([[1.0]], [[1.0]])).batch(1)
    cfg = TrainingConfig(epochs=1, monitor="val_recall", verbose=0)
    with pytest.raises(KeyError, match="val_recall.*'loss'"):
        fit_model(linear_model(), train, None, cfg, str(tmp_path))


def test_count_examples_and_plot(tmp_path):
    ds = tf.data.Dataset.from_tensor_slices({"a": np.arange(10)}).batch(4)
    assert count_examples(ds) == 10
    path = plot_history({"loss": [3.0, 2.0], "val_loss": [3.5, 2.5], "auc": [0.5, 0.6]},
                        str(tmp_path / "curves.png"))
    assert os.path.getsize(path) > 1000


def test_bad_training_config():
    with pytest.raises(ValueError, match="optimizer"):
        TrainingConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="epochs"):
        TrainingConfig(epochs=0)
    with pytest.raises(ValueError, match="steps_per_execution"):
        TrainingConfig(steps_per_execution=0)
