"""TopKEvaluator on a 3-user catalog whose rankings are worked out by hand."""
import math

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.evaluation.protocol import (
    TopKEvaluator,
    evaluate_ratings,
    genre_features,
    select_topk,
)


def frame(pairs):
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "rating": np.ones(len(pairs), np.float32),
            "timestamp": np.arange(len(pairs), dtype=np.int64),
        }
    )


# Candidates are the train items A, B, C, D. E appears only in test: it can never be hit but
# stays in u1's recall denominator.
TRAIN = frame([("u1", "A"), ("u1", "B"), ("u2", "B"), ("u2", "C"), ("u3", "A"), ("u3", "D")])
TEST = frame([("u1", "C"), ("u1", "E"), ("u2", "A"), ("u3", "B"), ("u3", "C")])
LOG3 = math.log2(3)


def constant(users):
    """Every item scores the same, so rankings follow item id order."""
    return np.zeros((len(users), 4))


def u1_prefers_d(users):
    # Columns are A, B, C, D; u1 ranks D above C, the others see all ties.
    rows = [[0, 0, 1, 5] if u == "u1" else [0, 0, 0, 0] for u in users]
    return np.array(rows, dtype=float)


def test_candidates_and_user_order():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1, 2))
    assert list(ev.item_ids) == ["A", "B", "C", "D"]
    assert list(ev.user_ids) == ["u1", "u2", "u3"]
    assert list(ev.n_relevant) == [2, 1, 2]


def test_ties_broken_by_id_and_train_items_excluded():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1, 2))
    # u1 has A, B in train -> C, D; u2 has B, C -> A, D; u3 has A, D -> B, C.
    assert ev.topk(constant, k=2) == {"u1": ["C", "D"], "u2": ["A", "D"], "u3": ["B", "C"]}
    m = ev.evaluate(constant).metrics
    # Recall@1: u1 1/2 (E unreachable), u2 1/1, u3 1/2.
    assert m["recall@1"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    # NDCG@2: u1 hit at 1 with ideal over min(2, 2) ranks; u2 and u3 perfect.
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / LOG3) + 1 + 1) / 3)
    assert m["coverage@1"] == pytest.approx(3 / 4)  # C, A, B
    assert m["coverage@2"] == pytest.approx(1.0)
    assert m["n_users"] == 3


def test_user_specific_scores_follow_item_columns():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1, 2))
    res = ev.evaluate(u1_prefers_d)
    per = res.per_user.set_index("user_id")
    assert per.loc["u1", "recall@1"] == 0.0
    assert per.loc["u1", "mrr@2"] == pytest.approx(0.5)
    assert per.loc["u1", "ndcg@2"] == pytest.approx((1 / LOG3) / (1 + 1 / LOG3))
    assert per.loc["u1", "precision@2"] == pytest.approx(0.5)
    assert per.loc["u1", "map@2"] == pytest.approx((1 / 2) / 2)
    assert res.metrics["hr@1"] == pytest.approx(2 / 3)
    assert res.metrics["mrr@2"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_novelty_uses_share_of_train_users():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1,))
    # A, B were seen by 2 of 3 train users, C, D by 1 of 3.
    np.testing.assert_allclose(ev.item_popularity, [2 / 3, 2 / 3, 1 / 3, 1 / 3])
    m = ev.evaluate(constant).metrics  # top-1: u1 C, u2 A, u3 B
    expected = (-math.log2(1 / 3) - math.log2(2 / 3) - math.log2(2 / 3)) / 3
    assert m["novelty@1"] == pytest.approx(expected)


def test_batching_does_not_change_results_and_respects_batch_size():
    calls = []

    def spy(users):
        calls.append(len(users))
        return u1_prefers_d(users)

    big = TopKEvaluator(TRAIN, TEST, ks=(1, 2)).evaluate(u1_prefers_d).metrics
    small = TopKEvaluator(TRAIN, TEST, ks=(1, 2), user_batch_size=2).evaluate(spy).metrics
    assert calls == [2, 1]
    assert small == pytest.approx(big)


def test_groups_for_sparsity_buckets():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1,))
    res = ev.evaluate(constant, user_groups={"u1": "a", "u2": "b", "u3": "b"})
    assert res.by_group["a"]["recall@1"] == pytest.approx(0.5)
    assert res.by_group["b"]["recall@1"] == pytest.approx(0.75)
    assert res.by_group["b"]["n_users"] == 2
    with pytest.raises(ValueError, match="no label for 1 test user"):
        ev.evaluate(constant, user_groups={"u1": "a", "u2": "b"})


def test_restricted_candidates_for_cold_start():
    # Held-out items C and E (E never in train) are the only candidates.
    ev = TopKEvaluator(TRAIN, TEST, ks=(1,), candidate_items=["E", "C"])
    assert list(ev.item_ids) == ["C", "E"]
    # u2 keeps C in train, so only E is rankable for it; its relevant item A is not a
    # candidate and stays in the denominator.
    assert ev.topk(lambda u: np.zeros((len(u), 2)), k=2) == {
        "u1": ["C", "E"], "u2": ["E"], "u3": ["C", "E"]
    }
    m = ev.evaluate(lambda u: np.tile([0.0, 1.0], (len(u), 1))).metrics  # E first
    assert m["recall@1"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)


def test_diversity_from_genres():
    items = pd.DataFrame(
        {"item_id": ["A", "B", "C", "D"], "title": list("ABCD"), "text": list("ABCD"),
         "genres": ["x", "x|y", "y", ""]}
    )
    feats = genre_features(items)
    assert list(feats.columns) == ["x", "y"]
    ev = TopKEvaluator(TRAIN, TEST, ks=(2,), item_features=feats)
    # Lists: u1 {C, D} -> y vs nothing: 1; u2 {A, D}: 1; u3 {B, C}: 1 - 1/sqrt(2).
    m = ev.evaluate(constant).metrics
    assert m["diversity@2"] == pytest.approx((1 + 1 + 1 - 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError, match="no row for 1 candidate"):
        TopKEvaluator(TRAIN, TEST, item_features=feats.drop(index="D"))


def test_bad_scores_are_reported():
    ev = TopKEvaluator(TRAIN, TEST)
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*expected \(3, 4\)"):
        ev.evaluate(lambda u: np.zeros((len(u), 3)))

    def nan_for_u2(users):
        s = np.zeros((len(users), 4))
        s[list(users).index("u2"), 2] = np.nan
        return s

    with pytest.raises(ValueError, match="user 'u2', item 'C'"):
        ev.evaluate(nan_for_u2)
    bad = TRAIN.copy()
    bad.loc[3, "item_id"] = None
    with pytest.raises(ValueError, match="train row 3: field 'item_id'"):
        TopKEvaluator(bad, TEST)


def test_select_topk_matches_sort_oracle():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m, k = rng.integers(1, 6), rng.integers(1, 15), int(rng.integers(1, 17))
        scores = rng.integers(0, 4, (n, m)).astype(float)  # many ties
        scores[rng.random((n, m)) < 0.2] = -np.inf  # excluded
        got = select_topk(scores, k)
        for row, s in zip(got, scores):
            ranked = sorted((j for j in range(m) if np.isfinite(s[j])), key=lambda j: (-s[j], j))
            expected = (ranked + [-1] * k)[:k]
            assert list(row) == expected


def test_scale_ml1m_shaped_random_scores():
    # 6,000 users x 4,000 items in a few batches, checked against a sort for a few users.
    rng = np.random.default_rng(1)
    n_users, n_items = 6000, 4000
    users = [f"u{i}" for i in range(n_users)]
    items = [f"i{j:04d}" for j in range(n_items)]
    one_each = zip(users, rng.integers(0, n_items, n_users))
    train = frame([(u, items[j]) for u, j in one_each] + [(users[0], it) for it in items])
    test = frame([(u, items[j]) for u, j in zip(users[1:], rng.integers(0, n_items, n_users - 1))])
    table = rng.random((n_users, n_items)).astype(np.float32)
    row_of = {u: i for i, u in enumerate(users)}
    ev = TopKEvaluator(train, test, ks=(10,), user_batch_size=2048)
    top = ev.topk(lambda us: table[[row_of[u] for u in us]], k=10, users=["u5", "u77"])
    for u in ("u5", "u77"):
        s = table[row_of[u]].copy()
        s[[ev.item_ids.tolist().index(i) for i in train[train.user_id == u].item_id]] = -np.inf
        assert top[u] == [ev.item_ids[j] for j in np.argsort(-s, kind="stable")[:10]]
    m = ev.evaluate(lambda us: table[[row_of[u] for u in us]]).metrics
    assert m["n_users"] == n_users - 1
    assert 0.0 <= m["recall@10"] < 0.01  # random scores: about 10 / 4000


def test_evaluate_ratings_clips():
    got = evaluate_ratings([1.0, 5.0], [0.0, 7.0], rating_range=(1, 5))
    assert got == {"rmse": 0.0, "mae": 0.0}
    got = evaluate_ratings([1.0, 5.0], [2.0, 5.0])
    assert got["rmse"] == pytest.approx(math.sqrt(0.5)) and got["mae"] == pytest.approx(0.5)


def test_expected_random_chance_level():
    ev = TopKEvaluator(TRAIN, TEST, ks=(1, 2))
    chance = ev.expected_random()
    # Each user has 2 rankable candidates. u1: 1 of them relevant (C), |rel| = 2 (C, E);
    # u2: 1 of 2 relevant, |rel| = 1; u3: both relevant, |rel| = 2.
    assert chance["recall@1"] == pytest.approx((0.5 / 2 + 0.5 / 1 + 1.0 / 2) / 3)
    assert chance["ndcg@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert chance["hr@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert chance["hr@2"] == pytest.approx(1.0)
    assert chance["ndcg@2"] == pytest.approx(
        (0.5 * (1 + 1 / LOG3) / (1 + 1 / LOG3) + 0.5 * (1 + 1 / LOG3) / 1.0 + 1.0) / 3
    )
    # Monte Carlo agrees: averaging evaluations of random scores approaches the expectation.
    rng = np.random.default_rng(0)
    runs = [ev.evaluate(lambda u: rng.random((len(u), 4))).metrics["ndcg@1"] for _ in range(400)]
    assert np.mean(runs) == pytest.approx(chance["ndcg@1"], abs=0.03)


def test_score_batches_are_capped_by_the_catalogue_without_changing_the_metrics(monkeypatch):
    """Users per score_fn call shrink as the catalogue grows (the score table is bounded), and
    the metrics are those of one call over every user."""
    import recommenders_tf.evaluation.protocol as protocol

    rng = np.random.default_rng(0)
    n_users, n_items = 60, 500
    train = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, 3000)],
                          "item_id": [f"i{i}" for i in rng.integers(0, n_items, 3000)]})
    test = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)],
                         "item_id": [f"i{i}" for i in rng.integers(0, n_items, n_users)]})
    table = {f"u{u}": rng.standard_normal(n_items) for u in range(n_users)}
    calls = []

    def score(ev):
        order = [int(i[1:]) for i in ev.item_ids]

        def fn(users):
            calls.append(len(users))
            return np.stack([table[u][order] for u in users])
        return fn

    whole = TopKEvaluator(train, test, ks=(10,), user_batch_size=1024)
    assert whole.batch_users == 1024
    expected = whole.evaluate(score(whole)).metrics
    assert calls == [n_users]
    calls.clear()
    monkeypatch.setattr(protocol, "MAX_BATCH_SCORES", 7 * len(whole.item_ids) + 3)
    capped = TopKEvaluator(train, test, ks=(10,), user_batch_size=1024)
    assert capped.batch_users == 7
    got = capped.evaluate(score(capped)).metrics
    assert max(calls) == 7 and sum(calls) == n_users
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
