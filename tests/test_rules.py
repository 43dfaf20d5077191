"""Business rules in TensorFlow: exclusions, de-duplication, category caps and top k, checked
by hand and against the NumPy oracle of tests/oracles.py."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from oracles import apply_rules
from recommenders_tf.models.rules import BusinessRules, BusinessRulesLayer, RuleOutput

GENRE = {"a": "drama", "b": "drama", "c": "comedy", "d": "drama", "e": "comedy", "f": "horror"}
# One list, deliberately not in score order; "b" twice, "" padding, NaN-scored padding.
IDS = [["c", "b", "a", "", "d", "b", "e", "f", "x"]]
SCORES = [[0.7, 0.9, 1.0, 5.0, 0.8, 0.95, 0.3, 0.2, np.nan]]
# Sorted by score (input position): a 1.0 (2), b 0.95 (5), b 0.9 (1), d 0.8 (4), c 0.7 (0),
# e 0.3 (6), f 0.2 (7); "" (3) and "x" (8) are padding.


def run_tf(rules, ids, scores, categories=None, **kw):
    layer = BusinessRulesLayer(rules, categories)
    kw = {k: tf.constant(v) for k, v in kw.items()}
    out = layer(tf.constant(ids), tf.constant(scores, tf.float32), **kw)
    return ([[s.decode() for s in row] for row in out.item_ids.numpy().tolist()],
            out.scores.numpy(), out.positions.numpy())


def both(rules, ids, scores, categories=None, **kw):
    """The layer's output (as NumPy arrays, ids decoded), after checking the oracle gives the
    same, so a hand-worked answer pins down both."""
    np_out = apply_rules(rules, ids, scores, item_categories=categories, **kw)
    tf_ids, tf_scores, tf_pos = run_tf(rules, ids, scores, categories, **kw)
    assert np_out.item_ids.tolist() == tf_ids
    np.testing.assert_allclose(np_out.scores, tf_scores, rtol=1e-6)
    np.testing.assert_array_equal(np_out.positions, tf_pos)
    return RuleOutput(np.array(tf_ids, dtype=object), tf_scores, tf_pos)


def test_dedupe_keeps_the_best_occurrence_and_sorts_by_score():
    out = both(BusinessRules(k=4, exclude_seen=False), IDS, SCORES)
    assert out.item_ids.tolist() == [["a", "b", "d", "c"]]
    np.testing.assert_allclose(out.scores, [[1.0, 0.95, 0.8, 0.7]], rtol=1e-6)
    assert out.positions.tolist() == [[2, 5, 4, 0]]
    no_dedupe = both(BusinessRules(k=4, dedupe=False), IDS, SCORES)
    assert no_dedupe.item_ids.tolist() == [["a", "b", "b", "d"]]


def test_history_and_explicit_exclusions():
    history, exclude = [["a", "", "zz"]], [["c", ""]]
    out = both(BusinessRules(k=4, exclude_seen=True), IDS, SCORES, history=history,
               exclude=exclude)
    assert out.item_ids.tolist() == [["b", "d", "e", "f"]]
    # exclude_seen=False ignores the history but still applies the explicit exclusions.
    out = both(BusinessRules(k=4, exclude_seen=False), IDS, SCORES, history=history,
               exclude=exclude)
    assert out.item_ids.tolist() == [["a", "b", "d", "e"]]


def test_category_caps_int_and_per_category():
    # Sorted survivors: a(drama) b(drama) d(drama) c(comedy) e(comedy) f(horror).
    out = both(BusinessRules(k=4, exclude_seen=False, category_caps=1), IDS, SCORES, GENRE)
    assert out.item_ids.tolist() == [["a", "c", "f", ""]]
    assert out.positions.tolist() == [[2, 0, 7, -1]]
    assert np.isneginf(out.scores[0, 3])
    out = both(BusinessRules(k=5, exclude_seen=False, category_caps={"drama": 2}), IDS,
               SCORES, GENRE)
    assert out.item_ids.tolist() == [["a", "b", "c", "e", "f"]]
    # Cap 0 bans a category; an id without a category ("q") is never capped.
    out = both(BusinessRules(k=3, exclude_seen=False, category_caps={"drama": 0}),
               [["a", "q", "c"]], [[3.0, 2.0, 1.0]], GENRE)
    assert out.item_ids.tolist() == [["q", "c", ""]]


def test_short_lists_pad_and_mask_is_respected():
    ids = [["a", "b", ""], ["c", "c", "c"]]
    scores = [[0.1, 0.5, -np.inf], [1.0, 2.0, 3.0]]
    out = both(BusinessRules(k=4), ids, scores, mask=np.array([[True, False, True]] * 2))
    assert out.item_ids.tolist() == [["a", "", "", ""], ["c", "", "", ""]]
    assert out.positions.tolist() == [[0, -1, -1, -1], [2, -1, -1, -1]]
    np.testing.assert_array_equal(out.scores[:, 1:], -np.inf)


def test_layer_matches_the_numpy_oracle_on_random_lists_inside_a_tf_function():
    rng = np.random.default_rng(0)
    catalog = [f"i{j}" for j in range(25)]
    categories = {i: f"g{j % 4}" for j, i in enumerate(catalog[:20])}  # i20..i24: none
    batch, length = 16, 30
    ids = rng.choice(catalog + [""], size=(batch, length))          # repeats and padding
    scores = np.round(rng.normal(size=(batch, length)), 1)          # ties on purpose
    scores[rng.random((batch, length)) < 0.1] = -np.inf
    history = rng.choice(catalog + [""], size=(batch, 5))
    exclude = rng.choice(catalog + [""], size=(batch, 2))
    for rules in (BusinessRules(k=8, category_caps=2),
                  BusinessRules(k=12, dedupe=False, category_caps={"g0": 1, "g3": 0}),
                  BusinessRules(k=40, exclude_seen=False)):
        layer = BusinessRulesLayer(rules, categories)
        graph = tf.function(
            lambda i, s, h, e: layer(i, s, history=h, exclude=e)._asdict(),
            input_signature=[tf.TensorSpec([None, length], tf.string),
                             tf.TensorSpec([None, length], tf.float32),
                             tf.TensorSpec([None, None], tf.string),
                             tf.TensorSpec([None, None], tf.string)])
        got = graph(tf.constant(ids), tf.constant(scores, tf.float32), tf.constant(history),
                    tf.constant(exclude))
        expected = apply_rules(rules, ids, scores, history=history, exclude=exclude,
                               item_categories=categories)
        assert [[s.decode() for s in r] for r in got["item_ids"].numpy().tolist()] == \
            expected.item_ids.tolist()
        np.testing.assert_array_equal(got["positions"].numpy(), expected.positions)
        np.testing.assert_allclose(got["scores"].numpy(), expected.scores, rtol=1e-6)
        # Invariants of every output: no excluded, no repeated, caps respected.
        for b in range(batch):
            row = [x for x in expected.item_ids[b] if x]
            dropped = set(exclude[b]) | (set(history[b]) if rules.exclude_seen else set())
            assert not dropped & set(row)
            if rules.dedupe:
                assert len(row) == len(set(row))


def test_config_validation():
    with pytest.raises(ValueError, match="k must be"):
        BusinessRules(k=0)
    with pytest.raises(ValueError, match="category_caps"):
        BusinessRules(category_caps=-1)
    with pytest.raises(ValueError, match="category_caps"):
        BusinessRules(category_caps={"drama": 1.5})
    with pytest.raises(ValueError, match="item_categories"):
        apply_rules(BusinessRules(category_caps=1), IDS, SCORES)
    with pytest.raises(ValueError, match="item_categories"):
        BusinessRulesLayer(BusinessRules(category_caps=1))
    with pytest.raises(ValueError, match="history must be"):
        apply_rules(BusinessRules(), IDS, SCORES, history=["a"])
    assert BusinessRules(category_caps={"x": 2}).cap_for("y") is None


def test_layer_round_trips_a_saved_model_with_its_category_table(tmp_path):
    rules = BusinessRules(k=3, exclude_seen=False, category_caps=1)
    module = tf.Module()
    module.rules = BusinessRulesLayer(rules, GENRE)
    module.serve = tf.function(
        lambda item_ids, scores: module.rules(item_ids, scores)._asdict(),
        input_signature=[tf.TensorSpec([None, 9], tf.string, "item_ids"),
                         tf.TensorSpec([None, 9], tf.float32, "scores")])
    path = str(tmp_path / "rules")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](item_ids=tf.constant(IDS),
                                               scores=tf.constant(SCORES, tf.float32))
    assert [s.decode() for s in out["item_ids"].numpy()[0]] == ["a", "c", "f"]
