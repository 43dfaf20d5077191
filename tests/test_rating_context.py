"""Rating context: train tables and per-candidate features against NumPy oracles, cross-fitting
without an entry's own rating, rated histories in the lists, and a tiny fit end to end."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recommenders_tf.models.ranking import RankingConfig
from recommenders_tf.serving.ranking_export import export_ranking
from recommenders_tf.models.ranking_data import (HISTORY_RATING, histories_for, pair_lists,
                                                 rated_histories_for, rating_lists)
from recommenders_tf.models.rating_context import (CLIP, RatingContext,
                                                   RatingContextConfig, context_values,
                                                   cross_fit, fit_rating_model,
                                                   predict_ratings, rating_tables,
                                                   text_neighbors)

ITEMS = [f"i{k}" for k in range(8)]


def _ratings(n_users=12, seed=0, density=0.6):
    rng = np.random.default_rng(seed)
    rows = [(f"u{u}", item, float(rng.integers(1, 6)), int(rng.integers(0, 1000)))
            for u in range(n_users) for item in ITEMS if rng.random() < density]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def _dense_oracle(frame, ids, neighbors, item_shrinkage=25.0, user_shrinkage=10.0,
                  similarity_shrinkage=100.0, iterations=15, factors=3, reg=15.0,
                  factor_iterations=12, seed=0):
    users = sorted(frame.user_id.unique())
    r = np.full((len(users), len(ids)), np.nan)
    for row in frame.itertuples():
        r[users.index(row.user_id), ids.index(row.item_id)] = row.rating
    seen = ~np.isnan(r)
    mu = np.nanmean(r)
    bu, bi = np.zeros(len(users)), np.zeros(len(ids))
    for _ in range(iterations):
        bi = np.nansum(r - mu - bu[:, None], 0) / (seen.sum(0) + item_shrinkage)
        bu = np.nansum(r - mu - bi[None, :], 1) / (seen.sum(1) + user_shrinkage)
    e = np.where(seen, r - mu - bu[:, None] - bi[None, :], 0.0)
    norms = np.sqrt((e ** 2).sum(0)) + 1e-9
    co = seen.T.astype(float) @ seen.astype(float)
    sim = (e.T @ e) / np.outer(norms, norms) * co / (co + similarity_shrinkage)
    np.fill_diagonal(sim, 0.0)
    top = {}
    for i in range(len(ids)):
        order = [j for j in np.argsort(-sim[i], kind="stable") if sim[i, j] > 0][:neighbors]
        top[i] = {j: sim[i, j] for j in order}
    # ALS on the residuals, each row's ridge solve over its own ratings only.
    q = np.random.default_rng(seed).normal(0.0, 0.1, (len(ids), factors))
    for _ in range(factor_iterations):
        p = np.stack([np.linalg.solve(q[seen[u]].T @ q[seen[u]] + reg * np.eye(factors),
                                      q[seen[u]].T @ e[u, seen[u]]) for u in range(len(users))])
        q = np.stack([np.linalg.solve(p[seen[:, i]].T @ p[seen[:, i]] + reg * np.eye(factors),
                                      p[seen[:, i]].T @ e[seen[:, i], i])
                      if seen[:, i].any() else np.zeros(factors) for i in range(len(ids))])
    return mu, bi, top, q


def test_rating_tables_match_a_dense_oracle():
    frame = _ratings()
    tables = rating_tables(frame, ITEMS, neighbors=3, factors=3, block=3)  # blocks < items
    mu, bi, top, q = _dense_oracle(frame, ITEMS, neighbors=3)
    np.testing.assert_allclose(tables.item_factors, q, rtol=1e-4, atol=1e-5)
    assert tables.global_mean == pytest.approx(mu)
    np.testing.assert_allclose(tables.item_bias, bi, rtol=1e-5, atol=1e-6)
    for i in range(len(ITEMS)):
        got = {int(j): s for j, s in zip(tables.neighbor_idx[i], tables.neighbor_sim[i])
               if j >= 0}
        assert set(got) == set(top[i])
        for j, s in top[i].items():
            assert got[j] == pytest.approx(s, rel=1e-4)


def _oracle_features(tables, vectors, k, temperature, item, history, ratings):
    pos = {x: n for n, x in enumerate(ITEMS)}
    mu, b = tables.global_mean, tables.item_bias
    known = [(pos[j], r) for j, r in zip(history, ratings) if j in pos]
    bu = sum(r - mu - b[p] for p, r in known) / (len(known) + tables.user_shrinkage)
    residual = {p: r - mu - bu - b[p] for p, r in known}
    c = pos.get(item)
    bc = b[c] if c is not None else 0.0
    cf = []
    if c is not None:
        cf = sorted(((s, residual[int(p)]) for p, s in zip(tables.neighbor_idx[c],
                                                           tables.neighbor_sim[c])
                     if p >= 0 and int(p) in residual), key=lambda t: -t[0])[:k]
    weight = sum(s for s, _ in cf)
    cf_knn = sum(s * e for s, e in cf) / (weight + 1e-3)
    q = tables.item_factors.astype(np.float64)
    q_hist = np.array([q[p] for p, _ in known]).reshape(-1, q.shape[1])
    e_hist = np.array([residual[p] for p, _ in known])
    user = np.linalg.solve(q_hist.T @ q_hist + tables.factor_reg * np.eye(q.shape[1]),
                           q_hist.T @ e_hist)
    mf = float(q[c] @ user) if c is not None else 0.0
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cand = unit[c] if c is not None else np.zeros(unit.shape[1])
    cos = sorted(((float(cand @ unit[p]), residual[p]) for p, _ in known),
                 key=lambda t: -t[0])[:k]
    w = [np.exp((s - 1.0) / temperature) for s, _ in cos]
    text_knn = sum(wi * e for wi, (_, e) in zip(w, cos)) / (sum(w) + 1e-3)
    text_max = cos[0][0] if cos else 0.0
    count = np.log1p(tables.item_count[c]) if c is not None else 0.0
    prior = 0.0
    if c is not None:
        near = sorted(((float(unit[c] @ unit[j]), b[j]) for j in range(len(ITEMS)) if j != c),
                      key=lambda t: -t[0])[:20]
        w = [np.exp((s - 1.0) / temperature) for s, _ in near]
        prior = sum(wi * bj for wi, (_, bj) in zip(w, near)) / (sum(w) + 1e-3)
    return [mu + bu + bc, bu, bc, count, cf_knn, mf, text_knn, text_max, prior]


def _layer(frame, k=2, temperature=0.1, seed=1):
    vectors = np.random.default_rng(seed).normal(size=(len(ITEMS), 5)).astype(np.float32)
    tables = rating_tables(frame, ITEMS, neighbors=4)
    return RatingContext(ITEMS, tables, text_vectors=vectors, k=k,
                         temperature=temperature), tables, vectors


def test_features_match_a_numpy_oracle_with_padding_and_unknown_ids():
    frame = _ratings()
    layer, tables, vectors = _layer(frame)
    history = [["", "i0", "i3", "zz", "i5", "i6"], ["", "", "", "", "", "i2"]]
    ratings = [[0, 5, 1, 4, 3, 2], [0, 0, 0, 0, 0, 4]]
    items = [["i1", "i4", "new", ""], ["i3", "i0", "i7", "i2"]]
    got = layer.raw({"item_id": tf.constant(items), "history": tf.constant(history),
                     HISTORY_RATING: tf.constant(ratings, tf.float32)}).numpy()
    assert got.shape == (2, 4, layer.num_features) and layer.num_features == 9
    for b in range(2):
        hist = [h for h in history[b] if h]
        rat = [r for h, r in zip(history[b], ratings[b]) if h]
        for s, item in enumerate(items[b]):
            if not item:
                assert not got[b, s].any()
                continue
            want = _oracle_features(tables, vectors, 2, 0.1, item, hist, rat)
            np.testing.assert_allclose(got[b, s], want, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_where_the_history_is_padded():
    layer, _, _ = _layer(_ratings())
    items = tf.constant([["i1", "i4", "i7"]] * 3)
    history = tf.constant([["", "", "i0", "i3", "i5"], ["i0", "i3", "i5", "", ""],
                           ["i0", "", "i3", "", "i5"]])
    ratings = tf.constant([[0, 0, 5, 1, 3], [5, 1, 3, 0, 0], [5, 0, 1, 0, 3]], tf.float32)
    got = layer.raw({"item_id": items, "history": history, HISTORY_RATING: ratings}).numpy()
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], atol=1e-6)


def test_cross_fit_describes_each_fold_with_tables_without_its_ratings():
    frame = _ratings(n_users=10, density=0.9)
    layer, full, _ = _layer(frame)
    lists = rating_lists(frame, 3, 6, history="others", history_ratings=True)
    raw = cross_fit(layer, lists, frame, folds=2, seed=3, neighbors=4)
    assert raw.shape == lists.item_id.shape + (layer.num_features,)
    fold = np.random.default_rng(3).permutation(len(lists)) % 2
    for f in range(2):
        chosen = np.flatnonzero(fold == f)
        held = {(u, i) for u, row, m in zip(lists.user_id[chosen], lists.item_id[chosen],
                                             lists.mask[chosen]) for i in row[m]}
        rest = frame[[(u, i) not in held for u, i in zip(frame.user_id, frame.item_id)]]
        check, _, _ = _layer(frame)
        check.set_tables(rating_tables(rest, ITEMS, neighbors=4, seed=3))
        np.testing.assert_allclose(raw[chosen], context_values(check, lists.subset(chosen)),
                                   rtol=1e-5, atol=1e-5)
    # Afterwards the layer describes new ratings with the tables of all the rows.
    np.testing.assert_allclose(layer.item_bias.values.numpy()[1:], full.item_bias, atol=1e-6)
    # In-sample features differ: each fold's own ratings moved its item biases.
    assert not np.allclose(raw, context_values(layer, lists), atol=1e-4)


def test_rated_histories_carry_each_items_own_rating():
    frame = _ratings(n_users=6, density=0.9)
    rating_of = {(u, i): r for u, i, r in zip(frame.user_id, frame.item_id, frame.rating)}
    for mode in ("others", "before"):
        lists = rating_lists(frame, 2, 4, history=mode, history_ratings=True)
        assert lists.history_rating.shape == lists.history.shape
        for u, hist, rat in zip(lists.user_id, lists.history, lists.history_rating):
            for h, r in zip(hist, rat):
                assert r == (rating_of[(u, h)] if h else 0.0)
        plain = rating_lists(frame, 2, 4, history=mode)
        assert (plain.history == lists.history).all() and plain.history_rating is None
    users = ["u0", "u3", "nobody"]
    items, ratings = rated_histories_for(users, frame, 5)
    assert (items == histories_for(users, frame, 5)).all()
    for u, hist, rat in zip(users, items, ratings):
        assert [rating_of[(u, h)] if h else 0.0 for h in hist] == list(rat)
    pairs, _ = pair_lists(frame.head(5), frame, 3, 5, history_ratings=True)
    assert pairs.history_rating is not None and "history_rating" in pairs.features()


@pytest.fixture(scope="module")
def two_tastes(tmp_path_factory):
    """A rating model fitted where each user loves one half of the catalogue and hates the
    other: the rated history says which."""
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(24)]
    rows, test = [], []
    for u in range(60):
        taste = 1 if u % 2 else -1
        for n, item in enumerate(items):
            rating = 3.0 + 1.5 * taste * (1 if n % 2 else -1) + rng.normal(0, 0.2)
            (test if (u + n) % 5 == 0 else rows).append(
                (f"u{u}", item, float(np.clip(rating, 1, 5)), n))
    columns = ["user_id", "item_id", "rating", "timestamp"]
    train, test = pd.DataFrame(rows, columns=columns), pd.DataFrame(test, columns=columns)
    config = RankingConfig(loss="mse", embedding_dim=4, id_embedding_dim=4, history_len=4,
                           deep_dims=(8,), din_units=0, num_cross_layers=1, epochs=8,
                           batch_size=8, learning_rate=0.01, verbose=0, seed=0)
    context = RatingContextConfig(history_len=24, neighbors=8, k=5, folds=2)
    vectors = np.random.default_rng(1).normal(size=(len(items), 6)).astype(np.float32)
    model, _, _, _ = fit_rating_model(config, train, str(tmp_path_factory.mktemp("fit")),
                                      context=context, text=(items, vectors), list_size=4)
    return model, train, test


@pytest.mark.slow
def test_a_rating_model_with_the_context_learns_what_the_history_says(two_tastes):
    model, train, test = two_tastes
    assert isinstance(model.context_features, RatingContext)
    predicted = predict_ratings(model, test, train, 24, list_size=4)
    assert np.isfinite(predicted).all()
    truth = test.rating.to_numpy()
    rmse = np.sqrt(np.mean((predicted - truth) ** 2))
    baseline = np.sqrt(np.mean((train.rating.mean() - truth) ** 2))
    assert rmse < 0.5 * baseline, (rmse, baseline)


@pytest.mark.slow
def test_rating_export_takes_history_ratings_and_reloads_in_a_fresh_process(two_tastes,
                                                                            tmp_path):
    model, train, _ = two_tastes
    path = export_ranking(model, tmp_path, name="rating")
    meta = json.loads((path / "metadata.json").read_text())
    assert set(meta["signatures"]["serving_default"]["inputs"]) == {
        "user_id", "history", "history_rating", "item_ids"}
    assert "history_rating" in meta["input_order"]
    # The same two users padded on the left and, in the second request, between the ids.
    request = {"user_id": ["u1", "u2"],
               "history": [["", "i1", "i3", "i0"], ["", "", "i2", "i5"]],
               "history_rating": [[0, 4.5, 4.5, 1.5], [0, 0, 1.5, 4.5]],
               "item_ids": [["i5", "i6", "new", ""], ["i7", "i8", "i9", "i1"]]}
    moved = dict(request, history=[["i1", "", "i3", "i0"], ["i2", "", "", "i5"]],
                 history_rating=[[4.5, 9.0, 4.5, 1.5], [1.5, 7.0, 0, 4.5]])
    expected = model({"user_id": tf.constant(request["user_id"]),
                      "history": tf.constant(request["history"]),
                      HISTORY_RATING: tf.constant(request["history_rating"], tf.float32),
                      "item_id": tf.constant(request["item_ids"])}).numpy()
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["keras"] = sys.modules["tf_keras"] = None
        import tensorflow as tf
        fn = tf.saved_model.load({str(path)!r}).signatures["serving_default"]
        for req in json.loads({json.dumps(json.dumps([request, moved]))}):
            out = fn(user_id=tf.constant(req["user_id"]), history=tf.constant(req["history"]),
                     history_rating=tf.constant(req["history_rating"], tf.float32),
                     item_ids=tf.constant(req["item_ids"]))
            print("SCORES", json.dumps(out["scores"].numpy().astype(float).tolist()))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [np.array(json.loads(line.split(" ", 1)[1]), dtype=float)
           for line in proc.stdout.splitlines() if line.startswith("SCORES")]
    assert len(got) == 2
    expected = np.where(np.array(request["item_ids"]) == "", -np.inf, expected)
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    np.testing.assert_allclose(got[1], got[0], rtol=1e-5)  # padding anywhere, same answer


def test_standardised_features_are_clipped_and_padding_is_zero():
    layer, _, _ = _layer(_ratings())
    raw = np.zeros((1, 2, layer.num_features), np.float32)
    raw[0, 0] = 1e6
    layer.adapt(np.zeros((1, 2, layer.num_features)), np.ones((1, 2), bool))
    out = layer({"item_id": tf.constant([["i1", ""]]), "rating_context": tf.constant(raw)})
    assert np.allclose(out.numpy()[0, 0], CLIP) and not out.numpy()[0, 1].any()


def test_text_neighbors_match_a_brute_force_sort_across_blocks():
    vectors = np.random.default_rng(4).normal(size=(11, 5)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx, cos = text_neighbors(vectors, 3, block=4)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    assert (idx == want).all()
    np.testing.assert_allclose(cos, np.take_along_axis(sims, want, 1), rtol=1e-6)
    # More neighbours asked than other rows: the rest is -1.
    idx, _ = text_neighbors(vectors[:3], 4)
    assert (idx[:, 2:] == -1).all() and (idx[:, :2] >= 0).all()


def test_ridge_rows_solve_each_row_over_its_own_entries():
    import scipy.sparse as sp

    from recommenders_tf.models.rating_context import _ridge_rows

    rng = np.random.default_rng(6)
    dense = rng.normal(size=(9, 12)) * (rng.random((9, 12)) < 0.4)
    dense[3] = 0.0  # an empty row
    dense[5] = rng.normal(size=12)  # a full row
    matrix = sp.csr_matrix(dense)
    other = rng.normal(size=(12, 3))
    want = np.zeros((9, 3))
    for r in range(9):
        cols = np.flatnonzero(dense[r])
        if len(cols):
            o = other[cols]
            want[r] = np.linalg.solve(o.T @ o + 2.0 * np.eye(3), o.T @ dense[r, cols])
    np.testing.assert_allclose(_ridge_rows(matrix, other, 2.0), want, rtol=1e-9, atol=1e-12)
