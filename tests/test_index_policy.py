"""The one index-building policy: ScaNN tuned until its held-out recall reaches the target."""
import numpy as np
import pytest

from recommenders_tf.index import (build_tuned_index, index_query_users, noise_queries,
                                   recall_at_k_vs_exact, split_queries)
from recommenders_tf.index.policy import retune_ladder


@pytest.fixture(scope="module")
def catalogue():
    """600 items in 12 tight clusters (an easy catalogue for ScaNN) and 200 queries near them."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, 16)).astype(np.float32) * 3
    ids = np.asarray([f"i{j:04d}" for j in range(600)])
    embeddings = (centers[np.arange(600) % 12]
                  + 0.3 * rng.standard_normal((600, 16))).astype(np.float32)
    queries = (centers[rng.integers(0, 12, 200)]
               + 0.3 * rng.standard_normal((200, 16))).astype(np.float32)
    return ids, embeddings, queries


def test_ladder_goes_halfway_then_to_one():
    assert retune_ladder(0.9) == pytest.approx((0.9, 0.95, 1.0))
    assert retune_ladder(1.0) == (1.0,)


def test_split_queries_holds_half_out_unless_too_few():
    tune, held_out, note = split_queries(np.arange(42, dtype=np.float32).reshape(21, 2))
    assert (len(tune), len(held_out)) == (10, 11) and note == "10 tune, 11 measure"
    assert not set(tune[:, 0]) & set(held_out[:, 0])
    few = np.ones((5, 2), np.float32)
    tune, held_out, note = split_queries(few)
    assert len(tune) == len(held_out) == 5 and "too few queries" in note


def test_index_query_users_caps_with_a_seeded_stated_sample():
    users = np.asarray([f"u{j}" for j in range(50)], dtype=object)
    chosen, note = index_query_users(users, 20, seed=3)
    assert len(chosen) == len(set(chosen)) == 20 and set(chosen) <= set(users)
    assert note == "a sample of 20 of 50 users (seed 3)"
    again, _ = index_query_users(users, 20, seed=3)
    other, _ = index_query_users(users, 20, seed=4)
    assert list(again) == list(chosen) and list(other) != list(chosen)
    # Under the cap, or with the cap off, every user's query is used.
    assert index_query_users(users, 50)[1] == index_query_users(users, 0)[1] == "all 50 users"
    assert list(index_query_users(users, 0)[0]) == list(users)


def test_noise_queries_are_seeded():
    embeddings = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(noise_queries(embeddings, 10, 1), noise_queries(embeddings, 10, 1))
    assert noise_queries(embeddings, 10, 1).shape == (10, 4)


def test_policy_meets_the_target_on_held_out_queries(catalogue):
    ids, embeddings, queries = catalogue
    tune, held_out, _ = split_queries(queries)
    built = build_tuned_index(ids, embeddings, tune, held_out, k=10, target_recall=0.9,
                              min_reordering_candidates=60, log=lambda message: None)
    report = built.report
    assert built.index.kind == "scann" and built.exact.kind == "bruteforce"
    assert report["target_met"] and report["recall@10_vs_exact"] >= 0.9
    # The reported figure is the recall of the index returned, on the held-out queries.
    assert recall_at_k_vs_exact(built.index, built.exact, held_out, 10) == \
        pytest.approx(report["recall@10_vs_exact"], abs=1e-4)
    assert built.params.num_reordering_candidates >= 60
    assert report["fallback"] == "none" and report["attempts"][0]["tuning_target"] == 0.9
    assert (report["tune_queries"], report["held_out_queries"]) == (100, 100)


def test_a_wider_search_than_k_gets_its_own_build(catalogue):
    ids, embeddings, queries = catalogue
    built = build_tuned_index(ids, embeddings, queries[:50], queries[50:], k=5,
                              target_recall=0.8, index_k=40, min_reordering_candidates=40,
                              log=lambda message: None)
    assert built.index.k == 40 and built.exact.k == 40
    assert built.report["recall@5_vs_exact"] == pytest.approx(
        recall_at_k_vs_exact(built.index, built.exact, queries[50:], 5), abs=1e-4)


def test_an_unreachable_target_climbs_the_ladder_then_tries_every_leaf(catalogue):
    ids, _, _ = catalogue
    rng = np.random.default_rng(1)
    # Unstructured vectors: no grid setting reaches recall 1 on them.
    embeddings = rng.standard_normal((600, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    built = build_tuned_index(ids, embeddings, queries[:20], queries[20:], k=10,
                              target_recall=1.0, log=lambda message: None)
    report = built.report
    assert [a["tuning_target"] for a in report["attempts"]] == [1.0, None]
    assert report["attempts"][-1]["every_leaf"]
    assert report["fallback"] in ("none", "every_leaf")
    assert report["target_met"] == (report["recall@10_vs_exact"] >= 1.0)
    if report["fallback"] == "every_leaf":
        assert built.params.num_leaves_to_search == built.params.num_leaves
