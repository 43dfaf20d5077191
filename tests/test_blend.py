"""Score blends of two models (recommenders_tf.evaluation.blend) and pipelines.bench_blend."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines import bench_blend
from recommenders_tf.evaluation.blend import (PEER_ALONE, blend, blend_curve, blend_study,
                                              choose_weight, standardize_rows)
from recommenders_tf.evaluation.protocol import TopKEvaluator

DCG2 = 1 / math.log2(3)  # NDCG@10 of one relevant item at rank 2


def test_rows_are_standardised_and_a_constant_row_becomes_zeros():
    z = standardize_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z[0], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    np.testing.assert_array_equal(z[1], [0.0, 0.0, 0.0])


def test_the_ends_of_the_blend_are_each_source_alone_and_scale_does_not_matter():
    a, b = np.array([[0.0, 1.0, 4.0]]), np.array([[30.0, 20.0, 10.0]])
    np.testing.assert_allclose(blend(a, b, 0.0), standardize_rows(a))
    np.testing.assert_allclose(blend(a, b, PEER_ALONE), standardize_rows(b))
    # Multiplying a source by 100 changes nothing: each is standardised first.
    np.testing.assert_allclose(blend(a * 100, b, 1.0), blend(a, b, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        blend(a, b, -1.0)


def _frame(pairs):
    return pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                         "rating": 1.0, "timestamp": range(len(pairs))})


# Two users, candidates i0..i3 (every one in train); each user has seen i0.
TRAIN = _frame([("u1", "i0"), ("u2", "i0"), ("u3", "i1"), ("u3", "i2"), ("u3", "i3")])
TEST = _frame([("u1", "i1"), ("u2", "i2")])
# Source a is right about u1 and puts u2's item second; source b the other way round. Each is
# sure of its hit and unsure of its miss, so their sum finds both.
A = {"u1": [0.0, 3.0, 0.0, 1.0], "u2": [0.0, 0.0, 1.0, 1.2]}
B = {"u1": [0.0, 1.0, 0.0, 1.2], "u2": [0.0, 0.0, 3.0, 1.0]}


def _fn(table):
    return lambda users: np.array([table[u] for u in users])


def test_the_curve_scores_each_weight_with_known_answers():
    ev = TopKEvaluator(TRAIN, TEST, ks=(10,))
    assert list(ev.item_ids) == ["i0", "i1", "i2", "i3"]
    curve = blend_curve(ev, _fn(A), _fn(B), [0.0, 1.0, PEER_ALONE])
    assert [r["weight"] for r in curve] == [0.0, 1.0, PEER_ALONE]
    ndcg = [r["ndcg@10"] for r in curve]
    assert ndcg[0] == pytest.approx((1 + DCG2) / 2)
    assert ndcg[1] == pytest.approx(1.0)
    assert ndcg[2] == pytest.approx((DCG2 + 1) / 2)
    assert choose_weight(curve) == 1.0


def test_a_tie_is_won_by_the_weight_listed_first():
    curve = [{"weight": 0.0, "ndcg@10": 0.3}, {"weight": 1.0, "ndcg@10": 0.3},
             {"weight": 2.0, "ndcg@10": 0.2}]
    assert choose_weight(curve) == 0.0
    with pytest.raises(ValueError):
        choose_weight([])


class _Fixed:
    """A 'model' whose scores per user are given, recording the train part it was fitted on."""

    fits = []

    def __init__(self, name, table):
        self.name, self.table = name, table

    def fit(self, train, validation=None):
        _Fixed.fits.append((self.name, len(train), len(validation)))

    def score(self, users, item_ids):
        return np.array([[self.table(u).get(i, 0.0) for i in item_ids] for u in users])


def _study_data():
    # Ten distinct items per user: the last two (20%) are test, the last of train (20% of 8,
    # rounded down) is the validation item.
    rows = []
    for u in range(30):
        rows += [(f"u{u}", f"i{(u + k) % 12}") for k in range(10)]
    frame = _frame(rows)
    test_mask = frame.groupby("user_id").cumcount() >= 8
    return frame[~test_mask], frame[test_mask]


def test_the_weight_is_chosen_on_validation_and_reported_on_test():
    train, test = _study_data()
    targets = test.groupby("user_id").item_id.apply(set).to_dict()
    val_targets = {u: g.item_id.iloc[-1] for u, g in train.groupby("user_id")}

    def base_table(u):  # knows every user's validation item, nothing of the test items
        return {val_targets[u]: 1.0}

    def peer_table(u):  # knows the test items only
        return {i: 1.0 for i in targets[u]}

    _Fixed.fits = []
    build = lambda name, item_ids: _Fixed(name, base_table if name == "base" else peer_table)  # noqa
    study = blend_study(train, test, build, base="base", peers=("peer",), weights=(1.0, 0.5),
                        seed=0)
    assert study["grid"] == [0.0, 0.5, 1.0, PEER_ALONE]
    found = study["peers"]["peer"]
    # On validation the base is right and the peer adds nothing: weight 0 wins there ...
    assert found["chosen_weight"] == 0.0
    assert found["validation"][0]["ndcg@10"] == pytest.approx(1.0)
    # ... and is reported on test, where the peer alone would have been perfect.
    assert found["chosen"] == found["test"][0]
    assert found["test"][-1]["ndcg@10"] == pytest.approx(1.0)
    assert found["chosen"]["ndcg@10"] < found["test"][-1]["ndcg@10"] - 0.1
    # Each stage fits both models on its own train part minus a validation slice: 6 of the
    # validation stage's 7 items per user, 7 of the test stage's 8.
    assert sorted(_Fixed.fits) == [("base", 180, 30), ("base", 210, 30),
                                   ("peer", 180, 30), ("peer", 210, 30)]
    assert study["stages"] == {"validation": {"users": 30}, "test": {"users": 30}}


def test_bad_grids_are_refused():
    train, test = _study_data()
    build = lambda name, item_ids: _Fixed(name, lambda u: {})  # noqa
    for weights in ((), (0.0,), (-1.0,), (PEER_ALONE,)):
        with pytest.raises(ValueError, match="positive and finite"):
            blend_study(train, test, build, base="a", peers=("b",), weights=weights)
    with pytest.raises(ValueError, match="at least one peer"):
        blend_study(train, test, build, base="a", peers=(), weights=(1.0,))
    with pytest.raises(ValueError, match="cannot also be a peer"):
        blend_study(train, test, build, base="a", peers=("a",), weights=(1.0,))


def test_bench_blend_writes_its_table(tmp_path):
    config = bench_blend.BenchBlendConfig(
        dataset="synthetic-tiny", base="EASE", peers=("most-popular",), weights=(1.0,),
        results_dir=str(tmp_path / "results"), benchmarks_md=str(tmp_path / "B.md"),
        plot_dir=str(tmp_path / "plots"))
    out = bench_blend.main(config)
    payload = json.loads((tmp_path / "results" / "synthetic-tiny-P1-blend.json").read_text())
    assert payload["protocol"] == "P1-blend"
    assert [r["model"] for r in payload["rows"]] == ["EASE", "most-popular",
                                                     "EASE + w x most-popular"]
    study = out["study"]["peers"]["most-popular"]
    chosen = payload["rows"][2]
    assert chosen["metrics"]["ndcg@10"] == pytest.approx(study["chosen"]["ndcg@10"], abs=1e-5)
    # The ends of the test curve are the two models alone.
    assert payload["rows"][0]["metrics"]["ndcg@10"] == pytest.approx(
        study["test"][0]["ndcg@10"], abs=1e-5)
    assert payload["rows"][1]["metrics"]["ndcg@10"] == pytest.approx(
        study["test"][-1]["ndcg@10"], abs=1e-5)
    assert chosen["chosen_weight"] == ("peer alone" if study["chosen_weight"] == PEER_ALONE
                                       else f"{study['chosen_weight']:g}")
    assert chosen["notes"].startswith(f"w={chosen['chosen_weight']} chosen on validation")
    assert "how far re-weighting" in (tmp_path / "B.md").read_text()
    # The row carries both curves for the plot, from the base alone to the peer alone.
    curve = chosen["curve"]
    assert curve["weights"] == ["0", "1", "peer alone"]
    assert curve["test_ndcg@10"][0] == payload["rows"][0]["metrics"]["ndcg@10"]
    assert curve["test_ndcg@10"][-1] == payload["rows"][1]["metrics"]["ndcg@10"]
    assert len(curve["validation_ndcg@10"]) == 3 and chosen["chosen_weight"] in curve["weights"]
    assert (tmp_path / "plots" / "p1-blend-synthetic-tiny.png").stat().st_size > 1000
    assert out["plot"].endswith("p1-blend-synthetic-tiny.png")
