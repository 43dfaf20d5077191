"""Measuring ScaNN against the exact top k, and tuning ScaNN to a recall target.

`tune_scann` walks a grid of ScaNN settings ordered from the cheapest to the most expensive
estimated per-query cost and stops at the first whose recall@k against the exact top k (brute
force on sampled queries) reaches the target. Only `num_leaves` and `dimensions_per_block`
need a new ScaNN build; `num_leaves_to_search` and the reordering budget are search-time
overrides of one searcher, so the walk costs a handful of builds, not one per grid point.
The chosen setting is then built as a real `RetrievalIndex` and its recall is measured again,
so the reported figure is the recall of the index you get back.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.index.scann_index import (
    RetrievalIndex,
    ScannParams,
    build_index,
    check_embeddings,
    check_k,
    check_query_embeddings,
    check_unique_ids,
    normalize_ids,
)

logger = logging.getLogger(__name__)


def _as_query_embeddings(index: RetrievalIndex, queries: Any) -> tf.Tensor:
    if isinstance(queries, dict):
        return index.embed_queries(queries)
    return check_query_embeddings(queries, index.embedding_dim)


def recall_at_k_vs_exact(
    index: RetrievalIndex,
    exact_index: RetrievalIndex,
    queries: Any,
    k: int = 10,
    batch_size: int = 128,
) -> float:
    """Mean share of the exact top k that `index` also returns in its top k.

    Args:
        index: the index under test (typically ScaNN).
        exact_index: the exact reference (a brute-force index over the same candidates).
        queries: [B, d] query embeddings, or a raw feature dict for the indexes' query model.
        k: cut-off.
        batch_size: queries per search call.
    """
    if not np.array_equal(np.sort(index.candidate_ids), np.sort(exact_index.candidate_ids)):
        raise ValueError("index and exact_index must be built over the same candidate ids.")
    check_k(k, exact_index.num_candidates)
    embeddings = _as_query_embeddings(exact_index, queries)
    hits = []
    for start in range(0, int(embeddings.shape[0]), batch_size):
        batch = embeddings[start : start + batch_size]
        _, approx = index.search(batch, k)
        _, exact = exact_index.search(batch, k)
        hits.extend(len(set(a) & set(e)) / k for a, e in zip(approx.tolist(), exact.tolist()))
    if not hits:
        raise ValueError("No queries given: cannot measure recall on an empty batch.")
    return float(np.mean(hits))


@dataclasses.dataclass(frozen=True)
class ScannGrid:
    """The settings `tune_scann` may try; None means "derived from the catalogue size".

    Args:
        num_leaves: candidate partition counts; default sqrt(n) and 2 sqrt(n).
        dimensions_per_block: asymmetric-hashing block sizes to try.
        leaves_to_search_fractions: shares of the leaves searched per query.
        reordering_multiples: reordering budgets as multiples of k (floored at
            `min_reordering_candidates`).
    """

    num_leaves: Sequence[int] | None = None
    dimensions_per_block: Sequence[int] = (4, 2)
    leaves_to_search_fractions: Sequence[float] = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4)
    reordering_multiples: Sequence[int] = (3, 5, 10, 25, 50)


@dataclasses.dataclass
class ScannTuningResult:
    """What `tune_scann` chose and why.

    Args:
        params: the chosen ScaNN parameters.
        recall: recall@k of `index` against the exact top k on the sampled queries.
        build_seconds: build time of `index`.
        target_recall: the recall the search aimed for.
        target_met: whether `recall >= target_recall`.
        note: a human sentence on the outcome (says so when falling back).
        trials: every evaluated setting with its recall and estimated cost, in walk order.
        index: the built ScaNN `RetrievalIndex` with `params`.
    """

    params: ScannParams
    recall: float
    build_seconds: float
    target_recall: float
    target_met: bool
    note: str
    trials: list[dict[str, Any]]
    index: RetrievalIndex

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_dict(),
            "recall": self.recall,
            "build_seconds": self.build_seconds,
            "target_recall": self.target_recall,
            "target_met": self.target_met,
            "note": self.note,
            "trials": self.trials,
        }


def estimated_query_cost(n: int, dim: int, params: ScannParams) -> float:
    """Rough per-query work in multiply-adds: centroids + hashed scoring + exact reordering.

    Asymmetric hashing scores one block per lookup, vectorised 16 at a time, so a hashed
    candidate costs about dim / dimensions_per_block / 4 units; a reordered one costs dim plus
    a cache miss (counted as another dim).
    """
    scanned = n * params.num_leaves_to_search / params.num_leaves
    hashed = scanned * dim / params.dimensions_per_block / 4
    reorder = 2 * dim * (params.num_reordering_candidates or 0)
    return params.num_leaves * dim + hashed + reorder


def scann_grid(n: int, dim: int, k: int, grid: ScannGrid, min_reorder: int) -> list[ScannParams]:
    """All grid settings valid for n candidates, ordered from cheapest to most expensive."""
    root = math.sqrt(n)
    leaves = grid.num_leaves or sorted({max(1, round(root)), max(1, round(2 * root))})
    settings = set()
    for num_leaves in leaves:
        num_leaves = min(int(num_leaves), n)
        for dpb in grid.dimensions_per_block:
            if dpb > dim:
                continue
            for frac in grid.leaves_to_search_fractions:
                to_search = min(num_leaves, max(1, round(frac * num_leaves)))
                for mult in grid.reordering_multiples:
                    reorder = min(n, max(min_reorder, mult * k))
                    settings.add((num_leaves, to_search, dpb, reorder))
    params = [
        ScannParams(num_leaves=a, num_leaves_to_search=b, dimensions_per_block=c,
                    num_reordering_candidates=d)
        for a, b, c, d in settings
    ]
    return sorted(params, key=lambda p: (estimated_query_cost(n, dim, p), dataclasses.astuple(p)))


def _exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k candidate positions, in chunks so 1M candidates stay within memory."""
    candidates = tf.constant(embeddings)
    out = []
    for start in range(0, len(queries), 64):
        scores = tf.matmul(queries[start : start + 64], candidates, transpose_b=True)
        out.append(tf.math.top_k(scores, k=k).indices.numpy())
    return np.concatenate(out)


def _raw_searcher(embeddings: np.ndarray, k: int, num_leaves: int, dpb: int, max_reorder: int,
                  training_iterations: int):
    from scann.scann_ops.py import scann_ops  # imported lazily: only ScaNN users need it

    builder = scann_ops.builder(embeddings, k, "dot_product")
    builder = builder.tree(num_leaves=num_leaves, num_leaves_to_search=1,
                           training_iterations=training_iterations)
    return builder.score_ah(dimensions_per_block=dpb).reorder(max_reorder).build()


def tune_scann(
    candidate_ids: Sequence[str] | np.ndarray,
    candidate_embeddings: Any,
    queries: Any,
    *,
    k: int = 10,
    target_recall: float = 0.95,
    num_queries: int = 1000,
    seed: int = 0,
    query_model: Any = None,
    min_reordering_candidates: int | None = None,
    grid: ScannGrid | None = None,
) -> ScannTuningResult:
    """Finds the cheapest ScaNN setting whose recall@k against the exact top k reaches a target.

    Args:
        candidate_ids: n unique string ids.
        candidate_embeddings: [n, d] float array.
        queries: [m, d] representative query embeddings (e.g. the query tower over real
            users); up to `num_queries` of them are sampled with `seed`.
        k: recall cut-off and default k of the returned index.
        target_recall: stop at the first setting reaching this recall@k.
        num_queries: how many queries to sample for measuring recall.
        seed: seed of the query sample.
        query_model: query tower attached to the returned index (not used for tuning).
        min_reordering_candidates: smallest reordering budget to consider; set it to
            k + exclusion width when the index will serve exclusions. Defaults to k.
        grid: the settings to walk (default `ScannGrid()`).

    Returns:
        A `ScannTuningResult`. When no setting reaches the target it holds the most accurate
        setting of the grid, `target_met=False`, and a note (also logged as a warning).
    """
    grid = grid or ScannGrid()
    ids = normalize_ids(candidate_ids, "candidate_ids")
    embeddings = check_embeddings(candidate_embeddings, "candidate_embeddings", len(ids))
    check_unique_ids(ids, "candidate_ids")
    k = check_k(k, len(ids))
    min_reorder = check_k(min_reordering_candidates or k, len(ids), "min_reordering_candidates")
    query_array = check_query_embeddings(np.asarray(queries), embeddings.shape[1]).numpy()
    rng = np.random.default_rng(seed)
    if len(query_array) > num_queries:
        query_array = query_array[np.sort(rng.choice(len(query_array), num_queries, replace=False))]
    n, dim = embeddings.shape

    exact = _exact_top_k(embeddings, query_array, k)
    exact_sets = [set(row) for row in exact.tolist()]
    settings = scann_grid(n, dim, k, grid, min_reorder)
    max_reorder = max(p.num_reordering_candidates for p in settings)
    searchers: dict[tuple[int, int], Any] = {}
    trials: list[dict[str, Any]] = []

    def walk(position: int) -> tuple[ScannParams | None, int]:
        for position in range(position, len(settings)):
            params = settings[position]
            key = (params.num_leaves, params.dimensions_per_block)
            if key not in searchers:
                start = time.perf_counter()
                searchers[key] = _raw_searcher(embeddings, k, *key, max_reorder,
                                               params.training_iterations)
                logger.info("ScaNN build %s took %.1fs", key, time.perf_counter() - start)
            result = searchers[key].search_batched_parallel(
                query_array, final_num_neighbors=k,
                pre_reorder_num_neighbors=params.num_reordering_candidates,
                leaves_to_search=params.num_leaves_to_search,
            )
            found = result.indices.numpy()
            valid = ~np.isnan(result.distances.numpy())
            recall = float(np.mean([
                len(set(row[ok].tolist()) & truth) / k
                for row, ok, truth in zip(found, valid, exact_sets)
            ]))
            trials.append({**params.to_dict(), "recall": recall,
                           "estimated_cost": estimated_query_cost(n, dim, params)})
            if recall >= target_recall:
                return params, position
        return None, len(settings)

    truth_ids = ids[exact]
    position, verifications = 0, 0
    while True:
        chosen, position = walk(position)
        fell_back = chosen is None
        if fell_back:
            # The most accurate grid point: smallest blocks, widest search, largest reordering.
            chosen = max(settings, key=lambda p: (-p.dimensions_per_block,
                                                  p.num_leaves_to_search / p.num_leaves,
                                                  p.num_reordering_candidates or 0, p.num_leaves))
        # The real index sorts candidates by id, so its answers are compared by id; k-means
        # training is randomised, so a setting that passed on the tuning build may fall just
        # short here, in which case the walk resumes after it.
        index = build_index("scann", query_model, ids, embeddings, k=k, scann_params=chosen)
        found_ids = index.search(query_array, k)[1]
        recall = float(np.mean([len(set(a) & set(t)) / k
                                for a, t in zip(found_ids.tolist(), truth_ids.tolist())]))
        target_met = recall >= target_recall
        verifications += 1
        if target_met or fell_back or verifications >= 3:
            break
        position += 1
    searchers.clear()

    if target_met:
        note = (f"recall@{k}={recall:.3f} >= {target_recall} on {len(query_array)} sampled "
                f"queries with {chosen}, after {len(trials)} trial(s) from the cheapest setting.")
    elif fell_back:
        note = (f"No grid setting reached recall@{k} >= {target_recall}; fell back to the most "
                f"accurate one ({chosen}), which measures recall@{k}={recall:.3f}. Widen "
                "the grid (more leaves searched, larger reordering, smaller blocks) or use "
                "brute force.")
    else:
        note = (f"{chosen} reached recall@{k} >= {target_recall} while tuning but the final "
                f"build measures {recall:.3f} (k-means varies between builds); gave up after "
                f"{verifications} builds. Raise target_recall slightly to leave a margin.")
    if not target_met:
        logger.warning(note)
    return ScannTuningResult(chosen, recall, index.build_seconds, target_recall, target_met,
                             note, trials, index)
