"""Readable reference implementations the TensorFlow graph is checked against.

The package serves each of these computations once, in TensorFlow; the versions here are
plain loops (NumPy, or for `top_k_excluding` a direct all-pairs comparison) that are easy to
check by eye, so the tests compare the served code with them. Nothing in the package uses
them. Each oracle and the served code it checks:

  mmr_rerank, dpp_rerank   recommenders_tf.models.diversity (mmr_rerank_tf, dpp_rerank_tf);
                           the conventions and algorithms are described there
  apply_rules              recommenders_tf.models.rules (BusinessRulesLayer)
  top_k_excluding          RetrievalIndex.search_excluding, for string ids instead of
                           catalogue rows
"""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.index.scann_index import _masked_top_k
from recommenders_tf.models.diversity import DPP_EPS, _check_k, _check_lam
from recommenders_tf.models.rules import BusinessRules, RuleOutput, _check_categories

# ------------------------------------------------------------------------------ diversity


def _prepare(relevance, item_vectors, mask) -> Tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    rel = np.asarray(relevance, dtype=np.float64)
    vecs = np.asarray(item_vectors, dtype=np.float64)
    single = rel.ndim == 1
    if single:  # one list: accept [L] / [L, D] and return [k]
        rel, vecs = rel[None], vecs[None]
        mask = None if mask is None else np.asarray(mask)[None]
    if rel.ndim != 2 or vecs.ndim != 3 or vecs.shape[:2] != rel.shape:
        raise ValueError(f"relevance must be [B, L] and item_vectors [B, L, D]; got "
                         f"{rel.shape} and {vecs.shape}")
    mask = np.isfinite(rel) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != rel.shape:
        raise ValueError(f"mask must have the relevance shape {rel.shape}, got {mask.shape}")
    mask = mask & np.isfinite(rel)
    return rel, vecs, mask, single


def normalize_relevance(relevance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-list min-max of the unmasked scores to [0, 1]; constant lists and padding get 0."""
    rel = np.where(mask, relevance, 0.0)
    low = np.where(mask, rel, np.inf).min(axis=1, keepdims=True)
    high = np.where(mask, rel, -np.inf).max(axis=1, keepdims=True)
    span = high - low
    ok = np.isfinite(span) & (span > 0)
    return np.where(mask & ok, (rel - np.where(ok, low, 0.0)) / np.where(ok, span, 1.0), 0.0)


def cosine_similarity(item_vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B, L, D] -> [B, L, L] cosines; zero vectors and padding have cosine 0, diagonal 1."""
    vecs = np.where(mask[..., None], item_vectors, 0.0)
    norms = np.linalg.norm(vecs, axis=-1, keepdims=True)
    unit = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
    sims = np.einsum("bld,bmd->blm", unit, unit)
    idx = np.arange(sims.shape[1])
    sims[:, idx, idx] = 1.0
    return sims


def mmr_rerank(relevance, item_vectors, k: int, lam: float = 0.5, mask=None) -> np.ndarray:
    """Maximal marginal relevance over each list (see models/diversity.py).

    Args:
      relevance: [B, L] (or [L]) scores; non-finite entries count as masked.
      item_vectors: [B, L, D] (or [L, D]).
      k: items to pick.
      lam: trade-off in [0, 1]; 1 = top k by relevance.
      mask: optional [B, L] bool, False = padding.

    Returns:
      int64 [B, k] (or [k]) list positions in selection order, -1 padded.
    """
    k = _check_k(k)
    _check_lam(lam)
    rel, vecs, mask, single = _prepare(relevance, item_vectors, mask)
    r = normalize_relevance(rel, mask)
    sims = cosine_similarity(vecs, mask)
    batch, _ = r.shape
    rows = np.arange(batch)
    available = mask.copy()
    max_sim = np.zeros_like(r)
    selected = np.full((batch, k), -1, np.int64)
    for t in range(k):
        gain = np.where(available, lam * r - (1.0 - lam) * max_sim, -np.inf)
        j = np.argmax(gain, axis=1)  # first maximum: ties go to the input order
        has = available.any(axis=1)
        selected[:, t] = np.where(has, j, -1)
        sim_j = sims[rows, j]
        max_sim = sim_j if t == 0 else np.maximum(max_sim, sim_j)
        available[rows[has], j[has]] = False
    return selected[0] if single else selected


def dpp_rerank(relevance, item_vectors, k: int, lam: float = 0.5, mask=None,
               eps: float = DPP_EPS) -> np.ndarray:
    """Greedy DPP MAP inference with the incremental Cholesky update (models/diversity.py).

    Args:
      relevance: [B, L] (or [L]) scores; non-finite entries count as masked.
      item_vectors: [B, L, D] (or [L, D]).
      k: items to pick.
      lam: trade-off theta in [0, 1]; 1 = top k by relevance, 0 = max log det S_Y.
      mask: optional [B, L] bool, False = padding.
      eps: conditional variance below which an item counts as inside the picked span.

    Returns:
      int64 [B, k] (or [k]) list positions in selection order, -1 padded.
    """
    k = _check_k(k)
    _check_lam(lam)
    rel, vecs, mask, single = _prepare(relevance, item_vectors, mask)
    r = normalize_relevance(rel, mask)
    sims = cosine_similarity(vecs, mask)
    batch, length = r.shape
    rows = np.arange(batch)
    chol = np.zeros((batch, length, k))     # c_i: row i of the Cholesky factor of S_Y
    d2 = np.ones((batch, length))           # d_i^2 = det S_{Y+i} / det S_Y
    available = mask.copy()
    selected = np.full((batch, k), -1, np.int64)
    for t in range(k):
        # lam = 1 ignores the kernel (alpha = inf): every available item is eligible.
        eligible = available & ((d2 > eps) | (lam == 1.0))
        gain = lam * r + (1.0 - lam) * np.log(np.maximum(d2, eps))
        fill = ~eligible.any(axis=1)        # kernel exhausted: fill by relevance
        score = np.where(fill[:, None], np.where(available, r, -np.inf),
                         np.where(eligible, gain, -np.inf))
        j = np.argmax(score, axis=1)
        has = available.any(axis=1)
        selected[:, t] = np.where(has, j, -1)
        dj2 = d2[rows, j]
        update = has & (dj2 > eps)          # a degenerate pick adds no direction to factor
        e = (sims[rows, j] - np.einsum("blk,bk->bl", chol, chol[rows, j])) / \
            np.sqrt(np.where(update, dj2, 1.0))[:, None]
        e = np.where(update[:, None], e, 0.0)
        chol[:, :, t] = e
        d2 = d2 - e ** 2
        available[rows[has], j[has]] = False
    return selected[0] if single else selected


# ---------------------------------------------------------------------------------- rules


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _id_rows(values, batch: int, name: str):
    if values is None:
        return [set() for _ in range(batch)]
    rows = np.asarray(values, dtype=object)
    if rows.ndim != 2 or rows.shape[0] != batch:
        raise ValueError(f"{name} must be [B={batch}, W] ids ('' padding), got shape "
                         f"{rows.shape}")
    return [{_as_str(v) for v in row} - {""} for row in rows]


def apply_rules(rules: BusinessRules, item_ids, scores, *, history=None, exclude=None,
                item_categories: Optional[Mapping[str, str]] = None, mask=None) -> RuleOutput:
    """NumPy reference of the rules over B lists of L scored candidates.

    Args:
      rules: BusinessRules.
      item_ids: [B, L] ids (str or bytes); "" is padding.
      scores: [B, L] float; non-finite is padding.
      history: optional [B, H] ids the user has seen ("" padding), used if `exclude_seen`.
      exclude: optional [B, W] ids to drop whatever the config says ("" padding).
      item_categories: {item id: category}, needed when `category_caps` is set.
      mask: optional [B, L] bool, False = padding.

    Returns:
      RuleOutput of numpy arrays: item_ids object [B, k], scores float64 [B, k],
      positions int64 [B, k].
    """
    ids = np.asarray(item_ids, dtype=object)
    vals = np.asarray(scores, dtype=np.float64)
    if ids.ndim != 2 or vals.shape != ids.shape:
        raise ValueError(f"item_ids and scores must both be [B, L]; got {ids.shape} and "
                         f"{vals.shape}")
    batch, _ = ids.shape
    valid = np.isfinite(vals) if mask is None else np.asarray(mask, bool) & np.isfinite(vals)
    categories = _check_categories(rules, item_categories)
    seen = _id_rows(history if rules.exclude_seen else None, batch, "history")
    banned = _id_rows(exclude, batch, "exclude")
    k = rules.k
    out_ids = np.full((batch, k), "", dtype=object)
    out_scores = np.full((batch, k), -np.inf)
    out_pos = np.full((batch, k), -1, np.int64)
    for b in range(batch):
        drop = seen[b] | banned[b]
        kept_ids, per_category, kept = set(), {}, []
        for p in np.argsort(-np.where(valid[b], vals[b], -np.inf), kind="stable"):
            item = _as_str(ids[b, p])
            if not valid[b, p] or item == "" or item in drop:
                continue
            if rules.dedupe:
                if item in kept_ids:
                    continue
                # Recorded before the cap check: a repeat has the same category, so it
                # would be capped the same way anyway.
                kept_ids.add(item)
            category = categories.get(item)
            cap = rules.cap_for(category)
            if cap is not None:
                if per_category.get(category, 0) >= cap:
                    continue
                per_category[category] = per_category.get(category, 0) + 1
            kept.append(p)
            if len(kept) == k:
                break
        for slot, p in enumerate(kept):
            out_ids[b, slot] = _as_str(ids[b, p])
            out_scores[b, slot] = vals[b, p]
            out_pos[b, slot] = p
    return RuleOutput(out_ids, out_scores, out_pos)


# ---------------------------------------------------------------------------------- index


def top_k_excluding(
    scores: tf.Tensor, ids: tf.Tensor, exclude_ids: tf.Tensor, k: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Keeps the k best of `ids` per row after removing any id listed in that row of `exclude_ids`.

    Excluded and pad slots get score -inf before the top k, and any -inf slot that survives
    (too few non-excluded candidates) comes back as id "" with score -inf, so an excluded id can
    never appear in the output. `exclude_ids` is [B, W]; "" in it excludes nothing.

    It compares every slot with every excluded id (L x W per row): fine for short lists whose
    ids are not catalogue rows; indexes use `RetrievalIndex.search_excluding` instead.
    """
    excluded = tf.reduce_any(tf.equal(ids[:, :, None], exclude_ids[:, None, :]), axis=-1)
    return _masked_top_k(scores, ids, excluded, k)
