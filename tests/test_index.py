"""Retrieval index tests: BruteForce against an exact numpy oracle, ScaNN recall against
BruteForce after tuning, input checks, and the candidate store's add-items path."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from oracles import top_k_excluding
from recommenders_tf.index import (
    CandidateStore,
    ScannGrid,
    ScannParams,
    add_items,
    build_index,
    load_tower,
    recall_at_k_vs_exact,
    tune_scann,
)
from recommenders_tf.index.bench import synthetic_catalogue


def oracle_top_k(queries, ids, embeddings, k, exclude=None):
    """Exact top k by descending dot product, ties broken by ascending id (string order)."""
    scores = queries.astype(np.float64) @ embeddings.astype(np.float64).T
    out_ids, out_scores = [], []
    for row, s in enumerate(scores):
        keep = np.ones(len(ids), bool) if exclude is None else ~np.isin(ids, exclude[row])
        order = np.lexsort((ids[keep], -s[keep]))[:k]
        out_ids.append(ids[keep][order])
        out_scores.append(s[keep][order])
    return np.array(out_scores), np.array(out_ids)


@pytest.fixture(scope="module")
def integer_catalogue():
    # Small integer vectors: every dot product is exact in float32 and many scores tie, so
    # the id tie-break is exercised and the oracle comparison is exact.
    rng = np.random.default_rng(7)
    n, d = 300, 8
    ids = np.array([f"it{v}" for v in rng.permutation(10_000)[:n]])
    embeddings = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(20, d)).astype(np.float32)
    return ids, embeddings, queries


def test_bruteforce_matches_numpy_oracle_including_ties(integer_catalogue):
    ids, embeddings, queries = integer_catalogue
    index = build_index("bruteforce", None, ids, embeddings, k=15)
    scores, found = index.search(queries)
    want_scores, want_ids = oracle_top_k(queries, ids, embeddings, 15)
    assert found.shape == (20, 15) and scores.dtype == np.float32
    # Ties really happen in this data, so equality below depends on the id tie-break.
    assert any(len(set(row)) < len(row) for row in want_scores.tolist())
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_bruteforce_exclusions_match_oracle_without_excluded(integer_catalogue):
    ids, embeddings, queries = integer_catalogue
    index = build_index("bruteforce", None, ids, embeddings, k=5)
    _, top = index.search(queries[:3], k=5)
    # Exclude each query's first two results plus a padding slot.
    exclude = np.array([[r[0], r[1], ""] for r in top])
    scores, found = index.search_with_exclusions(queries[:3], exclude, k=5)
    want_scores, want_ids = oracle_top_k(queries[:3], ids, embeddings, 5, exclude)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))
    for row, excl in zip(found, exclude):
        assert not set(row) & set(excl[:2])


def test_top_k_excluding_hand_computed():
    scores = tf.constant([[0.9, 0.8, 0.7, 0.1], [0.5, 0.4, -np.inf, -np.inf]])
    ids = tf.constant([["a", "b", "c", "d"], ["x", "y", "", ""]])
    exclude = tf.constant([["b", ""], ["x", "y"]])
    values, kept = top_k_excluding(scores, ids, exclude, k=2)
    assert kept.numpy().tolist() == [[b"a", b"c"], [b"", b""]]
    np.testing.assert_allclose(values.numpy()[0], [0.9, 0.7])
    assert np.all(np.isneginf(values.numpy()[1]))


def test_k_larger_than_candidates_is_a_clear_error(integer_catalogue):
    ids, embeddings, _ = integer_catalogue
    with pytest.raises(ValueError, match=r"k=11 is larger than the number of candidates \(10\)"):
        build_index("bruteforce", None, ids[:10], embeddings[:10], k=11)
    index = build_index("bruteforce", None, ids[:10], embeddings[:10], k=3)
    with pytest.raises(ValueError, match="larger than the number of candidates"):
        index.search(embeddings[:1], k=12)


def test_bad_candidates_fail_with_actionable_messages(integer_catalogue):
    ids, embeddings, _ = integer_catalogue
    dup = ids[:5].copy()
    dup[3] = dup[1]
    with pytest.raises(ValueError, match=rf"'{dup[1]}' at rows \[1, 3\]"):
        build_index("bruteforce", None, dup, embeddings[:5], k=2)
    with pytest.raises(ValueError, match="5 rows but there are 4 ids"):
        build_index("bruteforce", None, ids[:4], embeddings[:5], k=2)
    with pytest.raises(ValueError, match=r"candidate_ids\[2\] is the empty string"):
        build_index("bruteforce", None, ["a", "b", "", "d"], embeddings[:4], k=2)
    bad = embeddings[:4].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        build_index("bruteforce", None, ids[:4], bad, k=2)
    with pytest.raises(TypeError, match=r"candidate_ids\[0\] is int"):
        build_index("bruteforce", None, [1, 2, 3, 4], embeddings[:4], k=2)
    with pytest.raises(ValueError, match="Unknown index kind 'annoy'"):
        build_index("annoy", None, ids[:4], embeddings[:4], k=2)
    index = build_index("bruteforce", None, ids, embeddings, k=2)
    with pytest.raises(ValueError, match=r"must be \[batch, 8\]"):
        index.search(np.zeros((1, 7), np.float32))


def test_scann_parameter_checks(integer_catalogue):
    ids, embeddings, _ = integer_catalogue
    with pytest.raises(ValueError, match="num_reordering_candidates=5 is smaller than k=10"):
        build_index("scann", None, ids, embeddings, k=10,
                    scann_params=ScannParams(num_leaves=10, num_leaves_to_search=2,
                                             num_reordering_candidates=5))
    with pytest.raises(ValueError,
                       match="num_leaves_to_search=20 must be between 1 and num_leaves=10"):
        build_index("scann", None, ids, embeddings, k=10,
                    scann_params=ScannParams(num_leaves=10, num_leaves_to_search=20))


def test_scann_short_answers_are_padded_not_candidate_zero():
    # 20 leaves over 200 items, one leaf searched: ScaNN finds ~10 candidates for k=40 and
    # pads with index 0 / NaN, which must come back as "" / -inf, never as a real item.
    ids, items, queries = synthetic_catalogue(200, 8, 4, seed=3)
    index = build_index("scann", None, ids, items, k=40,
                        scann_params=ScannParams(num_leaves=20, num_leaves_to_search=1,
                                                 num_reordering_candidates=50))
    scores, found = index.search_tensors(tf.constant(queries), 40)  # the raw approximate pass
    scores, found = scores.numpy(), found.numpy().astype(str)
    assert found.shape == (4, 40)
    pads = found == ""
    assert pads.any() and np.all(np.isneginf(scores[pads])) and not np.isnan(scores).any()
    for row in found:
        real = row[row != ""]
        assert len(set(real)) == len(real)
    # What exports and `search` serve: rows the approximate pass left short get an exact pass,
    # so no slot stays empty while the catalogue has items (the BruteForce answer).
    served_scores, served = index.search(queries)
    exact = build_index("bruteforce", None, ids, items, k=40).search(queries)[1]
    assert (served != "").all() and np.isfinite(served_scores).all()
    short = pads.any(axis=1)
    np.testing.assert_array_equal(served[short], exact[short])


@pytest.fixture(scope="module")
def clustered():
    return synthetic_catalogue(8000, 32, 1000, seed=0)


def test_tuned_scann_recall_against_bruteforce(clustered):
    ids, items, queries = clustered
    result = tune_scann(ids, items, queries[:500], k=10, target_recall=0.95, seed=0)
    assert result.target_met and result.recall >= 0.95, result.note
    # The walk goes from the cheapest setting up and stops at the first that passes.
    costs = [t["estimated_cost"] for t in result.trials]
    assert costs == sorted(costs)
    assert all(t["recall"] < 0.95 for t in result.trials[:-1])
    assert result.build_seconds > 0
    exact = build_index("bruteforce", None, ids, items, k=10)
    measured = recall_at_k_vs_exact(result.index, exact, queries[:500], k=10)
    assert measured == pytest.approx(result.recall)
    assert recall_at_k_vs_exact(result.index, exact, queries[500:], k=10) >= 0.93
    assert recall_at_k_vs_exact(exact, exact, queries[:50], k=10) == 1.0


def test_tune_scann_falls_back_to_most_accurate_and_says_so(clustered):
    ids, items, queries = clustered
    grid = ScannGrid(num_leaves=[90], dimensions_per_block=[4],
                     leaves_to_search_fractions=[0.01, 0.03], reordering_multiples=[1, 2])
    result = tune_scann(ids[:3000], items[:3000], queries[:200], k=10, target_recall=0.999,
                        grid=grid)
    assert not result.target_met
    assert "fell back" in result.note
    assert result.params.num_leaves_to_search == 3 and result.params.num_reordering_candidates == 20
    assert len(result.trials) == 4


def hashed_candidate_tower(dim=8, seed=1):
    """A candidate tower over hashed ids, so items unseen at training still get a vector."""
    init = tf.keras.initializers.RandomNormal(seed=seed)

    class CandidateTower(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.hash = tf.keras.layers.Hashing(num_bins=997)
            self.emb = tf.keras.layers.Embedding(997, dim, embeddings_initializer=init)

        def call(self, features):
            return self.emb(self.hash(features["item_id"]))

    return CandidateTower()


def test_candidate_store_add_items_makes_new_item_retrievable(tmp_path, integer_catalogue):
    ids, _, _ = integer_catalogue
    tower = hashed_candidate_tower()
    base = CandidateStore(ids[:100], tower({"item_id": tf.constant(ids[:100])}).numpy())
    base.save(tmp_path / "store", candidate_tower=tower)
    with pytest.raises(FileExistsError, match="already holds a candidate store"):
        base.save(tmp_path / "store")
    loaded = CandidateStore.load(tmp_path / "store")
    np.testing.assert_array_equal(loaded.ids, base.ids)
    np.testing.assert_array_equal(loaded.embeddings, base.embeddings)

    saved_tower = load_tower(tmp_path / "store" / "candidate_tower")
    new_ids = ["brand-new-item", "another-new-one"]
    expected_new = tower({"item_id": tf.constant(new_ids)}).numpy()
    grown = add_items(loaded, saved_tower, {"item_id": new_ids})
    assert len(grown) == 102 and grown.ids[-2:].tolist() == new_ids
    np.testing.assert_allclose(grown.embeddings[-2:], expected_new, rtol=1e-6)

    query = 10 * expected_new[:1]
    before = build_index("bruteforce", None, loaded.ids, loaded.embeddings, k=3)
    assert "brand-new-item" not in before.search(query)[1][0]
    after = build_index("bruteforce", None, grown.ids, grown.embeddings, k=3)
    _, found = after.search(query)
    _, want = oracle_top_k(query, grown.ids, grown.embeddings, 3)
    assert found[0, 0] == "brand-new-item" and found.tolist() == want.tolist()

    with pytest.raises(ValueError, match=r"already in the candidate store: '.*' \(row 1\)"):
        add_items(grown, saved_tower, {"item_id": ["fresh", ids[5]]})
    with pytest.raises(ValueError, match="must be unique"):
        add_items(grown, saved_tower, {"item_id": ["twin", "twin"]})


@pytest.mark.parametrize("kind", ["bruteforce", "scann"])
def test_search_excluding_past_the_catalogue_pads_after_every_item(kind, integer_catalogue):
    """A cascade whose retrieval k exceeds a small catalogue: every remaining item, in exact
    order, then padding, instead of an error."""
    ids, embeddings, queries = integer_catalogue
    ids, embeddings, queries = ids[:30], embeddings[:30], queries[:4]
    index = build_index(kind, None, ids, embeddings, k=30)
    exclude = np.array([[ids[0], ids[5], ""], [""] * 3, [ids[7], "not-an-item", ""],
                        [ids[1], ids[2], ids[3]]])
    scores, found = index.search_excluding(tf.constant(queries), tf.constant(exclude), k=40)
    found = found.numpy().astype(str)
    for row, query in enumerate(queries):
        expected = oracle_top_k(query[None], ids, embeddings, 40, exclude=exclude[row:row + 1]
                                )[1][0]
        assert list(found[row][:len(expected)]) == list(expected)
        assert set(found[row][len(expected):]) == {""}
        assert np.all(np.isneginf(scores.numpy()[row][len(expected):]))
