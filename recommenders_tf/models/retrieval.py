"""Stage 1: the two-tower retrieval model (TFRS) with logQ correction and accidental-hit removal.

`RetrievalModel` only wires injected parts: a query tower, a candidate tower, a
`tfrs.tasks.Retrieval` task and, optionally, the item sampling-probability lookup used for the
logQ correction. Variants (temperature, hard negatives, with/without correction) are config
values passed to `build_retrieval_task` / `build_retrieval_model`, never model copies.

Why logQ: with in-batch negatives an item appears as a negative in proportion to its
popularity q(item), so plain in-batch softmax over-penalises popular items. TFRS subtracts
log q(candidate) from every logit (Yi et al., RecSys 2019), which makes the sampled softmax an
unbiased stand-in for the full softmax.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recommenders_tf.models.towers import TowerConfig, _clean_vocab, build_towers
from recommenders_tf.models.training import TrainingConfig


@dataclasses.dataclass
class RetrievalConfig(TowerConfig, TrainingConfig):
    """Everything that defines a retrieval run: towers, task, and training.

    It is a TowerConfig and a TrainingConfig, so it can be handed to the tower builders and
    to `fit_model` directly. Field docs for those parts live on the parent classes.

    Args:
      temperature: logits are divided by this (cosine scores need a small value, e.g. 0.05-0.2).
      logq_correction: subtract log q(item) from the in-batch logits (q from train counts).
      remove_accidental_hits: do not treat a copy of the positive item in the batch as a
        negative.
      num_hard_negatives: keep only the k highest-scoring negatives per query; 0 keeps all.
    """

    temperature: float = 0.1
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int = 0

    def __post_init__(self):
        self.validate_tower()
        self.validate_training()
        if not self.temperature > 0:
            raise ValueError(f"RetrievalConfig.temperature must be > 0, got {self.temperature!r}")
        if self.num_hard_negatives < 0:
            raise ValueError("RetrievalConfig.num_hard_negatives must be >= 0, "
                             f"got {self.num_hard_negatives!r}")


def item_sampling_probabilities(item_ids: Sequence[str], counts) -> np.ndarray:
    """In-batch sampling probability q of each item: its share of the train interactions.

    Items with a zero count (in the catalog, never in train) get the smallest positive
    probability, so log q stays finite should one ever appear in a batch.

    Args:
      item_ids: item ids, aligned with `counts`.
      counts: train interaction count of each item.

    Returns:
      float64 array q with q.sum() == 1 over the given items (before the zero-count floor).
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    if len(item_ids) != counts.shape[0]:
        raise ValueError(f"item_sampling_probabilities: {len(item_ids)} item ids but "
                         f"{counts.shape[0]} counts")
    if counts.size == 0:
        raise ValueError("item_sampling_probabilities: no items given")
    bad = np.flatnonzero(~np.isfinite(counts) | (counts < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"item_sampling_probabilities: count of item {item_ids[i]!r} "
                         f"(position {i}) is {counts[i]!r}; counts must be finite and >= 0")
    total = counts.sum()
    if total <= 0:
        raise ValueError("item_sampling_probabilities: all counts are zero")
    q = counts / total
    q[q == 0] = q[q > 0].min()
    return q


class ItemSamplingProbability(tf.keras.layers.Layer):
    """Maps raw item ids to the sampling probability q fed to the retrieval task.

    The stored values are q / max(q). The correction subtracts log q from every logit of a
    row, so a constant factor only shifts the row and leaves the softmax unchanged; dividing by
    the largest q keeps values clear of TFRS's 1e-6 clip for catalogs of millions of items.
    Unknown ids get the smallest known probability (treated as rare).

    Args:
      item_ids: item ids.
      probabilities: q per item (e.g. from `item_sampling_probabilities`).
    """

    def __init__(self, item_ids: Sequence[str], probabilities, **kwargs):
        super().__init__(**kwargs)
        vocab = _clean_vocab(item_ids, "sampling-probability item id")
        q = np.asarray(probabilities, dtype=np.float64).ravel()
        if q.shape[0] != len(vocab):
            raise ValueError(f"ItemSamplingProbability: {len(vocab)} ids but {q.shape[0]} "
                             "probabilities")
        if not np.all(np.isfinite(q)) or np.any(q <= 0):
            raise ValueError("ItemSamplingProbability: probabilities must be finite and > 0")
        relative = q / q.max()
        self.lookup = tf.keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1,
                                                   name="logq_lookup")
        self.table = tf.constant(np.concatenate([[relative.min()], relative]), tf.float32)

    def call(self, item_ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.table, self.lookup(item_ids))


def build_retrieval_task(config: RetrievalConfig) -> tfrs.tasks.Retrieval:
    """In-batch softmax task; factorized top-K metrics are off (evaluation computes them)."""
    return tfrs.tasks.Retrieval(
        metrics=None,
        temperature=config.temperature,
        num_hard_negatives=config.num_hard_negatives or None,
        remove_accidental_hits=config.remove_accidental_hits,
        name="retrieval_task",
    )


class RetrievalModel(tfrs.Model):
    """Two-tower retrieval model: wires the towers and the task in `compute_loss`.

    Each batch is a feature dict (query features + the positive item's features); the other
    items of the batch are the negatives.

    Args:
      query_tower: model mapping the feature dict to [B, D] query embeddings.
      candidate_tower: model mapping the feature dict to [B, D] item embeddings.
      task: a `tfrs.tasks.Retrieval`.
      sampling_probability: layer mapping item ids to q for the logQ correction, or None.
      candidate_id_key: feature holding the item id (used for logQ and accidental hits).

    Example:
      >>> config = RetrievalConfig(embedding_dim=32)
      >>> model = build_retrieval_model(config, users, items, item_counts=counts)
      >>> fit_model(model, train_ds, val_ds, config, "runs/r1")
      >>> model.query_tower, model.candidate_tower   # export these
    """

    def __init__(self, query_tower: tf.keras.Model, candidate_tower: tf.keras.Model,
                 task: tfrs.tasks.Retrieval,
                 sampling_probability: Optional[tf.keras.layers.Layer] = None,
                 candidate_id_key: str = "item_id", **kwargs):
        super().__init__(**kwargs)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.task = task
        self.sampling_probability = sampling_probability
        self.candidate_id_key = candidate_id_key
        # TFRS reports the last batch's summed loss as "loss"; this is the epoch mean per example.
        self.example_loss = tf.keras.metrics.Mean(name="example_loss")

    def call(self, features: Mapping[str, tf.Tensor], training=None):
        return (self.query_tower(features, training=training),
                self.candidate_tower(features, training=training))

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False
                     ) -> tf.Tensor:
        if self.candidate_id_key not in features:
            raise KeyError(f"RetrievalModel needs feature {self.candidate_id_key!r}, got "
                           f"{sorted(features)}")
        query, candidate = self(features, training=training)
        ids = features[self.candidate_id_key]
        q = None if self.sampling_probability is None else self.sampling_probability(ids)
        loss = self.task(query, candidate, candidate_sampling_probability=q,
                         candidate_ids=ids, compute_metrics=not training)
        batch = tf.cast(tf.shape(query)[0], tf.float32)
        self.example_loss.update_state(loss / batch, sample_weight=batch)
        return loss


def build_retrieval_model(config: RetrievalConfig, user_vocab: Sequence[str],
                          item_vocab: Sequence[str], item_counts=None, *,
                          user_feature_vocabs: Optional[Mapping[str, Sequence[str]]] = None,
                          genre_vocab: Optional[Sequence[str]] = None,
                          title_vocab: Optional[Sequence[str]] = None,
                          text_vector_dim: Optional[int] = None) -> RetrievalModel:
    """Seeded towers (sharing the item table), task and logQ lookup, wired into one model.

    Call inside `strategy.scope()` when training under a tf.distribute strategy.

    Args:
      config: RetrievalConfig.
      user_vocab, item_vocab: train user / item ids.
      item_counts: train interaction count per entry of `item_vocab`; required when
        `config.logq_correction` is on (taken from `item_vocab.counts` when that exists).
        Vocabularies may be token lists/arrays or objects with `.tokens` (and `.counts`).
      user_feature_vocabs, genre_vocab, title_vocab, text_vector_dim: optional tower
        features, see `towers.build_towers`.
    """
    tf.keras.utils.set_random_seed(config.seed)
    query, candidate = build_towers(
        config, user_vocab, item_vocab, user_feature_vocabs=user_feature_vocabs,
        genre_vocab=genre_vocab, title_vocab=title_vocab, text_vector_dim=text_vector_dim)
    sampling = None
    if item_counts is None:
        item_counts = getattr(item_vocab, "counts", None)
    if config.logq_correction:
        item_tokens = _clean_vocab(item_vocab, "item id")
        if item_counts is None:
            raise ValueError("logq_correction=True needs item_counts (train count per item "
                             "of item_vocab); pass them or set logq_correction=False")
        sampling = ItemSamplingProbability(
            item_tokens, item_sampling_probabilities(item_tokens, item_counts),
            name="item_sampling_probability")
    return RetrievalModel(query, candidate, build_retrieval_task(config), sampling)
