"""Raw MovieLens directories: the 100K, 1M and latest / latest-small layouts, auto-detected.

- ml-100k: `u.data` (tab-separated user, item, rating, timestamp), `u.item` ('|', latin-1, 19
  genre flags), `u.user` ('|': age, gender, occupation, zip), `u.genre`, and the canonical
  splits `u1.base`/`u1.test` … `u5`, `ua`, `ub`, kept as `predefined_splits`.
- ml-1m (and ml-10m): `ratings.dat`, `movies.dat`, `users.dat` ('::', latin-1).
- ml-latest / ml-latest-small: `ratings.csv`, `movies.csv` and optional `tags.csv` (UTF-8).

Item text is what a language model should read about a movie: title, genres and year. User tags
(`tags.csv`) are side information produced by interactions, so they are kept apart as the
dataset's `tags` frame; `data.side_info.items_for_train` puts into the text only the tags a
split's train part allows (BENCHMARK.md), and the loaded `items` carry none.

Some public copies hold ratings of movies their movies file does not list. That is an error
by default; `on_unknown_items="drop"` drops those rows and counts them, with examples, in the
LoadReport.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.validation import (DataValidationError, build_report,
                                             check_unknown_items_policy, parse_ids, parse_ratings,
                                             parse_timestamps, read_delimited, record_dropped,
                                             require_columns, unknown_item_rows)

ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
# MovieLens 1M encodes occupations as integers; names from its README.
ML1M_OCCUPATIONS = ("other", "academic/educator", "artist", "clerical/admin",
                    "college/grad student", "customer service", "doctor/health care",
                    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
                    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
                    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")
_RATING_COLUMNS = [schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP]
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def detect_layout(path) -> str:
    """Returns "ml-100k", "ml-1m" or "ml-latest" from the files present in `path`."""
    path = Path(path)
    if not path.is_dir():
        raise DataValidationError("not a directory (expected a MovieLens folder)", file=path)
    if (path / "u.data").exists():
        return "ml-100k"
    if (path / "ratings.dat").exists():
        return "ml-1m"
    if (path / "ratings.csv").exists():
        return "ml-latest"
    raise DataValidationError(
        "no MovieLens ratings file found: expected u.data (ml-100k), ratings.dat (ml-1m) or "
        f"ratings.csv (ml-latest); found {sorted(p.name for p in path.iterdir())[:20]}",
        file=path)


def load_movielens_dir(path, name: Optional[str] = None,
                       on_unknown_items: str = "error") -> schema.RecDataset:
    """Loads a raw MovieLens directory in the 100K, 1M or latest layout.

    Args:
      path: the directory (e.g. `../shared/data/ml-100k`).
      name: dataset name; defaults to the directory name when it starts with "ml-", else the
        detected layout.
      on_unknown_items: ratings of a movie missing from the movies file: "error" (default) or
        "drop" (dropped, also from the predefined splits, and counted with examples in the
        report).

    Returns:
      A RecDataset with items (item_id, title, text, genres, year), users (user_id and, for
      100K/1M, age, gender, occupation, zip as strings), `rating_range`, for 100K the
      predefined splits and, for latest with a `tags.csv`, `tags` (user_id, item_id, tag,
      timestamp).
    """
    check_unknown_items_policy(on_unknown_items)
    path = Path(path)
    layout = detect_layout(path)
    if name is None:
        name = path.resolve().name if path.resolve().name.startswith("ml-") else layout
    loader = {"ml-100k": _load_100k, "ml-1m": _load_1m, "ml-latest": _load_latest}[layout]
    dataset = loader(path, on_unknown_items)
    dataset.name = name
    return dataset


def _ratings(frame: pd.DataFrame) -> pd.DataFrame:
    return schema.canonical_interactions(pd.DataFrame({
        schema.USER_ID: parse_ids(frame, schema.USER_ID),
        schema.ITEM_ID: parse_ids(frame, schema.ITEM_ID),
        schema.RATING: parse_ratings(frame, schema.RATING),
        schema.TIMESTAMP: parse_timestamps(frame, schema.TIMESTAMP),
    }))


def _read_raw(path: Path, delimiter: str, names: List[str], encoding: str) -> pd.DataFrame:
    frame = read_delimited(path, delimiter=delimiter, header=False, names=names,
                           encoding=encoding, quoting=csv.QUOTE_NONE)
    if len(frame.columns) != len(names):
        raise DataValidationError(f"expected {len(names)} fields separated by {delimiter!r}",
                                  file=path, line=1)
    return frame


def movie_text(titles: pd.Series, genres: pd.Series, years: pd.Series,
               tags: Optional[pd.Series] = None) -> pd.Series:
    """"Title. Genres: A, B. Year: 1995. Tags: x, y." — empty parts left out."""
    out = []
    tag_values = tags if tags is not None else pd.Series([""] * len(titles))
    for title, genre, year, tag in zip(titles, genres, years, tag_values):
        parts = [title]
        if genre:
            parts.append("Genres: " + genre.replace("|", ", "))
        if year:
            parts.append(f"Year: {year}")
        if tag:
            parts.append("Tags: " + tag.replace("|", ", "))
        out.append(". ".join(parts) + ".")
    return pd.Series(out, dtype=object)


def _years_from_titles(titles: pd.Series) -> pd.Series:
    return titles.str.extract(_YEAR, expand=False).fillna("").astype(str)


def _items_label(items_file: Path) -> str:
    return f"the movies file ({items_file.name})"


def _finish(name: str, ratings_frame: pd.DataFrame, interactions: pd.DataFrame,
            items: pd.DataFrame, items_file: Path, users: Optional[pd.DataFrame],
            rating_range: tuple, sources: List[Path], notes: List[str],
            on_unknown_items: str) -> schema.RecDataset:
    keep = unknown_item_rows(interactions, items[schema.ITEM_ID], on_unknown_items,
                             ratings_frame, _items_label(items_file))
    lines = ratings_frame.attrs["lines"]
    kept = interactions
    if not keep.all():
        kept = interactions.loc[keep].reset_index(drop=True)
        lines = lines[keep]
    report = build_report(" + ".join(str(s) for s in sources), kept, rating_range,
                          rows_read=len(interactions), lines=lines, notes=notes)
    record_dropped(report, interactions, keep, ratings_frame, _items_label(items_file))
    report.counts["catalog_items"] = int(len(items))
    return schema.RecDataset(name=name, interactions=kept, items=items, users=users,
                             report=report, rating_range=rating_range)


def _load_100k(path: Path, on_unknown_items: str) -> schema.RecDataset:
    ratings_frame = _read_raw(path / "u.data", "\t", _RATING_COLUMNS, "latin-1")
    interactions = _ratings(ratings_frame)
    genre_names = list(ML100K_GENRES)
    if (path / "u.genre").exists():
        genre_frame = _read_raw(path / "u.genre", "|", ["genre", "index"], "latin-1")
        genre_names = list(genre_frame["genre"])
    item_names = [schema.ITEM_ID, schema.TITLE, "release_date", "video_release_date", "url"]
    item_frame = _read_raw(path / "u.item", "|", item_names + genre_names, "latin-1")
    flags = item_frame[genre_names].to_numpy() == "1"
    genres = pd.Series(["|".join(g for g, on in zip(genre_names, row) if on and g != "unknown")
                        for row in flags], dtype=object)
    titles = item_frame[schema.TITLE].str.strip()
    years = item_frame["release_date"].str.extract(r"(\d{4})$", expand=False).fillna("")
    years = years.where(years != "", _years_from_titles(titles))
    items = pd.DataFrame({
        schema.ITEM_ID: parse_ids(item_frame, schema.ITEM_ID),
        schema.TITLE: schema.object_column(titles),
        schema.TEXT: movie_text(titles, genres, years),
        schema.GENRES: genres,
        "year": schema.object_column(years),
    })
    users = None
    if (path / "u.user").exists():
        user_frame = _read_raw(path / "u.user", "|",
                               [schema.USER_ID, "age", "gender", "occupation", "zip"], "latin-1")
        users = _users_frame(user_frame)
    dataset = _finish("ml-100k", ratings_frame, interactions, items, path / "u.item", users,
                      (1.0, 5.0), [path / "u.data"], [], on_unknown_items)
    split_dropped = 0
    for fold in ("u1", "u2", "u3", "u4", "u5", "ua", "ub"):
        base, test = path / f"{fold}.base", path / f"{fold}.test"
        if base.exists() and test.exists():
            parts = []
            for part_file in (base, test):
                part_frame = _read_raw(part_file, "\t", _RATING_COLUMNS, "latin-1")
                part = _ratings(part_frame)
                # The folds are u.data cut in pieces: rows dropped from u.data go from them
                # too, or protocol P2 would train and test on items with no metadata.
                keep = unknown_item_rows(part, items[schema.ITEM_ID], on_unknown_items,
                                         part_frame, _items_label(path / "u.item"))
                if not keep.all():
                    split_dropped += int((~keep).sum())
                    part = part.loc[keep].reset_index(drop=True)
                parts.append(part)
            dataset.predefined_splits[fold] = tuple(parts)
    if dataset.predefined_splits:
        dataset.report.notes.append(
            f"predefined splits: {', '.join(sorted(dataset.predefined_splits))}")
    if split_dropped:
        dataset.report.notes.append(
            f"{split_dropped} rows of the predefined split files dropped: their item is missing "
            f"from {_items_label(path / 'u.item')}")
    return dataset


def _users_frame(frame: pd.DataFrame) -> pd.DataFrame:
    users = pd.DataFrame({schema.USER_ID: parse_ids(frame, schema.USER_ID)})
    for column in ("age", "gender", "occupation", "zip"):
        users[column] = schema.object_column(frame[column].str.strip().reset_index(drop=True))
    return users


def _load_1m(path: Path, on_unknown_items: str) -> schema.RecDataset:
    ratings_frame = _read_raw(path / "ratings.dat", "::", _RATING_COLUMNS, "latin-1")
    interactions = _ratings(ratings_frame)
    movie_frame = _read_raw(path / "movies.dat", "::",
                            [schema.ITEM_ID, schema.TITLE, schema.GENRES], "latin-1")
    items = _movies_items(movie_frame)
    users = None
    if (path / "users.dat").exists():
        user_frame = _read_raw(path / "users.dat", "::",
                               [schema.USER_ID, "gender", "age", "occupation", "zip"],
                               "latin-1")
        codes = pd.to_numeric(user_frame["occupation"], errors="coerce")
        names = [ML1M_OCCUPATIONS[int(c)] if c == c and 0 <= c < len(ML1M_OCCUPATIONS)
                 else str(raw) for c, raw in zip(codes, user_frame["occupation"])]
        user_frame["occupation"] = names
        users = _users_frame(user_frame)
    return _finish("ml-1m", ratings_frame, interactions, items, path / "movies.dat", users,
                   (1.0, 5.0), [path / "ratings.dat"], [], on_unknown_items)


def _movies_items(movie_frame: pd.DataFrame) -> pd.DataFrame:
    ids = parse_ids(movie_frame, schema.ITEM_ID)
    titles = movie_frame[schema.TITLE].astype(str).str.strip().reset_index(drop=True)
    genres = movie_frame[schema.GENRES].astype(str).str.strip().reset_index(drop=True)
    genres = genres.where(genres != "(no genres listed)", "")
    years = _years_from_titles(titles)
    return pd.DataFrame({
        schema.ITEM_ID: ids,
        schema.TITLE: schema.object_column(titles),
        schema.TEXT: movie_text(titles, genres, years),
        schema.GENRES: schema.object_column(genres),
        "year": schema.object_column(years),
    })


def _tag_applications(tag_frame: pd.DataFrame) -> pd.DataFrame:
    """The raw tags as TAG_COLUMNS: stripped, empty tags dropped, case kept as written."""
    tags = pd.DataFrame({
        schema.USER_ID: parse_ids(tag_frame, schema.USER_ID),
        schema.ITEM_ID: parse_ids(tag_frame, schema.ITEM_ID),
        schema.TAG: schema.object_column(
            tag_frame[schema.TAG].fillna("").astype(str).str.strip().reset_index(drop=True)),
        schema.TIMESTAMP: parse_timestamps(tag_frame, schema.TIMESTAMP).reset_index(drop=True),
    })
    return tags[tags[schema.TAG] != ""].reset_index(drop=True)


def _load_latest(path: Path, on_unknown_items: str) -> schema.RecDataset:
    ratings_frame = read_delimited(path / "ratings.csv", delimiter=",")
    ratings_frame = ratings_frame.rename(columns={"userId": schema.USER_ID,
                                                  "movieId": schema.ITEM_ID})
    require_columns(ratings_frame, _RATING_COLUMNS, mapping_hint=False)
    interactions = _ratings(ratings_frame)
    movie_frame = read_delimited(path / "movies.csv", delimiter=",")
    movie_frame = movie_frame.rename(columns={"movieId": schema.ITEM_ID})
    require_columns(movie_frame, [schema.ITEM_ID, schema.TITLE, schema.GENRES],
                    mapping_hint=False)
    tags = None
    notes = []
    if (path / "tags.csv").exists():
        tag_frame = read_delimited(path / "tags.csv", delimiter=",")
        tag_frame = tag_frame.rename(columns={"userId": schema.USER_ID,
                                              "movieId": schema.ITEM_ID})
        # Who tagged and when decide whether a tag is train information, so a tags file
        # without them cannot be used at all.
        require_columns(tag_frame, list(schema.TAG_COLUMNS), mapping_hint=False)
        tags = _tag_applications(tag_frame)
        notes.append(f"tags.csv: {len(tags)} tags on {tags[schema.ITEM_ID].nunique()} items "
                     "kept apart from item text (data.side_info.items_for_train admits those "
                     "a split's train part allows)")
    items = _movies_items(movie_frame)
    dataset = _finish("ml-latest", ratings_frame, interactions, items, path / "movies.csv",
                      None, (0.5, 5.0), [path / "ratings.csv"], notes, on_unknown_items)
    dataset.tags = tags
    # This layout has no users file: its users are the raters that remain.
    dataset.users = pd.DataFrame({schema.USER_ID: schema.object_column(
        np.sort(dataset.interactions[schema.USER_ID].unique()))})
    return dataset
