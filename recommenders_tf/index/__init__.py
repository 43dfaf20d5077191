"""Retrieval indexes over candidate embeddings: BruteForce (exact) and ScaNN (fast), one interface.

`build_index` makes a `RetrievalIndex`; `tune_scann` picks ScaNN settings for a recall target;
`recall_at_k_vs_exact` measures one index against the exact one; `CandidateStore` keeps ids
and embeddings as files so new items can be embedded and appended without retraining.
The P5 speed benchmark lives in `recommenders_tf.index.bench` (imported on demand).
"""
from recommenders_tf.index.candidate_store import (
    CANDIDATE_FEATURE_SPEC,
    QUERY_FEATURE_SPEC,
    CandidateStore,
    LoadedTower,
    add_items,
    embed_items,
    load_tower,
    save_tower,
)
from recommenders_tf.index.scann_index import (
    INDEX_KINDS,
    PAD_ID,
    RetrievalIndex,
    ScannParams,
    build_index,
    top_k_excluding,
)
from recommenders_tf.index.tuning import (
    ScannGrid,
    ScannTuningResult,
    recall_at_k_vs_exact,
    tune_scann,
)

__all__ = [
    "CANDIDATE_FEATURE_SPEC",
    "QUERY_FEATURE_SPEC",
    "INDEX_KINDS",
    "PAD_ID",
    "CandidateStore",
    "LoadedTower",
    "RetrievalIndex",
    "ScannGrid",
    "ScannParams",
    "ScannTuningResult",
    "add_items",
    "build_index",
    "embed_items",
    "load_tower",
    "recall_at_k_vs_exact",
    "save_tower",
    "top_k_excluding",
    "tune_scann",
]
