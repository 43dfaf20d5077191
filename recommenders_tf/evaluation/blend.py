"""How far re-weighting two score sources goes: z(a) + w * z(b) over a grid of weights.

A ranker behind retrieval reads the retrieval score beside features that carry what the
strongest peers know (co-occurrence, EASE weights, popularity, text). Whatever else it learns,
one thing it can always do is re-weight the retrieval score against such a peer's score. The
blend of the two fitted models' scores, each standardised per user over the candidate items
(their scales differ), shows what that re-weighting is worth on a dataset: the weight is chosen
on a validation slice of train, and the test curve over every weight of the grid is reported
beside the choice, so a reader sees whether any weight at all reaches further.

Both stages fit the models the way the P1 tables fit them (`fit(train, validation=...)` with
a validation slice of the stage's own train part, refit on all of it), so the test stage's
unblended ends are the P1 rows of those models.

Example:
  >>> study = blend_study(split.train, split.test, build, base="two-tower",
  ...                     peers=("EASE",), weights=(0.5, 1.0, 2.0), seed=0)
  >>> study["peers"]["EASE"]["chosen_weight"], study["peers"]["EASE"]["test"]
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from recommenders_tf.data.splits import sample_test_users, validation_split
from recommenders_tf.evaluation.protocol import TopKEvaluator

__all__ = ["PEER_ALONE", "standardize_rows", "blend", "blend_curve", "choose_weight",
           "blend_study"]

# The weight that stands for the second source alone (the first one's weight is 0 there).
PEER_ALONE = math.inf
_EPS = 1e-12


def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean over its std (float64); a constant row becomes zeros."""
    scores = np.asarray(scores, np.float64)
    centred = scores - scores.mean(1, keepdims=True)
    std = centred.std(1, keepdims=True)
    return centred / np.where(std > _EPS, std, 1.0)


def blend(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """z(a) + weight * z(b) row by row; `PEER_ALONE` gives z(b), 0 gives z(a)."""
    if weight == PEER_ALONE:
        return standardize_rows(b)
    if not weight >= 0:
        raise ValueError(f"blend weight must be >= 0, got {weight!r}")
    return standardize_rows(a) + float(weight) * standardize_rows(b)


def blend_curve(evaluator: TopKEvaluator, score_a: Callable, score_b: Callable,
                weights: Sequence[float]) -> List[Dict[str, float]]:
    """The evaluator's metrics of the blend at every weight: [{"weight": w, metric: value}].

    `score_a` / `score_b` are score functions of the evaluator's contract (users ->
    [users, evaluator.item_ids]); each batch is scored once per weight, so the cost is
    weights x users x candidates and no users x catalogue matrix is kept.
    """
    curve = []
    for weight in weights:
        result = evaluator.evaluate(lambda users, w=weight: blend(score_a(users),
                                                                  score_b(users), w))
        metrics = {k: float(v) for k, v in result.metrics.items() if k != "n_users"}
        curve.append({"weight": float(weight), **metrics})
    return curve


def choose_weight(curve: Sequence[Mapping[str, float]], metric: str = "ndcg@10") -> float:
    """The weight of the curve's best `metric`; on a tie the one listed first."""
    if not curve:
        raise ValueError("choose_weight needs a non-empty curve")
    best = max(range(len(curve)), key=lambda i: (curve[i][metric], -i))
    return float(curve[best]["weight"])


def blend_study(train: pd.DataFrame, test: pd.DataFrame,
                build: Callable[[str, np.ndarray], Any], base: str, peers: Sequence[str],
                weights: Sequence[float], seed: int = 0, dataset: str = "",
                max_users: int = 0, metric: str = "ndcg@10",
                progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Blends `base` with each of `peers`: the weight chosen on a validation slice of `train`,
    the test curve over the whole grid.

    Args:
      train, test: the P1 parts; the validation stage splits `train` with the P1 rule.
      build: (model name, candidate item ids) -> an unfitted model with `fit(train,
        validation=...)` and `score(users, item_ids)` (e.g. `registry.build_as_benchmarked`).
      base: the first source (the retrieval model); peers: the second sources, one blend each.
      weights: the peer's weights tried (> 0); 0 (base alone) and `PEER_ALONE` are added.
      max_users: evaluated users per stage, a seeded sample once there are more (0: all).
      progress: optional callback for one line per fit.

    Returns {"grid": weights in order, "stages": {"validation"/"test": {"users": n}},
    "peers": {peer: {"validation": curve, "test": curve, "chosen_weight": w,
    "chosen": the test metrics at w}}}.
    """
    weights = [float(w) for w in weights]
    if not weights or any(not (0 < w < PEER_ALONE) for w in weights):
        raise ValueError(f"blend weights must be positive and finite, got {weights}")
    if not peers:
        raise ValueError("blend_study needs at least one peer")
    if base in peers:
        raise ValueError(f"the base model {base!r} cannot also be a peer")
    grid = [0.0] + sorted(set(weights)) + [PEER_ALONE]
    say = progress or (lambda line: None)
    val = validation_split(train, seed=seed, dataset=dataset)
    stages = {"validation": (val.train, val.test), "test": (train, test)}
    curves: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    users: Dict[str, Dict[str, int]] = {}
    for stage, (part_train, part_test) in stages.items():
        evaluator = TopKEvaluator(part_train, sample_test_users(part_test, max_users, seed)[0],
                                  ks=(10, 50))
        users[stage] = {"users": len(evaluator.user_ids)}
        # Each model picks its own settings on a slice of this stage's train, as in P1.
        inner = validation_split(part_train, seed=seed, dataset=dataset)
        fitted = {}
        for name in (base, *peers):
            say(f"[{stage}] fitting {name}")
            model = build(name, evaluator.item_ids)
            model.fit(inner.train, validation=inner.test)
            fitted[name] = model
        base_fn = _score_fn(fitted[base], evaluator.item_ids)
        curves[stage] = {peer: blend_curve(evaluator, base_fn,
                                           _score_fn(fitted[peer], evaluator.item_ids), grid)
                         for peer in peers}
    out: Dict[str, Any] = {"grid": grid, "stages": users, "peers": {}}
    for peer in peers:
        chosen = choose_weight(curves["validation"][peer], metric)
        test_curve = curves["test"][peer]
        out["peers"][peer] = {
            "validation": curves["validation"][peer], "test": test_curve,
            "chosen_weight": chosen,
            "chosen": next(r for r in test_curve if r["weight"] == chosen)}
    return out


def _score_fn(model, item_ids: np.ndarray) -> Callable:
    return lambda users: model.score(users, item_ids)
