"""tf.data builders: history without leakage, serving histories, padded lists, sharding."""
import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.data import schema
from recommenders_tf.data.datasets import (listwise_dataset, pointwise_dataset, previous_items,
                                           user_history)


def _frame(rows):
    return schema.canonical_interactions(
        pd.DataFrame(rows, columns=list(schema.INTERACTION_COLUMNS)))


# u: a(1) b(2) c(3) e(3) d(4) — c and e share t=3; v: x(5) y(1).
ROWS = [("u", "c", 3.0, 3), ("v", "x", 5.0, 5), ("u", "a", 1.0, 1), ("u", "d", 4.0, 4),
        ("v", "y", 2.0, 1), ("u", "b", 2.0, 2), ("u", "e", 5.0, 3)]


def _decode(array):
    return [[v.decode() for v in row] for row in array]


def test_history_holds_only_strictly_earlier_items():
    frame = _frame(ROWS)
    ds = pointwise_dataset(frame, batch_size=10, shuffle=False, history=3)
    batch = next(iter(ds))
    got = {(u.decode(), i.decode()): (h, m.tolist()) for u, i, h, m in zip(
        batch["user_id"].numpy(), batch["item_id"].numpy(), _decode(batch["history"].numpy()),
        batch["history_mask"].numpy())}
    assert got[("u", "a")] == (["", "", ""], [False, False, False])
    assert got[("u", "b")] == (["", "", "a"], [False, False, True])
    # c and e happen at the same second: neither is in the other's history.
    assert got[("u", "c")] == (["", "a", "b"], [False, True, True])
    assert got[("u", "e")] == (["", "a", "b"], [False, True, True])
    # d: the last 3 before t=4 in (time, item id) order: b, c, e.
    assert got[("u", "d")] == (["b", "c", "e"], [True, True, True])
    assert got[("v", "x")] == (["", "", "y"], [False, False, True])
    # Row order of the batch is the frame's order when not shuffled.
    assert [v.decode() for v in batch["item_id"].numpy()] == [r[1] for r in ROWS]
    assert batch["rating"].dtype == tf.float32 and batch["timestamp"].dtype == tf.int64
    assert batch["history"].shape == (7, 3)


def test_history_never_contains_current_or_future_items():
    rng = np.random.default_rng(0)
    frame = _frame([(f"u{rng.integers(5)}", f"i{rng.integers(40)}", 1.0, int(rng.integers(20)))
                    for _ in range(300)])
    history, mask = previous_items(frame, 6)
    times = dict()
    for user, group in frame.groupby(schema.USER_ID):
        times[user] = group
    for row, (hist, valid) in enumerate(zip(history, mask)):
        user, _, _, ts = frame.iloc[row]
        earlier = times[user][times[user][schema.TIMESTAMP] < ts]
        earlier = earlier.sort_values([schema.TIMESTAMP, schema.ITEM_ID], kind="mergesort")
        expected = earlier[schema.ITEM_ID].tolist()[-6:]
        assert list(hist[valid]) == expected
        assert list(valid) == [False] * (6 - len(expected)) + [True] * len(expected)


def test_shuffle_is_seeded():
    frame = _frame([(f"u{k}", f"i{k}", 1.0, k) for k in range(50)])
    first = lambda seed: next(iter(pointwise_dataset(frame, 50, seed=seed)))["item_id"].numpy()
    assert first(1).tolist() == first(1).tolist()
    assert first(1).tolist() != first(2).tolist()
    assert sorted(first(1).tolist()) == sorted(i.encode() for i in frame[schema.ITEM_ID])


def test_input_context_shards_and_splits_batch():
    frame = _frame([(f"u{k}", f"i{k}", 1.0, k) for k in range(10)])
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                             num_replicas_in_sync=2)
        batches = list(pointwise_dataset(frame, batch_size=4, shuffle=False,
                                         input_context=context))
        assert [len(b["item_id"]) for b in batches] == [2, 2, 1]  # global 4 → 2 per replica
        seen += [i.decode() for b in batches for i in b["item_id"].numpy()]
    assert sorted(seen) == sorted(frame[schema.ITEM_ID])  # disjoint shards cover everything


def test_user_history_most_recent_last_left_padded():
    out = user_history(_frame(ROWS), max_len=4)
    assert out["user_id"].tolist() == ["u", "v"]
    assert out["history"].tolist() == [["b", "c", "e", "d"], ["", "", "y", "x"]]
    assert out["history_mask"].tolist() == [[True] * 4, [False, False, True, True]]
    assert out["length"].tolist() == [4, 2]


def test_listwise_padding_labels_and_mask():
    positives = _frame([("u", "a", 5.0, 1), ("u", "b", 3.0, 2), ("v", "a", 4.0, 3)])
    negatives = pd.DataFrame({schema.USER_ID: ["u", "v", "v", "u"],
                              schema.ITEM_ID: ["n1", "n2", "a", "b"]})
    ds = listwise_dataset(positives, list_size=4, negatives=negatives, batch_size=8,
                          shuffle=False, seed=0)
    batch = next(iter(ds))
    lists = {}
    for user, items, labels, mask in zip(batch["user_id"].numpy(), batch["item_id"].numpy(),
                                         batch["label"].numpy(), batch["mask"].numpy()):
        lists[user.decode()] = (sorted((i.decode(), float(l)) for i, l, m in
                                       zip(items, labels, mask) if m),
                                [(i.decode(), float(l)) for i, l, m in zip(items, labels, mask)
                                 if not m])
    # u: a(5), b(3; the negative "b" loses to the positive), n1(0), one pad slot.
    assert lists["u"] == ([("a", 5.0), ("b", 3.0), ("n1", 0.0)], [("", -1.0)])
    # v: a(4; positive beats the negative), n2(0), two pad slots.
    assert lists["v"] == ([("a", 4.0), ("n2", 0.0)], [("", -1.0), ("", -1.0)])
    assert batch["item_id"].shape == (2, 4) and batch["mask"].dtype == tf.bool
    # Padding sits after the real entries.
    assert batch["mask"].numpy().tolist() == [[True, True, True, False],
                                              [True, True, False, False]]


def test_listwise_long_lists_are_seeded_subsets():
    positives = _frame([("u", f"i{k:02d}", float(1 + k % 5), k) for k in range(20)])
    make = lambda seed: next(iter(listwise_dataset(positives, list_size=5, seed=seed,
                                                   num_lists_per_user=3, shuffle=False,
                                                   label=None)))
    one, again, other = make(0), make(0), make(1)
    assert one["item_id"].shape == (3, 5)
    assert bool(tf.reduce_all(one["mask"]))
    assert np.all(one["label"].numpy() == 1.0)  # label=None: binary relevance
    assert one["item_id"].numpy().tolist() == again["item_id"].numpy().tolist()
    assert one["item_id"].numpy().tolist() != other["item_id"].numpy().tolist()
    for row in one["item_id"].numpy():
        assert len(set(row)) == 5  # no item twice in a list
