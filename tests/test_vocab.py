"""Vocabularies: built from train only, ordered by frequency, saved and loaded as text."""
import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.data import schema
from recommenders_tf.data.splits import temporal_split
from recommenders_tf.features.vocab import Vocabulary


def test_order_is_count_desc_then_token_and_padding_is_ignored():
    vocab = Vocabulary.from_values(["b", "a", "c", "b", "a", "d", "b", "", ""], name="item_id")
    assert vocab.tokens == ["b", "a", "c", "d"]
    assert vocab.counts == [3, 2, 1, 1]
    assert vocab.count("a") == 2 and vocab.count("zzz") == 0
    assert vocab.index("b") == 1 and vocab.index("zzz") == 0
    np.testing.assert_allclose(vocab.probabilities(), [0, 3 / 7, 2 / 7, 1 / 7, 1 / 7])
    assert Vocabulary.from_values("aabbbc", min_count=2).tokens == ["b", "a"]
    assert Vocabulary.from_values("aabbbc", max_size=1).tokens == ["b"]


def test_built_from_train_only_test_item_maps_to_oov():
    frame = schema.canonical_interactions(pd.DataFrame(
        [("u", f"i{k}", 1.0, k) for k in range(5)] + [("v", "i0", 1.0, 1)],
        columns=list(schema.INTERACTION_COLUMNS)))
    split = temporal_split(frame)  # u's last item i4 goes to test
    assert split.test[schema.ITEM_ID].tolist() == ["i4"]
    vocab = Vocabulary.from_values(split.train[schema.ITEM_ID], name="item_id")
    assert "i4" not in vocab and vocab.tokens[0] == "i0"  # i0 seen twice
    lookup = vocab.string_lookup()
    ids = lookup(tf.constant(["i0", "i1", "i4", ""])).numpy().tolist()
    assert ids == [1, 2, 0, 0]  # test-only item and padding → OOV index 0
    assert lookup.vocabulary_size() == len(vocab) + 1
    two_oov = vocab.string_lookup(num_oov_indices=2)
    assert two_oov(tf.constant(["i0"])).numpy().tolist() == [vocab.index("i0", 2)] == [2]


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.from_values(["x y", "é", "é", "z"], name="title")
    directory = vocab.save(tmp_path / "vocab" / "title")
    assert (directory / "vocab.txt").read_text(encoding="utf-8") == "é\nx y\nz\n"
    assert (directory / "counts.tsv").read_text(encoding="utf-8").splitlines()[1] == "é\t2"
    loaded = Vocabulary.load(directory)
    assert loaded == vocab and loaded.name == "title"
    assert loaded.string_lookup()(tf.constant(["z"])).numpy().tolist() == [3]


def test_bad_inputs():
    with pytest.raises(ValueError, match="newline"):
        Vocabulary(["a\nb"], [1]).save("/tmp/never-written")
    with pytest.raises(ValueError, match="empty"):
        Vocabulary([], []).string_lookup()
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary(["a", "a"], [1, 1])


def test_build_save_load_vocabularies(tmp_path):
    from recommenders_tf.features.vocab import (build_vocabularies, load_vocabularies,
                                                save_vocabularies)

    train = pd.DataFrame({"user_id": ["u", "v", "v"], "item_id": ["a", "a", "b"],
                          "genres": ["X|Y", "Y", ""]})
    vocabs = build_vocabularies(train)
    assert vocabs["user_id"].tokens == ["v", "u"] and vocabs["item_id"].counts == [2, 1]
    genres = build_vocabularies(train, ["genres"], separator="|")["genres"]
    assert genres.tokens == ["Y", "X"] and genres.counts == [2, 1]
    save_vocabularies(vocabs, tmp_path)
    assert load_vocabularies(tmp_path) == vocabs
