"""Tower builder: shapes, masking, OOV handling, feature branches, raw-string export."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.towers import (
    ColdStartItemId,
    MaskedAttentionPooling,
    TowerConfig,
    adapt_title_vocabulary,
    build_candidate_tower,
    build_query_tower,
    build_towers,
    masked_mean,
    title_tokens,
)

USERS = ["u1", "u2", "u3"]
ITEMS = ["i1", "i2", "i3", "i4"]
GENRES = ["Action", "Comedy", "Drama"]


def tiny_config(**overrides):
    base = dict(embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                text_embedding_dim=4, history_len=4, hidden_dims=(16,), title_max_len=6)
    base.update(overrides)
    return TowerConfig(**base)


def query_features(user_ids, history, mask=None):
    feats = {"user_id": tf.constant(user_ids), "history": tf.constant(history)}
    if mask is not None:
        feats["history_mask"] = tf.constant(mask)
    return feats


@pytest.mark.parametrize("pooling", ["attention", "transformer", "mean"])
def test_query_tower_unit_norm_and_finite_for_unknown_user_and_empty_history(pooling):
    tf.keras.utils.set_random_seed(0)
    query, _ = build_towers(tiny_config(history_pooling=pooling), USERS, ITEMS)
    out = query(query_features(
        ["u1", "never-seen", "u2"],
        [["", "", "i1", "i2"], ["", "", "", ""], ["zz", "yy", "", "i9"]],
        [[False, False, True, True], [False] * 4, [True, True, False, True]])).numpy()
    assert out.shape == (3, 8)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_normalize_off_gives_raw_outputs():
    tf.keras.utils.set_random_seed(0)
    query, _ = build_towers(tiny_config(normalize=False), USERS, ITEMS)
    out = query(query_features(["u1", "u2"], [["", "", "", "i1"]] * 2)).numpy()
    assert not np.allclose(np.linalg.norm(out, axis=1), 1.0)


@pytest.mark.parametrize("pooling", ["attention", "transformer", "mean"])
def test_masked_history_positions_do_not_change_the_query(pooling):
    tf.keras.utils.set_random_seed(1)
    query, _ = build_towers(tiny_config(history_pooling=pooling), USERS, ITEMS)
    mask = [[False, False, True, True]]
    a = query(query_features(["u1"], [["", "", "i1", "i2"]], mask)).numpy()
    b = query(query_features(["u1"], [["i3", "i4", "i1", "i2"]], mask)).numpy()
    # Without history_mask, "" alone must mask the same slots.
    c = query(query_features(["u1"], [["", "", "i1", "i2"]])).numpy()
    d = query(query_features(["u1"], [["i3", "i4", "i1", "i2"]])).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)
    assert not np.allclose(a, d, atol=1e-4)  # the unmasked items do matter


def test_history_longer_than_history_len_keeps_the_most_recent_items():
    tf.keras.utils.set_random_seed(2)
    query, _ = build_towers(tiny_config(history_len=2), USERS, ITEMS)
    a = query(query_features(["u1"], [["i3", "i4", "i1", "i2"]])).numpy()
    b = query(query_features(["u1"], [["i1", "i2"]])).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_masked_mean_and_attention_pooling_by_hand():
    x = tf.constant([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 9.0], [1.0, 1.0]]])
    mask = tf.constant([[True, False, True], [False, False, False]])
    np.testing.assert_allclose(masked_mean(x, mask).numpy(), [[3.0, 4.0], [0.0, 0.0]])
    pool = MaskedAttentionPooling(4)
    pool(x, mask)
    # Zero scoring vector: equal logits, so attention over the unmasked items is their mean.
    pool.score.kernel.assign(tf.zeros_like(pool.score.kernel))
    np.testing.assert_allclose(pool(x, mask).numpy(), [[3.0, 4.0], [0.0, 0.0]], atol=1e-6)


def test_history_and_candidate_share_the_item_table():
    query, candidate = build_towers(tiny_config(), USERS, ITEMS)
    assert query.item_id_embedding is candidate.item_id_embedding
    lookup = query.item_id_embedding.lookup
    # "" is the mask slot 0, unknown ids the OOV slot 1, then the vocabulary in order.
    np.testing.assert_array_equal(lookup(tf.constant(["", "zz", "i1", "i4"])).numpy(),
                                  [0, 1, 2, 5])


def test_candidate_tower_genres_multi_hot_and_oov():
    tf.keras.utils.set_random_seed(3)
    tower = build_candidate_tower(tiny_config(), ITEMS, genre_vocab=GENRES)
    out = tower({"item_id": tf.constant(["i1", "i1", "i1", "i1", "i1", "new"]),
                 "item_genres": tf.constant(["Action|Drama", "Drama|Action", "Unknown1",
                                             "Unknown2", "", ""])}).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # a set, not a sequence
    np.testing.assert_allclose(out[2], out[3], atol=1e-6)  # both in the OOV bucket
    assert not np.allclose(out[0], out[4], atol=1e-4)
    genre_onehot = tower.genre_lookup(tf.strings.split(tf.constant(["Action|Drama", ""]), "|"))
    np.testing.assert_array_equal(genre_onehot.numpy(), [[0, 1, 0, 1], [0, 0, 0, 0]])


def test_candidate_tower_learned_titles():
    vocab = adapt_title_vocabulary(["Toy Story (1995)", "Heat (1995)", "Story of Heat"])
    assert set(vocab) == {"1995", "story", "heat", "toy", "of"}
    assert vocab[0] in {"1995", "story", "heat"}  # most frequent first (count 2)
    tf.keras.utils.set_random_seed(4)
    tower = build_candidate_tower(tiny_config(), ITEMS, title_vocab=vocab)
    out = tower({"item_id": tf.constant(["i1", "i1", "i1"]),
                 "item_title": tf.constant(["Toy Story", "toy   STORY!", "Heat"])}).numpy()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # same tokens after standardising
    assert not np.allclose(out[0], out[2], atol=1e-4)


def test_title_tokens_are_what_the_title_tower_reads():
    titles = ["Toy Story (1995)", "Don't Stop: Now!", "", "toy   STORY!"]
    tokens = title_tokens(titles)
    assert tokens == ["toy", "story", "1995", "dont", "stop", "now", "toy", "story"]
    tf.keras.utils.set_random_seed(4)
    vocab = sorted(set(tokens))
    tower = build_candidate_tower(tiny_config(), ITEMS, title_vocab=vocab)
    ids = tower.title_vectorizer(tf.constant(titles)).numpy()
    # Every token maps to its own vocabulary slot (2.. after the mask and OOV slots).
    assert sorted({int(i) for i in ids.ravel()} - {0}) == list(range(2, 2 + len(vocab)))


def id_only_output_bias(tower):
    """With no hidden layer and no normalisation the id-only tower is Dense(id vector): a zero
    id vector gives the output layer's bias."""
    return tower.mlp.layers[-1].bias.numpy()


def test_cold_start_is_an_option_of_the_candidate_tower():
    tf.keras.utils.set_random_seed(6)
    config = tiny_config(hidden_dims=(), normalize=False, zero_oov_item_id=True)
    query, candidate = build_towers(config, USERS, ITEMS)
    # The candidate tower reads the shared table through the cold-start view; the query
    # tower's history still reads the table itself.
    assert isinstance(candidate.item_id_view, ColdStartItemId)
    assert candidate.item_id_embedding is query.item_id_embedding
    assert candidate.item_id_view.inner is candidate.item_id_embedding
    out = candidate({"item_id": tf.constant(["i1", "never-seen", ""])}).numpy()
    bias = id_only_output_bias(candidate)
    np.testing.assert_allclose(out[1], bias, atol=1e-7)   # unknown id: no id contribution
    np.testing.assert_allclose(out[2], bias, atol=1e-7)
    assert not np.allclose(out[0], bias, atol=1e-4)
    # Off (the TowerConfig default), the unknown id gets the shared OOV row.
    tf.keras.utils.set_random_seed(6)
    _, plain = build_towers(tiny_config(hidden_dims=(), normalize=False), USERS, ITEMS)
    assert plain.item_id_view is plain.item_id_embedding
    assert not np.allclose(plain({"item_id": tf.constant(["never-seen"])}).numpy()[0],
                           id_only_output_bias(plain), atol=1e-4)


def test_item_id_dropout_zeroes_a_share_of_training_examples_only():
    tf.keras.utils.set_random_seed(7)
    config = tiny_config(hidden_dims=(), normalize=False, item_id_dropout=0.5)
    tower = build_candidate_tower(config, ITEMS)
    assert isinstance(tower.item_id_view, ColdStartItemId)
    assert not tower.item_id_view.zero_oov
    ids = tf.constant(["i2"] * 400)
    trained = tower({"item_id": ids}, training=True).numpy()
    bias = id_only_output_bias(tower)
    dropped = np.all(np.isclose(trained, bias, atol=1e-7), axis=1)
    assert 0.4 < dropped.mean() < 0.6
    kept = tower({"item_id": ids}, training=False).numpy()
    assert not np.isclose(kept, bias, atol=1e-7).all(axis=1).any()
    with pytest.raises(ValueError, match="item_id_dropout"):
        tiny_config(item_id_dropout=1.0)


def test_candidate_tower_text_vector_is_a_frozen_input_with_trainable_projection():
    tf.keras.utils.set_random_seed(5)
    tower = build_candidate_tower(tiny_config(), ITEMS, title_vocab=["toy"], text_vector_dim=3)
    assert not tower.use_titles  # the text vector takes precedence over titles
    vectors = tf.Variable([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with tf.GradientTape() as tape:
        out = tower({"item_id": tf.constant(["i1", "i1"]), "item_text_vector": vectors})
        loss = tf.reduce_sum(out[:, 0])
    grads = tape.gradient(loss, [vectors, tower.text_projection.kernel])
    assert grads[0] is None and grads[1] is not None
    with pytest.raises(KeyError, match="item_text_vector"):
        tower({"item_id": tf.constant(["i1"])})


def test_query_tower_user_categorical_features():
    tf.keras.utils.set_random_seed(6)
    query = build_query_tower(tiny_config(), USERS, ITEMS,
                              user_feature_vocabs={"gender": ["F", "M"]})
    feats = query_features(["u1", "u1"], [["", "", "", "i1"]] * 2)
    feats["gender"] = tf.constant(["F", "M"])
    out = query(feats).numpy()
    assert not np.allclose(out[0], out[1], atol=1e-4)
    with pytest.raises(KeyError, match="gender"):
        query(query_features(["u1"], [["", "", "", "i1"]]))


def test_user_id_dropout_sends_training_users_to_the_oov_bucket():
    tf.keras.utils.set_random_seed(8)
    query, _ = build_towers(tiny_config(user_id_dropout=0.999), USERS, ITEMS)
    history = [["", "", "", "i1"]] * 2
    known, unknown = query_features(["u1", "u2"], history), query_features(["x", "y"], history)
    np.testing.assert_allclose(query(known, training=True).numpy(),
                               query(unknown, training=False).numpy(), atol=1e-6)
    assert not np.allclose(query(known, training=False).numpy(),
                           query(unknown, training=False).numpy(), atol=1e-4)


def test_bad_vocabularies_and_configs_fail_clearly():
    with pytest.raises(ValueError, match="duplicate token 'i1'"):
        build_towers(tiny_config(), USERS, ["i1", "i2", "i1"])
    with pytest.raises(ValueError, match="empty string"):
        build_towers(tiny_config(), USERS, ["i1", ""])
    with pytest.raises(ValueError, match="history_pooling"):
        tiny_config(history_pooling="max")


def test_exported_tower_takes_raw_strings(tmp_path):
    tf.keras.utils.set_random_seed(7)
    query, _ = build_towers(tiny_config(), USERS, ITEMS)
    feats = query_features(["u1", "nobody"], [["", "", "i1", "i2"], ["", "", "", ""]])
    expected = query(feats).numpy()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                                  tf.TensorSpec([None, None], tf.string)])
    def serve(user_id, history):
        return {"query_embedding": query({"user_id": user_id, "history": history})}

    path = str(tmp_path / "query")
    tf.saved_model.save(query, path, signatures={"serving_default": serve})
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](user_id=feats["user_id"],
                                                history=feats["history"])
    np.testing.assert_allclose(got["query_embedding"].numpy(), expected, atol=1e-6)
