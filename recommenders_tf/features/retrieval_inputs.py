"""Inputs of the two-tower retrieval model, from interaction frames and an items frame.

- `ItemFeatureTable`: the candidate tower's raw features of any item id (genres, title, text
  vector), filled with empty values for items it does not know, so a cold item still gets a
  valid feature dict.
- `example_features`: those examples as arrays (what both of the next two are built from).
- `retrieval_dataset`: one training example per interaction (query features + the positive
  item's candidate features), batched for `fit_model`.
- `write_example_shards` / `read_example_shards`: the same examples as N TFRecord files
  (`tf.train.Example`) and a `tf.data` reader that shards them by FILE over the input
  pipelines of a `tf.distribute.InputContext`, so each worker of a cluster reads only its own
  files instead of building every example in memory and keeping a share of each batch.

Shard folder layout (`write_example_shards`):
  examples-00000-of-00004.tfrecord ...   example i of the rows goes to file i % N
  manifest.json   {"format", "num_shards", "num_examples", "examples_per_shard",
                   "feature_spec" {name: {"dtype", "shape"}}, "content_sha256" (of the
                   examples and the spec), "files" [{"name", "examples", "sha256"}]}
The manifest is written last, so a folder without one is incomplete. A folder whose manifest
names other content, another shard count or a file whose bytes changed is rewritten; a
matching one is reused as is (checking it reads every file once, to hash it).

Example:
  >>> table = ItemFeatureTable(data.items, use_genres=True, use_titles=False)
  >>> ds = retrieval_dataset(train, None, 50, table, batch_size=512, shuffle=True, seed=0)
  >>> manifest = write_example_shards(train, None, 50, table, "work/examples", num_shards=4)
  >>> ds = read_example_shards("work/examples", batch_size=512, shuffle=True, seed=0,
  ...                          input_context=context)   # this pipeline's files only
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.config import file_sha256, write_json
from recommenders_tf.data.datasets import PAD, history_layout, previous_items, shard_by_data
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


def example_features(interactions: pd.DataFrame, context: Optional[pd.DataFrame],
                     history_len: int, item_features: ItemFeatureTable) -> Dict[str, np.ndarray]:
    """The training examples of `retrieval_dataset` as arrays, one row per interaction.

    Returns:
      {feature name: array}: `user_id`, the candidate features of `item_features.names`
      (object strings; `item_text_vector` float32 [N, D]) and, when `history_len` > 0,
      `history` (object [N, history_len], "" padding) and `history_mask` (bool).
    """
    frame = interactions if context is None else pd.concat([context, interactions],
                                                           ignore_index=True)
    features = item_features(interactions[ITEM_ID].to_numpy())
    features[USER_ID] = interactions[USER_ID].astype(str).to_numpy(dtype=object)
    if history_len > 0:
        history, mask = previous_items(frame, history_len)
        features["history"] = history[len(frame) - len(interactions):]
        features["history_mask"] = mask[len(frame) - len(interactions):]
    return features


def retrieval_dataset(interactions: pd.DataFrame, context: Optional[pd.DataFrame],
                      history_len: int, item_features: ItemFeatureTable, batch_size: int,
                      shuffle: bool, seed: int) -> tf.data.Dataset:
    """One example per row of `interactions`, its history drawn from `context` + itself.

    The validation rows' histories must include the user's train items, so histories are
    computed over the concatenation and only the rows of `interactions` are kept.

    The batches are the examples of `example_features`, but built batch by batch: the
    pipeline holds a few integers per row (user, item, two history pointers of
    `history_layout`) and gathers ids, candidate features and histories from per-user,
    per-item and sorted-row tables. Materialised, the histories alone are rows x N strings
    (about 13 GB as a string tensor at 8M rows and N = 50) and the text vectors rows x D
    floats. The shuffle is a fresh seeded permutation of the row numbers at every pass
    (`stateless_shuffle` keyed by a per-iteration draw), not a buffer of examples.

    Args:
      interactions: the rows to turn into examples (canonical schema).
      context: earlier interactions the histories may also draw on (e.g. train for the
        validation rows), or None.
      history_len: items of history per example; 0 leaves `history` out.
      item_features: the candidate features of the positive items.
      batch_size, shuffle, seed: batching, and a seeded shuffle reshuffled every epoch.
    """
    n = len(interactions)
    item_codes, item_ids = pd.factorize(interactions[ITEM_ID].astype(str), sort=True)
    user_codes, user_ids = pd.factorize(interactions[USER_ID].astype(str), sort=True)
    tables = {name: tf.constant(values) for name, values in
              item_features(np.asarray(item_ids, dtype=object)).items()}
    users = tf.constant(np.asarray(user_ids, dtype=object).astype(str))
    rows_item = tf.constant(item_codes.astype(np.int32))
    rows_user = tf.constant(user_codes.astype(np.int32))
    if history_len > 0:
        frame = interactions if context is None else pd.concat([context, interactions],
                                                               ignore_index=True)
        layout = history_layout(frame)
        keep = slice(len(frame) - n, None)
        # The last entry is the padding id, the code of every masked slot.
        history_ids = tf.constant(np.append(layout.item_ids, PAD).astype(str))
        pad_code = len(layout.item_ids)
        sorted_items = tf.constant(layout.sorted_items)
        run_start = tf.constant(layout.run_start[keep])
        user_start = tf.constant(layout.user_start[keep])
        offsets = tf.range(-history_len, 0, dtype=tf.int64)

    def build(rows):
        features = {name: tf.gather(table, tf.gather(rows_item, rows))
                    for name, table in tables.items()}
        features[USER_ID] = tf.gather(users, tf.gather(rows_user, rows))
        if history_len > 0:
            source = tf.gather(run_start, rows)[:, None] + offsets[None, :]
            mask = source >= tf.gather(user_start, rows)[:, None]
            codes = tf.where(mask, tf.gather(sorted_items, tf.maximum(source, 0)), pad_code)
            features["history"] = tf.gather(history_ids, codes)
            features["history_mask"] = mask
        return features

    if shuffle:
        def permutation(draw):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([draw, tf.constant(seed, tf.int64)]))
            return tf.data.Dataset.from_tensor_slices(order)

        order = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        order = order.flat_map(permutation)
    else:
        order = tf.data.Dataset.range(n)
    ds = order.batch(batch_size).map(build, num_parallel_calls=tf.data.AUTOTUNE)
    return shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


MANIFEST = "manifest.json"
SHARD_FORMAT = 1
_SHARD_NAME = "examples-{index:05d}-of-{count:05d}.tfrecord"


def _feature_spec(features: Dict[str, np.ndarray]) -> Dict[str, Dict[str, Any]]:
    spec = {}
    for name in sorted(features):
        values = np.asarray(features[name])
        if values.dtype == object or values.dtype.kind in "US":
            dtype = "string"
        elif values.dtype == bool:
            dtype = "bool"
        elif values.dtype.kind in "iu":
            dtype = "int64"
        elif values.dtype.kind == "f":
            dtype = "float32"
        else:
            raise TypeError(f"write_example_shards: feature {name!r} has dtype {values.dtype}, "
                            "which a tf.train.Example cannot hold")
        spec[name] = {"dtype": dtype, "shape": list(values.shape[1:])}
    return spec


def _content_sha256(features: Dict[str, np.ndarray], spec: Dict[str, Any],
                    num_shards: int) -> str:
    digest = hashlib.sha256(json.dumps({"format": SHARD_FORMAT, "num_shards": num_shards,
                                        "spec": spec}, sort_keys=True).encode())
    for name in sorted(features):
        values = np.asarray(features[name])
        digest.update(name.encode() + b"\0" + str(values.shape).encode())
        if spec[name]["dtype"] == "string":
            # Lengths as well as bytes: no choice of separator could tell ["a\0", ""] from
            # ["a", "\0"] otherwise.
            encoded = [str(v).encode() for v in values.ravel()]
            digest.update(np.asarray([len(e) for e in encoded], np.int64).tobytes())
            digest.update(b"".join(encoded))
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()



def _to_example(features: Dict[str, np.ndarray], spec: Dict[str, Any], row: int) -> bytes:
    out = {}
    for name, info in spec.items():
        value = np.asarray(features[name][row]).ravel()
        if info["dtype"] == "string":
            out[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[str(v).encode() for v in value]))
        elif info["dtype"] == "float32":
            out[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))
        else:  # bool and int64 both travel as int64
            out[name] = tf.train.Feature(int64_list=tf.train.Int64List(
                value=value.astype(np.int64).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=out)).SerializeToString()


def read_manifest(folder: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The manifest of a shard folder, or None when there is none (or it is unreadable)."""
    path = Path(folder) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _reusable(folder: Path, manifest: Optional[Dict[str, Any]], content: str,
              num_shards: int) -> bool:
    if (not manifest or manifest.get("format") != SHARD_FORMAT
            or manifest.get("content_sha256") != content
            or manifest.get("num_shards") != num_shards):
        return False
    for entry in manifest.get("files", []):
        path = folder / entry["name"]
        if not path.is_file() or file_sha256(path) != entry["sha256"]:
            return False
    return len(manifest.get("files", [])) == num_shards


def write_example_shards(interactions: pd.DataFrame, context: Optional[pd.DataFrame],
                         history_len: int, item_features: ItemFeatureTable,
                         folder: Union[str, os.PathLike], num_shards: int) -> Dict[str, Any]:
    """Writes the examples `retrieval_dataset` would build as `num_shards` TFRecord files.

    Row i of `interactions` goes to shard i % num_shards, so the shards differ by at most one
    example. Each file is written under a temporary name and renamed into place, the manifest
    last; a folder that already holds these examples (same content hash, shard count and file
    hashes) is reused, any other content in it is replaced.

    Args:
      interactions, context, history_len, item_features: as for `retrieval_dataset`.
      folder: the shard folder (created). Under a multi-worker strategy only one process (the
        chief) may write it, and the others read it once it has finished.
      num_shards: number of files (>= 1); at least the number of input pipelines (workers)
        that will read them.

    Returns:
      The manifest (see the module docstring).
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"write_example_shards: num_shards must be a positive integer, "
                         f"got {num_shards!r}")
    folder = Path(folder)
    features = example_features(interactions, context, history_len, item_features)
    spec = _feature_spec(features)
    content = _content_sha256(features, spec, num_shards)
    manifest = read_manifest(folder)
    if _reusable(folder, manifest, content, num_shards):
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    # The manifest goes first: a rewrite interrupted midway must not look complete.
    (folder / MANIFEST).unlink(missing_ok=True)
    for old in [*folder.glob("examples-*.tfrecord"), *folder.glob(".examples-*.tmp")]:
        old.unlink()
    n = len(interactions)
    files = []
    for index in range(num_shards):
        name = _SHARD_NAME.format(index=index, count=num_shards)
        tmp = folder / f".{name}.tmp"
        rows = range(index, n, num_shards)
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for row in rows:
                writer.write(_to_example(features, spec, row))
        os.replace(tmp, folder / name)
        files.append({"name": name, "examples": len(rows),
                      "sha256": file_sha256(folder / name)})
    manifest = {"format": SHARD_FORMAT, "num_shards": num_shards, "num_examples": n,
                "examples_per_shard": [f["examples"] for f in files], "feature_spec": spec,
                "content_sha256": content, "files": files}
    write_json(folder / MANIFEST, manifest)
    return manifest


def _parse_spec(spec: Dict[str, Any]) -> Dict[str, tf.io.FixedLenFeature]:
    stored = {"string": tf.string, "float32": tf.float32, "int64": tf.int64, "bool": tf.int64}
    return {name: tf.io.FixedLenFeature(info["shape"], stored[info["dtype"]])
            for name, info in spec.items()}


def read_example_shards(folder: Union[str, os.PathLike], batch_size: int, shuffle: bool,
                        seed: int, input_context: Optional[tf.distribute.InputContext] = None,
                        shuffle_buffer: int = 100_000, repeat: bool = False) -> tf.data.Dataset:
    """Batches of the examples `write_example_shards` wrote, read file by file.

    With `input_context`, pipeline `input_pipeline_id` of `num_input_pipelines` keeps the
    files at positions id, id + num_input_pipelines, ... of the manifest's list (the shard is
    taken on the file names, before anything is read, so the pipelines' examples are
    disjoint and together are all of them), and `batch_size` is the global batch:
    each batch has `input_context.get_per_replica_batch_size(batch_size)` examples. Without
    it, every file is read and batches have `batch_size` examples.

    The features have the dtypes and shapes of `retrieval_dataset`'s (`history_mask` bool).

    Args:
      folder: a folder written by `write_example_shards`.
      batch_size: global batch size.
      shuffle: shuffle the file order and the examples (seeded, reshuffled every epoch).
      seed: shuffle seed.
      input_context: the `tf.distribute.InputContext` of
        `strategy.distribute_datasets_from_function` (or a Keras `DatasetCreator`), or None.
      shuffle_buffer: most examples the shuffle holds (fewer when this pipeline has fewer):
        the shuffle is exact up to this size, and a file-interleaved window beyond it.
      repeat: read the files over and over (a new file order each pass), for training with
        `steps_per_epoch`; batches then run across the passes' boundaries.

    Raises:
      ValueError: no manifest in `folder`, or fewer files than input pipelines (some
        pipeline would read nothing).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"read_example_shards: {folder} has no readable {MANIFEST}; write "
                         "it with write_example_shards")
    names = [entry["name"] for entry in manifest["files"]]
    counts = [int(entry["examples"]) for entry in manifest["files"]]
    pipelines, pipeline = 1, 0
    if input_context is not None:
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(names) < pipelines:
        raise ValueError(f"read_example_shards: {folder} holds {len(names)} example file(s) "
                         f"for {pipelines} input pipelines; write at least {pipelines} "
                         "shards (one per worker) so every worker has files to read")
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    mine = list(range(pipeline, len(names), pipelines))
    files = tf.data.Dataset.from_tensor_slices([str(folder / name) for name in names])
    files = files.shard(pipelines, pipeline)
    if shuffle:
        files = files.shuffle(len(mine), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=len(mine), block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if repeat:
        ds = ds.repeat()
    if shuffle:
        buffer = max(1, min(shuffle_buffer, sum(counts[i] for i in mine)))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    spec = manifest["feature_spec"]
    parse = _parse_spec(spec)
    bools = [name for name, info in spec.items() if info["dtype"] == "bool"]

    def decode(serialized):
        parsed = tf.io.parse_example(serialized, parse)
        for name in bools:
            parsed[name] = tf.cast(parsed[name], tf.bool)
        return parsed

    # Parsed per batch: one vectorised parse_example instead of one call per example.
    return ds.batch(batch_size).map(decode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)
