"""Candidate lists passed from one cascade stage to the next, with the scores they carry.

`retrieve` ranks the catalog for a batch of users with any scorer of the peers' interface
(`score(user_ids, item_ids) -> [U, I]`), drops each user's seen items, and keeps the top K ids
AND their scores: the next stage reads the retrieval score as a feature, so it must travel with
the ids.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.datasets import PAD
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.evaluation.registry import CANDIDATE_SOURCE, available, get_spec


def seen_positions(exclude: Optional[pd.DataFrame], catalog: np.ndarray) -> Dict[str, np.ndarray]:
    """{user: catalog positions of the user's `exclude` items}."""
    if exclude is None or not len(exclude):
        return {}
    pos = pd.Index(catalog).get_indexer(exclude[ITEM_ID].astype(str).to_numpy())
    frame = pd.DataFrame({"u": exclude[USER_ID].astype(str).to_numpy(), "p": pos})
    frame = frame[frame["p"] >= 0]
    return {u: g.to_numpy() for u, g in frame.groupby("u")["p"]}


def retrieve(score_fn, user_ids: Sequence[str], catalog: Sequence[str],
             exclude: Optional[pd.DataFrame], k: int, batch_size: int = 512,
             seen: Optional[Dict[str, np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k (ids [U, k] object, scores [U, k] float32) per user, best first, seen excluded.

    Ties are broken by catalog position (the P1 rule when the catalog is sorted by id). Rows
    with fewer than k rankable items are padded with "" and score 0. `seen` (from
    `seen_positions(exclude, catalog)`) saves recomputing the exclusions per call.
    """
    from recommenders_tf.evaluation.protocol import select_topk

    users = np.asarray([str(u) for u in user_ids], dtype=object)
    catalog = np.asarray([str(i) for i in catalog], dtype=object)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if seen is None:
        seen = seen_positions(exclude, catalog)
    ids = np.full((len(users), k), PAD, dtype=object)
    scores = np.zeros((len(users), k), np.float32)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        s = np.asarray(score_fn(batch), dtype=np.float64).copy()
        if s.shape != (len(batch), len(catalog)):
            raise ValueError(f"score_fn returned {s.shape}, expected {(len(batch), len(catalog))}")
        for r, u in enumerate(batch):
            if u in seen:
                s[r, seen[u]] = -np.inf
        top = select_topk(s, k)
        valid = top >= 0
        rows = np.arange(len(batch))[:, None]
        got = np.where(valid, s[rows, np.maximum(top, 0)], 0.0)
        got = np.where(np.isfinite(got), got, 0.0)
        ids[start:start + len(batch)] = np.where(valid & np.isfinite(
            s[rows, np.maximum(top, 0)]), catalog[np.maximum(top, 0)], PAD)
        scores[start:start + len(batch)] = got
    return ids, scores


# ---- candidate sources ---------------------------------------------------------------------

# The retrieval stages of the model registry (entries tagged "candidate-source"), as of import;
# `make_candidate_source` asks the registry itself, so later registrations count too.
CANDIDATE_SOURCES: Tuple[str, ...] = available(kind=CANDIDATE_SOURCE)


def make_candidate_source(name: str, item_ids: Sequence[str],
                          items: Optional[pd.DataFrame] = None, seed: int = 0):
    """A retrieval stage with `fit(train, validation)` / `score(user_ids, item_ids)`.

    "two-tower" is the project's `TwoTowerRecommender`; the `implicit` peers and most-popular
    stand in for it where a cheaper candidate generator is wanted (tests, quick runs).

    Args:
      name: a registry entry tagged "candidate-source" (`CANDIDATE_SOURCES`).
      item_ids: the catalog, default column order of the source's `score`.
      items: the items frame (the two-tower reads genres from it), or None.
      seed: the source's seed.

    Example:
      >>> source = make_candidate_source("implicit-ALS", catalog, seed=0)
      >>> source.fit(val.train, validation=val.test)
      >>> top = top_candidates(lambda u: source.score(u, catalog), users, catalog, train, 100)
    """
    sources = available(kind=CANDIDATE_SOURCE)
    if name not in sources:
        raise ValueError(f"unknown candidate source {name!r}; choose one of {', '.join(sources)}")
    return get_spec(name).build(item_ids=item_ids, items=items, seed=seed)


def top_candidates(score_fn, user_ids: Sequence[str], item_ids: Sequence[str],
                   exclude: Optional[pd.DataFrame], k: int, batch_size: int = 512
                   ) -> np.ndarray:
    """[U, k] best-scored item ids per user, best first, without the user's `exclude` items.

    The ids of `retrieve` without its scores, for callers that only need the candidates
    (hard negatives of the ranking lists, re-scoring benchmarks).

    Args:
      score_fn: (user_ids) -> scores [n, len(item_ids)] (e.g. a recommender's `score`).
      user_ids: users.
      item_ids: the catalog, column order of `score_fn`.
      exclude: interactions whose (user, item) pairs may not be candidates (the user's
        history); None excludes nothing.
      k: candidates per user; "" fills rows with fewer than k rankable items.
      batch_size: users scored per `score_fn` call.
    """
    return retrieve(score_fn, user_ids, item_ids, exclude, k, batch_size)[0]
