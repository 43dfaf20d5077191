"""User profile vectors: the (weighted) mean of the text vectors of each user's TRAIN items.

A profile is what the item-text nearest-neighbour baseline of BENCHMARK.md P3 ranks with, and a
content feature a user tower can take. It must be built from a train split only: a profile that
saw test items would leak the answer into every model that uses it.

Rules:
  * each distinct (user, item) pair of `train` counts once; with ``weighting="rating"`` its
    weight is the mean rating of that pair's interactions (ratings must be >= 0), otherwise 1;
  * items without a vector in the store are skipped and counted (`missing_item_pairs`);
  * the profile is sum(w_i * v_i) / sum(w_i), then L2-normalised (``normalize=True``);
  * a user with no usable train item (none in train, all items unknown, or all weights 0) gets
    a zero vector and is counted in `n_empty`.

Example:
  >>> store = ItemVectors.load("runs/embed_items/synthetic/item_vectors")
  >>> profiles = build_user_profiles(split.train, store, weighting="rating")
  >>> profiles.to_store(store).save("runs/embed_items/synthetic/user_profiles")
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import ITEM_ID, RATING, USER_ID
from recommenders_tf.features.item_vectors import UserVectors, VectorStore

WEIGHTINGS = ("mean", "rating")
_CHUNK_PAIRS = 65_536  # rows of (pair x dim) summed at a time, bounds peak memory


@dataclasses.dataclass
class UserProfiles:
    """Profile vectors of a set of users and how they were made.

    Args:
        user_ids: the profiled users, in the order asked for.
        vectors: float32 [len(user_ids), dim]; zero rows for users without usable train items.
        n_items: distinct train items with a vector that went into each profile.
        has_profile: False for users that got a zero vector (no usable train item).
        weighting: "mean" or "rating".
        normalized: whether rows were L2-normalised.
        missing_item_pairs: (user, item) train pairs of profiled users whose item had no
            vector in the store (skipped).
    """

    user_ids: np.ndarray
    vectors: np.ndarray
    n_items: np.ndarray
    has_profile: np.ndarray
    weighting: str = "mean"
    normalized: bool = True
    missing_item_pairs: int = 0

    @property
    def n_empty(self) -> int:
        """Users that got a zero vector (no usable train item)."""
        return int(np.count_nonzero(~np.asarray(self.has_profile, dtype=bool)))

    def summary(self) -> Dict[str, Any]:
        return {"users": int(len(self.user_ids)), "users_without_train_items": self.n_empty,
                "missing_item_pairs": int(self.missing_item_pairs),
                "weighting": self.weighting, "normalized": self.normalized,
                "mean_items_per_user": float(self.n_items.mean()) if len(self.n_items) else 0.0}

    def to_store(self, items: VectorStore, extra: Optional[Dict[str, Any]] = None) -> UserVectors:
        """A `UserVectors` store of these profiles, carrying the item store's model identity."""
        meta = {"profile": self.summary(), **(extra or {})}
        return UserVectors(ids=self.user_ids, vectors=self.vectors, model=items.model,
                           fingerprint=items.fingerprint, text_fields=items.text_fields,
                           extra=meta)


def train_pairs(train: pd.DataFrame, weighting: str) -> pd.DataFrame:
    """Distinct (user, item) pairs of `train` with their weight; bad rows fail with the row."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    columns = [USER_ID, ITEM_ID] + ([RATING] if weighting == "rating" else [])
    missing = [c for c in columns if c not in train.columns]
    if missing:
        raise ValueError(f"train is missing column(s) {missing}; has {list(train.columns)}")
    for column in columns:
        null = train[column].isna().to_numpy()
        if null.any():
            raise ValueError(f"train row {int(np.flatnonzero(null)[0])}: field '{column}' "
                             "is missing")
    frame = pd.DataFrame({USER_ID: train[USER_ID].astype(str).to_numpy(dtype=object),
                          ITEM_ID: train[ITEM_ID].astype(str).to_numpy(dtype=object)})
    if weighting == "rating":
        ratings = train[RATING].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(ratings) | (ratings < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"train row {row}: field '{RATING}' is {ratings[row]}; rating "
                             "weights must be finite and >= 0")
        frame["w"] = ratings
    else:
        frame["w"] = 1.0
    # A repeated (user, item) pair is one item of the profile, weighted by its mean rating.
    return frame.groupby([USER_ID, ITEM_ID], sort=False, as_index=False)["w"].mean()


def build_user_profiles(train: pd.DataFrame, item_vectors: VectorStore,
                        users: Optional[Iterable[str]] = None, weighting: str = "mean",
                        normalize: bool = True) -> UserProfiles:
    """Profiles of `users` from the vectors of their items in `train` (see the module rules).

    Args:
        train: train interactions only (user_id, item_id, and rating for "rating").
        item_vectors: the item text vectors (`ItemVectors`).
        users: users to profile, in output order; default every train user, sorted. Users
            absent from train get a zero vector.
        weighting: "mean" (every train item weighs 1) or "rating" (weighted by rating).
        normalize: L2-normalise each non-zero profile.
    """
    pairs = train_pairs(train, weighting)
    if users is None:
        user_ids = np.sort(pairs[USER_ID].unique().astype(str)).astype(object)
    else:
        user_ids = np.asarray([str(u) for u in users], dtype=object)
    user_index = pd.Index(user_ids)
    if user_index.has_duplicates:
        raise ValueError(f"users: id {user_index[user_index.duplicated()][0]!r} is listed twice")

    codes = user_index.get_indexer(pairs[USER_ID].to_numpy())
    pairs = pairs[codes >= 0]
    codes = codes[codes >= 0]
    rows = item_vectors.positions(pairs[ITEM_ID].to_numpy())
    found = rows >= 0
    missing_pairs = int((~found).sum())
    codes, rows, weights = codes[found], rows[found], pairs["w"].to_numpy()[found]

    dim = item_vectors.dim
    sums = np.zeros((len(user_ids), dim), dtype=np.float64)
    weight_sums = np.bincount(codes, weights=weights, minlength=len(user_ids))
    n_items = np.bincount(codes, minlength=len(user_ids)).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    codes, rows, weights = codes[order], rows[order], weights[order]
    vectors = item_vectors.vectors
    for start in range(0, len(codes), _CHUNK_PAIRS):
        c = codes[start:start + _CHUNK_PAIRS]
        contrib = vectors[rows[start:start + _CHUNK_PAIRS]].astype(np.float64)
        contrib *= weights[start:start + _CHUNK_PAIRS, None]
        # Codes are sorted, so each user's pairs are contiguous within the chunk.
        starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
        sums[c[starts]] += np.add.reduceat(contrib, starts, axis=0)

    usable = weight_sums > 0
    profiles = np.zeros_like(sums)
    profiles[usable] = sums[usable] / weight_sums[usable, None]
    if normalize:
        norms = np.linalg.norm(profiles, axis=1)
        nonzero = norms > 0
        profiles[nonzero] /= norms[nonzero, None]
    return UserProfiles(user_ids=user_ids, vectors=profiles.astype(np.float32), n_items=n_items,
                        has_profile=usable,
                        weighting=weighting, normalized=normalize,
                        missing_item_pairs=missing_pairs)


def profile_matrix(profiles: UserProfiles,
                   user_ids: Iterable[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Rows of `profiles` for `user_ids` (zeros for users it lacks) and a found-mask."""
    index = pd.Index(profiles.user_ids)
    pos = index.get_indexer(np.asarray([str(u) for u in user_ids], dtype=object))
    found = pos >= 0
    out = np.zeros((len(pos), profiles.vectors.shape[1]), dtype=np.float32)
    out[found] = profiles.vectors[pos[found]]
    return out, found
