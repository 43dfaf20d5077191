"""EASE, RP3beta and SASRec peers, and the shared validation grid search, on tiny data whose
right answer is worked out here."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recommenders_tf  # noqa: F401
from recommenders_tf.evaluation.peer_base import GridSearchPeer
from recommenders_tf.evaluation.peers import EASE, MostPopular, RP3beta, SASRec
from recommenders_tf.evaluation.peers_item_item import ease_weights, rp3beta_weights
from recommenders_tf.evaluation.peers_sasrec import training_windows, user_sequences
from recommenders_tf.evaluation.protocol import TopKEvaluator


def frame(pairs, timestamps=None):
    return pd.DataFrame({
        "user_id": [u for u, _ in pairs],
        "item_id": [i for _, i in pairs],
        "rating": np.ones(len(pairs), np.float32),
        "timestamp": np.asarray(np.arange(len(pairs)) if timestamps is None else timestamps,
                                np.int64),
    })


def ease_closed_form(x, l2):
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    return np.eye(x.shape[1]) - p @ np.diag(1.0 / np.diag(p))


# Users x items A, B, C.
X4 = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=np.float64)
X4_PAIRS = [(f"u{u}", "ABC"[i]) for u in range(4) for i in range(3) if X4[u, i]]


@pytest.mark.parametrize("in_place", [False, True], ids=["numpy-inverse", "cholesky-in-place"])
def test_ease_weights_are_the_closed_form(in_place):
    expected = ease_closed_form(X4, 2.0)
    got = ease_weights(sp.csr_matrix(X4), 2.0, in_place=in_place, block_size=2)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_array_equal(np.diag(got), 0.0)
    with pytest.raises(ValueError, match="l2 > 0"):
        ease_weights(sp.csr_matrix(X4), 0.0)


def test_ease_scores_are_history_times_b_and_strangers_get_popularity():
    train = frame(X4_PAIRS)
    peer = EASE(l2=2.0).fit(train)
    b = ease_closed_form(X4, 2.0)
    np.testing.assert_allclose(peer.score(["u0", "u1", "u2", "u3"]), X4 @ b, atol=1e-12)
    np.testing.assert_array_equal(peer.score(["stranger"]), [[3, 3, 3]])
    assert "l2=2.0 (defaults, no validation)" in peer.notes
    assert "all 3 train items modelled (cap 20000)" in peer.notes


def test_ease_item_cap_models_the_most_popular_and_ranks_the_rest_after():
    # Counts: A 3, B 2, C 1; with a cap of 2 only A and B are modelled.
    train = frame([("x", "A"), ("y", "A"), ("z", "A"), ("x", "B"), ("y", "B"), ("z", "C")])
    peer = EASE(max_items=2, l2=1.0).fit(train)
    assert peer.n_modelled == 2
    assert "item cap 2: the 2 most popular of 3 train items modelled (83.3% of" in peer.notes
    x = np.array([[1, 1], [1, 1], [1, 0]], dtype=np.float64)  # x, y, z over A, B
    b = ease_closed_form(x, 1.0)
    got = peer.score(["x", "z"])
    np.testing.assert_allclose(got[:, :2], x[[0, 2]] @ b, atol=1e-12)
    # C (unmodelled) sits below both modelled items of each row.
    assert (got[:, 2] < got[:, :2].min(axis=1)).all()
    with pytest.raises(ValueError, match="max_items"):
        EASE(max_items=0)


def test_rp3beta_weights_by_hand():
    # u0: A B;  u1: A B C;  u2: A D.  Degrees: A 3, B 2, C 1, D 1; u0 2, u1 3, u2 2.
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]], dtype=np.float64))
    w = rp3beta_weights(x, alpha=1.0, beta=0.0, top_k=3).toarray()
    # W[i, j] = sum_u 1/deg(i) * 1/deg(u) over users with both i and j.
    row_a = [0.0, 1 / 3 * 1 / 2 + 1 / 3 * 1 / 3, 1 / 3 * 1 / 3, 1 / 3 * 1 / 2]
    np.testing.assert_allclose(w[0], row_a)
    np.testing.assert_allclose(w[3], [1 / 2, 0, 0, 0])  # D only meets A, through u2
    np.testing.assert_allclose(w[2], [1 / 3, 1 / 3, 0, 0])  # C meets A and B through u1
    # beta = 1 divides column j by deg(j): A's best neighbour flips from B (5/18) to D (1/6).
    w = rp3beta_weights(x, alpha=1.0, beta=1.0, top_k=1).toarray()
    np.testing.assert_allclose(w[0], [0, 0, 0, 1 / 6])
    # alpha = 0.5 takes the square root of every step's probability.
    w = rp3beta_weights(x, alpha=0.5, beta=0.0, top_k=3).toarray()
    np.testing.assert_allclose(w[3], [np.sqrt(1 / 2), 0, 0, 0])
    np.testing.assert_allclose(w[0, 2], np.sqrt(1 / 3) * np.sqrt(1 / 3))
    with pytest.raises(ValueError, match="top_k"):
        rp3beta_weights(x, 1.0, 0.0, top_k=0)


def test_rp3beta_scores_are_history_times_w_in_blocks():
    rng = np.random.default_rng(0)
    x = (rng.random((12, 9)) < 0.4).astype(np.float64)
    x[:, 0] = 1.0  # every user has an item, every row a non-empty history
    pairs = [(f"u{u:02d}", f"i{i}") for u in range(12) for i in range(9) if x[u, i]]
    peer = RP3beta(alpha=0.7, beta=0.3, top_k=4, block_size=2).fit(frame(pairs))
    w = rp3beta_weights(sp.csr_matrix(x), 0.7, 0.3, top_k=4, block_size=100).toarray()
    assert ((w > 0).sum(axis=1) <= 4).all()
    np.testing.assert_allclose(peer.score([f"u{u:02d}" for u in range(12)]), x @ w, atol=1e-12)


# Two blocks: users u0-u2 use items i0-i2, users u3-u5 use i3-i5. (u0, i2) and (u3, i5) are
# test, (u1, i0) and (u4, i3) validation.
BLOCK = [(f"u{u}", f"i{i}") for u in range(6) for i in range(6) if (u < 3) == (i < 3)]
HELD = [("u0", "i2"), ("u3", "i5")]
VALID = [("u1", "i0"), ("u4", "i3")]


@pytest.mark.parametrize("peer", [EASE(grid={"l2": (1.0, 10.0)}),
                                  RP3beta(grid={"beta": (0.0, 0.5)})], ids=["ease", "rp3beta"])
def test_item_item_peers_tune_on_validation_and_recommend_the_in_block_item(peer):
    train = frame([p for p in BLOCK if p not in HELD + VALID])
    validation = frame(VALID)
    peer.fit(train, validation)
    assert "chosen on validation by ndcg@10=1.0000 over 2 settings" in peer.notes
    ev = TopKEvaluator(pd.concat([train, validation]), frame(HELD), ks=(1,))
    # Refit on train + validation: u1's i0 is history now, so ranking is over unseen items.
    assert ev.topk(lambda u: peer.score(u, ev.item_ids), k=1) == {"u0": ["i2"], "u3": ["i5"]}
    # An item unseen in training ranks below every seen item.
    got = peer.score(["u0"], item_ids=["NEW", "i2", "i4"])
    assert got[0, 0] < got[0, 2] < got[0, 1]


class _Threshold(GridSearchPeer):
    """Scores item 'good' first when `level` >= 2, else item 'bad'; records what it fit on."""

    name = "threshold"
    default_params = {"level": 0}

    def _fit_setting(self, train, params):
        self._set_catalog(train)
        self.fitted_on = len(train)
        self.level = params["level"]

    def _known_user_scores(self, users, cols):
        good = np.asarray(self._train_items)[cols] == "good"
        row = np.where(good, 1.0, 0.0) if self.level >= 2 else np.where(good, 0.0, 1.0)
        return np.tile(row, (len(users), 1)), np.ones(len(users), dtype=bool)


def test_grid_search_picks_the_best_validation_setting_and_refits_on_everything():
    train = frame([("a", "x"), ("b", "x"), ("c", "good"), ("c", "bad")])
    validation = frame([("a", "good"), ("b", "good")])
    peer = _Threshold(grid={"level": (0, 1, 2, 3)}).fit(train, validation)
    # Levels 2 and 3 rank 'good' first for a and b (ndcg@10 = 1, against 1/log2(3) for levels
    # 0 and 1); the first of equal scores in grid order wins.
    assert peer.chosen_params == {"level": 2}
    assert peer.fitted_on == len(train) + len(validation)
    assert "level=2 chosen on validation by ndcg@10=1.0000 over 4 settings" in peer.notes
    assert "at the grid's edge" not in peer.notes
    peer = _Threshold(grid={"level": (0, 1, 2)}).fit(train, validation)
    assert peer.notes.endswith("refit on train+validation; at the grid's edge: level")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['lambda'\]"):
        _Threshold(grid={"lambda": (1, 2)})


def test_user_sequences_order_by_time_then_item_id_as_strings():
    train = frame([("u", "9"), ("u", "10"), ("u", "B"), ("v", "B"), ("w", "gone")],
                  timestamps=[5, 5, 1, 0, 0])
    items = pd.Index(["10", "9", "B"], dtype=object)  # indices 1, 2, 3
    seqs = user_sequences(train, items)
    # u: B at t=1, then "10" before "9" at t=5; w's only item is outside `items`.
    assert {u: s.tolist() for u, s in seqs.items()} == {"u": [3, 1, 2], "v": [3]}


def test_training_windows_cover_every_transition_once():
    inputs, targets = training_windows([np.arange(1, 8), np.array([8, 9]), np.array([5])], 3)
    assert inputs.tolist() == [[4, 5, 6], [1, 2, 3], [0, 0, 8]]
    assert targets.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 9]]
    assert inputs.dtype == np.int32


def _cycle_data(n_users=60, n_items=12, length=7, seed=0):
    """Every user walks the cycle i, i+1, ... from a random start; the last step is test, the
    one before validation. Ids are zero-padded so string order is numeric order."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "validation": [], "test": []}
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(length):
            part = "test" if t == length - 1 else "validation" if t == length - 2 else "train"
            parts[part].append((f"u{u:02d}", f"i{(start + t) % n_items:02d}", t))
    return {k: pd.DataFrame({"user_id": [u for u, _, _ in v], "item_id": [i for _, i, _ in v],
                             "rating": np.float32(1.0),
                             "timestamp": np.array([t for *_, t in v], np.int64)})
            for k, v in parts.items()}


@pytest.mark.slow
def test_sasrec_learns_the_next_item_of_a_cycle():
    # After exclusions a user ranks 7 unseen items; only the next on the cycle is right, which
    # popularity cannot know (every item is about equally popular).
    data = _cycle_data()
    full_train = pd.concat([data["train"], data["validation"]], ignore_index=True)
    ev = TopKEvaluator(full_train, data["test"], ks=(1,))
    peer = SASRec(item_ids=ev.item_ids, max_len=6, dim=16, blocks=1, dropout=0.0,
                  learning_rate=0.01, batch_size=32, max_epochs=24, eval_every=4, patience=2,
                  seed=0)
    peer.fit(data["train"], data["validation"])
    assert "chosen on validation by ndcg@10=" in peer.notes
    assert peer.chosen_epochs == max(peer.validation_curve, key=lambda r: r[1])[0]
    assert peer.loss_history[-1] < peer.loss_history[0]
    hr = ev.evaluate(peer.score).metrics["hr@1"]
    popular = ev.evaluate(MostPopular(item_ids=ev.item_ids).fit(full_train).score).metrics
    assert hr >= 0.9 > popular["hr@1"] + 0.5
    # Strangers get the popularity ranking; an item unseen in training ranks last.
    np.testing.assert_array_equal(peer.score(["stranger"])[0], peer._popularity)
    got = peer.score(["u00"], item_ids=["NEW"] + list(ev.item_ids))
    assert got[0, 0] < got[0, 1:].min()
    # Seeded: two fits with the same seed give the same scores.
    again = [SASRec(item_ids=ev.item_ids, max_len=6, dim=16, blocks=1, epochs=2, seed=3)
             .fit(full_train).score(["u00", "u01"]) for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])
