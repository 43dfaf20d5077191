"""The ranking model: DCN-v2 cross layers, DIN attention masking, padding, and that it learns."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recommenders_tf.models.ranking import (CandidateAttention, CrossNetwork, RankingConfig,
                                            build_ranking_model, predict_lists)
from recommenders_tf.models.ranking_data import RankingLists
from recommenders_tf.models.training import fit_model

USERS = [f"u{i}" for i in range(6)]
ITEMS = [f"i{i}" for i in range(8)]


def small_config(**kw):
    base = dict(loss="softmax", embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                deep_dims=(16,), din_units=8, history_len=3, epochs=1, verbose=0, seed=0,
                learning_rate=0.05, patience=0)
    base.update(kw)
    return RankingConfig(**base)


def batch(items, labels, mask, history=None, users=None):
    items = np.asarray(items, dtype=object)
    n = items.shape[0]
    users = users or USERS[:n]
    history = history if history is not None else [["", "i1", "i2"]] * n
    return {"user_id": tf.constant(users), "history": tf.constant(history),
            "item_id": tf.constant(items.astype(str)),
            "label": tf.constant(np.asarray(labels, np.float32)),
            "mask": tf.constant(np.asarray(mask, bool))}


def test_config_resolves_the_monitor_from_the_loss():
    assert (RankingConfig(loss="mse").monitor, RankingConfig(loss="mse").monitor_mode) == (
        "val_rmse", "min")
    assert RankingConfig(loss="listmle").monitor == "val_ndcg_10"
    assert RankingConfig(loss="listmle", monitor="val_example_loss").monitor == \
        "val_example_loss"
    with pytest.raises(ValueError, match="unknown ranking loss"):
        RankingConfig(loss="nope")
    with pytest.raises(ValueError, match="deep_dims"):
        RankingConfig(deep_dims=(0,))


def test_cross_layer_computes_dcn_v2_formula_and_is_in_the_model():
    net = CrossNetwork(num_cross_layers=1, projection_dim=None, deep_dims=(), output_bias=0.5)
    x = tf.constant([[1.0, 2.0], [-1.0, 3.0]])
    net(x)
    cross = net.cross_layers[0]
    assert isinstance(cross, tfrs.layers.dcn.Cross)
    w = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    b = np.array([0.1, -0.2], np.float32)
    cross._dense.set_weights([w, b])
    net.output_layer.set_weights([np.ones((2, 1), np.float32), np.array([0.5], np.float32)])
    xn = x.numpy()
    expected_cross = xn * (xn @ w + b) + xn  # x0 * (W x + b) + x with x = x0
    expected = expected_cross.sum(axis=1) + 0.5
    np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-5)

    model = build_ranking_model(small_config(num_cross_layers=2), USERS, ITEMS)
    assert sum(isinstance(l, tfrs.layers.dcn.Cross) for l in model.scorer.cross_layers) == 2
    # The cross layers are trained: one step changes their kernels.
    data = tf.data.Dataset.from_tensors(batch([["i0", "i1", "i2"]] * 2, [[1, 0, 0]] * 2,
                                              [[True] * 3] * 2))
    model(next(iter(data)))
    before = [v.numpy().copy() for l in model.scorer.cross_layers for v in l.trainable_variables]
    # Eager steps: the gradient reaching the cross kernels is the same as in a traced step, and
    # tracing the model's train step would cost most of this test's time.
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1), run_eagerly=True)
    model.fit(data, epochs=1, verbose=0)
    after = [v.numpy() for l in model.scorer.cross_layers for v in l.trainable_variables]
    assert any(not np.allclose(a, b) for a, b in zip(after, before))


def test_din_attention_ignores_padded_history_positions():
    layer = CandidateAttention(units=4)
    rng = np.random.default_rng(0)
    candidates = tf.constant(rng.normal(size=(2, 3, 5)), tf.float32)
    history = rng.normal(size=(2, 4, 5)).astype(np.float32)
    mask = np.array([[False, True, True, False], [False, False, False, True]])
    out = layer(candidates, tf.constant(history), tf.constant(mask)).numpy()
    changed = history.copy()
    changed[~mask] = 1e3  # garbage in the padded slots
    out2 = layer(candidates, tf.constant(changed), tf.constant(mask)).numpy()
    np.testing.assert_allclose(out, out2, rtol=1e-6, atol=1e-6)
    # Row 2 has one real position: every candidate gets exactly that history vector.
    np.testing.assert_allclose(out[1], np.tile(history[1, 3], (3, 1)), rtol=1e-5)
    # Row 1's output is a convex combination of its two real positions.
    for s in range(3):
        a = np.linalg.lstsq(history[0, 1:3].T, out[0, s], rcond=None)[0]
        assert a.sum() == pytest.approx(1.0, abs=1e-4) and (a > -1e-6).all()
    # A fully padded history gives zeros, not NaN.
    empty = layer(candidates, tf.constant(history), tf.zeros((2, 4), tf.bool)).numpy()
    np.testing.assert_array_equal(empty, np.zeros_like(empty))


def test_model_history_padding_and_unknown_ids():
    model = build_ranking_model(small_config(), USERS, ITEMS)
    feats = batch([["i0", "i3", "i5"]], [[1, 0, 0]], [[True] * 3], history=[["", "", "i2"]])
    base = model(feats).numpy()
    # A shorter, padded history with the same real item gives the same scores.
    feats2 = dict(feats, history=tf.constant([["", "i2"]]))
    np.testing.assert_allclose(model(feats2).numpy(), base, rtol=1e-5)
    # Unknown users and items get finite scores (OOV buckets).
    odd = dict(feats, user_id=tf.constant(["stranger"]),
               item_id=tf.constant([["never-seen", "i3", "also-new"]]))
    assert np.isfinite(model(odd).numpy()).all()


def test_padded_entries_change_neither_loss_nor_metrics():
    for key in ("softmax", "pairwise_hinge", "mse"):
        model = build_ranking_model(small_config(loss=key), USERS, ITEMS)
        labels = [[1.0, 0.0, 3.0, -1.0], [0.0, 2.0, 0.0, -1.0]]
        mask = [[True, True, True, False], [True, True, True, False]]
        results = []
        for pad_item in ("i7", "i4"):  # different padded items -> different padded scores
            model.reset_metrics()
            feats = batch([["i0", "i1", "i2", pad_item], ["i3", "i4", "i5", pad_item]],
                          labels, mask)
            loss = float(model.compute_loss(feats))
            results.append((loss, float(model.ndcg.result()), float(model.mrr.result())))
        scores = [model(batch([["i0", "i1", "i2", p]] * 2, labels, mask)).numpy()[0, 3]
                  for p in ("i7", "i4")]
        assert scores[0] != pytest.approx(scores[1])  # the padded score really differs
        np.testing.assert_allclose(results[0], results[1], rtol=1e-6, err_msg=key)


def test_predict_lists_marks_padding_with_minus_inf():
    model = build_ranking_model(small_config(), USERS, ITEMS)
    lists = RankingLists(np.array(["u0"], object), np.array([["", "", "i1"]], object),
                         np.array([["i0", "i2", ""]], object),
                         np.array([[1, 0, -1]], np.float32), np.array([[True, True, False]]))
    scores = predict_lists(model, lists)
    assert np.isneginf(scores[0, 2]) and np.isfinite(scores[0, :2]).all()


@pytest.mark.slow
def test_listwise_model_learns_to_put_the_preferred_item_first(tmp_path):
    # Every user's list holds "star" (label 1) and four other items (label 0), in random
    # order; a trained listwise model must rank "star" first for every user.
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(12)]
    items = ["star"] + [f"i{i}" for i in range(15)]
    rows_items, rows_labels = [], []
    for _ in users:
        others = list(rng.choice(items[1:], size=4, replace=False))
        row = np.array(["star"] + others, dtype=object)
        lab = np.array([1.0, 0, 0, 0, 0], np.float32)
        order = rng.permutation(5)
        rows_items.append(row[order])
        rows_labels.append(lab[order])
    hist = np.array([[h1, h2, h3] for h1, h2, h3 in rng.choice(items[1:], size=(12, 3))], object)
    lists = RankingLists(np.array(users, object), hist, np.stack(rows_items),
                         np.stack(rows_labels), np.ones((12, 5), bool))
    # The train NDCG reaches 1.0 in epoch 2 and fit_model keeps the best epoch's weights, so
    # more epochs only add checkpoints: the model returned is the epoch-2 one either way.
    config = small_config(loss="softmax", epochs=3, batch_size=4, learning_rate=0.03)
    model = build_ranking_model(config, users, items)
    result = fit_model(model, lists.to_dataset(4, seed=0), None, config, str(tmp_path / "run"),
                       examples_per_epoch=lists.num_entries)
    scores = predict_lists(model, lists)
    top = lists.item_id[np.arange(12), scores.argmax(axis=1)]
    assert (top == "star").all(), top
    assert result.history["ndcg_10"][-1] > result.history["ndcg_10"][0]


def test_user_features_are_looked_up_inside_the_model():
    jobs = {"u0": "writer", "u1": "doctor"}
    config = small_config(user_features=("occupation",))
    model = build_ranking_model(config, USERS, ITEMS, user_features={"occupation": jobs})
    assert model.query_tower.feature_names == ["occupation"]
    feats = batch([["i0", "i1"]] * 3, [[1, 0]] * 3, [[True, True]] * 3,
                  users=["u0", "u1", "nobody"])
    scores = model(feats).numpy()
    assert np.isfinite(scores).all()
    # Same weights, occupations swapped between u0 and u1: their scores change, the unknown
    # user's (OOV occupation either way) do not.
    swapped = build_ranking_model(config, USERS, ITEMS,
                                  user_features={"occupation": {"u0": "doctor",
                                                                "u1": "writer"}})
    swapped(feats)
    swapped.set_weights(model.get_weights())
    again = swapped(feats).numpy()
    assert not np.allclose(again[0], scores[0]) and not np.allclose(again[1], scores[1])
    np.testing.assert_allclose(again[2], scores[2], rtol=1e-6)

