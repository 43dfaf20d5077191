"""Side information produced by interactions (MovieLens tags), admitted from train only.

A tag is applied by a user to an item at a time, so it tells what that user did: BENCHMARK.md
lets a split use a tag only when it is train information, in every protocol:

- its (user, item) pair is in the train part, or
- the user never rated the item (the tag is not tied to a rating) and it was applied strictly
  before the user's split boundary (`splits.split_boundaries`); a user wholly in train has no
  boundary, so all of their untied tags count.

Two stricter choices keep the rule's consequences exact:

- Users with no train interaction, including users who tagged but never rated, contribute no
  tags: they have no train part, so nothing they did is train information.
- An item with no train interaction gets no tags: P3's held-out (cold) items carry none even
  when someone who never rated them tagged them, and P1 items seen only in test are not
  candidates anyway.

The loaders keep tags out of `items`, so code that reads `data.items` without a train part gets
text without tags, never all of them.

Example:
  >>> split = split_for_protocol("P3", data, seed=0)
  >>> items = items_for_train(data, split.train)   # the cold items' text has no "Tags:" part
  >>> texts = item_texts(items)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.movielens import movie_text
from recommenders_tf.data.splits import split_boundaries

MAX_TAGS_IN_TEXT = 10
TAGS = "tags"  # items column of the admitted tags, '|'-joined, most frequent first


def allowed_tags(tags: pd.DataFrame, interactions: pd.DataFrame,
                 train: pd.DataFrame) -> pd.DataFrame:
    """The rows of `tags` that the train part `train` of `interactions` may use.

    Args:
      tags: TAG_COLUMNS (`RecDataset.tags`).
      interactions: every interaction of the dataset; tells tied tags from untied ones and,
        with `train`, each user's split boundary.
      train: the split's train part, a subset of the rows of `interactions`.

    Returns:
      The admitted rows of `tags`, in their order, index reset.
    """
    if tags is None or len(tags) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == schema.TIMESTAMP else object)
                             for c in schema.TAG_COLUMNS})
    users = tags[schema.USER_ID].astype(str)
    items = tags[schema.ITEM_ID].astype(str)
    pairs = pd.MultiIndex.from_arrays([users, items])

    def pair_index(frame: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays([frame[schema.USER_ID].astype(str),
                                          frame[schema.ITEM_ID].astype(str)])

    in_train = pairs.isin(pair_index(train))
    tied = pairs.isin(pair_index(interactions))
    train_users = set(train[schema.USER_ID].astype(str))
    boundary = split_boundaries(interactions, train)
    limit = users.map(boundary).to_numpy(dtype=float)
    before = np.isnan(limit) | (tags[schema.TIMESTAMP].to_numpy(dtype=float) < limit)
    untied_ok = ~tied & users.isin(train_users).to_numpy() & before
    item_in_train = items.isin(set(train[schema.ITEM_ID].astype(str))).to_numpy()
    keep = item_in_train & (in_train | untied_ok)
    return tags[keep].reset_index(drop=True)


def top_tags(tags: pd.DataFrame, limit: int = MAX_TAGS_IN_TEXT) -> pd.Series:
    """item_id -> '|'-joined most frequent tags (lower-cased, ties alphabetical), at most
    `limit` per item."""
    frame = pd.DataFrame({schema.ITEM_ID: tags[schema.ITEM_ID].astype(str).to_numpy(),
                          schema.TAG: tags[schema.TAG].astype(str).str.strip().str.lower()
                          .to_numpy()})
    frame = frame[frame[schema.TAG] != ""]
    counts = frame.groupby([schema.ITEM_ID, schema.TAG]).size().rename("n").reset_index()
    counts = counts.sort_values([schema.ITEM_ID, "n", schema.TAG],
                                ascending=[True, False, True])
    counts = counts.groupby(schema.ITEM_ID).head(limit)
    return counts.groupby(schema.ITEM_ID)[schema.TAG].agg("|".join)


def items_for_train(dataset: schema.RecDataset, train: pd.DataFrame) -> pd.DataFrame:
    """The items frame whose text a model trained on `train` may read.

    Every place that builds item text for a protocol goes through here with that protocol's
    train part (P1/P4: the temporal train; P3: the warm train, so cold items get no tags).

    Args:
      dataset: the loaded dataset (its `items`, `interactions` and `tags`).
      train: the split's train part.

    Returns:
      `dataset.items` itself when the dataset has no tags; else a copy whose `text` ends with
      "Tags: a, b." built from `allowed_tags` only, plus a `tags` column ('|'-joined, "" when
      none), for the `title`, `genres`, `year` layout of the MovieLens loaders.
    """
    if train is None:
        raise TypeError("items_for_train needs the split's train part (e.g. split.train); "
                        "without it use dataset.items, which carries no tags")
    items = dataset.items
    if dataset.tags is None or items is None:
        return items
    missing = [c for c in (schema.TITLE, schema.GENRES, "year") if c not in items.columns]
    if missing:
        raise ValueError(f"{dataset.name}: items lack {missing}, so tags cannot be written "
                         "into their text")
    admitted = top_tags(allowed_tags(dataset.tags, dataset.interactions, train))
    ids = items[schema.ITEM_ID].astype(str)
    tag_text = pd.Series(ids.map(admitted).fillna("").to_numpy(dtype=object), dtype=object)
    text = movie_text(items[schema.TITLE].reset_index(drop=True),
                      items[schema.GENRES].reset_index(drop=True),
                      items["year"].reset_index(drop=True), tag_text)
    out = items.copy()
    out[schema.TEXT] = pd.Series(text.to_numpy(dtype=object), index=out.index, dtype=object)
    out[TAGS] = pd.Series(tag_text.to_numpy(dtype=object), index=out.index, dtype=object)
    return out
