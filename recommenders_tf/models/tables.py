"""Read-only, catalogue-sized lookup tables that a served graph reads (text vectors, neighbour
lists, candidate embeddings).

Held as `tf.constant`, such a table is captured by every traced function and written into the
SavedModel's graph proto: at a 200K-item catalogue the cascade's saved_model.pb was 671 MB,
mostly two copies of the [200K, 384] text table, and a protocol buffer cannot exceed 2 GB, so a
catalogue a few times larger could not be exported at all. A `FrozenTable` holds it in a
non-trainable variable instead, which a SavedModel writes to its sharded variables files.

It is data the layer was built from, not learned state, so training checkpoints leave it out
(`_trackable_children` returns nothing for a checkpoint): a ranker's per-epoch checkpoints stay
the size of its weights, and a restored model keeps the tables it was built with.

Example:
  >>> text = FrozenTable(np.eye(3, dtype=np.float32), name="text", zero_row=True)
  >>> tf.gather(text.values, [0, 1]).numpy()   # row 0 is the unknown id's zeros
  array([[0., 0., 0.],
         [1., 0., 0.]], dtype=float32)
"""
from __future__ import annotations

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf
from tensorflow.python.trackable import base as trackable_base

__all__ = ["FrozenTable"]


class FrozenTable(tf.Module):
    """A read-only table in a non-trainable variable, saved by SavedModels, not checkpoints.

    Args:
      values: the table (any dtype TF holds; strings too).
      name: variable name.
      zero_row: prepend a row of zeros (row 0 of an id lookup is the unknown / padding id).
    """

    def __init__(self, values, name: str, zero_row: bool = False):
        super().__init__(name=name)
        values = np.asarray(values)
        if zero_row:
            values = np.concatenate([np.zeros((1,) + values.shape[1:], values.dtype), values])
        self.values = tf.Variable(values, trainable=False, name=name)

    @property
    def shape(self) -> tf.TensorShape:
        return self.values.shape

    def _trackable_children(self, save_type=trackable_base.SaveType.CHECKPOINT, **kwargs):
        if save_type != trackable_base.SaveType.SAVEDMODEL:
            return {}
        return super()._trackable_children(save_type, **kwargs)

