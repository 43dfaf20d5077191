"""The listwise re-ranker: masked standardisation, padding, the skip term, export, learning."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.evaluation.metrics import ndcg_at_k
from recommenders_tf.models.reranking import (PAD_SCORE, Reranker, RerankerConfig,
                                              RerankerEncoderBlock, build_reranker,
                                              fit_reranker, rerank_scores, standardize_scores)

DI, F, DU = 4, 2, 3


def small_config(**kw):
    base = dict(num_layers=1, num_heads=2, model_dim=8, ff_dim=16, dropout=0.0,
                max_list_size=12, epochs=1, verbose=0, patience=0, seed=0)
    base.update(kw)
    return RerankerConfig(**base)


def random_lists(n, length, seed=0, valid=None):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), bool)
    if valid is not None:
        mask = np.arange(length)[None, :] < np.asarray(valid)[:, None]
    # Input order = descending ranker score (column 0), as the ranking stage hands it over.
    ranker = -np.sort(-rng.normal(size=(n, length)), axis=1)
    return {"item_vectors": rng.normal(size=(n, length, DI)).astype(np.float32),
            "item_scores": np.stack([ranker, rng.normal(size=(n, length))], -1
                                    ).astype(np.float32),
            "user_vector": rng.normal(size=(n, DU)).astype(np.float32),
            "mask": mask,
            "label": (rng.random((n, length)) < 0.3).astype(np.float32)}


def test_config_validation_names_the_field():
    cfg = RerankerConfig()
    assert (cfg.loss, cfg.monitor, cfg.monitor_mode) == ("softmax", "val_ndcg_10", "max")
    assert RerankerConfig(loss="ListMLE").loss == "listmle"
    for kw, match in ((dict(loss="nope"), "unknown ranking loss"),
                      (dict(model_dim=10, num_heads=3), "divisible by num_heads"),
                      (dict(num_heads=0), "num_heads"), (dict(dropout=1.0), "dropout"),
                      (dict(num_layers=-1), "num_layers"), (dict(max_list_size=0),
                                                            "max_list_size"),
                      (dict(skip_init=-0.5), "skip_init"), (dict(epochs=0), "epochs")):
        with pytest.raises(ValueError, match=match):
            RerankerConfig(**kw)


def test_standardize_scores_is_masked_per_list_and_per_column():
    scores = tf.constant([[[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [1e9, np.nan]]])
    mask = tf.constant([[True, True, True, False]])
    z = standardize_scores(scores, mask).numpy()[0]
    # Column 0 over the 3 real entries: mean 2, population std sqrt(2/3).
    s = np.sqrt(2.0 / 3.0)
    np.testing.assert_allclose(z[:, 0], [-1 / s, 0.0, 1 / s, 0.0], atol=1e-6)
    # A constant column carries no order: all zeros, not rounding noise; padding is 0.
    np.testing.assert_array_equal(z[:, 1], [0.0, 0.0, 0.0, 0.0])


def test_untrained_reranker_keeps_the_input_score_order():
    arrays = random_lists(16, 10, seed=1, valid=[10] * 8 + [3, 5, 7, 1, 10, 2, 9, 4])
    # Shuffle the input so "input order" is the score order, not the slot order.
    perm = np.random.default_rng(2).permutation(10)
    for key in ("item_vectors", "item_scores"):
        arrays[key] = arrays[key][:, perm]
    arrays["mask"] = arrays["mask"][:, perm]
    model = build_reranker(small_config(num_layers=2), DI, F, DU)
    scores = rerank_scores(model, arrays)
    ranker = np.where(arrays["mask"], arrays["item_scores"][..., 0], -np.inf)
    for row in range(16):
        valid = arrays["mask"][row].sum()
        np.testing.assert_array_equal(np.argsort(-scores[row])[:valid],
                                      np.argsort(-ranker[row])[:valid])
    assert np.all(np.isneginf(scores[~arrays["mask"]]))
    assert np.all(np.isfinite(scores[arrays["mask"]]))


def test_scores_are_invariant_to_the_scale_of_the_score_features():
    arrays = random_lists(4, 6, seed=3)
    model = build_reranker(small_config(), DI, F, DU)
    base = rerank_scores(model, arrays)
    scaled = dict(arrays, item_scores=arrays["item_scores"] * 250.0 - 7.0)
    np.testing.assert_allclose(rerank_scores(model, scaled), base, rtol=1e-4, atol=1e-4)


def test_padding_content_and_extra_slots_do_not_change_real_scores():
    short = random_lists(3, 5, seed=4)
    model = build_reranker(small_config(num_layers=2), DI, F, DU)
    # Make the head non-zero so the Transformer's output (and its masking) matters.
    head = model.head.output_layer
    model(dict((k, tf.constant(v)) for k, v in short.items()))
    head.kernel.assign(tf.random.stateless_normal(head.kernel.shape, seed=(1, 2)))
    expected = rerank_scores(model, short)
    longer = {}
    rng = np.random.default_rng(5)
    for key in ("item_vectors", "item_scores"):
        pad = rng.normal(size=(3, 4) + short[key].shape[2:]) * 1e3
        pad[0, 0] = np.nan  # garbage in a padded slot must not leak
        longer[key] = np.concatenate([short[key], pad], axis=1)
    longer["mask"] = np.concatenate([short["mask"], np.zeros((3, 4), bool)], axis=1)
    longer["user_vector"] = short["user_vector"]
    out = rerank_scores(model, longer)
    np.testing.assert_allclose(out[:, :5], expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(out[:, 5:]))
    raw = model(dict((k, tf.constant(v)) for k, v in longer.items())).numpy()
    assert np.all(raw[:, 5:] == np.float32(PAD_SCORE))


def test_encoder_block_uses_keras_attention_with_the_padding_mask():
    block = RerankerEncoderBlock(model_dim=4, num_heads=2, ff_dim=8)
    x = tf.random.stateless_normal((1, 3, 4), seed=(0, 1))
    mask = tf.constant([[True, True, False]])
    out = block(x, mask).numpy()
    assert isinstance(block.attention, tf.keras.layers.MultiHeadAttention)
    changed = x.numpy().copy()
    changed[0, 2] += 100.0  # the padded key: real positions must not see it
    np.testing.assert_allclose(block(tf.constant(changed), mask).numpy()[0, :2], out[0, :2],
                               atol=1e-5)


def test_loss_and_ndcg_ignore_padding():
    arrays = random_lists(2, 4, seed=6, valid=[2, 4])
    arrays["label"] = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], np.float32)  # padded 1s ignored
    model = build_reranker(small_config(loss="softmax"), DI, F, DU)
    feats = {k: tf.constant(v) for k, v in arrays.items()}
    loss = float(model.compute_loss(feats))
    # Untrained model = skip term only: z-scores of the ranker column (+ the head's 0 bias).
    z = standardize_scores(feats["item_scores"], feats["mask"]).numpy()[..., 0]
    s0, s1 = z[0, :2], z[1]
    # TF-Ranking softmax loss: -sum_i y_i/sum(y) log softmax(s)_i, summed over lists / B.
    ce0 = -(s0[0] - np.log(np.exp(s0).sum()))
    ce1 = -(s1[1] - np.log(np.exp(s1).sum()))
    assert loss == pytest.approx((ce0 + ce1) / 2, rel=1e-5)
    # NDCG@10: list 0 has its relevant item at rank 1 of 2; list 1 has it at rank 2 of 4.
    assert float(model.ndcg.result()) == pytest.approx((1.0 + 1 / np.log2(3)) / 2, rel=1e-5)


def test_inputs_are_checked_with_clear_messages():
    model = build_reranker(small_config(), DI, F, DU)
    arrays = random_lists(2, 5)
    with pytest.raises(KeyError, match="user_vector"):
        model({k: tf.constant(v) for k, v in arrays.items() if k != "user_vector"})
    with pytest.raises(ValueError, match="last dimension 4"):
        model(dict({k: tf.constant(v) for k, v in arrays.items()},
                   item_vectors=tf.zeros((2, 5, 7))))
    with pytest.raises(ValueError, match="max_list_size=12"):
        rerank_scores(model, random_lists(1, 13))
    bad = random_lists(2, 5)
    bad["item_scores"][1, 3, 0] = np.inf
    with pytest.raises(ValueError, match="list 1, position 3"):
        rerank_scores(model, bad)
    with pytest.raises(ValueError, match="the mask says"):
        rerank_scores(model, dict(arrays, item_scores=arrays["item_scores"][:, :4]))
    # user_dim = 0: no user vector is read or required.
    no_user = build_reranker(small_config(), DI, F, 0)
    assert rerank_scores(no_user, {k: v for k, v in arrays.items()
                                   if k != "user_vector"}).shape == (2, 5)


def test_call_traces_with_fixed_list_size_and_round_trips_a_saved_model(tmp_path):
    model = build_reranker(small_config(), DI, F, DU)
    arrays = random_lists(3, 6, seed=7, valid=[6, 4, 1])
    spec = {"item_vectors": tf.TensorSpec([None, 6, DI], tf.float32, "item_vectors"),
            "item_scores": tf.TensorSpec([None, 6, F], tf.float32, "item_scores"),
            "user_vector": tf.TensorSpec([None, DU], tf.float32, "user_vector"),
            "mask": tf.TensorSpec([None, 6], tf.bool, "mask")}
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda f: {"scores": model(f, training=False)},
                               input_signature=[spec])
    feats = {k: tf.constant(arrays[k]) for k in spec}
    expected = module.serve(feats)["scores"].numpy()
    path = str(tmp_path / "reranker")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](**feats)["scores"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(np.where(arrays["mask"], got, -np.inf),
                               rerank_scores(model, arrays), rtol=1e-6)


def interaction_lists(n, seed, length=10):
    """Lists whose relevance the input order barely uses.

    Utility = item dim 0 x user dim 0 (a user-item interaction); the ranker score, which
    fixes the input order, sees it only weakly (0.3 x utility + unit noise). Label 1 on the
    two highest-utility items of each list.
    """
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, length, DI)).astype(np.float32)
    user = rng.normal(size=(n, DU)).astype(np.float32)
    utility = items[:, :, 0] * user[:, None, 0]
    ranker = 0.3 * utility + rng.normal(size=(n, length))
    order = np.argsort(-ranker, axis=1)
    items = np.take_along_axis(items, order[..., None], axis=1)
    utility = np.take_along_axis(utility, order, axis=1)
    ranker = np.take_along_axis(ranker, order, axis=1)
    label = np.zeros((n, length), np.float32)
    np.put_along_axis(label, np.argsort(-utility, axis=1)[:, :2], 1.0, axis=1)
    return {"item_vectors": items,
            "item_scores": np.stack([ranker, rng.normal(size=(n, length))], -1
                                    ).astype(np.float32),
            "user_vector": user, "mask": np.ones((n, length), bool), "label": label}


def mean_ndcg10(scores, label):
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(label, order, axis=1) > 0
    hits = np.pad(hits, ((0, 0), (0, max(0, 10 - hits.shape[1]))))  # short lists: no hit
    return float(ndcg_at_k(hits, label.sum(axis=1), 10).mean())


def test_reranker_learns_a_user_item_interaction_the_input_order_misses(tmp_path):
    train, val, test = (interaction_lists(1200, 0), interaction_lists(200, 1),
                        interaction_lists(300, 2))
    # Validation NDCG@10 about 0.95 after four epochs (0.97 after six), test 0.96.
    config = small_config(model_dim=16, ff_dim=32, epochs=4, learning_rate=3e-3,
                          batch_size=64, patience=2)
    model, result = fit_reranker(config, train, val, str(tmp_path / "run"))
    assert isinstance(model, Reranker)
    assert result.best_epoch is not None and "val_ndcg_10" in result.history
    input_order = mean_ndcg10(np.tile(-np.arange(10.0), (300, 1)), test["label"])
    reranked = mean_ndcg10(rerank_scores(model, test), test["label"])
    assert input_order < 0.7
    assert reranked > input_order + 0.2, (input_order, reranked)


@pytest.fixture(scope="module")
def little_data_fits(tmp_path_factory):
    """Lists whose input order is already right (label = the two best-ranked items), 48 of
    them, four padded: one epoch without validation, then the same run_dir resumed up to three.

    One run serves the resume test and the little-data test: every fit builds and traces a
    fresh model, which costs far more than these few epochs.
    """
    train = random_lists(48, 8, seed=9, valid=np.r_[[8] * 44, [2, 3, 4, 5]])
    train["label"] = np.zeros_like(train["label"])
    train["label"][:, :2] = 1.0
    run_dir = str(tmp_path_factory.mktemp("reranker") / "run")
    settings = dict(batch_size=16, learning_rate=3e-3)
    _, first = fit_reranker(small_config(epochs=1, **settings), train, None, run_dir)
    model, second = fit_reranker(small_config(epochs=3, **settings), train, None, run_dir)
    return first, second, model


def test_fit_reranker_resumes_from_its_run_dir_and_trains_without_validation(little_data_fits):
    first, second, _ = little_data_fits
    assert (first.initial_epoch, first.epochs_done) == (0, 1)
    # monitor val_ndcg_10 falls back to the train value without a validation set.
    assert "ndcg_10" in first.history and first.best_epoch == 1
    assert (second.initial_epoch, second.epochs_done) == (1, 3)
    assert len(second.history["ndcg_10"]) == 3
    assert second.history["ndcg_10"][0] == first.history["ndcg_10"][0]


def test_little_data_does_not_destroy_a_good_input_order(little_data_fits):
    _, second, model = little_data_fits
    assert second.epochs_done == 3
    test = random_lists(200, 8, seed=10)
    test["label"] = np.zeros_like(test["label"])
    test["label"][:, :2] = 1.0
    assert mean_ndcg10(rerank_scores(model, test), test["label"]) > 0.98
