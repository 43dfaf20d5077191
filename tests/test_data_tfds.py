"""TFDS MovieLens: the offline failure message and the feature → schema conversion."""
import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf
import tensorflow_datasets as tfds

from recommenders_tf.data import schema
from recommenders_tf.data.registry import load_dataset
from recommenders_tf.data.tfds_loader import (TFDS_GENRES, TFDSUnavailableError, load_tfds,
                                              tfds_to_dataset)


def test_offline_failure_says_internet_and_suggests_raw_loader(monkeypatch):
    calls = []

    def offline_load(name, **kwargs):
        calls.append((name, kwargs.get("data_dir")))
        raise tfds.download.DownloadError(
            "Failed to get url https://files.grouplens.org/datasets/movielens/ml-100k.zip. "
            "HTTP code: 0.")

    monkeypatch.setattr(tfds, "load", offline_load)
    with pytest.raises(TFDSUnavailableError) as err:
        load_dataset("tfds:movielens/100k-ratings", data_dir="/tmp/nothing")
    message = str(err.value)
    assert calls == [("movielens/100k-ratings", "/tmp/nothing")]
    assert "needs internet" in message and "data_dir" in message
    assert "load_movielens_dir" in message and "DownloadError" in message
    assert isinstance(err.value.__cause__, tfds.download.DownloadError)


def test_unsupported_tfds_name():
    with pytest.raises(ValueError, match="unsupported TFDS dataset"):
        load_tfds("movielens/25m-ratings")


def _tfds_like_dataset():
    genres = [[TFDS_GENRES.index("Comedy"), TFDS_GENRES.index("Romance")],
              [TFDS_GENRES.index("Action")],
              [TFDS_GENRES.index("Comedy"), TFDS_GENRES.index("Romance")],
              [TFDS_GENRES.index("(no genres listed)")]]

    def rows():
        data = [(b"7", b"10", 4.0, 881250949, b"Cafe (1995)", True, 25.0, b"writer", b"0210"),
                (b"7", b"20", 2.0, 881250950, b"Heat (1995)", True, 25.0, b"writer", b"0210"),
                (b"8", b"10", 5.0, 881250951, b"Cafe (1995)", False, 18.0, b"student", b"9"),
                (b"8", b"30", 3.0, 881250952, b"Odd", False, 18.0, b"student", b"9")]
        for (user, movie, rating, ts, title, male, age, job, zip_code), genre in zip(data, genres):
            yield {"user_id": user, "movie_id": movie, "user_rating": np.float32(rating),
                   "timestamp": np.int64(ts), "movie_title": title,
                   "movie_genres": np.array(genre, np.int64), "user_gender": male,
                   "bucketized_user_age": np.float32(age), "user_occupation_text": job,
                   "user_zip_code": zip_code}

    spec = {"user_id": tf.TensorSpec([], tf.string), "movie_id": tf.TensorSpec([], tf.string),
            "user_rating": tf.TensorSpec([], tf.float32), "timestamp": tf.TensorSpec([], tf.int64),
            "movie_title": tf.TensorSpec([], tf.string),
            "movie_genres": tf.TensorSpec([None], tf.int64),
            "user_gender": tf.TensorSpec([], tf.bool),
            "bucketized_user_age": tf.TensorSpec([], tf.float32),
            "user_occupation_text": tf.TensorSpec([], tf.string),
            "user_zip_code": tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(rows, output_signature=spec)


def test_tfds_features_convert_to_schema():
    data = tfds_to_dataset(_tfds_like_dataset(), name="ml-100k", batch_size=3)
    inter = data.interactions
    assert inter.values.tolist() == [["7", "10", 4.0, 881250949], ["7", "20", 2.0, 881250950],
                                     ["8", "10", 5.0, 881250951], ["8", "30", 3.0, 881250952]]
    assert dict(inter.dtypes.astype(str)) == {"user_id": "object", "item_id": "object",
                                              "rating": "float32", "timestamp": "int64"}
    items = data.items.set_index(schema.ITEM_ID)
    assert list(items.index) == ["10", "20", "30"]
    assert items.loc["10", schema.GENRES] == "Comedy|Romance"
    assert items.loc["10", schema.TEXT] == "Cafe (1995). Genres: Comedy, Romance. Year: 1995."
    assert items.loc["30", schema.GENRES] == "" and items.loc["30", schema.TEXT] == "Odd."
    users = data.users.set_index(schema.USER_ID)
    assert users.loc["7"].tolist() == ["25", "M", "writer", "0210"]
    assert users.loc["8", "gender"] == "F"
    assert data.rating_range == (1.0, 5.0) and data.report.rows_read == 4
