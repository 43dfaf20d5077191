"""The implicit-ALS peer's score of a candidate for any history, as two item tables the
ranker's context layer reads in graph (`CandidateContext(fold_in=...)`).

`ImplicitALS.fold_in_tables` gives (Y, P) with a user's ALS factor = Σ_h P[h] over the
history and the score of item c = Y[c] · that factor: the peer's own least-squares step,
linear in the history, so serving needs no solve and no user table (a user the fit never saw
is scored from the history the request carries). The ALS setting is the peer's own
validation choice (`choose_als`, the P1 grid); the tables are then fitted on whichever
interactions a stage may learn from, the way the cascade refits its other tables.

Why the ALS peer: of the peers, its validation-chosen blend with the two-tower's score gained
most on ml-100k (BENCHMARKS.md, P1-blend), and unlike EASE (items³) its cost grows linearly
with the interactions.

Threads: both functions run implicit's solver on every core (`num_threads=0`). ALS solves each
user's and then each item's least squares independently of the others, so the factors are the
same bit for bit on any number of threads (tested), unlike BPR's Hogwild SGD, which is why the
peers themselves default to one thread. The setting search is 15 fits, each scored on up to
`max_validation_users` validation users over the catalogue; measured alone on synthetic-1m
(816,140 rows, 18,986 items, idle 2 cores) it took 470 s on one thread and 249 s on both with
the evaluator's later speed-ups, most of it the scoring.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.evaluation.peers import ImplicitALS

__all__ = ["choose_als", "als_fold_in"]


def choose_als(train: pd.DataFrame, validation: pd.DataFrame, item_ids: Sequence[str],
               max_validation_users: int = 0, seed: int = 0, num_threads: int = 0
               ) -> ImplicitALS:
    """The ALS peer with its P1 grid's best NDCG@10 on `validation` after fitting on `train`,
    refit with that setting on both (`chosen_params`, `notes`, `fold_in_tables`);
    `num_threads` 0 uses every core (same factors on any count)."""
    peer = ImplicitALS(item_ids=item_ids, random_state=seed, num_threads=num_threads)
    peer.max_validation_users = int(max_validation_users)
    peer.validation_seed = int(seed)
    return peer.fit(train, validation=validation)


def als_fold_in(interactions: pd.DataFrame, item_ids: Sequence[str], params: Dict[str, Any],
                seed: int = 0, num_threads: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(Y, P) of an ALS fit of `interactions` with `params` (see the module docstring)."""
    peer = ImplicitALS(item_ids=item_ids, grid={}, random_state=seed,
                       num_threads=num_threads, **params)
    peer.fit(interactions)
    return peer.fold_in_tables(item_ids)
