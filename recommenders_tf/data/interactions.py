"""A generic interactions file (CSV, TSV or Parquet), optionally with an items file.

The interactions file needs a user id, an item id and a timestamp column (integer epoch seconds
or ISO-8601 date-times); a rating column is optional (missing → implicit weight 1.0). Common
column spellings (`userId`, `movieId`, `score`, `time`, ...) are recognised; anything else is
mapped with `columns={"<name in file>": "<canonical name>"}`.

The items file needs `item_id` and `title`; every other text column (description, tags,
genres, brand, ...) is folded into the item `text` the language model reads.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.validation import (DataValidationError, build_report, parse_ids,
                                             parse_ratings, parse_timestamps, read_delimited,
                                             require_columns, row_location)

# Lower-cased file column name → canonical name, tried when no explicit mapping names a column.
COLUMN_ALIASES = {
    "user_id": schema.USER_ID, "userid": schema.USER_ID, "user": schema.USER_ID,
    "uid": schema.USER_ID, "customer_id": schema.USER_ID,
    "item_id": schema.ITEM_ID, "itemid": schema.ITEM_ID, "item": schema.ITEM_ID,
    "movie_id": schema.ITEM_ID, "movieid": schema.ITEM_ID, "product_id": schema.ITEM_ID,
    "iid": schema.ITEM_ID,
    "rating": schema.RATING, "score": schema.RATING, "stars": schema.RATING,
    "timestamp": schema.TIMESTAMP, "time": schema.TIMESTAMP, "ts": schema.TIMESTAMP,
    "datetime": schema.TIMESTAMP, "date": schema.TIMESTAMP, "unix_time": schema.TIMESTAMP,
    "title": schema.TITLE, "name": schema.TITLE, "movie_title": schema.TITLE,
}
# Free-text columns whose name adds nothing in front of the value.
_PLAIN_TEXT_COLUMNS = {"text", "description", "overview", "plot", "summary", "synopsis"}


def _read_frame(path, delimiter: Optional[str], encoding: str) -> pd.DataFrame:
    if str(path).lower().endswith((".parquet", ".pq")):
        if not os.path.exists(path):
            raise DataValidationError("file does not exist", file=path)
        frame = pd.read_parquet(path)
        if len(frame) == 0:
            raise DataValidationError("file has no data rows", file=path)
        frame.columns = [str(c).strip() for c in frame.columns]
        frame.attrs.update(file=os.fspath(path), lines=None, header=True)
        return frame.reset_index(drop=True)
    return read_delimited(path, delimiter=delimiter, encoding=encoding)


def _rename(frame: pd.DataFrame, columns: Optional[Mapping[str, str]],
            wanted: List[str]) -> pd.DataFrame:
    """Applies the explicit mapping, then aliases for canonical columns still absent."""
    attrs = dict(frame.attrs)
    mapping: Dict[str, str] = dict(columns or {})
    unknown = [c for c in mapping if c not in frame.columns]
    if unknown:
        raise DataValidationError(
            f"columns= maps '{unknown[0]}', which is not a column (found {list(frame.columns)})",
            file=attrs.get("file"), line=1, field=unknown[0])
    frame = frame.rename(columns=mapping)
    present = set(frame.columns)
    alias_map = {}
    for column in frame.columns:
        target = COLUMN_ALIASES.get(column.lower())
        if target in wanted and target not in present and target not in alias_map.values():
            alias_map[column] = target
    frame = frame.rename(columns=alias_map)
    frame.attrs.update(attrs)
    return frame


def load_interactions_file(path, items_path=None, columns: Optional[Mapping[str, str]] = None,
                           delimiter: Optional[str] = None,
                           rating_range: Optional[tuple] = None, *, encoding: str = "utf-8",
                           item_columns: Optional[Mapping[str, str]] = None,
                           name: Optional[str] = None) -> schema.RecDataset:
    """Loads a generic interactions file (and optional items file) into the canonical schema.

    Args:
      path: CSV/TSV/any-delimited text file with a header, or a Parquet file.
      items_path: optional items file with `item_id`, `title` and any text/categorical columns.
      columns: mapping from column names in the interactions file to canonical names
        (`user_id`, `item_id`, `rating`, `timestamp`).
      delimiter: field separator of text files; sniffed from the header when None.
      rating_range: (min, max) of valid explicit ratings; out-of-range ratings are kept and
        counted. None takes the observed range (no rating column → implicit, range None).
      encoding: text encoding of the files.
      item_columns: like `columns`, for the items file.
      name: dataset name; defaults to the file's stem.

    Returns:
      A RecDataset whose items list every item of the items file plus any item that appears
      only in the interactions (with its id as title, counted in the report).

    Raises:
      DataValidationError: naming file, row and field of the first bad value.
    """
    frame = _read_frame(path, delimiter, encoding)
    wanted = [schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP]
    frame = _rename(frame, columns, wanted)
    require_columns(frame, [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP])
    notes = []
    implicit = schema.RATING not in frame.columns
    if implicit:
        ratings = pd.Series(np.ones(len(frame), dtype="float32"), dtype="float32")
        notes.append("no rating column: implicit feedback, every interaction weighs 1.0")
    else:
        ratings = parse_ratings(frame, schema.RATING)
    interactions = schema.canonical_interactions(pd.DataFrame({
        schema.USER_ID: parse_ids(frame, schema.USER_ID),
        schema.ITEM_ID: parse_ids(frame, schema.ITEM_ID),
        schema.RATING: ratings,
        schema.TIMESTAMP: parse_timestamps(frame, schema.TIMESTAMP),
    }))
    if implicit:
        rating_range = None
    elif rating_range is None:
        rating_range = (float(interactions[schema.RATING].min()),
                        float(interactions[schema.RATING].max()))
    sources = [os.fspath(path)]
    items = None
    if items_path is not None:
        items = load_items_file(items_path, columns=item_columns, delimiter=None,
                                encoding=encoding)
        sources.append(os.fspath(items_path))
    items, missing = complete_items(items, interactions)
    if items_path is not None and missing:
        notes.append(f"{missing} items appear in interactions but not in {items_path}; "
                     f"their title and text are their id")
    report = build_report(" + ".join(sources), interactions, rating_range,
                          lines=frame.attrs.get("lines"), notes=notes)
    report.counts["items_without_metadata"] = int(missing) if items_path is not None else 0
    report.counts["catalog_items"] = int(len(items))
    users = pd.DataFrame({schema.USER_ID: schema.object_column(
        np.sort(interactions[schema.USER_ID].unique()))})
    stem = os.path.basename(os.fspath(path)).split(".")[0]
    return schema.RecDataset(name=name or stem, interactions=interactions, items=items,
                             users=users, report=report, rating_range=rating_range)


def load_items_file(path, columns: Optional[Mapping[str, str]] = None,
                    delimiter: Optional[str] = None, encoding: str = "utf-8") -> pd.DataFrame:
    """Reads an items file: `item_id`, `title`, and text/categorical columns folded into `text`.

    Every extra non-numeric column becomes `"<Column>: <value>"` in the text (free-text columns
    such as `description` are added as they are; '|'-separated lists read as comma lists).
    """
    frame = _read_frame(path, delimiter, encoding)
    frame = _rename(frame, columns, [schema.ITEM_ID, schema.TITLE])
    require_columns(frame, [schema.ITEM_ID, schema.TITLE])
    ids = parse_ids(frame, schema.ITEM_ID)
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        position = int(np.flatnonzero(duplicated)[0])
        raise DataValidationError(f"item id {ids.iloc[position]!r} is listed twice",
                                  field=schema.ITEM_ID, **row_location(frame, position))
    titles = frame[schema.TITLE].astype(str).str.strip().reset_index(drop=True)
    items = pd.DataFrame({schema.ITEM_ID: ids, schema.TITLE: schema.object_column(titles)})
    text_parts = [titles]
    for column in frame.columns:
        if column in (schema.ITEM_ID, schema.TITLE, schema.TEXT):
            continue
        values = frame[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(values):
            items[column] = values
            continue
        values = values.astype(str).str.strip()
        if pd.to_numeric(values, errors="coerce").notna().all():
            items[column] = pd.to_numeric(values)  # numeric feature, not text
            continue
        items[column] = schema.object_column(values)
        readable = values.str.replace("|", ", ", regex=False)
        label = "" if column.lower() in _PLAIN_TEXT_COLUMNS else f"{column.capitalize()}: "
        text_parts.append(readable.where(readable == "", label + readable))
    if schema.TEXT in frame.columns:
        text_parts.append(frame[schema.TEXT].astype(str).str.strip().reset_index(drop=True))
    items[schema.TEXT] = schema.object_column(_join_text(text_parts))
    if schema.GENRES not in items.columns:
        items[schema.GENRES] = schema.object_column([""] * len(items))
    return items


def _join_text(parts: List[pd.Series]) -> pd.Series:
    """Joins non-empty parts with '. ' row by row."""
    table = pd.concat([p.astype(str) for p in parts], axis=1).to_numpy(dtype=object)
    return pd.Series([". ".join(v for v in row if v) for row in table], dtype=object)


def complete_items(items: Optional[pd.DataFrame], interactions: pd.DataFrame):
    """Adds a minimal row (title = text = id) for every interacted item missing from `items`.

    Returns:
      (items sorted by item_id, number of rows added).
    """
    seen = np.sort(interactions[schema.ITEM_ID].unique())
    if items is None:
        ids = schema.object_column(seen)
        frame = pd.DataFrame({schema.ITEM_ID: ids, schema.TITLE: ids, schema.TEXT: ids,
                              schema.GENRES: schema.object_column([""] * len(ids))})
        return frame, len(ids)
    missing = np.setdiff1d(seen, items[schema.ITEM_ID].to_numpy(dtype=str))
    if len(missing):
        ids = schema.object_column(missing)
        extra = pd.DataFrame({schema.ITEM_ID: ids, schema.TITLE: ids, schema.TEXT: ids})
        items = pd.concat([items, extra], ignore_index=True)
        for column in items.columns:
            if items[column].dtype == object:
                items[column] = schema.object_column(items[column].fillna(""))
    items = items.sort_values(schema.ITEM_ID, kind="mergesort").reset_index(drop=True)
    return items, len(missing)
