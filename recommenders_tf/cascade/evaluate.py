"""P1 metrics of every cascade stage and the accuracy-diversity trade-off, from one run.

Each stage's list is judged by the same `TopKEvaluator` as every P1 row in BENCHMARKS.md
(`evaluate_ranked`: full catalog, train items excluded, ties by id, coverage and intra-list
diversity over the dataset's genre features), at a cost of users x list length, so a curve of
many lambdas at 10M interactions stays cheap.

  retrieval                 the two-tower's own top 10
  retrieval + ranking       the ranker's top 10 of the retrieval top `retrieval_k`
  full cascade              the re-ranker's top 10 of the ranked top `ranking_k`, after rules
  full cascade + MMR/DPP    the same with diversity at each lambda of a grid (the trade-off)

Example:
  >>> stages = cascade.run(evaluator.user_ids)
  >>> rows = stage_metrics(stages, evaluator)
  >>> curve = diversity_curve(cascade, stages, evaluator, "mmr", (1.0, 0.9, 0.7))
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.cascade.stages import (Cascade, StageLists, excluded_items,
                                            exclusion_rows)
from recommenders_tf.evaluation.protocol import TopKEvaluator

STAGES = ("retrieval", "ranking", "rerank", "final")
STAGE_LABELS = {"retrieval": "retrieval", "ranking": "retrieval + ranking",
                "rerank": "re-ranker order (before rules)", "final": "full cascade"}
METRICS = ("recall@10", "recall@50", "ndcg@10", "hr@10", "mrr@10", "coverage@10",
           "diversity@10", "novelty@10")


def evaluate_order(order_ids: np.ndarray, user_ids: Sequence[str],
                   evaluator: TopKEvaluator) -> Dict[str, float]:
    """P1 metrics of per-user ordered ids [U, n] ("" padding) for `user_ids` rows.

    Metrics whose cut-off exceeds n are left out: they would judge the evaluator's filler.
    """
    metrics = evaluator.evaluate_ranked(order_ids, user_ids).metrics
    return {k: float(metrics[k]) for k in METRICS if k in metrics}


def stage_metrics(stages: StageLists, evaluator: TopKEvaluator) -> Dict[str, Dict[str, float]]:
    """{stage: P1 metrics} for every stage of one `Cascade.run` over the evaluator's users.

    Metrics with a cut-off beyond a stage's list length are left out (the final list of k = 10
    has no recall@50).
    """
    out = {}
    for stage in STAGES:
        ids = getattr(stages, f"{stage}_ids")
        out[stage] = evaluate_order(ids, stages.user_ids, evaluator)
    return out


def diversity_curve(cascade: Cascade, stages: StageLists, evaluator: TopKEvaluator,
                    method: str, lambdas: Sequence[float], batch_size: int = 1024
                    ) -> List[Dict[str, float]]:
    """NDCG@10 / intra-list diversity / coverage of the final lists at each lambda.

    Runs the tail of the cascade's graph (`CascadeGraph.finish`: MMR/DPP then the business
    rules) over the re-ranked lists of `stages`, as `Cascade.run` does with
    `config.diversity` set, without re-running retrieval, ranking and re-ranking per lambda.
    """
    graph = cascade.graph()
    users = np.asarray(stages.user_ids, dtype=object)
    hist = cascade.histories_for(users).astype(str)
    seen = excluded_items(cascade.train)
    rows = []
    for lam in lambdas:
        finals = []
        for start in range(0, len(users), batch_size):
            stop = start + batch_size
            out = graph.finish(tf.constant(stages.rerank_ids[start:stop].astype(str)),
                               tf.constant(stages.rerank_scores[start:stop], tf.float32),
                               tf.constant(hist[start:stop]),
                               tf.constant(exclusion_rows(seen, users[start:stop])),
                               method, float(lam))
            finals.append(np.char.decode(out["item_ids"].numpy().astype(bytes), "utf-8"))
        final_ids = np.concatenate(finals).astype(object)
        m = evaluate_order(final_ids, stages.user_ids, evaluator)
        rows.append({"method": method, "lambda": float(lam), **m})
    return rows
