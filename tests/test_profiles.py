"""User profile vectors: the (rating-weighted) normalised mean of the user's train item vectors.

A 4-item store with axis-aligned vectors makes every expected profile computable by hand.
"""
import numpy as np
import pandas as pd
import pytest

from recommenders_tf.features.item_vectors import ItemVectors, UserVectors
from recommenders_tf.features.profiles import build_user_profiles, profile_matrix

STORE = ItemVectors(ids=["i1", "i2", "i3", "i4"],
                    vectors=np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [4, 0, 0]], np.float32),
                    model="toy", fingerprint="f" * 64, text_fields=("text",))


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


TRAIN = frame([
    ("u1", "i1", 3.0, 1), ("u1", "i2", 1.0, 2), ("u1", "i1", 5.0, 3),  # i1 twice: one item
    ("u2", "i3", 2.0, 1), ("u2", "ix", 5.0, 2),                         # ix has no vector
    ("u3", "iy", 4.0, 1),                                               # only unknown items
])


def test_mean_profile_is_the_normalised_mean_of_the_users_train_rows():
    profiles = build_user_profiles(TRAIN, STORE, users=["u1", "u2", "u3", "u4"])
    # u1: mean([1,0,0], [0,2,0]) = [0.5, 1, 0] -> [1, 2, 0] / sqrt(5); the repeated i1 counts once.
    np.testing.assert_allclose(profiles.vectors[0], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-6)
    # u2: only i3 = [0,0,3] has a vector -> [0, 0, 1].
    np.testing.assert_allclose(profiles.vectors[1], [0, 0, 1], atol=1e-6)
    # u3 (no known item) and u4 (not in train) get zero vectors and are counted.
    np.testing.assert_array_equal(profiles.vectors[2:], np.zeros((2, 3)))
    assert profiles.n_empty == 2
    assert profiles.has_profile.tolist() == [True, True, False, False]
    assert profiles.n_items.tolist() == [2, 1, 0, 0]
    assert profiles.missing_item_pairs == 2  # (u2, ix) and (u3, iy)
    assert profiles.vectors.dtype == np.float32


def test_rating_weighted_profile_uses_the_mean_rating_of_repeated_pairs():
    profiles = build_user_profiles(TRAIN, STORE, users=["u1"], weighting="rating")
    # i1 rated 3 and 5 -> weight 4; i2 weight 1: (4*[1,0,0] + 1*[0,2,0]) / 5 = [0.8, 0.4, 0]
    # -> [2, 1, 0] / sqrt(5).
    np.testing.assert_allclose(profiles.vectors[0], np.array([2, 1, 0]) / np.sqrt(5), atol=1e-6)


def test_unnormalised_profile_is_the_plain_mean():
    profiles = build_user_profiles(TRAIN, STORE, users=["u1"], normalize=False)
    np.testing.assert_allclose(profiles.vectors[0], [0.5, 1.0, 0.0], atol=1e-6)


def test_default_users_are_the_sorted_train_users():
    profiles = build_user_profiles(TRAIN, STORE)
    assert profiles.user_ids.tolist() == ["u1", "u2", "u3"]
    assert profiles.n_empty == 1


def test_profile_matrix_and_user_store_round_trip(tmp_path):
    profiles = build_user_profiles(TRAIN, STORE, users=["u1", "u2"])
    rows, found = profile_matrix(profiles, ["u2", "nobody"])
    np.testing.assert_allclose(rows[0], [0, 0, 1], atol=1e-6)
    assert found.tolist() == [True, False] and not rows[1].any()
    store = profiles.to_store(STORE, extra={"split": "P1"})
    loaded = UserVectors.load(store.save(tmp_path / "user_profiles"))
    assert loaded.fingerprint == STORE.fingerprint and loaded.extra["split"] == "P1"
    assert loaded.extra["profile"]["users_without_train_items"] == 0
    np.testing.assert_array_equal(loaded.vectors, profiles.vectors)


def test_bad_train_rows_fail_naming_row_and_field():
    bad = TRAIN.copy()
    bad.loc[4, "rating"] = -1.0
    with pytest.raises(ValueError, match="train row 4: field 'rating'"):
        build_user_profiles(bad, STORE, weighting="rating")
    missing = TRAIN.copy()
    missing.loc[2, "item_id"] = None
    with pytest.raises(ValueError, match="train row 2: field 'item_id' is missing"):
        build_user_profiles(missing, STORE)
    with pytest.raises(ValueError, match="weighting must be one of"):
        build_user_profiles(TRAIN, STORE, weighting="max")
    with pytest.raises(ValueError, match="'u1' is listed twice"):
        build_user_profiles(TRAIN, STORE, users=["u1", "u1"])
