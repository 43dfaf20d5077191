"""`load_dataset(spec)`: one string names any dataset the project can load.

Specs:
  "synthetic"                        the offline default (SyntheticConfig(), overridable by kw)
  "synthetic-tiny"                   SyntheticConfig.tiny()
  "ml-100k" | "ml-1m" | "ml-latest-small" | "ml-latest"
                                     raw MovieLens folders: `path=` kw, else the environment
                                     variable (RECS_ML100K_DIR, RECS_ML1M_DIR,
                                     RECS_ML_LATEST_SMALL_DIR, RECS_ML_LATEST_DIR), else
                                     `<repo>/../shared/data/<name>`
  "tfds:movielens/100k-ratings"      through TFDS (needs internet or a prepared data_dir)
  "dir:<path>"                       a raw MovieLens folder, layout auto-detected
  "file:<path>[,items=<path>]"       a generic interactions file (kw go to
                                     load_interactions_file: columns, delimiter, rating_range)
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import List

from recommenders_tf.data import schema
from recommenders_tf.data.interactions import load_interactions_file
from recommenders_tf.data.movielens import load_movielens_dir
from recommenders_tf.data.synthetic import SyntheticConfig, generate_synthetic

MOVIELENS_ENV = {"ml-100k": "RECS_ML100K_DIR", "ml-1m": "RECS_ML1M_DIR",
                 "ml-latest-small": "RECS_ML_LATEST_SMALL_DIR",
                 "ml-latest": "RECS_ML_LATEST_DIR"}
REPO_ROOT = Path(__file__).resolve().parents[2]
SPECS = ("synthetic", "synthetic-tiny", *MOVIELENS_ENV, "tfds:<name>", "dir:<path>",
         "file:<path>[,items=<path>]")


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset whose files are not on this machine."""


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


def load_dataset(spec: str = "synthetic", **kw) -> schema.RecDataset:
    """Loads the dataset named by `spec` (see the module docstring for the forms).

    Args:
      spec: dataset spec string.
      **kw: per-spec options: SyntheticConfig fields for synthetic, `path=` for MovieLens
        names, `data_dir=` for tfds, load_interactions_file options for file:.
    """
    spec = spec.strip()
    if spec == "synthetic":
        config = kw.pop("config", None) or SyntheticConfig()
        return _synthetic(config, kw)
    if spec == "synthetic-tiny":
        dataset = _synthetic(SyntheticConfig.tiny(), kw)
        dataset.name = "synthetic-tiny"
        return dataset
    if spec in MOVIELENS_ENV:
        path = kw.pop("path", None)
        folder = Path(path) if path is not None else find_movielens(spec)
        return load_movielens_dir(folder, name=spec, **kw)
    if spec.startswith("tfds:"):
        from recommenders_tf.data.tfds_loader import load_tfds  # imports TensorFlow lazily
        return load_tfds(spec[len("tfds:"):], **kw)
    if spec.startswith("dir:"):
        return load_movielens_dir(spec[len("dir:"):], **kw)
    if spec.startswith("file:"):
        path, *options = spec[len("file:"):].split(",")
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() != "items" or not value:
                raise ValueError(f"unknown option {option!r} in {spec!r}; expected items=<path>")
            kw["items_path"] = value.strip()
        return load_interactions_file(path, **kw)
    raise ValueError(f"unknown dataset spec {spec!r}; expected one of {', '.join(SPECS)}")
