"""Item-text nearest-neighbour baselines (TF-IDF, language model) and chance level.

The language-model tests use the real all-MiniLM-L6-v2 encoder, loaded once for the module,
on a handful of short texts.
"""
import math

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.evaluation.text_baselines import (LMNeighbours, RandomScorer, TfidfModel,
                                                       TfidfNeighbours, chance_metrics,
                                                       evaluate_text_baselines)
from recommenders_tf.features.item_vectors import ItemVectors


def frame(rows):
    return pd.DataFrame([(u, i, 1.0, t) for t, (u, i) in enumerate(rows)],
                        columns=["user_id", "item_id", "rating", "timestamp"])


# ---- TF-IDF --------------------------------------------------------------------------------

def test_tfidf_weights_match_the_smoothed_idf_formula():
    model = TfidfModel.fit(["space rocket", "space pasta"])
    assert model.vocabulary == {"pasta": 0, "rocket": 1, "space": 2}
    # n = 2 texts: idf = ln(3 / (1 + df)) + 1 -> df 1: ln(1.5) + 1, df 2: 1.
    np.testing.assert_allclose(model.idf, [math.log(1.5) + 1, math.log(1.5) + 1, 1.0])
    row = model.transform(["Space, ROCKET! x"]).toarray()[0]  # case folded, "x" too short
    expected = np.array([0.0, math.log(1.5) + 1, 1.0])
    np.testing.assert_allclose(row, expected / np.linalg.norm(expected))
    assert not model.transform(["unknown words"]).toarray().any()


# Items: two "space" items the user has in train, two unseen candidates.
ITEMS = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4"],
                      "text": ["space rocket", "rocket launch", "space galaxy", "pasta recipe"]})


def test_tfidf_profile_scores_are_the_cosine_with_the_mean_train_vector():
    train = frame([("u", "i1"), ("u", "i2"), ("v", "i4")])
    scorer = TfidfNeighbours(ITEMS, item_ids=["i3", "i4"]).fit(train)
    scores = scorer.score(["u", "stranger"])
    # n = 4 texts; "space", "rocket" in 2 texts: a = ln(5/3) + 1; the rest in 1: b = ln(5/2) + 1.
    a, b = math.log(5 / 3) + 1, math.log(5 / 2) + 1
    n = math.hypot(a, b)
    x1_x2 = (1 / math.sqrt(2)) * (a / n)          # share "rocket"
    x1_x3 = (1 / math.sqrt(2)) * (a / n)          # share "space"
    x2_x3 = 0.0
    profile_norm = 0.5 * math.sqrt(2 + 2 * x1_x2)  # |(x1 + x2) / 2|
    expected_i3 = 0.5 * (x1_x3 + x2_x3) / profile_norm
    np.testing.assert_allclose(scores, [[expected_i3, 0.0], [0.0, 0.0]], atol=1e-12)
    assert "4 item texts" in scorer.notes


def test_tfidf_baseline_ranks_the_overlapping_cold_item_first():
    train = frame([("u", "i1"), ("u", "i2"), ("w", "i1")])
    test = frame([("u", "i3")])
    evaluator = TopKEvaluator(train, test, ks=(1,), candidate_items=["i3", "i4"])
    scorer = TfidfNeighbours(ITEMS, item_ids=evaluator.item_ids).fit(train)
    assert evaluator.evaluate(scorer.score).metrics["recall@1"] == 1.0


def test_text_scorers_refuse_candidates_without_text():
    with pytest.raises(ValueError, match="1 candidate item\\(s\\) have no text in items, "
                                         "e.g. \\['i9'\\]"):
        TfidfNeighbours(ITEMS, item_ids=["i3", "i9"]).fit(frame([("u", "i1")]))
    scorer = TfidfNeighbours(ITEMS, item_ids=["i3", "i9"], on_missing="zero")
    assert scorer.fit(frame([("u", "i1")])).score(["u"])[0, 1] == 0.0


# ---- chance --------------------------------------------------------------------------------

def test_chance_metrics_match_a_hand_computed_case():
    # Candidates a..e (train items); user u has e in train (excluded) and test items a and z
    # (z is no candidate): C = 4 rankable, R = 1 hittable, |rel| = 2; K = 2.
    train = frame([("u", "e"), ("x", "a"), ("x", "b"), ("x", "c"), ("x", "d")])
    test = frame([("u", "a"), ("u", "z")])
    m = chance_metrics(train, test, ks=(2,)).metrics
    assert m["n_users"] == 1
    assert m["recall@2"] == pytest.approx(2 * 1 / (4 * 2))          # k'R / (C |rel|)
    assert m["precision@2"] == pytest.approx(0.5 / 2)               # E[hits] / K
    assert m["f1@2"] == pytest.approx(2 * 0.5 / (2 + 2))            # 2 E[hits] / (K + |rel|)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx(0.25 * idcg / idcg)
    assert m["hr@2"] == pytest.approx(1 - (3 / 4) * (2 / 3))        # no hit in 2 draws
    assert m["mrr@2"] == pytest.approx(1 / 4 + (3 / 4) * (1 / 3) / 2)
    assert m["map@2"] == pytest.approx((1 / 4 + (1 / 4) / 2) / 2)
    # Each of a..d is in u's top 2 with probability 1/2, e never: (4 * 0.5 + 0) / 5.
    assert m["coverage@2"] == pytest.approx(0.4)


def test_chance_metrics_equal_the_mean_of_seeded_random_rankings():
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(12)]
    rows_train, rows_test = [], []
    for u in range(6):
        picks = rng.choice(items, size=6, replace=False)
        rows_train += [(f"u{u}", i) for i in picks[:3]]
        rows_test += [(f"u{u}", i) for i in picks[3:3 + 1 + u % 3]]
    train, test = frame(rows_train), frame(rows_test)
    candidates = items[:9]  # a restricted set, so some test items can never be hit
    expected = chance_metrics(train, test, ks=(3,), candidate_items=candidates,
                              user_groups={f"u{u}": u % 2 for u in range(6)})
    evaluator = TopKEvaluator(train, test, ks=(3,), candidate_items=candidates)
    runs = [evaluator.evaluate(RandomScorer(evaluator.item_ids, seed)).metrics
            for seed in range(600)]
    for key in ("recall@3", "ndcg@3", "hr@3", "mrr@3", "map@3", "coverage@3"):
        values = np.array([r[key] for r in runs])
        se = values.std() / math.sqrt(len(values))
        assert abs(values.mean() - expected.metrics[key]) < 4 * se + 1e-9, key
    assert expected.metrics["coverage@3"] < 1.0
    assert sorted(expected.by_group) == [0, 1]
    assert expected.by_group[0]["n_users"] + expected.by_group[1]["n_users"] == 6


def test_random_scorer_is_seeded_per_user():
    scorer = RandomScorer(["a", "b", "c"], seed=3)
    both = scorer.score(["u1", "u2"])
    np.testing.assert_array_equal(both[1], scorer.score(["u2"])[0])
    assert not np.array_equal(both[0], both[1])


# ---- language model ------------------------------------------------------------------------

LM_ITEMS = pd.DataFrame({
    "item_id": ["s1", "s2", "x_galaxy", "c_pasta"],  # the pasta id sorts first: ties favour it
    "text": ["space rockets", "a rocket launch into orbit", "galaxy spaceship",
             "cooking pasta"],
})


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from recommenders_tf.features.text_encoder import SentenceEncoder

    return SentenceEncoder(cache_dir=tmp_path_factory.mktemp("text_cache")).load()


@pytest.fixture(scope="module")
def lm_store(encoder):
    vectors = encoder.encode_cached(LM_ITEMS["text"].tolist(), progress=False)
    return ItemVectors(ids=LM_ITEMS["item_id"], vectors=vectors, model=encoder.name,
                       fingerprint=encoder.fingerprint, text_fields=("text",))


def test_lm_baseline_ranks_the_related_cold_item_above_the_unrelated_one(lm_store):
    train = frame([("u", "s1"), ("u", "s2"), ("w", "c_pasta")])
    test = frame([("u", "x_galaxy")])
    evaluator = TopKEvaluator(train, test, ks=(1,), candidate_items=["x_galaxy", "c_pasta"])
    assert evaluator.item_ids.tolist() == ["c_pasta", "x_galaxy"]
    lm = LMNeighbours(lm_store, item_ids=evaluator.item_ids).fit(train)
    scores = lm.score(["u"])[0]
    # The profile is the normalised mean of s1 and s2; items are unit vectors: cosine = dot.
    mean = lm_store.vectors[:2].mean(axis=0)
    np.testing.assert_allclose(scores, lm_store.vectors[[3, 2]] @ (mean / np.linalg.norm(mean)),
                               atol=1e-5)
    assert scores[1] > scores[0]
    assert evaluator.evaluate(lm.score).metrics["recall@1"] == 1.0
    # No word is shared ("space" vs "spaceship"), so TF-IDF ties and falls back to id order.
    tfidf = TfidfNeighbours(LM_ITEMS, item_ids=evaluator.item_ids).fit(train)
    assert evaluator.evaluate(tfidf.score).metrics["recall@1"] == 0.0


@pytest.mark.slow
def test_text_baselines_beat_chance_on_synthetic_cold_items(encoder, synthetic_tiny):
    """P3 on synthetic-tiny: held-out items are ranked from their text only."""
    from recommenders_tf.data import cold_item_split

    items = synthetic_tiny.items
    store = ItemVectors(ids=items["item_id"], vectors=encoder.encode_cached(
        items["text"].tolist(), progress=False), model=encoder.name)
    split = cold_item_split(synthetic_tiny.interactions, seed=0)
    results = evaluate_text_baselines(split.train, split.test, items=items, item_vectors=store,
                                      ks=(10,), candidate_items=split.info["cold_items"])
    ndcg = {name: r.metrics["ndcg@10"] for name, r in results.items()}
    assert ndcg["lm-knn"] > 1.5 * ndcg["chance"]
    assert ndcg["tfidf-knn"] > 1.5 * ndcg["chance"]
