"""Reading delimited files and turning raw columns into canonical ones, with errors that point.

Every loader goes through these helpers so that bad input fails the same way: a
`DataValidationError` naming the file, the row (1-based data row) and physical line, and the
field. Rows are never dropped silently: duplicates and out-of-range ratings are kept and
counted in the `LoadReport` built by `build_report`.
"""
from __future__ import annotations

import csv
import io
import os
import re
from typing import Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from recommenders_tf.data import schema

# Tried in this order when sniffing; '::' first so MovieLens 1M headers are not read as ':'.
DELIMITER_CANDIDATES = ("::", "\t", ",", ";", "|")
_DELIMITER_NAMES = {"\t": "tab ('\\t')", ",": "comma (',')", ";": "semicolon (';')",
                    "|": "pipe ('|')", "::": "double colon ('::')"}
# A one-character stand-in for '::' so pandas can use its fast C parser on MovieLens 1M files.
_UNIT_SEPARATOR = "\x1f"


class DataValidationError(ValueError):
    """Input data that cannot be loaded, with its location.

    Args:
      message: what is wrong and, where possible, how to fix it.
      file: the offending file.
      row: 1-based data row (the header, if any, is not counted).
      line: 1-based physical line in the file.
      field: the column concerned.
    """

    def __init__(self, message: str, *, file=None, row: Optional[int] = None,
                 line: Optional[int] = None, field: Optional[str] = None):
        self.file = str(file) if file is not None else None
        self.row = row
        self.line = line
        self.field = field
        self.detail = message
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def describe_delimiter(delimiter: str) -> str:
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def read_text(path, encoding: str = "utf-8") -> str:
    """Reads a whole text file, turning a decoding failure into a located error."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataValidationError("file does not exist", file=path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataValidationError(
            f"cannot decode byte {raw[err.start:err.start + 1]!r} at byte offset {err.start} as "
            f"{encoding} ({err.reason}); the file is in another encoding — pass e.g. "
            f"encoding='latin-1'", file=path, line=line) from err


def sniff_delimiter(header_line: str) -> Optional[str]:
    """The candidate delimiter that splits `header_line` into the most fields, or None."""
    best, best_fields = None, 1
    for candidate in DELIMITER_CANDIDATES:
        fields = len(header_line.split(candidate))
        if fields > best_fields:
            best, best_fields = candidate, fields
    return best


def read_delimited(path, *, delimiter: Optional[str] = None, header: bool = True,
                   names: Optional[Sequence[str]] = None, encoding: str = "utf-8",
                   quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    """Reads a delimited text file into a frame of strings.

    Args:
      path: the file.
      delimiter: field separator; sniffed from the first line when None.
      header: whether the first line names the columns.
      names: column names for header-less files.
      encoding: text encoding.
      quoting: csv quoting mode (MovieLens raw files are not quoted: use csv.QUOTE_NONE).

    Returns:
      A frame of `str` cells with blank lines removed. `frame.attrs` holds `file`, `delimiter`,
      `header_line` and `lines`, the 1-based physical line of every kept row.
    """
    text = read_text(path, encoding)
    if not text.strip():
        raise DataValidationError("file is empty", file=path)
    first_line = text.split("\n", 1)[0].rstrip("\r")
    if delimiter is None:
        delimiter = sniff_delimiter(first_line) or ","
    sep = delimiter
    if len(delimiter) > 1:
        text = text.replace(delimiter, _UNIT_SEPARATOR)
        sep = _UNIT_SEPARATOR
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, header=0 if header else None,
                            names=list(names) if names is not None else None, dtype=str,
                            keep_default_na=False, na_filter=False, skip_blank_lines=False,
                            quoting=quoting, engine="c")
    except pd.errors.ParserError as err:
        match = re.search(r"line (\d+)", str(err))
        line = int(match.group(1)) if match else None
        raise DataValidationError(
            f"cannot split into fields with delimiter {describe_delimiter(delimiter)}: {err}",
            file=path, line=line, row=(line - 1 if header else line) if line else None) from err
    except pd.errors.EmptyDataError as err:
        raise DataValidationError("file is empty", file=path) from err
    frame.columns = [str(c).strip() for c in frame.columns]
    offset = 2 if header else 1
    lines = np.arange(len(frame), dtype=np.int64) + offset
    blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(0, bool)
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        lines = lines[~blank]
    if len(frame) == 0:
        raise DataValidationError("file has a header but no data rows" if header else
                                  "file has no data rows", file=path)
    frame.attrs.update(file=os.fspath(path), delimiter=delimiter, header_line=first_line,
                       lines=LineNumbers(lines), header=header)
    return frame


class LineNumbers:
    """The physical line of each row, kept in `DataFrame.attrs`.

    pandas compares attrs with `==` when combining frames, which an ndarray cannot answer;
    this wrapper compares by identity and indexes like the array.
    """

    def __init__(self, lines: np.ndarray):
        self.array = np.asarray(lines, dtype=np.int64)

    def __getitem__(self, position):
        return self.array[position]

    def __len__(self) -> int:
        return len(self.array)

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__


def row_location(frame: pd.DataFrame, position: int) -> dict:
    """Keyword arguments locating data row `position` (0-based) of a frame from `read_delimited`."""
    lines = frame.attrs.get("lines")
    line = int(lines[position]) if lines is not None else None
    if frame.attrs.get("header", True) is False and line is not None:
        row = line
    else:
        row = (line - 1) if line is not None else position + 1
    return {"file": frame.attrs.get("file"), "row": row, "line": line}


def require_columns(frame: pd.DataFrame, required: Iterable[str], *, mapping_hint: bool = True):
    """Fails naming the first missing column, spotting a wrong delimiter on the way."""
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    path = frame.attrs.get("file")
    delimiter = frame.attrs.get("delimiter")
    header_line = frame.attrs.get("header_line", "")
    if delimiter is not None and len(frame.columns) == 1:
        others = [d for d in DELIMITER_CANDIDATES if d != delimiter and d in header_line]
        suggestion = (f"; the header contains {describe_delimiter(others[0])} — pass "
                      f"delimiter={others[0]!r}") if others else ""
        if not others and " " in header_line.strip():
            suggestion = ("; the header contains spaces — pass delimiter=' ' if they separate "
                          "fields")
        raise DataValidationError(
            f"the header {header_line[:120]!r} parsed as a single column with delimiter "
            f"{describe_delimiter(delimiter)}, so column '{missing[0]}' is missing"
            f"{suggestion}", file=path, line=1, field=missing[0])
    hint = (" ; rename columns with columns={'<name in file>': '%s'}" % missing[0]
            if mapping_hint else "")
    raise DataValidationError(
        f"missing column '{missing[0]}' (found columns {list(frame.columns)}){hint}",
        file=path, line=1 if frame.attrs.get("header", True) else None, field=missing[0])


def parse_ids(frame: pd.DataFrame, column: str) -> pd.Series:
    """Stripped string ids as an `object` column; an empty id is an error naming its row."""
    values = frame[column]
    if values.isna().any():
        position = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataValidationError("missing id", field=column, **row_location(frame, position))
    ids = values.astype(str).str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        position = int(np.flatnonzero(empty)[0])
        raise DataValidationError(
            f"empty id ({int(empty.sum())} rows have an empty '{column}'; the first is here)",
            field=column, **row_location(frame, position))
    return schema.object_column(ids.reset_index(drop=True))


def _fast_numbers(raw: pd.Series) -> pd.Series:
    """float64 values, NaN where unparsable; a direct cast first because it is ~5x faster."""
    try:
        return raw.astype("float64")
    except (ValueError, TypeError):
        return pd.to_numeric(raw, errors="coerce").astype("float64")


def parse_ratings(frame: pd.DataFrame, column: str) -> pd.Series:
    """Ratings as float32; a non-numeric value is an error naming its row."""
    raw = frame[column]
    numbers = _fast_numbers(raw)
    bad = numbers.isna().to_numpy() | ~np.isfinite(numbers.to_numpy(dtype="float64"))
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        value = raw.iloc[position]
        reason = ("empty value (the row may have fewer fields than the header)"
                  if str(value).strip() == "" else f"non-numeric rating {str(value)[:40]!r}")
        raise DataValidationError(reason, field=column, **row_location(frame, position))
    return pd.Series(numbers.to_numpy(dtype="float32"), dtype="float32")


def parse_timestamps(frame: pd.DataFrame, column: str) -> pd.Series:
    """Epoch seconds as int64, from integer epoch seconds or ISO-8601 date/time strings.

    Naive date-times are taken as UTC. A value that is neither is an error naming its row.
    """
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        stamps = pd.to_datetime(raw, utc=True)
        seconds = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        if seconds.isna().any():
            position = int(np.flatnonzero(seconds.isna().to_numpy())[0])
            raise DataValidationError("missing timestamp", field=column,
                                      **row_location(frame, position))
        return pd.Series(seconds.to_numpy(dtype="int64"), dtype="int64")
    numbers = _fast_numbers(raw).to_numpy(dtype="float64")
    seconds = np.floor(numbers)
    textual = np.isnan(numbers)
    if textual.any():
        stamps = pd.to_datetime(raw[textual].astype(str).str.strip(), format="ISO8601",
                                utc=True, errors="coerce")
        parsed = ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))
        seconds[textual] = parsed.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isnan(seconds)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"unparsable timestamp {str(raw.iloc[position])[:40]!r}: expected integer epoch "
            f"seconds or an ISO-8601 date/time such as '2020-01-31T12:00:00'",
            field=column, **row_location(frame, position))
    return pd.Series(seconds.astype("int64"), dtype="int64")


def build_report(source: str, interactions: pd.DataFrame, rating_range: Optional[tuple],
                 rows_read: Optional[int] = None, lines: Optional[np.ndarray] = None,
                 notes: Optional[List[str]] = None) -> schema.LoadReport:
    """Counts duplicates and out-of-range ratings (both kept) and summarises the load."""
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    duplicated = interactions.duplicated(subset=keys, keep="first").to_numpy()
    report = schema.LoadReport(source=source,
                               rows_read=int(rows_read if rows_read is not None
                                             else len(interactions)),
                               rating_range=tuple(rating_range) if rating_range else None)
    report.notes.extend(notes or [])
    report.duplicates = int(duplicated.sum())
    if report.duplicates:
        where = _positions_text(np.flatnonzero(duplicated), lines)
        report.notes.append(f"{report.duplicates} duplicate (user, item, timestamp) rows kept, "
                            f"e.g. {where}")
    if rating_range is not None:
        low, high = rating_range
        ratings = interactions[schema.RATING].to_numpy()
        outside = (ratings < low) | (ratings > high)
        report.out_of_range = int(outside.sum())
        if report.out_of_range:
            where = _positions_text(np.flatnonzero(outside), lines)
            report.notes.append(f"{report.out_of_range} ratings outside [{low}, {high}] kept, "
                                f"e.g. {where}")
    report.counts.update(
        interactions=int(len(interactions)),
        users=int(interactions[schema.USER_ID].nunique()),
        items=int(interactions[schema.ITEM_ID].nunique()))
    return report


def _positions_text(positions: np.ndarray, lines: Optional[np.ndarray], limit: int = 5) -> str:
    shown = positions[:limit]
    if lines is not None:
        return "lines " + ", ".join(str(int(lines[p])) for p in shown)
    return "rows " + ", ".join(str(int(p) + 1) for p in shown)
