"""Retrieval model: logQ correction, accidental hits and hard negatives checked by hand, and a
tiny two-group dataset the model must learn."""
import math

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.retrieval import (
    ItemSamplingProbability,
    RetrievalConfig,
    RetrievalModel,
    build_retrieval_model,
    build_retrieval_task,
    item_sampling_probabilities,
)
from recommenders_tf.models.towers import TowerConfig
from recommenders_tf.models.training import TrainingConfig, fit_model


class FixedTower(tf.keras.Model):
    """Looks feature `key` up in a fixed table of vectors (row 0 is the OOV row)."""

    def __init__(self, key, ids, vectors):
        super().__init__()
        self.key = key
        self.lookup = tf.keras.layers.StringLookup(vocabulary=list(ids), num_oov_indices=1)
        table = np.vstack([np.zeros((1, len(vectors[0]))), np.asarray(vectors)])
        self.vectors = tf.Variable(table, dtype=tf.float32)

    def call(self, features, training=None):
        return tf.gather(self.vectors, self.lookup(features[self.key]))


def fixed_model(config, user_vecs, item_ids, item_vecs, counts=None):
    users = [f"r{i}" for i in range(len(user_vecs))]
    sampling = None
    if counts is not None:
        sampling = ItemSamplingProbability(item_ids, item_sampling_probabilities(item_ids, counts))
    return RetrievalModel(FixedTower("user_id", users, user_vecs),
                          FixedTower("item_id", item_ids, item_vecs),
                          build_retrieval_task(config), sampling)


def batch(item_ids):
    return {"user_id": tf.constant([f"r{i}" for i in range(len(item_ids))]),
            "item_id": tf.constant(item_ids)}


def softmax_loss(scores, positives_mask=None, log_q=None, hard_negatives=0):
    """Sum over rows of -log softmax(row)[i] for the diagonal positive, written out plainly."""
    logits = np.array(scores, dtype=np.float64)
    if log_q is not None:
        logits = logits - np.asarray(log_q)[None, :]
    total = 0.0
    for i, row in enumerate(logits):
        keep = [j for j in range(len(row)) if j == i or positives_mask is None
                or not positives_mask[i][j]]
        negatives = sorted((row[j] for j in keep if j != i), reverse=True)
        if hard_negatives:
            negatives = negatives[:hard_negatives]
        values = np.array([row[i]] + negatives)
        total += np.log(np.exp(values).sum()) - row[i]
    return total


def config(**overrides):
    base = dict(temperature=1.0, logq_correction=True, remove_accidental_hits=False,
                num_hard_negatives=0)
    base.update(overrides)
    return RetrievalConfig(**base)


def test_item_sampling_probabilities_and_lookup():
    q = item_sampling_probabilities(["pop", "mid", "rare", "unseen"], [6, 3, 1, 0])
    np.testing.assert_allclose(q, [0.6, 0.3, 0.1, 0.1])  # zero count floored to the rarest
    layer = ItemSamplingProbability(["pop", "mid", "rare"], [0.6, 0.3, 0.1])
    # Stored relative to the most popular item; unknown ids count as the rarest.
    np.testing.assert_allclose(layer(tf.constant(["pop", "mid", "rare", "zz"])).numpy(),
                               [1.0, 0.5, 1 / 6, 1 / 6], rtol=1e-6)
    with pytest.raises(ValueError, match="3 item ids but 2 counts"):
        item_sampling_probabilities(["a", "b", "c"], [1, 2])
    with pytest.raises(ValueError, match="'b'.*position 1"):
        item_sampling_probabilities(["a", "b"], [1, -2])


def test_logq_correction_by_hand_on_equal_scores():
    # Three queries, all e1; candidate vectors zero, so every raw score is 0.
    # q = (0.6, 0.3, 0.1). Corrected logits are -log q_j, shared by every row:
    #   softmax = (1/0.6, 1/0.3, 1/0.1) / 15 = (1/9, 2/9, 6/9)
    #   loss = -log(1/9) - log(2/9) - log(6/9) = log(9 * 4.5 * 1.5) = log(60.75)
    # Without the correction each row is log 3.
    items = ["pop", "mid", "rare"]
    users, zeros = [[1.0, 0.0]] * 3, [[0.0, 0.0]] * 3
    on = fixed_model(config(), users, items, zeros, counts=[6, 3, 1])
    off = fixed_model(config(logq_correction=False), users, items, zeros)
    for model, expected in ((on, math.log(60.75)), (off, 3 * math.log(3))):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch(items), training=True)
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        grads = tape.gradient(loss, model.candidate_tower.vectors)
        grad_on_score = tf.convert_to_tensor(grads).numpy()[1:, 0]  # d loss / d score column
        if model is on:
            # column gradient = sum_i softmax_ij - 1 = 3 * p_j - 1
            np.testing.assert_allclose(grad_on_score, [-2 / 3, -1 / 3, 1.0], atol=1e-6)
        else:
            np.testing.assert_allclose(grad_on_score, [0.0, 0.0, 0.0], atol=1e-6)
    # The popular item's row loss rises (log 3 -> log 9) and its weight as a negative falls
    # (1/3 -> 1/9): gradient descent lifts it (-2/3 < 0), undoing the in-batch softmax's
    # over-penalty on items that are drawn as negatives in proportion to their popularity,
    # while the rare item, over-weighted as a negative (2/3), is pushed down.


def test_logq_loss_matches_formula_on_fixed_embeddings():
    items = ["pop", "mid", "rare"]
    users = [[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]]
    cands = [[0.4, 0.1], [0.9, -0.2], [-0.5, 0.7]]
    counts = [6, 3, 1]
    model = fixed_model(config(temperature=0.5), users, items, cands, counts=counts)
    scores = np.array(users) @ np.array(cands).T / 0.5
    # Raw probabilities here, relative ones in the model: a per-row shift, same softmax.
    expected = softmax_loss(scores, log_q=np.log(np.array(counts) / 10))
    assert float(model.compute_loss(batch(items))) == pytest.approx(expected, rel=1e-5)
    plain = softmax_loss(scores)
    assert abs(expected - plain) > 0.1


def test_accidental_hits_removed_by_hand():
    # Items (a, b, a): rows 0 and 2 share item a, so each drops the other as a negative.
    # Equal scores: rows 0 and 2 -> log 2, row 1 -> log 3; total log 12 (3 log 3 without).
    items = ["a", "b"]
    users, zeros = [[1.0, 0.0]] * 3, [[0.0, 0.0]] * 2
    batch_items = ["a", "b", "a"]
    on = fixed_model(config(logq_correction=False, remove_accidental_hits=True),
                     users, items, zeros)
    off = fixed_model(config(logq_correction=False), users, items, zeros)
    assert float(on.compute_loss(batch(batch_items))) == pytest.approx(math.log(12), rel=1e-6)
    assert float(off.compute_loss(batch(batch_items))) == pytest.approx(3 * math.log(3), 1e-6)

    users = [[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]]
    cands = [[0.4, 0.1], [0.9, -0.2]]
    model = fixed_model(config(logq_correction=False, remove_accidental_hits=True),
                        users, items, cands)
    cand_rows = np.array([cands[0], cands[1], cands[0]])
    same = [[a == b for b in batch_items] for a in batch_items]
    expected = softmax_loss(np.array(users) @ cand_rows.T, positives_mask=same)
    assert float(model.compute_loss(batch(batch_items))) == pytest.approx(expected, rel=1e-5)


def test_hard_negatives_keep_only_the_top_scoring_negative():
    items = ["a", "b", "c", "d"]
    users = [[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0], [0.7, 0.7]]
    cands = [[0.4, 0.1], [0.9, -0.2], [-0.5, 0.7], [0.3, 0.3]]
    model = fixed_model(config(logq_correction=False, num_hard_negatives=1), users, items, cands)
    scores = np.array(users) @ np.array(cands).T
    expected = softmax_loss(scores, hard_negatives=1)
    assert float(model.compute_loss(batch(items))) == pytest.approx(expected, rel=1e-5)
    assert expected < softmax_loss(scores) - 0.1


def test_config_is_a_tower_and_training_config_and_validates():
    cfg = RetrievalConfig(embedding_dim=16, epochs=2)
    assert isinstance(cfg, TowerConfig) and isinstance(cfg, TrainingConfig)
    assert cfg.embedding_dim == 16 and cfg.history_len == 20 and cfg.logq_correction
    with pytest.raises(ValueError, match="temperature"):
        RetrievalConfig(temperature=0.0)
    with pytest.raises(ValueError, match="item_counts"):
        build_retrieval_model(RetrievalConfig(), ["u"], ["i"])

    class Vocab:  # duck-typed like features.vocab.Vocabulary
        tokens = np.array(["pop", "rare"])
        counts = np.array([3, 1])

    model = build_retrieval_model(RetrievalConfig(embedding_dim=4, hidden_dims=(4,)),
                                  ["u"], Vocab())
    np.testing.assert_allclose(model.sampling_probability(tf.constant(["pop", "rare"])),
                               [1.0, 1 / 3], rtol=1e-6)


def two_group_data(seed=0):
    """Users u0-u3 only ever pick items a0-a5 (genre A), users u4-u7 only b0-b5 (genre B)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(8):
        group = "a" if u < 4 else "b"
        for step, k in enumerate(rng.permutation(6)):
            rows.append((f"u{u}", f"{group}{k}", group.upper(), step))
    history_len = 4
    by_user = {}
    feats = {"user_id": [], "item_id": [], "item_genres": [], "history": []}
    for user, item, genre, _ in rows:
        past = by_user.setdefault(user, [])
        hist = ([""] * history_len + past)[-history_len:]
        feats["user_id"].append(user)
        feats["item_id"].append(item)
        feats["item_genres"].append(genre)
        feats["history"].append(hist)
        past.append(item)
    feats["history_mask"] = [[h != "" for h in hist] for hist in feats["history"]]
    return {k: np.array(v) for k, v in feats.items()}


@pytest.mark.slow
def test_two_groups_are_learned(tmp_path):
    data = two_group_data()
    users = [f"u{u}" for u in range(8)]
    items = [f"{g}{k}" for g in "ab" for k in range(6)]
    counts = np.array([np.sum(data["item_id"] == i) for i in items])
    cfg = RetrievalConfig(embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                          hidden_dims=(16,), history_len=4, learning_rate=0.05, epochs=15,
                          batch_size=16, patience=0, verbose=0, seed=0, monitor="example_loss",
                          remove_accidental_hits=True, user_id_dropout=0.3)
    model = build_retrieval_model(cfg, users, items, counts, genre_vocab=["A", "B"])
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(48, seed=0).batch(cfg.batch_size)
    result = fit_model(model, ds, None, cfg, str(tmp_path))
    assert result.history["example_loss"][-1] < result.history["example_loss"][0]

    item_vecs = model.candidate_tower({
        "item_id": tf.constant(items + ["new_a", "new_b"]),
        "item_genres": tf.constant(["A"] * 6 + ["B"] * 6 + ["A", "B"])}).numpy()
    queries = {
        "user_id": tf.constant(users + ["stranger"]),
        "history": tf.constant([["", "", "", ""]] * 8 + [["", "", "a0", "a1"]]),
    }
    scores = model.query_tower(queries).numpy() @ item_vecs[:12].T
    ranking = np.argsort(-scores, axis=1, kind="stable")
    in_group_a = np.arange(12) < 6
    for u in range(8):
        expect_a = u < 4
        assert all(in_group_a[ranking[u, :3]] == expect_a), (u, ranking[u])
    # An unknown user with a group-A history gets group-A items first (user_id_dropout taught
    # the OOV bucket + history path to stand alone).
    assert all(in_group_a[ranking[8, :3]])
    # Cold items (unknown ids) are placed by their genre alone.
    cold = model.query_tower(queries).numpy()[:8] @ item_vecs[12:].T
    assert np.all((cold[:, 0] > cold[:, 1]) == (np.arange(8) < 4))
