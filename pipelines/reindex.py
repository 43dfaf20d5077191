"""Add new items to the retrieval index without retraining, and export new versions.

  python -m pipelines.reindex --run-dir runs/train_retrieval/synthetic --items new_items.csv

The items file (CSV or TSV with a header row) has `item_id` and every input the saved
candidate tower reads, under the tower's input name or the data schema's name:

  item_title        or `title`         non-empty text
  item_genres       or `genres`        '|'-joined labels ("" when unknown)
  item_text_vector  or `text_vector`   D numbers separated by spaces, ';' or ',' (brackets
                                       allowed); or instead a `text` column, encoded with the
                                       pretrained sentence encoder `text_model` (use the model
                                       the training run's item vectors came from)
  <other input>                        its value (strings as is, numbers parsed)

Every row is checked before anything is embedded; an error names the file, row, line and field.
Ids already in the store, or repeated in the file, are rejected (to change an existing item,
rebuild the store from a retrained model).

The new items are embedded with the saved candidate tower and appended to the newest store of
the run, saved as a NEW store folder `candidate_store.v<N>/` (towers copied, `lineage.json`
recording the parent and the added ids), written under a temporary name and renamed, so the old
store is never touched and a crash leaves no half store. Then both indexes are rebuilt (ScaNN
re-tuned) and exported as new versions, exactly as `pipelines.build_index` does.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from pipelines import build_index
from pipelines.build_index import BuildIndexConfig
from recommenders_tf import cli
from recommenders_tf.data.validation import DataValidationError, read_delimited
from recommenders_tf.index import (CandidateStore, LoadedTower, add_items, latest_store_dir,
                                   store_dirs)
from recommenders_tf.index.candidate_store import (CANDIDATE_TOWER_DIR, QUERY_TOWER_DIR,
                                                   STORE_DIR)
from recommenders_tf.runs import Progress, make_run_dir, record_run

ID_COLUMN = "item_id"
TEXT_VECTOR = "item_text_vector"
TEXT_COLUMN = "text"
# Tower input name -> the data schema's column names accepted for it.
ALIASES = {"item_title": ("title",), "item_genres": ("genres",), TEXT_VECTOR: ("text_vector",)}
# Inputs that may be empty ("" = unknown genres is how the loaders write it).
MAY_BE_EMPTY = {"item_genres"}
LINEAGE_FILE = "lineage.json"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_NUMBER_SPLIT = re.compile(r"[\s;,]+")


@dataclasses.dataclass
class ReindexConfig(BuildIndexConfig):
    """BuildIndexConfig plus the new items.

    Args:
        items: the new-items file (CSV/TSV with a header).
        text_model: sentence encoder for a `text` column when the candidate tower reads
            `item_text_vector` and the file has no vector column; default the model of the
            training run's item-vector store (towers.json `text_vectors`), else
            all-MiniLM-L6-v2.
    """

    items: str = ""
    text_model: str = ""
    out_dir: str = "runs/reindex"


def _column_for(name: str, columns: Sequence[str]) -> Optional[str]:
    for candidate in (name, *ALIASES.get(name, ())):
        if candidate in columns:
            return candidate
    return None


def _parse_vector(cell: str, dim: Optional[int], where: Dict[str, Any]) -> np.ndarray:
    parts = [p for p in _NUMBER_SPLIT.split(cell.strip().strip("[]").strip()) if p]
    try:
        values = np.asarray([float(p) for p in parts], dtype=np.float32)
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        raise DataValidationError(f"{bad!r} is not a number; write the vector as numbers "
                                  "separated by spaces", **where) from None
    if dim is not None and len(values) != dim:
        raise DataValidationError(f"has {len(values)} numbers but the candidate tower reads "
                                  f"vectors of {dim}", **where)
    if len(values) == 0:
        raise DataValidationError("is empty; expected a vector of numbers", **where)
    if not np.isfinite(values).all():
        raise DataValidationError("contains NaN or inf", **where)
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_new_items(path: str | os.PathLike, feature_spec: Mapping[str, tf.TensorSpec],
                   existing_ids: Sequence[str], *, text_model: str = DEFAULT_TEXT_MODEL,
                   progress: bool = False) -> Dict[str, np.ndarray]:
    """Reads and validates a new-items file into the candidate tower's feature dict.

    Args:
        path: CSV/TSV with a header row.
        feature_spec: the candidate tower's inputs (name -> TensorSpec).
        existing_ids: ids already in the store (a new row may not reuse one).
        text_model: encoder for a `text` column standing in for `item_text_vector`.
        progress: show the encoder's progress bar.

    Returns:
        {input name: array with one row per item}, ready for `add_items`.

    Raises:
        DataValidationError: naming file, row, line and field of the first problem.
    """
    frame = read_delimited(path)
    lines = frame.attrs.get("lines") or list(range(2, len(frame) + 2))
    columns = list(frame.columns)
    if ID_COLUMN not in feature_spec:
        raise ValueError(f"The candidate tower's inputs {sorted(feature_spec)} have no "
                         f"{ID_COLUMN!r}; cannot tell which rows are which items.")

    def where(row: int, field: str) -> Dict[str, Any]:
        return {"file": path, "row": row + 1, "line": lines[row], "field": field}

    sources: Dict[str, str] = {}
    encode_text = False
    for name in feature_spec:
        column = _column_for(name, columns)
        if column is None and name == TEXT_VECTOR and TEXT_COLUMN in columns:
            encode_text = True
            continue
        if column is None:
            accepted = " or ".join(repr(c) for c in (name, *ALIASES.get(name, ())))
            if name == TEXT_VECTOR:
                accepted += f" (or {TEXT_COLUMN!r} to encode)"
            raise DataValidationError(
                f"missing column {accepted}: the saved candidate tower reads "
                f"{sorted(feature_spec)}; the file has {columns}", file=path, field=name)
        sources[name] = column

    existing = set(np.asarray(existing_ids).tolist())
    first_row: Dict[str, int] = {}
    ids = frame[sources[ID_COLUMN]].tolist()
    for row, item_id in enumerate(ids):
        if item_id.strip() == "" or item_id != item_id.strip():
            raise DataValidationError(f"item id {item_id!r} is empty or has leading/trailing "
                                      "spaces", **where(row, ID_COLUMN))
        if item_id in existing:
            raise DataValidationError(
                f"item id {item_id!r} is already in the candidate store; reindex only adds "
                "new items (an existing item changes with a rebuilt store)",
                **where(row, ID_COLUMN))
        if item_id in first_row:
            raise DataValidationError(
                f"item id {item_id!r} repeats row {first_row[item_id] + 1} of this file",
                **where(row, ID_COLUMN))
        first_row[item_id] = row

    features: Dict[str, np.ndarray] = {ID_COLUMN: np.asarray(ids, dtype=str)}
    for name, column in sources.items():
        if name == ID_COLUMN:
            continue
        spec, cells = feature_spec[name], frame[column].tolist()
        if spec.dtype == tf.string:
            if name not in MAY_BE_EMPTY:
                for row, cell in enumerate(cells):
                    if cell.strip() == "":
                        raise DataValidationError(f"is empty; every new item needs a {name}",
                                                  **where(row, column))
            features[name] = np.asarray(cells, dtype=str)
        elif spec.shape.rank == 2:
            dim = spec.shape[1]
            features[name] = np.stack([_parse_vector(cell, dim, where(row, column))
                                       for row, cell in enumerate(cells)])
        else:
            values = []
            for row, cell in enumerate(cells):
                if not _is_float(cell):
                    raise DataValidationError(f"{cell!r} is not a number", **where(row, column))
                values.append(float(cell))
            features[name] = np.asarray(values, dtype=spec.dtype.as_numpy_dtype)
    if encode_text:
        from recommenders_tf.features.text_encoder import SentenceEncoder

        texts = frame[TEXT_COLUMN].tolist()
        for row, text in enumerate(texts):
            if text.strip() == "":
                raise DataValidationError("is empty; it is encoded into the item text vector",
                                          **where(row, TEXT_COLUMN))
        encoder = SentenceEncoder(text_model)
        dim = feature_spec[TEXT_VECTOR].shape[1]
        if dim is not None and encoder.dim != dim:
            raise ValueError(f"{text_model} makes {encoder.dim}-dim vectors but the candidate "
                             f"tower reads {dim}; set text_model to the training run's model.")
        features[TEXT_VECTOR] = encoder.encode(texts, progress=progress)
    return features


def training_text_model(run_dir: str | os.PathLike) -> str:
    """The sentence encoder behind the training run's item text vectors (see ReindexConfig)."""
    towers = Path(run_dir) / "towers.json"
    store = json.loads(towers.read_text()).get("text_vectors") if towers.exists() else None
    meta = Path(store) / "meta.json" if store else None
    if meta is not None and meta.exists():
        return str(json.loads(meta.read_text()).get("model") or DEFAULT_TEXT_MODEL)
    return DEFAULT_TEXT_MODEL


def _sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_store_version(store: CandidateStore, parent_dir: Path, run_dir: str | os.PathLike,
                       lineage: Mapping[str, Any]) -> Path:
    """Writes `store` as the next `candidate_store.v<N>` of `run_dir`, atomically.

    The towers are copied from `parent_dir`. Everything is written under a temporary name in
    `run_dir` and renamed at the end; an existing store is never modified or replaced.
    """
    run_dir = Path(run_dir)
    tmp = run_dir / f".tmp-{STORE_DIR}-{uuid.uuid4().hex}"
    try:
        store.save(tmp)
        for sub in (CANDIDATE_TOWER_DIR, QUERY_TOWER_DIR):
            if (parent_dir / sub).is_dir():
                shutil.copytree(parent_dir / sub, tmp / sub)
        (tmp / LINEAGE_FILE).write_text(json.dumps(dict(lineage), indent=2) + "\n",
                                        encoding="utf-8")
        for _ in range(100):
            version = max([v for v, _ in store_dirs(run_dir)], default=1) + 1
            target = run_dir / f"{STORE_DIR}.v{version}"
            if target.exists():  # a concurrent reindex claimed it between listing and here
                continue
            try:
                os.rename(tmp, target)
            except OSError:
                continue
            return target
        raise RuntimeError(f"Could not claim a new store version in {run_dir}.")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(config: ReindexConfig) -> Dict[str, Any]:
    """Validates and embeds the new items, saves the grown store as a new version, then runs
    `pipelines.build_index` on it; returns build_index's results plus what was added."""
    log = Progress("reindex")
    if not config.items:
        raise ValueError("No new items: pass --items <file>.")
    store_dir = Path(config.store_dir) if config.store_dir else latest_store_dir(config.run_dir)
    store = CandidateStore.load(store_dir)
    if not (store_dir / CANDIDATE_TOWER_DIR).is_dir():
        raise FileNotFoundError(f"{store_dir / CANDIDATE_TOWER_DIR} is missing: new items "
                                "are embedded with the saved candidate tower.")
    candidate_tower = LoadedTower(store_dir / CANDIDATE_TOWER_DIR)
    features = read_new_items(config.items, candidate_tower.feature_spec, store.ids,
                              text_model=config.text_model or training_text_model(
                                  config.run_dir))
    new_ids = features[ID_COLUMN].tolist()
    log(f"validated {len(new_ids)} new items from {config.items}; embedding them with "
        f"{store_dir / CANDIDATE_TOWER_DIR}")
    grown = add_items(store, candidate_tower, features)
    lineage = {
        "parent": str(store_dir), "parent_count": len(store), "count": len(grown),
        "items_file": str(config.items), "items_sha256": _sha256(config.items),
        "added_ids": new_ids,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    new_dir = save_store_version(grown, store_dir, config.run_dir, lineage)
    log(f"saved {new_dir} ({len(store)} + {len(new_ids)} = {len(grown)} candidates)")
    # The index build and its run record are build_index's, into this step's run folder.
    results = build_index.main(dataclasses.replace(config, store_dir=str(new_dir)))
    results.update({"parent_store": str(store_dir), "added_items": len(new_ids),
                    "added_ids": new_ids})
    run_dir = make_run_dir(config.out_dir, config.run_name or Path(config.run_dir).name)
    results["reindex_run_dir"] = str(run_dir)
    record_run(run_dir, config, results, summary_lines(results, config.items))
    log(f"done; run record in {run_dir}")
    return results


def summary_lines(results: Mapping[str, Any], items_file: str) -> List[str]:
    k = results["k"]
    lines = [f"Added {results['added_items']} items from `{items_file}` to "
             f"`{results['parent_store']}` -> `{results['candidate_store']}` "
             f"({results['num_candidates']} candidates).",
             f"Tuning queries: {results['query_note']}.", ""]
    for kind, facts in results["indexes"].items():
        lines.append(f"- {kind}: recall@{k} vs exact {facts[f'recall@{k}_vs_exact']}, "
                     f"export `{results['exports'][kind]}`")
    return lines


def parse_args(argv=None) -> ReindexConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], ReindexConfig, dataset=True)
    parser.add_argument("--run-dir", help="train_retrieval run folder")
    parser.add_argument("--items", help="new-items CSV/TSV")
    return cli.parse_config(ReindexConfig, parser, argv, fields=("run_dir", "items"))


if __name__ == "__main__":
    cli.run(main, parse_args)
