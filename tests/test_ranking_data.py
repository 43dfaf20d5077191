"""List builders of the ranking stage on tiny frames with hand-worked layouts."""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.cascade.candidates import top_candidates
from recommenders_tf.models.ranking_data import (RankingLists, candidate_lists, pair_lists,
                                                 rating_lists, scoring_lists)


def frame(rows):
    return pd.DataFrame({"user_id": pd.Series([r[0] for r in rows], dtype=object),
                         "item_id": pd.Series([r[1] for r in rows], dtype=object),
                         "rating": np.array([r[2] for r in rows], np.float32),
                         "timestamp": np.array([r[3] for r in rows], np.int64)})


INTERACTIONS = frame([
    ("a", "i1", 5, 10), ("a", "i2", 3, 20), ("a", "i3", 4, 20), ("a", "i4", 1, 30),
    ("a", "i5", 2, 40), ("b", "i2", 4, 5), ("b", "i9", 5, 6),
])


def test_rating_lists_chunks_in_time_order_with_strictly_earlier_history():
    lists = rating_lists(INTERACTIONS, list_size=2, history_len=3, label="rating")
    # User a: (i1), (i2, i3) share t=20, (i4), (i5) -> chunks [i1, i2], [i3, i4], [i5]; b: one.
    assert lists.user_id.tolist() == ["a", "a", "a", "b"]
    assert lists.item_id.tolist() == [["i1", "i2"], ["i3", "i4"], ["i5", ""], ["i2", "i9"]]
    assert lists.label.tolist() == [[5, 3], [4, 1], [2, -1], [4, 5]]
    assert lists.mask.tolist() == [[True, True], [True, True], [True, False], [True, True]]
    # History of a list: items strictly before its first timestamp (i3 at t=20 does not see
    # i2, which shares its timestamp); left-padded, most recent last.
    assert lists.history.tolist() == [["", "", ""], ["", "", "i1"], ["i2", "i3", "i4"],
                                      ["", "", ""]]
    assert lists.num_entries == len(INTERACTIONS)
    clicks = rating_lists(INTERACTIONS, list_size=2, history_len=1, label="click")
    assert clicks.label.tolist() == [[1, 0], [1, 0], [0, -1], [1, 1]]


def test_candidate_lists_hard_negatives_come_from_the_candidates_only():
    context = frame([("a", "i1", 5, 1), ("a", "i2", 4, 2), ("b", "i1", 3, 1)])
    positives = frame([("a", "i3", 5, 3), ("a", "i4", 2, 4), ("a", "i5", 4, 5),
                       ("b", "i6", 4, 2)])
    # a's candidates include a context item (i2) and a positive (i3): neither may be a negative.
    candidates = {"a": ["i2", "i3", "n1", "n2", "n3"], "b": ["n4", "i1"]}
    lists = candidate_lists(context, positives, list_size=4, negatives="hard",
                            candidates=candidates, max_positives=2, history_len=2, seed=1)
    assert lists.user_id.tolist() == ["a", "a", "b"]
    for items, labels, mask, user in zip(lists.item_id, lists.label, lists.mask, lists.user_id):
        real = items[mask]
        negatives = set(real[labels[mask] == 0])
        allowed = {"a": {"n1", "n2", "n3"}, "b": {"n4"}}[user]
        assert negatives <= allowed
        assert len(set(real)) == len(real)
    # a has 3 positives -> lists with 2 and 1 positives, each filled with a's 3 negatives when
    # room allows; b has 1 positive and a single allowed negative -> padded.
    assert sorted(int(l[m].sum()) for l, m in zip(lists.label[:2], lists.mask[:2])) == [1, 2]
    assert lists.mask.sum(axis=1).tolist()[2] == 2
    assert set(lists.item_id[0][lists.label[0] == 1]) | set(
        lists.item_id[1][lists.label[1] == 1]) == {"i3", "i4", "i5"}
    assert lists.history.tolist() == [["i1", "i2"], ["i1", "i2"], ["", "i1"]]
    again = candidate_lists(context, positives, list_size=4, negatives="hard",
                            candidates=candidates, max_positives=2, history_len=2, seed=1)
    assert again.item_id.tolist() == lists.item_id.tolist()  # seeded


def test_candidate_lists_easy_negatives_and_labels():
    context = frame([("a", "i1", 5, 1)])
    positives = frame([("a", "i2", 5, 2), ("a", "i3", 2, 3)])
    lists = candidate_lists(context, positives, list_size=5, negatives="easy",
                            catalog=["i1", "i2", "i3", "x", "y"], max_positives=2,
                            history_len=1, label="click", seed=0)
    row = dict(zip(lists.item_id[0], lists.label[0]))
    # Catalog minus context (i1) and positives leaves x and y; i3 (rating 2) is no click.
    assert row == {"i2": 1.0, "i3": 0.0, "x": 0.0, "y": 0.0, "": -1.0}
    with pytest.raises(ValueError, match="needs candidates"):
        candidate_lists(context, positives, 5, negatives="hard", max_positives=2)
    with pytest.raises(ValueError, match="max_positives"):
        candidate_lists(context, positives, 2, negatives="easy", max_positives=2)


def test_scoring_and_pair_lists_round_trip():
    lists = scoring_lists(["a", "b"], np.array([["i3", "i5"], ["i1", ""]], object),
                          INTERACTIONS, history_len=2, relevant=frame([("a", "i5", 1, 0)]))
    assert lists.label.tolist() == [[0, 1], [0, -1]]
    assert lists.history.tolist() == [["i4", "i5"], ["i2", "i9"]]
    pairs = frame([("b", "x", 1, 0), ("a", "y", 2, 0), ("b", "z", 3, 0)])
    grouped, rows = pair_lists(pairs, INTERACTIONS, list_size=1, history_len=1)
    assert grouped.user_id.tolist() == ["a", "b", "b"]
    assert rows[:, 0].tolist() == [1, 0, 2]
    assert grouped.item_id[:, 0].tolist() == ["y", "x", "z"]
    assert grouped.label[:, 0].tolist() == [2, 1, 3]


def test_top_candidates_excludes_history_and_fills_short_rows():
    catalog = ["i1", "i2", "i3", "i4"]
    scores = {"a": [4.0, 3.0, 2.0, 1.0], "b": [1.0, 1.0, 5.0, 0.0]}
    top = top_candidates(lambda users: np.array([scores[u] for u in users]), ["a", "b"],
                         catalog, frame([("a", "i1", 1, 0), ("a", "i3", 1, 0),
                                         ("a", "i4", 1, 0)]), k=3)
    # a keeps only i2; b's tie between i1 and i2 is broken by catalog position.
    assert top.tolist() == [["i2", "", ""], ["i3", "i1", "i2"]]


def test_split_holds_out_disjoint_lists():
    lists = rating_lists(INTERACTIONS, list_size=1, history_len=1)
    rest, held = lists.split(0.3, seed=0)
    assert len(rest) + len(held) == len(lists) and len(held) == 2
    pairs = {(u, i[0]) for u, i in zip(lists.user_id, lists.item_id)}
    got = {(u, i[0]) for part in (rest, held) for u, i in zip(part.user_id, part.item_id)}
    assert got == pairs
    with pytest.raises(ValueError, match="must be"):
        RankingLists(np.array(["a"], object), np.zeros((2, 1), object),
                     np.zeros((1, 2), object), np.zeros((1, 2), np.float32),
                     np.zeros((1, 2), bool))


def test_rating_lists_other_items_history_never_holds_the_lists_own_items():
    lists = rating_lists(INTERACTIONS, list_size=2, history_len=3, history="others")
    # a's chunks [i1, i2], [i3, i4], [i5]: the latest 3 of a's other items, in time order.
    assert lists.history.tolist() == [["i3", "i4", "i5"], ["i1", "i2", "i5"],
                                      ["i2", "i3", "i4"], ["", "", ""]]
    for items, hist in zip(lists.item_id, lists.history):
        assert not set(items) & set(hist) - {""}
