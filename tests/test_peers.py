"""Peer baselines on tiny data whose right answer is known."""
import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.evaluation.peers import (
    GlobalMean,
    ImplicitALS,
    ImplicitBPR,
    MostPopular,
    TFRSTutorialRetrieval,
)
from recommenders_tf.evaluation.protocol import TopKEvaluator, evaluate_ratings
from recommenders_tf.evaluation.registry import available, get_model


def frame(pairs, ratings=None):
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "rating": np.asarray(np.ones(len(pairs)) if ratings is None else ratings, np.float32),
            "timestamp": np.arange(len(pairs), dtype=np.int64),
        }
    )


# Two blocks: users u0-u2 use items i0-i2, users u3-u5 use i3-i5. (u0, i2) and (u3, i5) are
# held out, so each of u0 and u3 has exactly one unseen in-block item.
BLOCK = [(f"u{u}", f"i{i}") for u in range(6) for i in range(6) if (u < 3) == (i < 3)]
HELD = [("u0", "i2"), ("u3", "i5")]
BLOCK_TRAIN = frame([p for p in BLOCK if p not in HELD])
BLOCK_TEST = frame(HELD)


def test_registry():
    assert set(available(kind="peer")) == {"most-popular", "implicit-ALS", "implicit-BPR",
                                           "EASE", "RP3beta", "SASRec", "tfrs-tutorial",
                                           "global-mean", "surprise-SVD", "surprise-SVD++"}
    assert set(available(kind="peer", task="topk")) == {
        "most-popular", "implicit-ALS", "implicit-BPR", "EASE", "RP3beta", "SASRec",
        "tfrs-tutorial"}
    assert set(available(kind="peer", task="rating")) == {"global-mean", "surprise-SVD",
                                                          "surprise-SVD++"}
    # Peers are built lazily (nothing fitted), so building every one is cheap.
    assert all(get_model(name).name == name for name in available(kind="peer"))


def test_most_popular_counts_and_exclusions():
    # Counts: A 3, B 2, C 1, D 1.
    train = frame([("x", "A"), ("y", "A"), ("z", "A"), ("x", "B"), ("y", "B"), ("z", "C"),
                   ("y", "D")])
    test = frame([("x", "C"), ("z", "D")])
    ev = TopKEvaluator(train, test, ks=(2,))
    peer = MostPopular(item_ids=ev.item_ids).fit(train)
    np.testing.assert_array_equal(peer.score(["x", "nobody"]), [[3, 2, 1, 1], [3, 2, 1, 1]])
    # x has A, B: next are C, D (equal counts, id order); z has A, C: B then D.
    assert ev.topk(peer.score, k=2) == {"x": ["C", "D"], "z": ["B", "D"]}
    # An item unseen in train ranks below every seen one.
    got = peer.score(["x"], item_ids=["NEW", "C", "A"])
    assert got[0, 0] < got[0, 1] < got[0, 2]
    with pytest.raises(RuntimeError, match="before fit"):
        MostPopular().score(["x"])


@pytest.mark.parametrize(
    "peer",
    [ImplicitALS(factors=4), ImplicitBPR(factors=4, learning_rate=0.05)],
    ids=["als", "bpr"],
)
def test_implicit_recommends_the_unseen_in_block_item(peer):
    ev = TopKEvaluator(BLOCK_TRAIN, BLOCK_TEST, ks=(1,))
    peer.item_ids = ev.item_ids
    peer.fit(BLOCK_TRAIN)
    assert ev.topk(peer.score, k=1) == {"u0": ["i2"], "u3": ["i5"]}
    assert ev.evaluate(peer.score).metrics["ndcg@1"] == 1.0
    assert "no validation" in peer.notes
    # Unknown users get the popularity ranking.
    np.testing.assert_array_equal(peer.score(["stranger"]), [[3, 3, 2, 3, 3, 2]])


def test_implicit_grid_search_on_validation_then_refit():
    train = frame([p for p in BLOCK if p not in HELD + [("u1", "i0"), ("u4", "i3")]])
    validation = frame([("u1", "i0"), ("u4", "i3")])
    peer = ImplicitALS(grid={"regularization": (0.01, 100.0)}, factors=4).fit(train, validation)
    # A huge regularization shrinks the factors to nothing; the small one wins on validation.
    assert peer.chosen_params["regularization"] == 0.01
    assert "regularization=0.01 chosen on validation" in peer.notes
    # The final model was refit on train + validation, so u1 has i0 among its known items.
    ev = TopKEvaluator(pd.concat([train, validation]), BLOCK_TEST, ks=(1,))
    assert ev.topk(lambda u: peer.score(u, ev.item_ids), k=1) == {"u0": ["i2"], "u3": ["i5"]}


@pytest.mark.slow
def test_tfrs_tutorial_model_learns_two_clusters():
    # Even users use even items, odd users odd items; one own-cluster item per user is held
    # out. After exclusions a user has 1 held-out item among 11 candidates (chance 1/11).
    rng = np.random.default_rng(0)
    train, test = [], []
    for u in range(40):
        own = [i for i in range(20) if i % 2 == u % 2]
        held = own[rng.integers(len(own))]
        for i in own:
            (test if i == held else train).append((f"u{u}", f"i{i:02d}"))
    train, test = frame(train), frame(test)
    items = pd.DataFrame({"item_id": [f"i{i:02d}" for i in range(20)],
                          "title": [f"Movie {i}" for i in range(20)]})
    ev = TopKEvaluator(train, test, ks=(1,))
    peer = TFRSTutorialRetrieval(item_ids=ev.item_ids, items=items, batch_size=16, seed=0)
    peer.fit(train)
    assert len(peer.history["loss"]) == 3  # the tutorial's 3 epochs
    assert peer.history["loss"][-1] < peer.history["loss"][0]
    m = ev.evaluate(peer.score).metrics
    assert m["hr@1"] > 0.5  # chance is 1/11
    # Own-cluster items outscore the other cluster for every user.
    scores = peer.score([f"u{u}" for u in range(40)])
    parity = np.array([int(i[1:]) % 2 for i in ev.item_ids])
    own_better = [scores[u][parity == u % 2].mean() > scores[u][parity != u % 2].mean()
                  for u in range(40)]
    assert all(own_better)


# Item j has true rating j + 1 for every user: biases alone explain the data.
RATING_USERS = [f"u{u}" for u in range(20)]
RATING_PAIRS = [(u, f"i{j}") for u in RATING_USERS for j in range(5)]
RATING_TEST_IDX = [k for k in range(len(RATING_PAIRS)) if k % 7 == 0]
RATING_VALUES = [1.0 + int(i[1:]) for _, i in RATING_PAIRS]


def _rating_split():
    df = frame(RATING_PAIRS, RATING_VALUES)
    test = df.iloc[RATING_TEST_IDX]
    return df.drop(index=test.index), test


def test_global_mean_predicts_train_mean_clipped():
    train, test = _rating_split()
    peer = GlobalMean(rating_range=(1, 2)).fit(train)
    assert peer.mean_ == pytest.approx(train.rating.mean())
    np.testing.assert_allclose(peer.predict(test), 2.0)  # mean ~3, clipped to the range max


@pytest.mark.parametrize("name", ["surprise-SVD", "surprise-SVD++"])
def test_surprise_beats_global_mean(name):
    # scikit-surprise 1.1.4 builds from source against NumPy 1.x and fails to import under
    # NumPy 2; 1.1.5 ships NumPy-2 wheels. Skip (visibly) rather than fail on a broken build.
    pytest.importorskip("surprise", reason="scikit-surprise does not import (needs >= 1.1.5 "
                        "with NumPy 2)", exc_type=ImportError)
    train, test = _rating_split()
    baseline = evaluate_ratings(test.rating, GlobalMean().fit(train).predict(test), (1, 5))
    peer = get_model(name, seed=0).fit(train)
    pred = peer.predict(test)
    assert peer.rating_range == (1.0, 5.0)
    assert pred.min() >= 1.0 and pred.max() <= 5.0
    got = evaluate_ratings(test.rating, pred, (1, 5))
    assert got["rmse"] < 0.8 * baseline["rmse"]
    # Deterministic under the seed.
    np.testing.assert_allclose(get_model(name, seed=0).fit(train).predict(test), pred)
