"""MMR and greedy DPP re-ranking in TensorFlow: hand-worked orders, a log-det oracle, and
agreement with the NumPy oracles of tests/oracles.py."""
import itertools

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from oracles import dpp_rerank, mmr_rerank, normalize_relevance
from recommenders_tf.models.diversity import (dpp_alpha, dpp_rerank_tf, mmr_rerank_tf,
                                              normalize_relevance_tf)

# a = (1, 0), b = (0.8, 0.6), c = (0, 1), d = (0.6, 0.8):
# cos(a,b) = 0.8, cos(a,c) = 0, cos(a,d) = 0.6, cos(b,c) = 0.6, cos(b,d) = 0.96, cos(c,d) = 0.8
VECS = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
REL = np.array([1.0, 0.9, 0.5, 0.0])  # already min-max normalised: r = REL


RERANKERS = {"mmr": (mmr_rerank_tf, mmr_rerank), "dpp": (dpp_rerank_tf, dpp_rerank)}


def run_tf(fn, rel, vecs, k, lam, mask=None):
    return fn(tf.constant(rel, tf.float32), tf.constant(vecs, tf.float32), k, lam,
              None if mask is None else tf.constant(mask)).numpy()


def picks(name, rel, vecs, k, lam, mask=None):
    """One list's picks ([L] scores, [L, D] vectors) by the TensorFlow re-ranker, after checking
    that the NumPy oracle picks the same, so a hand-worked answer pins down both."""
    tf_fn, oracle = RERANKERS[name]
    got = run_tf(tf_fn, rel[None], vecs[None], k, lam,
                 None if mask is None else mask[None])[0].tolist()
    assert oracle(rel, vecs, k, lam, mask).tolist() == got, (name, lam)
    return got


def test_mmr_hand_worked_four_items():
    # lam = 0.5. Step 1: max relevance -> a. Step 2: b 0.45 - 0.5*0.8 = 0.05,
    # c 0.25 - 0.5*0 = 0.25, d 0 - 0.5*0.6 = -0.3 -> c. Step 3: b 0.45 - 0.5*max(0.8, 0.6)
    # = 0.05, d 0 - 0.5*max(0.6, 0.8) = -0.4 -> b. Then d.
    assert picks("mmr", REL, VECS, k=4, lam=0.5) == [0, 2, 1, 3]
    assert picks("mmr", REL, VECS, k=2, lam=0.5) == [0, 2]
    # lam = 0.8, step 2: b 0.72 - 0.2*0.8 = 0.56 beats c 0.4 -> relevance order.
    assert picks("mmr", REL, VECS, k=4, lam=0.8) == [0, 1, 2, 3]
    # c masked out (r of the others unchanged: c was neither min nor max): a, b (0.05 vs
    # d -0.3), d, then padding.
    mask = np.array([True, True, False, True])
    assert picks("mmr", REL, VECS, k=4, lam=0.5, mask=mask) == [0, 1, 3, -1]


def test_dpp_hand_worked_three_items():
    rel, vecs = np.array([1.0, 0.9, 0.0]), VECS[:3]  # a, b, c
    # gain_i = lam * r_i + (1 - lam) * log d_i^2. Step 1: d^2 = 1 for all -> a.
    # lam = 0.5, step 2: b: 0.45 + 0.5 * log(1 - 0.8^2) = 0.45 - 0.511 = -0.061;
    # c: 0 + 0.5 * log(1 - 0) = 0 -> c. Step 3: b lies in span(a, c) (2-D), d^2 = 0: the
    # kernel is exhausted and b fills the last slot by relevance.
    assert picks("dpp", rel, vecs, k=3, lam=0.5) == [0, 2, 1]
    # lam = 0.8, step 2: b: 0.72 + 0.2 * log(0.36) = 0.516 > c: 0 -> relevance order.
    assert picks("dpp", rel, vecs, k=3, lam=0.8) == [0, 1, 2]
    # lam = 0: pure log det; step 1 ties (d^2 = 1 everywhere) go to the first position.
    assert picks("dpp", rel, vecs, k=2, lam=0.0) == [0, 2]
    assert picks("dpp", rel, vecs, k=3, lam=0.0) == [0, 2, 1]
    assert dpp_alpha(0.5) == 0.5 and dpp_alpha(0.8) == pytest.approx(2.0)


def random_batch(seed, batch=6, length=12, dim=8, short=True):
    rng = np.random.default_rng(seed)
    rel = rng.normal(size=(batch, length)) * rng.uniform(0.5, 20, size=(batch, 1))
    vecs = rng.normal(size=(batch, length, dim))
    mask = np.ones((batch, length), bool)
    if short:
        valid = rng.integers(1, length + 1, size=batch)
        valid[0] = 3  # fewer than k
        mask = np.arange(length)[None] < valid[:, None]
        mask = mask[:, rng.permutation(length)]  # padding anywhere, not only at the end
    return rel, vecs, mask


def test_dpp_greedy_matches_an_explicit_log_det_oracle():
    rel, vecs, _ = random_batch(0, batch=3, length=9, dim=8, short=False)
    unit = vecs / np.linalg.norm(vecs, axis=-1, keepdims=True)
    for lam in (0.2, 0.6):
        alpha = dpp_alpha(lam)
        got = run_tf(dpp_rerank_tf, rel, vecs, k=5, lam=lam)
        np.testing.assert_array_equal(dpp_rerank(rel, vecs, k=5, lam=lam), got)
        for b in range(3):
            r = (rel[b] - rel[b].min()) / (rel[b].max() - rel[b].min())
            q = np.exp(alpha * r)
            kernel = q[:, None] * (unit[b] @ unit[b].T) * q[None, :]  # L = diag(q) S diag(q)
            picked = []
            for _ in range(5):
                rest = [i for i in range(9) if i not in picked]
                dets = [np.linalg.slogdet(kernel[np.ix_(picked + [i], picked + [i])])[1]
                        for i in rest]
                picked.append(rest[int(np.argmax(dets))])
            assert got[b].tolist() == picked, (lam, b)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_tensorflow_matches_the_numpy_oracle_inside_a_tf_function(lam):
    rel, vecs, mask = random_batch(1 + int(lam * 10))
    k = 6
    spec = [tf.TensorSpec([None, 12], tf.float32), tf.TensorSpec([None, 12, 8], tf.float32),
            tf.TensorSpec([None, 12], tf.bool), tf.TensorSpec([], tf.float32)]
    for np_fn, tf_fn in ((mmr_rerank, mmr_rerank_tf), (dpp_rerank, dpp_rerank_tf)):
        graph = tf.function(lambda r, v, m, lam_t: tf_fn(r, v, k, lam_t, m),
                            input_signature=spec)
        got = graph(tf.constant(rel, tf.float32), tf.constant(vecs, tf.float32),
                    tf.constant(mask), tf.constant(lam)).numpy()
        expected = np_fn(rel, vecs, k, lam, mask)
        np.testing.assert_array_equal(got, expected, err_msg=np_fn.__name__)


def test_lam_one_is_top_k_by_relevance_and_scale_free():
    rel, vecs, mask = random_batch(2)
    top = np.argsort(-np.where(mask, rel, -np.inf), axis=1, kind="stable")[:, :5]
    top = np.where(np.take_along_axis(mask, top, 1), top, -1)
    for tf_fn, oracle in RERANKERS.values():
        np.testing.assert_array_equal(run_tf(tf_fn, rel, vecs, 5, 1.0, mask), top)
        np.testing.assert_array_equal(oracle(rel, vecs, 5, 1.0, mask), top)
    # Per-list min-max: an affine change of a list's scores changes nothing at any lam.
    for tf_fn, oracle in RERANKERS.values():
        np.testing.assert_array_equal(run_tf(tf_fn, rel * 1000.0 + 3.0, vecs, 5, 0.4, mask),
                                      run_tf(tf_fn, rel, vecs, 5, 0.4, mask))
        np.testing.assert_array_equal(oracle(rel * 1000.0 + 3.0, vecs, 5, 0.4, mask),
                                      oracle(rel, vecs, 5, 0.4, mask))


def test_normalize_relevance_min_max_over_unmasked():
    rel = np.array([[2.0, 4.0, 3.0, 100.0], [5.0, 5.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    expected = [[0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(
        normalize_relevance_tf(tf.constant(rel, tf.float32), tf.constant(mask)).numpy(),
        expected)
    np.testing.assert_allclose(normalize_relevance(rel, mask), expected)


def test_dpp_picks_every_distinct_direction_before_a_duplicate():
    # Three directions, each twice; the duplicates of the best direction are the most
    # relevant, so relevance alone would pick the same direction twice first.
    base = np.eye(3)
    vecs = base[[0, 0, 1, 1, 2, 2]] + 0.0
    rel = np.array([1.0, 0.95, 0.5, 0.45, 0.3, 0.2])
    for lam in (0.0, 0.2, 0.5, 0.9):
        got = picks("dpp", rel, vecs, 6, lam)
        directions = np.argmax(vecs[got], axis=1)
        assert sorted(directions[:3].tolist()) == [0, 1, 2], (lam, got)
        # Once the kernel is exhausted the duplicates follow in relevance order.
        assert got[3:] == [1, 3, 5]
    assert picks("dpp", rel, vecs, 6, 1.0) == [0, 1, 2, 3, 4, 5]
    # MMR with a small lam avoids the duplicate too.
    assert sorted(np.argmax(vecs[picks("mmr", rel, vecs, 3, 0.2)], 1).tolist()) == [0, 1, 2]


def test_masked_items_are_never_selected_and_short_lists_are_padded():
    rel, vecs, mask = random_batch(3, batch=8, length=10)
    rel = np.where(mask, rel, 1e6)  # masked entries look the most relevant
    mask[1] = False                  # a fully padded list
    k = 7
    for lam, (tf_fn, oracle) in itertools.product((0.0, 0.5, 1.0), RERANKERS.values()):
        for got in (run_tf(tf_fn, rel, vecs, k, lam, mask), oracle(rel, vecs, k, lam, mask)):
            for b in range(8):
                n = min(k, int(mask[b].sum()))
                real = got[b, :n]
                assert np.all(mask[b, real]) and len(set(real.tolist())) == n
                assert np.all(got[b, n:] == -1)
    # k larger than the list, and -inf padding masking itself.
    for name in RERANKERS:
        assert picks(name, np.array([0.2, -np.inf, 0.9]), VECS[:3], 5, 0.5) == \
            [2, 0, -1, -1, -1]


def test_zero_vectors_count_as_dissimilar():
    # Item 1 has no vector: cosine 0 with everything (as intra_list_diversity counts it).
    vecs = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    rel = np.array([1.0, 0.0, 0.9])
    for name in RERANKERS:
        assert picks(name, rel, vecs, 3, 0.3) == [0, 1, 2], name


def test_bad_arguments_fail_clearly():
    for tf_fn, oracle in RERANKERS.values():
        with pytest.raises(ValueError, match="lam must be in"):
            tf_fn(REL[None], VECS[None], 2, lam=1.5)
        with pytest.raises(ValueError, match="k must be"):
            tf_fn(REL[None], VECS[None], 0)
        with pytest.raises(ValueError, match=r"\[B, L, D\]"):
            tf_fn(REL[None], VECS, 2)
        with pytest.raises(ValueError, match="lam must be in"):
            oracle(REL, VECS, 2, lam=1.5)
        with pytest.raises(ValueError, match=r"\[B, L, D\]"):
            oracle(REL[None], VECS, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lam must be in"):
        mmr_rerank_tf(REL[None], VECS[None], 2, tf.constant(-0.1))
