"""Stores of text vectors keyed by id: item text vectors and user profile vectors, as files.

One store is a folder of three plain files (no pickle), so a Beam job, a serving process or
another language can read it::

    <store>/
        item_vectors.npy    float32 [count, dim] (`user_vectors.npy` for a user store)
        item_ids.txt        one id per line, line i is row i (`user_ids.txt` for users)
        meta.json           kind, model name, model fingerprint, dim, text source fields,
                            count, sha256 of both data files, free-form `extra`

A store is written to a temporary sibling folder and renamed into place, so a reader never
sees half a store; `load` checks every file against the others and against `meta.json` and
names the offending file when they disagree.

Example:
  >>> store = ItemVectors(ids=["i1", "i2"], vectors=np.eye(2, dtype=np.float32),
  ...                     model="all-MiniLM-L6-v2", fingerprint="ab12", text_fields=("text",))
  >>> store.save("runs/embed_items/synthetic/item_vectors")
  >>> loaded = ItemVectors.load("runs/embed_items/synthetic/item_vectors")
  >>> vectors, found = loaded.lookup(["i2", "x"])
  >>> found
  array([ True, False])
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, List, Sequence, Tuple, Type, TypeVar

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import GENRES, ITEM_ID

STORE_FORMAT_VERSION = 1
META_FILE = "meta.json"
_REQUIRED_META = ("format_version", "kind", "model", "fingerprint", "dim", "text_fields",
                  "count", "vectors_sha256", "ids_sha256")

S = TypeVar("S", bound="VectorStore")


class VectorStoreError(ValueError):
    """A vector store on disk (or about to be written) is inconsistent; names file and cause."""


def _sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@dataclasses.dataclass(eq=False, repr=False)
class VectorStore:
    """Ids (str) and a float32 matrix with one row per id, plus the model that made them.

    Use the subclasses `ItemVectors` and `UserVectors`; they differ only in file names and
    the `kind` recorded in meta.json (a user store loaded as an item store is an error).

    Args:
        ids: distinct, non-empty ids without line breaks; row i of `vectors` belongs to ids[i].
        vectors: [len(ids), dim] finite values, stored as float32.
        model: name of the model that produced the vectors.
        fingerprint: the model identity (`SentenceEncoder.fingerprint`), so consumers can
            check that two stores came from the same model and settings.
        text_fields: item columns the encoded text was built from.
        extra: JSON-serialisable facts kept in meta.json (dataset, split, counts, ...).
    """

    ids: Sequence[str]
    vectors: np.ndarray
    model: str = ""
    fingerprint: str = ""
    text_fields: Tuple[str, ...] = ()
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    kind: ClassVar[str] = "vector"
    vectors_file: ClassVar[str] = "vectors.npy"
    ids_file: ClassVar[str] = "ids.txt"

    def __post_init__(self):
        self.ids = np.asarray([str(i) for i in self.ids], dtype=object)
        vectors = np.asarray(self.vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.ids):
            raise VectorStoreError(
                f"{type(self).__name__}: vectors have shape {vectors.shape}, expected "
                f"({len(self.ids)}, dim) to match {len(self.ids)} ids")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.text_fields = tuple(str(f) for f in self.text_fields)
        for row, value in enumerate(self.ids):
            if not value or "\n" in value or "\r" in value:
                raise VectorStoreError(
                    f"{type(self).__name__}: id at row {row} is {value!r}; ids must be "
                    "non-empty and contain no line breaks (they are stored one per line)")
        self._index = pd.Index(self.ids)
        if self._index.has_duplicates:
            dup = self._index[self._index.duplicated()][0]
            row = int(np.flatnonzero(self.ids == dup)[1])
            raise VectorStoreError(f"{type(self).__name__}: id {dup!r} appears twice "
                                   f"(again at row {row})")
        bad = ~np.isfinite(self.vectors).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise VectorStoreError(f"{type(self).__name__}: row {row} (id {self.ids[row]!r}) "
                                   "has a non-finite value")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(count={len(self)}, dim={self.dim}, model={self.model!r}, "
                f"fingerprint={self.fingerprint[:12]!r}, text_fields={self.text_fields})")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def positions(self, ids: Iterable[str]) -> np.ndarray:
        """Row of each id in this store, -1 for ids it does not hold."""
        return self._index.get_indexer(np.asarray([str(i) for i in ids], dtype=object))

    def lookup(self, ids: Iterable[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Vectors of `ids` [len(ids), dim] (zeros for unknown ids) and a boolean found-mask."""
        pos = self.positions(ids)
        found = pos >= 0
        out = np.zeros((len(pos), self.dim), dtype=np.float32)
        out[found] = self.vectors[pos[found]]
        return out, found

    # ---- files -------------------------------------------------------------------------------

    def meta(self) -> Dict[str, Any]:
        """The meta.json content of this store (hashes of the files as `save` writes them)."""
        return {
            "format_version": STORE_FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "text_fields": list(self.text_fields),
            "count": len(self),
            "vectors_sha256": _sha256_bytes(self.vectors.tobytes(order="C")),
            "ids_sha256": _sha256_bytes(self._ids_payload()),
            "extra": self.extra,
        }

    def _ids_payload(self) -> bytes:
        return "".join(f"{i}\n" for i in self.ids).encode("utf-8")

    def save(self, directory: str | Path) -> Path:
        """Writes the store to `directory` atomically, replacing an existing store there.

        The files go to a temporary sibling folder first; the old store (if any) is moved
        aside and the new folder renamed into place, so a reader sees the old or the new
        store, never a mix.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(self.meta(), indent=2, sort_keys=True, default=_json_scalar) + "\n"
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        try:
            with open(tmp / self.vectors_file, "wb") as handle:
                np.save(handle, self.vectors, allow_pickle=False)
            (tmp / self.ids_file).write_bytes(self._ids_payload())
            (tmp / META_FILE).write_text(meta, encoding="utf-8")
            for name in (self.vectors_file, self.ids_file, META_FILE):
                with open(tmp / name, "rb") as handle:
                    os.fsync(handle.fileno())
            old = None
            if directory.exists():
                old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(directory, old)
            os.replace(tmp, directory)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls: Type[S], directory: str | Path, expected_fingerprint: str | None = None) -> S:
        """Reads a store written by `save`, checking every file against the others.

        Args:
            directory: the store folder.
            expected_fingerprint: if given, the store must come from this model identity.

        Raises:
            VectorStoreError: a file is missing or unreadable, the kind, shape, count, dim or
                a hash disagrees with meta.json, an id line is empty or repeated, or the
                fingerprint is not the expected one. The message names the file.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise VectorStoreError(f"{directory}: no {cls.kind} vector store here (not a folder)")
        meta_path, ids_path = directory / META_FILE, directory / cls.ids_file
        vectors_path = directory / cls.vectors_file
        for path in (meta_path, ids_path, vectors_path):
            if not path.is_file():
                raise VectorStoreError(f"{path}: missing file of the {cls.kind} vector store")
        meta = _read_meta(meta_path)
        if meta["kind"] != cls.kind:
            raise VectorStoreError(f"{meta_path}: field 'kind' is {meta['kind']!r}, expected "
                                   f"{cls.kind!r} (load it with the matching store class)")
        if meta["format_version"] != STORE_FORMAT_VERSION:
            raise VectorStoreError(f"{meta_path}: field 'format_version' is "
                                   f"{meta['format_version']!r}, this code reads "
                                   f"{STORE_FORMAT_VERSION}")
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise VectorStoreError(
                f"{meta_path}: field 'fingerprint' is {meta['fingerprint'][:16]!r}..., expected "
                f"{expected_fingerprint[:16]!r}...; the store was made by another model or "
                "setting (re-run pipelines.embed_items)")

        try:
            vectors = np.load(vectors_path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise VectorStoreError(
                f"{vectors_path}: cannot read the vector matrix ({err})") from err
        if vectors.dtype != np.float32 or vectors.ndim != 2:
            raise VectorStoreError(f"{vectors_path}: expected a 2-D float32 matrix, got "
                                   f"dtype {vectors.dtype} and shape {vectors.shape}")
        if vectors.shape != (meta["count"], meta["dim"]):
            raise VectorStoreError(
                f"{vectors_path}: shape {vectors.shape} does not match {meta_path.name} "
                f"(count={meta['count']}, dim={meta['dim']})")
        if _sha256_bytes(vectors.tobytes(order="C")) != meta["vectors_sha256"]:
            raise VectorStoreError(f"{vectors_path}: content differs from the sha256 recorded "
                                   f"in {meta_path.name} (the file changed after it was written)")

        ids = _read_ids(ids_path)
        if len(ids) != vectors.shape[0]:
            raise VectorStoreError(
                f"{ids_path}: has {len(ids)} ids but {vectors_path.name} has "
                f"{vectors.shape[0]} rows; line i must name row i")
        if _sha256_bytes(ids_path.read_bytes()) != meta["ids_sha256"]:
            raise VectorStoreError(f"{ids_path}: content differs from the sha256 recorded in "
                                   f"{meta_path.name} (the file changed after it was written)")
        try:
            return cls(ids=ids, vectors=vectors, model=meta["model"],
                       fingerprint=meta["fingerprint"], text_fields=tuple(meta["text_fields"]),
                       extra=dict(meta.get("extra") or {}))
        except VectorStoreError as err:
            raise VectorStoreError(f"{directory}: {err}") from err


def _json_scalar(value: Any) -> Any:
    # numpy scalars and arrays in `extra` (counts from pandas) are written as plain JSON.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"meta.json extra: {type(value).__name__} is not JSON serialisable")


def _read_meta(path: Path) -> Dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise VectorStoreError(f"{path}: invalid JSON at line {err.lineno}, column "
                               f"{err.colno} ({err.msg})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise VectorStoreError(f"{path}: cannot read ({err})") from err
    if not isinstance(meta, dict):
        raise VectorStoreError(f"{path}: expected a JSON object")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise VectorStoreError(f"{path}: missing field(s) {missing}")
    for key, least in (("count", 0), ("dim", 1)):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise VectorStoreError(f"{path}: field '{key}' must be an integer >= {least}, "
                                   f"got {value!r}")
    if not isinstance(meta["text_fields"], list):
        raise VectorStoreError(f"{path}: field 'text_fields' must be a list")
    return meta


def _read_ids(path: Path) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise VectorStoreError(f"{path}: cannot read ({err})") from err
    if text and not text.endswith("\n"):
        raise VectorStoreError(f"{path}: last line is not terminated (file truncated?)")
    ids = text.split("\n")[:-1] if text else []
    seen: Dict[str, int] = {}
    for line_no, value in enumerate(ids, start=1):
        if not value or "\r" in value:
            raise VectorStoreError(f"{path}, line {line_no}: empty or malformed id {value!r}")
        if value in seen:
            raise VectorStoreError(f"{path}, line {line_no}: id {value!r} repeats line "
                                   f"{seen[value]}")
        seen[value] = line_no
    return ids


class ItemVectors(VectorStore):
    """Text vectors of catalog items (see `VectorStore` for the Args)."""

    kind: ClassVar[str] = "item"
    vectors_file: ClassVar[str] = "item_vectors.npy"
    ids_file: ClassVar[str] = "item_ids.txt"


class UserVectors(VectorStore):
    """User profile vectors, e.g. from `profiles.build_user_profiles` (Args as `VectorStore`)."""

    kind: ClassVar[str] = "user"
    vectors_file: ClassVar[str] = "user_vectors.npy"
    ids_file: ClassVar[str] = "user_ids.txt"


def item_texts(items: pd.DataFrame, fields: Sequence[str] = ("text",)) -> List[str]:
    """The text to encode for each row of `items`: the non-empty `fields` joined by ". ".

    The canonical items frame already has a `text` column (title + genres or description,
    whatever the dataset has; user tags only in the frame that `data.side_info.items_for_train`
    returns for a split's train part), so the default uses it as is. A `genres` field is
    written as a comma-separated list rather than '|'-separated labels, as a sentence would.

    Raises:
        VectorStoreError: a field is not a column of `items`, or `fields` is empty.
    """
    fields = list(fields)
    if not fields:
        raise VectorStoreError("item_texts: text_fields is empty; name at least one column")
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise VectorStoreError(f"items: text field(s) {missing} are not columns; has "
                               f"{list(items.columns)}")
    parts = []
    for field in fields:
        column = items[field].fillna("").astype(str).str.strip()
        if field == GENRES:
            column = column.str.split("|").map(
                lambda labels: ", ".join(x.strip() for x in labels if x.strip()))
        parts.append(column.tolist())
    return [". ".join(p for p in row if p) for row in zip(*parts)]


def check_item_ids(items: pd.DataFrame, source: str = "items") -> np.ndarray:
    """The item ids of `items` as str, after checking they are present and distinct."""
    if ITEM_ID not in items.columns:
        raise VectorStoreError(f"{source}: no '{ITEM_ID}' column; has {list(items.columns)}")
    ids = items[ITEM_ID]
    null = ids.isna().to_numpy()
    if null.any():
        raise VectorStoreError(f"{source} row {int(np.flatnonzero(null)[0])}: field "
                               f"'{ITEM_ID}' is missing")
    ids = ids.astype(str).to_numpy(dtype=object)
    dup = pd.Index(ids).duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise VectorStoreError(f"{source} row {row}: item id {ids[row]!r} appears twice")
    return ids
