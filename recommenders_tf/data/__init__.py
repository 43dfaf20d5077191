"""Data layer: load any supported dataset into the canonical schema, split it, feed tf.data.

Loading, validation and splitting need only pandas and are imported here eagerly; the tf.data
builders (`pointwise_dataset`, `user_history`, `listwise_dataset`, ...) import TensorFlow and are
loaded on first access.

Example:
  from recommenders_tf.data import load_dataset, temporal_split, pointwise_dataset
  data = load_dataset("synthetic")             # or "ml-100k", "dir:<path>", "file:<path>"
  split = temporal_split(data.interactions, dataset=data.name)   # protocol P1
  items = items_for_train(data, split.train)   # item text with only the tags train allows
  train_ds = pointwise_dataset(split.train, batch_size=256, history=20)
"""
import importlib

from recommenders_tf.data.interactions import load_interactions_file, load_items_file
from recommenders_tf.data.movielens import detect_layout, load_movielens_dir
from recommenders_tf.data.registry import DatasetNotFoundError, DatasetSpecError, load_dataset
from recommenders_tf.data.schema import LoadReport, RecDataset, canonical_interactions
from recommenders_tf.data.side_info import allowed_tags, items_for_train
from recommenders_tf.data.splits import (BUCKETS, Split, canonical_csv, cold_item_split,
                                         frame_sha256, random_split, rating_split,
                                         sample_test_users, sample_users, sparsity_buckets, split_boundaries, split_for_protocol,
                                         temporal_mask, temporal_split, validation_split)
from recommenders_tf.data.synthetic import SyntheticConfig, generate_synthetic
from recommenders_tf.data.tfds_loader import TFDSUnavailableError, load_tfds, tfds_to_dataset
from recommenders_tf.data.validation import DataValidationError

_LAZY = {"pointwise_dataset", "user_history", "listwise_dataset", "build_lists",
         "previous_items"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module("recommenders_tf.data.datasets"), name)
    raise AttributeError(f"module 'recommenders_tf.data' has no attribute {name!r}")


__all__ = sorted([
    "load_interactions_file", "load_items_file", "detect_layout", "load_movielens_dir",
    "DatasetNotFoundError", "DatasetSpecError", "load_dataset", "LoadReport", "RecDataset",
    "canonical_interactions", "allowed_tags", "items_for_train", "split_boundaries",
    "BUCKETS", "Split", "canonical_csv", "cold_item_split", "frame_sha256", "random_split",
    "rating_split", "sample_test_users", "sample_users", "sparsity_buckets", "split_for_protocol", "temporal_mask",
    "temporal_split", "validation_split", "SyntheticConfig", "generate_synthetic",
    "TFDSUnavailableError", "load_tfds", "tfds_to_dataset", "DataValidationError", *_LAZY])
