"""Retrieval indexes over candidate embeddings: BruteForce (exact) and ScaNN (fast), one interface.

`build_index` makes a `RetrievalIndex`; `tune_scann` picks ScaNN settings for a recall target;
`recall_at_k_vs_exact` measures one index against the exact one; `build_tuned_index` is the
one policy every shipped ScaNN is built by (held-out recall, re-tuning, every-leaf fallback);
`CandidateStore` keeps ids and embeddings as files so new items can be embedded and appended
without retraining.
The P5 speed benchmark lives in `recommenders_tf.index.bench` (imported on demand).
"""
from recommenders_tf.index.candidate_store import (
    CANDIDATE_FEATURE_SPEC,
    QUERY_FEATURE_SPEC,
    CandidateStore,
    LoadedTower,
    add_items,
    embed_items,
    latest_store_dir,
    load_tower,
    save_tower,
    store_dirs,
)
from recommenders_tf.index.policy import (
    TunedIndex,
    build_tuned_index,
    noise_queries,
    index_query_users,
    split_queries,
)
from recommenders_tf.index.scann_index import (
    INDEX_KINDS,
    PAD_ID,
    RetrievalIndex,
    ScannParams,
    build_index,
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
    "TunedIndex",
    "add_items",
    "build_index",
    "build_tuned_index",
    "embed_items",
    "latest_store_dir",
    "load_tower",
    "noise_queries",
    "recall_at_k_vs_exact",
    "save_tower",
    "index_query_users",
    "split_queries",
    "store_dirs",
    "tune_scann",
]
