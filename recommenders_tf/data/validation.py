"""Reading delimited files and turning raw columns into canonical ones, with errors that point.

Every loader goes through these helpers so that bad input fails the same way: a
`DataValidationError` naming the file, the row (1-based data row) and physical line, and the
field. Rows are never dropped silently: duplicates and out-of-range ratings are kept and
counted in the `LoadReport` built by `build_report`; rows whose item is unknown are dropped
only when the caller asks (`on_unknown_items="drop"`), and then counted with examples.
"""
from __future__ import annotations

import codecs
import csv
import io
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from recommenders_tf.data import schema

# Tried in this order when sniffing; '::' first so MovieLens 1M headers are not read as ':'.
DELIMITER_CANDIDATES = ("::", "\t", ",", ";", "|")
_DELIMITER_NAMES = {"\t": "tab ('\\t')", ",": "comma (',')", ";": "semicolon (';')",
                    "|": "pipe ('|')", "::": "double colon ('::')"}
# A one-character stand-in for '::' so pandas can use its fast C parser on MovieLens 1M files.
_UNIT_SEPARATOR = "\x1f"
# Characters an id may not contain: ids are written one per line to vocabulary files, so a
# line break (including the Unicode ones str.splitlines honours) or any other control
# character would corrupt them or be invisible in every table that shows the id.
_ID_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# float64 holds every integer exactly only up to 2**53; beyond that a float id may already be
# a different integer than the one that was stored.
_EXACT_FLOAT_INT = 2.0 ** 53
_INT64_LIMIT = 2.0 ** 63
# LoadReport.counts key: id values read from a floating-point column as integers.
FLOAT_IDS = "float_ids_as_integers"
UNKNOWN_ITEM_POLICIES = ("error", "drop")
MAX_DROPPED_EXAMPLES = 5


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


def check_is_file(path) -> None:
    """Fails with a located error for a missing path or a directory where a file belongs."""
    if not os.path.exists(path):
        raise DataValidationError("file does not exist", file=path)
    if os.path.isdir(path):
        raise DataValidationError(
            "is a directory, expected a file (a MovieLens folder loads with "
            "load_dataset('dir:<path>'))", file=path)


def read_text(path, encoding: str = "utf-8") -> str:
    """Reads a whole text file, turning a decoding failure into a located error."""
    path = os.fspath(path)
    check_is_file(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataValidationError(f"unknown encoding {encoding!r} (e.g. 'utf-8', 'latin-1', "
                                  f"'cp1252')", file=path) from None
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataValidationError(
            f"cannot decode byte {raw[err.start:err.start + 1]!r} at byte offset {err.start} as "
            f"{encoding} ({err.reason}); the file is in another encoding — pass e.g. "
            f"encoding='latin-1' (in a dataset spec: file:<path>,encoding=latin-1)",
            file=path, line=line) from err


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
      `delimiter_passed`, `header_line`, `lines` (the 1-based physical line of every kept row)
      and `rows` (its 1-based data row).
    """
    text = read_text(path, encoding)
    if not text.strip():
        raise DataValidationError("file is empty", file=path)
    first_line = text.split("\n", 1)[0].rstrip("\r")
    delimiter_passed = delimiter is not None
    if delimiter is None:
        delimiter = sniff_delimiter(first_line) or ","
    sep = delimiter
    if len(delimiter) > 1:
        if _UNIT_SEPARATOR in text:
            line = text[:text.index(_UNIT_SEPARATOR)].count("\n") + 1
            raise DataValidationError(
                "contains the control character '\\x1f', which is not valid in a file split "
                f"by {describe_delimiter(delimiter)}", file=path, line=line)
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
    rows = np.arange(1, len(frame) + 1, dtype=np.int64)
    lines = rows + (1 if header else 0)
    if quoting != csv.QUOTE_NONE and '"' in text and len(frame):
        # A quoted field may span lines, which moves every later row further down the file.
        spans = sum(frame.iloc[:, j].str.count("\n").to_numpy(dtype=np.int64)
                    for j in range(len(frame.columns)))
        lines = lines + np.concatenate([[0], np.cumsum(spans)[:-1]])
    blank = (frame == "").all(axis=1).to_numpy() if len(frame.columns) else np.zeros(0, bool)
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        lines, rows = lines[~blank], rows[~blank]
    if len(frame) == 0:
        raise DataValidationError("file has a header but no data rows" if header else
                                  "file has no data rows", file=path)
    frame.attrs.update(file=os.fspath(path), delimiter=delimiter, header_line=first_line,
                       lines=LineNumbers(lines), rows=LineNumbers(rows), header=header,
                       delimiter_passed=delimiter_passed)
    _check_row_delimiters(frame)
    return frame


def _check_row_delimiters(frame: pd.DataFrame) -> None:
    """Fails on a row that is one field under the file's delimiter but splits into exactly the
    header's fields under another: the header and the rows use different delimiters."""
    width = len(frame.columns)
    if width < 3:  # with two columns, one stray '|' or ';' in an id would look the same
        return
    short = np.flatnonzero((frame.iloc[:, -1] == "").to_numpy())
    if not len(short):
        return
    rows = frame.iloc[short]
    rest_empty = (rows.iloc[:, 1:] == "").all(axis=1).to_numpy()
    delimiter = frame.attrs["delimiter"]
    for candidate in DELIMITER_CANDIDATES:
        if candidate == delimiter or candidate in delimiter:
            continue
        fits = rest_empty & (rows.iloc[:, 0].str.count(re.escape(candidate)).to_numpy()
                             == width - 1)
        if fits.any():
            position = int(short[np.flatnonzero(fits)[0]])
            raise DataValidationError(
                f"this row is a single field when split by {describe_delimiter(delimiter)} "
                f"but splits into the header's {width} fields by "
                f"{describe_delimiter(candidate)}: the delimiter is the likely cause"
                f"{_delimiter_context(frame)}; use one delimiter for the header and the rows",
                field=str(frame.columns[0]), **row_location(frame, position))


def _delimiter_context(frame: pd.DataFrame) -> str:
    """'(rows were split with X, as passed; the header line looks like it uses Y)'."""
    delimiter = frame.attrs.get("delimiter")
    if delimiter is None:
        return ""
    first = "header line" if frame.attrs.get("header", True) else "first line"
    how = "as passed" if frame.attrs.get("delimiter_passed") else f"sniffed from the {first}"
    looks = sniff_delimiter(frame.attrs.get("header_line", ""))
    looks_text = (f"the {first} looks like it uses {describe_delimiter(looks)}" if looks
                  else f"the {first} has none of the usual delimiters")
    return f" (rows were split with {describe_delimiter(delimiter)}, {how}; {looks_text})"


def _short_row_hint(frame: pd.DataFrame) -> str:
    """For an empty cell: the row may be short because the delimiter is wrong."""
    if frame.attrs.get("delimiter") is None:
        return ""
    return ("; if the row has fewer fields than the header, the delimiter is the likely cause"
            + _delimiter_context(frame))


class LineNumbers:
    """A number per row (its physical line, or its data row), kept in `DataFrame.attrs`.

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
    rows = frame.attrs.get("rows")
    line = int(lines[position]) if lines is not None else None
    row = int(rows[position]) if rows is not None else position + 1
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
            f"{describe_delimiter(delimiter)}, so column '{missing[0]}' is missing; the "
            f"delimiter is the likely cause{suggestion}", file=path, line=1, field=missing[0])
    hint = (" ; rename columns with columns={'<name in file>': '%s'}" % missing[0]
            if mapping_hint else "")
    raise DataValidationError(
        f"missing column '{missing[0]}' (found columns {list(frame.columns)}){hint}",
        file=path, line=1 if frame.attrs.get("header", True) else None, field=missing[0])


def parse_ids(frame: pd.DataFrame, column: str, notes: Optional[List[str]] = None,
              counts: Optional[Dict[str, int]] = None) -> pd.Series:
    """Stripped string ids as an `object` column.

    A floating-point id column (pandas makes an integer column float64 once it has held a NaN,
    and Parquet keeps that type) is read as integers, so 25.0 is the id "25" that a text file or
    an integer column spells; a fractional float id is an error. Empty ids and ids with a
    control character (a line break would corrupt the one-per-line vocabulary files) are errors
    naming their row.

    Args:
      frame: a frame from `read_delimited` or a Parquet file.
      column: the id column.
      notes: when given, receives a note if float ids were converted.
      counts: when given, `counts[FLOAT_IDS]` is increased by the number of converted values.
    """
    values = frame[column]
    if values.isna().any():
        position = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataValidationError("missing id", field=column, **row_location(frame, position))
    if pd.api.types.is_float_dtype(values):
        ids = _float_ids(frame, column)
        if notes is not None:
            notes.append(f"'{column}' of {frame.attrs.get('file')} is stored as floating point: "
                         f"{len(ids)} values such as {float(values.iloc[0])!r} read as integer "
                         f"ids ({ids.iloc[0]!r})")
        if counts is not None:
            counts[FLOAT_IDS] = counts.get(FLOAT_IDS, 0) + len(ids)
    else:
        ids = values.astype(str).str.strip()
    empty = (ids == "").to_numpy()
    if empty.any():
        position = int(np.flatnonzero(empty)[0])
        raise DataValidationError(
            f"empty id ({int(empty.sum())} rows have an empty '{column}'; the first is here)"
            f"{_short_row_hint(frame)}", field=column, **row_location(frame, position))
    ids = schema.object_column(ids.reset_index(drop=True))
    _check_id_characters(frame, column, ids)
    return ids


def _float_ids(frame: pd.DataFrame, column: str) -> pd.Series:
    numbers = frame[column].to_numpy(dtype="float64")
    whole = np.isfinite(numbers) & (np.floor(numbers) == numbers)
    exact = np.abs(numbers) <= _EXACT_FLOAT_INT
    for bad, reason in ((~whole, "is not a whole number"),
                        (~exact, "is beyond 2**53, where a float cannot hold every integer, "
                                 "so it may not be the id that was stored")):
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"floating-point id {float(numbers[position])!r} {reason}; store ids as "
                f"integers or strings", field=column, **row_location(frame, position))
    return pd.Series(numbers.astype(np.int64).astype(str), dtype=object)


def _check_id_characters(frame: pd.DataFrame, column: str, ids: pd.Series) -> None:
    # Checking the distinct ids keeps this cheap on 25M-row files with ~100k ids.
    distinct = pd.unique(ids)
    bad = [v for v in distinct if _ID_FORBIDDEN.search(v)]
    if not bad:
        return
    position = int(np.flatnonzero(ids.isin(bad).to_numpy())[0])
    value = ids.iloc[position]
    char = _ID_FORBIDDEN.search(value).group(0)
    raise DataValidationError(
        f"id {value[:60]!r} contains the control character {char!r}; ids may not contain line "
        f"breaks, tabs or other control characters (they are written one per line to "
        f"vocabulary files)", field=column, **row_location(frame, position))


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
        reason = ("empty value" + _short_row_hint(frame)
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
    if pd.api.types.is_integer_dtype(raw) and not raw.isna().any():
        # Exact: through float64, epoch nanoseconds or microseconds would lose digits.
        fits = (not pd.api.types.is_unsigned_integer_dtype(raw)
                or not (raw.to_numpy(dtype="uint64") > np.iinfo(np.int64).max).any())
        if fits:
            return pd.Series(raw.to_numpy(dtype="int64"), dtype="int64")
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
        value = str(raw.iloc[position])
        hint = _short_row_hint(frame) if value.strip() == "" else ""
        raise DataValidationError(
            f"unparsable timestamp {value[:40]!r}: expected integer epoch seconds or an "
            f"ISO-8601 date/time such as '2020-01-31T12:00:00'{hint}",
            field=column, **row_location(frame, position))
    # Casting a float beyond int64 to int64 gives INT64_MIN with only a numpy warning, which
    # would sort the row first in time and put it in train.
    outside = (seconds >= _INT64_LIMIT) | (seconds < -_INT64_LIMIT)
    if outside.any():
        position = int(np.flatnonzero(outside)[0])
        raise DataValidationError(
            f"timestamp {str(raw.iloc[position])[:40]!r} is out of range: epoch seconds must "
            f"fit in a signed 64-bit integer (|t| < 9.2e18)",
            field=column, **row_location(frame, position))
    return pd.Series(seconds.astype("int64"), dtype="int64")


def check_unknown_items_policy(policy: str) -> str:
    if policy not in UNKNOWN_ITEM_POLICIES:
        raise ValueError(f"on_unknown_items={policy!r}: expected one of "
                         f"{', '.join(repr(p) for p in UNKNOWN_ITEM_POLICIES)}")
    return policy


def unknown_item_rows(interactions: pd.DataFrame, known_ids, policy: str, frame: pd.DataFrame,
                      items_label: str) -> np.ndarray:
    """A mask of the interactions whose item is in `known_ids`; fails on others unless `policy`
    is "drop".

    Args:
      interactions: canonical interactions, row for row the rows of `frame`.
      known_ids: the item ids of the items file.
      policy: "error" (raise naming the first such row) or "drop" (only mask them out).
      frame: the parsed interactions file, to locate rows.
      items_label: how to name the items file in messages, e.g. "the movies file (u.item)".
    """
    check_unknown_items_policy(policy)
    item_ids = interactions[schema.ITEM_ID]
    known = item_ids.isin(pd.Index(known_ids)).to_numpy()
    if known.all():
        return known
    if policy == "drop":
        if not known.any():
            raise DataValidationError(
                f"on_unknown_items='drop' would drop every row: no rated item is in "
                f"{items_label}; is it the items file of this data?",
                file=frame.attrs.get("file"), field=schema.ITEM_ID)
        return known
    unknown = sorted(item_ids[~known].unique())
    position = int(np.flatnonzero(~known)[0])
    raise DataValidationError(
        f"{len(unknown)} rated item ids are missing from {items_label}, e.g. {unknown[:5]} "
        f"(the first is here); to drop such rows, pass on_unknown_items='drop' (in a dataset "
        f"spec: add ',on_unknown_items=drop')", field=schema.ITEM_ID,
        **row_location(frame, position))


def record_dropped(report: schema.LoadReport, interactions: pd.DataFrame, keep: np.ndarray,
                   frame: pd.DataFrame, items_label: str) -> None:
    """Counts in `report` the rows `keep` leaves out, with the first few as examples.

    Args:
      report: the load's report.
      interactions: the interactions before dropping, row for row the rows of `frame`.
      keep: the mask from `unknown_item_rows`.
      frame: the parsed interactions file, to locate rows.
      items_label: how to name the items file, as for `unknown_item_rows`.
    """
    dropped = np.flatnonzero(~keep)
    if not len(dropped):
        return
    report.dropped += int(len(dropped))
    reason = f"item missing from {items_label}"
    for position in dropped[:max(0, MAX_DROPPED_EXAMPLES - len(report.dropped_examples))]:
        where = row_location(frame, int(position))
        report.dropped_examples.append({
            "row": where["row"], "line": where["line"],
            schema.USER_ID: interactions[schema.USER_ID].iloc[position],
            schema.ITEM_ID: interactions[schema.ITEM_ID].iloc[position], "reason": reason})
    distinct = interactions[schema.ITEM_ID].iloc[dropped].nunique()
    where = _positions_text(dropped, frame.attrs.get("lines"))
    report.notes.append(f"{len(dropped)} rows dropped (on_unknown_items='drop'): their item is "
                        f"missing from {items_label} ({distinct} distinct item ids), e.g. {where}")


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
