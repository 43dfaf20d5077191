"""Where the cascade's ranker starts training: a blend of the retrieval score and a peer's
score with a weight chosen on the ranker's own training lists.

Measured before this existed (BENCHMARKS.md, P1-blend): a fixed blend of the two-tower's score
with the implicit-ALS peer's, its weight chosen on validation, beat the two-tower by 4.7% on
ml-100k, where the ranker that reads both scores among its features, trained from a random
start on about 840 lists, added 1.3%. The ranker can represent that blend (its wide term is
linear in the features) but did not learn it. So it starts there: `choose_start` picks the
weight w of z(retrieval) + w z(peer) by NDCG@10 over the lists the ranker trains on (labelled
by the validation slice of train, never test), `RankingModel.start_from` sets it, and
the cascade's cross-fitting keeps the trained model only if it beats the start on the folds'
lists it never saw (`cascade.fit`).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

# The blend study's token for "the peer alone": one meaning in both places.
from recommenders_tf.evaluation.blend import PEER_ALONE
from recommenders_tf.models.ranking_data import list_ndcg_at_10

__all__ = ["PEER_ALONE", "START_WEIGHTS", "start_weights", "choose_start"]

RETRIEVAL, PEER = "retrieval_z", "peer_z"
START_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, PEER_ALONE)


def start_weights(weight: float) -> Dict[str, float]:
    """{context feature: weight} of the blend with peer weight `weight`."""
    if weight == PEER_ALONE:
        return {RETRIEVAL: 0.0, PEER: 1.0}
    if not weight >= 0:
        raise ValueError(f"start weight must be >= 0, got {weight!r}")
    return {RETRIEVAL: 1.0, PEER: float(weight)}


def choose_start(raw: np.ndarray, feature_names: Sequence[str], labels: np.ndarray,
                 mask: np.ndarray, grid: Sequence[float] = START_WEIGHTS
                 ) -> Tuple[float, Dict[str, Any]]:
    """The grid weight whose blend has the best NDCG@10 on the lists, ties to the earlier
    weight; returns (weight, {"weight", "curve": [[w, ndcg], ...], "lists": n}) with
    `PEER_ALONE` written "peer alone" in the report.

    Args:
      raw: [L, S, F] context features as `CandidateContext.raw_values` computes them.
      feature_names: the layer's `feature_names` (must hold retrieval_z and peer_z).
      labels, mask: [L, S] the lists' labels and real entries.
      grid: candidate weights (`PEER_ALONE` for the peer alone).
    """
    names = list(feature_names)
    for name in (RETRIEVAL, PEER):
        if name not in names:
            raise ValueError(f"choose_start needs the {name} feature; the layer has {names}")
    if not len(grid):
        raise ValueError("choose_start needs at least one weight")
    curve = []
    for weight in grid:
        blend = sum(w * raw[..., names.index(f)] for f, w in start_weights(weight).items())
        curve.append([_label(weight), list_ndcg_at_10(labels, blend, mask)])
    best = max(range(len(curve)), key=lambda i: (curve[i][1], -i))
    return float(grid[best]), {"weight": curve[best][0], "curve": curve,
                               "lists": int(len(raw))}


def _label(weight: float):
    """A weight as a JSON report shows it (no Infinity in JSON)."""
    return "peer alone" if weight == PEER_ALONE else float(weight)
