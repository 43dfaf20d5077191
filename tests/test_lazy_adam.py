"""`LazyAdam`: Adam's update on the embedding rows a batch touches, nothing elsewhere, and
exactly Adam on dense gradients."""
import numpy as np

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.training import LazyAdam, TrainingConfig, make_optimizer

LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-7


def adam_rows(value, m, v, grad, step):
    """NumPy oracle: one Adam step of the given rows."""
    m = B1 * m + (1 - B1) * grad
    v = B2 * v + (1 - B2) * grad ** 2
    alpha = LR * np.sqrt(1 - B2 ** step) / (1 - B1 ** step)
    return value - alpha * m / (np.sqrt(v) + EPS), m, v


def test_sparse_steps_move_only_the_touched_rows_with_adams_update():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    opt = LazyAdam(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    value = table.numpy().astype(np.float64)
    m, v = np.zeros_like(value), np.zeros_like(value)
    steps = [([1, 3, 1], [[1.0, -2.0, 0.5], [0.3, 0.3, 0.3], [1.0, 0.0, 0.5]]),  # 1 twice
             ([2, 3], [[-1.0, 1.0, 2.0], [0.5, -0.5, 0.0]])]
    for step, (rows, values) in enumerate(steps, start=1):
        grad = tf.IndexedSlices(tf.constant(values, tf.float32), tf.constant(rows),
                                tf.constant([4, 3]))
        opt.apply_gradients([(grad, table)])
        dense = np.zeros_like(value)
        np.add.at(dense, rows, np.asarray(values))
        touched = np.unique(rows)
        before = value.copy()
        value[touched], m[touched], v[touched] = adam_rows(
            value[touched], m[touched], v[touched], dense[touched], step)
        untouched = np.setdiff1d(np.arange(4), touched)
        np.testing.assert_allclose(table.numpy()[untouched], before[untouched])
        np.testing.assert_allclose(table.numpy(), value, rtol=1e-5, atol=1e-6)
    # Row 0 was never in a batch; row 1 was only in the first and kept still in the second
    # (Adam would have moved it by its decayed momentum).
    np.testing.assert_allclose(table.numpy()[0], [0.0, 0.1, 0.2])


def test_dense_gradients_get_exactly_adams_update():
    init = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    a, b = tf.Variable(init), tf.Variable(init)
    lazy = LazyAdam(learning_rate=LR)
    adam = tf.keras.optimizers.Adam(learning_rate=LR)
    for k in range(3):
        grad = tf.constant(np.cos(init * (k + 1)))
        lazy.apply_gradients([(grad, a)])
        adam.apply_gradients([(grad, b)])
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_config_name_selects_it():
    assert isinstance(make_optimizer(TrainingConfig(optimizer="lazy_adam")), LazyAdam)
