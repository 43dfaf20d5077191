"""The ranking-loss registry: keys, modes, TF-Ranking classes, padding and hand-computed values."""
import math

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.compat import tfr
from recommenders_tf.models.losses import (LOSS_KEYS, LOSSES, RankingLoss, get_loss,
                                           keys_by_mode)

L = tfr.keras.losses

EXPECTED = {
    "mse": ("pointwise", L.MeanSquaredLoss, "rating"),
    "bce": ("pointwise", L.SigmoidCrossEntropyLoss, "click"),
    "pairwise_logistic": ("pairwise", L.PairwiseLogisticLoss, "relevance"),
    "pairwise_hinge": ("pairwise", L.PairwiseHingeLoss, "relevance"),
    "softmax": ("listwise", L.SoftmaxLoss, "relevance"),
    "listmle": ("listwise", L.ListMLELoss, "relevance"),
    "approx_ndcg": ("listwise", L.ApproxNDCGLoss, "relevance"),
}


def test_registry_maps_each_key_to_its_tf_ranking_class_and_mode():
    assert set(LOSS_KEYS) == set(EXPECTED)
    for key, (mode, cls, label_kind) in EXPECTED.items():
        spec = get_loss(key)
        assert spec.mode == mode, key
        assert spec.label_kind == label_kind, key
        built = spec.build()
        # exact class, not a subclass: SoftmaxLoss and UniqueSoftmaxLoss must not be confused
        assert type(built) is cls, (key, type(built))
    assert keys_by_mode("pointwise") == ("mse", "bce")
    assert keys_by_mode("pairwise") == ("pairwise_logistic", "pairwise_hinge")
    assert keys_by_mode("listwise") == ("softmax", "listmle", "approx_ndcg")
    assert get_loss("SoftMax").key == "softmax"  # keys are case-insensitive


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown ranking loss 'lambdamart'.*softmax"):
        get_loss("lambdamart")
    with pytest.raises(ValueError, match="unknown loss mode"):
        keys_by_mode("groupwise")


def test_pointwise_losses_average_over_real_entries_only():
    labels = np.array([[3.0, 5.0, 0.0]], np.float32)
    scores = np.array([[2.0, 5.0, 100.0]], np.float32)
    mask = np.array([[True, True, False]])
    # (3-2)^2 and (5-5)^2 over the two real entries; the padded 100 vs 0 is ignored.
    assert float(RankingLoss("mse")(labels, scores, mask)) == pytest.approx(0.5)
    clicks = np.array([[1.0, 0.0, 1.0]], np.float32)
    logits = np.array([[0.0, 2.0, -40.0]], np.float32)
    expected = (math.log(2.0) + math.log1p(math.exp(2.0))) / 2
    assert float(RankingLoss("bce")(clicks, logits, mask)) == pytest.approx(expected, rel=1e-5)


def test_pairwise_logistic_hand_value_through_the_wrapper():
    labels = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    scores = np.array([[1.0, 2.0, 3.0, 50.0]], np.float32)
    mask = np.array([[True, True, True, False]])  # the last entry is padding by mask alone
    # Pairs (0,1), (0,2): log(1+e^1) + log(1+e^2), divided by batch * list_size = 4.
    expected = (math.log1p(math.e) + math.log1p(math.e ** 2)) / 4
    assert float(RankingLoss("pairwise_logistic")(labels, scores, mask)) == pytest.approx(
        expected, rel=1e-5)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_padding_never_changes_any_loss(key):
    rng = np.random.default_rng(0)
    # Distinct real labels per list: ListMLE shuffles ties at random.
    labels = np.array([[2.0, 0.0, 1.0, 3.0, 0.0], [0.0, 1.0, 3.0, 2.0, 4.0]], np.float32)
    if get_loss(key).label_kind == "click":
        labels = (labels > 0).astype(np.float32)
    scores = rng.normal(size=labels.shape).astype(np.float32)
    mask = np.array([[True, True, True, False, False], [True, True, True, True, False]])
    base = float(RankingLoss(key)(labels, scores, mask))
    assert np.isfinite(base)
    for padded_score in (-1e4, 0.0, 1e4):
        changed = scores.copy()
        changed[~mask] = padded_score
        relabelled = labels.copy()
        relabelled[~mask] = 5.0 if key != "bce" else 1.0  # a padded label is ignored too
        assert float(RankingLoss(key)(relabelled, changed, mask)) == pytest.approx(
            base, rel=1e-5, abs=1e-6), padded_score
    # The same lists without the padded columns give the same loss for the listwise losses
    # and the pointwise means; the pairwise ones divide by batch * list_size (see test_compat).
    if get_loss(key).mode != "pairwise":
        short = RankingLoss(key)(np.where(mask, labels, -1)[:, :4], scores[:, :4], mask[:, :4])
        # ListMLE's padded tail adds log(k!) per list with k padded entries: a constant
        # without gradient. Here list 1 loses one of its 2 pads, list 2 its only one.
        offset = math.log(2.0) / 2 if key == "listmle" else 0.0
        assert float(short) == pytest.approx(base - offset, rel=1e-5)


def test_every_registered_spec_is_listed_in_the_module_table():
    import recommenders_tf.models.losses as module

    for key in LOSSES:
        assert f"  {key} " in module.__doc__


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_loss_gives_a_training_signal_on_real_entries_only(key):
    """What training needs of each key (the pipeline trains one key per family end to end in
    test_train_ranking): finite gradients, non-zero on real entries, zero on padding, and a
    step against them lowers the loss."""
    import tensorflow as tf

    labels = np.array([[2.0, 0.0, 1.0, 0.0], [0.0, 3.0, 1.0, 2.0]], np.float32)
    if get_loss(key).label_kind == "click":
        labels = (labels > 0).astype(np.float32)
    mask = np.array([[True, True, True, False], [True, True, True, True]])
    scores = tf.Variable(np.random.default_rng(1).normal(size=labels.shape).astype(np.float32))
    loss = RankingLoss(key)
    with tf.GradientTape() as tape:
        before = loss(labels, scores, mask)
    grad = tape.gradient(before, scores).numpy()
    assert np.isfinite(grad).all() and np.abs(grad[mask]).sum() > 0
    assert np.all(grad[~mask] == 0.0)
    scores.assign_sub(0.1 * grad / np.abs(grad).max())
    assert float(loss(labels, scores, mask)) < float(before)
