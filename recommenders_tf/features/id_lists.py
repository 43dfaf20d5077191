"""Id lists (histories) as every tower and export reads them: padding position never matters.

A history is a row of item ids, oldest first, most recent last, padded with "" to the batch's
width. Models read recency from the right end, so a client that pads on the right (or a user
batched with a longer history) would otherwise shift the real ids out of the window the model
reads. `compact_right` moves the non-empty ids to the end of each row, keeping their order, so
left, right or interleaved padding give the same row. It is idempotent and costs a stable sort
of each row, which is small next to any model that reads the history.
"""
from __future__ import annotations

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.serving.contract import PAD


def compact_right(ids: tf.Tensor, keep: tf.Tensor | None = None) -> tf.Tensor:
    """[B, N] string ids with the non-"" ids moved to the end of each row, order kept.

    Args:
      ids: [B, N] tf.string; "" is padding.
      keep: optional [B, N] bool; False positions are treated as padding (cleared to "").

    Example:
      >>> compact_right(tf.constant([["a", "", "b", ""]]))  # [["", "", "a", "b"]]
    """
    ids = tf.convert_to_tensor(ids, tf.string)
    if keep is not None:
        ids = tf.where(tf.cast(keep, tf.bool), ids, PAD)
    real = tf.cast(tf.not_equal(ids, PAD), tf.int32)
    # Stable: pads (0) first, real ids (1) after, each group in its original order.
    order = tf.argsort(real, axis=-1, stable=True)
    return tf.gather(ids, order, batch_dims=1)


def compact_right_with(ids: tf.Tensor, values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`compact_right(ids)` and `values` [B, N] moved the same way (0 where padding).

    For a per-id companion such as the rating of each history item, which must stay beside
    its id wherever the caller padded.
    """
    ids = tf.convert_to_tensor(ids, tf.string)
    real = tf.not_equal(ids, PAD)
    order = tf.argsort(tf.cast(real, tf.int32), axis=-1, stable=True)
    values = tf.where(real, values, tf.zeros_like(values))
    return tf.gather(ids, order, batch_dims=1), tf.gather(values, order, batch_dims=1)


def fit_width(ids: tf.Tensor, width: int) -> tf.Tensor:
    """[B, width]: the last `width` ids of each row, left-padded with "" when shorter.

    A model then always sees the same shape, so a short request and the same request padded
    wider run the same kernels and give bit-identical vectors.
    """
    ids = tf.convert_to_tensor(ids, tf.string)
    pad = tf.maximum(width - tf.shape(ids)[1], 0)
    return tf.pad(ids, [[0, 0], [pad, 0]], constant_values=PAD)[:, -width:]
