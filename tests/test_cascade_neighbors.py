"""EASE-weighted neighbour tables against the EASE closed form they are cut from."""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.neighbors import (choose_ease_l2, ease_neighbors, neighbor_method,
                                               neighbor_table)
from recommenders_tf.evaluation.peer_base import binary_matrix
from recommenders_tf.evaluation.peers_item_item import ease_weights
from recommenders_tf.models.candidate_features import item_neighbors


def _interactions(seed=0, users=40, items=12):
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", f"i{i}") for u in range(users) for i in range(items)
            if rng.random() < 0.15 + 0.5 * ((u + i) % 3 == 0)]
    return pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        timestamp=np.arange(len(rows)), rating=1.0)


def test_a_full_table_sums_to_the_ease_score_of_any_history():
    frame = _interactions()
    items = [f"i{i}" for i in range(12)]
    idx, sim = ease_neighbors(frame, items, neighbors=20, l2=5.0)
    weights = ease_weights(binary_matrix(frame, pd.Index(items))[0], 5.0)
    history = [0, 3, 7]
    for j in range(12):
        table_score = sum(s for i, s in zip(idx[j], sim[j]) if i in history)
        assert table_score == pytest.approx(weights[history, j].sum(), abs=1e-5)
    assert (idx != np.arange(12)[:, None]).all()  # the zero diagonal never appears


def test_a_cut_table_keeps_the_largest_magnitudes_of_each_column():
    frame = _interactions(1)
    items = [f"i{i}" for i in range(12)]
    weights = ease_weights(binary_matrix(frame, pd.Index(items))[0], 5.0)
    idx, sim = ease_neighbors(frame, items, neighbors=3, l2=5.0)
    for j in range(12):
        expected = np.sort(np.abs(weights[:, j]))[::-1][:3]
        np.testing.assert_allclose(np.abs(sim[j]), expected, rtol=1e-5)
        np.testing.assert_allclose(sim[j], weights[idx[j], j], rtol=1e-5)


def test_the_l2_is_the_peer_grid_choice_and_cosine_is_the_block_table():
    frame = _interactions(2)
    items = sorted(frame["item_id"].unique())
    train, val = frame.iloc[: len(frame) * 3 // 4], frame.iloc[len(frame) * 3 // 4:]
    l2, note = choose_ease_l2(train, val, items)
    assert l2 in (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0) and "chosen on validation" in note
    cos = neighbor_table(frame, items, 4, "cosine")
    np.testing.assert_array_equal(cos[0], item_neighbors(frame, items, 4)[0])


def test_ease_is_refused_above_its_item_cap_and_unknown_weights_everywhere():
    assert neighbor_method("ease", 100, 100) == "ease"
    with pytest.raises(ValueError, match="ease_max_items"):
        neighbor_method("ease", 101, 100)
    with pytest.raises(ValueError, match="neighbor weights"):
        neighbor_method("svd", 10, 100)
    with pytest.raises(ValueError, match="neighbor_weights"):
        CascadeConfig(neighbor_weights="svd")
