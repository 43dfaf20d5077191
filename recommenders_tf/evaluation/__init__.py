"""Evaluation: metrics, the benchmark protocols of ../shared/BENCHMARK.md and peer baselines.

`metrics` and `protocol` are numpy/pandas only; `peers` imports TensorFlow, `implicit` and
`scikit-surprise` lazily, when a peer is fitted.
"""
from recommenders_tf.evaluation import metrics
from recommenders_tf.evaluation.protocol import (
    EvalResult,
    TopKEvaluator,
    evaluate_ratings,
    genre_features,
    select_topk,
)

__all__ = [
    "metrics",
    "EvalResult",
    "TopKEvaluator",
    "evaluate_ratings",
    "genre_features",
    "select_topk",
]
