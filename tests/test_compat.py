"""TF-Ranking through the compat shim gives hand-computed losses and metrics; Keras selection.

TF-Ranking's Keras losses default to Reduction.AUTO, i.e. SUM_OVER_BATCH_SIZE: the sum of the
weighted per-element losses divided by the number of elements. What an "element" is differs:
  * pairwise losses sum pair losses over j and return one value per (list, item i), so they
    divide by batch_size * list_size, padded positions included: for y_true=[[1,0,0]],
    y_pred=[[1,2,3]] the logistic loss is (log(1+e^1) + log(1+e^2)) / 3 = 1.14673;
  * SoftmaxLoss returns one cross-entropy per list weighted by the list's label sum, divided by
    batch_size;
  * ListMLELoss and ApproxNDCGLoss return one value per list, divided by batch_size.
Labels < 0 mark padding: such items form no pairs and carry no probability mass.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
from recommenders_tf.compat import tfr  # noqa: E402

L = tfr.keras.losses

# Batch of two lists of 4; the first has a padded item (label -1) with a large score that
# must be ignored.
Y = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, 0.0]], np.float32)
S = np.array([[1.0, 2.0, 3.0, 9.0], [0.5, -1.0, 2.0, 0.0]], np.float32)
# Distinct valid labels for ListMLE, which shuffles ties at random.
Y_MLE = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 1.0, 2.0]], np.float32)


def _valid(y):
    return y >= 0


def pairwise_ref(y, s, pair_loss):
    total = 0.0
    for yl, sl in zip(y, s):
        ok = _valid(yl)
        for i in range(len(yl)):
            for j in range(len(yl)):
                if ok[i] and ok[j] and yl[i] > yl[j]:
                    total += pair_loss(sl[i] - sl[j])
    return total / y.size  # batch_size * list_size


def softmax_ref(y, s):
    total = 0.0
    for yl, sl in zip(y, s):
        ok = _valid(yl)
        lse = math.log(np.exp(sl[ok]).sum())
        w = yl[ok].sum()
        total += w * sum((yl[i] / w) * (lse - sl[i]) for i in np.flatnonzero(ok))
    return total / len(y)


def listmle_ref(y, s):
    total = 0.0
    for yl, sl in zip(y, s):
        ok = np.flatnonzero(_valid(yl))
        order = ok[np.argsort(-yl[ok])]  # labels are distinct: no ties
        for pos in range(len(order)):
            rest = sl[order[pos:]]
            total += math.log(np.exp(rest).sum()) - sl[order[pos]]
    return total / len(y)


def approx_ndcg_ref(y, s, temperature=0.1):
    total = 0.0
    for yl, sl in zip(y, s):
        ok = np.flatnonzero(_valid(yl))
        z = sl[ok] / temperature
        # rank_i = 1 + sum_{j != i} sigmoid(z_j - z_i); the discount base cancels in the ratio.
        n = len(z)
        sig = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731
        ranks = np.array([1 + sum(sig(z[j] - z[i]) for j in range(n) if j != i) for i in range(n)])
        gains = 2.0 ** yl[ok] - 1
        dcg = (gains / np.log1p(ranks)).sum()
        ideal = np.sort(gains)[::-1]
        idcg = (ideal / np.log1p(np.arange(1, len(ideal) + 1))).sum()
        total += -dcg / idcg
    return total / len(y)


def ranked_labels(yl, sl):
    ok = np.flatnonzero(_valid(yl))
    return yl[ok[np.argsort(-sl[ok])]]


def ndcg_metric_ref(y, s):
    vals = []
    for yl, sl in zip(y, s):
        gains = 2.0 ** ranked_labels(yl, sl) - 1
        disc = 1 / np.log2(np.arange(2, len(gains) + 2))
        vals.append((gains * disc).sum() / (np.sort(gains)[::-1] * disc).sum())
    return float(np.mean(vals))


def mrr_metric_ref(y, s):
    return float(np.mean([1.0 / (np.flatnonzero(ranked_labels(yl, sl) > 0)[0] + 1)
                          for yl, sl in zip(y, s)]))


def logistic(d):
    return math.log1p(math.exp(-d))


def hinge(d):
    return max(0.0, 1.0 - d)


def test_pairwise_logistic_single_list_divides_by_list_size():
    got = float(L.PairwiseLogisticLoss()([[1.0, 0.0, 0.0]], [[1.0, 2.0, 3.0]]))
    expected = (math.log(1 + math.e) + math.log(1 + math.e ** 2)) / 3
    assert expected == pytest.approx(1.14673, abs=1e-5)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "loss, reference",
    [
        (L.PairwiseLogisticLoss(), lambda y, s: pairwise_ref(y, s, logistic)),
        (L.PairwiseHingeLoss(), lambda y, s: pairwise_ref(y, s, hinge)),
        (L.SoftmaxLoss(), softmax_ref),
        (L.ApproxNDCGLoss(), approx_ndcg_ref),
    ],
    ids=["pairwise-logistic", "pairwise-hinge", "softmax", "approx-ndcg"],
)
def test_losses_match_formulas_with_padding(loss, reference):
    assert float(loss(Y, S)) == pytest.approx(reference(Y, S), rel=1e-5)
    # The padded item's score does not matter.
    s2 = S.copy()
    s2[0, 3] = -50.0
    assert float(loss(Y, s2)) == pytest.approx(float(loss(Y, S)), rel=1e-5)


def test_hand_values_of_the_batch():
    # Spelled out once so the references above cannot drift together with the code.
    pl = (math.log1p(math.e) + math.log1p(math.e ** 2) + math.log1p(math.e ** -1)
          + math.log1p(math.e ** 1.5) + math.log1p(math.e ** 3) + math.log1p(math.e)) / 8
    assert float(L.PairwiseLogisticLoss()(Y, S)) == pytest.approx(pl, rel=1e-5)
    assert float(L.PairwiseHingeLoss()(Y, S)) == pytest.approx((2 + 3 + 0 + 2.5 + 4 + 2) / 8)


def test_listmle_distinct_labels():
    got = float(L.ListMLELoss()(Y_MLE, S))
    assert got == pytest.approx(listmle_ref(Y_MLE, S), rel=1e-5)
    # First list by hand: order by label is items 0 (s=1), 2 (s=3), 1 (s=2).
    first = (math.log(math.e + math.e**3 + math.e**2) - 1) + (math.log(math.e**3 + math.e**2) - 3)
    assert float(L.ListMLELoss()(Y_MLE[:1], S[:1])) == pytest.approx(first, rel=1e-5)


def test_metrics_ndcg_and_mrr():
    ndcg = tfr.keras.metrics.NDCGMetric()
    ndcg.update_state(Y, S)
    # List 1 ranks items 2, 1, 0 (padding excluded): gains 1, 0, 3; list 2's relevant item is 4th.
    hand = ((1 + 3 / math.log2(4)) / (3 + 1 / math.log2(3)) + 1 / math.log2(5)) / 2
    assert ndcg_metric_ref(Y, S) == pytest.approx(hand)
    assert float(ndcg.result()) == pytest.approx(hand, rel=1e-5)
    mrr = tfr.keras.metrics.MRRMetric()
    mrr.update_state(Y, S)
    assert mrr_metric_ref(Y, S) == pytest.approx((1 + 1 / 4) / 2)
    assert float(mrr.result()) == pytest.approx((1 + 1 / 4) / 2, rel=1e-6)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_import_after_keras3_tensorflow_raises():
    proc = _run("""
        import tensorflow as tf
        assert tf.keras.__version__.startswith("3"), tf.keras.__version__
        try:
            import recommenders_tf
        except Exception as e:  # the package object is unbound when its import fails
            print("RAISED", type(e).__name__, type(e).__module__)
        else:
            print("NO ERROR")
    """)
    assert "RAISED KerasVersionError recommenders_tf" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_import_first_selects_keras2():
    proc = _run("""
        import recommenders_tf
        import tensorflow as tf
        import tf_keras
        print("BACKEND", tf.keras.layers.Dense.__module__.split(".")[0])
        print("KERAS", tf_keras.__version__)
    """)
    assert "BACKEND tf_keras" in proc.stdout, proc.stdout + proc.stderr
    assert "KERAS 2." in proc.stdout, proc.stdout + proc.stderr
