"""tf.data input pipelines from canonical interaction frames.

- `pointwise_dataset`: one example per interaction, optionally with the user's previous N items
  (strictly earlier timestamps only, so neither the current nor a future item leaks in).
- `user_history`: each user's most recent items, padded, for serving and evaluation queries.
- `listwise_dataset`: per-user candidate lists (positives + given negatives) padded to a fixed
  size with label -1 and a boolean mask, the layout TF-Ranking losses expect.

Sharding: every builder takes `input_context` (a `tf.distribute.InputContext`, as passed by
`strategy.distribute_datasets_from_function`). With it, the dataset keeps only the shard
`input_pipeline_id` of `num_input_pipelines` (`Dataset.shard`, before shuffling, so shards are
disjoint) and `batch_size` is read as the global batch size and divided per replica. Without it,
call `.shard(num_workers, worker_index)` yourself on the unbatched data, or hand the batched
dataset to Keras `fit` after `shard_by_data` and let the strategy split every global batch.

Example:
  ds = pointwise_dataset(split.train, batch_size=256, history=20)
  for batch in ds.take(1):
    batch["history"]  # [256, 20] tf.string, most recent item last, "" padding on the left
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data import schema
from recommenders_tf.data.ordering import time_order
# The padding item id in histories and lists is the serving contract's: exported graphs read it.
from recommenders_tf.serving.contract import PAD

PAD_LABEL = -1.0  # label of padded list entries (TF-Ranking ignores labels < 0)


def _sorted_by_time(interactions: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by (user, timestamp, item id), the order every split uses."""
    users = pd.factorize(interactions[schema.USER_ID], sort=True)[0]
    items = pd.factorize(interactions[schema.ITEM_ID], sort=True)[0]
    order = time_order(users, interactions[schema.TIMESTAMP].to_numpy(), items)
    return interactions.iloc[order].reset_index(drop=True)


class HistoryLayout(NamedTuple):
    """Every row's history as two pointers into the rows sorted by (user, timestamp, item).

    Row r's history is `sorted_items[run_start[r] - N : run_start[r]]`, keeping the positions
    >= `user_start[r]` (left padding elsewhere). Three integers per row instead of N ids: what
    lets a tf.data pipeline gather histories batch by batch (`retrieval_dataset`) at any size.

    Fields:
      item_ids: object [I], the distinct item ids (sorted); codes index it.
      sorted_items: int32 [rows], item code of every row in (user, timestamp, item) order.
      run_start: int64 [rows] (aligned with the input rows), sorted position of the first row
        of the row's (user, timestamp) run: rows sharing the user's timestamp are neither past
        nor future, so the history stops there.
      user_start: int64 [rows], sorted position of the user's first row.
    """

    item_ids: np.ndarray
    sorted_items: np.ndarray
    run_start: np.ndarray
    user_start: np.ndarray


def history_layout(interactions: pd.DataFrame) -> HistoryLayout:
    """The `HistoryLayout` of canonical interactions (any row order)."""
    n = len(interactions)
    users = pd.factorize(interactions[schema.USER_ID], sort=True)[0]
    codes, item_ids = pd.factorize(interactions[schema.ITEM_ID], sort=True)
    times = interactions[schema.TIMESTAMP].to_numpy()
    order = time_order(users, times, codes)
    s_users, s_times = users[order], times[order]
    index = np.arange(n, dtype=np.int64)
    new_user = np.r_[True, s_users[1:] != s_users[:-1]] if n else np.zeros(0, bool)
    user_start = np.maximum.accumulate(np.where(new_user, index, 0)) if n else index
    new_run = new_user | (np.r_[True, s_times[1:] != s_times[:-1]] if n else new_user)
    run_start = np.maximum.accumulate(np.where(new_run, index, 0)) if n else index
    out_run, out_user = np.empty(n, np.int64), np.empty(n, np.int64)
    out_run[order], out_user[order] = run_start, user_start
    return HistoryLayout(np.asarray(item_ids, dtype=object), codes[order].astype(np.int32),
                         out_run, out_user)


def previous_items(interactions: pd.DataFrame, length: int):
    """For every row, the user's `length` most recent items with a strictly earlier timestamp.

    Args:
      interactions: canonical interactions (any row order).
      length: history length N.

    Returns:
      (history, mask) aligned with the rows of `interactions`: `history` an object array
      [rows, N] of item ids left-padded with "", most recent last; `mask` bool [rows, N].
      N ids per row: for large data gather them from `history_layout` instead.
    """
    layout = history_layout(interactions)
    source = layout.run_start[:, None] - length + np.arange(length)[None, :]
    mask = source >= layout.user_start[:, None]
    ids = np.append(layout.item_ids, PAD).astype(object)
    codes = np.where(mask, layout.sorted_items[np.maximum(source, 0)], len(layout.item_ids))
    return ids[codes], mask


def shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Marks a dataset built from in-memory arrays for element-wise sharding across workers.

    Keras `fit` under a multi-worker strategy distributes a batched dataset itself: each global
    batch is split into per-replica batches and every worker keeps its own share
    (`AutoShardPolicy.DATA`). The default policy tries file sharding first, which cannot apply
    to `from_tensor_slices`, and only then falls back (with a warning). Every worker reads the
    whole dataset in the same order, so any shuffle before it needs a fixed seed. Single-worker
    strategies ignore the option.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _apply_input_context(ds: tf.data.Dataset, batch_size: int, input_context):
    if input_context is None:
        return ds, batch_size
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds, input_context.get_per_replica_batch_size(batch_size)


def pointwise_dataset(interactions: pd.DataFrame, batch_size: int, shuffle: bool = True,
                      seed: int = 0, history: Optional[int] = None,
                      input_context=None, drop_remainder: bool = False,
                      repeat: bool = False) -> tf.data.Dataset:
    """Batches of single interactions.

    Args:
      interactions: canonical interactions.
      batch_size: examples per batch (global batch size when `input_context` is given).
      shuffle: shuffle examples (seeded, reshuffled each epoch).
      seed: shuffle seed.
      history: when an int N, add `history` (string [N]) and `history_mask` (bool [N]): the
        user's previous N items with strictly earlier timestamps, left-padded with "".
      input_context: optional tf.distribute.InputContext for sharding (see module docstring).
      drop_remainder: drop the last partial batch (static batch shapes, e.g. for TPUs).
      repeat: repeat forever (for step-based training).

    Returns:
      A dataset of dicts: user_id, item_id (tf.string), rating (float32), timestamp (int64)
      [, history, history_mask].
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    features: Dict[str, np.ndarray] = {
        schema.USER_ID: interactions[schema.USER_ID].to_numpy(dtype=str).astype(object),
        schema.ITEM_ID: interactions[schema.ITEM_ID].to_numpy(dtype=str).astype(object),
        schema.RATING: interactions[schema.RATING].to_numpy(dtype=np.float32),
        schema.TIMESTAMP: interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64),
    }
    if history is not None:
        if history < 1:
            raise ValueError(f"history must be a positive length, got {history}")
        features["history"], features["history_mask"] = previous_items(interactions, history)
    ds = tf.data.Dataset.from_tensor_slices(features)
    ds, batch_size = _apply_input_context(ds, batch_size, input_context)
    if shuffle:
        ds = ds.shuffle(max(1, len(interactions)), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def user_history(interactions: pd.DataFrame, max_len: int) -> Dict[str, np.ndarray]:
    """Each user's `max_len` most recent items (time order, ties by item id), left-padded.

    Returns:
      {"user_id": [U] str sorted, "history": [U, max_len] object ("" padding, most recent
      last), "history_mask": [U, max_len] bool, "length": [U] int64 (unpadded count)}.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    ordered = _sorted_by_time(interactions)
    users = ordered[schema.USER_ID].to_numpy(dtype=object)
    items = ordered[schema.ITEM_ID].to_numpy(dtype=object)
    unique_users, starts = np.unique(users, return_index=True)
    ends = np.r_[starts[1:], len(users)]
    lengths = np.minimum(ends - starts, max_len)
    history = np.full((len(unique_users), max_len), PAD, dtype=object)
    mask = np.zeros((len(unique_users), max_len), dtype=bool)
    for slot in range(max_len):
        # slot max_len-1 holds the last item, slot max_len-1-k the k-th before it.
        back = max_len - 1 - slot
        valid = back < lengths
        history[valid, slot] = items[(ends - 1 - back)[valid]]
        mask[valid, slot] = True
    return {schema.USER_ID: unique_users.astype(str), "history": history,
            "history_mask": mask, "length": lengths.astype(np.int64)}


def build_lists(candidates: pd.DataFrame, list_size: int, num_lists_per_user: int = 1,
                seed: int = 0) -> Dict[str, np.ndarray]:
    """Groups (user_id, item_id, label) rows into padded per-user lists.

    A user with more than `list_size` candidates gets `num_lists_per_user` seeded random
    subsets; otherwise one list with all of them. Entries are shuffled within a list so that a
    list's order says nothing about its labels.

    Returns:
      {"user_id": [L] str, "item_id": [L, list_size] object, "label": [L, list_size] float32
      (-1 on padding), "mask": [L, list_size] bool}.
    """
    if list_size < 1:
        raise ValueError(f"list_size must be positive, got {list_size}")
    rng = np.random.default_rng(seed)
    frame = candidates.sort_values([schema.USER_ID, schema.ITEM_ID], kind="mergesort")
    users = frame[schema.USER_ID].to_numpy(dtype=object)
    items = frame[schema.ITEM_ID].to_numpy(dtype=object)
    labels = frame["label"].to_numpy(dtype=np.float32)
    unique_users, starts = np.unique(users, return_index=True)
    ends = np.r_[starts[1:], len(users)]
    out_users, out_items, out_labels, out_mask = [], [], [], []
    for user, start, end in zip(unique_users, starts, ends):
        count = end - start
        repeats = num_lists_per_user if count > list_size else 1
        for _ in range(repeats):
            chosen = start + rng.permutation(count)[:list_size]
            row_items = np.full(list_size, PAD, dtype=object)
            row_labels = np.full(list_size, PAD_LABEL, dtype=np.float32)
            row_items[:len(chosen)] = items[chosen]
            row_labels[:len(chosen)] = labels[chosen]
            out_users.append(user)
            out_items.append(row_items)
            out_labels.append(row_labels)
            out_mask.append(np.arange(list_size) < len(chosen))
    return {schema.USER_ID: np.asarray(out_users, dtype=object),
            schema.ITEM_ID: np.stack(out_items) if out_items else np.zeros((0, list_size), object),
            "label": np.stack(out_labels) if out_labels else np.zeros((0, list_size), np.float32),
            "mask": np.stack(out_mask) if out_mask else np.zeros((0, list_size), bool)}


def listwise_dataset(interactions: pd.DataFrame, list_size: int,
                     negatives: Optional[pd.DataFrame] = None, batch_size: int = 32,
                     label: str = schema.RATING, num_lists_per_user: int = 1,
                     shuffle: bool = True, seed: int = 0,
                     input_context=None) -> tf.data.Dataset:
    """Per-user candidate lists for listwise ranking losses.

    Args:
      interactions: the positives: canonical interactions, or a prepared lists frame with
        user_id, item_id and a "label" column (then used as is).
      list_size: fixed list length; shorter lists are padded (item "", label -1, mask False).
      negatives: optional (user_id, item_id) rows labelled 0. A pair that is also a positive
        keeps its positive label.
      batch_size: lists per batch (global when `input_context` is given).
      label: positives' label column when `interactions` has no "label" column ("rating" for
        graded relevance; pass None for binary 1.0).
      num_lists_per_user: lists sampled for users with more than `list_size` candidates.
      shuffle: shuffle lists (seeded).
      seed: seed of list sampling, in-list order and shuffling.
      input_context: optional tf.distribute.InputContext for sharding.

    Returns:
      A dataset of dicts: user_id (tf.string []), item_id (tf.string [list_size]),
      label (float32 [list_size]), mask (bool [list_size]), batched.
    """
    if "label" in interactions.columns:
        candidates = interactions[[schema.USER_ID, schema.ITEM_ID, "label"]]
    else:
        values = (interactions[label].to_numpy(dtype=np.float32) if label
                  else np.ones(len(interactions), np.float32))
        candidates = pd.DataFrame({schema.USER_ID: interactions[schema.USER_ID].to_numpy(),
                                   schema.ITEM_ID: interactions[schema.ITEM_ID].to_numpy(),
                                   "label": values})
    if negatives is not None:
        negative_rows = pd.DataFrame({schema.USER_ID: negatives[schema.USER_ID].to_numpy(),
                                      schema.ITEM_ID: negatives[schema.ITEM_ID].to_numpy(),
                                      "label": np.zeros(len(negatives), np.float32)})
        candidates = pd.concat([candidates, negative_rows], ignore_index=True)
    # A pair given both as positive and as negative keeps the positive; of repeated
    # positives (re-ratings) the largest label is kept, so each item appears once per list.
    candidates = (candidates.assign(_pos=candidates["label"] > 0)
                  .sort_values([schema.USER_ID, schema.ITEM_ID, "_pos", "label"],
                               ascending=[True, True, False, False], kind="mergesort")
                  .drop_duplicates([schema.USER_ID, schema.ITEM_ID], keep="first")
                  .drop(columns="_pos"))
    lists = build_lists(candidates, list_size, num_lists_per_user, seed)
    lists[schema.USER_ID] = lists[schema.USER_ID].astype(str).astype(object)
    ds = tf.data.Dataset.from_tensor_slices(lists)
    ds, batch_size = _apply_input_context(ds, batch_size, input_context)
    if shuffle:
        ds = ds.shuffle(max(1, len(lists[schema.USER_ID])), seed=seed,
                        reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
