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

from recommenders_tf.cascade.stages import Cascade, StageLists, diversify, finalize
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
                    method: str, lambdas: Sequence[float]) -> List[Dict[str, float]]:
    """NDCG@10 / intra-list diversity / coverage of the final lists at each lambda.

    Diversity re-orders the re-ranked list (`stages.rerank_*`) before the business rules, as
    `Cascade.run` does with `config.diversity` set.
    """
    if cascade.diversity_vectors is None:
        raise ValueError("the cascade has no item vectors (genres or text) for diversity")
    rows = []
    hist = cascade.histories_for(stages.user_ids)
    for lam in lambdas:
        ids, scores = diversify(stages.rerank_ids, stages.rerank_scores,
                                cascade.diversity_vectors, cascade.catalog, method, float(lam),
                                stages.rerank_ids.shape[1])
        final_ids, _ = finalize(ids, scores, cascade.config.rules, hist, cascade.categories)
        m = evaluate_order(final_ids, stages.user_ids, evaluator)
        rows.append({"method": method, "lambda": float(lam), **m})
    return rows
