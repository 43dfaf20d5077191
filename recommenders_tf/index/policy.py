"""The one index-building policy: ScaNN tuned until its recall against the exact index holds on
queries it was not tuned on.

Every ScaNN index the project ships is built by `build_tuned_index` (pipelines.build_index and
pipelines.reindex, run_all's retrieval exports, and the cascade export):

1. BruteForce over the candidates: the exact reference (and the index of a bruteforce export).
2. `tune_scann` on the tuning queries: the cheapest grid setting reaching the tuning target,
   with a reordering budget of at least `min_reordering_candidates` (k + exclusion width when
   the index serves exclusions, so they are absorbed by the approximate pass).
3. Its recall@k against BruteForce on the held-out queries. Tuning only proves the target on the
   queries it tuned on, which may be few or unusual, so when the held-out recall falls short
   the tuning is repeated with the next, stricter target of the ladder (by default halfway to
   1, then 1).
4. When the whole ladder falls short: still ScaNN, but searching every leaf (only the quantised
   scoring before the exact reordering can then lose neighbours), kept if it measures better.

The report says which of these ended it, so run records and export metadata carry the reason
beside the figures. `index_query_users` draws the seeded sample of users whose queries are
used (`MAX_INDEX_QUERY_USERS`); `split_queries` halves real query embeddings into tuning and
held-out parts; `noise_queries` stands in perturbed candidate embeddings when no real query can be
built (the caller must say so wherever the recall is reported).

Example:
    >>> tune, held_out, note = split_queries(query_embeddings, seed=0)
    >>> built = build_tuned_index(ids, embeddings, tune, held_out, k=10, target_recall=0.95,
    ...                           min_reordering_candidates=60, query_model=tower)
    >>> built.index, built.exact, built.report["recall@10_vs_exact"]
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recommenders_tf.data.splits import sample_users
from recommenders_tf.index.scann_index import RetrievalIndex, ScannParams, build_index
from recommenders_tf.index.tuning import recall_at_k_vs_exact, tune_scann

logger = logging.getLogger(__name__)

# Fewer queries than this are not split: recall is then measured on the tuning queries.
MIN_SPLIT_QUERIES = 20
# Users whose queries tune and measure an index (half each), a seeded sample beyond this: the
# held-out recall is an exact search per query over the whole catalogue, repeated per tuning
# attempt, so with every user it would cost users x catalogue (at 400K users and 200K items
# most of an export's time). 10,000 held-out queries put the recall's standard error below
# 0.003 at the 0.95 target.
MAX_INDEX_QUERY_USERS = 20000


def retune_ladder(target_recall: float) -> Tuple[float, ...]:
    """Tuning targets tried in turn: the target, halfway from it to 1, then 1."""
    steps = (target_recall, 1.0 - (1.0 - target_recall) / 2.0, 1.0)
    return tuple(dict.fromkeys(float(t) for t in steps))


@dataclasses.dataclass
class TunedIndex:
    """What `build_tuned_index` built.

    Args:
        index: the ScaNN index chosen by the policy.
        exact: the BruteForce index over the same candidates (the reference it was measured
            against; also the index of an exact export).
        params: the ScaNN parameters of `index`.
        report: JSON-ready figures: `recall@<k>_vs_exact` (held out), the same on the tuning
            queries, `target_recall`, `target_met`, `params`, `tuning_target` (the ladder step
            that ended it), `fallback` ("none" or "every_leaf"), `tuning_trials`,
            `tuning_seconds`, `build_seconds`, `tuning_note`, one entry per attempt, and the
            query counts.
    """

    index: RetrievalIndex
    exact: RetrievalIndex
    params: ScannParams
    report: Dict[str, Any]


def build_tuned_index(
    candidate_ids: Any,
    candidate_embeddings: Any,
    tune_queries: Any,
    held_out_queries: Any,
    *,
    k: int = 10,
    target_recall: float = 0.95,
    ladder: Optional[Sequence[float]] = None,
    min_reordering_candidates: Optional[int] = None,
    index_k: Optional[int] = None,
    query_model: Any = None,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = None,
) -> TunedIndex:
    """Builds BruteForce and a ScaNN index whose held-out recall@k reaches `target_recall`.

    Args:
        candidate_ids: n unique string ids.
        candidate_embeddings: [n, d] float array.
        tune_queries: [m, d] query embeddings ScaNN is tuned on.
        held_out_queries: [m', d] query embeddings the reported recall is measured on (pass
            the tuning queries again when there are too few to hold some out).
        k: recall cut-off (and the k of the indexes unless `index_k` is given).
        target_recall: recall@k against BruteForce the held-out queries must reach.
        ladder: tuning targets tried in turn; default `retune_ladder(target_recall)`.
        min_reordering_candidates: smallest ScaNN reordering budget (k + exclusion width when
            the index serves exclusions); default k.
        index_k: results per query of the built indexes when the search is wider than the
            recall cut-off (a cascade's retrieval searches past its k); default k.
        query_model: query tower attached to both indexes (None: they take embeddings).
        seed: seed of tune_scann's query sample.
        log: progress printer; default this module's logger.

    Returns:
        A `TunedIndex`; `report["target_met"]` is False when even the fallback fell short (the
        most accurate index found is returned, and the note says so).
    """
    log = log or logger.info
    index_k = int(index_k or k)
    min_reorder = int(min_reordering_candidates or k)
    ladder = tuple(ladder) if ladder else retune_ladder(target_recall)
    tune_queries = np.asarray(tune_queries, dtype=np.float32)
    held_out_queries = np.asarray(held_out_queries, dtype=np.float32)

    exact = build_index("bruteforce", query_model, candidate_ids, candidate_embeddings,
                        k=index_k)
    log(f"BruteForce over {exact.num_candidates} candidates built in "
        f"{exact.build_seconds:.2f}s; tuning ScaNN to held-out recall@{k} >= {target_recall} "
        f"with >= {min_reorder} reordering candidates")
    start = time.perf_counter()
    attempts: List[Dict[str, Any]] = []
    trials = 0
    for tuning_target in ladder:
        tuned = tune_scann(candidate_ids, candidate_embeddings, tune_queries, k=k,
                           target_recall=tuning_target, seed=seed, query_model=query_model,
                           min_reordering_candidates=min_reorder)
        trials += len(tuned.trials)
        held_out = recall_at_k_vs_exact(tuned.index, exact, held_out_queries, k)
        attempts.append({"tuning_target": tuning_target, "params": tuned.params.to_dict(),
                         "recall_tuning_queries": round(tuned.recall, 4),
                         "recall_held_out": round(held_out, 4)})
        log(f"ScaNN {tuned.params.to_dict()} (tuning target {tuning_target:.3f}, "
            f"{len(tuned.trials)} trials): recall@{k} {tuned.recall:.4f} on tuning queries, "
            f"{held_out:.4f} held out")
        if held_out >= target_recall:
            break
    index, params, note, fallback = tuned.index, tuned.params, tuned.note, "none"
    if held_out < target_recall:
        every_leaf = dataclasses.replace(params, num_leaves_to_search=params.num_leaves)
        candidate = build_index("scann", query_model, candidate_ids, candidate_embeddings, k=k,
                                scann_params=every_leaf)
        exhaustive = recall_at_k_vs_exact(candidate, exact, held_out_queries, k)
        attempts.append({"tuning_target": None, "params": every_leaf.to_dict(),
                         "recall_held_out": round(exhaustive, 4), "every_leaf": True})
        log(f"ScaNN searching all {every_leaf.num_leaves} leaves: recall@{k} {exhaustive:.4f} "
            "held out")
        if exhaustive > held_out:
            index, params, held_out, fallback = candidate, every_leaf, exhaustive, "every_leaf"
            note += " Fell back to searching every leaf."
    if index_k != k:
        # The search is wider than the recall cut-off: the served index returns index_k, and
        # its recall is measured again, since k-means differs between builds.
        index = build_index("scann", query_model, candidate_ids, candidate_embeddings,
                            k=index_k, scann_params=params)
        held_out = recall_at_k_vs_exact(index, exact, held_out_queries, k)
    tuning_seconds = time.perf_counter() - start
    target_met = held_out >= target_recall
    if not target_met:
        log(f"WARNING: held-out recall@{k} {held_out:.4f} < {target_recall}. {note}")
    report = {
        f"recall@{k}_vs_exact": round(held_out, 4),
        f"recall@{k}_vs_exact_tuning_queries": round(tuned.recall, 4),
        "target_recall": target_recall,
        "target_met": bool(target_met),
        "params": params.to_dict(),
        "tuning_target": tuning_target,
        "fallback": fallback,
        "tuning_trials": trials,
        "tuning_seconds": round(tuning_seconds, 2),
        "build_seconds": round(index.build_seconds, 4),
        "tuning_note": note,
        "attempts": attempts,
        "tune_queries": int(len(tune_queries)),
        "held_out_queries": int(len(held_out_queries)),
    }
    return TunedIndex(index, exact, params, report)


def index_query_users(users: Any, max_users: int = MAX_INDEX_QUERY_USERS, seed: int = 0
                      ) -> Tuple[np.ndarray, str]:
    """(users, a note) of the users whose query embeddings tune and measure an index: all of
    them, or a seeded sample of `max_users` (<= 0: all) that the note states."""
    chosen, sample = sample_users(users, max_users, seed)
    if sample["sampled"] < sample["of"]:
        return chosen, (f"a sample of {sample['sampled']} of {sample['of']} users (seed "
                        f"{seed})")
    return chosen, f"all {sample['of']} users"


def split_queries(embeddings: Any, seed: int = 0, shuffle: bool = True
                  ) -> Tuple[np.ndarray, np.ndarray, str]:
    """(tuning half, held-out half, a note) of query embeddings.

    With fewer than `MIN_SPLIT_QUERIES` queries nothing is held out: both parts are all of
    them, and the note says the recall is measured on the tuning queries.

    Args:
        embeddings: [m, d] query embeddings.
        seed: seed of the shuffle.
        shuffle: shuffle before halving (pass False when the rows are already in random order).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < MIN_SPLIT_QUERIES:
        return embeddings, embeddings, (f"too few queries ({len(embeddings)}) to hold some "
                                        "out, so recall is measured on the tuning queries")
    if shuffle:
        embeddings = embeddings[np.random.default_rng(seed).permutation(len(embeddings))]
    half = len(embeddings) // 2
    return (embeddings[:half], embeddings[half:],
            f"{half} tune, {len(embeddings) - half} measure")


def noise_queries(candidate_embeddings: Any, count: int, seed: int = 0) -> np.ndarray:
    """Sampled candidate embeddings plus Gaussian noise of half their per-dimension spread: the
    stand-in queries when no real ones can be built."""
    embeddings = np.asarray(candidate_embeddings, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(embeddings), count, replace=len(embeddings) < count)
    spread = embeddings.std(axis=0, keepdims=True)
    noisy = embeddings[rows] + 0.5 * spread * rng.standard_normal(
        (count, embeddings.shape[1])).astype(np.float32)
    return noisy.astype(np.float32)
