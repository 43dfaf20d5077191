"""Splits of BENCHMARK.md on hand-made frames whose split is worked out here."""
import hashlib
import json
import time

import numpy as np
import pandas as pd
import pytest

from recommenders_tf.data import schema
from recommenders_tf.data.splits import (BUCKETS, Split, canonical_csv, cold_item_split,
                                         frame_sha256, random_split, rating_split, sample_users,
                                         sparsity_buckets, split_for_protocol, temporal_split,
                                         validation_split)


def _frame(rows):
    return schema.canonical_interactions(
        pd.DataFrame(rows, columns=list(schema.INTERACTION_COLUMNS)))


def _p1_frame():
    rows = []
    # a: 11 interactions; floor(0.2 * 11) = 2 test. "b" and "z" tie at t=9: the tie is broken by
    # item id, so the order ends ... b(9), z(9), m(10) and the test set is {z, m}.
    rows += [("a", f"i{t}", 3.0, t) for t in range(1, 9)]
    rows += [("a", "z", 4.0, 9), ("a", "b", 2.0, 9), ("a", "m", 5.0, 10)]
    rows += [("b", f"j{t}", 1.0, t) for t in range(4)]  # 4 < 5: wholly train
    rows += [("c", f"k{t}", 2.0, 100 - t) for t in range(5)]  # 5: one test, the latest (k0)
    rows += [("e", f"e{t:02d}", 1.0, t) for t in range(10)]  # 10 → the last 2 in test
    rows += [("f", f"f{t:02d}", 1.0, t) for t in range(14)]  # floor(2.8) = 2
    frame = _frame(rows)
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order must not matter


def _pairs(frame, user):
    return set(frame.loc[frame[schema.USER_ID] == user, schema.ITEM_ID])


def test_temporal_split_matches_hand_computed_result():
    split = temporal_split(_p1_frame(), seed=7, dataset="hand")
    test = split.test
    assert _pairs(test, "a") == {"z", "m"}
    assert "b" in _pairs(split.train, "a")
    assert _pairs(test, "b") == set()
    assert _pairs(split.train, "b") == {"j0", "j1", "j2", "j3"}
    assert _pairs(test, "c") == {"k0"}
    assert _pairs(test, "e") == {"e08", "e09"}
    assert _pairs(test, "f") == {"f12", "f13"}
    assert len(split.train) + len(test) == len(_p1_frame())
    assert split.protocol == "P1" and split.seed == 7 and split.dataset == "hand"
    assert list(test.columns) == list(schema.INTERACTION_COLUMNS)


def test_temporal_split_rounding_is_not_fooled_by_float_error():
    # 0.2 * 35 = 7.000000000000001 and 0.2 * 15 = 3.0000000000000004 in floating point.
    for n, expected in ((35, 7), (15, 3), (9, 1), (24, 4)):
        frame = _frame([("u", f"i{t:03d}", 1.0, t) for t in range(n)])
        assert len(temporal_split(frame).test) == expected


def test_validation_split_applies_the_temporal_rule_to_train():
    split = temporal_split(_p1_frame())
    val = validation_split(split.train)
    assert val.protocol == "validation"
    # a keeps 9 train rows (i1..i8, b) → floor(1.8) = 1 validation row, the latest: b.
    assert _pairs(val.test, "a") == {"b"}
    # c has 4 train rows left: below 5, stays in train.
    assert _pairs(val.test, "c") == set()
    assert _pairs(val.test, "f") == {"f10", "f11"}  # 12 rows → 2
    assert len(val.train) + len(val.test) == len(split.train)


def test_random_split_is_seeded_and_sized():
    frame = _frame([(f"u{i % 7}", f"i{i}", 1.0, i) for i in range(103)])
    one, again, other = (random_split(frame, seed=1), random_split(frame, seed=1),
                         random_split(frame, seed=2))
    assert len(one.test) == 20  # floor(0.2 * 103)
    assert one.manifest() == again.manifest()
    assert one.manifest()["parts"]["test"]["sha256"] != other.manifest()["parts"]["test"]["sha256"]


def test_rating_split_prefers_predefined_split():
    frame = _frame([("u", "a", 1.0, 1), ("u", "b", 2.0, 2), ("v", "a", 3.0, 3)])
    dataset = schema.RecDataset(name="x", interactions=frame,
                                predefined_splits={"u1": (frame.iloc[:2], frame.iloc[2:])})
    split = rating_split(dataset)
    assert split.protocol == "P2" and split.info["source"] == "predefined:u1"
    assert list(split.test[schema.ITEM_ID]) == ["a"] and len(split.train) == 2
    dataset.predefined_splits.clear()
    assert rating_split(dataset).info["source"] == "random"


def test_cold_item_split_holds_items_out_entirely():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(0, 30)}", 1.0, t) for u in range(25) for t in range(12)]
    frame = _frame(rows).drop_duplicates([schema.USER_ID, schema.ITEM_ID]).reset_index(drop=True)
    split = cold_item_split(frame, seed=4)
    cold = set(split.info["cold_items"])
    n_items = frame[schema.ITEM_ID].nunique()
    assert len(cold) == round(0.2 * n_items)
    assert not cold & set(split.train[schema.ITEM_ID])
    assert not cold & set(split.extra["warm_test"][schema.ITEM_ID])
    assert set(split.test[schema.ITEM_ID]) <= cold
    # Test = every cold interaction whose user is in train; warm rows follow P1 exactly.
    cold_rows = frame[frame[schema.ITEM_ID].isin(cold)]
    expected = cold_rows[cold_rows[schema.USER_ID].isin(set(split.train[schema.USER_ID]))]
    assert frame_sha256(split.test) == frame_sha256(expected)
    warm = temporal_split(frame[~frame[schema.ITEM_ID].isin(cold)])
    assert frame_sha256(split.train) == frame_sha256(warm.train)
    assert frame_sha256(split.extra["warm_test"]) == frame_sha256(warm.test)
    assert cold_item_split(frame, seed=4).manifest() == split.manifest()
    assert set(cold_item_split(frame, seed=5).info["cold_items"]) != cold
    assert "warm_test" in split.manifest()["parts"]


def test_cold_item_split_drops_cold_rows_of_users_without_train():
    frame = _frame([("u", "a", 1.0, 1), ("u", "b", 1.0, 2), ("only_cold", "b", 1.0, 3)] +
                   [("u", f"w{t}", 1.0, 10 + t) for t in range(8)])
    split = cold_item_split(frame, cold_fraction=0.1, seed=0)  # round(0.1 * 10) = 1 item
    (cold_item,) = split.info["cold_items"]
    users_with_cold = set(frame.loc[frame[schema.ITEM_ID] == cold_item, schema.USER_ID])
    assert set(split.test[schema.USER_ID]) == users_with_cold & {"u"}
    assert split.info["cold_rows_without_train_user"] == len(users_with_cold - {"u"})


def test_sparsity_buckets_boundaries():
    counts = {"a": 1, "b": 20, "c": 21, "d": 50, "e": 51, "f": 150, "g": 151}
    train = _frame([(u, f"i{k}", 1.0, k) for u, n in counts.items() for k in range(n)])
    buckets = sparsity_buckets(train, ["g", "a", "b", "c", "d", "e", "f", "nobody"])
    assert list(buckets) == [">150", "1-20", "1-20", "21-50", "21-50", "51-150", "51-150", "0"]
    assert list(buckets.index) == ["g", "a", "b", "c", "d", "e", "f", "nobody"]
    assert set(sparsity_buckets(train)) == set(BUCKETS)


def test_manifest_hashes_canonical_csv_independent_of_row_order(tmp_path):
    frame = _frame([("u2", "i1", 3.5, 5), ("u1", "i1", 4.0, 10)])
    expected_csv = "user_id,item_id,rating,timestamp\nu1,i1,4.0000,10\nu2,i1,3.5000,5\n"
    assert canonical_csv(frame) == expected_csv
    split = Split(train=frame, test=frame.iloc[:1], protocol="P1", seed=3, dataset="d",
                  info={"k": 1})
    manifest = split.manifest()
    assert manifest["parts"]["train"] == {
        "rows": 2, "users": 2, "items": 1,
        "sha256": hashlib.sha256(expected_csv.encode()).hexdigest()}
    shuffled = Split(train=frame.iloc[::-1], test=frame.iloc[:1], protocol="P1", seed=3,
                     dataset="d", info={"k": 1})
    assert shuffled.manifest() == manifest
    path = split.write_manifest(tmp_path / "run")
    assert json.loads(path.read_text()) == manifest


def test_canonical_csv_quotes_ids_that_need_it():
    frame = _frame([("u,1", "i1", 1.0, 1)])
    assert canonical_csv(frame) == 'user_id,item_id,rating,timestamp\n"u,1",i1,1.0000,1\n'


def test_split_for_protocol_dispatch(synthetic_tiny):
    p1 = split_for_protocol("P1", synthetic_tiny)
    assert p1.manifest() == temporal_split(synthetic_tiny.interactions,
                                           dataset=synthetic_tiny.name).manifest()
    assert split_for_protocol("p4", synthetic_tiny).protocol == "P4"
    assert split_for_protocol("P3", synthetic_tiny, seed=1).info["cold_items"]
    with pytest.raises(ValueError, match="unknown protocol"):
        split_for_protocol("P9", synthetic_tiny)


def test_temporal_split_handles_a_million_rows_in_seconds():
    rng = np.random.default_rng(0)
    n = 1_000_000
    frame = pd.DataFrame({
        schema.USER_ID: pd.Series(rng.integers(0, 6000, n).astype(str), dtype=object),
        schema.ITEM_ID: pd.Series(rng.integers(0, 4000, n).astype(str), dtype=object),
        schema.RATING: np.ones(n, np.float32),
        schema.TIMESTAMP: rng.integers(0, 10**9, n)})
    start = time.perf_counter()
    split = temporal_split(frame)
    elapsed = time.perf_counter() - start
    assert len(split.train) + len(split.test) == n
    assert elapsed < 15, f"P1 split of 1M rows took {elapsed:.1f}s"


def test_sample_test_users_keeps_every_row_of_the_sampled_users():
    from recommenders_tf.data.splits import sample_test_users

    test = pd.DataFrame({schema.USER_ID: [f"u{i % 20}" for i in range(60)],
                         schema.ITEM_ID: [f"i{i}" for i in range(60)]})
    kept, info = sample_test_users(test, 5, seed=1)
    assert info == {"sampled": 5, "of": 20, "seed": 1}
    assert kept[schema.USER_ID].nunique() == 5 and len(kept) == 15  # 3 rows per user
    assert list(kept.index) == sorted(kept.index)  # row order kept
    assert set(kept[schema.USER_ID]) == set(sample_users(test[schema.USER_ID], 5, seed=1)[0])
    same, info = sample_test_users(test, 0, seed=1)
    assert same is test and info["sampled"] == 20


def test_sample_users_is_seeded_capped_ordered_and_reported():
    users = [f"u{i}" for i in range(50)] * 2  # repeated ids count once
    kept, info = sample_users(users, 10, seed=3)
    assert info == {"sampled": 10, "of": 50, "seed": 3}
    assert len(set(kept)) == 10 and set(kept) <= set(users)
    # first-seen order of the input, and the same sample for the same seed
    assert list(kept) == sorted(kept, key=lambda u: int(u[1:]))
    assert list(sample_users(users, 10, seed=3)[0]) == list(kept)
    assert list(sample_users(users, 10, seed=4)[0]) != list(kept)
    # no cap, or a cap the data does not reach: everyone, unsampled
    for cap in (0, 50, 80):
        everyone, info = sample_users(users, cap, seed=3)
        assert list(everyone) == users[:50] and info["sampled"] == info["of"] == 50
