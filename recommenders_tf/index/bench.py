"""P5 retrieval-index benchmark: BruteForce vs tuned ScaNN on a synthetic clustered catalogue.

Item and query embeddings come from one Gaussian mixture with Zipf-sized clusters, normalised
to the unit sphere: learned item embeddings cluster by genre/taste and popular tastes hold
more items, and uniform noise would make every approximate index look bad (no structure to
exploit) and brute force look representative (no skew). Rows follow the JSON row format of
BENCHMARK.md (`qps_single`, `qps_batch256`, `build_seconds`, `recall@10_vs_exact`).

Both indexes are timed through the same path a server uses: a `tf.function` over [B, d]
query embeddings returning padded, masked top-k (`RetrievalIndex.search_tensors`).
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.index.scann_index import RetrievalIndex, build_index
from recommenders_tf.index.tuning import recall_at_k_vs_exact, tune_scann

logger = logging.getLogger(__name__)


def clustered_embeddings(
    n: int, dim: int, seed: int, num_clusters: int | None = None, spread: float = 0.6,
    zipf_exponent: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (points [n, dim] float32 unit-norm, cluster centres) from a Zipf-weighted
    Gaussian mixture; `spread` is the expected noise norm around a unit-norm centre."""
    rng = np.random.default_rng(seed)
    num_clusters = num_clusters or max(8, int(math.sqrt(n) / 2))
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, num_clusters + 1) ** zipf_exponent
    assignment = rng.choice(num_clusters, size=n, p=weights / weights.sum())
    points = centres[assignment]
    points += rng.standard_normal((n, dim), dtype=np.float32) * (spread / math.sqrt(dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), centres


def synthetic_catalogue(n_items: int, dim: int, n_queries: int, seed: int):
    """Item ids, item embeddings and query embeddings drawn around the same cluster centres."""
    items, centres = clustered_embeddings(n_items, dim, seed)
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, len(centres) + 1) ** 0.8
    assignment = rng.choice(len(centres), size=n_queries, p=weights / weights.sum())
    queries = centres[assignment] + rng.standard_normal((n_queries, dim), dtype=np.float32) * (
        0.6 / math.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.asarray([f"item-{i:07d}" for i in range(n_items)])
    return ids, items, queries.astype(np.float32)


def _qps(index: RetrievalIndex, queries: np.ndarray, batch_size: int, k: int,
         min_seconds: float) -> float:
    search = tf.function(lambda q: index.search_tensors(q, k),
                         input_signature=[tf.TensorSpec([None, index.embedding_dim], tf.float32)])
    if len(queries) < batch_size:  # reuse queries rather than time a smaller batch
        queries = np.resize(queries, (batch_size, queries.shape[1]))
    batches = [tf.constant(queries[i : i + batch_size])
               for i in range(0, len(queries) - batch_size + 1, batch_size)]
    search(batches[0])[1].numpy()  # trace and warm up outside the timed loop
    done, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            search(batch)[1].numpy()
            done += int(batch.shape[0])
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def benchmark_indexes(
    n_items: int, dim: int = 64, n_queries: int = 2000, seed: int = 0, *, k: int = 10,
    target_recall: float = 0.95, min_seconds: float = 3.0,
) -> list[dict[str, Any]]:
    """Builds BruteForce and tuned ScaNN over a synthetic catalogue and times them.

    Args:
        n_items: catalogue size (P5 uses 100K and 1M).
        dim: embedding dim (P5 uses 64).
        n_queries: synthetic queries; tuning samples up to 1000 of the first half, recall
            and timings use the second half (so ScaNN is not measured on its tuning queries).
        seed: seed of catalogue and queries.
        k: recall cut-off.
        target_recall: ScaNN tuning target.
        min_seconds: minimum wall time of each throughput measurement.

    Returns:
        One row per index in the BENCHMARK.md JSON row format.
    """
    ids, items, queries = synthetic_catalogue(n_items, dim, n_queries, seed)
    tuning_queries, eval_queries = queries[: n_queries // 2], queries[n_queries // 2 :]
    brute = build_index("bruteforce", None, ids, items, k=k)
    tuned = tune_scann(ids, items, tuning_queries, k=k, target_recall=target_recall, seed=seed)
    scann = tuned.index
    cores = os.cpu_count()
    rows = []
    for name, index in (("bruteforce", brute), ("scann", scann)):
        recall = 1.0 if index is brute else recall_at_k_vs_exact(scann, brute, eval_queries, k)
        qps_single = _qps(index, eval_queries, 1, k, min_seconds)
        qps_batch = _qps(index, eval_queries, 256, k, min_seconds)
        notes = (f"{n_items} items, dim {dim}, Gaussian-mixture unit-norm embeddings, "
                 f"{len(eval_queries)} held-out queries, {cores} cores")
        if index is scann:
            notes += f"; tuned: {tuned.params.to_dict()}; {tuned.note}"
        rows.append({
            "model": f"index-{name}",
            "kind": "project",
            "metrics": {
                "qps_single": round(qps_single, 1),
                "qps_batch256": round(qps_batch, 1),
                "build_seconds": round(index.build_seconds, 3),
                f"recall@{k}_vs_exact": round(recall, 4),
            },
            "notes": notes,
        })
        logger.info("%s: %s", name, rows[-1]["metrics"])
    return rows
