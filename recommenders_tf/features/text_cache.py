"""On-disk cache of text vectors, keyed by model identity and the sha256 of each text.

Layout of one cache (one folder per model identity, so vectors of different models, weights
or `max_length` never mix)::

    <cache_dir>/<model-slug>-<fingerprint[:16]>/
        meta.json                 model identity, dim, format version (for humans and checks)
        shards/<shard>.npy        float32 array (rows, dim), loaded with allow_pickle=False
        shards/<shard>.tsv        one sha256 hex per line; line i is row i of the .npy

Shards are append-only and named uniquely, and every file is written to a temporary name and
renamed into place. The `.tsv` is renamed last, so it is the commit marker: a crash leaves at
worst an orphan `.npy` that is ignored, and two processes filling the same cache never
overwrite each other's entries. No pickle anywhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

CACHE_FORMAT_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


class TextCacheError(RuntimeError):
    """The text-vector cache on disk is unreadable or belongs to another model."""


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """What one `encode_cached` call did.

    Args:
        hits: input positions served from the cache.
        misses: input positions that were not in the cache.
        encoded: distinct texts actually run through the model (duplicates among the
            misses are encoded once), i.e. the rows added to the cache.
    """

    hits: int
    misses: int
    encoded: int


def text_key(text: str) -> str:
    """The cache key of one text: sha256 hex of its exact UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TextVectorCache:
    """Append-only store of float32 vectors for one model identity.

    Args:
        directory: the folder of this model identity (created if missing).
        dim: vector width; shards with another width are rejected.
        identity: JSON-serializable description of the model identity, written to
            `meta.json`; an existing `meta.json` with a different `fingerprint` is an error.

    Example:
        >>> cache = TextVectorCache(tmp / "m-0123", dim=3, identity={"fingerprint": "0123"})
        >>> cache.add([text_key("a")], np.ones((1, 3), np.float32))
        >>> list(cache.get_many([text_key("a"), text_key("b")])) == [text_key("a")]
        True
    """

    def __init__(self, directory: str | Path, dim: int, identity: Mapping[str, object]):
        self.directory = Path(directory)
        self.dim = int(dim)
        self.identity = dict(identity)
        self._shards_dir = self.directory / "shards"
        self._shards_dir.mkdir(parents=True, exist_ok=True)
        self._check_or_write_meta()
        # key -> (shard array, row); shards are memory-mapped so a large cache costs no RAM.
        self._index: dict[str, tuple[np.ndarray, int]] = {}
        self._loaded: set[str] = set()

    def _check_or_write_meta(self) -> None:
        meta_path = self.directory / "meta.json"
        meta = {"format_version": CACHE_FORMAT_VERSION, "dim": self.dim, **self.identity}
        if meta_path.exists():
            try:
                existing = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise TextCacheError(f"{meta_path}: unreadable cache metadata ({err})") from err
            for field in ("format_version", "dim", "fingerprint"):
                if field in meta and existing.get(field) != meta[field]:
                    raise TextCacheError(
                        f"{meta_path}: field '{field}' is {existing.get(field)!r}, expected "
                        f"{meta[field]!r}; this folder belongs to another model or cache format"
                    )
            return
        _atomic_write_bytes(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())

    def refresh(self) -> None:
        """Pick up shards committed since the last call (also by other processes)."""
        for tsv in sorted(self._shards_dir.glob("*.tsv")):
            if tsv.stem in self._loaded:
                continue
            keys = tsv.read_text(encoding="utf-8").splitlines()
            for line_no, key in enumerate(keys, start=1):
                if not _HEX64.fullmatch(key):
                    raise TextCacheError(
                        f"{tsv}, line {line_no}: expected a 64-character sha256 hex key, "
                        f"got {key[:80]!r}"
                    )
            npy = tsv.with_suffix(".npy")
            try:
                vectors = np.load(npy, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise TextCacheError(f"{npy}: cannot read cache shard ({err})") from err
            if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
                raise TextCacheError(
                    f"{npy}: shard has dtype {vectors.dtype} and shape {vectors.shape}, "
                    f"expected float32 ({len(keys)}, {self.dim}) to match {tsv.name}"
                )
            for row, key in enumerate(keys):
                self._index[key] = (vectors, row)
            self._loaded.add(tsv.stem)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of the keys present in the cache (absent keys are left out)."""
        found = {}
        for key in keys:
            entry = self._index.get(key)
            if entry is not None:
                shard, row = entry
                found[key] = np.array(shard[row], dtype=np.float32)
        return found

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store `vectors[i]` under `keys[i]` as one new shard (written atomically)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(
                f"add: vectors have shape {vectors.shape}, expected ({len(keys)}, {self.dim})"
            )
        if len(set(keys)) != len(keys):
            raise ValueError("add: keys must be distinct")
        if not keys:
            return
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        _atomic_save_npy(self._shards_dir / f"{stem}.npy", vectors)
        _atomic_write_bytes(self._shards_dir / f"{stem}.tsv", ("\n".join(keys) + "\n").encode())
        self.refresh()
