"""A fitted cascade and what flows between its stages.

`Cascade.run` scores users through retrieval (full catalogue -> `retrieval_k`), ranking
(-> `ranking_k`), re-ranking, diversity and the business rules (-> `k`), returning every stage's
list (`StageLists`), the same computation the exported SavedModel runs in the graph. The helpers
here build each stage's inputs from the previous stage's output; `cascade.fit` uses them to make
the training lists, so training and serving share one code path.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.candidates import retrieve, seen_positions
from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.data.datasets import PAD
from recommenders_tf.data.schema import GENRES, ITEM_ID, TIMESTAMP, USER_ID
from recommenders_tf.models.candidate_features import RETRIEVAL_SCORE, CandidateContext
from recommenders_tf.models.ranking import RankingModel, predict_lists
from recommenders_tf.models.ranking_data import RankingLists, histories_for
from recommenders_tf.models.recommender import TwoTowerRecommender
from recommenders_tf.models.reranking import Reranker, rerank_scores
from recommenders_tf.models.rules import BusinessRules


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

    def histories_for(self, user_ids) -> np.ndarray:
        """[U, N] most recent train items of users ("" for unknown users), most recent last."""
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        return histories_for(users, self.train, max(self.ranker.history_len, 1))

    # ---- stage features (shared with training) -----------------------------------------------

    @property
    def feature_tables(self) -> Dict[str, Optional[np.ndarray]]:
        """Catalog-aligned item tables the re-ranker inputs may read."""
        return {"text": self.text, "genres": self.genres}

    def rerank_arrays(self, lists: RankingLists, ranker_scores: np.ndarray,
                      histories: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Re-ranker inputs for lists already in ranker order (see `rerank_inputs`)."""
        return rerank_inputs(self.config, self.retrieval, self.ranker, lists, ranker_scores,
                             self.feature_tables, self.catalog, histories)

    def run(self, user_ids, histories: Optional[np.ndarray] = None,
            exclude: Optional[pd.DataFrame] = None, batch_size: int = 256) -> StageLists:
        """Every stage for `user_ids`; histories default to the users' train items.

        Args:
          user_ids: users (unknown ids use the towers' OOV buckets and their history).
          histories: optional [U, N] recent item ids ("" left padding), most recent last.
          exclude: interactions whose items may not be recommended (default: train).
        """
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        cfg = self.config
        exclude = self.train if exclude is None else exclude
        if histories is None:
            histories = self.histories_for(users)
        histories = np.asarray(histories, dtype=object)

        # Retrieval through the query tower with the given histories.
        seen = seen_positions(exclude, self.catalog)
        r_ids, r_scores = [], []
        for start in range(0, len(users), batch_size):
            b_users = users[start:start + batch_size]
            b_hist = histories[start:start + batch_size]
            s = self.retrieval_scores(b_users, b_hist)
            ids, sc = retrieve(lambda _u, s=s: s, b_users, self.catalog, None,
                               cfg.retrieval_k, batch_size=len(b_users), seen=seen)
            r_ids.append(ids)
            r_scores.append(sc)
        r_ids, r_scores = np.concatenate(r_ids), np.concatenate(r_scores)
        return self.run_from_candidates(users, histories, r_ids, r_scores, batch_size)

    def retrieval_scores(self, users: np.ndarray, histories: np.ndarray) -> np.ndarray:
        """Query · candidate scores [U, n] over the catalog with explicit histories."""
        rec = self.retrieval
        queries = query_embeddings(rec, users, histories)
        cands = rec._candidates(rec._require_fitted(), self.catalog)
        return queries.astype(np.float64) @ cands.astype(np.float64).T

    def run_from_candidates(self, users: np.ndarray, histories: np.ndarray,
                            r_ids: np.ndarray, r_scores: np.ndarray, batch_size: int = 256
                            ) -> StageLists:
        """Stages 2 and 3 (and rules) over given retrieval lists (ids [U, K], scores)."""
        cfg = self.config
        hist = _fit_width(histories, max(self.ranker.history_len, 1))
        mask = r_ids != PAD
        lists = RankingLists(users, hist, r_ids, np.where(mask, 0.0, -1.0).astype(np.float32),
                             mask, {RETRIEVAL_SCORE: np.where(mask, r_scores, 0.0)})
        rank_s = predict_lists(self.ranker, lists, batch_size)
        order = np.argsort(-rank_s, axis=1, kind="stable")[:, :cfg.ranking_k]
        top = _take(lists, order)
        top_scores = np.take_along_axis(rank_s, order, 1)
        arrays = self.rerank_arrays(top, top_scores, histories)
        re_s = rerank_scores(self.reranker, arrays, batch_size)
        re_order = np.argsort(-re_s, axis=1, kind="stable")
        re_ids = np.take_along_axis(top.item_id, re_order, 1)
        re_scores = np.take_along_axis(re_s, re_order, 1)
        re_ids = np.where(np.isfinite(re_scores), re_ids, PAD)
        div_ids, div_scores = self._diversify(re_ids, re_scores)
        final_ids, final_scores = finalize(div_ids, div_scores, cfg.rules, hist,
                                           self.categories)
        return StageLists(users, r_ids, np.where(mask, r_scores, -np.inf),
                          top.item_id, np.where(top.mask, top_scores, -np.inf),
                          re_ids, re_scores, final_ids, final_scores)

    def _diversify(self, ids: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        if cfg.diversity == "none" or self.diversity_vectors is None:
            return ids, scores
        return diversify(ids, scores, self.diversity_vectors, self.catalog, cfg.diversity,
                         cfg.diversity_lambda, ids.shape[1])


def finalize(ids: np.ndarray, scores: np.ndarray, rules: BusinessRules, history: np.ndarray,
             categories: Dict[str, str], exclude: Optional[np.ndarray] = None
             ) -> Tuple[np.ndarray, np.ndarray]:
    """Business rules over a list already in its final order; returns (ids, scores) [U, k].

    The rules keep the best-scored survivors, so they are handed the list's order as the score
    (a diversified order is not sorted by relevance); the reported scores are the lists' own.
    """
    from recommenders_tf.models.rules import apply_rules

    valid = (ids != PAD) & np.isfinite(scores)
    order_score = np.where(valid, ids.shape[1] - np.arange(ids.shape[1])[None, :], -np.inf)
    out = apply_rules(rules, ids, order_score, history=history, exclude=exclude,
                      item_categories=categories if rules.category_caps is not None else None)
    pos = out.positions
    final_scores = np.where(pos >= 0, np.take_along_axis(scores, np.maximum(pos, 0), 1),
                            -np.inf)
    return out.item_ids, final_scores


def diversify(ids: np.ndarray, scores: np.ndarray, vectors: np.ndarray, catalog: np.ndarray,
              method: str, lam: float, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """MMR / DPP re-ordering of ranked lists; returns (ids, scores) in the new order.

    Scores keep their values (the relevance the selection traded off), so a business rule
    that cuts the list still sees each item's relevance.
    """
    from recommenders_tf.models.diversity import dpp_rerank, mmr_rerank

    mask = ids != PAD
    pos = pd.Index(catalog).get_indexer(ids.ravel()).reshape(ids.shape)
    vecs = vectors[np.maximum(pos, 0)] * (pos >= 0)[..., None]
    rel = np.where(mask, scores, 0.0)
    fn = mmr_rerank if method == "mmr" else dpp_rerank
    picks = fn(rel, vecs, min(k, ids.shape[1]), lam=lam, mask=mask)
    valid = picks >= 0
    safe = np.maximum(picks, 0)
    new_ids = np.where(valid, np.take_along_axis(ids, safe, 1), PAD)
    new_scores = np.where(valid, np.take_along_axis(scores, safe, 1), -np.inf)
    return new_ids, new_scores


def _fit_width(histories: np.ndarray, width: int) -> np.ndarray:
    """Histories cut or left-padded to `width` columns, most recent last."""
    histories = np.asarray(histories, dtype=object)
    width = max(int(width), 1)
    if histories.ndim != 2:
        raise ValueError(f"histories must be [users, N], got shape {histories.shape}")
    if histories.shape[1] >= width:
        return histories[:, histories.shape[1] - width:]
    pad = np.full((len(histories), width - histories.shape[1]), PAD, dtype=object)
    return np.concatenate([pad, histories], axis=1)


def _take(lists: RankingLists, order: np.ndarray) -> RankingLists:
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    return RankingLists(lists.user_id, lists.history, take(lists.item_id), take(lists.label),
                        take(lists.mask), {k: take(v) for k, v in lists.extra.items()})


def query_embeddings(rec: TwoTowerRecommender, users: np.ndarray,
                     histories: Optional[np.ndarray] = None) -> np.ndarray:
    """[U, d] query-tower embeddings; histories default to the recommender's fitted ones."""
    width = rec.config.history_len
    if histories is None:
        feats = rec.query_features(users)
    else:
        feats = {USER_ID: np.asarray(users, dtype=object)}
        if width > 0:
            feats["history"] = _fit_width(histories, width)
    return rec._embed(rec.query_tower, feats)


def rerank_inputs(config: "CascadeConfig", rec: TwoTowerRecommender, ranker: RankingModel,
                  lists: RankingLists, ranker_scores: np.ndarray, tables: Dict[str, np.ndarray],
                  catalog: np.ndarray, histories: Optional[np.ndarray] = None
                  ) -> Dict[str, np.ndarray]:
    """Re-ranker inputs of lists in ranker order.

    item_vectors: the concatenation of `config.rerank_item_features`: "context" (the ranker's
      standardised context features of the entry: retrieval score, popularity, text and
      co-occurrence similarity to the history), "genres" (multi-hot, so the encoder can see
      redundancy in the list), "text" (the LM vector), "embedding" (the retrieval candidate
      embedding);
    item_scores: [ranker score, retrieval score] (column 0 is what the list is sorted by);
    user_vector: the retrieval query embedding when `config.rerank_user` is "embedding".
    """
    mask = lists.mask
    pos = pd.Index(catalog).get_indexer(lists.item_id.ravel()).reshape(mask.shape)
    found = (pos >= 0)[..., None]
    parts = []
    for name in config.rerank_item_features:
        if name == "context":
            feats = {"item_id": lists.item_id.astype(str), "history": lists.history.astype(str),
                     **lists.extra}
            out = [ranker.context_features({k: tf.constant(v[s:s + 512])
                                            for k, v in feats.items()}).numpy()
                   for s in range(0, len(lists), 512)]
            parts.append(np.concatenate(out) if out else
                         np.zeros(mask.shape + (ranker.context_features.num_features,)))
        elif name == "embedding":
            cand = rec._candidates(rec._require_fitted(), catalog)
            parts.append(cand[np.maximum(pos, 0)] * found)
        elif tables.get(name) is not None:
            parts.append(tables[name][np.maximum(pos, 0)] * found)
    if not parts:
        raise ValueError(f"no re-ranker item features available from "
                         f"{config.rerank_item_features}")
    item_vectors = np.concatenate(parts, -1)
    retrieval = lists.extra.get(RETRIEVAL_SCORE, np.zeros(mask.shape, np.float32))
    scores = np.stack([np.where(mask, ranker_scores, 0.0), np.where(mask, retrieval, 0.0)], -1)
    out = {"item_vectors": (item_vectors * mask[..., None]).astype(np.float32),
           "item_scores": scores.astype(np.float32), "mask": mask}
    if config.rerank_user == "embedding":
        out["user_vector"] = query_embeddings(rec, lists.user_id, histories).astype(np.float32)
    return out
