"""A fitted cascade: its stages, the tables they read, and every stage's lists for users.

`Cascade.run` scores users through retrieval (full catalogue -> `retrieval_k`), ranking
(-> `ranking_k`), re-ranking, diversity and the business rules (-> `k`), returning every stage's
list (`StageLists`). It runs `Cascade.graph()`, the `CascadeGraph` the export saves, batched:
there is no second implementation of any stage.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.graph import CascadeGraph
from recommenders_tf.data.datasets import PAD
from recommenders_tf.data.schema import GENRES, ITEM_ID, TIMESTAMP, USER_ID
from recommenders_tf.index.scann_index import RetrievalIndex, build_index
from recommenders_tf.models.candidate_features import CandidateContext
from recommenders_tf.models.ranking import RankingModel
from recommenders_tf.models.ranking_data import histories_for
from recommenders_tf.models.recommender import TwoTowerRecommender
from recommenders_tf.models.reranking import Reranker


def item_counts(interactions: pd.DataFrame, catalog: np.ndarray,
                recent_share: Optional[float] = None) -> np.ndarray:
    """Interactions per catalog item, optionally over the latest `recent_share` only."""
    frame = interactions
    if recent_share is not None and recent_share < 1.0 and len(frame):
        cut = frame[TIMESTAMP].quantile(1.0 - recent_share)
        frame = frame[frame[TIMESTAMP] >= cut]
    return (frame[ITEM_ID].astype(str).value_counts().reindex(catalog).fillna(0)
            .to_numpy(np.float64))


def genre_vectors(items: Optional[pd.DataFrame], catalog: np.ndarray) -> Optional[np.ndarray]:
    """[n, G] multi-hot genres of the catalog (the P1 tables' diversity features), or None."""
    if items is None or GENRES not in items.columns:
        return None
    from recommenders_tf.evaluation.protocol import genre_features

    table = genre_features(items)
    table.index = table.index.astype(str)
    return table.reindex(catalog).fillna(0.0).to_numpy(np.float32)


def item_categories(items: Optional[pd.DataFrame], catalog: np.ndarray) -> Dict[str, str]:
    """{item: first listed genre}: the category of the per-category caps."""
    if items is None or GENRES not in items.columns:
        return {}
    frame = items.drop_duplicates(ITEM_ID)
    first = frame[GENRES].fillna("").astype(str).str.split("|").str[0]
    known = set(catalog)
    return {i: g for i, g in zip(frame[ITEM_ID].astype(str), first) if g and i in known}


@dataclasses.dataclass
class StageLists:
    """One user batch's lists after each stage (ids "" / scores -inf on padding).

    retrieval_*: [U, retrieval_k] in retrieval order; ranking_*: [U, ranking_k] in ranker
    order; rerank_*: [U, ranking_k] in re-ranker order (scores are re-ranker scores);
    final_*: [U, k] after diversity and rules, with the final scores.
    """

    user_ids: np.ndarray
    retrieval_ids: np.ndarray
    retrieval_scores: np.ndarray
    ranking_ids: np.ndarray
    ranking_scores: np.ndarray
    rerank_ids: np.ndarray
    rerank_scores: np.ndarray
    final_ids: np.ndarray
    final_scores: np.ndarray
    sources: Optional[np.ndarray] = None  # [U] "cascade" or "fallback" (unknown users)

    def stage_rank(self, stage: str, ids: np.ndarray) -> np.ndarray:
        """1-based rank of each of `ids` [U, n] in a stage's list (0 where absent)."""
        table = getattr(self, f"{stage}_ids")
        out = np.zeros(ids.shape, np.int64)
        for r in range(len(ids)):
            pos = {item: j + 1 for j, item in enumerate(table[r]) if item != PAD}
            out[r] = [pos.get(i, 0) for i in ids[r]]
        return out


class Cascade:
    """The fitted stages and the tables they read; `run` scores users through all of them.

    Attributes:
      config, retrieval (TwoTowerRecommender, fitted on all of train), ranker (RankingModel),
      reranker (Reranker), context (the ranker's CandidateContext, on all-train counts),
      catalog (sorted train item ids), text (aligned [n, D] text vectors or None),
      diversity_vectors (aligned [n, G] genre multi-hot, or the text vectors, or None),
      categories ({item: category}), popularity (train counts), histories (train users'
      most recent items), report (what was trained on, epochs, timings).
    """

    def __init__(self, config: CascadeConfig, retrieval: TwoTowerRecommender,
                 ranker: RankingModel, reranker: Reranker, context: CandidateContext,
                 catalog: np.ndarray, train: pd.DataFrame, text: Optional[np.ndarray],
                 items: Optional[pd.DataFrame], report: Dict[str, Any]):
        self.config = config
        self.retrieval = retrieval
        self.ranker = ranker
        self.reranker = reranker
        self.context = context
        self.catalog = catalog
        self.train = train
        self.text = text
        self.items = items
        self.genres = genre_vectors(items, catalog)
        self.diversity_vectors = self.genres if self.genres is not None else text
        self.categories = item_categories(items, catalog)
        self.popularity = item_counts(train, catalog)
        self.report = report
        self._graphs: Dict[Any, CascadeGraph] = {}

    def histories_for(self, user_ids) -> np.ndarray:
        """[U, N] most recent train items of users ("" for unknown users), most recent last;
        N covers what both towers read."""
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        width = max(int(self.retrieval.config.history_len), int(self.ranker.history_len), 1)
        return histories_for(users, self.train, width)

    @property
    def feature_tables(self) -> Dict[str, Optional[np.ndarray]]:
        """Catalog-aligned item tables the re-ranker inputs may read."""
        return {"text": self.text, "genres": self.genres}

    def graph(self, index: Optional[RetrievalIndex] = None,
              fallback_text_weight: float = 0.5) -> CascadeGraph:
        """The cascade's one computation over `index` (default: exact BruteForce over the
        catalogue, the one `run` evaluates and the BruteForce export serves)."""
        if index is not None:
            return CascadeGraph.from_cascade(self, index, fallback_text_weight)
        key = ("bruteforce", float(fallback_text_weight))
        if key not in self._graphs:
            exact = build_index("bruteforce", None, self.catalog,
                                self.retrieval.candidate_embeddings(self.catalog),
                                k=len(self.catalog))
            self._graphs[key] = CascadeGraph.from_cascade(self, exact, fallback_text_weight)
        return self._graphs[key]

    def run(self, user_ids, histories: Optional[np.ndarray] = None,
            exclude: Optional[pd.DataFrame] = None, batch_size: int = 256) -> StageLists:
        """Every stage for `user_ids` through `graph()`; histories default to the users' train
        items.

        Args:
          user_ids: users (ids the retrieval model does not know get the fallback answer).
          histories: optional [U, N] recent item ids ("" padding), most recent last.
          exclude: interactions whose items may not be recommended (default: train).
        """
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        if histories is None:
            histories = self.histories_for(users)
        exclude = self.train if exclude is None else exclude
        out = run_batched(self.graph().stages, users, histories, excluded_items(exclude),
                          batch_size)
        return StageLists(users, out["retrieval_ids"], out["retrieval_scores"],
                          out["ranking_ids"], out["ranking_scores"], out["rerank_ids"],
                          out["rerank_scores"], out["item_ids"], out["scores"], out["source"])


def excluded_items(frame: Optional[pd.DataFrame]) -> Dict[str, np.ndarray]:
    """{user: the distinct items of `frame` that user may not be recommended}."""
    if frame is None or not len(frame):
        return {}
    items = frame[ITEM_ID].astype(str).to_numpy()
    users = frame[USER_ID].astype(str).to_numpy()
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    return {users[a]: pd.unique(part) for a, part in zip(starts, np.split(items, cuts))}


def exclusion_rows(excluded: Mapping[str, np.ndarray], users: np.ndarray) -> np.ndarray:
    """[len(users), W] str: each user's excluded items, "" padded to the widest of these."""
    rows = [excluded.get(u, ()) for u in users]
    table = np.full((len(rows), max([len(r) for r in rows] + [1])), PAD, dtype=object)
    for r, items in enumerate(rows):
        table[r, :len(items)] = items
    return table.astype(str)


def run_batched(fn, users: np.ndarray, histories: np.ndarray,
                excluded: Mapping[str, np.ndarray], batch_size: int = 256,
                extra: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Calls a `CascadeGraph` function `fn(user_id, history, third)` on user batches; string
    outputs come back as object arrays, the rest as NumPy.

    `third` is each batch's exclusions from `excluded`, padded to that batch's widest row
    (memory batch x W, not users x the widest user), or, when `extra` is given, those arrays'
    rows (e.g. the retrieval ids and scores `CascadeGraph.rank` reads).
    """
    histories = np.asarray(histories, dtype=object)
    parts: Dict[str, list] = {}
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        args = [tf.constant(batch.astype(str)),
                tf.constant(histories[start:start + batch_size].astype(str))]
        args += ([tf.constant(exclusion_rows(excluded, batch))] if extra is None else
                 [tf.constant(np.asarray(v[start:start + batch_size]))
                  for v in extra.values()])
        for name, value in fn(*args).items():
            value = value.numpy()
            if value.dtype == object:
                value = np.char.decode(value.astype(bytes), "utf-8").astype(object)
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(v) for name, v in parts.items()}


def query_embeddings(rec: TwoTowerRecommender, users: np.ndarray,
                     histories: Optional[np.ndarray] = None) -> np.ndarray:
    """[U, d] query-tower embeddings; histories default to the recommender's fitted ones."""
    return rec.query_embeddings(users, histories)
