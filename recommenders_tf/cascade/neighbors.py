"""The item-neighbour tables behind the ranker's collaborative features (`cf_*` of
`CandidateContext`): for each candidate item, the items whose presence in a user's history
speaks for (or against) it, with a weight.

Two weightings (`CascadeConfig.neighbor_weights`):
  * "cosine" (default): cosine similarity of binary co-occurrence (`item_neighbors`),
    computed in item blocks, so it scales with the interactions.
  * "ease": Steck's EASE weights B (`ease_weights`, the strongest simple peer of the P1
    tables). A candidate's row keeps the `neighbors` largest-magnitude entries of B's column
    for it, so with `neighbors` >= items `cf_history` is the EASE score of the history over
    its length. The closed form costs n³ time and n² memory for n items: refused above
    `ease_max_items`. Its penalty λ is chosen the way the EASE peer chooses it, on a
    validation slice by NDCG@10 over its grid (`choose_ease_l2`).

Measured on synthetic (one seed, P1 NDCG@10 of retrieval + ranking): cosine 0.2808, EASE
top-50 0.2713, EASE with every item 0.2780; on ml-100k cosine 0.2753, EASE with every item
0.2656 (and ranker training 5x slower). So cosine stays the default; EASE is kept as the
ablation that says a stronger item-item signal in the context does not by itself lift the
ranker, although a fixed validation-chosen blend of the two-tower with the EASE peer's score
gains +3.5% on ml-100k (BENCHMARKS.md, P1-blend).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.evaluation.peer_base import binary_matrix
from recommenders_tf.evaluation.peers_item_item import EASE, ease_weights
from recommenders_tf.models.candidate_features import item_neighbors

__all__ = ["NEIGHBOR_WEIGHTS", "neighbor_method", "choose_ease_l2", "ease_neighbors",
           "neighbor_table", "describe"]

NEIGHBOR_WEIGHTS = ("cosine", "ease")


def neighbor_method(weights: str, n_items: int, ease_max_items: int) -> str:
    """`weights`, checked against the catalogue size."""
    if weights not in NEIGHBOR_WEIGHTS:
        raise ValueError(f"neighbor weights must be one of {NEIGHBOR_WEIGHTS}, got {weights!r}")
    if weights == "ease" and n_items > ease_max_items:
        raise ValueError(f"EASE neighbours over {n_items} items exceed ease_max_items "
                         f"({ease_max_items}): its cost is n^3; use 'cosine'")
    return weights


def choose_ease_l2(train: pd.DataFrame, validation: pd.DataFrame, item_ids: Sequence[str],
                   max_validation_users: int = 0) -> Tuple[float, str]:
    """λ of the EASE peer's grid with the best NDCG@10 on `validation` after fitting on
    `train`; returns (λ, the peer's note)."""
    peer = EASE(item_ids=item_ids, max_items=len(item_ids))
    peer.max_validation_users = int(max_validation_users)
    peer.fit(train, validation=validation)
    return float(peer.chosen_params["l2"]), peer.notes


def ease_neighbors(interactions: pd.DataFrame, item_ids: Sequence[str], neighbors: int,
                   l2: float) -> Tuple[np.ndarray, np.ndarray]:
    """EASE weights of `interactions` as a neighbour table: row j holds the `neighbors` items i
    with the largest |B[i, j]| (positions into `item_ids`, -1 where fewer non-zero weights)
    and those weights, the layout `item_neighbors` returns."""
    items = pd.Index([str(i) for i in item_ids])
    matrix, _, _ = binary_matrix(interactions, items)
    weights = ease_weights(matrix, float(l2))  # B[i, j]: item i in a history -> score of j
    n, m = len(items), int(neighbors)
    out_idx = np.full((n, m), -1, np.int32)
    out_sim = np.zeros((n, m), np.float32)
    columns = weights.T  # row j = column j of B
    keep = min(m, n - 1) if n > 1 else 0
    if keep == 0:
        return out_idx, out_sim
    # By magnitude: EASE's negative weights (items that speak against j) count as well.
    top = np.argpartition(-np.abs(columns), keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(columns, top, 1)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    top, values = np.take_along_axis(top, order, 1), np.take_along_axis(values, order, 1)
    nonzero = values != 0
    out_idx[:, :keep] = np.where(nonzero, top, -1)
    out_sim[:, :keep] = np.where(nonzero, values, 0.0)
    return out_idx, out_sim


def neighbor_table(interactions: pd.DataFrame, item_ids: Sequence[str], neighbors: int,
                   method: str, l2: Optional[float] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """The table of a resolved `method` ("cosine" or "ease", see `neighbor_method`)."""
    if method == "ease":
        if l2 is None:
            raise ValueError("EASE neighbours need l2 (choose_ease_l2)")
        return ease_neighbors(interactions, item_ids, neighbors, l2)
    return item_neighbors(interactions, item_ids, neighbors)


def describe(method: str, l2: Optional[float], note: str = "") -> Dict[str, Any]:
    """What the report says about the tables."""
    out: Dict[str, Any] = {"weights": method}
    if method == "ease":
        out.update(l2=l2, l2_choice=note)
    return out
