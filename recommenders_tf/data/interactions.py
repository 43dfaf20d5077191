"""A generic interactions file (CSV, TSV or Parquet), optionally with an items file.

The interactions file needs a user id, an item id and a timestamp column (integer epoch seconds
or ISO-8601 date-times); a rating column is optional (missing → implicit weight 1.0). Common
column spellings (`userId`, `movieId`, `score`, `time`, ...) are recognised; anything else is
mapped with `columns={"<name in file>": "<canonical name>"}`.

The items file needs `item_id` and `title`; every other text column (description, tags,
genres, brand, ...) is folded into the item `text` the language model reads.

Ids are strings; a Parquet id column stored as floating point is read as integers (25.0 is the
id "25"), so one item never gets two ids across files.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.validation import (FLOAT_IDS, DataValidationError, build_report,
                                             check_is_file, parse_ids, parse_ratings,
                                             parse_timestamps, read_delimited, record_dropped,
                                             require_columns, row_location, unknown_item_rows)

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
PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"
# "keep" (the default) adds a row titled by its id for an item missing from the items file.
UNKNOWN_ITEM_POLICIES = ("keep", "error", "drop")


def is_parquet(path) -> bool:
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def _read_parquet(path) -> pd.DataFrame:
    import pyarrow  # pandas reads Parquet through it; imported here for its error types

    check_is_file(path)
    with open(path, "rb") as handle:
        head = handle.read(len(_PARQUET_MAGIC))
    if head != _PARQUET_MAGIC:
        kind = ("empty" if not head else
                "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary")
        looks = {"empty": "it is empty",
                 "text": f"it starts with the text {head.decode('ascii')!r} — if it is a "
                         f"delimited text file, give it a .csv or .tsv name",
                 "binary": f"it starts with the bytes {head!r}"}[kind]
        raise DataValidationError(
            f"not a Parquet file (a Parquet file starts with {_PARQUET_MAGIC!r}); {looks}",
            file=path)
    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise DataValidationError(f"cannot read as Parquet ({type(err).__name__}: {err})",
                                  file=path) from err


def _read_frame(path, delimiter: Optional[str], encoding: str) -> pd.DataFrame:
    if is_parquet(path):
        frame = _read_parquet(path)
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
                           name: Optional[str] = None,
                           on_unknown_items: str = "keep") -> schema.RecDataset:
    """Loads a generic interactions file (and optional items file) into the canonical schema.

    Args:
      path: CSV/TSV/any-delimited text file with a header, or a Parquet file.
      items_path: optional items file with `item_id`, `title` and any text/categorical columns.
      columns: mapping from column names in the interactions file to canonical names
        (`user_id`, `item_id`, `rating`, `timestamp`).
      delimiter: field separator of the interactions text file; sniffed from the header when
        None (the items file's is always sniffed).
      rating_range: (min, max) of valid explicit ratings; out-of-range ratings are kept and
        counted. None infers it as the min and max of the non-negative ratings: negative
        ratings are counted as out of range instead of widening the range (declare the range
        when negative ratings are valid). No rating column → implicit, range None.
      encoding: text encoding of the files.
      item_columns: like `columns`, for the items file.
      name: dataset name; defaults to the file's stem.
      on_unknown_items: what to do with interactions whose item is not in the items file:
        "keep" (default: add the item with its id as title, counted in the report), "error",
        or "drop" (drop the rows, counted with examples in the report).

    Returns:
      A RecDataset whose items list every item of the items file plus, with "keep", any item
      that appears only in the interactions (with its id as title, counted in the report).

    Raises:
      DataValidationError: naming file, row and field of the first bad value.
    """
    if on_unknown_items not in UNKNOWN_ITEM_POLICIES:
        raise ValueError(f"on_unknown_items={on_unknown_items!r}: expected one of "
                         f"{', '.join(repr(p) for p in UNKNOWN_ITEM_POLICIES)}")
    if on_unknown_items != "keep" and items_path is None:
        raise ValueError(f"on_unknown_items={on_unknown_items!r} needs an items file "
                         f"(items_path=, or items=<path> in a file: spec)")
    rating_range = _check_rating_range(rating_range)
    frame = _read_frame(path, delimiter, encoding)
    wanted = [schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP]
    frame = _rename(frame, columns, wanted)
    require_columns(frame, [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP])
    notes: List[str] = []
    counts: Dict[str, int] = {}
    if is_parquet(path) and (delimiter is not None or encoding != "utf-8"):
        notes.append(f"delimiter/encoding options do not apply to Parquet and were ignored "
                     f"for {path}")
    implicit = schema.RATING not in frame.columns
    if implicit:
        ratings = pd.Series(np.ones(len(frame), dtype="float32"), dtype="float32")
        notes.append("no rating column: implicit feedback, every interaction weighs 1.0")
        if rating_range is not None:
            notes.append(f"rating_range {rating_range} ignored: there is no rating column")
    else:
        ratings = parse_ratings(frame, schema.RATING)
    interactions = schema.canonical_interactions(pd.DataFrame({
        schema.USER_ID: parse_ids(frame, schema.USER_ID, notes, counts),
        schema.ITEM_ID: parse_ids(frame, schema.ITEM_ID, notes, counts),
        schema.RATING: ratings,
        schema.TIMESTAMP: parse_timestamps(frame, schema.TIMESTAMP),
    }))
    sources = [os.fspath(path)]
    items = None
    keep = np.ones(len(interactions), dtype=bool)
    if items_path is not None:
        items = load_items_file(items_path, columns=item_columns, delimiter=None,
                                encoding=encoding, notes=notes, counts=counts)
        sources.append(os.fspath(items_path))
        if on_unknown_items != "keep":
            keep = unknown_item_rows(interactions, items[schema.ITEM_ID], on_unknown_items,
                                     frame, f"the items file ({items_path})")
    rows_read = len(interactions)
    lines = frame.attrs.get("lines")
    kept = interactions
    if not keep.all():
        kept = interactions.loc[keep].reset_index(drop=True)
        lines = lines[keep] if lines is not None else None
    if implicit:
        rating_range = None
    elif rating_range is None:
        rating_range = _infer_rating_range(kept[schema.RATING].to_numpy(), path, notes)
    items, missing = complete_items(items, kept)
    if items_path is not None and missing:
        notes.append(f"{missing} items appear in interactions but not in {items_path}; "
                     f"their title and text are their id")
    report = build_report(" + ".join(sources), kept, rating_range, rows_read=rows_read,
                          lines=lines, notes=notes)
    record_dropped(report, interactions, keep, frame, f"the items file ({items_path})")
    report.counts["items_without_metadata"] = int(missing) if items_path is not None else 0
    report.counts["catalog_items"] = int(len(items))
    if counts.get(FLOAT_IDS):
        report.counts[FLOAT_IDS] = counts[FLOAT_IDS]
    users = pd.DataFrame({schema.USER_ID: schema.object_column(
        np.sort(kept[schema.USER_ID].unique()))})
    stem = os.path.basename(os.fspath(path)).split(".")[0]
    return schema.RecDataset(name=name or stem, interactions=kept, items=items,
                             users=users, report=report, rating_range=rating_range)


def _check_rating_range(rating_range) -> Optional[tuple]:
    if rating_range is None:
        return None
    try:
        low, high = (float(v) for v in rating_range)
    except (TypeError, ValueError):
        raise ValueError(f"rating_range={rating_range!r}: expected (min, max)") from None
    if not (np.isfinite(low) and np.isfinite(high)) or low > high:
        raise ValueError(f"rating_range={rating_range!r}: expected finite min <= max")
    return (low, high)


def _infer_rating_range(ratings: np.ndarray, path, notes: List[str]) -> tuple:
    """[min, max] of the non-negative ratings.

    Rating scales are non-negative (MovieLens 0.5-5, 1-5, stars, counts), so a negative value is
    far more often a sentinel or an error than the bottom of the scale; letting it widen the
    inferred range would also hide it from the out-of-range count.
    """
    valid = ratings[ratings >= 0]
    if not len(valid):
        raise DataValidationError(
            "every rating is negative, so no rating range can be inferred; declare it with "
            "rating_range=(min, max) (in a dataset spec: rating_range=MIN:MAX)",
            file=path, field=schema.RATING)
    low, high = float(valid.min()), float(valid.max())
    negative = len(ratings) - len(valid)
    if negative:
        notes.append(f"rating range inferred as [{low}, {high}] from the non-negative ratings; "
                     f"{negative} negative ratings count as out of range (declare "
                     f"rating_range= if negative ratings are valid)")
    return (low, high)


def load_items_file(path, columns: Optional[Mapping[str, str]] = None,
                    delimiter: Optional[str] = None, encoding: str = "utf-8", *,
                    notes: Optional[List[str]] = None,
                    counts: Optional[Dict[str, int]] = None) -> pd.DataFrame:
    """Reads an items file: `item_id`, `title`, and text/categorical columns folded into `text`.

    Every extra non-numeric column becomes `"<Column>: <value>"` in the text (free-text columns
    such as `description` are added as they are; '|'-separated lists read as comma lists).
    `notes` and `counts`, when given, receive what `parse_ids` reports (float ids converted).
    """
    frame = _read_frame(path, delimiter, encoding)
    frame = _rename(frame, columns, [schema.ITEM_ID, schema.TITLE])
    require_columns(frame, [schema.ITEM_ID, schema.TITLE])
    ids = parse_ids(frame, schema.ITEM_ID, notes, counts)
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
