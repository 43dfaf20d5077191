"""`load_dataset(spec)`: one string names any dataset the project can load.

Specs:
  "synthetic"                        the offline default (SyntheticConfig(), overridable by kw)
  "synthetic-tiny"                   SyntheticConfig.tiny()
  "synthetic-100k" | "synthetic-1m" | "synthetic-10m"
                                     SyntheticConfig.scale(): ~100K / 1M / 10M interactions
                                     on the vectorised sampler (overridable by kw, e.g. seed=)
  "ml-100k" | "ml-1m" | "ml-latest-small" | "ml-latest"
                                     raw MovieLens folders: `path=` kw, else the environment
                                     variable (RECS_ML100K_DIR, RECS_ML1M_DIR,
                                     RECS_ML_LATEST_SMALL_DIR, RECS_ML_LATEST_DIR), else
                                     `<repo>/../shared/data/<name>`
  "tfds:movielens/100k-ratings"      through TFDS (needs internet or a prepared data_dir)
  "dir:<path>[,<options>]"           a raw MovieLens folder, layout auto-detected
  "file:<path>[,<options>]"          a generic interactions file (kw go to
                                     load_interactions_file: columns, delimiter, rating_range, ...)

Options follow the path (or MovieLens name) after commas, as `key=value`; paths therefore
cannot contain commas:
  file:  items=<path>          the items file
         encoding=<codec>      e.g. encoding=latin-1 (both files)
         delimiter=<d>         of the interactions file: tab, comma, semicolon, pipe, space, or
                               the characters themselves (';', '|', '::', and '\\t' for tab);
                               a comma must be written `comma` (the spec's own separator), a
                               tab or space by name (whitespace around values is stripped)
         rating_range=MIN:MAX  the valid rating scale, e.g. rating_range=1:5 or 0.5:5 (the
                               default infers [min, max] of the non-negative ratings)
         on_unknown_items=keep|error|drop
                               interactions whose item is not in the items file: keep (default,
                               titled by their id), error, or drop (counted in the LoadReport)
  dir: and the MovieLens names ("ml-100k,on_unknown_items=drop"):
         on_unknown_items=error|drop
                               ratings of movies missing from the movies file: error (default)
                               or drop (counted, with examples, in the LoadReport)
  e.g. "file:data/log.csv,encoding=latin-1,delimiter=;,rating_range=1:5"
       "dir:../shared/data/ml-latest,on_unknown_items=drop"
An option may instead be passed as a keyword (`on_unknown_items="drop"`), not both.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import List

from recommenders_tf.data import interactions, schema, validation
from recommenders_tf.data.interactions import load_interactions_file
from recommenders_tf.data.movielens import load_movielens_dir
from recommenders_tf.data.synthetic import SCALE_PRESETS, SyntheticConfig, generate_synthetic

MOVIELENS_ENV = {"ml-100k": "RECS_ML100K_DIR", "ml-1m": "RECS_ML1M_DIR",
                 "ml-latest-small": "RECS_ML_LATEST_SMALL_DIR",
                 "ml-latest": "RECS_ML_LATEST_DIR"}
SYNTHETIC_SCALES = {f"synthetic-{size}": size for size in SCALE_PRESETS}
REPO_ROOT = Path(__file__).resolve().parents[2]
SPECS = ("synthetic", "synthetic-tiny", *SYNTHETIC_SCALES, *MOVIELENS_ENV, "tfds:<name>",
         "dir:<path>[,on_unknown_items=...]", "file:<path>[,items=<path>][,<option>=<value>...]")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": " "}


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset whose files are not on this machine."""


class DatasetSpecError(validation.DataValidationError):
    """A dataset spec that cannot be understood (an unknown name, option or option value).

    A DataValidationError, so command lines report it as the user's input to fix.
    """


def movielens_candidates(name: str) -> List[Path]:
    """Folders searched for a named MovieLens dataset, in order."""
    candidates = []
    env = os.environ.get(MOVIELENS_ENV[name])
    if env:
        candidates.append(Path(env))
    candidates.append(REPO_ROOT.parent / "shared" / "data" / name)
    return candidates


def find_movielens(name: str) -> Path:
    for candidate in movielens_candidates(name):
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in movielens_candidates(name))
    tfds_hint = (f" or load it through TFDS with load_dataset('tfds:movielens/"
                 f"{name[3:]}-ratings') (needs internet)" if name in ("ml-100k", "ml-1m") else "")
    raise DatasetNotFoundError(
        f"{name}: no MovieLens folder found (tried {tried}). Pass path=<folder> (or set "
        f"{MOVIELENS_ENV[name]}), use load_dataset('dir:<folder>'){tfds_hint}; the offline "
        f"default is load_dataset('synthetic').")


def _synthetic(config: SyntheticConfig, overrides: dict) -> schema.RecDataset:
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown SyntheticConfig fields {sorted(unknown)}")
    return generate_synthetic(dataclasses.replace(config, **overrides))


def _split_options(spec: str, body: str, table: dict) -> tuple:
    """'<head>,key=value,...' → (head, {key: raw value}); unknown or repeated keys are errors."""
    head, *parts = body.split(",")
    expected = ", ".join(f"{key}=" for key in table)
    options = {}
    for part in parts:
        key, equals, value = part.partition("=")
        key = key.strip()
        if not part.strip():
            raise DatasetSpecError(f"empty option in {spec!r} (two commas in a row, or a "
                                   f"trailing comma; a comma delimiter is written "
                                   f"delimiter=comma)")
        if not equals or key not in table:
            raise DatasetSpecError(f"unknown option {part!r} in {spec!r}; expected {expected}")
        if key in options:
            raise DatasetSpecError(f"option {key}= given twice in {spec!r}")
        options[key] = value
    return head, options


def _delimiter(value: str, spec: str) -> str:
    value = value.strip()
    if not value:
        # Whitespace is stripped from options, so a literal tab or space cannot be given.
        raise DatasetSpecError(f"delimiter= needs a value in {spec!r}: write a tab as "
                               f"delimiter=tab, a space as delimiter=space, a comma as "
                               f"delimiter=comma")
    return DELIMITER_NAMES.get(value.lower(), value)


def _rating_range(value: str, spec: str) -> tuple:
    low, colon, high = value.strip().partition(":")
    try:
        bounds = (float(low), float(high)) if colon else None
    except ValueError:
        bounds = None
    if bounds is None or not all(map(math.isfinite, bounds)) or bounds[0] > bounds[1]:
        raise DatasetSpecError(f"rating_range={value!r} in {spec!r}: expected MIN:MAX with "
                               f"MIN <= MAX, e.g. rating_range=1:5")
    return bounds


def _non_empty(key: str):
    def parse(value: str, spec: str) -> str:
        if not value.strip():
            raise DatasetSpecError(f"{key}= needs a value in {spec!r}")
        return value.strip()
    return parse


def _one_of(key: str, allowed):
    def parse(value: str, spec: str) -> str:
        if value.strip() not in allowed:
            raise DatasetSpecError(f"{key}={value.strip()!r} in {spec!r}: expected one of "
                                   f"{', '.join(allowed)}")
        return value.strip()
    return parse


# Spec option → (keyword of the load function, value parser), per spec kind.
DIR_OPTIONS = {
    "on_unknown_items": ("on_unknown_items",
                         _one_of("on_unknown_items", validation.UNKNOWN_ITEM_POLICIES)),
}
FILE_OPTIONS = {
    "items": ("items_path", _non_empty("items")),
    "encoding": ("encoding", _non_empty("encoding")),
    "delimiter": ("delimiter", _delimiter),
    "rating_range": ("rating_range", _rating_range),
    "on_unknown_items": ("on_unknown_items",
                         _one_of("on_unknown_items", interactions.UNKNOWN_ITEM_POLICIES)),
}


def _with_options(spec: str, options: dict, table: dict, kw: dict) -> dict:
    """`kw` plus the parsed spec options; an option given both ways is an error."""
    merged = dict(kw)
    for key, raw in options.items():
        keyword, parse = table[key]
        if keyword in merged:
            raise DatasetSpecError(f"{key} is given both in {spec!r} and as the keyword "
                                   f"{keyword}=; give it once")
        merged[keyword] = parse(raw, spec)
    return merged


def load_dataset(spec: str = "synthetic", **kw) -> schema.RecDataset:
    """Loads the dataset named by `spec` (see the module docstring for the forms).

    Args:
      spec: dataset spec string.
      **kw: per-spec options: SyntheticConfig fields for synthetic, `path=` for MovieLens
        names, `data_dir=` for tfds, load_interactions_file options for file:.
    """
    spec = spec.strip()
    if spec.split(",", 1)[0].strip() in MOVIELENS_ENV:
        name, options = _split_options(spec, spec, DIR_OPTIONS)
        kw = _with_options(spec, options, DIR_OPTIONS, kw)
        spec = name.strip()
    if spec == "synthetic":
        config = kw.pop("config", None) or SyntheticConfig()
        return _synthetic(config, kw)
    if spec == "synthetic-tiny":
        dataset = _synthetic(SyntheticConfig.tiny(), kw)
        dataset.name = "synthetic-tiny"
        return dataset
    if spec in SYNTHETIC_SCALES:
        dataset = _synthetic(SyntheticConfig.scale(SYNTHETIC_SCALES[spec]), kw)
        dataset.name = spec
        return dataset
    if spec in MOVIELENS_ENV:
        path = kw.pop("path", None)
        folder = Path(path) if path is not None else find_movielens(spec)
        return load_movielens_dir(folder, name=spec, **kw)
    if spec.startswith("tfds:"):
        from recommenders_tf.data.tfds_loader import load_tfds  # imports TensorFlow lazily
        return load_tfds(spec[len("tfds:"):], **kw)
    if spec.startswith("dir:"):
        path, options = _split_options(spec, spec[len("dir:"):], DIR_OPTIONS)
        return load_movielens_dir(path, **_with_options(spec, options, DIR_OPTIONS, kw))
    if spec.startswith("file:"):
        path, options = _split_options(spec, spec[len("file:"):], FILE_OPTIONS)
        kw = _with_options(spec, options, FILE_OPTIONS, kw)
        if kw.get("on_unknown_items", "keep") != "keep" and kw.get("items_path") is None:
            raise DatasetSpecError(f"on_unknown_items= in {spec!r} needs an items file "
                                   f"(items=<path>)")
        return load_interactions_file(path, **kw)
    raise DatasetSpecError(f"unknown dataset spec {spec!r}; expected one of {', '.join(SPECS)}")
