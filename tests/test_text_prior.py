"""Text popularity prior: a brute-force oracle for `neighbor_popularity`."""
from __future__ import annotations

import numpy as np
import pytest

from recommenders_tf.features.text_prior import neighbor_popularity


def _oracle(query, reference, counts, k, exclude=None):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    out = []
    for row in range(len(q)):
        sims = [(float(q[row] @ r[j]), j) for j in range(len(r))
                if exclude is None or j != exclude[row]]
        top = sorted(sims, reverse=True)[:k]
        w = np.array([max(s, 0.0) for s, _ in top])
        logs = np.array([np.log1p(counts[j]) for _, j in top])
        out.append((w * logs).sum() / w.sum() if w.sum() > 0 else 0.0)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_matches_a_brute_force_oracle_with_and_without_exclusion(k):
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(9, 5)).astype(np.float32)
    counts = rng.integers(0, 40, size=9)
    query = rng.normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(neighbor_popularity(query, reference, counts, k, block=3),
                               _oracle(query, reference, counts, k), rtol=1e-5, atol=1e-6)
    # Warm items ask about themselves: their own row never counts.
    own = np.arange(9)
    got = neighbor_popularity(reference, reference, counts, k, exclude=own, block=4)
    np.testing.assert_allclose(got, _oracle(reference, reference, counts, k, exclude=own),
                               rtol=1e-5, atol=1e-6)


def test_popular_neighbourhoods_score_higher_and_opposites_score_zero():
    reference = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    counts = np.array([100, 50, 1])
    query = np.array([[1, 0.05], [0.05, 1], [-1, -1]], np.float32)
    prior = neighbor_popularity(query, reference, counts, k=2)
    assert prior[0] > prior[1] > 0
    assert prior[2] == 0.0  # no neighbour points its way: no evidence, no prior


def test_rejects_counts_of_the_wrong_length():
    with pytest.raises(ValueError, match="counts"):
        neighbor_popularity(np.ones((2, 3)), np.ones((4, 3)), np.ones(3), k=2)
