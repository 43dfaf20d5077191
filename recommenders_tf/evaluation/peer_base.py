"""The shared part of the top-K peers (`peers`, `peers_item_item`, `peers_sasrec`).

`TopKPeer` aligns a peer's scores with the evaluator's catalogue, gives unknown users the
popularity ranking and unseen items the lowest scores, and times `fit`. `GridSearchPeer` adds
the validation protocol of the tuned peers: every setting of a small grid is fitted on
`train` and scored by NDCG@10 on `validation` with `TopKEvaluator`; the best one is refit on
train + validation so the peer ends up seeing the same interactions as an untuned model.
With `max_validation_users` set, each setting is scored on a seeded sample of the validation
users (`recommenders_tf.data.splits.sample_users`), which bounds the search's users x catalogue.
"""
from __future__ import annotations

import itertools
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import ITEM_ID, USER_ID, check_frame
from recommenders_tf.data.splits import sample_users
from recommenders_tf.evaluation.protocol import TopKEvaluator

__all__ = ["TopKPeer", "GridSearchPeer", "binary_matrix", "fmt_params"]


class TopKPeer:
    """Base of the top-K peers: item alignment, popularity fallback, fit timing.

    Args:
      item_ids: column order of `score` (usually `TopKEvaluator.item_ids`); default the sorted
        train items. Can also be passed to `score`.
    """

    name = "peer"
    task = "topk"
    # Peers with nothing to tune train on train + validation, so every model in a benchmark
    # ends up fitted on the same interactions (all of the protocol's train part).
    tunes_on_validation = False

    def __init__(self, item_ids: Optional[Iterable[str]] = None):
        self.item_ids = None if item_ids is None else np.asarray(list(item_ids), dtype=object)
        self.notes = ""
        self.fit_seconds = 0.0
        self._train_items: Optional[pd.Index] = None
        self._popularity: Optional[np.ndarray] = None  # aligned with _train_items

    def fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame] = None) -> "TopKPeer":
        check_frame(train, "train", [USER_ID, ITEM_ID])
        if validation is not None:
            check_frame(validation, "validation", [USER_ID, ITEM_ID])
        if validation is not None and not self.tunes_on_validation:
            train, validation = pd.concat([train, validation], ignore_index=True), None
        start = time.perf_counter()
        self._fit(train, validation)
        self.fit_seconds = time.perf_counter() - start
        return self

    def _fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame]) -> None:
        raise NotImplementedError

    def _set_catalog(self, train: pd.DataFrame) -> None:
        counts = train[ITEM_ID].astype(str).value_counts()
        self._train_items = pd.Index(np.sort(counts.index.to_numpy().astype(str)).astype(object))
        self._popularity = counts.reindex(self._train_items).to_numpy(np.float64)
        if self.item_ids is None:
            self.item_ids = self._train_items.to_numpy()

    def _columns(self, item_ids: Optional[Iterable[str]]) -> Tuple[np.ndarray, np.ndarray]:
        if self._train_items is None:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        ids = self.item_ids if item_ids is None else np.asarray(list(item_ids), dtype=object)
        pos = self._train_items.get_indexer(ids)
        return pos, pos >= 0

    def _known_user_scores(
        self, users: np.ndarray, cols: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Scores [n_users, len(cols)] over train-item columns and a mask of known users."""
        raise NotImplementedError

    def score(
        self, user_ids: Sequence[str], item_ids: Optional[Iterable[str]] = None
    ) -> np.ndarray:
        """Float scores [len(user_ids), len(item_ids)], higher is better."""
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        pos, known_item = self._columns(item_ids)
        cols = pos[known_item]
        sub, known_user = self._known_user_scores(users, cols)
        if not known_user.all():
            sub = np.where(known_user[:, None], sub, self._popularity[cols][None, :])
        if known_item.all():
            # The usual case (every catalogue item in train): no copy of a users x catalogue
            # matrix into a second one.
            return np.asarray(sub, dtype=np.float64)
        out = np.empty((len(users), len(pos)), dtype=np.float64)
        out[:, known_item] = sub
        if (~known_item).any():
            # Unseen items rank below every seen item of the row.
            floor = sub.min(axis=1, keepdims=True) - 1.0 if sub.size else np.zeros((len(users), 1))
            out[:, ~known_item] = floor
        return out


class GridSearchPeer(TopKPeer):
    """A peer whose hyperparameters are chosen on the validation slice from a grid.

    Subclasses set `default_params` and `default_grid` and implement `_fit_setting`, which
    fits one setting on the given interactions so that `score` reflects it.

    Args:
      item_ids: see `TopKPeer`.
      grid: {param: values} searched on validation (every combination); default
        `default_grid`. An empty grid, or no validation, fits `params` as they are.
      **params: fixed values of the parameters that are not searched.

    Attributes:
      max_validation_users: validation users each setting is scored on, a seeded sample of
        them once there are more (0: all). The refit still uses the whole validation slice.
        `pipelines.benchmark` sets it (and `validation_seed`) from its `max_eval_users`.
      validation_seed: seed of that sample.
    """

    default_params: Dict[str, float] = {}
    default_grid: Dict[str, Sequence[float]] = {}
    tunes_on_validation = True
    max_validation_users: int = 0
    validation_seed: int = 0

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        grid: Optional[Dict[str, Sequence[float]]] = None,
        **params,
    ):
        super().__init__(item_ids)
        self.grid = dict(self.default_grid if grid is None else grid)
        unknown = sorted(set(self.grid) - set(self.default_params))
        if unknown:
            raise ValueError(f"{type(self).__name__} has no parameter(s) {unknown} to search; "
                             f"known: {sorted(self.default_params)}")
        unknown = sorted(set(params) - set(self.default_params))
        if unknown:
            # A misspelt setting would otherwise be kept and never read.
            raise ValueError(f"{type(self).__name__} has no parameter(s) {unknown}; "
                             f"known: {sorted(self.default_params)}")
        self.params = {**self.default_params, **params}
        self.chosen_params: Dict[str, float] = dict(self.params)

    def _fit_setting(self, train: pd.DataFrame, params: Dict[str, float]) -> None:
        raise NotImplementedError

    def _setting_notes(self) -> str:
        """What the fitted setting did beyond its parameters (e.g. a cap that applied)."""
        return ""

    def _fit(self, train, validation):
        if validation is None or not self.grid:
            self.chosen_params = dict(self.params)
            self._fit_setting(train, self.chosen_params)
            self.notes = _join(f"{fmt_params(self.chosen_params)} (defaults, no validation)",
                               self._setting_notes())
            return
        scored, sample = self._validation_sample(validation)
        evaluator = TopKEvaluator(train, scored, ks=(10,))
        keys = sorted(self.grid)
        results: List[Tuple[float, Dict[str, float]]] = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            params = {**self.params, **dict(zip(keys, values))}
            self._fit_setting(train, params)
            result = evaluator.evaluate(lambda u: self.score(u, evaluator.item_ids))
            results.append((result.metrics["ndcg@10"], params))
        # max() keeps the first of equal scores, i.e. grid order decides ties.
        best_ndcg, best = max(results, key=lambda r: r[0])
        self.chosen_params = best
        self._fit_setting(pd.concat([train, validation], ignore_index=True), best)
        # A choice on the edge of a numeric grid may mean the optimum lies beyond it.
        edges = [k for k in keys if len(self.grid[k]) > 2 and _is_numeric(self.grid[k])
                 and best[k] in (min(self.grid[k]), max(self.grid[k]))]
        self.notes = _join(
            f"{fmt_params({k: best[k] for k in keys})} chosen on validation by ndcg@10="
            f"{best_ndcg:.4f} over {len(results)} settings of {fmt_params(self.grid)}; refit on "
            f"train+validation" + (f"; at the grid's edge: {', '.join(edges)}" if edges else ""),
            f"validation scored on {sample['sampled']} of {sample['of']} users (seed "
            f"{sample['seed']})" if sample["sampled"] < sample["of"] else "",
            self._setting_notes(),
        )

    def _validation_sample(self, validation: pd.DataFrame) -> Tuple[pd.DataFrame, Dict]:
        """The validation rows of the users the settings are scored on, and the sample's
        report ({"sampled", "of", "seed"}): every user when `max_validation_users` is 0."""
        cap = self.max_validation_users
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 0:
            raise ValueError(f"max_validation_users must be 0 (all) or a positive integer, "
                             f"got {cap!r}")
        users = validation[USER_ID].astype(str)
        keep, sample = sample_users(users, int(cap), self.validation_seed)
        if sample["sampled"] == sample["of"]:
            return validation, sample
        return validation[users.isin(keep).to_numpy()], sample


def _is_numeric(values: Sequence) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               for v in values)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def fmt_params(params: Dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def binary_matrix(train: pd.DataFrame, items: Optional[pd.Index] = None):
    """The binary user x item matrix of `train` (P1: every interaction counts once).

    Args:
      train: interactions.
      items: column order; default the sorted train items. Interactions with other items are
        dropped.

    Returns:
      (scipy CSR float32 matrix [users, items], users as a sorted pd.Index, items pd.Index).
    """
    import scipy.sparse as sp

    users = pd.Index(np.unique(train[USER_ID].astype(str).to_numpy()).astype(object))
    if items is None:
        items = pd.Index(np.unique(train[ITEM_ID].astype(str).to_numpy()).astype(object))
    rows = users.get_indexer(train[USER_ID].astype(str).to_numpy())
    cols = items.get_indexer(train[ITEM_ID].astype(str).to_numpy())
    keep = cols >= 0
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(len(users), len(items)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # repeats of a pair collapse to a single 1
    return matrix, users, items
