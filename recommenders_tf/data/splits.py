"""Train/test splits of the benchmark protocols (../shared/BENCHMARK.md), seeded and hashed.

- P1 `temporal_split`: per user, sorted by timestamp (ties by item id), the last 20% (rounded
  down, at least 1) is test; users with fewer than 5 interactions stay wholly in train.
- P2 `rating_split`: the dataset's predefined `u1.base`/`u1.test` when it ships them, else a
  seeded random 80/20 split of the rows.
- P3 `cold_item_split`: a seeded 20% of the interacted items is held out entirely; P1 on the
  rest gives train (and `extra["warm_test"]`); test = every interaction with a held-out item by
  a user who is in train.
- P4 `sparsity_buckets`: the bucket of each user by number of train interactions.
- `validation_split`: P1's rule applied to a train set, for hyperparameter selection.
- `split_boundaries`: each user's split boundary (the earliest of their interactions that a
  train part leaves out), which decides the side information that train part may use.

Every split is a `Split` whose `manifest()` records counts and the sha256 of each part's
canonical CSV, so two runs (or two machines) can prove they used the same data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data import schema
from recommenders_tf.data.ordering import time_order

BUCKETS = ("1-20", "21-50", "51-150", ">150")
NO_TRAIN_BUCKET = "0"  # a user with no train interactions (never a P1 test user)


@dataclasses.dataclass
class Split:
    """One train/test split of interactions.

    Args:
      train: training interactions (canonical columns).
      test: test interactions.
      protocol: "P1", "P2", "P3" or "validation".
      seed: the seed that produced it (recorded even when the rule is deterministic).
      dataset: name of the dataset split.
      info: JSON-serialisable facts about the split (e.g. `cold_items`, parameters).
      extra: further named parts, e.g. "warm_test" of P3; hashed in the manifest too.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    protocol: str
    seed: int = 0
    dataset: str = ""
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: Dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)

    def parts(self) -> Dict[str, pd.DataFrame]:
        return {"train": self.train, "test": self.test, **self.extra}

    def manifest(self) -> dict:
        """Counts and content hashes of every part, plus protocol, seed and info."""
        parts = {}
        for name, frame in self.parts().items():
            parts[name] = {"rows": int(len(frame)),
                           "users": int(frame[schema.USER_ID].nunique()),
                           "items": int(frame[schema.ITEM_ID].nunique()),
                           "sha256": frame_sha256(frame)}
        return {"protocol": self.protocol, "dataset": self.dataset, "seed": int(self.seed),
                "parts": parts, "info": self.info}

    def write_manifest(self, directory) -> Path:
        """Writes `<directory>/split_manifest.json` and returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "split_manifest.json"
        path.write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return path


def canonical_csv(frame: pd.DataFrame) -> str:
    """The interactions as CSV, rows sorted by (user, item, timestamp, rating), ratings "%.4f"."""
    canon = schema.canonical_interactions(frame)
    # lexsort on factorized codes: same order as sort_values on the strings, several x faster.
    order = np.lexsort((canon[schema.RATING].to_numpy(), canon[schema.TIMESTAMP].to_numpy(),
                        pd.factorize(canon[schema.ITEM_ID], sort=True)[0],
                        pd.factorize(canon[schema.USER_ID], sort=True)[0]))
    canon = canon.iloc[order]
    users = canon[schema.USER_ID].to_numpy(dtype=object)
    items = canon[schema.ITEM_ID].to_numpy(dtype=object)
    distinct_ids = np.concatenate([pd.unique(users), pd.unique(items)])
    special = pd.Series(distinct_ids, dtype=object).str.contains(r'[",\r\n]')
    if special.any():  # ids that need CSV quoting: let pandas quote them (slow, rare)
        return canon.to_csv(index=False, lineterminator="\n", float_format="%.4f")
    # Formatting the few distinct ratings once is much faster than to_csv's float_format.
    distinct, inverse = np.unique(canon[schema.RATING].to_numpy(), return_inverse=True)
    ratings = np.array(["%.4f" % v for v in distinct], dtype=object)[inverse]
    times = canon[schema.TIMESTAMP].to_numpy().astype(str).astype(object)
    lines = users + "," + items + "," + ratings + "," + times
    header = ",".join(schema.INTERACTION_COLUMNS)
    return header + "\n" + "\n".join(lines.tolist()) + ("\n" if len(lines) else "")


def frame_sha256(frame: pd.DataFrame) -> str:
    return hashlib.sha256(canonical_csv(frame).encode("utf-8")).hexdigest()


def temporal_mask(interactions: pd.DataFrame, test_fraction: float = 0.2,
                  min_interactions: int = 5) -> np.ndarray:
    """Boolean mask (aligned with the rows) of the P1 test rows."""
    if len(interactions) == 0:
        return np.zeros(0, dtype=bool)
    users = pd.factorize(interactions[schema.USER_ID], sort=True)[0]
    items = pd.factorize(interactions[schema.ITEM_ID], sort=True)[0]  # codes follow id order
    order = time_order(users, interactions[schema.TIMESTAMP].to_numpy(), items)
    users = users[order]
    # Sorted by user, so each user's rows are contiguous: positions come from group starts.
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    sizes = np.diff(np.r_[starts, len(users)])
    size = np.repeat(sizes, sizes)
    position = np.arange(len(users)) - np.repeat(starts, sizes)
    # The epsilon keeps e.g. 0.2 * 35 = 7.000000000000001 from rounding the wrong way.
    n_test = np.maximum(1, np.floor(size * test_fraction + 1e-9)).astype(np.int64)
    n_test[size < min_interactions] = 0
    sorted_mask = position >= size - n_test
    mask = np.zeros(len(interactions), dtype=bool)
    mask[order] = sorted_mask
    return mask


def _reindexed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.reset_index(drop=True)


def temporal_split(interactions: pd.DataFrame, test_fraction: float = 0.2,
                   min_interactions: int = 5, seed: int = 0, dataset: str = "",
                   protocol: str = "P1") -> Split:
    """P1: each user's last `test_fraction` (rounded down, at least 1) in time is test.

    Args:
      interactions: canonical interactions.
      test_fraction: share of each user's interactions held out.
      min_interactions: users with fewer interactions stay wholly in train.
      seed: recorded only; the rule is deterministic (ties broken by item id).
      dataset: name recorded in the manifest.
      protocol: name recorded in the split.
    """
    mask = temporal_mask(interactions, test_fraction, min_interactions)
    return Split(train=_reindexed(interactions[~mask]), test=_reindexed(interactions[mask]),
                 protocol=protocol, seed=seed, dataset=dataset,
                 info={"test_fraction": test_fraction, "min_interactions": min_interactions})


def random_split(interactions: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0,
                 dataset: str = "", protocol: str = "P2") -> Split:
    """A seeded random split of rows: floor(test_fraction × rows) rows are test."""
    rng = np.random.default_rng(seed)
    n_test = int(np.floor(len(interactions) * test_fraction + 1e-9))
    mask = np.zeros(len(interactions), dtype=bool)
    mask[rng.permutation(len(interactions))[:n_test]] = True
    return Split(train=_reindexed(interactions[~mask]), test=_reindexed(interactions[mask]),
                 protocol=protocol, seed=seed, dataset=dataset,
                 info={"test_fraction": test_fraction, "source": "random"})


def rating_split(dataset: schema.RecDataset, seed: int = 0, test_fraction: float = 0.2,
                 predefined: str = "u1") -> Split:
    """P2: the predefined split `predefined` when the dataset ships it, else `random_split`."""
    if predefined in dataset.predefined_splits:
        train, test = dataset.predefined_splits[predefined]
        return Split(train=_reindexed(train), test=_reindexed(test), protocol="P2", seed=seed,
                     dataset=dataset.name, info={"source": f"predefined:{predefined}"})
    return random_split(dataset.interactions, test_fraction, seed, dataset=dataset.name)


def cold_item_split(interactions: pd.DataFrame, cold_fraction: float = 0.2, seed: int = 0,
                    test_fraction: float = 0.2, min_interactions: int = 5,
                    dataset: str = "") -> Split:
    """P3: hold out a seeded `cold_fraction` of interacted items entirely.

    Returns:
      Split with train = P1 train of the warm items' interactions; test = interactions with
      held-out items by users present in train; extra["warm_test"] = P1 test of warm items;
      info["cold_items"] = sorted held-out item ids.
    """
    items = np.sort(interactions[schema.ITEM_ID].unique().astype(str))
    rng = np.random.default_rng(seed)
    n_cold = int(round(cold_fraction * len(items)))
    cold = np.sort(rng.choice(items, size=n_cold, replace=False)) if n_cold else items[:0]
    is_cold = interactions[schema.ITEM_ID].isin(set(cold)).to_numpy()
    warm = interactions[~is_cold]
    warm_split = temporal_split(warm, test_fraction, min_interactions, seed, dataset)
    cold_rows = interactions[is_cold]
    known = cold_rows[schema.USER_ID].isin(set(warm_split.train[schema.USER_ID]))
    test = _reindexed(cold_rows[known.to_numpy()])
    info = {"cold_fraction": cold_fraction, "test_fraction": test_fraction,
            "min_interactions": min_interactions, "cold_items": [str(i) for i in cold],
            "cold_rows_without_train_user": int((~known).sum())}
    return Split(train=warm_split.train, test=test, protocol="P3", seed=seed, dataset=dataset,
                 info=info, extra={"warm_test": warm_split.test})


def validation_split(train: pd.DataFrame, test_fraction: float = 0.2,
                     min_interactions: int = 5, seed: int = 0, dataset: str = "") -> Split:
    """Carves a validation set from `train` with the P1 rule (tune on this, never on test).

    Returns:
      Split with train = the reduced train set and test = the validation interactions.
    """
    return temporal_split(train, test_fraction, min_interactions, seed, dataset,
                          protocol="validation")


def split_boundaries(interactions: pd.DataFrame, train: pd.DataFrame) -> pd.Series:
    """Each user's split boundary: the earliest timestamp of their rows missing from `train`.

    Works for any split whose train part is a subset of `interactions` (P1, P2, P3, a
    validation slice): everything a user did strictly before the boundary precedes all of their
    held-out interactions. Rows are matched on (user, item, timestamp) with multiplicity, so a
    repeated row held out once still counts as held out.

    Returns:
      A Series of int64 timestamps indexed by user_id, holding only users with at least one
      held-out row; users wholly in train (or absent) have no boundary.
    """
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]

    def counts(frame: pd.DataFrame) -> pd.Series:
        canon = schema.canonical_interactions(frame)
        return canon.groupby(keys, sort=False).size()

    all_counts = counts(interactions)
    in_train = counts(train).reindex(all_counts.index, fill_value=0)
    held = all_counts - in_train
    held = held[held > 0].reset_index()
    return (held.groupby(schema.USER_ID)[schema.TIMESTAMP].min().astype("int64")
            .rename("boundary"))


def sample_users(users: Iterable[str], max_users: int, seed: int = 0
                 ) -> Tuple[np.ndarray, Dict[str, int]]:
    """A seeded sample of at most `max_users` distinct users, in their first-seen order.

    Stages whose cost would grow with users x catalogue (ranker lists, cross-fitting,
    evaluation) run on such a sample once the data outgrows it; the returned report
    ({"sampled": n, "of": total, "seed": seed}) goes into the run record so a figure computed
    on a sample is never mistaken for one over every user. `max_users` <= 0 keeps everyone.
    """
    unique = pd.unique(pd.Series(list(users), dtype=object)).astype(object)
    if max_users <= 0 or len(unique) <= max_users:
        return unique, {"sampled": int(len(unique)), "of": int(len(unique)), "seed": seed}
    keep = np.sort(np.random.default_rng(seed).choice(len(unique), max_users, replace=False))
    return unique[keep], {"sampled": int(max_users), "of": int(len(unique)), "seed": seed}


def sample_test_users(test: pd.DataFrame, max_users: int, seed: int = 0
                      ) -> Tuple[pd.DataFrame, Dict[str, int]]:
    """The rows of `test` whose users are in `sample_users` of its users (in row order), and
    the sample's report: what an evaluation capped at `max_users` users scores."""
    users = test[schema.USER_ID].astype(str)
    kept, sample = sample_users(users, max_users, seed)
    if sample["sampled"] < sample["of"]:
        test = test[users.isin(kept).to_numpy()]
    return test, sample


def sparsity_buckets(train: pd.DataFrame, users: Optional[Iterable[str]] = None) -> pd.Series:
    """P4: bucket label ("1-20", "21-50", "51-150", ">150") per user by train interactions.

    Args:
      train: train interactions.
      users: users to label (e.g. the test users); default every train user. A user with no
        train interactions gets NO_TRAIN_BUCKET ("0").

    Returns:
      A Series indexed by user_id (in the given order) of bucket labels.
    """
    counts = train[schema.USER_ID].value_counts()
    index = counts.index if users is None else pd.Index(list(users), dtype=object)
    n = counts.reindex(index, fill_value=0).to_numpy()
    labels = np.select([n == 0, n <= 20, n <= 50, n <= 150],
                       [NO_TRAIN_BUCKET, BUCKETS[0], BUCKETS[1], BUCKETS[2]], BUCKETS[3])
    return pd.Series(labels.astype(object), index=pd.Index(index, name=schema.USER_ID),
                     name="bucket", dtype=object)


def split_for_protocol(protocol: str, dataset: schema.RecDataset, seed: int = 0) -> Split:
    """The split a protocol prescribes ("P1", "P2", "P3"; P4 reuses P1)."""
    key = protocol.upper()
    if key in ("P1", "P4"):
        split = temporal_split(dataset.interactions, seed=seed, dataset=dataset.name)
        split.protocol = key
        return split
    if key == "P2":
        return rating_split(dataset, seed=seed)
    if key == "P3":
        return cold_item_split(dataset.interactions, seed=seed, dataset=dataset.name)
    raise ValueError(f"unknown protocol {protocol!r}; expected P1, P2, P3 or P4")
