"""Shared pytest fixtures.

`ml100k_dir` is the MovieLens 100K folder beside the repository (`<repo>/../shared/data/ml-100k`,
resolved from this file so a CI clone anywhere finds its sibling `shared/`); tests that need it
skip when it is absent. `RECS_ML100K_DIR` overrides the location.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ML100K_DIR = REPO_ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = Path(os.environ.get("RECS_ML100K_DIR") or ML100K_DIR)
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic_tiny():
    """The tiny synthetic dataset (seed 0), generated once per session; do not mutate."""
    from recommenders_tf.data.synthetic import SyntheticConfig, generate_synthetic

    return generate_synthetic(SyntheticConfig.tiny())
