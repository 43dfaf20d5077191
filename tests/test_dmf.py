"""Hybrid DMF: config checks, the cold-item path, and that it learns a known structure.

Tiny data with two user groups: group A interacts only with items a0..a9, group B only with
b0..b9. Item text vectors are one-hot on the group axis (plus a small per-item part). After
training, every user must rank their group's unseen items above the other group's, and a cold
item (no column) whose text says "A" must be ranked above a cold "B" item by A users.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.models.dmf import DMFConfig, DMFHybrid


def _data():
    rng = np.random.default_rng(0)
    rows = []
    for g in "ab":
        for u in range(12):
            for j, i in enumerate(rng.choice(10, size=6, replace=False)):
                rows.append((f"{g}-user{u}", f"{g}{i}", 1.0, 100 * u + j))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    ids = [f"{g}{i}" for g in "ab" for i in range(10)] + ["cold-a", "cold-b"]
    vecs = np.zeros((len(ids), 6), np.float32)
    for r, item in enumerate(ids):
        g = item.split("-")[-1][0]
        vecs[r, 0 if g == "a" else 1] = 1.0
        vecs[r, 2 + r % 4] = 0.2
    return frame, ItemVectors(ids=ids, vectors=vecs, model="toy")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_negatives"):
        DMFConfig(num_negatives=0)
    with pytest.raises(ValueError, match="column_dropout"):
        DMFConfig(column_dropout=1.0)
    with pytest.raises(ValueError, match="item_vectors"):
        DMFHybrid(DMFConfig(use_text=True))


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_dmf_hybrid_learns_groups_and_ranks_cold_items_by_text(loss):
    frame, vectors = _data()
    model = DMFHybrid(DMFConfig(hidden_dims=(16,), embedding_dim=8, num_negatives=5,
                                epochs=30, batch_size=32, learning_rate=1e-2, loss=loss,
                                column_dropout=0.3),
                      item_vectors=vectors)
    model.fit(frame)
    items = [f"{g}{i}" for g in "ab" for i in range(10)]
    users = sorted(frame.user_id.unique())
    scores = model.score(users, items)
    assert scores.shape == (len(users), 20)
    own = np.array([[it[0] == u[0] for it in items] for u in users])
    # Mean own-group score beats mean other-group score for every single user.
    assert ((scores * own).sum(1) / own.sum(1) > (scores * ~own).sum(1) / (~own).sum(1)).all()
    cold = model.score(users, ["cold-a", "cold-b"])
    a_users = np.array([u.startswith("a") for u in users])
    assert (cold[a_users, 0] > cold[a_users, 1]).all()
    assert (cold[~a_users, 1] > cold[~a_users, 0]).all()
    assert model.user_embeddings(["nobody"]).shape == (1, 8)


def test_dmf_without_text_uses_validation_to_choose_epochs():
    frame, _ = _data()
    val = frame.groupby("user_id").tail(1)
    train = frame.drop(val.index)
    model = DMFHybrid(DMFConfig(use_text=False, hidden_dims=(16,), embedding_dim=8,
                                num_negatives=5, epochs=4, patience=10, batch_size=32,
                                learning_rate=1e-2), validation_evaluator=TopKEvaluator)
    model.fit(train, validation=val)
    assert [r["epoch"] for r in model.selection] == [1, 2, 3, 4]
    assert model.best_epoch == int(np.argmax([r["ndcg@10"] for r in model.selection])) + 1
    assert "chosen on validation" in model.notes


def test_dmf_needs_an_evaluator_to_fit_with_validation():
    frame, _ = _data()
    model = DMFHybrid(DMFConfig(use_text=False, hidden_dims=(4,), embedding_dim=2, epochs=1))
    with pytest.raises(ValueError, match="validation_evaluator"):
        model.fit(frame, validation=frame.groupby("user_id").tail(1))


def test_text_popularity_prior_is_leave_one_out_and_weighted_on_validation():
    from recommenders_tf.features.text_prior import neighbor_popularity

    # Items whose text points at axis 0 are popular (most users have them), axis-1 items rare.
    rng = np.random.default_rng(0)
    hits, niche = [f"h{i}" for i in range(6)], [f"n{i}" for i in range(6)]
    rows = [(f"u{u}", it, 1.0, t) for u in range(30)
            for t, it in enumerate(list(rng.choice(hits, 4, replace=False))
                                   + ([str(rng.choice(niche))] if u % 3 == 0 else []))]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    ids = hits + niche + ["cold-hit", "cold-niche", "new-hit", "new-niche"]
    vecs = np.array([[1.0, 0.1 * (r % 3), 0.0] if i.startswith(("h", "cold-h", "new-h")) else
                     [0.0, 0.1 * (r % 3), 1.0] for r, i in enumerate(ids)], np.float32)
    vectors = ItemVectors(ids=ids, vectors=vecs, model="toy")
    val = pd.DataFrame([(f"u{u}", "cold-hit" if u % 2 else "cold-niche", 1.0, 99)
                        for u in range(30)], columns=frame.columns)
    model = DMFHybrid(DMFConfig(hidden_dims=(8,), embedding_dim=4, num_negatives=5, epochs=3,
                                batch_size=16, learning_rate=1e-2, prior_neighbors=3,
                                prior_weights=(0.0, 2.0, 50.0)),
                      item_vectors=vectors, validation_evaluator=TopKEvaluator)
    model.fit(frame, validation=val, validation_candidates=["cold-hit", "cold-niche"])
    # The refit covers train + validation, so the validation's items are train items now.
    seen = pd.concat([frame, val])
    train_items = sorted(seen.item_id.unique())
    counts = seen.item_id.value_counts().reindex(train_items).to_numpy()
    text = vectors.lookup(train_items)[0]
    raw = neighbor_popularity(text, text, counts, 3, exclude=np.arange(len(train_items)))
    np.testing.assert_allclose(model.item_prior(train_items), (raw - raw.mean()) / raw.std(),
                               rtol=1e-5, atol=1e-5)
    cold_raw = neighbor_popularity(vectors.lookup(["new-hit"])[0], text, counts, 3)
    np.testing.assert_allclose(model.item_prior(["new-hit"]),
                               (cold_raw - raw.mean()) / raw.std(), rtol=1e-5, atol=1e-5)
    assert model.item_prior(["new-hit"])[0] > model.item_prior(["new-niche"])[0]

    # The served weight is the validation's choice at the chosen epoch, and scores add it.
    weight = model.selection[model.best_epoch - 1]["prior_weight"]
    assert weight in (0.0, 2.0, 50.0) and model._state.prior_weight == weight
    users, items = ["u1", "u2"], ["new-hit", "new-niche", "h0"]
    served = model.score(users, items)
    model._state.prior_weight = 0.0
    base = model.score(users, items)
    np.testing.assert_allclose(served - base, np.tile(weight * model.item_prior(items), (2, 1)))
    # Each epoch's record is the best weight by validation NDCG@10, measured the same way.
    evaluator = TopKEvaluator(frame, val, ks=(10,), candidate_items=["cold-hit", "cold-niche"])
    prior = model.item_prior(evaluator.item_ids)[None, :]
    by_weight = {w: evaluator.evaluate(lambda us: model.score(us, evaluator.item_ids)
                                       + w * prior).metrics["ndcg@10"]
                 for w in (0.0, 2.0, 50.0)}
    got = model._validation_metrics(evaluator)
    assert got["ndcg@10"] == pytest.approx(max(by_weight.values()))
    assert by_weight[got["prior_weight"]] == pytest.approx(max(by_weight.values()))
    assert "text popularity prior of 3 neighbours (weight" in model.notes
    with pytest.raises(ValueError, match="prior_neighbors"):
        DMFConfig(prior_neighbors=5, use_text=False)
