"""Per-user lists for the ranking stage: one layout for every loss, training and scoring alike.

A `RankingLists` holds L lists of S entries: the user, their recent history (the DIN feature),
the candidate item ids, labels, and a mask. Padding has item id "", label -1 and mask False,
so TF-Ranking losses and metrics ignore it. Pointwise, pairwise and listwise losses all read
this layout: a pointwise loss simply averages over the unmasked entries.

Builders:
  * `rating_lists` - each user's rated items, in time order, cut into consecutive chunks of S.
    The history of a chunk is the user's items strictly before its first timestamp, so no item
    of the chunk (or after it) leaks into its own feature. Labels are ratings ("rating") or
    clicks, rating >= threshold ("click"). The rating-prediction (P2) setting.
  * `candidate_lists` - each user's positives (e.g. the interactions that followed a time cut)
    plus negatives, sampled either from the retrieval stage's top candidates for that user
    ("hard") or uniformly from the catalog ("easy"); items the user already had before the cut
    are never negatives. The history is the user's most recent items before the cut.
  * `scoring_lists` - a candidate matrix (e.g. the retrieval top 100 per user) with optional
    labels, to re-score.
  * `pair_lists` - arbitrary (user, item) rows grouped into lists, with the row of each entry,
    to predict a rating per row.

Example:
  >>> lists = candidate_lists(val.train, val.test, list_size=50, negatives="hard",
  ...                         candidates=top100, max_positives=5, history_len=50)
  >>> train, held_out = lists.split(0.1, seed=0)
  >>> ds = train.to_dataset(batch_size=32)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.ordering import time_order
from recommenders_tf.data.datasets import PAD, PAD_LABEL, history_layout, user_history
from recommenders_tf.data.schema import ITEM_ID, RATING, TIMESTAMP, USER_ID, check_frame

NEGATIVE_SOURCES = ("hard", "easy")
HISTORY_RATING = "history_rating"
LABELS = ("rating", "click", "binary")


@dataclasses.dataclass
class RankingLists:
    """L padded lists of S candidates with the user's history.

    Args:
      user_id: [L] user ids.
      history: [L, N] the user's most recent items before the list, most recent last,
        left-padded with "".
      item_id: [L, S] candidate ids, "" on padding.
      label: [L, S] float32 labels, -1 on padding.
      mask: [L, S] bool, False on padding.
      extra: {name: [L, S] or [L, S, F] float32} per-entry dense features the model reads by
        name (e.g. "retrieval_score" from the stage before); 0 on padding.
      history_rating: optional [L, N] float32 rating the user gave each history item (0 on
        padding), for models that read what the user thought of their history (P2).
    """

    user_id: np.ndarray
    history: np.ndarray
    item_id: np.ndarray
    label: np.ndarray
    mask: np.ndarray
    extra: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    history_rating: Optional[np.ndarray] = None

    def __post_init__(self):
        n = len(self.user_id)
        for name in ("history", "item_id", "label", "mask"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[0] != n:
                raise ValueError(f"RankingLists.{name} must be [{n}, width], got {value.shape}")
        if self.item_id.shape != self.label.shape or self.item_id.shape != self.mask.shape:
            raise ValueError(f"RankingLists item_id {self.item_id.shape}, label "
                             f"{self.label.shape} and mask {self.mask.shape} must match")
        for name, value in self.extra.items():
            if np.shape(value)[:2] != self.item_id.shape or np.ndim(value) > 3:
                raise ValueError(f"RankingLists.extra[{name!r}] must be {self.item_id.shape} "
                                 f"(or with one trailing feature axis), got {np.shape(value)}")
        self.extra = {k: np.where(self.mask.reshape(self.mask.shape + (1,) * (np.ndim(v) - 2)),
                                  np.asarray(v, np.float32), 0.0).astype(np.float32)
                      for k, v in self.extra.items()}
        if self.history_rating is not None:
            if np.shape(self.history_rating) != self.history.shape:
                raise ValueError(f"RankingLists.history_rating must be {self.history.shape}, "
                                 f"got {np.shape(self.history_rating)}")
            self.history_rating = np.where(self.history != PAD,
                                           np.asarray(self.history_rating, np.float32),
                                           0.0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def list_size(self) -> int:
        return int(self.item_id.shape[1])

    @property
    def num_entries(self) -> int:
        """Real (unpadded) entries: the examples a pointwise model would see."""
        return int(self.mask.sum())

    def features(self) -> Dict[str, np.ndarray]:
        """The feature dict the ranking model reads (plus label and mask)."""
        rated = {} if self.history_rating is None else {HISTORY_RATING: self.history_rating}
        return {USER_ID: self.user_id, "history": self.history, ITEM_ID: self.item_id,
                "label": self.label, "mask": self.mask, **rated, **self.extra}

    def subset(self, index) -> "RankingLists":
        index = np.asarray(index)
        return RankingLists(self.user_id[index], self.history[index], self.item_id[index],
                            self.label[index], self.mask[index],
                            {k: v[index] for k, v in self.extra.items()},
                            None if self.history_rating is None else self.history_rating[index])

    def with_extra(self, **extra: np.ndarray) -> "RankingLists":
        """A copy carrying more per-entry features (see `extra`)."""
        return RankingLists(self.user_id, self.history, self.item_id, self.label, self.mask,
                            {**self.extra, **extra}, self.history_rating)

    @staticmethod
    def concat(parts: Sequence["RankingLists"]) -> "RankingLists":
        """The lists of `parts` one after another; they must agree on widths and features."""
        parts = list(parts)
        if not parts:
            raise ValueError("RankingLists.concat needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if (part.item_id.shape[1] != first.item_id.shape[1]
                    or part.history.shape[1] != first.history.shape[1]
                    or sorted(part.extra) != sorted(first.extra)
                    or (part.history_rating is None) != (first.history_rating is None)):
                raise ValueError("RankingLists.concat: parts differ in list size, history "
                                 "length or features")
        join = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return RankingLists(join("user_id"), join("history"), join("item_id"), join("label"),
                            join("mask"),
                            {k: np.concatenate([p.extra[k] for p in parts]) for k in first.extra},
                            None if first.history_rating is None else join("history_rating"))

    def split(self, fraction: float, seed: int = 0) -> Tuple["RankingLists", "RankingLists"]:
        """(rest, held-out): a seeded random `fraction` of the lists is held out."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"held-out fraction must be in (0, 1), got {fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_out = max(1, int(round(fraction * len(self))))
        if n_out >= len(self):
            raise ValueError(f"cannot hold out {fraction:.0%} of {len(self)} lists and keep "
                             "any for training")
        return self.subset(np.sort(order[n_out:])), self.subset(np.sort(order[:n_out]))

    def to_dataset(self, batch_size: int, shuffle: bool = True, seed: int = 0):
        """Batched tf.data dataset of the feature dicts."""
        import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
        import tensorflow as tf

        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        feats = self.features()
        tensors = {k: tf.constant(v.astype(str) if v.dtype == object else v)
                   for k, v in feats.items()}
        ds = tf.data.Dataset.from_tensor_slices(tensors)
        if shuffle:
            ds = ds.shuffle(max(1, len(self)), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _check_sizes(list_size: int, history_len: int) -> int:
    if int(list_size) < 1:
        raise ValueError(f"list_size must be >= 1, got {list_size!r}")
    if int(history_len) < 0:
        raise ValueError(f"history_len must be >= 0, got {history_len!r}")
    return max(1, int(history_len))  # a width-0 string tensor cannot carry its dtype


def _history_table(context: pd.DataFrame, width: int) -> Tuple[pd.Index, np.ndarray]:
    if len(context) == 0:
        return pd.Index([], dtype=object), np.zeros((0, width), dtype=object)
    hist = user_history(context, width)
    return pd.Index(hist[USER_ID].astype(object)), hist["history"]


def histories_for(users: Sequence[str], context: pd.DataFrame, history_len: int) -> np.ndarray:
    """[len(users), max(1, history_len)] most recent context items per user ("" if none)."""
    width = max(1, int(history_len))
    index, table = _history_table(context, width)
    users = np.asarray([str(u) for u in users], dtype=object)
    out = np.full((len(users), width), PAD, dtype=object)
    if history_len > 0:
        pos = index.get_indexer(users)
        known = pos >= 0
        out[known] = table[pos[known]]
    return out


def rated_histories_for(users: Sequence[str], context: pd.DataFrame, history_len: int
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """`histories_for` with the ratings: ([len(users), width] ids, [len(users), width] float32
    rating of each, 0 on padding); the same items in the same (time, item id) order."""
    width = max(1, int(history_len))
    users = np.asarray([str(u) for u in users], dtype=object)
    items = np.full((len(users), width), PAD, dtype=object)
    ratings = np.zeros((len(users), width), np.float32)
    if history_len <= 0 or len(context) == 0:
        return items, ratings
    check_frame(context, "context", [USER_ID, ITEM_ID, RATING, TIMESTAMP])
    codes, known_users = pd.factorize(context[USER_ID].astype(str), sort=True)
    item_codes = pd.factorize(context[ITEM_ID], sort=True)[0]
    order = time_order(codes, context[TIMESTAMP].to_numpy(), item_codes)
    s_users = codes[order]
    s_items = context[ITEM_ID].astype(str).to_numpy(dtype=object)[order]
    s_ratings = context[RATING].to_numpy(np.float32)[order]
    pos = pd.Index(known_users).get_indexer(users)
    known = pos >= 0
    start = np.searchsorted(s_users, pos[known], side="left")
    end = np.searchsorted(s_users, pos[known], side="right")
    source = end[:, None] - width + np.arange(width)[None, :]
    valid = source >= start[:, None]
    source = np.maximum(source, 0)
    items[known] = np.where(valid, s_items[source], PAD)
    ratings[known] = np.where(valid, s_ratings[source], 0.0)
    return items, ratings


def _labels(values: np.ndarray, label: str, threshold: float) -> np.ndarray:
    if label == "rating":
        return values.astype(np.float32)
    if label == "click":
        return (values >= threshold).astype(np.float32)
    if label == "binary":
        return np.ones(len(values), np.float32)
    raise ValueError(f"label must be one of {LABELS}, got {label!r}")


HISTORIES = ("before", "others")


def rating_lists(interactions: pd.DataFrame, list_size: int, history_len: int,
                 label: str = "rating", click_threshold: float = 4.0,
                 history: str = "before", history_ratings: bool = False) -> RankingLists:
    """Each user's interactions in time order, cut into consecutive lists of `list_size`.

    Every interaction appears in exactly one list, so one epoch over the lists is one epoch
    over the interactions.

    Args:
      interactions: canonical interactions.
      list_size: entries per list (the last list of a user is padded).
      history_len: history width; 0 gives an all-padding history.
      label: "rating", "click" (rating >= click_threshold) or "binary" (all 1).
      click_threshold: rating that counts as a click.
      history: "before" - the user's items with a timestamp strictly before the list's first
        interaction (time-respecting, for temporal protocols); "others" - the user's most
        recent items outside the list, earlier or later (for random rating splits such as
        P2, where serving sees the user's latest items: like SVD++'s implicit feedback, but
        an entry's own item is never in its history).
      history_ratings: also fill `history_rating` with the user's rating of each history item.
    """
    if history not in HISTORIES:
        raise ValueError(f"history must be one of {HISTORIES}, got {history!r}")
    check_frame(interactions, "interactions", [USER_ID, ITEM_ID, RATING, TIMESTAMP])
    width = _check_sizes(list_size, history_len)
    n = len(interactions)
    users = pd.factorize(interactions[USER_ID], sort=True)[0]
    items = pd.factorize(interactions[ITEM_ID], sort=True)[0]
    order = time_order(users, interactions[TIMESTAMP].to_numpy(), items)
    frame = interactions.iloc[order].reset_index(drop=True)
    s_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_users)) + 1] if n else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)
    chunk = position // list_size
    slot = position % list_size
    # List number of each row: lists of earlier users, then this user's chunk.
    lists_per_user = -(-sizes // list_size)
    first_list = np.r_[0, np.cumsum(lists_per_user)[:-1]] if n else np.zeros(0, np.int64)
    row_list = np.repeat(first_list, sizes) + chunk
    n_lists = int(lists_per_user.sum())

    item_id = np.full((n_lists, list_size), PAD, dtype=object)
    labels = np.full((n_lists, list_size), PAD_LABEL, dtype=np.float32)
    mask = np.zeros((n_lists, list_size), dtype=bool)
    item_id[row_list, slot] = frame[ITEM_ID].astype(str).to_numpy(dtype=object)
    labels[row_list, slot] = _labels(frame[RATING].to_numpy(np.float32), label, click_threshold)
    mask[row_list, slot] = True
    user_id = np.empty(n_lists, dtype=object)
    user_id[row_list] = frame[USER_ID].astype(str).to_numpy(dtype=object)
    hist = np.full((n_lists, width), PAD, dtype=object)
    hist_rating = np.zeros((n_lists, width), np.float32)
    s_items = frame[ITEM_ID].astype(str).to_numpy(dtype=object)
    s_ratings = frame[RATING].to_numpy(np.float32)
    if history_len > 0 and n and history == "before":
        # `frame` is already in the layout's (user, time, item) order, so its sorted
        # positions are `frame`'s rows.
        layout = history_layout(frame)
        first_rows = np.flatnonzero(slot == 0)
        source = layout.run_start[first_rows, None] - width + np.arange(width)[None, :]
        valid = source >= layout.user_start[first_rows, None]
        source = np.maximum(source, 0)
        hist[row_list[first_rows]] = np.where(valid, s_items[source], PAD)
        hist_rating[row_list[first_rows]] = np.where(valid, s_ratings[source], 0.0)
    elif history_len > 0 and n:
        for start, size, first in zip(starts, sizes, first_list):
            user_rows = np.arange(start, start + size)
            for c in range(0, size, list_size):
                others = np.concatenate([user_rows[:c], user_rows[c + list_size:]])[-width:]
                if len(others):
                    hist[first + c // list_size, width - len(others):] = s_items[others]
                    hist_rating[first + c // list_size, width - len(others):] = \
                        s_ratings[others]
    return RankingLists(user_id, hist, item_id, labels, mask,
                        history_rating=hist_rating if history_ratings else None)


def _ranked_candidates(candidates) -> Dict[str, np.ndarray]:
    if isinstance(candidates, Mapping):
        return {str(u): np.asarray([str(i) for i in items if str(i) != PAD], dtype=object)
                for u, items in candidates.items()}
    raise TypeError("candidates must map user id -> ranked candidate item ids, got "
                    f"{type(candidates).__name__}")


def candidate_lists(context: pd.DataFrame, positives: pd.DataFrame, list_size: int,
                    negatives: str = "hard",
                    candidates: Optional[Mapping[str, Sequence[str]]] = None,
                    catalog: Optional[Sequence[str]] = None, max_positives: int = 5,
                    history_len: int = 50, label: str = "binary",
                    click_threshold: float = 4.0, seed: int = 0) -> RankingLists:
    """Lists of a user's positives plus sampled negatives, for pairwise/listwise training.

    Each user's distinct positive items are shuffled and cut into groups of `max_positives`;
    every group becomes one list, filled up to `list_size` with negatives drawn without
    replacement from the user's pool:
      * "hard": the user's retrieval candidates (`candidates[user]`, e.g. the top 100);
      * "easy": every `catalog` item (default: the items of `context` and `positives`).
    The pool never holds the user's positives or context items. When the pool runs short the
    list is padded. Entries are shuffled within a list, so position carries no label.

    Args:
      context: what the user had before (histories come from it; its items are never
        negatives).
      positives: the interactions to rank high (e.g. the ones after the time cut).
      list_size: entries per list.
      negatives: "hard" or "easy".
      candidates: {user id: ranked candidate ids}; needed for "hard".
      catalog: item ids for "easy" negatives.
      max_positives: positives per list (must leave room for at least one negative).
      history_len: history width.
      label: "binary" (positives 1), "rating" (their rating) or "click" (rating >=
        click_threshold, so a low rating becomes a 0-labelled entry).
      seed: seed of grouping, sampling and in-list order.
    """
    check_frame(context, "context", [USER_ID, ITEM_ID])
    check_frame(positives, "positives", [USER_ID, ITEM_ID])
    width = _check_sizes(list_size, history_len)
    if negatives not in NEGATIVE_SOURCES:
        raise ValueError(f"negatives must be one of {NEGATIVE_SOURCES}, got {negatives!r}")
    if not 1 <= int(max_positives) < int(list_size):
        raise ValueError(f"max_positives must be in [1, list_size), got {max_positives!r} "
                         f"with list_size {list_size}")
    if negatives == "hard" and candidates is None:
        raise ValueError("negatives='hard' needs candidates={user: retrieval top items}")
    if label != "binary":
        check_frame(positives, "positives", [RATING])
    pools = _ranked_candidates(candidates) if negatives == "hard" else None
    if negatives == "easy":
        catalog_ids = (np.union1d(context[ITEM_ID].astype(str).to_numpy(),
                                  positives[ITEM_ID].astype(str).to_numpy())
                       if catalog is None else np.unique(np.asarray(catalog, dtype=str)))
        catalog_ids = catalog_ids.astype(object)
    rng = np.random.default_rng(seed)
    seen = context.groupby(context[USER_ID].astype(str))[ITEM_ID].agg(
        lambda s: set(s.astype(str)))
    pos = positives.assign(_u=positives[USER_ID].astype(str), _i=positives[ITEM_ID].astype(str))
    # One entry per (user, item): the largest label among repeats.
    values = (_labels(pos[RATING].to_numpy(np.float32), label, click_threshold)
              if label != "binary" else np.ones(len(pos), np.float32))
    pos = (pos.assign(_y=values).sort_values(["_u", "_i", "_y"], ascending=[True, True, False])
           .drop_duplicates(["_u", "_i"]))
    out_users, out_items, out_labels = [], [], []
    for user, group in pos.groupby("_u", sort=True):
        items = group["_i"].to_numpy(dtype=object)
        ys = group["_y"].to_numpy(np.float32)
        exclude = set(items) | seen.get(user, set())
        if pools is not None:
            pool = pools.get(user, np.zeros(0, dtype=object))
        else:
            pool = catalog_ids
        pool = pool[~np.isin(pool, list(exclude))] if len(exclude) else pool
        order = rng.permutation(len(items))
        for start in range(0, len(items), max_positives):
            chosen = order[start:start + max_positives]
            n_neg = min(list_size - len(chosen), len(pool))
            neg = pool[rng.choice(len(pool), size=n_neg, replace=False)] if n_neg else pool[:0]
            row_items = np.concatenate([items[chosen], neg])
            row_labels = np.concatenate([ys[chosen], np.zeros(n_neg, np.float32)])
            shuffle = rng.permutation(len(row_items))
            out_users.append(user)
            out_items.append(row_items[shuffle])
            out_labels.append(row_labels[shuffle])
    n_lists = len(out_users)
    item_id = np.full((n_lists, list_size), PAD, dtype=object)
    labels = np.full((n_lists, list_size), PAD_LABEL, dtype=np.float32)
    mask = np.zeros((n_lists, list_size), dtype=bool)
    for r, (items, ys) in enumerate(zip(out_items, out_labels)):
        item_id[r, :len(items)] = items
        labels[r, :len(items)] = ys
        mask[r, :len(items)] = True
    users = np.asarray(out_users, dtype=object)
    history = histories_for(users, context, history_len) if history_len > 0 else \
        np.full((n_lists, width), PAD, dtype=object)
    return RankingLists(users, history, item_id, labels, mask)


def scoring_lists(user_ids: Sequence[str], item_ids: np.ndarray, context: pd.DataFrame,
                  history_len: int, relevant: Optional[pd.DataFrame] = None) -> RankingLists:
    """One list per user over a candidate matrix (e.g. the retrieval top K), for re-scoring.

    Args:
      user_ids: [U] users.
      item_ids: [U, K] candidate ids, "" where a user has fewer than K.
      context: interactions the histories come from.
      history_len: history width.
      relevant: optional interactions whose (user, item) pairs get label 1 (others 0).
    """
    users = np.asarray([str(u) for u in user_ids], dtype=object)
    items = np.asarray(item_ids, dtype=object)
    if items.ndim != 2 or items.shape[0] != len(users):
        raise ValueError(f"item_ids must be [{len(users)} users, K], got {items.shape}")
    width = _check_sizes(max(1, items.shape[1]), history_len)
    mask = items != PAD
    labels = np.zeros(items.shape, np.float32)
    if relevant is not None:
        check_frame(relevant, "relevant", [USER_ID, ITEM_ID])
        pairs = set(zip(relevant[USER_ID].astype(str), relevant[ITEM_ID].astype(str)))
        for r, u in enumerate(users):
            labels[r] = [1.0 if (u, i) in pairs else 0.0 for i in items[r]]
    labels[~mask] = PAD_LABEL
    history = (histories_for(users, context, history_len) if history_len > 0
               else np.full((len(users), width), PAD, dtype=object))
    return RankingLists(users, history, items, labels, mask)


def pair_lists(pairs: pd.DataFrame, context: pd.DataFrame, list_size: int,
               history_len: int, history_ratings: bool = False
               ) -> Tuple[RankingLists, np.ndarray]:
    """Rows of (user, item) grouped by user into lists, to score every row once.

    The history is the user's most recent `context` items; `history_ratings` adds their
    ratings (`RankingLists.history_rating`).

    Returns:
      (lists, rows): `rows[l, s]` is the row of `pairs` at list l, slot s (-1 on padding).
      Labels are the rows' ratings when `pairs` has a rating column, else 0.
    """
    check_frame(pairs, "pairs", [USER_ID, ITEM_ID])
    width = _check_sizes(list_size, history_len)
    users = pairs[USER_ID].astype(str).to_numpy(dtype=object)
    order = np.argsort(users, kind="stable")
    s_users = users[order]
    n = len(pairs)
    starts = np.r_[0, np.flatnonzero(s_users[1:] != s_users[:-1]) + 1] if n else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, sizes)
    lists_per_user = -(-sizes // list_size)
    first_list = np.r_[0, np.cumsum(lists_per_user)[:-1]] if n else np.zeros(0, int)
    row_list = np.repeat(first_list, sizes) + position // list_size
    slot = position % list_size
    n_lists = int(lists_per_user.sum())
    rows = np.full((n_lists, list_size), -1, dtype=np.int64)
    rows[row_list, slot] = order
    item_id = np.full((n_lists, list_size), PAD, dtype=object)
    item_id[row_list, slot] = pairs[ITEM_ID].astype(str).to_numpy(dtype=object)[order]
    labels = np.full((n_lists, list_size), PAD_LABEL, dtype=np.float32)
    labels[row_list, slot] = (pairs[RATING].to_numpy(np.float32)[order] if RATING in pairs
                              else 0.0)
    list_users = np.empty(n_lists, dtype=object)
    list_users[row_list] = s_users
    if history_ratings:
        history, rated = rated_histories_for(list_users, context, history_len)
    else:
        rated = None
        history = (histories_for(list_users, context, history_len) if history_len > 0
                   else np.full((n_lists, width), PAD, dtype=object))
    return RankingLists(list_users, history, item_id, labels, rows >= 0,
                        history_rating=rated), rows


def list_ndcg_at_10(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> float:
    """Mean NDCG@10 (gain 2^y - 1, TF-Ranking's default) of lists [L, S] with a positive label;
    entries outside `mask` never rank. The one judge of "does this stage beat its input order"
    on held-out lists (the ranker's start, the re-ranker's fallback)."""
    scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    gains = np.power(2.0, np.take_along_axis(labels * mask, order, 1)) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    ideal = np.power(2.0, np.sort(labels * mask, axis=1)[:, ::-1][:, :10]) - 1.0
    idcg = (ideal * discounts[:ideal.shape[1]]).sum(1)
    ok = idcg > 0
    return float(((gains * discounts).sum(1)[ok] / idcg[ok]).mean()) if ok.any() else 0.0
