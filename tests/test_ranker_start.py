"""The ranker's peer score feature (implicit-ALS fold-in) and its start from a blend."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recommenders_tf  # noqa: F401

from recommenders_tf.cascade.fold_in import als_fold_in
from recommenders_tf.cascade.start import PEER_ALONE, choose_start, start_weights
from recommenders_tf.evaluation.peers import ImplicitALS
from recommenders_tf.models.candidate_features import CandidateContext
from recommenders_tf.models.ranking import (RankingConfig, build_ranking_model,
                                            fit_ranking_model, predict_lists)
from recommenders_tf.models.ranking_data import RankingLists, list_ndcg_at_10


def _interactions(users=60, items=40, per_user=8, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame([(f"u{u}", f"i{i}", 1.0, t) for u in range(users)
                         for t, i in enumerate(rng.choice(items, per_user, replace=False))],
                        columns=["user_id", "item_id", "rating", "timestamp"])


def test_fold_in_tables_give_implicits_own_user_factors():
    """Σ_h P[h] is what implicit's own solver computes for that history (the oracle), for a
    history no user of the fit had; items the fit never saw get zero rows."""
    peer = ImplicitALS(grid={}, factors=8, regularization=1.0).fit(_interactions())
    items = [f"i{i}" for i in range(40)] + ["never-seen"]
    y, p = peer.fold_in_tables(items)
    assert y.shape == p.shape == (41, 8) and not y[-1].any() and not p[-1].any()
    history = ["i3", "i7", "i11", "i30"]
    mine = p[[items.index(h) for h in history]].sum(0)
    rows = [peer._train_items.get_loc(h) for h in history]
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), ([0] * len(rows), rows)),
                           shape=(1, len(peer._train_items)))
    oracle = peer._model.recalculate_user(0, matrix)
    np.testing.assert_allclose(mine, oracle, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        ImplicitALS(grid={}, factors=4, alpha=2.0).fit(_interactions()).fold_in_tables(items)
    with pytest.raises(RuntimeError, match="before fit"):
        ImplicitALS(grid={}).fold_in_tables(items)


def test_als_factors_do_not_depend_on_the_thread_count():
    """The cascade fits its ALS peer on every core (`cascade.fold_in`): that is only safe
    while the factors are the same on one thread and on several."""
    frame = _interactions(users=300, items=120, per_user=12)
    items = [f"i{i}" for i in range(120)]
    params = {"factors": 16, "regularization": 1.0, "alpha": 1.0}
    one = als_fold_in(frame, items, params, seed=3, num_threads=1)
    several = als_fold_in(frame, items, params, seed=3, num_threads=4)
    for a, b in zip(one, several):
        np.testing.assert_array_equal(a, b)
    assert np.abs(one[0]).sum() > 0


def test_peer_z_is_the_fold_in_score_standardised_within_the_list():
    items = ["a", "b", "c", "d"]
    y = np.array([[1, 0], [0, 1], [1, 1], [2, 0]], np.float32)
    p = np.array([[1, 0], [0, 2], [0, 0], [1, 1]], np.float32)
    layer = CandidateContext(items, counts=[1, 1, 1, 1], fold_in=(y, p))
    assert layer.feature_names[-1] == "peer_z"
    # Padding anywhere and an unknown history id add nothing; "" candidates get zeros.
    history = np.array([["a", "", "zz", "b"], ["", "", "", "d"]], object)
    cand = np.array([["a", "b", "c", ""], ["d", "c", "b", "a"]], object)
    got = layer({"item_id": cand, "history": history,
                 "retrieval_score": np.zeros((2, 4), np.float32)}).numpy()[..., -1]
    user = np.array([[1, 2], [1, 1]], np.float32)  # p[a] + p[b]; p[d]
    raw = np.stack([[y[items.index(c)] @ user[r] if c else 0.0 for c in cand[r]]
                    for r in range(2)])
    mask = cand != ""
    for r in range(2):
        real = raw[r][mask[r]]
        expected = (real - real.mean()) / np.sqrt(real.var() + 1e-6)
        np.testing.assert_allclose(got[r][mask[r]], expected, rtol=1e-5, atol=1e-5)
    assert got[0, 3] == 0.0
    layer.set_tables([1, 1, 1, 1], fold_in=(2 * y, p))  # swapped in place
    np.testing.assert_array_equal(layer.fold_y.values.numpy()[1:], 2 * y)
    with pytest.raises(ValueError, match="fold_in"):
        layer.set_tables([1, 1, 1, 1])
    with pytest.raises(ValueError, match="width"):
        layer.set_tables([1, 1, 1, 1], fold_in=(np.ones((4, 3)), np.ones((4, 3))))
    with pytest.raises(ValueError, match="fold_in"):
        CandidateContext(items, counts=[1, 1, 1, 1], fold_in=(y[:3], p[:3]))


def test_choose_start_picks_the_best_blend_on_the_lists():
    names = ["retrieval_z", "retrieval_gap", "popularity", "peer_z"]
    # List 0: the positive is 2nd by retrieval and 3rd by the peer, 1st by their sum.
    retrieval = np.array([[3.0, 2.9, 0.0]])
    peer = np.array([[-5.0, 1.0, 2.0]])
    raw = np.zeros((1, 3, 4))
    raw[..., 0], raw[..., 3] = retrieval, peer
    labels = np.array([[0.0, 1.0, 0.0]])
    mask = np.ones((1, 3), bool)
    weight, info = choose_start(raw, names, labels, mask, grid=(0.0, 0.5, 2.0, PEER_ALONE))
    curve = dict((w, v) for w, v in info["curve"])
    assert curve[0.0] < 1.0 and curve["peer alone"] < 1.0 and curve[0.5] == 1.0
    assert weight == 0.5 and info["weight"] == 0.5  # ties (0.5 and 2.0) go to the first
    assert start_weights(PEER_ALONE) == {"retrieval_z": 0.0, "peer_z": 1.0}
    with pytest.raises(ValueError, match="peer_z"):
        choose_start(raw[..., :3], names[:3], labels, mask)
    with pytest.raises(ValueError, match=">= 0"):
        start_weights(-1.0)


def _score_lists(n_lists=96, size=8, seed=0, best="max"):
    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in range(30)]
    item_id = np.array([rng.choice(items, size, replace=False) for _ in range(n_lists)], object)
    score = rng.normal(size=(n_lists, size)).astype(np.float32)
    target = score.max(1, keepdims=True) if best == "max" else score.min(1, keepdims=True)
    label = (score == target).astype(np.float32)
    lists = RankingLists(np.array([f"u{r}" for r in range(n_lists)], object),
                         np.full((n_lists, 2), "", object), item_id, label,
                         np.ones((n_lists, size), bool), {"retrieval_score": score})
    interactions = pd.DataFrame({"user_id": lists.user_id, "item_id": item_id[:, 0],
                                 "timestamp": 0})
    return items, lists, interactions


def _ranker_config(epochs=8):
    return RankingConfig(loss="softmax", id_features=False, num_cross_layers=1,
                         deep_dims=(8,), din_units=0, history_len=2, embedding_dim=4,
                         epochs=epochs, patience=0, learning_rate=0.05, verbose=0)


def test_start_from_makes_the_model_score_the_blend():
    items, lists, _ = _score_lists()
    layer = CandidateContext(items, counts=np.arange(30) + 1.0)
    layer.adapt(lists.features())
    model = build_ranking_model(_ranker_config(), ["u"], items, context_features=layer)
    predict_lists(model, lists)
    model.start_from({"retrieval_z": 1.0, "popularity": 0.5})
    raw = layer.raw_values(lists.features())
    blend = raw[..., 0] + 0.5 * raw[..., 2]
    offset = predict_lists(model, lists) - blend
    np.testing.assert_allclose(offset, offset[0, 0], atol=1e-4)  # one constant everywhere
    with pytest.raises(ValueError, match="peer_z"):
        model.start_from({"peer_z": 1.0})


def _fit_from_retrieval_order(tmp_path, best, epochs):
    """A context-only ranker fitted from the start {"retrieval_z": 1} on lists whose positive
    is the retrieval score's `best` ("max" or "min") item."""
    items, lists, interactions = _score_lists(best=best)
    fit, held = lists.split(0.25, seed=0)
    layer = CandidateContext(items, counts=np.ones(30))
    layer.adapt(fit.features())
    model, result, _ = fit_ranking_model(_ranker_config(epochs=epochs), fit, held, interactions,
                                         str(tmp_path), context_features=layer,
                                         start={"retrieval_z": 1.0})
    return layer, held, model, result


def test_a_fit_that_cannot_beat_its_start_serves_the_start(tmp_path):
    """Started from the retrieval order on lists whose positive is the retrieval's best
    (held-out NDCG@10 = 1), no training beats it: the start is what is served."""
    layer, held, model, result = _fit_from_retrieval_order(tmp_path, "max", epochs=3)
    assert result.start["held_out_ndcg_10_start"] == pytest.approx(1.0)
    assert result.start["kept"] == "start"
    scores = predict_lists(model, held)
    assert list_ndcg_at_10(held.label, scores, held.mask) == pytest.approx(1.0)
    offset = scores - layer.raw_values(held.features())[..., 0]
    np.testing.assert_allclose(offset, offset[0, 0], atol=1e-4)


def test_a_fit_that_beats_its_start_serves_the_trained_model(tmp_path):
    """Started from the retrieval order where the positive is its worst item, training learns
    the opposite order and is kept."""
    layer, _, _, result = _fit_from_retrieval_order(tmp_path, "min", epochs=15)
    start = result.start
    assert start["kept"] == "trained"
    assert start["held_out_ndcg_10_trained"] > 0.9 > 0.5 > start["held_out_ndcg_10_start"]
    items, lists, interactions = _score_lists()
    with pytest.raises(ValueError, match="held-out"):
        fit_ranking_model(_ranker_config(), lists, None, interactions, str(tmp_path / "x"),
                          context_features=layer, start={"retrieval_z": 1.0})
