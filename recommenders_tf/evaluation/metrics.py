"""Vectorized ranking, beyond-accuracy and rating metrics (numpy only, no TensorFlow).

Top-K metrics work on a *hit matrix*: ``hits[u, r]`` is True when the item a model ranked at
position ``r`` (0-based) for user ``u`` is relevant, and ``n_relevant[u]`` is the user's number
of distinct relevant (test) items, counting relevant items that could never be ranked (not in
the candidate set): those stay in the denominators, as BENCHMARK.md P1 requires.
Every top-K function returns one value per user so that callers can average over all users,
over sparsity buckets (P4) or pair them for significance tests.

Relevance is binary throughout. Definitions (K the cut-off, rel the user's relevant set):
  Recall@K    = hits in top K / |rel|
  Precision@K = hits in top K / K
  F1@K        = per-user harmonic mean of Precision@K and Recall@K (0 when both are 0)
  NDCG@K      = sum_r hit_r / log2(r + 2)  over  sum_{r < min(|rel|, K)} 1 / log2(r + 2)
  HR@K        = 1 if any hit in top K
  MRR@K       = 1 / (1-based rank of the first hit), 0 when no hit in top K
  MAP@K       = sum_r Precision@(r+1) * hit_r / min(|rel|, K)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "recall_at_k",
    "precision_at_k",
    "f1_at_k",
    "ndcg_at_k",
    "hit_rate_at_k",
    "mrr_at_k",
    "map_at_k",
    "catalog_coverage",
    "intra_list_diversity",
    "novelty",
    "clip_ratings",
    "rmse",
    "mae",
    "auc",
    "log_loss",
    "average_ranks",
]


def _check_hits(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a 2-D [users, ranks] matrix, got shape {hits.shape}")
    if n_relevant.shape != (hits.shape[0],):
        raise ValueError(
            f"n_relevant must have one entry per user ({hits.shape[0]}), got shape "
            f"{n_relevant.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if hits.shape[1] < k and hits.shape[0] > 0:
        # A shorter list is legitimate only when padded; ask for it explicitly.
        raise ValueError(
            f"hits has {hits.shape[1]} ranks but k={k}; pad short lists with False up to k"
        )
    if np.any(n_relevant < 1):
        bad = int(np.flatnonzero(n_relevant < 1)[0])
        raise ValueError(f"user row {bad} has no relevant items; drop users without test items")
    hit_counts = hits[:, :k].sum(axis=1)
    if np.any(hit_counts > n_relevant):
        bad = int(np.flatnonzero(hit_counts > n_relevant)[0])
        raise ValueError(f"user row {bad} has more hits than relevant items")
    return hits[:, :k], n_relevant.astype(np.float64)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@K: hits in the top K divided by the number of relevant items."""
    top, n_rel = _check_hits(hits, n_relevant, k)
    return top.sum(axis=1) / n_rel


def precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user Precision@K: hits in the top K divided by K (padding counts as a miss)."""
    top, _ = _check_hits(hits, n_relevant, k)
    return top.sum(axis=1) / float(k)


def f1_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user F1@K, the harmonic mean of Precision@K and Recall@K (0 when both are 0)."""
    p = precision_at_k(hits, n_relevant, k)
    r = recall_at_k(hits, n_relevant, k)
    denom = p + r
    return np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@K with binary gains, log2 discount, ideal DCG over min(|rel|, K)."""
    top, n_rel = _check_hits(hits, n_relevant, k)
    disc = _discounts(k)
    dcg = top @ disc
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n_rel, k).astype(np.int64)]
    return dcg / idcg


def hit_rate_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@K: 1.0 when at least one relevant item is in the top K."""
    top, _ = _check_hits(hits, n_relevant, k)
    return top.any(axis=1).astype(np.float64)


def mrr_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user reciprocal rank of the first hit within the top K (0 without a hit)."""
    top, _ = _check_hits(hits, n_relevant, k)
    first = np.argmax(top, axis=1)
    return np.where(top.any(axis=1), 1.0 / (first + 1.0), 0.0)


def map_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user average precision at K, normalised by min(|rel|, K).

    The min(|rel|, K) normalisation (as in most recommender libraries) makes a perfect top K
    score 1.0 even when a user has more than K relevant items.
    """
    top, n_rel = _check_hits(hits, n_relevant, k)
    topf = top.astype(np.float64)
    precision_at_r = np.cumsum(topf, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return (precision_at_r * topf).sum(axis=1) / np.minimum(n_rel, k)


def catalog_coverage(topk_indices: np.ndarray, n_candidates: int, k: Optional[int] = None) -> float:
    """Share of the candidate items that appear in at least one user's top K.

    Args:
      topk_indices: int [users, >=K] candidate column indices in rank order; -1 pads lists of
        users that had fewer than K rankable candidates.
      n_candidates: size of the candidate set (the denominator).
      k: cut-off; defaults to the width of `topk_indices`.
    """
    idx = np.asarray(topk_indices)
    if k is not None:
        idx = idx[:, :k]
    if n_candidates < 1:
        raise ValueError("n_candidates must be >= 1")
    valid = idx[idx >= 0]
    if valid.size and valid.max() >= n_candidates:
        raise ValueError(f"index {int(valid.max())} out of range for {n_candidates} candidates")
    return float(np.unique(valid).size) / float(n_candidates)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # A zero vector (item without any genre) has no direction: its cosine with anything is 0,
    # so it counts as fully dissimilar rather than producing NaN.
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def intra_list_diversity(topk_indices: np.ndarray, item_features: np.ndarray) -> np.ndarray:
    """Per-user mean pairwise cosine distance (1 - cosine) between the items of each list.

    Args:
      topk_indices: int [users, K] rows of item indices into `item_features`; -1 pads.
      item_features: float [items, dims] (genre one-hots, text or model embeddings).

    Returns:
      float [users]; NaN for a list with fewer than two items (no pair to compare).
    """
    idx = np.asarray(topk_indices)
    feats = _unit_rows(np.asarray(item_features, dtype=np.float64))
    valid = idx >= 0
    vecs = feats[np.where(valid, idx, 0)] * valid[..., None]
    sims = np.einsum("ukd,uld->ukl", vecs, vecs)
    k = idx.shape[1]
    pair_mask = valid[:, :, None] & valid[:, None, :] & ~np.eye(k, dtype=bool)[None]
    dist_sum = ((1.0 - sims) * pair_mask).sum(axis=(1, 2))
    n_pairs = pair_mask.sum(axis=(1, 2)).astype(np.float64)
    out = np.full(idx.shape[0], np.nan)
    ok = n_pairs > 0
    out[ok] = dist_sum[ok] / n_pairs[ok]
    return out


def novelty(topk_indices: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Per-user mean self-information -log2(p_i) of the recommended items.

    Args:
      topk_indices: int [users, K]; -1 pads.
      item_popularity: float [items] in (0, 1], the popularity share of each item (the
        protocol uses the share of train users who interacted with it, as Zhou et al. 2010).
    """
    idx = np.asarray(topk_indices)
    pop = np.asarray(item_popularity, dtype=np.float64)
    if np.any(pop <= 0) or np.any(pop > 1):
        raise ValueError("item_popularity must be shares in (0, 1]")
    valid = idx >= 0
    info = -np.log2(pop)[np.where(valid, idx, 0)] * valid
    n = valid.sum(axis=1)
    return np.divide(info.sum(axis=1), n, out=np.full(idx.shape[0], np.nan), where=n > 0)


def clip_ratings(predictions: np.ndarray, rating_range: Optional[Sequence[float]]) -> np.ndarray:
    """Clip predicted ratings into [min, max] of the rating scale (no-op when range is None)."""
    pred = np.asarray(predictions, dtype=np.float64)
    if rating_range is None:
        return pred
    lo, hi = float(rating_range[0]), float(rating_range[1])
    if lo > hi:
        raise ValueError(f"rating_range min {lo} is greater than max {hi}")
    return np.clip(pred, lo, hi)


def _paired(y_true, y_pred) -> Tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    if t.size == 0:
        raise ValueError("no values to evaluate")
    if not np.all(np.isfinite(p)):
        pos = int(np.flatnonzero(~np.isfinite(p))[0])
        raise ValueError(f"y_pred has a non-finite value at position {pos}")
    return t, p


def rmse(y_true, y_pred) -> float:
    """Root mean squared error."""
    t, p = _paired(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true, y_pred) -> float:
    """Mean absolute error."""
    t, p = _paired(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` in ascending order, ties given the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # Boundaries of runs of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_v[1:] != sorted_v[:-1]])
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [v.size]])
    run_mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty_like(v)
    ranks[order] = run_mean_rank[run_id]
    return ranks


def auc(y_true, y_score) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic, ties averaged.

    A tied positive/negative pair counts one half, which is what average ranks give.
    """
    t, s = _paired(y_true, y_score)
    pos = t > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    ranks = average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true, y_prob, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    t, p = _paired(y_true, y_prob)
    if np.any((t != 0) & (t != 1)):
        raise ValueError("log_loss labels must be 0 or 1")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(t * np.log(p) + (1.0 - t) * np.log(1.0 - p)))
