"""Metrics against values worked out by hand from their definitions."""
import math

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.evaluation import metrics as M

# Three users, ranked lists of length 3.
# A: hits at ranks 1 and 3, 3 relevant items.  B: hit at rank 2, 5 relevant (> K).
# C: no hit, 1 relevant item.
HITS = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=bool)
N_REL = np.array([3, 5, 1])
D = [1.0, 1.0 / math.log2(3), 1.0 / math.log2(4)]  # log2 discounts of ranks 1..3


def test_recall_precision_f1():
    np.testing.assert_allclose(M.recall_at_k(HITS, N_REL, 3), [2 / 3, 1 / 5, 0.0])
    np.testing.assert_allclose(M.recall_at_k(HITS, N_REL, 1), [1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(M.precision_at_k(HITS, N_REL, 3), [2 / 3, 1 / 3, 0.0])
    p_b, r_b = 1 / 3, 1 / 5
    np.testing.assert_allclose(
        M.f1_at_k(HITS, N_REL, 3), [2 / 3, 2 * p_b * r_b / (p_b + r_b), 0.0]
    )


def test_ndcg_ideal_over_min_relevant_and_k():
    idcg3 = sum(D)  # A has 3 relevant; B has 5 but the ideal list only has 3 slots
    expected = [(D[0] + D[2]) / idcg3, D[1] / idcg3, 0.0]
    np.testing.assert_allclose(M.ndcg_at_k(HITS, N_REL, 3), expected)
    # At K=2, user A's ideal is over min(3, 2) = 2 ranks.
    np.testing.assert_allclose(
        M.ndcg_at_k(HITS, N_REL, 2), [D[0] / (D[0] + D[1]), D[1] / (D[0] + D[1]), 0.0]
    )
    # A single relevant item found at rank 1 is a perfect list.
    assert M.ndcg_at_k(np.array([[1, 0]], bool), np.array([1]), 2)[0] == pytest.approx(1.0)


def test_hr_mrr_map():
    np.testing.assert_allclose(M.hit_rate_at_k(HITS, N_REL, 3), [1, 1, 0])
    np.testing.assert_allclose(M.hit_rate_at_k(HITS, N_REL, 1), [1, 0, 0])
    np.testing.assert_allclose(M.mrr_at_k(HITS, N_REL, 3), [1.0, 0.5, 0.0])
    # AP@3 = sum of precision at each hit / min(|rel|, 3).
    np.testing.assert_allclose(
        M.map_at_k(HITS, N_REL, 3), [(1 / 1 + 2 / 3) / 3, (1 / 2) / 3, 0.0]
    )


def test_topk_input_errors():
    with pytest.raises(ValueError, match="no relevant items"):
        M.recall_at_k(HITS, np.array([3, 0, 1]), 3)
    with pytest.raises(ValueError, match="more hits than relevant"):
        M.recall_at_k(HITS, np.array([1, 5, 1]), 3)
    with pytest.raises(ValueError, match="pad short lists"):
        M.ndcg_at_k(HITS, N_REL, 4)


def test_catalog_coverage_ignores_padding():
    top = np.array([[0, 1], [1, 2], [-1, -1]])
    assert M.catalog_coverage(top, 5) == pytest.approx(3 / 5)
    assert M.catalog_coverage(top, 5, k=1) == pytest.approx(2 / 5)


def test_intra_list_diversity():
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    top = np.array([[0, 1, 2], [0, -1, -1], [0, 0, -1], [3, 0, -1]])
    c = 1 / math.sqrt(2)  # cosine between [1,0] and [1,1]
    got = M.intra_list_diversity(top, feats)
    assert got[0] == pytest.approx((1.0 + (1 - c) + (1 - c)) / 3)
    assert math.isnan(got[1])  # one item, no pair
    assert got[2] == pytest.approx(0.0)  # identical items
    assert got[3] == pytest.approx(1.0)  # a featureless item is unlike anything


def test_novelty():
    pop = np.array([0.5, 0.25, 1.0])
    got = M.novelty(np.array([[0, 1], [2, -1]]), pop)
    np.testing.assert_allclose(got, [(1.0 + 2.0) / 2, 0.0])
    with pytest.raises(ValueError, match="shares"):
        M.novelty(np.array([[0]]), np.array([0.0]))


def test_rating_errors_and_clipping():
    assert M.rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3))
    assert M.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    np.testing.assert_allclose(M.clip_ratings([0.2, 3.3, 6.0], (1, 5)), [1.0, 3.3, 5.0])
    with pytest.raises(ValueError, match="y_true has 3 values but y_pred has 2"):
        M.rmse([1, 2, 3], [1, 2])


def test_average_ranks_and_auc_with_ties():
    np.testing.assert_allclose(M.average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
    # Positive/negative pairs: (.8,.8) tie = 1/2, (.8,.1) = 1, (.3,.8) = 0, (.3,.1) = 1.
    assert M.auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(2.5 / 4)
    assert M.auc([0, 1], [0.1, 0.9]) == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        M.auc([1, 1], [0.1, 0.2])


def test_log_loss_clips():
    assert M.log_loss([1, 0], [0.9, 0.2]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    assert M.log_loss([0, 1], [1.0, 0.0], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-6)
