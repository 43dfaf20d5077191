"""TwoTowerRecommender: peer interface (shapes, column alignment), a tiny two-group dataset it
must learn, epoch selection on validation followed by the refit, and item features."""
import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401

from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.models.recommender import (ItemFeatureTable, TwoTowerConfig,
                                                TwoTowerRecommender, title_tokens)

GROUP_ITEMS = {"a": [f"ia{k}" for k in range(5)], "b": [f"ib{k}" for k in range(5)]}


def two_groups(users_per_group=8):
    """User j of group g has every item of g except g's item j % 5, in a fixed time order."""
    rows = []
    for group, items in GROUP_ITEMS.items():
        for j in range(users_per_group):
            missing = j % 5
            seen = [items[k] for k in range(5) if k != missing]
            for t, item in enumerate(seen):
                rows.append((f"{group}{j}", item, 4.0, 100 * j + t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype(
        {"user_id": object, "item_id": object, "rating": "float32", "timestamp": "int64"})


def tiny_config(**overrides):
    values = dict(embedding_dim=8, id_embedding_dim=8, hidden_dims=(), history_len=3,
                  temperature=0.1, logq_correction=False, use_genres=False,
                  optimizer="adam", learning_rate=0.05, batch_size=16, epochs=15, patience=0,
                  seed=0, verbose=0)
    return TwoTowerConfig(**{**values, **overrides})


@pytest.mark.slow
def test_ranks_the_missing_in_group_item_first():
    train = two_groups()
    # Id-only towers: with four fixed-order items per user, a history branch would mostly
    # memorise the order; the group structure is what this test is about.
    rec = TwoTowerRecommender(tiny_config(history_len=0)).fit(train)
    # The "test" frame only names the users to rank; top-k does not look at its items.
    evaluator = TopKEvaluator(train, train.groupby("user_id").head(1))
    top = evaluator.topk(lambda users: rec.score(users, evaluator.item_ids), k=1)
    # After excluding the 4 items they have, each user's best item must be the one item of
    # their own group they lack (the other 5 unseen items belong to the other group).
    assert len(top) == 16
    for user, items in top.items():
        group, j = user[0], int(user[1:])
        assert items == [GROUP_ITEMS[group][j % 5]], (user, items)


@pytest.mark.slow
def test_score_shape_and_column_alignment():
    train = two_groups()
    rec = TwoTowerRecommender(tiny_config(epochs=2)).fit(train)
    items = np.array(sorted(train.item_id.unique()), dtype=object)
    users = ["a0", "b3", "stranger"]
    scores = rec.score(users, items)
    assert scores.shape == (3, 10) and np.isfinite(scores).all()
    # Columns follow the item_ids argument, whatever its order.
    perm = np.array([7, 2, 9, 0, 1, 3, 8, 4, 6, 5])
    np.testing.assert_allclose(rec.score(users, items[perm]), scores[:, perm], rtol=1e-6)
    # A score is the dot product of the two towers' outputs on the raw features.
    import tensorflow as tf
    # b3 lacks ib3 and saw ib0, ib1, ib2, ib4 in that order: its last three are ib1, ib2, ib4.
    q = rec.query_tower({"user_id": tf.constant(["b3"]),
                         "history": tf.constant([["ib1", "ib2", "ib4"]])}).numpy()
    c = rec.candidate_tower({"item_id": tf.constant(["ia0", "ib3"])}).numpy()
    np.testing.assert_allclose(scores[1, [0, 8]], (q @ c.T)[0], rtol=1e-5, atol=1e-6)
    # Default columns: the fitted items in sorted order.
    np.testing.assert_allclose(rec.score(users), scores, rtol=1e-6)
    assert rec.query_features(["stranger"])["history"].tolist() == [["", "", ""]]


@pytest.mark.slow
def test_fit_chooses_epochs_on_validation_then_refits_on_train_and_validation():
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    # An item seen only in validation can only be in the final vocabulary through the refit.
    validation = validation.copy()
    validation.loc[validation.index[0], "item_id"] = "new-item"
    rec = TwoTowerRecommender(tiny_config(epochs=4, patience=2)).fit(train, validation)
    values = [r["ndcg@10"] for r in rec.selection]
    assert 1 <= len(values) <= 4
    if len(values) < 4:  # stopped early: the last `patience` epochs did not improve
        assert max(values[-2:]) <= max(values[:-2])
    assert rec.best_epoch == int(np.argmax(values)) + 1
    assert rec.epochs_trained == rec.best_epoch
    assert "new-item" in rec.vocabularies["item_id"]
    assert rec.vocabularies["item_id"].count("new-item") == 1
    assert set(rec.vocabularies["user_id"].tokens) == set(data.user_id)
    assert rec.epochs_this_session == {"selection": len(rec.selection),
                                       "final": rec.best_epoch}
    assert "chosen on validation by ndcg@10" in rec.notes
    assert rec.fit_seconds > 0 and rec.examples_per_second > 0


def test_title_tokens_match_the_title_tower_standardisation():
    assert title_tokens(["Toy Story (1995)", "Don't Stop: Now!"]) == [
        "toy", "story", "1995", "dont", "stop", "now"]


def test_item_feature_table_fills_unknown_items():
    items = pd.DataFrame({"item_id": ["i1", "i2"], "title": ["One", "Two"],
                          "genres": ["Drama|War", ""]})
    vectors = ItemVectors(ids=["i1", "i2"], vectors=np.array([[1, 0], [0, 1]], np.float32))
    table = ItemFeatureTable(items, use_genres=True, use_titles=True, text_vectors=vectors)
    out = table(["i2", "zz", "i1"])
    assert out["item_genres"].tolist() == ["", "", "Drama|War"]
    assert out["item_title"].tolist() == ["Two", "", "One"]
    np.testing.assert_array_equal(out["item_text_vector"], [[0, 1], [0, 0], [1, 0]])
    assert sorted(table.feature_spec()) == ["item_genres", "item_id", "item_text_vector",
                                             "item_title"]
    assert table.feature_spec()["item_text_vector"].shape.as_list() == [None, 2]
    with pytest.raises(ValueError, match="no vector for 1 train item"):
        table.check_covers(["i1", "i9"], "train")
    with pytest.raises(ValueError, match="'genres' was asked for"):
        ItemFeatureTable(items.drop(columns="genres"), use_genres=True, use_titles=False)


def test_bad_select_metric_is_refused():
    with pytest.raises(ValueError, match="select_metric"):
        TwoTowerConfig(select_metric="auc")
    with pytest.raises(ValueError, match="select_metric"):
        TwoTowerRecommender(tiny_config(), select_metric="auc")


def test_for_dataset_switches_genres_on_only_when_the_items_have_them():
    from recommenders_tf.data.schema import RecDataset

    items = pd.DataFrame({"item_id": ["i1"], "title": ["One"], "text": ["One."]})
    data = RecDataset(name="x", interactions=two_groups(), items=items)
    rec = TwoTowerRecommender.for_dataset(data, item_ids=["i1"], seed=3, epochs=2)
    assert rec.item_features.names == ["item_id"]
    assert (rec.config.seed, rec.config.epochs, rec.config.verbose) == (3, 2, 0)
    data.items = items.assign(genres=["Drama"])
    assert TwoTowerRecommender.for_dataset(data).item_features.names == ["item_id", "item_genres"]
