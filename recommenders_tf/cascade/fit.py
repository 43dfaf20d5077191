"""Training the three-stage cascade without letting any stage learn from data it is judged on.

Stages (sizes from `CascadeConfig`):
  1 retrieval   the TFRS two-tower (`TwoTowerRecommender`): full catalog -> top `retrieval_k`
  2 ranking     `RankingModel` over those candidates, fed the retrieval score, item popularity
                (overall and recent) and text similarity to the user's history
                (`CandidateContext`) -> top `ranking_k`
  3 re-ranking  the PRM-style `Reranker` over the ranked list, then optional MMR/DPP
                diversity and the business rules -> top `k`

Where each stage's training lists come from (`train` is the part of the data we may learn
from; a P1 test part is never an argument here):
  * val = validation_split(train): each user's last 20% of train is "val.test", the rest
    "val.train". Retrieval chooses its epochs on val.test and is refit on all of train
    (`R_full`, the one that serves); a twin with the chosen epochs is fitted on val.train only
    (`R_early`) and retrieves each val user's top `retrieval_k`. Those lists, labelled by
    val.test, are the ranker's training lists: the ranker learns what follows in time from
    candidates of a retrieval model that never saw it, the situation it serves in.
  * The re-ranker needs the ranker's scores on lists the ranker was NOT trained on: the lists
    are cut into `cross_fit_folds` user folds, a ranker is fitted on all folds but one and
    scores the one left out (cross-fitting); the re-ranker trains on these out-of-fold
    rankings. The serving ranker is then fitted on all lists. If the trained re-ranker does
    not beat the ranker's order on its held-out lists, the untrained one (which keeps the
    ranker's order exactly) is served instead, and the report says so.
  * Popularity tables are counted on val.train while training and switched to all of train
    for serving, the way the retrieval model is refit.

Example:
  >>> cascade = fit_cascade(split.train, CascadeConfig(), "runs/cascade", items=data.items)
  >>> out = cascade.run(["42"])          # per-stage ids, scores, ranks
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.candidates import retrieve
from recommenders_tf.data.datasets import PAD
from recommenders_tf.data.schema import GENRES, ITEM_ID, TIMESTAMP, USER_ID
from recommenders_tf.data.splits import validation_split
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.models.candidate_features import (RETRIEVAL_SCORE, CandidateContext,
                                                       item_neighbors)
from recommenders_tf.models.ranking import (RankingConfig, RankingModel, fit_ranking_model,
                                            predict_lists)
from recommenders_tf.models.ranking_data import RankingLists, histories_for, scoring_lists
from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender
from recommenders_tf.models.reranking import (Reranker, RerankerConfig, build_reranker,
                                              fit_reranker, rerank_scores)
from recommenders_tf.models.rules import BusinessRules

DIVERSITY = ("none", "mmr", "dpp")


def _default_ranking() -> RankingConfig:
    # Context features only (no id embeddings), one cross layer and a small deep stack: chosen
    # on the validation lists of ml-100k and synthetic (see configs/cascade_*.yaml).
    return RankingConfig(loss="softmax", id_features=False, num_cross_layers=1,
                         deep_dims=(32,), din_units=0, embedding_dim=8, history_len=50,
                         learning_rate=3e-3, batch_size=32, epochs=40, patience=5, verbose=0)


def _default_reranker() -> RerankerConfig:
    return RerankerConfig(num_layers=1, model_dim=32, ff_dim=64, max_list_size=50, verbose=0)


@dataclasses.dataclass
class CascadeConfig:
    """What the cascade is made of and how big each stage's output is.

    Args:
      retrieval_k, ranking_k, k: items kept after retrieval, ranking and re-ranking.
      retrieval: TwoTowerConfig fields overriding its defaults (e.g. the dataset's
        validation-chosen settings from configs/retrieval_<dataset>.yaml).
      ranking: RankingConfig of the ranker (its loss is a parameter like everywhere).
      reranker: RerankerConfig of the listwise re-ranker.
      use_text: feed item text vectors (pretrained LM) to the ranker's context features and
        the re-ranker's item vectors, when `text_vectors` are given to `fit_cascade`.
      recent_items: most recent history items that make the ranker's "recent" text profile.
      trend_share: share of the latest train interactions counted for the trend feature.
      neighbors: most similar items kept per item for the collaborative features (0: none).
      rerank_item_features: what the re-ranker sees of each entry (see `rerank_inputs`).
      rerank_user: "embedding" (the retrieval query vector) or "none".
      cross_fit_folds: user folds of the ranker's out-of-fold scores for the re-ranker. Each
        fold's ranker sees (folds - 1) / folds of the lists; with 2 folds the re-ranker learned
        to correct rankers weaker than the one that serves (synthetic: held-out +9% over the
        ranker order, test -1%), with 5 the gap narrowed.
      held_out_share: share of each stage's lists held out for early stopping.
      diversity: "none", "mmr" or "dpp", applied to the re-ranked list before the rules.
      diversity_lambda: relevance weight of MMR/DPP (1 = pure relevance).
      rules: business rules applied last (seen items, duplicates, per-category caps).
      seed: seed of folds, splits and models.
    """

    retrieval_k: int = 200
    ranking_k: int = 50
    k: int = 10
    retrieval: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ranking: RankingConfig = dataclasses.field(default_factory=_default_ranking)
    reranker: RerankerConfig = dataclasses.field(default_factory=_default_reranker)
    use_text: bool = True
    recent_items: int = 5
    trend_share: float = 0.1
    neighbors: int = 50
    rerank_item_features: Tuple[str, ...] = ("context", "genres")
    rerank_user: str = "none"
    cross_fit_folds: int = 5
    held_out_share: float = 0.1
    diversity: str = "none"
    diversity_lambda: float = 1.0
    rules: BusinessRules = dataclasses.field(default_factory=BusinessRules)
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.k <= self.ranking_k <= self.retrieval_k:
            raise ValueError(f"CascadeConfig needs 1 <= k ({self.k}) <= ranking_k "
                             f"({self.ranking_k}) <= retrieval_k ({self.retrieval_k})")
        if self.diversity not in DIVERSITY:
            raise ValueError(f"CascadeConfig.diversity must be one of {DIVERSITY}, got "
                             f"{self.diversity!r}")
        if not 0.0 <= self.diversity_lambda <= 1.0:
            raise ValueError(f"CascadeConfig.diversity_lambda must be in [0, 1], got "
                             f"{self.diversity_lambda!r}")
        if self.cross_fit_folds < 2:
            raise ValueError(f"CascadeConfig.cross_fit_folds must be >= 2, got "
                             f"{self.cross_fit_folds!r}")
        if not 0.0 < self.held_out_share < 0.5:
            raise ValueError(f"CascadeConfig.held_out_share must be in (0, 0.5), got "
                             f"{self.held_out_share!r}")
        if not 0.0 < self.trend_share <= 1.0:
            raise ValueError(f"CascadeConfig.trend_share must be in (0, 1], got "
                             f"{self.trend_share!r}")
        self.rerank_item_features = tuple(self.rerank_item_features)
        bad = sorted(set(self.rerank_item_features) - set(RERANK_ITEM_FEATURES))
        if bad or not self.rerank_item_features:
            raise ValueError(f"CascadeConfig.rerank_item_features must be a non-empty subset "
                             f"of {RERANK_ITEM_FEATURES}, got {self.rerank_item_features}")
        if self.rerank_user not in RERANK_USER_FEATURES:
            raise ValueError(f"CascadeConfig.rerank_user must be one of "
                             f"{RERANK_USER_FEATURES}, got {self.rerank_user!r}")
        if self.rules.k != self.k:
            self.rules = dataclasses.replace(self.rules, k=self.k)
        if self.reranker.max_list_size < self.ranking_k:
            raise ValueError(f"reranker.max_list_size ({self.reranker.max_list_size}) must "
                             f"cover ranking_k ({self.ranking_k})")


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
        genres = genre_vectors(items, catalog)
        self.diversity_vectors = genres if genres is not None else text
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
        return {"text": self.text, "genres": genre_vectors(self.items, self.catalog)}

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
        r_ids, r_scores = [], []
        for start in range(0, len(users), batch_size):
            b_users = users[start:start + batch_size]
            b_hist = histories[start:start + batch_size]
            s = self.retrieval_scores(b_users, b_hist)
            ids, sc = retrieve(lambda _u, s=s: s, b_users, self.catalog, exclude,
                               cfg.retrieval_k, batch_size=len(b_users))
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


RERANK_ITEM_FEATURES = ("context", "genres", "text", "embedding")
RERANK_USER_FEATURES = ("embedding", "none")


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


def _user_folds(users: np.ndarray, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.empty(len(users), np.int64)
    fold[rng.permutation(len(users))] = np.arange(len(users)) % folds
    return fold


def _split(lists: RankingLists, share: float, seed: int) -> Tuple[RankingLists, RankingLists]:
    return lists.split(share, seed=seed)


CLAIM_FILE = "cascade_claim.json"


def claim_run_dir(run_dir: Path, config: CascadeConfig, train: pd.DataFrame) -> None:
    """Records which config and train data a run folder belongs to; refuses any other.

    Every stage's training loop resumes from the checkpoints it finds, which is right for an
    interrupted run and silently wrong for a different one (it would continue models fitted
    with other folds, sizes or data), so a folder claimed by another run is refused.
    """
    import yaml

    from recommenders_tf.config import to_dict
    from recommenders_tf.data.splits import frame_sha256

    claim = {"config": yaml.safe_load(yaml.safe_dump(to_dict(config))),
             "train_sha256": frame_sha256(train), "train_rows": int(len(train))}
    path = run_dir / CLAIM_FILE
    if path.exists():
        held = json.loads(path.read_text())
        if held != json.loads(json.dumps(claim)):
            what = ("train data" if held.get("config") == claim["config"] else "config")
            raise ValueError(f"{run_dir} holds a cascade fitted with another {what} ({path}); "
                             "use another run folder or delete this one to start over")
        return
    path.write_text(json.dumps(claim, indent=2, sort_keys=True))


def fit_cascade(train: pd.DataFrame, config: CascadeConfig, run_dir, *,
                items: Optional[pd.DataFrame] = None, users: Optional[pd.DataFrame] = None,
                text_vectors: Optional[ItemVectors] = None,
                log: Callable[[str], None] = print) -> Cascade:
    """Fits the three stages on `train` only (see the module docstring for who sees what).

    Args:
      train: the interactions to learn from (canonical schema with timestamps).
      config: CascadeConfig.
      run_dir: artifact folder (each stage's training run below it). A folder left by an
        interrupted fit of the same config and data resumes; one claimed by another fit is
        refused (`claim_run_dir`).
      items: items frame (genres feed the towers, diversity and category caps).
      users: users frame (for `config.ranking.user_features`).
      text_vectors: item text vectors (e.g. MiniLM, `pipelines.embed_items`); used when
        `config.use_text`.
      log: progress printer.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir, config, train)
    cfg = config
    report: Dict[str, Any] = {"train_rows": int(len(train))}
    t0 = time.perf_counter()
    catalog = np.unique(train[ITEM_ID].astype(str).to_numpy()).astype(object)
    val = validation_split(train, seed=cfg.seed)
    text = None
    if cfg.use_text and text_vectors is not None:
        vecs, found = text_vectors.lookup(catalog)
        text = np.where(found[:, None], vecs, 0.0).astype(np.float32)
        report["text_items_found"] = int(found.sum())
    has_genres = items is not None and GENRES in items.columns
    rcfg = TwoTowerConfig(**{"seed": cfg.seed, "verbose": 0, "use_genres": has_genres,
                             **cfg.retrieval})

    log(f"[cascade] 1/3 retrieval: two-tower, epochs chosen on the validation slice "
        f"({len(val.train)} / {len(val.test)} rows), refit on all {len(train)} train rows")
    start = time.perf_counter()
    retrieval = TwoTowerRecommender(rcfg, item_ids=catalog, items=items,
                                    work_dir=run_dir / "retrieval").fit(val.train,
                                                                        validation=val.test)
    early = TwoTowerRecommender(dataclasses.replace(rcfg, epochs=retrieval.best_epoch),
                                item_ids=catalog, items=items,
                                work_dir=run_dir / "retrieval_early").fit(val.train)
    report["retrieval"] = {"epochs": retrieval.best_epoch, "notes": retrieval.notes,
                           "seconds": round(time.perf_counter() - start, 2),
                           "examples_per_second": retrieval.examples_per_second}

    vusers = np.unique(val.test[USER_ID].astype(str).to_numpy()).astype(object)
    cids, cscores = retrieve(lambda u: early.score(u, catalog), vusers, catalog, val.train,
                             cfg.retrieval_k)
    hist_len = cfg.ranking.history_len
    lists = scoring_lists(vusers, cids, val.train, hist_len, relevant=val.test)
    lists = lists.with_extra(**{RETRIEVAL_SCORE: cscores})
    positives = (lists.label > 0).sum(1)
    report["ranking_lists"] = {"users": int(len(vusers)),
                               "with_positive_in_candidates": int((positives > 0).sum()),
                               "candidate_recall": float(positives.sum() / max(
                                   val.test.drop_duplicates([USER_ID, ITEM_ID]).shape[0], 1))}
    lists = lists.subset(np.flatnonzero(positives > 0))

    def tables(frame):
        return dict(counts=item_counts(frame, catalog),
                    recent_counts=item_counts(frame, catalog, cfg.trend_share),
                    neighbors=(item_neighbors(frame, catalog, cfg.neighbors)
                               if cfg.neighbors > 0 else None))

    early_tables = tables(val.train)

    def context(part: RankingLists) -> CandidateContext:
        layer = CandidateContext(catalog, early_tables["counts"], text_vectors=text,
                                 recent=cfg.recent_items,
                                 recent_counts=early_tables["recent_counts"],
                                 neighbors=early_tables["neighbors"], name="candidate_context")
        layer.adapt(part.features())
        return layer

    def fit_ranker(part: RankingLists, name: str) -> RankingModel:
        fit_part, held = _split(part, cfg.held_out_share, cfg.seed)
        model, result, _ = fit_ranking_model(cfg.ranking, fit_part, held, val.train,
                                             str(run_dir / name), items=items, users=users,
                                             context_features=context(fit_part))
        report.setdefault("ranking_fits", {})[name] = {
            "lists": len(fit_part), "held_out": len(held), "epochs": result.best_epoch,
            "held_out_ndcg_10": result.best_value,
            "examples_per_second": result.examples_per_second}
        return model

    log(f"[cascade] 2/3 ranking: {cfg.ranking.loss} over the top {cfg.retrieval_k}, "
        f"{len(lists)} lists, {cfg.cross_fit_folds}-fold cross-fitting for the re-ranker")
    start = time.perf_counter()
    folds = _user_folds(lists.user_id, cfg.cross_fit_folds, cfg.seed)
    oof: List[Tuple[RankingModel, RankingLists, np.ndarray]] = []
    for f in range(cfg.cross_fit_folds):
        model = fit_ranker(lists.subset(np.flatnonzero(folds != f)), f"ranking_fold{f}")
        part = lists.subset(np.flatnonzero(folds == f))
        s = predict_lists(model, part)
        order = np.argsort(-s, axis=1, kind="stable")[:, :cfg.ranking_k]
        oof.append((model, _take(part, order), np.take_along_axis(s, order, 1)))
    ranker = fit_ranker(lists, "ranking")
    report["ranking_seconds"] = round(time.perf_counter() - start, 2)

    log(f"[cascade] 3/3 re-ranking: listwise Transformer over the ranked top {cfg.ranking_k}")
    tables_for_rerank = {"text": text, "genres": genre_vectors(items, catalog)}
    training = RerankTraining(early, oof, tables_for_rerank, catalog)
    reranker, report["reranking"] = fit_reranking_stage(cfg, training, run_dir / "reranking")

    # Serve with what all of train says about popularity, like the refit retrieval model.
    full_tables = tables(train)
    ranker.context_features.set_tables(full_tables["counts"], full_tables["recent_counts"],
                                       full_tables["neighbors"])
    report["fit_seconds"] = round(time.perf_counter() - t0, 2)
    (run_dir / "cascade_report.json").write_text(json.dumps(report, indent=2, default=str))
    cascade = Cascade(cfg, retrieval, ranker, reranker, ranker.context_features, catalog,
                      train, text, items, report)
    cascade.rerank_training = training
    return cascade


@dataclasses.dataclass
class RerankTraining:
    """What the re-ranker learns from: per fold, the ranker that did not see the fold and the
    fold's lists in that ranker's order with its scores; plus the early retrieval model and
    the item tables the inputs read. Kept on the Cascade so re-rankers can be refit."""

    retrieval: TwoTowerRecommender
    folds: List[Tuple[RankingModel, RankingLists, np.ndarray]]
    tables: Dict[str, Optional[np.ndarray]]
    catalog: np.ndarray


def fit_reranking_stage(config: CascadeConfig, training: RerankTraining, run_dir
                        ) -> Tuple[Reranker, Dict[str, Any]]:
    """Fits the re-ranker on the out-of-fold ranked lists (10% held out for early stopping)."""
    start = time.perf_counter()
    parts = []
    for model, top, scores in training.folds:
        arrays = rerank_inputs(config, training.retrieval, model, top, scores, training.tables,
                               training.catalog)
        arrays["label"] = np.where(top.mask, np.maximum(top.label, 0.0), -1.0).astype(
            np.float32)
        parts.append(arrays)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(data["mask"])
    held = np.sort(np.random.default_rng(config.seed).permutation(n)[
        :max(1, int(config.held_out_share * n))])
    keep = np.setdiff1d(np.arange(n), held)
    held_out = {k: v[held] for k, v in data.items()}
    reranker, result = fit_reranker(config.reranker, {k: v[keep] for k, v in data.items()},
                                    held_out, str(run_dir))
    # The bar the re-ranker must clear: the ranker's own order on the same held-out lists,
    # both measured by one function (lists without a positive left out).
    labels = np.maximum(held_out["label"], 0.0)
    base = _ndcg_at_10(labels, held_out["item_scores"][:, :, 0], held_out["mask"])
    trained = _ndcg_at_10(labels, rerank_scores(reranker, held_out), held_out["mask"])
    kept = trained > base
    if not kept:
        # Untrained, the re-ranker reproduces its input order exactly (skip term, zero head):
        # serve that rather than a model that lost to the ranker on held-out lists.
        reranker = build_reranker(config.reranker, data["item_vectors"].shape[-1],
                                  data["item_scores"].shape[-1],
                                  data["user_vector"].shape[-1] if "user_vector" in data else 0)
        rerank_scores(reranker, held_out)  # builds the variables
    return reranker, {"lists": int(len(keep)), "held_out": int(len(held)),
                      "epochs": result.best_epoch, "held_out_ndcg_10": trained,
                      "held_out_ndcg_10_ranker_order": base, "trained_model_kept": bool(kept),
                      "item_features": list(config.rerank_item_features),
                      "seconds": round(time.perf_counter() - start, 2)}


def _ndcg_at_10(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> float:
    """Mean NDCG@10 (gain 2^y - 1, TF-Ranking's default) of lists with a positive label."""
    scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    gains = np.power(2.0, np.take_along_axis(labels * mask, order, 1)) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, gains.shape[1] + 2))
    ideal = np.power(2.0, np.sort(labels * mask, axis=1)[:, ::-1][:, :10]) - 1.0
    idcg = (ideal * discounts[:ideal.shape[1]]).sum(1)
    ok = idcg > 0
    return float(((gains * discounts).sum(1)[ok] / idcg[ok]).mean()) if ok.any() else 0.0
