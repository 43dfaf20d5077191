"""Ranked lists judged at the cost of their length (`TopKEvaluator.evaluate_ranked`).

Hand-worked values on a 3-user catalog, an exact oracle (`evaluate` on a dense score table
that ranks each list first, as the cascade evaluation used to build), and a 1,000,000-item
catalog that must never be materialised per user.
"""
import math
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.cascade.evaluate import evaluate_order
from recommenders_tf.evaluation import protocol
from recommenders_tf.evaluation.protocol import TopKEvaluator, genre_features


def frame(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "rating": np.ones(len(pairs), np.float32),
                         "timestamp": np.arange(len(pairs), dtype=np.int64)})


# Candidates A, B, C, D. E is only in test: never hit, but in u1's recall denominator.
TRAIN = frame([("u1", "A"), ("u1", "B"), ("u2", "B"), ("u2", "C"), ("u3", "A"), ("u3", "D")])
TEST = frame([("u1", "C"), ("u1", "E"), ("u2", "A"), ("u3", "B"), ("u3", "C")])
ITEMS = pd.DataFrame({"item_id": list("ABCD"), "genres": ["x", "x|y", "y", ""]})
LOG3 = math.log2(3)

# u1 ranks D, C. u2's list is its train item B and the unknown Z, so its top 2 is the
# completion by id of its unseen candidates: A, D. u3 ranks C, then padding completed by B.
LISTS = np.array([["D", "C"], ["B", "Z"], ["C", ""]], dtype=object)


def evaluator(**kw):
    return TopKEvaluator(TRAIN, TEST, ks=(1, 2, 3), item_features=genre_features(ITEMS), **kw)


# A 1-item list has no pair for diversity: NaN for every user, whose mean numpy warns about.
no_pair = pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")


@no_pair
def test_hand_worked_metrics():
    m = evaluator().evaluate_ranked(LISTS).metrics
    # Top 2 per user: u1 D, C (hits 0 1, |rel| 2); u2 A, D (1 0, |rel| 1); u3 C, B (1 1, 2).
    assert m["recall@1"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert m["recall@2"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["precision@2"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["ndcg@1"] == pytest.approx((0 + 1 + 1) / 3)
    assert m["ndcg@2"] == pytest.approx(((1 / LOG3) / (1 + 1 / LOG3) + 1 + 1) / 3)
    assert m["hr@1"] == pytest.approx(2 / 3) and m["hr@2"] == pytest.approx(1.0)
    assert m["mrr@2"] == pytest.approx((0.5 + 1 + 1) / 3)
    # First items D, A, C; all four items within the top 2.
    assert m["coverage@1"] == pytest.approx(3 / 4) and m["coverage@2"] == pytest.approx(1.0)
    # Share of the 3 train users: A 2/3, C 1/3, D 1/3.
    assert m["novelty@1"] == pytest.approx((LOG3 + math.log2(1.5) + LOG3) / 3)
    # {D, C}: D has no genre, distance 1; {A, D}: 1; {C, B}: 1 - 1/sqrt(2).
    assert m["diversity@2"] == pytest.approx((1 + 1 + 1 - 1 / math.sqrt(2)) / 3)
    assert m["n_users"] == 3
    # Lists are 2 long: a cut-off of 3 would judge only the completion.
    assert not [k for k in m if k.endswith("@3")]


def test_rows_follow_the_given_users_and_repeats_keep_their_first_place():
    # ks=(2,): diversity@1 is NaN (no pair in a 1-item list) and NaN != NaN.
    ev = TopKEvaluator(TRAIN, TEST, ks=(2,), item_features=genre_features(ITEMS))
    base = ev.evaluate_ranked(LISTS).metrics
    assert ev.evaluate_ranked(LISTS[::-1], user_ids=["u3", "u2", "u1"]).metrics == base
    # u1's second C is skipped and the completion adds D: the same top 2 as [C, D].
    twice = np.array([["C", "C"], ["A", "D"], ["B", "C"]], dtype=object)
    once = np.array([["C", "D"], ["A", "D"], ["B", "C"]], dtype=object)
    assert ev.evaluate_ranked(twice).metrics == ev.evaluate_ranked(once).metrics
    assert ev.evaluate_ranked(once).metrics["recall@2"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_rows_must_be_the_test_users():
    ev = evaluator()
    with pytest.raises(ValueError, match=r"not test users \['u9'\], missing \['u3'\]"):
        ev.evaluate_ranked(LISTS, user_ids=["u1", "u2", "u9"])
    with pytest.raises(ValueError, match="1 repeated"):
        ev.evaluate_ranked(LISTS, user_ids=["u1", "u2", "u2"])
    with pytest.raises(ValueError, match="3 rows for 2 user ids"):
        ev.evaluate_ranked(LISTS, user_ids=["u1", "u2"])
    with pytest.raises(ValueError, match=r"\[users, list length\]"):
        ev.evaluate_ranked(np.array(["A", "B", "C"], dtype=object))


def test_cascade_evaluate_order_keeps_its_metrics_within_the_list():
    ev = TopKEvaluator(TRAIN, TEST, ks=(2, 10), item_features=genre_features(ITEMS))
    got = evaluate_order(LISTS[::-1], ["u3", "u2", "u1"], ev)
    assert got == {}  # every metric the cascade reports is @10 or @50
    lists = np.concatenate([LISTS, np.full((3, 8), "", dtype=object)], axis=1)
    got = evaluate_order(lists, ["u1", "u2", "u3"], ev)
    assert sorted(got) == ["coverage@10", "diversity@10", "hr@10", "mrr@10", "ndcg@10",
                           "novelty@10", "recall@10"]
    # Completed past the list: u1 D, C; u2 A, D; u3 C, B; all relevant candidates are hit.
    assert got["recall@10"] == pytest.approx((0.5 + 1 + 1) / 3)


def dense_oracle(ev, lists, users):
    """`evaluate` on scores L + 1 - j for the first place j of each listed id, others 0."""
    column = {item: j for j, item in enumerate(ev.item_ids)}
    length = lists.shape[1]
    table = np.zeros((len(users), len(ev.item_ids)))
    for r, row in enumerate(lists):
        for j in reversed(range(length)):  # the first place of a repeated id wins
            if row[j] in column:
                table[r, column[row[j]]] = length + 1 - j
    row_of = {u: r for r, u in enumerate(users)}
    return lambda batch: table[[row_of[u] for u in batch]]


@no_pair
def test_equals_dense_evaluation_on_random_lists():
    rng = np.random.default_rng(7)
    n_users, n_items = 40, 60
    items = [f"i{j:02d}" for j in range(n_items)]
    users = [f"u{r:02d}" for r in range(n_users)]
    train = [(u, items[j]) for u in users for j in rng.choice(n_items, rng.integers(1, 12))]
    # One user has seen nearly all of the catalog, so its ranking runs out of candidates.
    train += [(users[0], it) for it in items[:55]]
    test = [(u, items[j]) for u in users for j in rng.choice(n_items, rng.integers(1, 5))]
    test += [(u, "new") for u in users[::7]]  # relevant but never a candidate
    features = rng.integers(0, 2, (n_items, 4)).astype(float)  # some rows all zero
    ev = TopKEvaluator(frame(train), frame(test), ks=(1, 3, 5, 10, 20), item_features=features,
                       user_batch_size=9)
    groups = {u: int(u[1:]) % 3 for u in ev.user_ids}
    pool = np.array(items + ["", "", "", "unknown"], dtype=object)
    for length in (1, 5, 10, 12, 20):
        lists = pool[rng.integers(0, len(pool), (n_users, length))]
        order = rng.permutation(ev.user_ids)
        want = ev.evaluate(dense_oracle(ev, lists, order), user_groups=groups)
        got = ev.evaluate_ranked(lists, user_ids=order, user_groups=groups)
        kept = [k for k in want.metrics if "@" not in k or int(k.split("@")[1]) <= length]
        assert sorted(got.metrics) == sorted(kept)
        for k in kept:
            assert got.metrics[k] == pytest.approx(want.metrics[k], abs=1e-9, nan_ok=True), k
        pd.testing.assert_frame_equal(got.per_user, want.per_user[got.per_user.columns],
                                      rtol=0, atol=1e-9)
        for label, group in got.by_group.items():
            for k, v in group.items():
                assert v == pytest.approx(want.by_group[label][k], abs=1e-9, nan_ok=True)


def test_cost_is_independent_of_the_catalog(monkeypatch):
    # 100 users x 1,000,000 candidates: a dense float table would be 800 MB, a bool mask 100 MB.
    n_users, n_items, length = 100, 1_000_000, 20
    rng = np.random.default_rng(3)
    catalog = np.char.add("i", np.arange(n_items).astype(str)).astype(object)
    users = [f"u{r}" for r in range(n_users)]
    train = frame([(u, catalog[j]) for u in users for j in rng.integers(0, n_items, 5)])
    test = frame([(u, catalog[j]) for u in users for j in rng.integers(0, n_items, 3)])
    ev = TopKEvaluator(train, test, ks=(10, 20), candidate_items=catalog)
    lists = catalog[rng.integers(0, n_items, (n_users, length))]
    lists[:, -3:] = ""  # short lists take the completion path too

    def dense(*_args, **_kw):
        raise AssertionError("a users x catalog array was built")

    monkeypatch.setattr(protocol, "select_topk", dense)
    monkeypatch.setattr(protocol._Csr, "dense", dense)
    monkeypatch.setattr(TopKEvaluator, "_scores", dense)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        m = ev.evaluate_ranked(lists).metrics
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10.0  # about 0.2 s
    # Per-item arrays (coverage flags, self-information: about 10 MB) are the largest.
    assert peak < 48 * 2**20, peak
    assert m["n_users"] == n_users and 0.0 <= m["recall@20"] <= 1.0
    assert m["coverage@20"] == pytest.approx(np.unique(lists[:, :17]).size / n_items, abs=3e-5)
