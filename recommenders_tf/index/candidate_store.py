"""Candidate ids and embeddings as files, so new items join the index without retraining.

A store directory holds:

```
candidate_ids.txt          one id per line, row-aligned with the embeddings
candidate_embeddings.npy   [n, d] float32
store.json                 count, dim, format version
candidate_tower/           SavedModel: raw item features -> embedding (optional)
query_tower/               SavedModel: raw query features -> embedding (optional)
```

`add_items` embeds new items with the (saved) candidate tower and appends them; rebuild the
index from the new store with `build_index`. Arrays are loaded with `allow_pickle=False`.

A training run folder holds its store as `candidate_store/` (version 1); each re-index adds a
new `candidate_store.v<N>/` beside it and never touches the older ones. `store_dirs` lists them
and `latest_store_dir` picks the newest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf import savedmodel
from recommenders_tf.index.scann_index import (
    check_embeddings,
    check_unique_ids,
    normalize_ids,
    to_string_tensor,
)
from recommenders_tf.serving.contract import RETRIEVAL_INPUTS, SERVING_DEFAULT, tensor_specs

IDS_FILE = "candidate_ids.txt"
EMBEDDINGS_FILE = "candidate_embeddings.npy"
MANIFEST_FILE = "store.json"
CANDIDATE_TOWER_DIR = "candidate_tower"
QUERY_TOWER_DIR = "query_tower"
FORMAT_VERSION = 1
STORE_DIR = "candidate_store"
_STORE_VERSION = re.compile(rf"{STORE_DIR}\.v(\d+)")

CANDIDATE_FEATURE_SPEC = {"item_id": tf.TensorSpec([None], tf.string, name="item_id")}
# The query tower's inputs are what a retrieval export's signatures take.
QUERY_FEATURE_SPEC = tensor_specs(RETRIEVAL_INPUTS)


@dataclasses.dataclass(frozen=True)
class CandidateStore:
    """Candidate ids with their embeddings, row-aligned and validated.

    Args:
        ids: [n] unique non-empty string ids.
        embeddings: [n, d] float embeddings (stored as float32).

    Example:
        >>> store = CandidateStore(ids, embeddings)
        >>> store.save("artifacts/candidates", candidate_tower=item_tower, query_tower=user_tower)
        >>> store = add_items(CandidateStore.load("artifacts/candidates"),
        ...                   load_tower("artifacts/candidates/candidate_tower"),
        ...                   {"item_id": ["new-1", "new-2"]})
        >>> index = build_index("scann", query_tower, store.ids, store.embeddings, k=10)
    """

    ids: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        ids = normalize_ids(self.ids, "ids")
        check_unique_ids(ids, "ids")
        object.__setattr__(self, "ids", ids)
        embeddings = check_embeddings(self.embeddings, "embeddings", len(ids))
        object.__setattr__(self, "embeddings", embeddings)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def save(
        self,
        directory: str | os.PathLike,
        *,
        candidate_tower: Any = None,
        query_tower: Any = None,
        candidate_feature_spec: Mapping[str, tf.TensorSpec] | None = None,
        query_feature_spec: Mapping[str, tf.TensorSpec] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Writes the store (and optionally both towers as SavedModels) into `directory`."""
        directory = Path(directory)
        existing = [p for p in (IDS_FILE, EMBEDDINGS_FILE, MANIFEST_FILE)
                    if (directory / p).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{directory} already holds a candidate store ({', '.join(existing)}); pass "
                "overwrite=True or choose a new directory."
            )
        directory.mkdir(parents=True, exist_ok=True)
        # Each file is written beside its target and renamed, so a crash never leaves a
        # half-written file under the final name.
        _atomic_write(directory / IDS_FILE, lambda f: f.write(
            ("\n".join(self.ids.tolist()) + "\n").encode("utf-8")))
        _atomic_write(directory / EMBEDDINGS_FILE, lambda f: np.save(f, self.embeddings))
        manifest = {"format_version": FORMAT_VERSION, "count": len(self),
                    "embedding_dim": self.embedding_dim, "dtype": "float32"}
        _atomic_write(directory / MANIFEST_FILE, lambda f: f.write(
            json.dumps(manifest, indent=2).encode("utf-8")))
        if candidate_tower is not None:
            save_tower(candidate_tower, directory / CANDIDATE_TOWER_DIR,
                       candidate_feature_spec or CANDIDATE_FEATURE_SPEC)
        if query_tower is not None:
            save_tower(query_tower, directory / QUERY_TOWER_DIR,
                       query_feature_spec or QUERY_FEATURE_SPEC)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CandidateStore":
        """Reads a store written by `save`, checking ids and embeddings line up."""
        directory = Path(directory)
        ids_path, emb_path = directory / IDS_FILE, directory / EMBEDDINGS_FILE
        for path in (ids_path, emb_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing; is {directory} a candidate store?")
        ids = ids_path.read_text(encoding="utf-8").split("\n")
        if ids and ids[-1] == "":
            ids = ids[:-1]
        for line, value in enumerate(ids, start=1):
            if value == "":
                raise ValueError(f"{ids_path} line {line}: empty id.")
        embeddings = np.load(emb_path, allow_pickle=False)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise ValueError(
                f"{emb_path} has shape {embeddings.shape} but {ids_path} lists {len(ids)} ids; "
                "the two files must come from the same save."
            )
        return cls(np.asarray(ids, dtype=str), embeddings)


def store_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(version, path) of every candidate store in a run folder, oldest first."""
    run_dir = Path(run_dir)
    found = []
    if (run_dir / STORE_DIR).is_dir():
        found.append((1, run_dir / STORE_DIR))
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _STORE_VERSION.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_store_dir(run_dir: str | os.PathLike) -> Path:
    """The newest candidate store of a run folder (see `store_dirs`)."""
    found = store_dirs(run_dir)
    if not found:
        raise FileNotFoundError(
            f"No candidate store in {run_dir}: expected {STORE_DIR}/ (written by "
            "pipelines.train_retrieval); pass --run-dir of a finished training run or "
            "--set store_dir=<dir>.")
    return found[-1][1]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _TowerModule(tf.Module):
    def __init__(self, tower: Any, feature_spec: Mapping[str, tf.TensorSpec]):
        super().__init__()
        self.tower = tower
        spec = {name: tf.TensorSpec(s.shape, s.dtype, name=name)
                for name, s in feature_spec.items()}

        @tf.function(input_signature=[spec])
        def embed(features):
            return {"embedding": self.tower(features)}

        self.embed = embed


def save_tower(tower: Any, path: str | os.PathLike,
               feature_spec: Mapping[str, tf.TensorSpec]) -> Path:
    """Saves a feature-dict -> embedding tower as a SavedModel with a `serving_default`
    signature (named inputs from `feature_spec`, output `embedding`). Keras is not needed to
    load it back (`load_tower` uses plain `tf.saved_model.load`)."""
    path = Path(path)
    module = _TowerModule(tower, feature_spec)
    savedmodel.save(module, str(path),
                    signatures={SERVING_DEFAULT: module.embed.get_concrete_function()})
    return path


class LoadedTower(tf.Module):
    """A tower saved by `save_tower`, callable on a feature dict like the original.

    Being a `tf.Module` that owns the loaded SavedModel, it is tracked when an export wraps it,
    so the tower's variables are saved into the export.

    Args:
        path: the SavedModel directory (e.g. `candidate_store/query_tower`).

    Attributes:
        feature_spec: {input name: tf.TensorSpec} of its `serving_default` signature.
        input_names: the input names, sorted.

    Example:
        >>> tower = LoadedTower("runs/train_retrieval/synthetic/candidate_store/query_tower")
        >>> tower({"user_id": ["u1"], "history": [["i1"]]})
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(name="loaded_tower")
        self.path = Path(path)
        if not (self.path / "saved_model.pb").exists():
            raise FileNotFoundError(f"{path} is not a SavedModel folder (no saved_model.pb).")
        self.saved = tf.saved_model.load(str(self.path))
        if SERVING_DEFAULT not in self.saved.signatures:
            raise ValueError(f"The tower saved at {path} has no {SERVING_DEFAULT} signature.")
        self._fn = self.saved.signatures[SERVING_DEFAULT]
        self.feature_spec = {name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
                             for name, spec in self._fn.structured_input_signature[1].items()}
        self.input_names = sorted(self.feature_spec)

    def __call__(self, features: Mapping[str, Any]) -> tf.Tensor:
        missing = [name for name in self.input_names if name not in features]
        if missing:
            raise KeyError(
                f"The tower saved at {self.path} needs features {self.input_names}; "
                f"missing {missing}."
            )
        inputs = {}
        for name, spec in self.feature_spec.items():
            value = features[name]
            # Python and numpy strings of any kind (str, bytes, object arrays) become tf.string;
            # tensors (inside an export's traced function) pass through.
            inputs[name] = (to_string_tensor(value) if spec.dtype == tf.string
                            else tf.convert_to_tensor(value, spec.dtype))
        return self._fn(**inputs)["embedding"]


def load_tower(path: str | os.PathLike) -> LoadedTower:
    """Loads a tower written by `save_tower` (or by `CandidateStore.save`)."""
    return LoadedTower(path)


def embed_items(candidate_tower: Any, features: Mapping[str, Any],
                batch_size: int = 4096) -> np.ndarray:
    """Runs the candidate tower over item features in batches; returns [n, d] float32."""
    lengths = {name: len(value) for name, value in features.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Item features must have the same number of rows, got {lengths}.")
    n = next(iter(lengths.values()))
    out = []
    for start in range(0, n, batch_size):
        batch = {}
        for name, value in features.items():
            chunk = value[start : start + batch_size]
            arr = np.asarray(chunk, dtype=object)
            is_text = arr.size and isinstance(arr.ravel()[0], (str, bytes))
            batch[name] = to_string_tensor(chunk) if is_text else tf.convert_to_tensor(chunk)
        out.append(np.asarray(candidate_tower(batch)))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def add_items(
    store: CandidateStore,
    candidate_tower: Any,
    new_item_features: Mapping[str, Any],
    id_feature: str = "item_id",
) -> CandidateStore:
    """Embeds new items with the candidate tower and returns a store with them appended.

    Args:
        store: the current candidates.
        candidate_tower: the trained candidate tower (a Keras model, a `LoadedTower`, or any
            callable from a feature dict to [B, d] embeddings).
        new_item_features: raw features of the new items, including `id_feature`.
        id_feature: the feature holding the item ids.

    Raises:
        ValueError: if an id is already in the store or repeats among the new items, or the
            tower's output dim differs from the store's (the tower was retrained: re-embed all).
    """
    if id_feature not in new_item_features:
        raise KeyError(f"new_item_features has no {id_feature!r} column; it has "
                       f"{sorted(new_item_features)}.")
    new_ids = normalize_ids(new_item_features[id_feature], f"new_item_features[{id_feature!r}]")
    if len(new_ids) == 0:
        return store
    check_unique_ids(new_ids, f"new_item_features[{id_feature!r}]")
    clash = np.isin(new_ids, store.ids)
    if clash.any():
        rows = np.flatnonzero(clash)
        listed = ", ".join(f"{str(new_ids[r])!r} (row {r})" for r in rows[:5])
        raise ValueError(
            f"{len(rows)} new item id(s) are already in the candidate store: {listed}. "
            "add_items only appends new items; to refresh an existing item, rebuild the store."
        )
    embeddings = embed_items(candidate_tower, new_item_features)
    embeddings = check_embeddings(embeddings, "candidate tower output", len(new_ids))
    if embeddings.shape[1] != store.embedding_dim:
        raise ValueError(
            f"The candidate tower outputs dim {embeddings.shape[1]} but the store holds dim "
            f"{store.embedding_dim}; a retrained tower needs the whole catalogue re-embedded."
        )
    return CandidateStore(np.concatenate([store.ids, new_ids]),
                          np.concatenate([store.embeddings, embeddings]))
