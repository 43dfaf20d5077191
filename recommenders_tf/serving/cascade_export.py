"""The whole cascade as one SavedModel: raw ids in, the final top k out (TF Serving layout).

```
saved_models/recommender/<version>/             ScaNN retrieval (needs the ScaNN ops)
saved_models/recommender_bruteforce/<version>/  exact retrieval, stock TF ops only
```

Signatures (B users, N history ids most recent last, "" padding anywhere; any W exclusion ids):

* `serving_default(user_id [B], history [B, N]) -> outputs`
* `recommend_with_exclusions(user_id [B], history [B, N], exclude_item_ids [B, W])`

outputs: `item_ids` string [B, k], `scores` float32 [B, k] (the re-ranker's), and for each
final item its 1-based rank after every stage, `retrieval_rank`, `ranking_rank`,
`rerank_rank` int32 [B, k] (0 for the fallback), plus `source` string [B] ("cascade" or
"fallback"). Empty slots: id "", score -inf, ranks 0.

What one call runs is `CascadeGraph` (recommenders_tf/cascade/graph.py), the computation
`Cascade.run` evaluates: this module only builds the index and saves the graph.

Load a ScaNN export with `import scann` first (or in the ScaNN-enabled TF Serving build); the
BruteForce twin loads anywhere.

Example:
  >>> export_cascade(cascade, "saved_models", kind="bruteforce")
  PosixPath('saved_models/recommender_bruteforce/1')
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.graph import OUTPUTS
from recommenders_tf.cascade.stages import Cascade, query_embeddings
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.index.policy import (MAX_INDEX_QUERY_USERS, build_tuned_index,
                                          index_query_users, split_queries)
from recommenders_tf.index.scann_index import build_index
from recommenders_tf.serving.contract import (EXCLUDE_INPUT, HISTORY, SERVING_DEFAULT,
                                              USER_ID as USER_INPUT, WITH_EXCLUSIONS,
                                              input_order_metadata)
from recommenders_tf.serving.export import package_version, save_export
from recommenders_tf.serving.warmup import batched_requests

DEFAULT_NAMES = {"scann": "recommender", "bruteforce": "recommender_bruteforce"}


def build_cascade_index(cascade: Cascade, kind: str, search_width: int,
                        target_recall: float = 0.95, log=print,
                        max_query_users: int = MAX_INDEX_QUERY_USERS):
    """The retrieval index of an export: exact BruteForce, or ScaNN built by the package's one
    index policy (`index.policy.build_tuned_index`: tuned on half of the train users' real
    query embeddings, recall@retrieval_k against BruteForce measured on the other half,
    re-tuned while short of `target_recall`). The users are a seeded sample of
    `max_query_users` once there are more (<= 0: all of them)."""
    rec = cascade.retrieval
    catalog = cascade.catalog
    embeddings = rec.candidate_embeddings(catalog)
    if kind == "bruteforce":
        return build_index("bruteforce", None, catalog, embeddings, k=search_width), {}
    users, sample_note = index_query_users(
        np.unique(cascade.train[USER_ID].astype(str).to_numpy()), max_query_users,
        cascade.config.seed)
    tune, held_out, note = split_queries(query_embeddings(rec, users), seed=cascade.config.seed)
    note = f"train users' queries, {sample_note}: {note}"
    tuned = build_tuned_index(catalog, embeddings, tune, held_out,
                              k=min(cascade.config.retrieval_k, len(catalog)),
                              target_recall=target_recall,
                              min_reordering_candidates=search_width, index_k=search_width,
                              seed=cascade.config.seed, log=log)
    return tuned.index, {**tuned.report, "queries": note}


def cascade_warmup_requests(cascade: Cascade, n_users: int = 8) -> List[tuple]:
    """Warmup requests from real users and their real histories, both signatures; the last
    rows are an unknown user with a history and one without (the fallback path)."""
    users = np.unique(cascade.train[USER_ID].astype(str).to_numpy())[:max(n_users - 2, 1)]
    hist = cascade.histories_for(users)
    users = np.concatenate([users, ["__warmup_unknown_user__"] * 2]).astype(object)
    hist = np.concatenate([hist, hist[:1], np.full((1, hist.shape[1]), "", object)])
    seen = cascade.train.groupby(cascade.train[USER_ID].astype(str))[ITEM_ID].agg(list)
    exclude = np.full((len(users), 1), "", object)
    for r, u in enumerate(users):
        items = seen.get(u, [])
        if items:
            exclude[r, 0] = str(items[0])
    rows = {USER_INPUT: users.astype(object), HISTORY: hist.astype(object)}
    return (batched_requests(SERVING_DEFAULT, rows, batch_sizes=(1, len(users)))
            + batched_requests(WITH_EXCLUSIONS, rows, batch_sizes=(1, len(users)),
                               extra={EXCLUDE_INPUT: exclude}))


def export_cascade(cascade: Cascade, base_dir="saved_models", kind: str = "scann",
                   name: Optional[str] = None, exclusion_budget: int = 100,
                   fallback_text_weight: float = 0.5, metadata: Optional[Mapping] = None,
                   log=print, max_query_users: int = MAX_INDEX_QUERY_USERS) -> Path:
    """Exports the whole cascade as the next integer version of `base_dir/<name>`.

    Args:
      cascade: a fitted `Cascade`.
      base_dir: TF Serving model base path.
      kind: "scann" (tuned, needs the ScaNN ops) or "bruteforce" (exact, stock ops).
      name: model name (default "recommender" / "recommender_bruteforce").
      exclusion_budget: ScaNN's reordering budget beyond `retrieval_k`: up to this many
        history and exclusion ids are removed within the approximate pass; rows with more
        get an exact pass over the catalogue (BruteForce is exact at any width).
      fallback_text_weight: text-profile weight of the unknown-user fallback.
      metadata: extra facts for metadata.json.
      max_query_users: train users whose queries tune the ScaNN index and measure its recall
        (a seeded sample beyond this; <= 0: all).
    """
    if kind not in DEFAULT_NAMES:
        raise ValueError(f"kind must be one of {sorted(DEFAULT_NAMES)}, got {kind!r}")
    cfg = cascade.config
    n = len(cascade.catalog)
    width = n if kind == "bruteforce" else min(n, cfg.retrieval_k + int(exclusion_budget))
    index, index_facts = build_cascade_index(cascade, kind, width, log=log,
                                             max_query_users=max_query_users)
    module = cascade.graph(index, fallback_text_weight)
    rec = cascade.retrieval
    meta = {
        "format_version": 1, "model_name": name or DEFAULT_NAMES[kind], "kind": "cascade",
        "index_type": kind, "requires_scann_ops": kind == "scann",
        "stages": {"retrieval": {"model": "two-tower", "k": cfg.retrieval_k,
                                 "search_width": width, "notes": rec.notes, **index_facts},
                   "ranking": {"model": "RankingModel", "loss": cfg.ranking.loss,
                               "k": cfg.ranking_k,
                               "context_features": cascade.context.feature_names},
                   "reranking": {"model": "Reranker", "loss": cfg.reranker.loss,
                                 "diversity": cfg.diversity,
                                 "diversity_lambda": cfg.diversity_lambda,
                                 "rules": dataclasses.asdict(cfg.rules)}},
        "k": cfg.k, "num_candidates": n, "num_users": len(rec.vocabularies[USER_ID].tokens),
        "history_len": max(module.query_history, module.ranker_history),
        "fallback": {"unknown_users": "popularity blended with the history's text profile",
                     "text_weight": fallback_text_weight if cascade.text is not None else 0.0},
        "outputs": list(OUTPUTS), "exclusion_width": None,
        **input_order_metadata(with_exclusions=True),
        "versions": {p: package_version(p) for p in ("tensorflow", "tf-keras",
                                                      "tensorflow-recommenders", "scann")},
        **dict(metadata or {}),
    }
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"] if kind == "scann" else None)
    signatures = {SERVING_DEFAULT: module.serve.get_concrete_function(),
                  WITH_EXCLUSIONS: module.serve_with_exclusions.get_concrete_function()}
    return save_export(module, signatures, base_dir, meta["model_name"], meta,
                       cascade_warmup_requests(cascade), options=options,
                       extra_vocabularies={"candidate_ids": [str(i) for i in cascade.catalog]})
