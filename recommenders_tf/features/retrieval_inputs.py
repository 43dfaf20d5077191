"""Inputs of the two-tower retrieval model, from interaction frames and an items frame.

- `ItemFeatureTable`: the candidate tower's raw features of any item id (genres, title, text
  vector), filled with empty values for items it does not know, so a cold item still gets a
  valid feature dict.
- `retrieval_dataset`: one training example per interaction (query features + the positive
  item's candidate features), batched for `fit_model`.

Example:
  >>> table = ItemFeatureTable(data.items, use_genres=True, use_titles=False)
  >>> ds = retrieval_dataset(train, None, 50, table, batch_size=512, shuffle=True, seed=0)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data.datasets import previous_items, shard_by_data
from recommenders_tf.data.schema import GENRES, ITEM_ID, TITLE, USER_ID, check_frame
from recommenders_tf.features.item_vectors import ItemVectors


class ItemFeatureTable:
    """Raw candidate-tower features of any item id, from the items frame and a text store.

    Args:
      items: items frame with `item_id` and optionally `genres` / `title`; may be None.
      use_genres: emit `item_genres` ('|'-joined labels, "" when unknown).
      use_titles: emit `item_title` ("" when unknown).
      text_vectors: an `ItemVectors` store; emits `item_text_vector` (zeros when unknown).
    """

    def __init__(self, items: Optional[pd.DataFrame], use_genres: bool, use_titles: bool,
                 text_vectors: Optional[ItemVectors] = None):
        self.use_genres, self.use_titles = use_genres, use_titles
        self.text_vectors = text_vectors
        self._genres = self._column(items, GENRES) if use_genres else None
        self._titles = self._column(items, TITLE) if use_titles else None

    @staticmethod
    def _column(items: Optional[pd.DataFrame], column: str) -> pd.Series:
        if items is None or column not in items.columns:
            have = "no items frame" if items is None else f"columns {list(items.columns)}"
            raise ValueError(f"item feature {column!r} was asked for but the items frame has "
                             f"no such column ({have}); switch it off or give an items frame")
        check_frame(items, "items", [ITEM_ID])
        values = pd.Series(items[column].fillna("").astype(str).to_numpy(dtype=object),
                           index=items[ITEM_ID].astype(str).to_numpy())
        return values[~values.index.duplicated()]

    @property
    def names(self) -> List[str]:
        """Feature names the candidate tower reads, item_id first."""
        names = [ITEM_ID]
        if self.use_genres:
            names.append("item_genres")
        if self.use_titles:
            names.append("item_title")
        if self.text_vectors is not None:
            names.append("item_text_vector")
        return names

    def feature_spec(self) -> Dict[str, tf.TensorSpec]:
        """TensorSpecs of the candidate features, for saving the candidate tower."""
        spec = {name: tf.TensorSpec([None], tf.string, name=name) for name in self.names
                if name != "item_text_vector"}
        if self.text_vectors is not None:
            spec["item_text_vector"] = tf.TensorSpec([None, self.text_vectors.dim], tf.float32,
                                                     name="item_text_vector")
        return spec

    def __call__(self, item_ids: Sequence[str]) -> Dict[str, np.ndarray]:
        ids = np.asarray([str(i) for i in item_ids], dtype=object)
        out: Dict[str, np.ndarray] = {ITEM_ID: ids}
        if self.use_genres:
            out["item_genres"] = self._genres.reindex(ids).fillna("").to_numpy(dtype=object)
        if self.use_titles:
            out["item_title"] = self._titles.reindex(ids).fillna("").to_numpy(dtype=object)
        if self.text_vectors is not None:
            out["item_text_vector"] = self.text_vectors.lookup(ids)[0]
        return out

    def check_covers(self, item_ids: Sequence[str], what: str) -> None:
        """Every trained item must have a text vector: a zero vector would be silently wrong."""
        if self.text_vectors is None:
            return
        missing = np.flatnonzero(self.text_vectors.positions(item_ids) < 0)
        if missing.size:
            raise ValueError(f"the item text vector store has no vector for {missing.size} "
                             f"{what} item(s), e.g. {[item_ids[i] for i in missing[:5]]}; "
                             "re-run pipelines.embed_items on this dataset")


def retrieval_dataset(interactions: pd.DataFrame, context: Optional[pd.DataFrame],
                      history_len: int, item_features: ItemFeatureTable, batch_size: int,
                      shuffle: bool, seed: int) -> tf.data.Dataset:
    """One example per row of `interactions`, its history drawn from `context` + itself.

    The validation rows' histories must include the user's train items, so histories are
    computed over the concatenation and only the rows of `interactions` are kept.

    Args:
      interactions: the rows to turn into examples (canonical schema).
      context: earlier interactions the histories may also draw on (e.g. train for the
        validation rows), or None.
      history_len: items of history per example; 0 leaves `history` out.
      item_features: the candidate features of the positive items.
      batch_size, shuffle, seed: batching, and a seeded shuffle reshuffled every epoch.
    """
    frame = interactions if context is None else pd.concat([context, interactions],
                                                           ignore_index=True)
    features = item_features(interactions[ITEM_ID].to_numpy())
    features[USER_ID] = interactions[USER_ID].astype(str).to_numpy(dtype=object)
    if history_len > 0:
        history, mask = previous_items(frame, history_len)
        features["history"] = history[len(frame) - len(interactions):]
        features["history_mask"] = mask[len(frame) - len(interactions):]
    ds = tf.data.Dataset.from_tensor_slices(features)
    if shuffle:
        ds = ds.shuffle(max(1, len(interactions)), seed=seed, reshuffle_each_iteration=True)
    return shard_by_data(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))
