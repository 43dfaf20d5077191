"""The canonical schema every loader produces and every stage consumes.

Interactions, items and users are pandas DataFrames with fixed column names and dtypes, so a
split, a vocabulary or a benchmark never has to know which file format the data came from.
Ids are strings everywhere (raw ids go into the towers' StringLookup layers unchanged).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"  # explicit rating, or an implicit weight (1.0) when the data has none
TIMESTAMP = "timestamp"  # int64 seconds since the epoch

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
INTERACTION_DTYPES = {USER_ID: "object", ITEM_ID: "object", RATING: "float32", TIMESTAMP: "int64"}

TAG = "tag"
TAG_COLUMNS = (USER_ID, ITEM_ID, TAG, TIMESTAMP)

TITLE = "title"
TEXT = "text"  # free text for the language model: title + genres + tags/description
GENRES = "genres"  # '|'-separated labels, "" when unknown
ITEM_REQUIRED = (ITEM_ID, TITLE, TEXT)


@dataclasses.dataclass
class LoadReport:
    """What a loader saw, kept, and flagged; nothing is dropped without being counted here.

    Args:
      source: the file(s) or TFDS name read.
      rows_read: data rows parsed from the interactions source.
      duplicates: (user, item, timestamp) rows seen more than once; kept, counted.
      out_of_range: ratings outside `rating_range`; kept, counted.
      dropped: rows removed on request (`on_unknown_items="drop"`); 0 unless asked for.
      dropped_examples: the first few dropped rows (row, line, user_id, item_id, reason).
      notes: human-readable remarks (e.g. which rows were duplicates, first few only).
    """

    source: str
    rows_read: int = 0
    duplicates: int = 0
    out_of_range: int = 0
    dropped: int = 0
    dropped_examples: List[dict] = dataclasses.field(default_factory=list)
    rating_range: Optional[tuple] = None
    counts: Dict[str, int] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for run summaries: what was read, kept, dropped and flagged."""
        kept = self.counts.get("interactions", self.rows_read - self.dropped)
        text = (f"{self.rows_read} rows read, {kept} kept, {self.duplicates} duplicates and "
                f"{self.out_of_range} out-of-range ratings (kept)")
        if self.dropped:
            text += f", {self.dropped} dropped ({dropped_text(self.dropped_examples)})"
        return text


def dropped_text(examples: List[dict]) -> str:
    """"<reason>, e.g. item '999' (row 4, line 5); ..." for the first dropped rows."""
    if not examples:
        return "no examples kept"
    shown = []
    for example in examples:
        line = example.get("line")
        where = f"row {example['row']}" + (f", line {line}" if line is not None else "")
        shown.append(f"item {example[ITEM_ID]!r} ({where})")
    return f"{examples[0]['reason']}, e.g. " + "; ".join(shown)


@dataclasses.dataclass
class RecDataset:
    """A loaded dataset in the canonical schema.

    Args:
      name: short name used in artifact paths and benchmark tables ("ml-100k", "synthetic").
      interactions: DataFrame with INTERACTION_COLUMNS.
      items: DataFrame with at least ITEM_REQUIRED (may list items with no interactions).
      users: DataFrame with USER_ID and any user feature columns, or None.
      report: the LoadReport of the load.
      predefined_splits: optional named (train, test) interaction frames shipped with the data
        (MovieLens 100K's u1.base/u1.test), used by protocol P2.
      tags: side information produced by interactions (MovieLens `tags.csv`), TAG_COLUMNS, or
        None. Never part of `items`: `data.side_info.items_for_train` admits the tags a split's
        train part allows (BENCHMARK.md).
    """

    name: str
    interactions: pd.DataFrame
    items: Optional[pd.DataFrame] = None
    users: Optional[pd.DataFrame] = None
    report: Optional[LoadReport] = None
    predefined_splits: Dict[str, tuple] = dataclasses.field(default_factory=dict)
    rating_range: Optional[tuple] = None  # (min, max) for explicit ratings, None if implicit
    tags: Optional[pd.DataFrame] = None
    # Side information that is not a model input: the synthetic generator's ground truth
    # (user topic preferences, item topic matrix, cold item ids) lives here so tests can check
    # learnability without the truth leaking into feature columns.
    extras: Dict[str, object] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        n = len(self.interactions)
        users = self.interactions[USER_ID].nunique()
        items = self.interactions[ITEM_ID].nunique()
        catalog = len(self.items) if self.items is not None else items
        text = (f"{self.name}: {n} interactions, {users} users, {items} items with interactions "
                f"({catalog} in catalog), rating range {self.rating_range}")
        if self.report is not None and self.report.dropped:
            # Pipelines print this line in their run summaries, so a dropped row is never
            # only in load_report.json.
            text += (f"; {self.report.dropped} rows dropped on load "
                     f"({dropped_text(self.report.dropped_examples)})")
        return text


def canonical_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Returns `frame`'s interaction columns in canonical order and dtypes (ids as object str).

    pandas >= 3 infers a dedicated string dtype for text columns; the schema keeps ids as plain
    Python-str `object` columns so every stage sees the same thing whatever built the frame.
    """
    return pd.DataFrame({
        USER_ID: pd.Series(frame[USER_ID].astype(str).to_numpy(dtype=object), dtype=object),
        ITEM_ID: pd.Series(frame[ITEM_ID].astype(str).to_numpy(dtype=object), dtype=object),
        RATING: pd.Series(frame[RATING].to_numpy(dtype="float32"), dtype="float32"),
        TIMESTAMP: pd.Series(frame[TIMESTAMP].to_numpy(dtype="int64"), dtype="int64"),
    })


def object_column(values) -> pd.Series:
    """A plain `object` string column (pandas >= 3 would otherwise infer its `str` dtype)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return pd.Series(series.astype(str).to_numpy(dtype=object), index=series.index, dtype=object)


def check_frame(df: pd.DataFrame, name: str, columns: Sequence[str]) -> pd.DataFrame:
    """Returns `df` after checking it is a DataFrame holding `columns`, none of them null.

    Every stage that takes frames from a caller checks them with this, so a wrong argument
    fails at the boundary with its name, the column and the first bad row.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; has {list(df.columns)}")
    for c in columns:
        null = df[c].isna().to_numpy()
        if null.any():
            row = int(np.flatnonzero(null)[0])
            raise ValueError(f"{name} row {row}: field '{c}' is missing")
    return df
