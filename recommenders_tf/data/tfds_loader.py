"""MovieLens through TensorFlow Datasets (`movielens/100k-ratings`, `movielens/1m-ratings`).

TFDS downloads the raw files on first use, so it needs internet access or a `data_dir` that
already holds the prepared dataset. On an offline machine `load_tfds` fails fast with a message
pointing at the raw-directory loader. `tfds_to_dataset` converts any `tf.data.Dataset` with the
TFDS MovieLens feature names, so the conversion is testable without TFDS.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.validation import build_report

SUPPORTED = ("movielens/100k-ratings", "movielens/1m-ratings")
# The class names of TFDS's `movie_genres` ClassLabel, in label order.
TFDS_GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "Unknown", "War", "Western",
               "(no genres listed)")
_USER_FEATURES = {"bucketized_user_age": "age", "raw_user_age": "raw_age",
                  "user_gender": "gender", "user_occupation_text": "occupation",
                  "user_zip_code": "zip"}


class TFDSUnavailableError(RuntimeError):
    """TFDS could not provide the dataset (typically: no internet and no prepared data_dir)."""


def load_tfds(name: str = "movielens/100k-ratings", data_dir: Optional[str] = None,
              download: bool = True) -> schema.RecDataset:
    """Loads MovieLens ratings through TFDS into the canonical schema.

    Args:
      name: "movielens/100k-ratings" or "movielens/1m-ratings".
      data_dir: TFDS data directory (a pre-populated one works offline).
      download: let TFDS download and prepare the data when it is not in `data_dir`.

    Raises:
      TFDSUnavailableError: TFDS could not load (offline, no prepared data); the message says
        how to proceed with the raw-directory loader instead.
    """
    if name not in SUPPORTED:
        raise ValueError(f"unsupported TFDS dataset {name!r}; supported: {SUPPORTED}")
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split="train", data_dir=data_dir, download=download,
                       shuffle_files=False)
    except Exception as err:  # noqa: BLE001  (TFDS raises many types when offline)
        raise TFDSUnavailableError(
            f"TFDS could not load {name!r} ({type(err).__name__}: {str(err)[:300]}). "
            "TFDS needs internet access to download MovieLens, or a data_dir that already "
            "holds the prepared dataset (run `tfds build` on a connected machine and copy the "
            "data_dir). Offline, load the raw MovieLens files instead: "
            "load_movielens_dir('<path>/ml-100k') or load_dataset('dir:<path>'), e.g. the "
            "folder unzipped from https://grouplens.org/datasets/movielens/.") from err
    short = name.split("/")[1].replace("-ratings", "")
    return tfds_to_dataset(ds, name=f"ml-{short}", source=f"tfds:{name}")


def tfds_to_dataset(ds, name: str = "ml-tfds", source: str = "tf.data",
                    batch_size: int = 65536) -> schema.RecDataset:
    """Converts a tf.data.Dataset with TFDS MovieLens ratings features to a RecDataset.

    Args:
      ds: unbatched dataset of dicts with `user_id`, `movie_id`, `user_rating`, `timestamp`,
        `movie_title`, `movie_genres` (genre label ids) and optional user demographics.
      name: dataset name.
      source: recorded in the LoadReport.
      batch_size: elements converted per step (genres are ragged, so batches are ragged).
    """
    columns = {}
    for batch in ds.ragged_batch(batch_size).as_numpy_iterator():
        for key, value in batch.items():
            # Genre lists come back ragged (object array of arrays, or a RaggedTensorValue)
            # or, when a batch happens to be uniform, 2-D: make them 1-D object arrays.
            if hasattr(value, "to_list") or np.ndim(value) > 1:
                lists = value.to_list() if hasattr(value, "to_list") else list(value)
                value = np.empty(len(lists), dtype=object)
                value[:] = [np.asarray(v) for v in lists]
            columns.setdefault(key, []).append(np.asarray(value))
    if not columns:
        raise ValueError(f"{source}: the dataset is empty")
    data = {key: np.concatenate(parts) for key, parts in columns.items()}
    missing = [k for k in ("user_id", "movie_id", "user_rating", "timestamp") if k not in data]
    if missing:
        raise ValueError(f"{source}: missing TFDS feature {missing[0]!r} "
                         f"(found {sorted(data)})")
    text = lambda values: schema.object_column([_decode(v) for v in values])  # noqa: E731
    interactions = schema.canonical_interactions(pd.DataFrame({
        schema.USER_ID: text(data["user_id"]), schema.ITEM_ID: text(data["movie_id"]),
        schema.RATING: data["user_rating"], schema.TIMESTAMP: data["timestamp"]}))
    items = _items(data, text)
    users = _users(data, text)
    rating_range = (1.0, 5.0)
    report = build_report(source, interactions, rating_range)
    report.counts["catalog_items"] = int(len(items))
    return schema.RecDataset(name=name, interactions=interactions, items=items, users=users,
                             report=report, rating_range=rating_range)


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _items(data: dict, text) -> pd.DataFrame:
    ids = text(data["movie_id"])
    first = ~ids.duplicated().to_numpy()
    titles = (text(data["movie_title"])[first] if "movie_title" in data
              else ids[first]).reset_index(drop=True)
    if "movie_genres" in data:
        genres = ["|".join(TFDS_GENRES[int(g)] for g in labels
                           if TFDS_GENRES[int(g)] not in ("Unknown", "(no genres listed)"))
                  for labels in data["movie_genres"][first]]
    else:
        genres = [""] * int(first.sum())
    years = titles.str.extract(r"\((\d{4})\)\s*$", expand=False).fillna("")
    texts = [". ".join(p for p in (t, "Genres: " + g.replace("|", ", ") if g else "",
                                   f"Year: {y}" if y else "") if p) + "."
             for t, g, y in zip(titles, genres, years)]
    items = pd.DataFrame({schema.ITEM_ID: ids[first].reset_index(drop=True),
                          schema.TITLE: schema.object_column(titles),
                          schema.TEXT: schema.object_column(texts),
                          schema.GENRES: schema.object_column(genres),
                          "year": schema.object_column(years)})
    return items.sort_values(schema.ITEM_ID, kind="mergesort").reset_index(drop=True)


def _users(data: dict, text) -> pd.DataFrame:
    ids = text(data["user_id"])
    first = ~ids.duplicated().to_numpy()
    users = pd.DataFrame({schema.USER_ID: ids[first].reset_index(drop=True)})
    for feature, column in _USER_FEATURES.items():
        if feature not in data:
            continue
        values = data[feature][first]
        if feature == "user_gender":
            values = np.where(values.astype(bool), "M", "F")  # TFDS: True means male
        elif values.dtype.kind == "f":
            values = [str(int(v)) if float(v).is_integer() else str(v) for v in values]
        users[column] = text(values).reset_index(drop=True)
    return users.sort_values(schema.USER_ID, kind="mergesort").reset_index(drop=True)
