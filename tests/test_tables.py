"""FrozenTable: catalogue-sized tables live in a SavedModel's variables, not its graph proto,
and stay out of training checkpoints."""
import numpy as np

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.tables import FrozenTable

N, D = 20000, 16  # 1.3 MB of float32: big enough to see in the proto's size


class _Layer(tf.keras.layers.Layer):
    def __init__(self, values):
        super().__init__()
        self.table = FrozenTable(values, "text", zero_row=True)
        self.dense = tf.keras.layers.Dense(1)

    def call(self, rows):
        return self.dense(tf.gather(self.table.values, rows))


def _values():
    return np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)


def test_zero_row_and_values():
    table = FrozenTable(np.eye(3, dtype=np.float32), "t", zero_row=True)
    np.testing.assert_array_equal(tf.gather(table.values, [0, 2]).numpy(),
                                  [[0, 0, 0], [0, 1, 0]])
    assert not table.values.trainable
    ids = FrozenTable(np.array(["a", "é"], dtype=object).astype(str), "ids")
    assert ids.values.numpy().tolist() == [b"a", "é".encode()]


def test_checkpoints_leave_the_table_out_and_restore_the_weights(tmp_path):
    layer = _Layer(_values())
    out = layer(tf.constant([1, 2]))
    path = tf.train.Checkpoint(model=layer).write(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert any("dense" in n for n in names)
    assert not any("text" in n or "table" in n for n in names), names
    other = _Layer(_values())
    other(tf.constant([1]))
    tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
    np.testing.assert_allclose(other(tf.constant([1, 2])).numpy(), out.numpy())


def test_a_saved_model_holds_the_table_in_its_variables(tmp_path):
    values = _values()
    module = tf.Module()
    module.layer = _Layer(values)
    module.serve = tf.function(lambda rows: {"v": tf.gather(module.layer.table.values, rows)},
                               input_signature=[tf.TensorSpec([None], tf.int32)])
    tf.saved_model.save(module, str(tmp_path / "sm"),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    proto = (tmp_path / "sm" / "saved_model.pb").stat().st_size
    variables = sum(p.stat().st_size for p in (tmp_path / "sm" / "variables").iterdir())
    assert proto < values.nbytes / 4 < variables, (proto, variables)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded.signatures["serving_default"](tf.constant([0, 1, N]))["v"].numpy()
    np.testing.assert_array_equal(got, np.concatenate([np.zeros((1, D)), values[[0, -1]]]))
