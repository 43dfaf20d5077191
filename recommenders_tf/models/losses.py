"""The ranking-loss registry: one key per loss, resolved to a TF-Ranking Keras loss.

The ranking model takes its loss as a string parameter (as TF-Ranking's `losses.get(key)`);
this module is the one place that knows what each key means:

  key                 mode        TF-Ranking class                        labels
  mse                 pointwise   tfr.keras.losses.MeanSquaredLoss         ratings
  bce                 pointwise   tfr.keras.losses.SigmoidCrossEntropyLoss clicks in {0, 1}
  pairwise_logistic   pairwise    tfr.keras.losses.PairwiseLogisticLoss    relevance >= 0
  pairwise_hinge      pairwise    tfr.keras.losses.PairwiseHingeLoss       relevance >= 0
  softmax             listwise    tfr.keras.losses.SoftmaxLoss             relevance >= 0
  listmle             listwise    tfr.keras.losses.ListMLELoss             relevance >= 0
  approx_ndcg         listwise    tfr.keras.losses.ApproxNDCGLoss          relevance >= 0

Every loss reads labels and scores of shape [batch, list_size]; a label < 0 marks padding and
TF-Ranking drops such entries (no pairs, no probability mass, no squared error). The pointwise
losses are summed and divided by the number of real (unpadded) entries, so their value is the
plain mean over interactions whatever the padding; the pairwise and listwise losses keep
TF-Ranking's default reduction (see tests/test_compat.py for what it divides by), computed by
`RankingLoss` from the unreduced values because Keras refuses its default reduction inside a
tf.distribute strategy's replica context (the value is the same). One quirk:
TF-Ranking's ListMLE adds log(k!) to the value of a list with k padded entries; the constant
has no gradient and does not depend on the scores, so it changes the reported loss, not training.

Example:
  >>> spec = get_loss("softmax")
  >>> spec.mode, type(spec.build()).__name__
  ('listwise', 'SoftmaxLoss')
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.compat import tfr

MODES = ("pointwise", "pairwise", "listwise")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What a loss key stands for.

    Args:
      key: registry key ("mse", "softmax", ...).
      mode: "pointwise", "pairwise" or "listwise".
      factory: builds the TF-Ranking Keras loss object.
      label_kind: "rating" (the score predicts the rating itself), "click" (0/1 labels, the
        score is a logit) or "relevance" (graded or binary relevance, only the order of scores
        matters).
      mean_over_valid: the loss is built with Reduction.SUM and divided by the number of
        unpadded entries by the caller (`RankingLoss`), giving the mean per interaction.
        Otherwise `build` gives Reduction.AUTO and `build_unreduced` Reduction.NONE, whose
        mean over all its elements is the AUTO value.
      description: one line for help texts and the README table.
    """

    key: str
    mode: str
    factory: Callable[..., tf.keras.losses.Loss]
    label_kind: str
    mean_over_valid: bool = False
    description: str = ""

    def build(self) -> tf.keras.losses.Loss:
        """A fresh TF-Ranking loss object for this key."""
        if self.mean_over_valid:
            return self.factory(reduction=tf.keras.losses.Reduction.SUM)
        return self.factory()

    def build_unreduced(self) -> tf.keras.losses.Loss:
        """Like `build`, but a loss that would reduce with AUTO returns its per-element values
        (Reduction.NONE), which any tf.distribute strategy accepts."""
        if self.mean_over_valid:
            return self.build()
        return self.factory(reduction=tf.keras.losses.Reduction.NONE)

    @property
    def predicts_rating(self) -> bool:
        return self.label_kind == "rating"


_L = tfr.keras.losses

LOSSES: Dict[str, LossSpec] = {spec.key: spec for spec in (
    LossSpec("mse", "pointwise", _L.MeanSquaredLoss, "rating", mean_over_valid=True,
             description="squared error of the predicted rating"),
    LossSpec("bce", "pointwise", _L.SigmoidCrossEntropyLoss, "click", mean_over_valid=True,
             description="sigmoid cross-entropy of click / no-click"),
    LossSpec("pairwise_logistic", "pairwise", _L.PairwiseLogisticLoss, "relevance",
             description="log(1 + exp(-(s_i - s_j))) over pairs with y_i > y_j"),
    LossSpec("pairwise_hinge", "pairwise", _L.PairwiseHingeLoss, "relevance",
             description="max(0, 1 - (s_i - s_j)) over pairs with y_i > y_j"),
    LossSpec("softmax", "listwise", _L.SoftmaxLoss, "relevance",
             description="cross-entropy of softmax(scores) against normalised labels"),
    LossSpec("listmle", "listwise", _L.ListMLELoss, "relevance",
             description="negative log-likelihood of the label order (Plackett-Luce)"),
    LossSpec("approx_ndcg", "listwise", _L.ApproxNDCGLoss, "relevance",
             description="negative smooth NDCG (sigmoid-approximated ranks)"),
)}

LOSS_KEYS: Tuple[str, ...] = tuple(LOSSES)


def get_loss(key: str) -> LossSpec:
    """The LossSpec of `key`; an unknown key fails with the list of known ones."""
    spec = LOSSES.get(str(key).lower())
    if spec is None:
        raise ValueError(f"unknown ranking loss {key!r}; choose one of {', '.join(LOSS_KEYS)}")
    return spec


def keys_by_mode(mode: str) -> Tuple[str, ...]:
    if mode not in MODES:
        raise ValueError(f"unknown loss mode {mode!r}; choose one of {MODES}")
    return tuple(k for k, s in LOSSES.items() if s.mode == mode)


class RankingLoss:
    """Applies a registry loss to (labels, scores, mask) of shape [batch, list_size].

    Entries where `mask` is False get label -1 before the loss sees them, so a list can be
    padded by the mask alone; `mean_over_valid` losses are divided by the count of real entries.

    Args:
      key: registry key.
    """

    def __init__(self, key: str):
        self.spec = get_loss(key)
        self.loss = self.spec.build_unreduced()

    def __call__(self, labels: tf.Tensor, scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(mask, tf.bool)
        labels = tf.where(mask, tf.cast(labels, tf.float32), -1.0)
        # Padded scores are replaced too: some losses (ApproxNDCG) compare every pair before
        # masking, and a huge padded score must not overflow into NaN gradients.
        scores = tf.where(mask, tf.cast(scores, tf.float32), 0.0)
        value = self.loss(labels, scores)
        if self.spec.mean_over_valid:
            value = value / tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)
        else:
            # Keras' SUM_OVER_BATCH_SIZE, done here: sum of the weighted elements over their
            # count, 0 for an empty batch.
            value = tf.math.divide_no_nan(tf.reduce_sum(value),
                                          tf.cast(tf.size(value), value.dtype))
        return value
