"""Diversity re-ranking of a scored list: MMR and greedy DPP, in TensorFlow (graph-mode).

Both pick k of a list's L candidates one at a time, trading the candidates' relevance against
their similarity to what is already picked, with one knob `lam` in [0, 1]:
lam = 1 is pure relevance (the output is the top k by relevance), lam = 0 pure diversity.

Conventions (the NumPy oracles in tests/oracles.py follow them exactly):
  inputs     relevance [B, L] (any real scores, e.g. re-ranker outputs), item_vectors
             [B, L, D] (text vectors, embeddings), mask [B, L] bool (default: finite
             relevance, so -inf padding from `rerank_scores` is masked by itself)
  relevance  normalised per list to [0, 1] by min-max over the list's unmasked items, so lam
             means the same for lists whose scores have different ranges and offsets; a list
             whose unmasked scores are all equal gets r = 0 everywhere
  similarity cosine of the item vectors; a zero vector has cosine 0 with everything (as
             `evaluation.metrics.intra_list_diversity` counts it) and 1 with itself
  ties       go to the lowest list position (the input order)
  output     int [B, k] list positions in selection order; -1 pads lists with fewer than k
             unmasked items; masked items are never selected

MMR (Carbonell & Goldstein, SIGIR 1998): the next item is
  argmax_{i not picked} lam * r_i - (1 - lam) * max_{j picked} cos(i, j)
(with the max over an empty set taken as 0, so the first pick is the most relevant item).

DPP (greedy MAP inference, Chen, Zhang & Zhou, "Fast Greedy MAP Inference for Determinantal
Point Process to Improve Recommendation Diversity", NeurIPS 2018): kernel
L = diag(q) S diag(q) with S the cosine matrix and q_i = exp(alpha r_i),
alpha = lam / (2 (1 - lam)), Chen et al.'s mapping of the trade-off theta = lam. Then
  (1 - lam) log det L_Y = lam * sum_{i in Y} r_i + (1 - lam) log det S_Y,
so each greedy step picks argmax_i lam * r_i + (1 - lam) * log d_i^2, where d_i^2 =
det S_{Y+i} / det S_Y is kept up to date with Chen et al.'s incremental Cholesky update
(O(k L) per step). Working on S and r instead of L itself avoids exp(2 alpha) overflowing
float32 for lam near 1; lam = 1 exactly is pure relevance (alpha = inf). An item inside the
span of the picked ones (d_i^2 < eps, e.g. a duplicate) makes det L_Y = 0, so it is picked
only once every remaining item is such: from then on the rest of the k slots are filled in
relevance order (Chen et al. stop there instead; a recommender still wants k items).

Example:
  >>> picks = dpp_rerank_tf(scores, vectors, k=10, lam=0.7)              # int32 [B, 10]
  >>> items = tf.gather(item_ids, tf.maximum(picks, 0), batch_dims=1)    # -1 marks padding
"""
from __future__ import annotations

from typing import Union

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

# Smallest conditional variance d_i^2 (of a unit-diagonal kernel) that still counts as a new
# direction; below it the item is treated as inside the span of the picked ones. Loose enough
# that float32 rounding of an exact duplicate (about 1e-7) is caught.
DPP_EPS = 1e-5

__all__ = ["DPP_EPS", "normalize_relevance_tf", "cosine_similarity_tf", "mmr_rerank_tf",
           "dpp_rerank_tf", "dpp_alpha"]


def dpp_alpha(lam: float) -> float:
    """Chen et al.'s q_i = exp(alpha r_i) exponent for trade-off lam: lam / (2 (1 - lam))."""
    _check_lam(lam)
    return float("inf") if lam == 1 else lam / (2.0 * (1.0 - lam))


def _check_lam(lam) -> None:
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"the trade-off lam must be in [0, 1] (1 = pure relevance), got {lam!r}")


def _check_k(k) -> int:
    if int(k) != k or int(k) < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


# ------------------------------------------------------------------------------ TensorFlow


def _prepare_tf(relevance, item_vectors, mask):
    rel = tf.convert_to_tensor(relevance, tf.float32)
    vecs = tf.convert_to_tensor(item_vectors, tf.float32)
    if rel.shape.rank is not None and rel.shape.rank != 2:
        raise ValueError(f"relevance must be [B, L], got shape {rel.shape}")
    if vecs.shape.rank is not None and vecs.shape.rank != 3:
        raise ValueError(f"item_vectors must be [B, L, D], got shape {vecs.shape}")
    finite = tf.math.is_finite(rel)
    mask = finite if mask is None else tf.logical_and(tf.cast(mask, tf.bool), finite)
    return rel, vecs, mask


def _lam_tf(lam) -> tf.Tensor:
    if not isinstance(lam, (tf.Tensor, tf.Variable)):
        _check_lam(lam)
    lam = tf.cast(lam, tf.float32)
    # A tensor lam (e.g. a serving-signature input) is checked at run time.
    with tf.control_dependencies([
            tf.debugging.assert_greater_equal(lam, 0.0, message="lam must be in [0, 1]"),
            tf.debugging.assert_less_equal(lam, 1.0, message="lam must be in [0, 1]")]):
        return tf.identity(lam)


def normalize_relevance_tf(relevance: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per-list min-max of the unmasked scores to [0, 1]; constant lists and padding get 0."""
    rel = tf.where(mask, relevance, 0.0)
    low = tf.reduce_min(tf.where(mask, rel, np.inf), axis=1, keepdims=True)
    high = tf.reduce_max(tf.where(mask, rel, -np.inf), axis=1, keepdims=True)
    span = high - low
    ok = tf.logical_and(tf.math.is_finite(span), span > 0)
    out = (rel - tf.where(ok, low, 0.0)) / tf.where(ok, span, 1.0)
    return tf.where(tf.logical_and(mask, ok), out, 0.0)


def cosine_similarity_tf(item_vectors: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """[B, L, D] -> [B, L, L] cosines; zero vectors and padding have cosine 0, diagonal 1."""
    vecs = tf.where(mask[..., None], item_vectors, 0.0)
    norms = tf.norm(vecs, axis=-1, keepdims=True)
    unit = tf.math.divide_no_nan(vecs, norms)
    sims = tf.einsum("bld,bmd->blm", unit, unit)
    return tf.linalg.set_diag(sims, tf.ones_like(sims[:, :, 0]))


def _first_argmax(score: tf.Tensor) -> tf.Tensor:
    """Row-wise argmax [B, L] -> int32 [B] that breaks ties to the lowest index (tf.argmax
    does not promise which tied index it returns)."""
    length = tf.shape(score)[1]
    best = tf.reduce_max(score, axis=1, keepdims=True)
    positions = tf.broadcast_to(tf.range(length)[None, :], tf.shape(score))
    return tf.reduce_min(tf.where(score >= best, positions, length), axis=1)


def mmr_rerank_tf(relevance, item_vectors, k: int, lam: Union[float, tf.Tensor] = 0.5,
                  mask=None) -> tf.Tensor:
    """Maximal marginal relevance over each list (module docstring), traceable in a tf.function.

    Args:
      relevance: [B, L] float; non-finite entries count as masked.
      item_vectors: [B, L, D] float.
      k: items to pick (a Python int: fixed per trace).
      lam: trade-off in [0, 1], a float or a scalar tensor (e.g. a signature input).
      mask: optional [B, L] bool.

    Returns:
      int32 [B, k] list positions in selection order, -1 padded.
    """
    k = _check_k(k)
    rel, vecs, mask = _prepare_tf(relevance, item_vectors, mask)
    lam = _lam_tf(lam)
    r = normalize_relevance_tf(rel, mask)
    sims = cosine_similarity_tf(vecs, mask)
    length = tf.shape(r)[1]

    def body(t, available, max_sim, picks):
        gain = tf.where(available, lam * r - (1.0 - lam) * max_sim, -np.inf)
        j = _first_argmax(gain)
        has = tf.reduce_any(available, axis=1)
        picks = picks.write(t, tf.where(has, j, -1))
        sim_j = tf.gather(sims, j, axis=1, batch_dims=1)                  # [B, L]
        max_sim = tf.where(tf.equal(t, 0), sim_j, tf.maximum(max_sim, sim_j))
        chosen = tf.logical_and(tf.one_hot(j, length, on_value=True, off_value=False),
                                has[:, None])
        return t + 1, tf.logical_and(available, tf.logical_not(chosen)), max_sim, picks

    _, _, _, picks = tf.while_loop(
        lambda t, *_: t < k, body,
        (tf.constant(0), mask, tf.zeros_like(r), tf.TensorArray(tf.int32, size=k)))
    return tf.transpose(picks.stack())


def dpp_rerank_tf(relevance, item_vectors, k: int, lam: Union[float, tf.Tensor] = 0.5,
                  mask=None, eps: float = DPP_EPS) -> tf.Tensor:
    """Greedy DPP MAP inference with the incremental Cholesky update (module docstring).

    Args:
      relevance: [B, L] float; non-finite entries count as masked.
      item_vectors: [B, L, D] float.
      k: items to pick (a Python int: fixed per trace; the Cholesky factor is [B, L, k]).
      lam: trade-off theta in [0, 1], a float or a scalar tensor.
      mask: optional [B, L] bool.
      eps: conditional variance below which an item counts as inside the picked span.

    Returns:
      int32 [B, k] list positions in selection order, -1 padded.
    """
    k = _check_k(k)
    rel, vecs, mask = _prepare_tf(relevance, item_vectors, mask)
    lam = _lam_tf(lam)
    r = normalize_relevance_tf(rel, mask)
    sims = cosine_similarity_tf(vecs, mask)
    length = tf.shape(r)[1]
    pure_relevance = tf.equal(lam, 1.0)

    def body(t, available, chol, d2, picks):
        eligible = tf.logical_and(available, tf.logical_or(d2 > eps, pure_relevance))
        gain = lam * r + (1.0 - lam) * tf.math.log(tf.maximum(d2, eps))
        fill = tf.logical_not(tf.reduce_any(eligible, axis=1, keepdims=True))
        score = tf.where(fill, tf.where(available, r, -np.inf),
                         tf.where(eligible, gain, -np.inf))
        j = _first_argmax(score)
        has = tf.reduce_any(available, axis=1)
        picks = picks.write(t, tf.where(has, j, -1))
        dj2 = tf.gather(d2, j, axis=1, batch_dims=1)
        update = tf.logical_and(has, dj2 > eps)
        chol_j = tf.gather(chol, j, axis=1, batch_dims=1)                  # [B, k]
        sim_j = tf.gather(sims, j, axis=1, batch_dims=1)                   # [B, L]
        e = (sim_j - tf.einsum("blk,bk->bl", chol, chol_j)) / \
            tf.sqrt(tf.where(update, dj2, 1.0))[:, None]
        e = tf.where(update[:, None], e, 0.0)
        # Columns after t are still zero, so writing column t is an add of e x one_hot(t).
        chol = chol + e[:, :, None] * tf.one_hot(t, k)[None, None, :]
        chosen = tf.logical_and(tf.one_hot(j, length, on_value=True, off_value=False),
                                has[:, None])
        return (t + 1, tf.logical_and(available, tf.logical_not(chosen)), chol,
                d2 - tf.square(e), picks)

    chol0 = tf.zeros(tf.stack([tf.shape(r)[0], length, k]))
    _, _, _, _, picks = tf.while_loop(
        lambda t, *_: t < k, body,
        (tf.constant(0), mask, chol0, tf.ones_like(r), tf.TensorArray(tf.int32, size=k)))
    return tf.transpose(picks.stack())
