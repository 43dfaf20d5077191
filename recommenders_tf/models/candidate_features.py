"""Per-candidate context features for a ranking stage that sits behind retrieval.

A ranker that only sees ids and embeddings has to relearn from a few thousand lists what the
retrieval stage already knows from every interaction. `CandidateContext` hands it that
knowledge, and the large-model text signal, as a few dense features per candidate:

  retrieval_z        the retrieval score standardised within the list (masked), so a ranker
                     trained on one retrieval model's scores reads another's (the refit one at
                     serving time) on the same scale
  retrieval_gap      score minus the list's best score, same reason
  popularity         standardised log(1 + train interactions) of the item (0 for unknown ids)
  trend              the same over the most recent interactions only (`recent_counts`): what
                     is popular now, which a model fitted on all of train averages away
  text_recent        cosine of the candidate's text vector with the mean text vector of the
                     user's `recent` most recent items: drifting tastes show up here first
  text_history       cosine with the mean over the whole history given
  text_max_recent    the largest cosine with any one of the `recent` most recent items
  cf_recent, cf_max_recent, cf_history, cf_max_history
                     item-item collaborative similarity (cosine of the items' train user sets,
                     each item's `neighbors` most similar kept): mean and max similarity of the
                     candidate to the recent / whole history; the co-occurrence signal a
                     two-tower's dot product blurs
  peer_z             a peer's score of the candidate for the history given, standardised within
                     the list like retrieval_z: the implicit-ALS fold-in (`fold_in` tables
                     (Y, P), score = Y[c] · Σ_h P[h], see `cascade.fold_in`)

Everything is looked up inside the layer from raw item ids (frozen tables built from train
files), so a SavedModel that contains it still takes raw ids. Training lists may instead carry
their raw features precomputed under `CONTEXT_KEY` (`raw_values` of a layer built from another
time cut's tables): lists from several cuts then train one ranker, each described by the
tables of its own cut, while serving computes them here from the layer's own tables. Padding ("" ids) gets zeros.
`adapt` standardises every feature with constants measured on training lists (kept in the
layer, so serving applies the same ones); `set_tables` swaps the count-based tables for ones
counted on more data (the refit-on-all-train step) without touching that standardisation.

Example:
  >>> layer = CandidateContext(item_ids, counts, text_vectors=vectors)
  >>> feats = layer({"item_id": ids, "history": hist, "retrieval_score": scores})  # [B, S, F]
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.features.id_lists import compact_right
from recommenders_tf.models.tables import FrozenTable

RETRIEVAL_SCORE = "retrieval_score"
CONTEXT_KEY = "candidate_context"
_EPS = 1e-6


def item_neighbors(interactions: pd.DataFrame, item_ids: Sequence[str], neighbors: int = 50,
                   block: int = 2048) -> Tuple[np.ndarray, np.ndarray]:
    """Top-`neighbors` item-item cosine similarities of binary user-item co-occurrence.

    Returns (positions [n, M] int32 into `item_ids`, -1 where fewer; similarities [n, M]
    float32). Items of `interactions` outside `item_ids` are ignored. Computed as a sparse
    product over blocks of `block` items, so the memory is that of one block's co-occurring
    pairs, not of all of them (about users x items-per-user^2: 250M pairs at 10M
    interactions) nor n^2.
    """
    import scipy.sparse as sp

    ids = pd.Index([str(i) for i in item_ids])
    frame = interactions.drop_duplicates([USER_ID, ITEM_ID])
    cols = ids.get_indexer(frame[ITEM_ID].astype(str).to_numpy())
    keep = cols >= 0
    users = pd.factorize(frame[USER_ID].astype(str).to_numpy()[keep])[0]
    cols = cols[keep]
    n, m = len(ids), int(neighbors)
    out_idx = np.full((n, m), -1, np.int32)
    out_sim = np.zeros((n, m), np.float32)
    if len(cols) == 0:
        return out_idx, out_sim
    x = sp.csr_matrix((np.ones(len(cols), np.float32), (users, cols)),
                      shape=(users.max() + 1, n))
    xt = x.T.tocsr()
    norms = np.sqrt(np.asarray(x.sum(0)).ravel()) + 1e-9
    for first in range(0, n, block):
        co = (xt[first:first + block] @ x).tocsr()
        for offset in range(co.shape[0]):
            row = first + offset
            start, stop = co.indptr[offset], co.indptr[offset + 1]
            cols_r = co.indices[start:stop]
            sims = co.data[start:stop] / (norms[row] * norms[cols_r])
            other = cols_r != row
            cols_r, sims = cols_r[other], sims[other]
            if not len(cols_r):
                continue
            top = np.argsort(-sims, kind="stable")[:m]
            out_idx[row, :len(top)] = cols_r[top]
            out_sim[row, :len(top)] = sims[top]
    return out_idx, out_sim


def _masked_standardize(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    weights = tf.cast(mask, tf.float32)
    count = tf.maximum(tf.reduce_sum(weights, -1, keepdims=True), 1.0)
    mean = tf.reduce_sum(values * weights, -1, keepdims=True) / count
    var = tf.reduce_sum(tf.square(values - mean) * weights, -1, keepdims=True) / count
    return (values - mean) / tf.sqrt(var + _EPS) * weights


class CandidateContext(tf.keras.layers.Layer):
    """Dense per-candidate features [B, S, F] from retrieval scores and frozen item tables.

    Args:
      item_ids: ids of the tables' rows (train items).
      counts: train interaction count of each item (same order), for the popularity feature.
      text_vectors: optional [len(item_ids), D] text vectors (e.g. MiniLM); rows are
        L2-normalised here. Without them the text features are left out.
      use_retrieval_score: read `features["retrieval_score"]` [B, S].
      recent: how many of the most recent history items make the "recent" text profile.
      recent_counts: optional interaction count of each item over a recent time window
        (same order), for the trend feature.
      neighbors: optional `item_neighbors(...)` tables for the collaborative features.
      fold_in: optional (Y, P) [len(item_ids), d] tables of the peer score feature.
    """

    def __init__(self, item_ids: Sequence[str], counts: Sequence[float],
                 text_vectors: Optional[np.ndarray] = None, use_retrieval_score: bool = True,
                 recent: int = 5, recent_counts: Optional[Sequence[float]] = None,
                 neighbors: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                 fold_in: Optional[Tuple[np.ndarray, np.ndarray]] = None, **kwargs):
        super().__init__(**kwargs)
        ids = [str(i) for i in item_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("CandidateContext item_ids must be unique")
        counts = np.asarray(counts, np.float64)
        if counts.shape != (len(ids),):
            raise ValueError(f"counts must have one value per item id ({len(ids)}), got "
                             f"{counts.shape}")
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.item_ids = ids
        self.use_retrieval_score = bool(use_retrieval_score)
        self.recent = int(recent)
        # Row 0 is the OOV/padding row of every table: unknown items get zero features.
        self.lookup = tf.keras.layers.StringLookup(vocabulary=ids, num_oov_indices=1,
                                                   mask_token=None, name="context_item_lookup")
        self.popularity = tf.constant(self.popularity_table(counts))
        self.trend = None
        if recent_counts is not None:
            recent_counts = np.asarray(recent_counts, np.float64)
            if recent_counts.shape != (len(ids),):
                raise ValueError(f"recent_counts must have one value per item id ({len(ids)}), "
                                 f"got {recent_counts.shape}")
            self.trend = tf.constant(self.popularity_table(recent_counts))
        self.feature_mean = self.feature_std = None
        self.neighbor_idx = self.neighbor_sim = None
        if neighbors is not None:
            self._set_neighbors(neighbors)
        self.fold_y = self.fold_p = None
        if fold_in is not None:
            self._set_fold_in(fold_in)
        self.text = None
        if text_vectors is not None:
            vectors = np.asarray(text_vectors, np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(ids):
                raise ValueError(f"text_vectors must be [{len(ids)}, D], got {vectors.shape}")
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, _EPS)
            self.text = FrozenTable(vectors, "context_text", zero_row=True)

    def _set_neighbors(self, neighbors: Tuple[np.ndarray, np.ndarray]) -> None:
        idx, sim = (np.asarray(a) for a in neighbors)
        if idx.ndim != 2 or idx.shape[0] != len(self.item_ids) or sim.shape != idx.shape:
            raise ValueError(f"neighbors must be two [{len(self.item_ids)}, M] arrays, got "
                             f"{idx.shape} and {sim.shape}")
        # Shift to lookup rows (0 = unknown); a missing neighbour points at row 0.
        rows = np.where(idx >= 0, idx + 1, 0).astype(np.int32)
        sim = np.where(idx >= 0, sim, 0.0).astype(np.float32)
        if self.neighbor_idx is not None and self.neighbor_idx.shape[1:] == rows.shape[1:]:
            # Swapped in place (`set_tables`): the layer keeps tracking the same tables.
            self.neighbor_idx.values.assign(np.concatenate([np.zeros_like(rows[:1]), rows]))
            self.neighbor_sim.values.assign(np.concatenate([np.zeros_like(sim[:1]), sim]))
            return
        self.neighbor_idx = FrozenTable(rows, "context_neighbor_rows", zero_row=True)
        self.neighbor_sim = FrozenTable(sim, "context_neighbor_weights", zero_row=True)

    def _set_fold_in(self, fold_in: Tuple[np.ndarray, np.ndarray]) -> None:
        y, p = (np.asarray(a, np.float32) for a in fold_in)
        if y.ndim != 2 or y.shape[0] != len(self.item_ids) or p.shape != y.shape:
            raise ValueError(f"fold_in must be two [{len(self.item_ids)}, d] arrays, got "
                             f"{y.shape} and {p.shape}")
        if self.fold_y is not None:
            if self.fold_y.values.shape[1:] != y.shape[1:]:
                raise ValueError(f"fold_in tables must keep width {self.fold_y.values.shape[1]}"
                                 f", got {y.shape[1]}")
            self.fold_y.values.assign(np.concatenate([np.zeros_like(y[:1]), y]))
            self.fold_p.values.assign(np.concatenate([np.zeros_like(p[:1]), p]))
            return
        self.fold_y = FrozenTable(y, "context_fold_in_items", zero_row=True)
        self.fold_p = FrozenTable(p, "context_fold_in_history", zero_row=True)

    def set_tables(self, counts: Sequence[float], recent_counts: Optional[Sequence[float]] = None,
                   neighbors: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                   fold_in: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> None:
        """Swaps the count-based tables (same items, same standardisation constants)."""
        self.popularity = tf.constant(self.popularity_table(np.asarray(counts)))
        if self.trend is not None:
            if recent_counts is None:
                raise ValueError("this layer has a trend feature: pass recent_counts")
            self.trend = tf.constant(self.popularity_table(np.asarray(recent_counts)))
        if self.neighbor_idx is not None:
            if neighbors is None:
                raise ValueError("this layer has collaborative features: pass neighbors")
            self._set_neighbors(neighbors)
        if self.fold_y is not None:
            if fold_in is None:
                raise ValueError("this layer has the peer score feature: pass fold_in")
            self._set_fold_in(fold_in)

    def raw_values(self, features: Mapping[str, np.ndarray], batch_size: int = 256
                   ) -> np.ndarray:
        """Unstandardised features [L, S, F] of lists' entries from this layer's tables."""
        n = len(features["item_id"])
        raw = [self._raw({k: tf.constant(v[s:s + batch_size].astype(str) if v.dtype == object
                                         else v[s:s + batch_size])
                          for k, v in features.items()
                          if k in ("item_id", "history", RETRIEVAL_SCORE)}).numpy()
               for s in range(0, n, batch_size)]
        if not raw:
            return np.zeros(np.shape(features["item_id"]) + (self.num_features,), np.float32)
        return np.concatenate(raw).astype(np.float32)

    def adapt(self, features: Mapping[str, np.ndarray], batch_size: int = 256) -> None:
        """Sets the standardisation constants from (training) lists' unpadded entries (their
        precomputed `CONTEXT_KEY` values when they carry them)."""
        values = (np.asarray(features[CONTEXT_KEY]) if CONTEXT_KEY in features
                  else self.raw_values(features, batch_size))
        mask = np.asarray(features["item_id"]) != ""
        real = values[mask]
        mean = real.mean(0) if len(real) else np.zeros(values.shape[-1])
        std = real.std(0) if len(real) else np.ones(values.shape[-1])
        self.feature_mean = tf.constant(mean.astype(np.float32))
        self.feature_std = tf.constant(np.maximum(std, 1e-3).astype(np.float32))

    @staticmethod
    def popularity_table(counts: np.ndarray) -> np.ndarray:
        """[1 + n] standardised log counts, row 0 (unknown items) at 0."""
        log_pop = np.log1p(np.maximum(np.asarray(counts, np.float64), 0.0))
        std = log_pop.std() or 1.0
        return np.concatenate([[0.0], (log_pop - log_pop.mean()) / std]).astype(np.float32)

    @property
    def feature_names(self) -> List[str]:
        names = ["retrieval_z", "retrieval_gap"] if self.use_retrieval_score else []
        names.append("popularity")
        if self.trend is not None:
            names.append("trend")
        if self.text is not None:
            names += ["text_recent", "text_history", "text_max_recent"]
        if self.neighbor_idx is not None:
            names += ["cf_recent", "cf_max_recent", "cf_history", "cf_max_history"]
        if self.fold_y is not None:
            names.append("peer_z")
        return names

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def _profile(self, vectors: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        weights = tf.cast(valid, tf.float32)[..., None]
        mean = tf.reduce_sum(vectors * weights, 1) / tf.maximum(tf.reduce_sum(weights, 1), 1.0)
        return tf.math.l2_normalize(mean, -1, epsilon=_EPS)

    def _cf(self, rows: tf.Tensor, hist_rows: tf.Tensor, known: tf.Tensor) -> List[tf.Tensor]:
        """Mean and max neighbour similarity of each candidate to a set of history items."""
        n_rows = tf.shape(self.neighbor_sim.values)[0]
        # [B, n+1] indicator of the history's items; row 0 (unknown) never counts.
        weights = tf.cast(known, tf.float32)
        batch, width = tf.shape(hist_rows)[0], tf.shape(hist_rows)[1]
        index = tf.stack([tf.repeat(tf.range(batch), width),
                          tf.reshape(tf.cast(hist_rows, tf.int32), [-1])], 1)
        # A scatter, not a one-hot: [B, n] memory even for a large catalog and long history.
        indicator = tf.tensor_scatter_nd_max(tf.zeros(tf.stack([batch, n_rows])), index,
                                             tf.reshape(weights, [-1]))
        indicator = indicator * tf.concat([[0.0], tf.ones([n_rows - 1])], 0)[None, :]
        nidx = tf.gather(self.neighbor_idx.values, rows)  # [B, S, M]
        nsim = tf.gather(self.neighbor_sim.values, rows)
        hit = tf.gather(indicator, nidx, batch_dims=1)  # [B, S, M]
        count = tf.maximum(tf.reduce_sum(weights, -1), 1.0)[:, None]
        return [tf.reduce_sum(nsim * hit, -1) / count, tf.reduce_max(nsim * hit, -1)]

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        raw = (tf.cast(features[CONTEXT_KEY], tf.float32) if CONTEXT_KEY in features
               else self._raw(features))
        if self.feature_mean is None:
            return raw
        weights = tf.cast(tf.not_equal(tf.convert_to_tensor(features["item_id"]), ""),
                          tf.float32)[..., None]
        return (raw - self.feature_mean) / self.feature_std * weights

    def _raw(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        items = tf.convert_to_tensor(features["item_id"])
        mask = tf.not_equal(items, "")
        weights = tf.cast(mask, tf.float32)
        rows = self.lookup(items)
        parts = []
        if self.use_retrieval_score:
            if RETRIEVAL_SCORE not in features:
                raise KeyError(f"CandidateContext needs features[{RETRIEVAL_SCORE!r}] [B, S]; "
                               f"got {sorted(features)}")
            score = tf.cast(features[RETRIEVAL_SCORE], tf.float32)
            best = tf.reduce_max(tf.where(mask, score, -1e9), -1, keepdims=True)
            parts += [_masked_standardize(score, mask), (score - best) * weights]
        parts.append(tf.gather(self.popularity, rows) * weights)
        if self.trend is not None:
            parts.append(tf.gather(self.trend, rows) * weights)
        if self.text is not None or self.neighbor_idx is not None or self.fold_y is not None:
            # Compacted: "recent" is the right end however the caller padded.
            history = compact_right(features["history"])
        if self.text is not None:
            cand = tf.gather(self.text.values, rows)  # [B, S, D]
            hist_rows = self.lookup(history)
            hist = tf.gather(self.text.values, hist_rows)  # [B, N, D]
            known = tf.logical_and(tf.not_equal(history, ""), hist_rows > 0)
            recent_hist, recent_known = hist[:, -self.recent:], known[:, -self.recent:]
            recent = self._profile(recent_hist, recent_known)
            overall = self._profile(hist, known)
            pair = tf.einsum("bsd,bnd->bsn", cand, recent_hist)
            pair = tf.where(recent_known[:, None, :], pair, -1.0)
            best = tf.where(tf.reduce_any(recent_known, -1)[:, None],
                            tf.reduce_max(pair, -1), 0.0)
            parts += [tf.einsum("bsd,bd->bs", cand, recent) * weights,
                      tf.einsum("bsd,bd->bs", cand, overall) * weights, best * weights]
        if self.neighbor_idx is not None:
            hist_rows = self.lookup(history)
            known = tf.logical_and(tf.not_equal(history, ""), hist_rows > 0)
            recent_rows, recent_known = hist_rows[:, -self.recent:], known[:, -self.recent:]
            parts += [p * weights for p in self._cf(rows, recent_rows, recent_known)]
            parts += [p * weights for p in self._cf(rows, hist_rows, known)]
        if self.fold_y is not None:
            # Unknown and padding ids look up row 0, whose zeros add nothing to the user.
            user = tf.reduce_sum(tf.gather(self.fold_p.values, self.lookup(history)), 1)
            score = tf.einsum("bsd,bd->bs", tf.gather(self.fold_y.values, rows), user)
            parts.append(_masked_standardize(score, mask))
        return tf.stack(parts, -1)
