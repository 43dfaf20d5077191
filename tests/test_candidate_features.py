"""CandidateContext and item_neighbors on tiny inputs with hand-computed answers."""
import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.candidate_features import CandidateContext, item_neighbors
from recommenders_tf.models.ranking import RankingConfig, build_ranking_model, predict_lists
from recommenders_tf.models.ranking_data import RankingLists


def _frame(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "timestamp": np.arange(len(pairs))})


def test_item_neighbors_cosine_by_hand():
    # a: users {1,2,3}; b: {1,2}; c: {3}. cos(a,b) = 2/sqrt(3*2); cos(a,c) = 1/sqrt(3); b,c: 0.
    inter = _frame([("1", "a"), ("1", "b"), ("2", "a"), ("2", "b"), ("3", "a"), ("3", "c"),
                    ("3", "a")])  # a repeat counts once
    idx, sim = item_neighbors(inter, ["a", "b", "c", "d"], neighbors=2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, -1], [0, -1], [-1, -1]])
    np.testing.assert_allclose(sim[0], [2 / np.sqrt(6), 1 / np.sqrt(3)], rtol=1e-5)
    np.testing.assert_allclose(sim[1], [2 / np.sqrt(6), 0.0], rtol=1e-5)
    np.testing.assert_allclose(sim[2], [1 / np.sqrt(3), 0.0], rtol=1e-5)
    np.testing.assert_allclose(sim[3], [0.0, 0.0])


def test_item_neighbors_by_blocks_equal_the_whole_product():
    rng = np.random.default_rng(0)
    pairs = [(str(u), f"i{i}") for u, i in zip(rng.integers(0, 40, 400), rng.integers(0, 30, 400))]
    inter = _frame(pairs)
    catalog = [f"i{i}" for i in range(32)]  # two items nobody saw
    whole = item_neighbors(inter, catalog, neighbors=5, block=len(catalog))
    for block in (1, 7):
        idx, sim = item_neighbors(inter, catalog, neighbors=5, block=block)
        np.testing.assert_array_equal(idx, whole[0])
        np.testing.assert_array_equal(sim, whole[1])
    # Against a dense oracle: cosine of the binary columns, self excluded.
    x = np.zeros((40, 32))
    for u, i in pairs:
        x[int(u), int(i[1:])] = 1
    norms = np.sqrt(x.sum(0)) + 1e-9
    cos = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(cos, 0)
    np.testing.assert_allclose(whole[1], -np.sort(-cos, axis=1)[:, :5], rtol=1e-5, atol=1e-6)


def test_features_by_hand():
    ids = ["a", "b", "c"]
    text = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)  # normalised inside
    idx = np.array([[1, 2], [0, -1], [0, -1]], np.int32)
    sim = np.array([[0.8, 0.5], [0.8, 0.0], [0.5, 0.0]], np.float32)
    layer = CandidateContext(ids, counts=[3, 1, 0], text_vectors=text, recent=1,
                             neighbors=(idx, sim))
    assert layer.feature_names == ["retrieval_z", "retrieval_gap", "popularity",
                                   "text_recent", "text_history", "text_max_recent",
                                   "cf_recent", "cf_max_recent", "cf_history", "cf_max_history"]
    feats = {"item_id": tf.constant([["a", "c", "x", ""]]),
             "history": tf.constant([["", "b", "c"]]),
             "retrieval_score": tf.constant([[3.0, 1.0, 2.0, 99.0]])}
    out = layer(feats).numpy()[0]
    # Retrieval: the three real entries 3, 1, 2 -> mean 2, std sqrt(2/3); padding ignored.
    np.testing.assert_allclose(out[:3, 0], np.array([1, -1, 0]) / np.sqrt(2 / 3), rtol=1e-4)
    np.testing.assert_allclose(out[:3, 1], [0.0, -2.0, -1.0])
    log_pop = np.log1p([3.0, 1.0, 0.0])
    z = (log_pop - log_pop.mean()) / log_pop.std()
    np.testing.assert_allclose(out[:3, 2], [z[0], z[2], 0.0], rtol=1e-5)  # unknown "x" -> 0
    # Text: recent profile = c = (1,1)/sqrt2; whole history = mean(b, c) normalised.
    c = np.array([1, 1]) / np.sqrt(2)
    hist = np.array([0, 1]) + c
    hist = hist / np.linalg.norm(hist)
    a = np.array([1.0, 0.0])
    np.testing.assert_allclose(out[0, 3:6], [a @ c, a @ hist, a @ c], rtol=1e-5)
    np.testing.assert_allclose(out[1, 3:6], [1.0, c @ hist, 1.0], rtol=1e-5)
    # CF: a's neighbours b (0.8), c (0.5); recent = {c}: mean 0.5 / 1, max 0.5;
    # history = {b, c}: (0.8 + 0.5) / 2, max 0.8. c's neighbour a is not in the history.
    np.testing.assert_allclose(out[0, 6:], [0.5, 0.5, 0.65, 0.8], rtol=1e-5)
    np.testing.assert_allclose(out[1, 6:], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[3], 0.0)  # padding is all zeros


def test_adapt_standardises_and_set_tables_keeps_constants():
    layer = CandidateContext(["a", "b"], counts=[1, 4], use_retrieval_score=True)
    feats = {"item_id": np.array([["a", "b", ""]], object),
             "history": np.array([[""]], object),
             "retrieval_score": np.array([[1.0, 3.0, 0.0]], np.float32)}
    raw = layer(feats).numpy()[0]
    layer.adapt(feats)
    out = layer(feats).numpy()[0]
    real = raw[:2]
    np.testing.assert_allclose(out[:2], (real - real.mean(0)) / np.maximum(real.std(0), 1e-3),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[2], 0.0)
    mean = layer.feature_mean.numpy().copy()
    layer.set_tables([4, 1])
    np.testing.assert_array_equal(layer.feature_mean.numpy(), mean)
    swapped = layer(feats).numpy()[0]
    assert swapped[0, 2] > out[0, 2] and swapped[1, 2] < out[1, 2]  # popularity swapped


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unique"):
        CandidateContext(["a", "a"], [1, 1])
    with pytest.raises(ValueError, match="one value per item"):
        CandidateContext(["a", "b"], [1])
    layer = CandidateContext(["a"], [1])
    with pytest.raises(KeyError, match="retrieval_score"):
        layer({"item_id": tf.constant([["a"]]), "history": tf.constant([[""]])})


def test_context_only_ranker_reads_lists_extra():
    """A ranker without id features orders a list by the retrieval score it is given."""
    layer = CandidateContext(["a", "b", "c"], counts=[1, 1, 1])
    config = RankingConfig(loss="softmax", id_features=False, num_cross_layers=0,
                           deep_dims=(4,), din_units=0, history_len=2, embedding_dim=4)
    model = build_ranking_model(config, ["u"], ["a", "b", "c"], context_features=layer)
    lists = RankingLists(np.array(["u", "v"], object), np.array([["", "a"], ["", ""]], object),
                         np.array([["a", "b", "c"], ["c", "b", ""]], object),
                         np.zeros((2, 3), np.float32), np.array([[1, 1, 1], [1, 1, 0]], bool),
                         {"retrieval_score": np.array([[0.1, 0.9, 0.5], [2.0, 1.0, 7.0]])})
    predict_lists(model, lists)  # builds the layers
    model.wide.set_weights([np.array([[1.0], [0.0], [0.0]], np.float32)])
    for w in model.scorer.trainable_weights:  # silence the deep part: score = wide term
        w.assign(tf.zeros_like(w))
    scores = predict_lists(model, lists)
    assert list(np.argsort(-scores[0])) == [1, 2, 0]
    assert scores[1, 0] > scores[1, 1] and np.isneginf(scores[1, 2])
    assert lists.extra["retrieval_score"][1, 2] == 0.0  # padding zeroed on construction
    sub = lists.subset([1])
    assert sub.extra["retrieval_score"].shape == (1, 3)


def test_context_only_ranker_trains(tmp_path):
    """Trained on lists where the label is the item with the highest retrieval score, the
    context-only ranker learns to put it first (a model without towers must still train)."""
    from recommenders_tf.models.ranking import fit_ranking_model

    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(20)]
    n_lists, size = 64, 8
    item_id = np.array([rng.choice(items, size, replace=False) for _ in range(n_lists)], object)
    score = rng.normal(size=(n_lists, size)).astype(np.float32)
    label = (score == score.max(1, keepdims=True)).astype(np.float32)
    lists = RankingLists(np.array([f"u{r}" for r in range(n_lists)], object),
                         np.full((n_lists, 2), "", object), item_id, label,
                         np.ones((n_lists, size), bool), {"retrieval_score": -score})
    # The score enters negated, so the ranker must learn a negative weight to get it right.
    layer = CandidateContext(items, counts=np.ones(20))
    layer.adapt(lists.features())
    config = RankingConfig(loss="softmax", id_features=False, num_cross_layers=1,
                           deep_dims=(8,), din_units=0, history_len=2, embedding_dim=4,
                           epochs=15, patience=0, learning_rate=0.05, verbose=0)
    interactions = pd.DataFrame({"user_id": lists.user_id, "item_id": item_id[:, 0],
                                 "timestamp": 0})
    model, _, _ = fit_ranking_model(config, lists, None, interactions, str(tmp_path),
                                    context_features=layer)
    top = np.argmax(predict_lists(model, lists), 1)
    assert (label[np.arange(n_lists), top] == 1).mean() > 0.9


def test_precomputed_context_of_another_cut_replaces_the_tables():
    from recommenders_tf.models.candidate_features import CONTEXT_KEY

    item_ids = ["a", "b", "c"]
    history = np.array([["a", "b"], ["", "c"]], object)
    feats = {"item_id": np.array([["a", "b", "c"], ["c", "a", ""]], object),
             "history": history,
             "retrieval_score": np.array([[1.0, 3.0, 2.0], [0.5, 0.1, 0.0]], np.float32)}
    neighbors = item_neighbors(_frame([("u", "a"), ("u", "b"), ("v", "b"), ("v", "c")]),
                               item_ids, 2)
    serving = CandidateContext(item_ids, [1, 2, 3], neighbors=neighbors)
    earlier = CandidateContext(item_ids, [5, 1, 1], neighbors=neighbors)
    raw = serving.raw_values(feats, batch_size=1)
    np.testing.assert_allclose(raw, serving(feats).numpy(), rtol=1e-6)
    # Lists of another cut carry that cut's values; the layer reads them instead of its tables.
    other = earlier.raw_values(feats)
    assert not np.allclose(other, raw)
    carried = serving({**feats, CONTEXT_KEY: other}).numpy()
    np.testing.assert_allclose(carried, other, rtol=1e-6)
    # adapt standardises with the carried values, as it would have with the computed ones.
    serving.adapt({**feats, CONTEXT_KEY: other})
    mean = serving.feature_mean.numpy()
    real = other[feats["item_id"] != ""]
    np.testing.assert_allclose(mean, real.mean(0), rtol=1e-5, atol=1e-6)


def test_ranking_lists_concat_keeps_every_list_and_refuses_mismatches():
    def lists(users, width=3, extra=True):
        n = len(users)
        return RankingLists(np.array(users, object), np.full((n, 2), "", object),
                            np.full((n, width), "a", object), np.ones((n, width), np.float32),
                            np.ones((n, width), bool),
                            {"retrieval_score": np.arange(n * width, dtype=np.float32)
                             .reshape(n, width)} if extra else {})

    both = RankingLists.concat([lists(["u", "v"]), lists(["w"])])
    assert list(both.user_id) == ["u", "v", "w"]
    np.testing.assert_array_equal(both.extra["retrieval_score"][2], [0, 1, 2])
    with pytest.raises(ValueError, match="differ"):
        RankingLists.concat([lists(["u"]), lists(["v"], width=4)])
    with pytest.raises(ValueError, match="differ"):
        RankingLists.concat([lists(["u"]), lists(["v"], extra=False)])
