"""The ItemVectors store (round trip, lookup, validation of bad files) and the embed_items
pipeline end to end on synthetic-tiny (real encoder; a re-run must be served by the cache)."""
import json

import numpy as np
import pandas as pd
import pytest

from recommenders_tf.config import load_config
from recommenders_tf.features.item_vectors import (ItemVectors, UserVectors, VectorStoreError,
                                                   check_item_ids, item_texts)

VECTORS = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)


def make_store(**kw):
    args = dict(ids=["a", "b", "c"], vectors=VECTORS, model="toy", fingerprint="ab" * 32,
                text_fields=("title", "genres"), extra={"dataset": "toy", "n": np.int64(3)})
    args.update(kw)
    return ItemVectors(**args)


# ---- store ---------------------------------------------------------------------------------

def test_store_round_trips_exactly(tmp_path):
    path = make_store().save(tmp_path / "store")
    assert sorted(p.name for p in path.iterdir()) == ["item_ids.txt", "item_vectors.npy",
                                                      "meta.json"]
    assert (path / "item_ids.txt").read_text() == "a\nb\nc\n"
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["kind"], meta["model"], meta["dim"], meta["count"]) == ("item", "toy", 2, 3)
    assert meta["text_fields"] == ["title", "genres"] and meta["extra"]["n"] == 3
    loaded = ItemVectors.load(path, expected_fingerprint="ab" * 32)
    assert loaded.ids.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.vectors, VECTORS)
    assert loaded.vectors.dtype == np.float32
    assert (loaded.model, loaded.text_fields, loaded.dim) == ("toy", ("title", "genres"), 2)


def test_lookup_gives_zeros_and_a_mask_for_unknown_ids():
    vectors, found = make_store().lookup(["c", "zzz", "a"])
    np.testing.assert_array_equal(vectors, VECTORS[[2, 0, 0]] * [[1], [0], [1]])
    assert found.tolist() == [True, False, True]


def test_save_replaces_an_existing_store_and_leaves_no_temporary_folder(tmp_path):
    make_store().save(tmp_path / "store")
    make_store(ids=["x", "y"], vectors=VECTORS[:2]).save(tmp_path / "store")
    assert [p.name for p in tmp_path.iterdir()] == ["store"]
    assert ItemVectors.load(tmp_path / "store").ids.tolist() == ["x", "y"]


def test_invalid_stores_are_refused_when_built():
    with pytest.raises(VectorStoreError, match="shape \\(2, 2\\), expected \\(3, dim\\)"):
        make_store(vectors=VECTORS[:2])
    with pytest.raises(VectorStoreError, match="id 'a' appears twice \\(again at row 2\\)"):
        make_store(ids=["a", "b", "a"])
    with pytest.raises(VectorStoreError, match="row 1 is 'b\\\\nx'"):
        make_store(ids=["a", "b\nx", "c"])
    bad = VECTORS.copy()
    bad[2, 0] = np.nan
    with pytest.raises(VectorStoreError, match="row 2 \\(id 'c'\\) has a non-finite value"):
        make_store(vectors=bad)


@pytest.fixture
def saved(tmp_path):
    return make_store().save(tmp_path / "store")


def test_missing_file_is_named(saved):
    (saved / "item_ids.txt").unlink()
    with pytest.raises(VectorStoreError, match="item_ids.txt: missing file"):
        ItemVectors.load(saved)


def test_id_count_mismatch_names_both_files(saved):
    (saved / "item_ids.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(VectorStoreError, match="item_ids.txt: has 4 ids but item_vectors.npy "
                                               "has 3 rows"):
        ItemVectors.load(saved)


def test_repeated_id_names_the_line(saved):
    (saved / "item_ids.txt").write_text("a\nb\na\n")
    with pytest.raises(VectorStoreError, match="item_ids.txt, line 3: id 'a' repeats line 1"):
        ItemVectors.load(saved)


def test_shape_mismatch_with_meta_names_the_matrix(saved):
    np.save(saved / "item_vectors.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(VectorStoreError, match="item_vectors.npy: shape \\(3, 5\\) does not "
                                               "match meta.json \\(count=3, dim=2\\)"):
        ItemVectors.load(saved)


def test_changed_vectors_are_caught_by_the_hash(saved):
    np.save(saved / "item_vectors.npy", VECTORS[::-1].copy())
    with pytest.raises(VectorStoreError, match="item_vectors.npy: content differs"):
        ItemVectors.load(saved)


def test_corrupt_matrix_and_meta_are_named(saved):
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(VectorStoreError, match="meta.json: invalid JSON at line 1"):
        ItemVectors.load(saved)
    make_store().save(saved)
    (saved / "item_vectors.npy").write_bytes(b"garbage")
    with pytest.raises(VectorStoreError, match="item_vectors.npy: cannot read"):
        ItemVectors.load(saved)


def test_wrong_kind_and_fingerprint_are_refused(saved, tmp_path):
    with pytest.raises(VectorStoreError, match="missing file of the user vector store"):
        UserVectors.load(saved)
    (saved / "user_ids.txt").write_text("a\nb\nc\n")
    (saved / "user_vectors.npy").write_bytes((saved / "item_vectors.npy").read_bytes())
    with pytest.raises(VectorStoreError, match="field 'kind' is 'item', expected 'user'"):
        UserVectors.load(saved)
    with pytest.raises(VectorStoreError, match="field 'fingerprint'.*another model"):
        ItemVectors.load(saved, expected_fingerprint="cd" * 32)
    with pytest.raises(VectorStoreError, match="not a folder"):
        ItemVectors.load(tmp_path / "nowhere")


def test_item_texts_join_fields_and_spell_out_genres():
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Heat (1995)", " Alien "],
                          "genres": ["Action|Crime", ""], "text": ["x", None]})
    assert item_texts(items, ("title", "genres")) == ["Heat (1995). Action, Crime", "Alien"]
    assert item_texts(items) == ["x", ""]
    with pytest.raises(VectorStoreError, match="text field\\(s\\) \\['tags'\\] are not columns"):
        item_texts(items, ("title", "tags"))
    with pytest.raises(VectorStoreError, match="items row 1: item id '1' appears twice"):
        check_item_ids(pd.DataFrame({"item_id": ["1", "1"]}))


# ---- pipeline ------------------------------------------------------------------------------

def test_flags_build_the_config(tmp_path):
    from pipelines.embed_items import EmbedItemsConfig, parse_args

    yaml_path = tmp_path / "embed.yaml"
    yaml_path.write_text("batch_size: 16\nprofile_weighting: rating\n")
    config = parse_args(["--dataset", "ml-100k", "--config", str(yaml_path),
                         "--set", "text_fields=title,genres", "--set", "max_length=64"])
    assert config == EmbedItemsConfig(dataset="ml-100k", batch_size=16, max_length=64,
                                      profile_weighting="rating",
                                      text_fields=("title", "genres"))
    with pytest.raises(ValueError, match="split_protocol must be one of"):
        EmbedItemsConfig(split_protocol="P2").validate()


@pytest.mark.slow
def test_embed_items_end_to_end_then_all_cache_hits(tmp_path):
    from pipelines.embed_items import EmbedItemsConfig, main
    from recommenders_tf.data import load_dataset, temporal_split

    config = EmbedItemsConfig(dataset="synthetic-tiny", cache_dir=str(tmp_path / "cache"),
                              out_dir=str(tmp_path / "out"), progress=False)
    first = main(config)
    m = first["metrics"]
    data = load_dataset("synthetic-tiny")
    n_items = len(data.items)
    assert (m["items"], m["cache_hits"], m["cache_misses"]) == (n_items, 0, n_items)
    assert m["encoded"] > 0 and m["encoded_per_second"] > 0 and m["dim"] == 384
    store = ItemVectors.load(first["item_vectors"], expected_fingerprint=m["fingerprint"])
    assert store.ids.tolist() == data.items["item_id"].tolist()  # cold items included
    np.testing.assert_allclose(np.linalg.norm(store.vectors, axis=1), 1.0, atol=1e-5)
    assert store.extra["dataset"] == "synthetic-tiny" and store.text_fields == ("text",)

    # Profiles come from the P1 train split only: recompute one by hand from the store.
    split = temporal_split(data.interactions)
    users = UserVectors.load(first["user_profiles"])
    assert users.fingerprint == m["fingerprint"] and m["users_without_train_items"] == 0
    assert users.extra["split"]["train_sha256"] == split.manifest()["parts"]["train"]["sha256"]
    user = split.test["user_id"].iloc[0]
    train_items = split.train.loc[split.train.user_id == user, "item_id"].unique()
    test_items = split.test.loc[split.test.user_id == user, "item_id"].unique()
    mean = store.lookup(train_items)[0].mean(axis=0)
    expected = mean / np.linalg.norm(mean)
    got = users.lookup([user])[0][0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    leaky = store.lookup(np.r_[train_items, test_items])[0].mean(axis=0)
    assert np.abs(got - leaky / np.linalg.norm(leaky)).max() > 1e-3  # test items left out

    saved = load_config(EmbedItemsConfig, str(tmp_path / "out" / "config.yaml"))
    assert saved == config
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["cache_misses"] == n_items

    second = main(config)
    m2 = second["metrics"]
    assert (m2["cache_hits"], m2["cache_misses"], m2["encoded"]) == (n_items, 0, 0)
    assert m2["model_load_seconds"] == 0.0 and m2["encoded_per_second"] is None
    again = ItemVectors.load(second["item_vectors"])
    np.testing.assert_array_equal(again.vectors, store.vectors)
    assert again.ids.tolist() == store.ids.tolist()
