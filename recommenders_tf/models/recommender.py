"""`TwoTowerRecommender`: the project's two-tower retrieval model behind the peers' interface.

It has the `fit(train, validation=None)` / `score(user_ids, item_ids)` interface of the top-K
peers in `recommenders_tf.evaluation.peers`, so a benchmark runs it side by side with them, and
a public retrieval API for the stages and exports built on it:

  candidate_embeddings(item_ids=None)       [n, d] candidate-tower outputs (catalog order)
  query_embeddings(user_ids, histories=None) [U, d] query-tower outputs
  recommend(user_ids, k, exclude="seen")    top-k ids and scores, best first
  query_tower, candidate_tower, catalog      the trained towers and the default item order

What `fit` does (the honest-tuning convention of the `implicit` peers):
  1. Epoch selection, when `validation` is given: vocabularies from `train` only, one
     `fit_model` run on `train`. After every epoch a `ValidationMetrics` callback ranks the
     full train catalog for the validation users (their train items excluded) with the
     evaluator the caller passes as `validation_evaluator` (the evaluation layer's
     `TopKEvaluator`, so the model and the benchmark it is compared in share one protocol)
     and logs NDCG@10, recall@10 and recall@50 as `val_...`; `fit_model`'s early
     stopping watches `val_<select_metric>`, so training stops after `patience` epochs without
     improvement (or at `config.epochs`) and its best epoch is the chosen one.
     With `config.search` (default `DEFAULT_SEARCH`: temperature, history pooling and
     length), step 1 runs once per setting tried, one field at a time from the config's own
     values, and the best validation `select_metric` chooses the settings with their epochs
     (on a seeded sample of `search_max_users` users at scale; the chosen settings then choose
     their epochs on all the data). `config` then holds the chosen settings.
  2. Refit: a fresh model, with vocabularies from train + validation, trained for the chosen
     number of epochs on train + validation with no further look at any held-out data.
     This is what the peers do with their chosen setting, so every model in a benchmark
     is finally fitted on the same interactions.
  Without `validation`, one model is trained on `train` for `config.epochs` epochs.
  Test data is never an argument of `fit`, so it cannot reach the model.

Scoring: the query embedding of a user is the query tower over their id and their
`history_len` most recent interactions of the fitted data (`user_history`), or over a history
the caller gives; the candidate embedding of an item the candidate tower over its id and
features (genres, title, text vector from an `ItemVectors` store); the score is their dot
product. Users unknown to the model get the OOV user embedding and an empty history; items are
always scored by the candidate tower (with content features an unseen item still gets a
meaningful embedding).

Input from files (`TwoTowerConfig.input_shards` = N > 0): each phase writes its training
examples as N TFRecord files under `<work_dir>/<phase>/examples/` (`write_example_shards`;
the chief writes them, a folder holding the same examples is reused) and trains from them
(`read_example_shards`). Under a multi-worker strategy the input is a Keras `DatasetCreator`,
so each worker reads only the files of its input pipeline (files w, w + W, ... for worker w
of W) in per-replica batches, repeated, with `steps_per_epoch` = ceil(examples / batch_size);
on one machine it reads every file. N must be at least the number of workers. Validation
examples stay in memory (they are small and read by the chief's callbacks). Not available
under a ParameterServerStrategy yet (its workers all get input pipeline 0).

Cold items are an option of the candidate tower (`TowerConfig.zero_oov_item_id`, on by default
here, and `item_id_dropout`): an item id the vocabulary does not know contributes a zero vector
instead of the untrained OOV-bucket embedding, so a new item is represented by its content
alone, and `item_id_dropout` trains the content path to carry an item on its own (the
"text-enhanced" two-tower of P3 uses both).

The defaults of `TwoTowerConfig` were chosen on the validation slice of the MovieLens 100K
P1 train split only; see configs/retrieval_ml100k.yaml for the search and the figures.

Example:
  >>> rec = TwoTowerRecommender(TwoTowerConfig(), items=data.items,
  ...                           validation_evaluator=TopKEvaluator)
  >>> rec.fit(val.train, validation=val.test)
  >>> scores = rec.score(["1", "2"], evaluator.item_ids)   # [2, n_items]
  >>> top = rec.recommend(["1", "2"], k=10)                 # top.ids, top.scores: [2, 10]
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.config import write_json
from recommenders_tf.data.datasets import PAD, user_history
from recommenders_tf.data.schema import GENRES, ITEM_ID, TIMESTAMP, USER_ID, check_frame
from recommenders_tf.data.splits import sample_users
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.features.retrieval_inputs import (ItemFeatureTable, read_example_shards,
                                                       read_manifest, retrieval_dataset,
                                                       write_example_shards)
from recommenders_tf.features.vocab import Vocabulary, build_vocabularies
from recommenders_tf.models.distribute import (barrier, copy_variables, is_chief, num_workers,
                                               uses_parameter_servers, variable_shards)
from recommenders_tf.models.retrieval import RetrievalConfig, build_retrieval_model
from recommenders_tf.models.towers import title_tokens
from recommenders_tf.models.training import FitResult, ValidationMetrics, fit_model

SELECTION_DIR = "selection"
FINAL_DIR = "final"
SELECTION_FILE = "selection.json"
EXAMPLES_DIR = "examples"
# Every selection epoch records all three; `select_metric` says which one chooses.
SELECT_METRICS = ("ndcg@10", "recall@10", "recall@50")
SEARCH_DIR = "search"
SEARCH_FILE = "search.json"
# The settings a fit with validation chooses, coordinate-wise in this order, starting from the
# config's own values. The validation slices of two datasets disagreed on exactly these
# (validation NDCG@10 of the P1 slice, ID-only towers, from the T=0.2 / attention-50 start):
# temperature 0.3 beat 0.2 on synthetic (0.2021 vs 0.1944) and lost on ml-100k (0.2516 vs
# 0.2618), 0.1 lost on both; a mean over 200 history items won on synthetic (0.2017) and lost
# on ml-100k (0.2556), where attention over 200 won (0.2657). A dataset nobody has searched by
# hand gets the same treatment.
DEFAULT_SEARCH = {"temperature": (0.1, 0.2, 0.3), "history_pooling": ("attention", "mean"),
                  "history_len": (50, 200)}
# Fields a search may not vary: they change what the model reads (item features), how the
# choice itself is made, or the training machinery rather than the model.
_UNSEARCHABLE = ("use_genres", "use_titles", "select_metric", "search", "search_max_users",
                 "search_min_gain", "seed", "epochs", "patience", "min_delta", "input_shards",
                 "max_validation_users", "verbose", "monitor", "monitor_mode", "restore_best",
                 "max_checkpoints")
EXCLUDE_SEEN = "seen"


@dataclasses.dataclass
class TwoTowerConfig(RetrievalConfig):
    """A RetrievalConfig whose defaults were chosen on the ml-100k validation slice, plus the
    recommender's own switches.

    The tower, task and training fields are documented on `RetrievalConfig` and its parents;
    only their defaults differ (see configs/retrieval_ml100k.yaml for how they were chosen).
    `epochs` caps the epoch selection and `patience` / `min_delta` drive its stopping on
    `select_metric`; `monitor`, `monitor_mode` and `restore_best` play no part in choosing the
    model (the selection watches the validation ranking, not the loss). The cold-item options
    `item_id_dropout` and `zero_oov_item_id` are `TowerConfig`'s; the latter is on here.

    Args:
      use_genres: feed `item_genres` to the candidate tower (needs a `genres` items column).
      use_titles: feed `item_title` to a learned bag-of-title-tokens encoder (needs `title`);
        ignored when item text vectors are given.
      select_metric: validation metric ("ndcg@10", "recall@10" or "recall@50") that the
        epoch selection maximises.
      max_validation_users: validation users whose rankings choose the epoch, a seeded
        sample (`sample_users`, seed `seed`) once there are more; every epoch ranks the whole
        catalogue for each of them, which would otherwise cost users x catalogue per epoch.
        0 ranks for all. The sample is recorded in selection.json and the notes.
      search: {field: candidate values} chosen on the validation slice when `fit` has one:
        coordinate-wise in the mapping's order, each field's values tried with the others
        at the best found so far (starting from this config's own values), each try a full
        epoch selection; a try replaces the best so far only when its validation
        `select_metric` is higher by more than `search_min_gain` (relative).
        Cost: one selection per value tried. {} fits this config as it is. Default
        `DEFAULT_SEARCH`. Every try is recorded in search.json and the notes.
      search_min_gain: relative margin a try must win by (default 0.01, about the
        seed-to-seed spread of validation NDCG@10), so noise does not move the settings.
      search_max_users: the search's tries learn and rank on a seeded sample (`sample_users`,
        seed `seed`) of this many train users and their validation rows once there are more;
        the chosen settings then choose their epochs on all the data, so the search costs
        one selection per try on at most this many users plus one at full size. 0: all users.
      input_shards: 0 trains from in-memory examples (each worker of a cluster builds them
        all and keeps its share of every batch); N > 0 writes them as N TFRecord files per
        phase and each worker reads only its own files (see the module docstring). N must be
        at least the number of workers.
    """

    embedding_dim: int = 64
    id_embedding_dim: int = 64
    hidden_dims: Tuple[int, ...] = ()
    history_len: int = 50
    history_pooling: str = "attention"
    temperature: float = 0.2
    # The largest single gain of the search (validation NDCG@10 0.095 -> 0.256): without the
    # correction the in-batch softmax learns popularity-discounted scores, and top-K
    # metrics on MovieLens reward popular items.
    logq_correction: bool = True
    user_id_dropout: float = 0.0
    dropout: float = 0.0
    # Adam's update restricted to the embedding rows in the batch: a step then costs the
    # batch, not the vocabulary (with 600K ids, 21 ms instead of 203 ms per step); on the
    # validation slices NDCG@10 0.2666 vs 0.2678 (ml-100k), 0.1750 vs 0.1741 (synthetic-100k).
    optimizer: str = "lazy_adam"
    learning_rate: float = 3e-3
    batch_size: int = 512
    epochs: int = 20
    patience: int = 3
    use_genres: bool = True
    use_titles: bool = False
    select_metric: str = "ndcg@10"
    zero_oov_item_id: bool = True
    input_shards: int = 0
    max_validation_users: int = 20000
    search: Dict[str, Tuple[Any, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SEARCH))
    search_max_users: int = 20000
    # The seed-to-seed spread of validation NDCG@10 (same settings, seeds 0 and 1): 1.6% on
    # ml-100k, 0.6% on synthetic. A smaller gain than that is not evidence for a setting.
    search_min_gain: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        self.search = self._checked_search(self.search)
        if not isinstance(self.max_validation_users, int) or isinstance(
                self.max_validation_users, bool) or self.max_validation_users < 0:
            raise ValueError("TwoTowerConfig.max_validation_users must be 0 (all) or a "
                             f"positive integer, got {self.max_validation_users!r}")
        if not isinstance(self.search_max_users, int) or isinstance(
                self.search_max_users, bool) or self.search_max_users < 0:
            raise ValueError("TwoTowerConfig.search_max_users must be 0 (all) or a positive "
                             f"integer, got {self.search_max_users!r}")
        if not 0.0 <= self.search_min_gain < 1.0:
            raise ValueError("TwoTowerConfig.search_min_gain must be in [0, 1), got "
                             f"{self.search_min_gain!r}")
        if not isinstance(self.input_shards, int) or self.input_shards < 0:
            raise ValueError("TwoTowerConfig.input_shards must be an integer >= 0 (0: "
                             f"in-memory input), got {self.input_shards!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"TwoTowerConfig.select_metric must be one of {SELECT_METRICS}, "
                             f"got {self.select_metric!r}")

    def _checked_search(self, search) -> Dict[str, Tuple[Any, ...]]:
        if search is None:
            return {}
        if not isinstance(search, dict):
            raise ValueError(f"TwoTowerConfig.search must be a mapping {{field: [values]}}, "
                             f"got {search!r}")
        names = {f.name for f in dataclasses.fields(self)}
        checked: Dict[str, Tuple[Any, ...]] = {}
        for name, values in search.items():
            if name not in names or name in _UNSEARCHABLE:
                raise ValueError(f"TwoTowerConfig.search: {name!r} is not a searchable field "
                                 f"(a TwoTowerConfig field other than {_UNSEARCHABLE})")
            values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
            if not values:
                raise ValueError(f"TwoTowerConfig.search[{name!r}] has no values")
            current = getattr(self, name)
            if isinstance(current, tuple):  # e.g. hidden_dims: each value is itself a tuple
                values = tuple(tuple(v) for v in values)
            for value in values:
                try:  # every try must be a valid config before any training starts
                    dataclasses.replace(self, search={}, **{name: value})
                except (TypeError, ValueError) as err:
                    raise ValueError(f"TwoTowerConfig.search[{name!r}]: {value!r} is not a "
                                     f"valid value: {err}") from None
            checked[name] = values
        return checked


class TopK(NamedTuple):
    """Recommendations, best first: `ids` [U, k] item ids and `scores` [U, k] float64; a row
    with fewer than k rankable items is padded with "" and -inf."""

    ids: np.ndarray
    scores: np.ndarray


@dataclasses.dataclass
class _Fitted:
    """One trained model with what is needed to score with it."""

    model: Any
    vocabularies: Dict[str, Vocabulary]
    histories: Dict[str, np.ndarray]
    fit_result: Any
    # Distinct (user_id, item_id) pairs of the fitted data: what `recommend` excludes.
    seen: Optional[pd.DataFrame] = None


def _as_ids(values: Iterable) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _id_rows(rows: Any, n_rows: int, what: str) -> np.ndarray:
    """[n_rows, W] object array of str ids from a 2-D array or a list of (ragged) id lists;
    short rows are left-padded with ""."""
    matrix = np.asarray(rows, dtype=object) if not isinstance(rows, np.ndarray) else rows
    if matrix.ndim == 2:
        matrix = matrix.astype(str).astype(object)
    elif matrix.ndim == 1 and all(isinstance(r, (list, tuple, np.ndarray)) for r in matrix):
        width = max((len(r) for r in matrix), default=0)
        matrix = np.asarray([[PAD] * (width - len(r)) + [str(i) for i in r] for r in matrix],
                            dtype=object).reshape(len(matrix), width)
    else:
        raise ValueError(f"{what} must be one row of item ids per user ([users, N] or a list "
                         f"of lists), got shape {matrix.shape}")
    if matrix.shape[0] != n_rows:
        raise ValueError(f"{what} has {matrix.shape[0]} rows for {n_rows} users")
    return matrix


def _recent_items(histories: np.ndarray, width: int) -> np.ndarray:
    """Each row's last `width` real ids, most recent last, left-padded with "".

    The query tower compacts and cuts histories the same way itself, so this changes no
    result; it keeps a caller's wide histories out of every tower batch.
    """
    # Stable: pads (False) first, real ids after, each group in its original order.
    order = np.argsort(histories != PAD, axis=1, kind="stable")
    compact = np.take_along_axis(histories, order, axis=1)
    if compact.shape[1] >= width:
        return compact[:, compact.shape[1] - width:]
    pad = np.full((len(compact), width - compact.shape[1]), PAD, dtype=object)
    return np.concatenate([pad, compact], axis=1)


def _selection_records(history: Dict[str, List[float]]) -> List[Dict[str, float]]:
    """Per-epoch validation metrics (and losses) of a selection run, from its history."""
    records = []
    for e in range(len(history.get("val_" + SELECT_METRICS[0], []))):
        record = {"epoch": e + 1, **{m: float(history["val_" + m][e]) for m in SELECT_METRICS}}
        for key in ("example_loss", "val_example_loss"):
            if key in history:
                record[key] = float(history[key][e])
        records.append(record)
    return records


class TwoTowerRecommender:
    """The two-tower model (TFRS, `build_retrieval_model`) with the peers' fit/score interface
    and a public retrieval API (embeddings, top-k with exclusions, the towers).

    Args:
      config: a TwoTowerConfig (default: its defaults, chosen on ml-100k). A plain
        RetrievalConfig is taken as a TwoTowerConfig with its fields and the recommender's
        switches (use_genres, use_titles, select_metric) at their defaults. `epochs` is the
        most epochs the selection may train, `patience` the epochs without validation
        improvement before it stops; `batch_size`, `seed` and the tower/task fields are used
        as documented there.
      item_ids: the catalog: default item order of `score`, `candidate_embeddings` and
        `recommend` (usually `TopKEvaluator.item_ids`); default the fitted items, sorted.
      items: the dataset's items frame (genres and titles are read from it), or None.
      use_genres, use_titles, select_metric: when given, replace the config fields of the
        same name (`self.config` holds the result).
      text_vectors: an `ItemVectors` store or its folder; feeds `item_text_vector` to the
        candidate tower instead of learned titles.
      work_dir: folder for checkpoints (`selection/`, `final/`); a `fit` on the same folder and
        data resumes where it stopped. Default: a temporary folder removed after `fit`.
        Under a multi-worker strategy give every worker the same (shared) folder: only the
        chief writes into it, all of them resume from it.
      score_batch_size: users / items per tower call when scoring.
      strategy: tf.distribute strategy the models are built and trained under (default: the
        current one); `batch_size` is then the global batch over all replicas (under a
        ParameterServerStrategy, whose steps are asynchronous, the batch of each step).
      validation_evaluator: builds the evaluator of `fit`'s epoch choice, called as
        `validation_evaluator(train, validation, ks=(10, 50), candidate_items=...)` and
        returning an object with `item_ids` and `evaluate(score_fn).metrics` (e.g.
        `recommenders_tf.evaluation.protocol.TopKEvaluator`); needed only to fit with
        validation.

    Attributes (after fit):
      query_tower, candidate_tower, model: the final trained parts (under a
        ParameterServerStrategy, a copy on this machine of the model trained there).
      variable_shards: under a ParameterServerStrategy, {variable name: device of each shard}
        of the final model's variables split over the parameter servers (the embedding
        tables); {} otherwise.
      vocabularies: {"user_id", "item_id"[, "genre"][, "title_token"]} -> Vocabulary of the
        final model's training data.
      best_epoch: epochs chosen on validation (None without validation).
      selection: per-epoch validation metrics of the selection phase (of the chosen settings).
      search_steps: per searched field, the values tried with their validation metric and
        the one chosen; search_tries: every try (settings, epochs, metric, folder);
        search_users: the user sample the tries ran on. Also in `work_dir/search.json`.
      phase_results: {"selection", "final"} -> the `FitResult` of each phase that ran.
      input_shards: {"selection", "final"} -> examples per file of the phase's training
        input, when `config.input_shards` > 0 ({} otherwise).
      epochs_this_session: {"selection": n, "final": m} epochs trained by the last `fit` call
        (0 and 0 when it found both phases finished in `work_dir`).
      fit_seconds, examples_per_second, notes, epochs_trained.
    """

    name = "two-tower"
    task = "topk"

    def __init__(self, config: Optional[RetrievalConfig] = None, *,
                 item_ids: Optional[Iterable[str]] = None,
                 items: Optional[pd.DataFrame] = None, use_genres: Optional[bool] = None,
                 use_titles: Optional[bool] = None,
                 text_vectors: Union[ItemVectors, str, os.PathLike, None] = None,
                 select_metric: Optional[str] = None,
                 work_dir: Union[str, os.PathLike, None] = None,
                 score_batch_size: int = 1024,
                 strategy: Optional[tf.distribute.Strategy] = None,
                 validation_evaluator: Optional[Callable[..., Any]] = None):
        if config is None:
            config = TwoTowerConfig()
        elif not isinstance(config, TwoTowerConfig):
            config = TwoTowerConfig(**{f.name: getattr(config, f.name)
                                       for f in dataclasses.fields(RetrievalConfig)})
        overrides = {name: value for name, value in (("use_genres", use_genres),
                                                     ("use_titles", use_titles),
                                                     ("select_metric", select_metric))
                     if value is not None}
        # Re-validated by the dataclass, so a bad override fails here, not mid-fit.
        self.config: TwoTowerConfig = dataclasses.replace(config, **overrides)
        # `fit` with validation replaces `config` by the settings its search chose.
        self._declared = self.config
        self.search_tries: List[Dict[str, Any]] = []
        self.search_steps: List[Dict[str, Any]] = []
        self.strategy = strategy or tf.distribute.get_strategy()
        self.item_ids = None if item_ids is None else np.asarray(list(item_ids), dtype=object)
        if text_vectors is not None and not isinstance(text_vectors, ItemVectors):
            text_vectors = ItemVectors.load(text_vectors)
        self.item_features = ItemFeatureTable(
            items, self.config.use_genres, self.config.use_titles and text_vectors is None,
            text_vectors)
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.score_batch_size = int(score_batch_size)
        self.validation_evaluator = validation_evaluator
        self.notes = ""
        self.fit_seconds = 0.0
        self.examples_per_second: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.selection: List[Dict[str, float]] = []
        self.epochs_trained = 0
        self.phase_results: Dict[str, FitResult] = {}
        self.epochs_this_session = {SELECTION_DIR: 0, FINAL_DIR: 0}
        self._fitted: Optional[_Fitted] = None
        self._candidate_cache = None
        self.variable_shards: Dict[str, List[str]] = {}
        self.input_shards: Dict[str, List[int]] = {}

    @classmethod
    def for_dataset(cls, data, item_ids: Optional[Iterable[str]] = None, seed: int = 0,
                    validation_evaluator: Optional[Callable[..., Any]] = None,
                    **overrides) -> "TwoTowerRecommender":
        """The default model for a `RecDataset`: TwoTowerConfig defaults (+ `overrides`), with
        the genre branch on only when the items frame has genres.

        This is the factory a benchmark uses: `for_dataset(data, item_ids, seed=config.seed,
        validation_evaluator=TopKEvaluator)`.
        """
        items = getattr(data, "items", None)
        has_genres = items is not None and GENRES in items.columns
        values = {"seed": seed, "verbose": 0, "use_genres": has_genres, **overrides}
        return cls(TwoTowerConfig(**values), item_ids=item_ids, items=items,
                   validation_evaluator=validation_evaluator)

    @property
    def select_metric(self) -> str:
        return self.config.select_metric

    # ---- public retrieval API ----------------------------------------------------------------

    @property
    def model(self):
        """The final trained `RetrievalModel` (both towers and the task)."""
        return self._require_fitted().model

    @property
    def query_tower(self) -> tf.keras.Model:
        """The trained query tower: {"user_id" [B], "history" [B, N]} -> [B, d]."""
        return self._require_fitted().model.query_tower

    @property
    def candidate_tower(self) -> tf.keras.Model:
        """The trained candidate tower: `candidate_feature_spec()` features -> [B, d]."""
        return self._require_fitted().model.candidate_tower

    @property
    def vocabularies(self) -> Dict[str, Vocabulary]:
        return self._require_fitted().vocabularies

    @property
    def catalog(self) -> np.ndarray:
        """Default item order of `score`, `candidate_embeddings` and `recommend`: the
        `item_ids` given at construction, else the items the model was fitted on, sorted."""
        if self.item_ids is not None:
            return self.item_ids
        return np.sort(np.asarray(self._require_fitted().vocabularies[ITEM_ID].tokens,
                                  dtype=object))

    def query_feature_spec(self) -> Dict[str, tf.TensorSpec]:
        spec = {USER_ID: tf.TensorSpec([None], tf.string, name=USER_ID)}
        if self.config.history_len > 0:
            spec["history"] = tf.TensorSpec([None, None], tf.string, name="history")
        return spec

    def candidate_feature_spec(self) -> Dict[str, tf.TensorSpec]:
        return self.item_features.feature_spec()

    def candidate_embeddings(self, item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Candidate-tower embeddings, float32 [n, embedding_dim], rows in `item_ids` order.

        Args:
          item_ids: the items (any ids: an item the model was not fitted on is embedded from
            its features); default `catalog`.
        """
        fitted = self._require_fitted()
        items = self.catalog if item_ids is None else item_ids
        return self._candidates(fitted, items).copy()

    def query_embeddings(self, user_ids: Sequence[str],
                         histories: Optional[Any] = None) -> np.ndarray:
        """Query-tower embeddings, float32 [U, embedding_dim], rows in `user_ids` order.

        Args:
          user_ids: users [U]; an unknown user gets the OOV user embedding.
          histories: optional item ids per user, most recent last: a [U, N] array or U lists
            (of any lengths). "" is padding wherever it is; only the last `history_len` real
            ids count. Default: each user's most recent items in the fitted data (none for an
            unknown user).
        """
        fitted = self._require_fitted()
        users = _as_ids(user_ids)
        if histories is None:
            return self._embed(fitted.model.query_tower,
                               self._query_features(fitted.histories, users))
        return self._queries(fitted, users, _id_rows(histories, len(users), "histories"))

    def recommend(self, user_ids: Sequence[str], k: int = 10, *,
                  exclude: Union[str, Any, None] = EXCLUDE_SEEN,
                  item_ids: Optional[Iterable[str]] = None,
                  histories: Optional[Any] = None) -> TopK:
        """The k best items per user by score (query · candidate), best first.

        Ties are broken by position in `item_ids` (lower first), as `TopKEvaluator` does.

        Args:
          user_ids: users [U].
          k: list length.
          exclude: items never to recommend: "seen" (default), every item the user has in
            the data of the final fit; None, nothing; or item ids per user ([U, W] array or
            U lists; "" and ids outside `item_ids` are ignored).
          item_ids: the items to rank (distinct); default `catalog`.
          histories: as for `query_embeddings`.

        Returns:
          TopK(ids [U, k] object, scores [U, k] float64).
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        fitted = self._require_fitted()
        users = _as_ids(user_ids)
        items = _as_ids(self.catalog if item_ids is None else item_ids)
        if pd.Index(items).has_duplicates:
            raise ValueError("recommend: item_ids has duplicates")
        history = None if histories is None else _id_rows(histories, len(users), "histories")
        rows, cols = self._excluded(fitted, users, items, exclude)
        candidates = self._candidates(fitted, items).astype(np.float64)
        ids = np.full((len(users), k), PAD, dtype=object)
        scores = np.full((len(users), k), -np.inf)
        for start in range(0, len(users), self.score_batch_size):
            stop = min(start + self.score_batch_size, len(users))
            if history is None:
                queries = self._embed(fitted.model.query_tower,
                                      self._query_features(fitted.histories, users[start:stop]))
            else:
                queries = self._queries(fitted, users[start:stop], history[start:stop])
            batch = queries.astype(np.float64) @ candidates.T
            lo, hi = np.searchsorted(rows, [start, stop])
            batch[rows[lo:hi] - start, cols[lo:hi]] = -np.inf
            # top_k puts the lower index first among equal values.
            best, top = tf.math.top_k(batch, k=min(k, len(items)))
            best, top = best.numpy(), top.numpy()
            found = np.isfinite(best)
            width = best.shape[1]
            ids[start:stop, :width] = np.where(found, items[top], PAD)
            scores[start:stop, :width] = np.where(found, best, -np.inf)
        return TopK(ids, scores)

    def query_features(self, user_ids: Sequence[str],
                       histories: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Query-tower inputs of users: id and most recent fitted items ("" padded, left).

        `histories` is a `user_history` table ({"user_id", "history"}) to read instead of the
        fitted one.
        """
        fitted = self._require_fitted()
        return self._query_features(fitted.histories if histories is None else histories,
                                    user_ids)

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Float scores [len(user_ids), len(item_ids)] (query · candidate), higher is better.

        Args:
          user_ids: users to score.
          item_ids: column order; default `catalog`.
        """
        fitted = self._require_fitted()
        return self._score(fitted, user_ids, self.catalog if item_ids is None else item_ids)

    # ---- fit ---------------------------------------------------------------------------------

    def _vocabularies(self, train: pd.DataFrame) -> Dict[str, Vocabulary]:
        vocabs = build_vocabularies(train, (USER_ID, ITEM_ID))
        train_items = vocabs[ITEM_ID].tokens
        table = self.item_features(train_items)
        if self.item_features.use_genres:
            labels = [g for cell in table["item_genres"] for g in str(cell).split("|") if g]
            vocabs["genre"] = Vocabulary.from_values(labels, name="genre")
        if self.item_features.use_titles:
            vocabs["title_token"] = Vocabulary.from_values(title_tokens(table["item_title"]),
                                                           name="title_token")
        self.item_features.check_covers(train_items, "train")
        return vocabs

    def _build(self, vocabs: Dict[str, Vocabulary],
               strategy: Optional[tf.distribute.Strategy] = None):
        def tokens_or_none(name):
            # An empty vocabulary (no item has a genre) means the branch has nothing to learn.
            return vocabs[name].tokens if name in vocabs and len(vocabs[name]) else None

        tv = self.item_features.text_vectors
        with (strategy or self.strategy).scope():
            return build_retrieval_model(
                self.config, vocabs[USER_ID], vocabs[ITEM_ID], vocabs[ITEM_ID].counts,
                genre_vocab=tokens_or_none("genre"), title_vocab=tokens_or_none("title_token"),
                text_vector_dim=None if tv is None else tv.dim)

    def _datasets(self, train, validation, run_dir: Optional[Path] = None):
        """(train dataset, validation dataset or None, `fit_model` keyword arguments)."""
        cfg = self.config
        fit_kwargs: Dict[str, Any] = {"examples_per_epoch": len(train)}
        if cfg.input_shards > 0:
            train_ds, fit_kwargs = self._sharded_input(train, run_dir)
        else:
            train_ds = retrieval_dataset(train, None, cfg.history_len, self.item_features,
                                         cfg.batch_size, shuffle=True, seed=cfg.seed)
        val_ds = None
        if validation is not None:
            val_ds = retrieval_dataset(validation, train, cfg.history_len, self.item_features,
                                       cfg.batch_size, shuffle=False, seed=cfg.seed)
        return train_ds, val_ds, fit_kwargs

    def _sharded_input(self, train: pd.DataFrame, run_dir: Path):
        """The phase's training examples as files under `run_dir/examples`, read back."""
        cfg = self.config
        folder = run_dir / EXAMPLES_DIR
        if is_chief(self.strategy):
            write_example_shards(train, None, cfg.history_len, self.item_features, folder,
                                 cfg.input_shards)
        # The other workers read the chief's files: none may open them half-written.
        barrier(self.strategy)
        manifest = read_manifest(folder)
        if manifest is None or manifest["num_examples"] != len(train):
            raise ValueError(f"TwoTowerRecommender: the chief's example files in {folder} "
                             f"are missing or hold other data; under a multi-worker strategy "
                             "give every worker the same (shared) work_dir")
        self.input_shards[run_dir.name] = list(manifest["examples_per_shard"])
        train_ds = read_example_shards(folder, cfg.batch_size, shuffle=True, seed=cfg.seed)
        fit_kwargs: Dict[str, Any] = {"examples_per_epoch": int(manifest["num_examples"])}
        if num_workers(self.strategy) > 1:
            fit_kwargs["input_fn"] = lambda context: read_example_shards(
                folder, cfg.batch_size, shuffle=True, seed=cfg.seed, input_context=context,
                repeat=True)
        return train_ds, fit_kwargs

    def _histories(self, interactions: pd.DataFrame) -> Dict[str, np.ndarray]:
        if self.config.history_len < 1:
            return {}
        return user_history(interactions, self.config.history_len)

    def _select_epochs(self, train: pd.DataFrame, validation: pd.DataFrame, run_dir: Path,
                       candidates: Optional[Sequence[str]] = None) -> int:
        """Trains on `train`, ranking the catalog (or `candidates`) for `validation` after
        every epoch; returns the epoch `fit_model`'s early stopping found best."""
        cfg = self.config
        vocabs = self._vocabularies(train)
        model = self._build(vocabs)
        fitted = _Fitted(model, vocabs, self._histories(train), None)
        train_ds, val_ds, fit_kwargs = self._datasets(train, validation, run_dir)
        vusers = validation[USER_ID].astype(str)
        ranked, self.validation_users = sample_users(vusers, cfg.max_validation_users, cfg.seed)
        if self.validation_users["sampled"] < self.validation_users["of"]:
            validation = validation[vusers.isin(ranked).to_numpy()]
        evaluator = self.validation_evaluator(train, validation, ks=(10, 50),
                                              candidate_items=candidates)
        ranking = ValidationMetrics(
            lambda: evaluator.evaluate(self._scorer(fitted, evaluator.item_ids)).metrics,
            SELECT_METRICS, log=(lambda line: print(line, flush=True)) if cfg.verbose else None)
        # The selection's weights are dropped for the refit: nothing to restore.
        config = dataclasses.replace(cfg, monitor="val_" + cfg.select_metric,
                                     monitor_mode="max", restore_best=False)
        result = fit_model(model, train_ds, val_ds, config, str(run_dir), strategy=self.strategy,
                           metric_callbacks=[ranking], **fit_kwargs)
        self.phase_results[SELECTION_DIR] = result
        self.epochs_this_session[SELECTION_DIR] = result.epochs_done - result.initial_epoch
        self.selection = _selection_records(result.history)
        best = result.best_epoch
        if best is None:  # no finite validation value at all: fewer epochs win
            best = 1
        # Every worker computes the same records from the same synchronised weights.
        if is_chief(self.strategy):
            write_json(run_dir / SELECTION_FILE, {"metric": cfg.select_metric,
                                                  "best_epoch": best, "epochs": self.selection,
                                                  "validation_users": self.validation_users})
        return best

    def _search(self, train: pd.DataFrame, validation: pd.DataFrame, work: Path,
                candidates: Optional[Sequence[str]]) -> int:
        """Chooses `config.search`'s settings and the epochs on `validation`; leaves
        `self.config` at the chosen settings (and `self.selection` at their epochs) and returns
        the chosen epochs. The declared config is tried first, in `work/selection` (in
        `work/search/0-declared` when the tries run on a user sample: `work/selection` then
        holds the chosen settings' epoch selection on all the data)."""
        declared = self.config
        metric = declared.select_metric
        tries: List[Dict[str, Any]] = []
        # At scale the tries learn and rank on a seeded sample of users; the chosen settings
        # then choose their epochs on all of the data (below).
        users = train[USER_ID].astype(str)
        cap = declared.search_max_users if declared.search else 0
        kept, self.search_users = sample_users(users, cap, declared.seed)
        sampled = self.search_users["sampled"] < self.search_users["of"]
        part_train, part_val = train, validation
        if sampled:
            part_train = train[users.isin(kept).to_numpy()]
            part_val = validation[validation[USER_ID].astype(str).isin(kept).to_numpy()]

        def attempt(cfg: TwoTowerConfig, run_dir: Path) -> Dict[str, Any]:
            self.config = cfg
            epochs = self._select_epochs(part_train, part_val, run_dir, candidates)
            record = {"settings": {n: getattr(cfg, n) for n in declared.search},
                      "best_epoch": epochs, metric: self.selection[epochs - 1][metric]
                      if self.selection else float("-inf"),
                      "run_dir": str(run_dir.relative_to(work)), "config": cfg,
                      "selection": self.selection,
                      "result": self.phase_results[SELECTION_DIR]}
            tries.append(record)
            return record

        best = attempt(declared, work / SEARCH_DIR / "0-declared" if sampled
                       else work / SELECTION_DIR)
        steps: List[Dict[str, Any]] = []
        for name, values in declared.search.items():
            start = best["config"]
            step = {"field": name, "tried": [[getattr(start, name), best[metric]]]}
            for value in values:
                if value == getattr(start, name):
                    continue
                label = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{len(tries)}-{name}={value}")
                record = attempt(dataclasses.replace(start, **{name: value}),
                                 work / SEARCH_DIR / label)
                step["tried"].append([value, record[metric]])
                if record[metric] > best[metric] * (1.0 + declared.search_min_gain):
                    best = record
            step["chosen"] = getattr(best["config"], name)
            steps.append(step)
        self.search_steps = steps
        self.config = best["config"]
        self.selection = best["selection"]
        self.phase_results[SELECTION_DIR] = best["result"]
        best_epoch = best["best_epoch"]
        trained = sum(t["result"].epochs_done - t["result"].initial_epoch for t in tries)
        if sampled:
            best_epoch = self._select_epochs(train, validation, work / SELECTION_DIR, candidates)
            trained += self.epochs_this_session[SELECTION_DIR]
        self.epochs_this_session[SELECTION_DIR] = trained
        self.search_tries = [{k: v for k, v in t.items() if k not in ("config", "result")}
                             for t in tries]
        if declared.search and is_chief(self.strategy):
            write_json(work / SEARCH_FILE, {
                "metric": metric, "declared": {n: getattr(declared, n) for n in declared.search},
                "grid": declared.search, "chosen": best["settings"], "steps": steps,
                "users": self.search_users, "best_epoch": best_epoch,
                "tries": [{k: v for k, v in t.items() if k != "selection"}
                          for t in self.search_tries]})
        return best_epoch

    def fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame] = None,
            validation_candidates: Optional[Iterable[str]] = None) -> "TwoTowerRecommender":
        """Chooses the number of epochs on `validation` (if given), then refits on everything.

        Args:
          train: interactions to learn from (canonical schema).
          validation: held-out interactions that follow `train` in time (e.g.
            `validation_split(train).test`); used to choose the number of epochs, then
            folded into the final fit.
          validation_candidates: rank only these items for the validation users (a P3-style
            cold-item validation: `cold_item_split(train)`'s held-out items, which are absent
            from `train`); default every train item.
        """
        check_frame(train, "train", [USER_ID, ITEM_ID, TIMESTAMP])
        if validation is not None:
            check_frame(validation, "validation", [USER_ID, ITEM_ID, TIMESTAMP])
            if self.validation_evaluator is None:
                raise ValueError("TwoTowerRecommender: fitting with validation needs "
                                 "validation_evaluator= (e.g. TopKEvaluator from "
                                 "recommenders_tf.evaluation.protocol); or fit without "
                                 "validation")
        if self.config.input_shards > 0 and uses_parameter_servers(self.strategy):
            raise ValueError("TwoTowerRecommender: input_shards > 0 is not supported under a "
                             "ParameterServerStrategy yet (its workers all read input "
                             "pipeline 0); use input_shards=0 there")
        start = time.perf_counter()
        self.selection, self.best_epoch = [], None
        self.search_tries, self.search_steps = [], []
        self.search_users: Optional[Dict[str, int]] = None
        # A refit of the same object starts from the declared settings, not the last choice.
        self.config = self._declared
        self.validation_users: Optional[Dict[str, int]] = None
        self.phase_results = {}
        self.input_shards = {}
        self.epochs_this_session = {SELECTION_DIR: 0, FINAL_DIR: 0}
        temp = None
        work = self.work_dir
        if work is None:
            temp = work = Path(tempfile.mkdtemp(prefix="two_tower_"))
        try:
            if validation is not None:
                candidates = (None if validation_candidates is None
                              else [str(i) for i in validation_candidates])
                self.best_epoch = self._search(train, validation, work, candidates)
                data = pd.concat([train, validation], ignore_index=True)
                epochs = self.best_epoch
            else:
                data, epochs = train, self.config.epochs
            self._fitted = self._fit_final(data, epochs, work / FINAL_DIR)
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)
        self.fit_seconds = time.perf_counter() - start
        self._set_notes(validation is not None)
        return self

    def _fit_final(self, data: pd.DataFrame, epochs: int, run_dir: Path) -> _Fitted:
        vocabs = self._vocabularies(data)
        model = self._build(vocabs)
        train_ds, _, fit_kwargs = self._datasets(data, None, run_dir)
        config = dataclasses.replace(self.config, epochs=epochs, patience=0, restore_best=False,
                                     monitor="example_loss")
        result = fit_model(model, train_ds, None, config, str(run_dir), strategy=self.strategy,
                           **fit_kwargs)
        if uses_parameter_servers(self.strategy):
            batch = next(iter(train_ds.take(1)))
            # A resumed run that trained nothing has not created every variable yet (they take
            # their checkpointed values as they are created, on the parameter servers).
            with self.strategy.scope():
                model(batch, training=False)
            self.variable_shards = variable_shards(model)
            # Scored and exported as a copy on the coordinator: a tower traced over sharded
            # variables does not survive a SavedModel round trip (see `copy_variables`), and
            # scoring no longer fetches every table from the parameter servers per batch.
            local = self._build(vocabs, tf.distribute.get_strategy())
            local(batch, training=False)
            copy_variables(model, local)
            model = local
        self._candidate_cache = None
        self.epochs_this_session[FINAL_DIR] = result.epochs_done - result.initial_epoch
        self.epochs_trained = result.epochs_done
        self.phase_results[FINAL_DIR] = result
        self.examples_per_second = (result.examples_per_second
                                    or result.first_epoch_examples_per_second)
        selection = self.phase_results.get(SELECTION_DIR)
        if self.examples_per_second is None and selection is not None:
            # A resumed final phase trains nothing; report the selection phase's throughput.
            self.examples_per_second = selection.examples_per_second
        seen = data[[USER_ID, ITEM_ID]].astype(str).drop_duplicates()
        return _Fitted(model, vocabs, self._histories(data), result, seen)

    def _set_notes(self, validated: bool) -> None:
        cfg = self.config
        parts = [f"dim={cfg.embedding_dim}", f"temperature={cfg.temperature}",
                 f"logQ={'on' if cfg.logq_correction else 'off'}",
                 f"history={cfg.history_len} {cfg.history_pooling}",
                 f"hidden={list(cfg.hidden_dims)}", f"{cfg.optimizer} lr={cfg.learning_rate}",
                 f"batch={cfg.batch_size}", f"user_id_dropout={cfg.user_id_dropout}"]
        if cfg.item_id_dropout > 0:
            parts.append(f"item_id_dropout={cfg.item_id_dropout}")
        feats = [n for n in self.item_features.names if n != ITEM_ID]
        parts.append("item features: " + (", ".join(feats) or "id only"))
        if validated and self.search_steps:
            parts.append(f"chosen on validation by {self.select_metric}, one field at a time: "
                         + "; ".join(f"{s['field']} " + ", ".join(
                             f"{v}: {score:.4f}" for v, score in s["tried"])
                             + f" -> {s['chosen']}" for s in self.search_steps)
                         + self._search_sample_note())
        if validated:
            best = self.selection[self.best_epoch - 1]
            parts.append(f"epochs={self.best_epoch} chosen on validation by "
                         f"{self.select_metric}={best[self.select_metric]:.4f} "
                         f"(of {len(self.selection)} tried, ranking for "
                         f"{self.validation_users['sampled']} of "
                         f"{self.validation_users['of']} validation users); refit on "
                         "train+validation")
        else:
            parts.append(f"epochs={self.epochs_trained} (no validation)")
        self.notes = "; ".join(parts)

    def _search_sample_note(self) -> str:
        users = self.search_users or {}
        if users.get("sampled", 0) >= users.get("of", 0):
            return ""
        return (f" (tries on {users['sampled']} of {users['of']} train users, seed "
                f"{users['seed']}; epochs then chosen on all)")

    # ---- private helpers of the public API ---------------------------------------------------

    def _require_fitted(self) -> _Fitted:
        if self._fitted is None:
            raise RuntimeError("TwoTowerRecommender: call fit() first")
        return self._fitted

    def _query_features(self, histories, user_ids) -> Dict[str, np.ndarray]:
        users = _as_ids(user_ids)
        out = {USER_ID: users}
        if self.config.history_len > 0:
            index = pd.Index(histories[USER_ID].astype(object))
            pos = index.get_indexer(users)
            history = np.full((len(users), self.config.history_len), PAD, dtype=object)
            known = pos >= 0
            history[known] = histories["history"][pos[known]]
            out["history"] = history
        return out

    def _queries(self, fitted: _Fitted, users: np.ndarray, histories: np.ndarray) -> np.ndarray:
        """Query embeddings of `users` with explicit histories ([U, N] str, "" padding)."""
        features = {USER_ID: users}
        if self.config.history_len > 0:
            features["history"] = _recent_items(histories, self.config.history_len)
        return self._embed(fitted.model.query_tower, features)

    def _embed(self, tower, features: Dict[str, np.ndarray]) -> np.ndarray:
        n = len(features[next(iter(features))])
        parts = []
        for start in range(0, n, self.score_batch_size):
            batch = {k: tf.constant(v[start:start + self.score_batch_size])
                     for k, v in features.items()}
            parts.append(tower(batch, training=False).numpy())
        dim = self.config.embedding_dim
        return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

    def _candidates(self, fitted: _Fitted, item_ids: Iterable[str]) -> np.ndarray:
        """Candidate embeddings of `item_ids`, cached for the last (model, item list) asked."""
        items = _as_ids(item_ids)
        cached = self._candidate_cache
        if cached is not None and cached[0] is fitted and np.array_equal(cached[1], items):
            return cached[2]
        emb = self._embed(fitted.model.candidate_tower, self.item_features(items))
        self._candidate_cache = (fitted, items, emb)
        return emb

    def _scorer(self, fitted: _Fitted, item_ids: Iterable[str]
                ) -> Callable[[Sequence[str]], np.ndarray]:
        """A score function over `item_ids` for the towers' current weights, bypassing the
        cache: the selection calls it after every epoch, when the weights have moved."""
        candidates = self._embed(fitted.model.candidate_tower,
                                 self.item_features(_as_ids(item_ids))).astype(np.float64)

        def score(user_ids: Sequence[str]) -> np.ndarray:
            queries = self._embed(fitted.model.query_tower,
                                  self._query_features(fitted.histories, user_ids))
            return queries.astype(np.float64) @ candidates.T

        return score

    def _score(self, fitted: _Fitted, user_ids, item_ids) -> np.ndarray:
        candidates = self._candidates(fitted, item_ids)
        queries = self._embed(fitted.model.query_tower,
                              self._query_features(fitted.histories, user_ids))
        return queries.astype(np.float64) @ candidates.astype(np.float64).T

    def _excluded(self, fitted: _Fitted, users: np.ndarray, items: np.ndarray,
                  exclude) -> Tuple[np.ndarray, np.ndarray]:
        """(row, column) positions of the user-item pairs `recommend` must not return, sorted
        by row so a batch of rows is one contiguous slice."""
        if exclude is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if isinstance(exclude, str):
            if exclude != EXCLUDE_SEEN:
                raise ValueError(f"exclude must be {EXCLUDE_SEEN!r}, None or item ids per user, "
                                 f"got {exclude!r}")
            if fitted.seen is None:
                raise ValueError("this model keeps no fitted interactions to exclude; pass "
                                 "exclude=None or explicit item ids")
            pairs = pd.DataFrame({"row": np.arange(len(users)), USER_ID: users}).merge(
                fitted.seen, on=USER_ID)
            rows, ids = pairs["row"].to_numpy(np.int64), pairs[ITEM_ID].to_numpy(dtype=object)
        else:
            matrix = _id_rows(exclude, len(users), "exclude")
            rows = np.repeat(np.arange(len(users), dtype=np.int64), matrix.shape[1])
            ids = matrix.ravel()
        cols = pd.Index(items).get_indexer(ids)
        keep = cols >= 0  # "" and ids outside the ranked items exclude nothing
        rows, cols = rows[keep], cols[keep]
        order = np.argsort(rows, kind="stable")
        return rows[order], cols[order]
