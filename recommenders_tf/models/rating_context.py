"""Rating-prediction context: what the user thought of items like the candidate.

An id-embedding model learns a user from a 64-d vector; a rating predictor also has the user's
own ratings of their other items, the strongest evidence there is about the next one (the
neighbourhood models of the Netflix Prize, Koren 2008/2010). `RatingContext` turns a user's
rated history into a few dense features per candidate, looked up inside the model from raw ids:

  baseline      mu + b_user + b_item: the global mean, the candidate's shrunk item bias (from
                train) and the user's shrunk bias, computed from the history's ratings
  user_bias, item_bias
                the two biases alone
  item_count    log(1 + the candidate's train ratings): how far item_bias can be trusted
  cf_knn        mean residual rating (r_j - baseline_j) of the candidate's `k` most similar
                history items, weighted by item-item similarity of train residuals (shrunk
                cosine, the candidate's `neighbors` nearest kept): the KNNBaseline predictor
  mf            q_candidate . p_user, with item factors q from ALS on the train residuals and
                the user's factor p solved from the rated history in the graph (the ALS user
                step, "folding in"): a matrix-factorisation prediction for any user who sends
                ratings, known to train or not
  text_knn      the same residual mean over the `k` history items whose large-model text
                vectors are closest to the candidate's, weighted exp((cos - 1) / temperature):
                the only signal for an item with few train ratings
  text_max      the closest history item's cosine
  text_prior    the item biases of the candidate's `text_neighbors` nearest items in text
                (same weights): what the catalogue says of items described like it, the
                evidence left for an item with few or no ratings

The train-derived tables (biases, residual neighbours) see every train rating. A ranker
trained on lists whose labels are in those tables learns to trust them more than they deserve
on new ratings (measured on a validation slice of ml-100k u1.base: least-squares weights fitted
in-sample put 1.42 on cf_knn and none on text_knn, against 0.68 and 0.37 out of sample). So
the training lists get their features cross-fitted (`cross_fit`): each fold's entries are
described by tables built without that fold's ratings, through this same layer; the features
travel with the lists (`CONTEXT_KEY`), and at serving the layer computes them from the tables
of all train. Amounts of evidence (the history's size, the summed kNN similarity) are left out
on purpose: a training list's history lacks the list's own items and its cross-fitted tables
lack a fold, so both run systematically higher at serving than in training; on a tiny
two-taste example they took a model from 0.22 RMSE (a least-squares fit without them) to 0.77.

Example:
  >>> tables = rating_tables(train, item_ids)
  >>> layer = RatingContext(item_ids, tables, text_vectors=vectors)
  >>> lists = lists.with_extra(**{CONTEXT_KEY: cross_fit(layer, lists, train, folds=5)})
  >>> layer.adapt(lists.extra[CONTEXT_KEY], lists.mask)
"""
from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data.schema import ITEM_ID, RATING, USER_ID, check_frame
from recommenders_tf.models.ranking import fit_ranking_model, predict_lists
from recommenders_tf.models.ranking_data import (HISTORY_RATING, RankingLists, pair_lists,
                                                 rating_lists)
from recommenders_tf.models.tables import FrozenTable

CONTEXT_KEY = "rating_context"
CLIP = 5.0  # standardised features are clipped to [-CLIP, CLIP]
_EPS = 1e-6


@dataclasses.dataclass
class RatingTables:
    """Train-derived tables of `RatingContext`, rows aligned with its item ids.

    Args:
      global_mean: mean train rating.
      item_bias: [n] shrunk item biases (0 for an item without train ratings).
      neighbor_idx: [n, M] int32 positions of each item's most similar items, -1 where fewer.
      neighbor_sim: [n, M] float32 their (positive) similarities, 0 where none.
      user_shrinkage: the user-bias shrinkage the layer applies to a history.
      item_factors: [n, f] float32 ALS item factors of the residuals (0 for unrated items).
      item_count: [n] float32 train ratings per item.
      factor_reg: the ridge penalty of the ALS user step the layer repeats for a history.
    """

    global_mean: float
    item_bias: np.ndarray
    neighbor_idx: np.ndarray
    neighbor_sim: np.ndarray
    user_shrinkage: float
    item_factors: np.ndarray
    factor_reg: float
    item_count: np.ndarray


def rating_tables(interactions: pd.DataFrame, item_ids: Sequence[str], neighbors: int = 100,
                  item_shrinkage: float = 25.0, user_shrinkage: float = 10.0,
                  similarity_shrinkage: float = 100.0, iterations: int = 15,
                  factors: int = 32, factor_reg: float = 15.0, factor_iterations: int = 12,
                  seed: int = 0, block: int = 2048) -> RatingTables:
    """Baseline biases and residual item neighbours of explicit ratings.

    Biases: alternating ridge fits of r = mu + b_u + b_i (shrinkages 25 for items and 10 for
    users, Koren's published values, not fitted here). Similarity of items i, j: cosine of
    their residual vectors times n_ij / (n_ij + similarity_shrinkage), n_ij the users who
    rated both; each item keeps its `neighbors` most similar with a positive similarity.
    Computed over blocks of `block` items, so memory is one block's co-rated pairs. Item
    factors: `factor_iterations` rounds of alternating least squares on the residuals (ridge
    `factor_reg`, seeded start), each a linear pass over the ratings.

    Args:
      interactions: rating rows (user_id, item_id, rating); items outside `item_ids` are
        ignored.
      item_ids: the table rows.
    """
    import scipy.sparse as sp

    check_frame(interactions, "interactions", [USER_ID, ITEM_ID, RATING])
    ids = pd.Index([str(i) for i in item_ids])
    n, m = len(ids), int(neighbors)
    cols = ids.get_indexer(interactions[ITEM_ID].astype(str).to_numpy())
    keep = cols >= 0
    cols = cols[keep]
    users = pd.factorize(interactions[USER_ID].astype(str).to_numpy()[keep])[0]
    ratings = interactions[RATING].to_numpy(np.float64)[keep]
    idx = np.full((n, m), -1, np.int32)
    sim = np.zeros((n, m), np.float32)
    if not len(cols):
        return RatingTables(0.0, np.zeros(n, np.float32), idx, sim, float(user_shrinkage),
                            np.zeros((n, int(factors)), np.float32), float(factor_reg),
                            np.zeros(n, np.float32))
    n_users = int(users.max()) + 1
    mu = float(ratings.mean())
    b_user, b_item = np.zeros(n_users), np.zeros(n)
    item_count = np.bincount(cols, minlength=n)
    user_count = np.bincount(users, minlength=n_users)
    for _ in range(iterations):
        b_item = np.bincount(cols, ratings - mu - b_user[users], n) / (item_count + item_shrinkage)
        b_user = np.bincount(users, ratings - mu - b_item[cols], n_users) / (
            user_count + user_shrinkage)
    residual = ratings - mu - b_user[users] - b_item[cols]
    x = sp.csr_matrix((residual, (users, cols)), shape=(n_users, n))
    rated = sp.csr_matrix((np.ones_like(residual), (users, cols)), shape=(n_users, n))
    xt, rated_t = x.T.tocsr(), rated.T.tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel()) + 1e-9
    inverse_norm = sp.diags(1.0 / norms)
    for first in range(0, n, block):
        stop = min(first + block, n)
        both = (rated_t[first:stop] @ rated).tocsr()
        both.data = both.data / (both.data + similarity_shrinkage)
        sims = (sp.diags(1.0 / norms[first:stop]) @ (xt[first:stop] @ x).multiply(both)
                @ inverse_norm).tocsr()
        for offset in range(sims.shape[0]):
            row = first + offset
            start, end = sims.indptr[offset], sims.indptr[offset + 1]
            cols_r, values = sims.indices[start:end], sims.data[start:end]
            good = (cols_r != row) & (values > 0)
            cols_r, values = cols_r[good], values[good]
            top = np.argsort(-values, kind="stable")[:m]
            idx[row, :len(top)] = cols_r[top]
            sim[row, :len(top)] = values[top]
    item_factors = _als_item_factors(x, int(factors), float(factor_reg),
                                     int(factor_iterations), seed)
    return RatingTables(mu, b_item.astype(np.float32), idx, sim, float(user_shrinkage),
                        item_factors, float(factor_reg), item_count.astype(np.float32))


def _ridge_rows(matrix, other: np.ndarray, reg: float) -> np.ndarray:
    """Row r: argmin_p sum_j (m_rj - p.o_j)^2 + reg |p|^2 over the stored entries of row r.

    One small solve per row: faster here than batching the rows' Gram matrices, whose
    [entries, f, f] outer products cost more memory traffic than the per-row BLAS calls
    (measured on ml-100k u1.base, whole table build: 28 s batched, 3.8 s row by row).
    """
    out = np.zeros((matrix.shape[0], other.shape[1]))
    eye = reg * np.eye(other.shape[1])
    for row in range(matrix.shape[0]):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        if start == stop:
            continue  # no ratings: the ridge solution is 0
        o = other[matrix.indices[start:stop]]
        out[row] = np.linalg.solve(o.T @ o + eye, o.T @ matrix.data[start:stop])
    return out


def _als_item_factors(residuals, factors: int, reg: float, iterations: int, seed: int
                      ) -> np.ndarray:
    """Item factors [n, f] of explicit ALS on a users x items residual matrix (csr)."""
    by_user, by_item = residuals.tocsr(), residuals.T.tocsr()
    rng = np.random.default_rng(seed)
    items = rng.normal(0.0, 0.1, (residuals.shape[1], factors))
    for _ in range(iterations):
        users = _ridge_rows(by_user, items, reg)
        items = _ridge_rows(by_item, users, reg)
    return items.astype(np.float32)


class RatingContext(tf.keras.layers.Layer):
    """Dense per-candidate features [B, S, F] from the user's rated history (see module doc).

    A served model with this layer takes `history_rating` beside `history`
    (`serving.ranking_export`).

    Reads `item_id` [B, S], `history` [B, N] and `history_rating` [B, N] (0 on padding, any
    padding side). When the features dict carries `CONTEXT_KEY` [B, S, F] (cross-fitted
    training lists) those raw values are used instead of computing them.

    Args:
      item_ids: ids of the table rows.
      tables: `rating_tables(...)` of train.
      text_vectors: optional [len(item_ids), D] text vectors; without them the text features
        are left out.
      k: history items each kNN feature averages over.
      temperature: sharpness of the text-similarity weights.
      text_neighbors_count: catalogue text neighbours of the text_prior feature.
    """

    reads_history_rating = True

    def __init__(self, item_ids: Sequence[str], tables: RatingTables,
                 text_vectors: Optional[np.ndarray] = None, k: int = 40,
                 temperature: float = 0.05, text_neighbors_count: int = 20, **kwargs):
        super().__init__(**kwargs)
        ids = [str(i) for i in item_ids]
        if len(set(ids)) != len(ids):
            raise ValueError("RatingContext item_ids must be unique")
        if k < 1 or temperature <= 0:
            raise ValueError(f"RatingContext needs k >= 1 and temperature > 0, got {k!r} and "
                             f"{temperature!r}")
        self.item_ids, self.k, self.temperature = ids, int(k), float(temperature)
        # Row 0 is the unknown/padding row of every table.
        self.lookup = tf.keras.layers.StringLookup(vocabulary=ids, num_oov_indices=1,
                                                   mask_token=None, name="rating_item_lookup")
        self.item_bias = self.neighbor_idx = self.neighbor_sim = self.item_factors = None
        self.item_count = None
        self.set_tables(tables)
        self.text = None
        if text_vectors is not None:
            vectors = np.asarray(text_vectors, np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(ids):
                raise ValueError(f"text_vectors must be [{len(ids)}, D], got {vectors.shape}")
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _EPS)
            self.text = FrozenTable(vectors, "rating_text", zero_row=True)
            idx, cos = text_neighbors(vectors, text_neighbors_count)
            self.text_neighbor_idx = FrozenTable(np.where(idx >= 0, idx + 1, 0).astype(np.int32),
                                                 "rating_text_neighbor_rows", zero_row=True)
            self.text_neighbor_cos = FrozenTable(np.where(idx >= 0, cos, -1.0).astype(np.float32),
                                                 "rating_text_neighbor_cos", zero_row=True)
        self.feature_mean = tf.Variable(tf.zeros([self.num_features]), trainable=False,
                                        name="feature_mean")
        self.feature_std = tf.Variable(tf.ones([self.num_features]), trainable=False,
                                       name="feature_std")

    def set_tables(self, tables: RatingTables) -> None:
        """Swaps the train-derived tables in place (same items, same neighbour width)."""
        n = len(self.item_ids)
        bias = np.asarray(tables.item_bias, np.float32)
        idx, sim = np.asarray(tables.neighbor_idx), np.asarray(tables.neighbor_sim)
        if bias.shape != (n,) or idx.ndim != 2 or idx.shape[0] != n or sim.shape != idx.shape:
            raise ValueError(f"RatingTables must have {n} rows, got item_bias {bias.shape}, "
                             f"neighbors {idx.shape} and {sim.shape}")
        rows = np.where(idx >= 0, idx + 1, 0).astype(np.int32)
        sim = np.where(idx >= 0, sim, 0.0).astype(np.float32)
        item_factors = np.asarray(tables.item_factors, np.float32)
        if item_factors.ndim != 2 or item_factors.shape[0] != n:
            raise ValueError(f"RatingTables.item_factors must be [{n}, f], got "
                             f"{item_factors.shape}")
        count = np.asarray(tables.item_count, np.float32)
        if count.shape != (n,):
            raise ValueError(f"RatingTables.item_count must be [{n}], got {count.shape}")
        values = {"item_bias": bias, "neighbor_idx": rows, "neighbor_sim": sim,
                  "item_factors": item_factors, "item_count": np.log1p(count)}
        if self.item_bias is None:
            for name, value in values.items():
                setattr(self, name, FrozenTable(value, f"rating_{name}", zero_row=True))
            self.global_mean = tf.Variable(float(tables.global_mean), trainable=False,
                                           name="global_mean")
            self.user_shrinkage = tf.Variable(float(tables.user_shrinkage), trainable=False,
                                              name="user_shrinkage")
            self.factor_reg = tf.Variable(float(tables.factor_reg), trainable=False,
                                          name="factor_reg")
            return
        for name, value in values.items():
            table = getattr(self, name)
            if tuple(table.shape[1:]) != value.shape[1:]:
                raise ValueError(f"set_tables: {name} must keep width {table.shape[1:]}, got "
                                 f"{value.shape[1:]}")
            table.values.assign(np.concatenate([np.zeros_like(value[:1]), value]))
        self.global_mean.assign(float(tables.global_mean))
        self.user_shrinkage.assign(float(tables.user_shrinkage))
        self.factor_reg.assign(float(tables.factor_reg))

    @property
    def feature_names(self) -> List[str]:
        names = ["baseline", "user_bias", "item_bias", "item_count", "cf_knn", "mf"]
        return names + (["text_knn", "text_max", "text_prior"] if self.text is not None
                        else [])

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def adapt(self, raw: np.ndarray, mask: np.ndarray) -> None:
        """Standardisation constants from raw features [L, S, F] of (training) lists."""
        real = np.asarray(raw, np.float64)[np.asarray(mask, bool)]
        if not len(real):
            return
        self.feature_mean.assign(real.mean(0).astype(np.float32))
        self.feature_std.assign(np.maximum(real.std(0), 1e-3).astype(np.float32))

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        items = tf.convert_to_tensor(features[ITEM_ID])
        raw = (tf.cast(features[CONTEXT_KEY], tf.float32) if CONTEXT_KEY in features
               else self.raw(features))
        weights = tf.cast(tf.not_equal(items, ""), tf.float32)[..., None]
        # Clipped: a feature nearly constant in training (std floored) must not blow up on a
        # value serving sees for the first time.
        z = (raw - self.feature_mean) / self.feature_std
        return tf.clip_by_value(z, -CLIP, CLIP) * weights

    def raw(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Unstandardised features [B, S, F] computed from the tables."""
        if HISTORY_RATING not in features:
            raise KeyError(f"RatingContext needs features[{HISTORY_RATING!r}] [B, N]; got "
                           f"{sorted(features)}")
        items = tf.convert_to_tensor(features[ITEM_ID])
        history = tf.convert_to_tensor(features["history"])
        ratings = tf.cast(features[HISTORY_RATING], tf.float32)
        weights = tf.cast(tf.not_equal(items, ""), tf.float32)
        rows = tf.cast(self.lookup(items), tf.int32)  # [B, S]
        hist_rows = tf.cast(self.lookup(history), tf.int32)  # [B, N]
        known = tf.logical_and(tf.not_equal(history, ""), hist_rows > 0)
        known_f = tf.cast(known, tf.float32)
        mu = self.global_mean
        hist_bias = tf.gather(self.item_bias.values, hist_rows)
        count = tf.reduce_sum(known_f, -1)  # [B]
        user_bias = (tf.reduce_sum((ratings - mu - hist_bias) * known_f, -1)
                     / (count + self.user_shrinkage))
        residual = (ratings - mu - user_bias[:, None] - hist_bias) * known_f  # [B, N]
        item_bias = tf.gather(self.item_bias.values, rows)  # [B, S]
        shape = tf.shape(items)
        user_b = tf.broadcast_to(user_bias[:, None], shape)
        parts = [mu + user_b + item_bias, user_b, item_bias,
                 tf.gather(self.item_count.values, rows),
                 self._cf(rows, hist_rows, residual, known_f),
                 self._mf(rows, hist_rows, residual, known_f)]
        if self.text is not None:
            parts += self._text(rows, hist_rows, residual, known)
        return tf.stack(parts, -1) * weights[..., None]

    def _cf(self, rows, hist_rows, residual, known_f) -> tf.Tensor:
        n_rows = tf.shape(self.neighbor_sim.values)[0]
        batch, width = tf.shape(hist_rows)[0], tf.shape(hist_rows)[1]
        index = tf.stack([tf.repeat(tf.range(batch), width), tf.reshape(hist_rows, [-1])], 1)
        # Scattered into [B, items], not one-hot [B, N, items]: a repeated history item keeps
        # one of its ratings; row 0 (unknown ids and padding) is cleared below.
        rated = tf.tensor_scatter_nd_max(tf.zeros(tf.stack([batch, n_rows])), index,
                                         tf.reshape(known_f, [-1]))
        values = tf.tensor_scatter_nd_update(tf.zeros(tf.stack([batch, n_rows])), index,
                                             tf.reshape(residual, [-1]))
        live = tf.concat([[0.0], tf.ones([n_rows - 1])], 0)[None, :]
        rated, values = rated * live, values * live * rated
        nidx = tf.gather(self.neighbor_idx.values, rows)  # [B, S, M]
        nsim = tf.gather(self.neighbor_sim.values, rows) * tf.gather(rated, nidx, batch_dims=1)
        k = tf.minimum(self.k, tf.shape(nsim)[-1])
        top, where = tf.math.top_k(nsim, k=k)
        picked = tf.gather(tf.gather(values, nidx, batch_dims=1), where, batch_dims=2)
        return tf.reduce_sum(top * picked, -1) / (tf.reduce_sum(top, -1) + 1e-3)

    def _mf(self, rows, hist_rows, residual, known_f) -> tf.Tensor:
        # The ALS user step on the history: (Q_h' Q_h + reg I) p = Q_h' e_h.
        q_hist = tf.gather(self.item_factors.values, hist_rows) * known_f[..., None]
        dim = tf.shape(q_hist)[-1]
        gram = tf.einsum("bnf,bng->bfg", q_hist, q_hist) + self.factor_reg * tf.eye(dim)
        target = tf.einsum("bnf,bn->bf", q_hist, residual)
        user = tf.linalg.solve(gram, target[..., None])[..., 0]  # [B, f]
        return tf.einsum("bsf,bf->bs", tf.gather(self.item_factors.values, rows), user)

    def _text(self, rows, hist_rows, residual, known) -> List[tf.Tensor]:
        cand = tf.gather(self.text.values, rows)  # [B, S, D]
        hist = tf.gather(self.text.values, hist_rows)  # [B, N, D]
        cos = tf.where(known[:, None, :], tf.einsum("bsd,bnd->bsn", cand, hist), -1.0)
        k = tf.minimum(self.k, tf.shape(cos)[-1])
        top, where = tf.math.top_k(cos, k=k)
        live = tf.cast(top > -1.0, tf.float32)
        weight = tf.exp((top - 1.0) / self.temperature) * live
        residual_b = tf.broadcast_to(residual[:, None, :], tf.shape(cos))
        picked = tf.gather(residual_b, where, batch_dims=2)
        best = tf.where(tf.reduce_any(known, -1)[:, None], top[..., 0], 0.0)
        # Rows of unknown candidates (0) have no neighbours: cos -1 gives them weight 0.
        near = tf.gather(self.text_neighbor_idx.values, rows)  # [B, S, M]
        near_w = tf.exp((tf.gather(self.text_neighbor_cos.values, rows) - 1.0)
                        / self.temperature) * tf.cast(near > 0, tf.float32)
        near_bias = tf.gather(self.item_bias.values, near)
        prior = tf.reduce_sum(near_w * near_bias, -1) / (tf.reduce_sum(near_w, -1) + 1e-3)
        return [tf.reduce_sum(weight * picked, -1) / (tf.reduce_sum(weight, -1) + 1e-3), best,
                prior]


def text_neighbors(vectors: np.ndarray, count: int, block: int = 2048
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's `count` nearest other rows by cosine of L2-normalised `vectors`: (positions
    [n, count] int32, -1 where fewer; cosines [n, count] float32). Blocks of `block` rows, so
    memory is block x n, not n^2."""
    n = len(vectors)
    m = max(0, min(int(count), n - 1))
    idx = np.full((n, int(count)), -1, np.int32)
    cos = np.zeros((n, int(count)), np.float32)
    for first in range(0, n, block):
        sims = vectors[first:first + block] @ vectors.T
        rows = np.arange(first, first + len(sims))
        sims[rows - first, rows] = -np.inf  # not its own neighbour
        if m == 0:
            continue
        top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        idx[rows, :m] = top
        cos[rows, :m] = np.take_along_axis(sims, top, 1)
    return idx, cos


def context_values(layer: RatingContext, lists: RankingLists, batch_size: int = 256
                   ) -> np.ndarray:
    """Raw features [L, S, F] of every list entry, computed by `layer` from its tables."""
    if lists.history_rating is None:
        raise ValueError("RatingContext needs lists built with history_ratings=True")
    parts = []
    for start in range(0, len(lists), batch_size):
        stop = start + batch_size
        feats = {ITEM_ID: tf.constant(lists.item_id[start:stop].astype(str)),
                 "history": tf.constant(lists.history[start:stop].astype(str)),
                 HISTORY_RATING: tf.constant(lists.history_rating[start:stop])}
        parts.append(layer.raw(feats).numpy())
    if not parts:
        return np.zeros(lists.item_id.shape + (layer.num_features,), np.float32)
    return np.concatenate(parts).astype(np.float32)


def cross_fit(layer: RatingContext, lists: RankingLists, interactions: pd.DataFrame,
              folds: int = 5, seed: int = 0, **table_args) -> np.ndarray:
    """Raw features [L, S, F] of `lists`, each fold's described by tables without its ratings.

    The lists' entries are (user, item) ratings of `interactions` (e.g. `rating_lists` of
    train); fold f's lists are described by `rating_tables` of `interactions` minus fold f's
    entries, so no entry's own rating is in the tables that describe it. The layer's tables
    are put back to those of all of `interactions` at the end.

    Args:
      layer: the model's `RatingContext`.
      lists: training lists with `history_rating`.
      interactions: the rows the tables come from.
      folds: number of folds (>= 2).
      seed: seed of the fold assignment (by list) and of the tables' factorisation.
      table_args: `rating_tables` arguments (neighbors, shrinkages, ...).
    """
    if folds < 2:
        raise ValueError(f"cross_fit needs folds >= 2, got {folds!r}")
    check_frame(interactions, "interactions", [USER_ID, ITEM_ID, RATING])
    fold = np.random.default_rng(seed).permutation(len(lists)) % folds
    keys = pd.Index(interactions[USER_ID].astype(str) + "\x1f" +
                    interactions[ITEM_ID].astype(str))
    users = np.repeat(lists.user_id.astype(str)[:, None], lists.list_size, 1)
    out = np.zeros(lists.item_id.shape + (layer.num_features,), np.float32)
    try:
        for f in range(folds):
            chosen = np.flatnonzero(fold == f)
            if not len(chosen):
                continue
            entries = lists.mask[chosen]
            held = (users[chosen][entries].astype(object) + "\x1f" +
                    lists.item_id[chosen][entries].astype(str).astype(object))
            rest = interactions[~keys.isin(held)]
            layer.set_tables(rating_tables(rest, layer.item_ids, seed=seed, **table_args))
            out[chosen] = context_values(layer, lists.subset(chosen))
    finally:
        layer.set_tables(rating_tables(interactions, layer.item_ids, seed=seed, **table_args))
    return out


@dataclasses.dataclass
class RatingContextConfig:
    """How a rating model reads the user's rated history (`RatingContext`).

    Args:
      history_len: rated history items the context reads (the model's own id history,
        `RankingConfig.history_len`, may be shorter).
      neighbors, factors, k, temperature: see `rating_tables` and `RatingContext`.
      folds: cross-fitting folds of the training lists' features.
      use_text: read the large-model text vectors (the text_knn, text_max and text_prior
        features).
    """

    history_len: int = 300
    neighbors: int = 100
    factors: int = 32
    k: int = 40
    temperature: float = 0.05
    folds: int = 10
    use_text: bool = True


def list_width(config, context: Optional[RatingContextConfig]) -> int:
    """History width of a rating model's lists: what its id history and its context read."""
    return max(config.history_len, context.history_len if context is not None else 0)


def fit_rating_model(config, train: pd.DataFrame, run_dir: str, *,
                     context: Optional[RatingContextConfig] = None,
                     text: Optional[Tuple[Sequence[str], np.ndarray]] = None,
                     items=None, users=None, list_size: int = 16, held_out: float = 0.1,
                     strategy: Optional[tf.distribute.Strategy] = None):
    """A pointwise ("mse") ranking model that predicts ratings, with a `RatingContext`.

    Trains on `rating_lists` of `train` (history: the user's other items) with `held_out` of
    the lists kept for early stopping; the context features of the training lists are
    cross-fitted (see `cross_fit`), its tables are then those of all of `train`.

    Args:
      config: `models.ranking.RankingConfig` with a rating loss.
      train: rating rows.
      run_dir: `fit_model` run folder.
      context: the context settings; None trains the id-only model.
      text: (item ids, [n, D] vectors) of the items' text; needed when `context.use_text`.
      items, users, strategy: as `fit_ranking_model` (a parameter-server strategy cannot
        place the context layer; the others can).

    Returns:
      (model, FitResult, {"user_id", "item_id"} vocabularies, facts about the lists).
    """
    width = list_width(config, context)
    lists = rating_lists(train, list_size, width, label="rating", history="others",
                         history_ratings=context is not None)
    layer = None
    if context is not None:
        if context.use_text and text is None:
            raise ValueError("fit_rating_model: context.use_text needs text=(ids, vectors)")
        item_ids = ([str(i) for i in text[0]] if text is not None
                    else sorted(train[ITEM_ID].astype(str).unique()))
        table_args = {"neighbors": context.neighbors, "factors": context.factors}
        scope = (strategy or tf.distribute.get_strategy()).scope()
        with scope:
            layer = RatingContext(item_ids, rating_tables(train, item_ids, seed=config.seed,
                                                          **table_args),
                                  text_vectors=text[1] if context.use_text else None,
                                  k=context.k, temperature=context.temperature,
                                  name="rating_context")
        raw = cross_fit(layer, lists, train, folds=context.folds, seed=config.seed, **table_args)
        layer.adapt(raw, lists.mask)
        lists = lists.with_extra(**{CONTEXT_KEY: raw})
    train_lists, val_lists = lists.split(held_out, seed=config.seed)
    model, result, vocabs = fit_ranking_model(config, train_lists, val_lists, train, run_dir,
                                              items=items, users=users, strategy=strategy,
                                              context_features=layer)
    facts = {"lists": "ratings", "label": "rating", "history": "others", "width": width,
             "n_lists": len(lists), "n_train_lists": len(train_lists),
             "n_validation_lists": len(val_lists),
             "context_features": layer.feature_names if layer is not None else []}
    return model, result, vocabs, facts


def predict_ratings(model, pairs: pd.DataFrame, context: pd.DataFrame, history_len: int,
                    list_size: int = 16) -> np.ndarray:
    """The model's rating of every (user, item) row of `pairs` (aligned with its rows), the
    history (`list_width` wide) read from `context` (train): what a served model computes."""
    rated = isinstance(getattr(model, "context_features", None), RatingContext)
    lists, positions = pair_lists(pairs, context, list_size, history_len,
                                  history_ratings=rated)
    scores = predict_lists(model, lists)
    out = np.full(len(pairs), np.nan)
    out[positions[lists.mask]] = scores[lists.mask]
    return out
