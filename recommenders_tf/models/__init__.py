"""Models: the shared tower builder, stage-1 retrieval, stage-2 ranking (one model, loss from a
registry), the hybrid DMF model, and the reusable training loop."""
from recommenders_tf.models.losses import LOSS_KEYS, RankingLoss, get_loss
from recommenders_tf.models.ranking import RankingConfig, RankingModel, build_ranking_model
from recommenders_tf.models.retrieval import (
    ItemSamplingProbability,
    RetrievalConfig,
    RetrievalModel,
    build_retrieval_model,
    build_retrieval_task,
    item_sampling_probabilities,
)
from recommenders_tf.models.towers import (
    CandidateTower,
    ItemIdEmbedding,
    QueryTower,
    TowerConfig,
    adapt_title_vocabulary,
    build_candidate_tower,
    build_item_id_embedding,
    build_query_tower,
    build_towers,
)
from recommenders_tf.models.training import FitResult, TrainingConfig, fit_model, make_optimizer

__all__ = [
    "CandidateTower", "FitResult", "ItemIdEmbedding", "ItemSamplingProbability", "QueryTower",
    "RetrievalConfig", "RetrievalModel", "TowerConfig", "TrainingConfig",
    "adapt_title_vocabulary", "build_candidate_tower", "build_item_id_embedding",
    "build_query_tower", "build_retrieval_model", "build_retrieval_task", "build_towers",
    "fit_model", "item_sampling_probabilities", "make_optimizer",
    "LOSS_KEYS", "RankingLoss", "get_loss", "RankingConfig", "RankingModel", "build_ranking_model",
]

# Stage 3: the listwise re-ranker.
from recommenders_tf.models.reranking import (  # noqa: E402
    Reranker,
    RerankerConfig,
    build_reranker,
    fit_reranker,
    rerank_scores,
)

__all__ += ["Reranker", "RerankerConfig", "build_reranker", "fit_reranker", "rerank_scores"]

# Stage 3: diversity re-ranking.
from recommenders_tf.models.diversity import dpp_rerank_tf, mmr_rerank_tf  # noqa: E402

__all__ += ["dpp_rerank_tf", "mmr_rerank_tf"]

# Stage 3: business rules applied last.
from recommenders_tf.models.rules import (  # noqa: E402
    BusinessRules,
    BusinessRulesLayer,
    RuleOutput,
)

__all__ += ["BusinessRules", "BusinessRulesLayer", "RuleOutput"]
