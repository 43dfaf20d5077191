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
