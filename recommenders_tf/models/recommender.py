"""`TwoTowerRecommender`: the project's two-tower retrieval model behind the peers' interface.

It has the `fit(train, validation=None)` / `score(user_ids, item_ids)` interface of the top-K
peers in `recommenders_tf.evaluation.peers`, so a benchmark runs it side by side with them.

What `fit` does (the honest-tuning convention of the `implicit` peers):
  1. Epoch selection, when `validation` is given: vocabularies from `train` only, a model
     trained one epoch at a time; after every epoch the full train catalog is ranked for the
     validation users (their train items excluded) by `TopKEvaluator`, and NDCG@10 (the
     `select_metric`) is recorded. Training stops after `patience` epochs without improvement
     (or at `config.epochs`); the best epoch is the one with the highest validation NDCG@10.
  2. Refit: a fresh model, with vocabularies from train + validation, trained for the chosen
     number of epochs on train + validation with no further look at any held-out data.
     This is what the peers do with their chosen setting, so every model in a benchmark
     is finally fitted on the same interactions.
  Without `validation`, one model is trained on `train` for `config.epochs` epochs.
  Test data is never an argument of `fit`, so it cannot reach the model.

Scoring: the query embedding of a user is the query tower over their id and their
`history_len` most recent interactions of the fitted data (`user_history`), the candidate
embedding of an item the candidate tower over its id and features (genres, title, text vector
from an `ItemVectors` store); the score is their dot product. Users unknown to the model get the
OOV user embedding and an empty history; items are always scored by the candidate tower (with
content features an unseen item still gets a meaningful embedding).

Cold items: with `zero_oov_item_id` (default on) an item id the vocabulary does not know
contributes a zero vector instead of the untrained OOV-bucket embedding, so a new item is
represented by its content (text vector, genres) alone; `item_id_dropout` zeroes the id part of
that share of training examples, so the content path is trained to carry an item on its own
(the "text-enhanced" two-tower of P3 uses both).

The defaults of `TwoTowerConfig` were chosen on the validation slice of the MovieLens 100K
P1 train split only; see configs/retrieval_ml100k.yaml for the search and the figures.

Example:
  >>> rec = TwoTowerRecommender(TwoTowerConfig(), items=data.items)
  >>> rec.fit(val.train, validation=val.test)
  >>> scores = rec.score(["1", "2"], evaluator.item_ids)   # [2, n_items]
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data.datasets import PAD, previous_items, shard_by_data, user_history
from recommenders_tf.data.schema import GENRES, ITEM_ID, TIMESTAMP, TITLE, USER_ID
from recommenders_tf.evaluation.protocol import TopKEvaluator, check_frame
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.features.vocab import Vocabulary, build_vocabularies
from recommenders_tf.models.distribute import is_chief
from recommenders_tf.models.retrieval import RetrievalConfig, build_retrieval_model
from recommenders_tf.models.training import fit_model

SELECTION_DIR = "selection"
FINAL_DIR = "final"
SELECTION_FILE = "selection.json"
# Keras TextVectorization's default standardisation, so the title vocabulary built here is
# tokenised exactly as the title tower tokenises at run time.
_STRIP_PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
SELECT_METRICS = ("ndcg@10", "recall@10", "recall@50")


@dataclasses.dataclass
class TwoTowerConfig(RetrievalConfig):
    """A RetrievalConfig whose defaults were chosen on the ml-100k validation slice, plus the
    recommender's own switches.

    The tower, task and training fields are documented on `RetrievalConfig` and its parents;
    only their defaults differ (see configs/retrieval_ml100k.yaml for how they were chosen).
    `epochs` caps the epoch selection and `patience` / `min_delta` drive its stopping on
    `select_metric`; `monitor`, `monitor_mode` and `restore_best` play no part in choosing the
    model (the selection watches the validation ranking, not the loss).

    Args:
      use_genres: feed `item_genres` to the candidate tower (needs a `genres` items column).
      use_titles: feed `item_title` to a learned bag-of-title-tokens encoder (needs `title`);
        ignored when item text vectors are given.
      select_metric: validation metric ("ndcg@10", "recall@10" or "recall@50") that the
        epoch selection maximises.
      item_id_dropout: share of training examples whose candidate item-id embedding is zeroed
        (`ColdStartItemId`), so the content features learn to represent an item on their own.
      zero_oov_item_id: an item id outside the vocabulary (a cold item) contributes a zero id
        embedding to the candidate tower instead of the shared, untrained OOV-bucket vector.
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
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    batch_size: int = 512
    epochs: int = 20
    patience: int = 3
    use_genres: bool = True
    use_titles: bool = False
    select_metric: str = "ndcg@10"
    item_id_dropout: float = 0.0
    zero_oov_item_id: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"TwoTowerConfig.select_metric must be one of {SELECT_METRICS}, "
                             f"got {self.select_metric!r}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ValueError(f"TwoTowerConfig.item_id_dropout must be in [0, 1), "
                             f"got {self.item_id_dropout!r}")


class ColdStartItemId(tf.keras.layers.Layer):
    """The candidate tower's view of the shared item-id embedding, made safe for cold items.

    Wraps an `ItemIdEmbedding` (still shared with the query tower's history, which is not
    affected). Ids that map to the mask slot or an OOV bucket get a zero vector: the OOV row is
    never trained (every train item is in the vocabulary), so using it would add the same
    meaningless vector to every cold item. In training, each example's id vector is also
    zeroed with probability `dropout`, so the rest of the tower learns a content-only path.

    Args:
      inner: the shared ItemIdEmbedding.
      num_oov: its OOV buckets (ids 1..num_oov after the mask slot 0).
      dropout: per-example probability of zeroing the id vector in training.
      zero_oov: zero the vector of unknown ids.
    """

    def __init__(self, inner, num_oov: int = 1, dropout: float = 0.0, zero_oov: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.num_oov = int(num_oov)
        self.dropout = float(dropout)
        self.zero_oov = bool(zero_oov)

    def call(self, item_ids: tf.Tensor, training=None) -> tf.Tensor:
        vectors = self.inner(item_ids)
        keep = tf.ones(tf.shape(item_ids), dtype=vectors.dtype)
        if self.zero_oov:
            known = self.inner.lookup(item_ids) > self.num_oov
            keep = keep * tf.cast(known, vectors.dtype)
        if training and self.dropout > 0:
            draw = tf.random.uniform(tf.shape(item_ids), dtype=vectors.dtype)
            keep = keep * tf.cast(draw >= self.dropout, vectors.dtype)
        return vectors * keep[..., None]


def title_tokens(titles: Iterable[str]) -> List[str]:
    """Title tokens, standardised like the title tower (lower case, ASCII punctuation removed)."""
    titles = [str(t) for t in titles]
    if not titles:
        return []
    clean = tf.strings.regex_replace(tf.strings.lower(tf.constant(titles)), _STRIP_PUNCTUATION, "")
    return [t.decode("utf-8") for t in tf.strings.split(clean).flat_values.numpy()]


class ItemFeatureTable:
    """Raw candidate-tower features of any item id, from the items frame and a text store.

    Args:
      items: items frame with `item_id` and optionally `genres` / `title`; may be None.
      use_genres: emit `item_genres` ('|'-joined labels, "" when unknown).
      use_titles: emit `item_title` ("" when unknown).
      text_vectors: an `ItemVectors` store; emits `item_text_vector` (zeros when unknown).
    """

    def __init__(self, items: Optional[pd.DataFrame], use_genres: bool, use_titles: bool,
                 text_vectors: Optional[ItemVectors] = None):
        self.use_genres, self.use_titles = use_genres, use_titles
        self.text_vectors = text_vectors
        self._genres = self._column(items, GENRES) if use_genres else None
        self._titles = self._column(items, TITLE) if use_titles else None

    @staticmethod
    def _column(items: Optional[pd.DataFrame], column: str) -> pd.Series:
        if items is None or column not in items.columns:
            have = "no items frame" if items is None else f"columns {list(items.columns)}"
            raise ValueError(f"item feature {column!r} was asked for but the items frame has "
                             f"no such column ({have}); switch it off or give an items frame")
        check_frame(items, "items", [ITEM_ID])
        values = pd.Series(items[column].fillna("").astype(str).to_numpy(dtype=object),
                           index=items[ITEM_ID].astype(str).to_numpy())
        return values[~values.index.duplicated()]

    @property
    def names(self) -> List[str]:
        """Feature names the candidate tower reads, item_id first."""
        names = [ITEM_ID]
        if self.use_genres:
            names.append("item_genres")
        if self.use_titles:
            names.append("item_title")
        if self.text_vectors is not None:
            names.append("item_text_vector")
        return names

    def feature_spec(self) -> Dict[str, tf.TensorSpec]:
        """TensorSpecs of the candidate features, for saving the candidate tower."""
        spec = {name: tf.TensorSpec([None], tf.string, name=name) for name in self.names
                if name != "item_text_vector"}
        if self.text_vectors is not None:
            spec["item_text_vector"] = tf.TensorSpec([None, self.text_vectors.dim], tf.float32,
                                                     name="item_text_vector")
        return spec

    def __call__(self, item_ids: Sequence[str]) -> Dict[str, np.ndarray]:
        ids = np.asarray([str(i) for i in item_ids], dtype=object)
        out: Dict[str, np.ndarray] = {ITEM_ID: ids}
        if self.use_genres:
            out["item_genres"] = self._genres.reindex(ids).fillna("").to_numpy(dtype=object)
        if self.use_titles:
            out["item_title"] = self._titles.reindex(ids).fillna("").to_numpy(dtype=object)
        if self.text_vectors is not None:
            out["item_text_vector"] = self.text_vectors.lookup(ids)[0]
        return out

    def check_covers(self, item_ids: Sequence[str], what: str) -> None:
        """Every trained item must have a text vector: a zero vector would be silently wrong."""
        if self.text_vectors is None:
            return
        missing = np.flatnonzero(self.text_vectors.positions(item_ids) < 0)
        if missing.size:
            raise ValueError(f"the item text vector store has no vector for {missing.size} "
                             f"{what} item(s), e.g. {[item_ids[i] for i in missing[:5]]}; "
                             "re-run pipelines.embed_items on this dataset")


def _pointwise(interactions: pd.DataFrame, context: Optional[pd.DataFrame], history_len: int,
               item_features: ItemFeatureTable, batch_size: int, shuffle: bool,
               seed: int) -> tf.data.Dataset:
    """One example per row of `interactions`, its history drawn from `context` + itself.

    The validation rows' histories must include the user's train items, so histories are
    computed over the concatenation and only the rows of `interactions` are kept.
    """
    frame = interactions if context is None else pd.concat([context, interactions],
                                                           ignore_index=True)
    features = item_features(interactions[ITEM_ID].to_numpy())
    features[USER_ID] = interactions[USER_ID].astype(str).to_numpy(dtype=object)
    if history_len > 0:
        history, mask = previous_items(frame, history_len)
        features["history"] = history[len(frame) - len(interactions):]
        features["history_mask"] = mask[len(frame) - len(interactions):]
    ds = tf.data.Dataset.from_tensor_slices(features)
    if shuffle:
        ds = ds.shuffle(max(1, len(interactions)), seed=seed, reshuffle_each_iteration=True)
    return shard_by_data(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclasses.dataclass
class _Fitted:
    """One trained model with what is needed to score with it."""

    model: Any
    vocabularies: Dict[str, Vocabulary]
    histories: Dict[str, np.ndarray]
    fit_result: Any


class TwoTowerRecommender:
    """The two-tower model (TFRS, `build_retrieval_model`) with the peers' fit/score interface.

    Args:
      config: a TwoTowerConfig (default: its defaults, chosen on ml-100k) or a plain
        RetrievalConfig. `epochs` is the most epochs the selection may train, `patience` the
        epochs without validation improvement before it stops; `batch_size`, `seed` and the
        tower/task fields are used as documented there.
      item_ids: default column order of `score` (usually `TopKEvaluator.item_ids`).
      items: the dataset's items frame (genres and titles are read from it), or None.
      use_genres, use_titles, select_metric: override the TwoTowerConfig fields of the same
        name (for a plain RetrievalConfig the defaults are True, False, "ndcg@10").
      text_vectors: an `ItemVectors` store or its folder; feeds `item_text_vector` to the
        candidate tower instead of learned titles.
      work_dir: folder for checkpoints (`selection/`, `final/`); a `fit` on the same folder and
        data resumes where it stopped. Default: a temporary folder removed after `fit`.
        Under a multi-worker strategy give every worker the same (shared) folder: only the
        chief writes into it, all of them resume from it.
      score_batch_size: users / items per tower call when scoring.
      strategy: tf.distribute strategy the models are built and trained under (default: the
        current one); `batch_size` is then the global batch over all replicas.

    Attributes (after fit):
      query_tower, candidate_tower, model: the final trained parts.
      vocabularies: {"user_id", "item_id"[, "genre"][, "title_token"]} -> Vocabulary of the
        final model's training data.
      best_epoch: epochs chosen on validation (None without validation).
      selection: per-epoch validation metrics of the selection phase.
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
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.config = config if config is not None else TwoTowerConfig()
        self.strategy = strategy or tf.distribute.get_strategy()

        def pick(value, name, default):
            return value if value is not None else getattr(self.config, name, default)

        use_genres = pick(use_genres, "use_genres", True)
        use_titles = pick(use_titles, "use_titles", False)
        select_metric = pick(select_metric, "select_metric", "ndcg@10")
        if select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, "
                             f"got {select_metric!r}")
        self.item_ids = None if item_ids is None else np.asarray(list(item_ids), dtype=object)
        if text_vectors is not None and not isinstance(text_vectors, ItemVectors):
            text_vectors = ItemVectors.load(text_vectors)
        self.item_features = ItemFeatureTable(items, use_genres,
                                              use_titles and text_vectors is None, text_vectors)
        self.select_metric = select_metric
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.score_batch_size = int(score_batch_size)
        self.notes = ""
        self.fit_seconds = 0.0
        self.examples_per_second: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.selection: List[Dict[str, float]] = []
        self.epochs_trained = 0
        self.phase_results: Dict[str, Any] = {}
        self.epochs_this_session = {SELECTION_DIR: 0, FINAL_DIR: 0}
        self._fitted: Optional[_Fitted] = None
        self._candidate_cache = None

    @classmethod
    def for_dataset(cls, data, item_ids: Optional[Iterable[str]] = None, seed: int = 0,
                    **overrides) -> "TwoTowerRecommender":
        """The default model for a `RecDataset`: TwoTowerConfig defaults (+ `overrides`), with
        the genre branch on only when the items frame has genres.

        This is the factory a benchmark uses: `for_dataset(data, item_ids, seed=config.seed)`.
        """
        items = getattr(data, "items", None)
        has_genres = items is not None and GENRES in items.columns
        values = {"seed": seed, "verbose": 0, "use_genres": has_genres, **overrides}
        return cls(TwoTowerConfig(**values), item_ids=item_ids, items=items)

    # ---- public attributes -------------------------------------------------------------------

    def _require_fitted(self) -> _Fitted:
        if self._fitted is None:
            raise RuntimeError("TwoTowerRecommender: call fit() first")
        return self._fitted

    @property
    def model(self):
        return self._require_fitted().model

    @property
    def query_tower(self):
        return self._require_fitted().model.query_tower

    @property
    def candidate_tower(self):
        return self._require_fitted().model.candidate_tower

    @property
    def vocabularies(self) -> Dict[str, Vocabulary]:
        return self._require_fitted().vocabularies

    def query_feature_spec(self) -> Dict[str, tf.TensorSpec]:
        spec = {USER_ID: tf.TensorSpec([None], tf.string, name=USER_ID)}
        if self.config.history_len > 0:
            spec["history"] = tf.TensorSpec([None, None], tf.string, name="history")
        return spec

    def candidate_feature_spec(self) -> Dict[str, tf.TensorSpec]:
        return self.item_features.feature_spec()

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

    def _build(self, vocabs: Dict[str, Vocabulary]):
        def tokens_or_none(name):
            # An empty vocabulary (no item has a genre) means the branch has nothing to learn.
            return vocabs[name].tokens if name in vocabs and len(vocabs[name]) else None

        tv = self.item_features.text_vectors
        with self.strategy.scope():
            model = build_retrieval_model(
                self.config, vocabs[USER_ID], vocabs[ITEM_ID], vocabs[ITEM_ID].counts,
                genre_vocab=tokens_or_none("genre"), title_vocab=tokens_or_none("title_token"),
                text_vector_dim=None if tv is None else tv.dim)
            dropout = float(getattr(self.config, "item_id_dropout", 0.0))
            zero_oov = bool(getattr(self.config, "zero_oov_item_id", False))
            if dropout > 0 or zero_oov:
                # Only the candidate tower's use of the shared table changes; the history
                # branch of the query tower keeps reading it directly.
                tower = model.candidate_tower
                tower.item_id_embedding = ColdStartItemId(
                    tower.item_id_embedding, self.config.num_oov, dropout, zero_oov,
                    name="cold_start_item_id")
        return model

    def _datasets(self, train, validation):
        cfg = self.config
        train_ds = _pointwise(train, None, cfg.history_len, self.item_features, cfg.batch_size,
                              shuffle=True, seed=cfg.seed)
        val_ds = None
        if validation is not None:
            val_ds = _pointwise(validation, train, cfg.history_len, self.item_features,
                                cfg.batch_size, shuffle=False, seed=cfg.seed)
        return train_ds, val_ds

    def _histories(self, interactions: pd.DataFrame) -> Dict[str, np.ndarray]:
        if self.config.history_len < 1:
            return {}
        return user_history(interactions, self.config.history_len)

    def _select_epochs(self, train: pd.DataFrame, validation: pd.DataFrame, run_dir: Path,
                       candidates: Optional[Sequence[str]] = None) -> int:
        """Trains on `train` epoch by epoch, ranking the catalog (or `candidates`) for
        `validation` after each."""
        state_path = run_dir / SELECTION_FILE
        state = {"metric": self.select_metric, "epochs": [], "done": False}
        if state_path.exists():
            state = json.loads(state_path.read_text(encoding="utf-8"))
        records: List[Dict[str, float]] = state["epochs"]
        chief = is_chief(self.strategy)
        if not state["done"]:
            cfg = self.config
            vocabs = self._vocabularies(train)
            model = self._build(vocabs)
            fitted = _Fitted(model, vocabs, self._histories(train), None)
            train_ds, val_ds = self._datasets(train, validation)
            evaluator = TopKEvaluator(train, validation, ks=(10, 50),
                                      candidate_items=candidates)
            n_examples = len(train)
            # fit_model stops at config.epochs in total: ask for one more epoch per call. Its
            # own early stopping is off; this loop stops on the validation ranking metric.
            step = dataclasses.replace(cfg, patience=0, restore_best=False)
            best, wait = -np.inf, 0
            for record in records:
                best, wait = self._update(best, wait, record[self.select_metric])
            while len(records) < cfg.epochs and not (cfg.patience and wait >= cfg.patience):
                result = fit_model(model, train_ds, val_ds,
                                   dataclasses.replace(step, epochs=len(records) + 1),
                                   str(run_dir), strategy=self.strategy,
                                   examples_per_epoch=n_examples)
                self._candidate_cache = None
                self.epochs_this_session[SELECTION_DIR] += result.epochs_done - result.initial_epoch
                metrics = evaluator.evaluate(
                    lambda users: self._score(fitted, users, evaluator.item_ids)).metrics
                record = {"epoch": len(records) + 1,
                          **{k: float(metrics[k]) for k in ("ndcg@10", "recall@10", "recall@50")}}
                for key in ("example_loss", "val_example_loss"):
                    if key in result.history:
                        record[key] = float(result.history[key][-1])
                record["train_seconds"] = float(result.train_seconds)
                record["examples_per_second"] = (n_examples / result.train_seconds
                                                 if result.train_seconds > 0 else None)
                records.append(record)
                best, wait = self._update(best, wait, record[self.select_metric])
                # Every worker computes the same records from the same synchronised weights;
                # only the chief keeps them, and a restarted cluster resumes from its copy.
                if chief:
                    _write_json(state_path, state)
                if cfg.verbose:
                    print(f"  selection epoch {record['epoch']}: validation "
                          f"ndcg@10={record['ndcg@10']:.4f} recall@50={record['recall@50']:.4f}",
                          flush=True)
            state["done"] = True
            if chief:
                _write_json(state_path, state)
        self.selection = records
        values = [r[self.select_metric] for r in records]
        return int(np.argmax(values)) + 1  # first of equal values: fewer epochs win ties

    def _update(self, best: float, wait: int, value: float):
        if value > best + self.config.min_delta:
            return value, 0
        return best, wait + 1

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
        start = time.perf_counter()
        self.selection, self.best_epoch = [], None
        self.epochs_this_session = {SELECTION_DIR: 0, FINAL_DIR: 0}
        temp = None
        work = self.work_dir
        if work is None:
            temp = work = Path(tempfile.mkdtemp(prefix="two_tower_"))
        try:
            if validation is not None:
                candidates = (None if validation_candidates is None
                              else [str(i) for i in validation_candidates])
                self.best_epoch = self._select_epochs(train, validation, work / SELECTION_DIR,
                                                      candidates)
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
        train_ds, _ = self._datasets(data, None)
        config = dataclasses.replace(self.config, epochs=epochs, patience=0, restore_best=False,
                                     monitor="example_loss")
        result = fit_model(model, train_ds, None, config, str(run_dir), strategy=self.strategy,
                           examples_per_epoch=len(data))
        self._candidate_cache = None
        self.epochs_this_session[FINAL_DIR] = result.epochs_done - result.initial_epoch
        self.epochs_trained = result.epochs_done
        self.phase_results[FINAL_DIR] = result
        self.examples_per_second = (result.examples_per_second
                                    or result.first_epoch_examples_per_second)
        if self.examples_per_second is None and self.selection:
            # A resumed final phase trains nothing; report the selection phase's throughput
            # (epochs after the first, whose time includes tracing).
            later = [r["examples_per_second"] for r in self.selection[1:]
                     if r.get("examples_per_second")]
            if later:
                self.examples_per_second = float(np.mean(later))
        return _Fitted(model, vocabs, self._histories(data), result)

    def _set_notes(self, validated: bool) -> None:
        cfg = self.config
        parts = [f"dim={cfg.embedding_dim}", f"temperature={cfg.temperature}",
                 f"logQ={'on' if cfg.logq_correction else 'off'}",
                 f"history={cfg.history_len} {cfg.history_pooling}",
                 f"hidden={list(cfg.hidden_dims)}", f"{cfg.optimizer} lr={cfg.learning_rate}",
                 f"batch={cfg.batch_size}", f"user_id_dropout={cfg.user_id_dropout}"]
        if getattr(cfg, "item_id_dropout", 0.0) > 0:
            parts.append(f"item_id_dropout={cfg.item_id_dropout}")
        feats = [n for n in self.item_features.names if n != ITEM_ID]
        parts.append("item features: " + (", ".join(feats) or "id only"))
        if validated:
            best = self.selection[self.best_epoch - 1]
            parts.append(f"epochs={self.best_epoch} chosen on validation by "
                         f"{self.select_metric}={best[self.select_metric]:.4f} "
                         f"(of {len(self.selection)} tried); refit on train+validation")
        else:
            parts.append(f"epochs={self.epochs_trained} (no validation)")
        self.notes = "; ".join(parts)

    # ---- score -------------------------------------------------------------------------------

    def query_features(self, user_ids: Sequence[str],
                       histories: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Query-tower inputs of users: id and most recent fitted items ("" padded, left)."""
        fitted = self._require_fitted()
        return self._query_features(fitted.histories if histories is None else histories,
                                    user_ids)

    def _query_features(self, histories, user_ids) -> Dict[str, np.ndarray]:
        users = np.asarray([str(u) for u in user_ids], dtype=object)
        out = {USER_ID: users}
        if self.config.history_len > 0:
            index = pd.Index(histories[USER_ID].astype(object))
            pos = index.get_indexer(users)
            history = np.full((len(users), self.config.history_len), PAD, dtype=object)
            known = pos >= 0
            history[known] = histories["history"][pos[known]]
            out["history"] = history
        return out

    def _embed(self, tower, features: Dict[str, np.ndarray]) -> np.ndarray:
        n = len(features[next(iter(features))])
        parts = []
        for start in range(0, n, self.score_batch_size):
            batch = {k: tf.constant(v[start:start + self.score_batch_size])
                     for k, v in features.items()}
            parts.append(tower(batch, training=False).numpy())
        dim = self.config.embedding_dim
        return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

    def _candidates(self, fitted: _Fitted, item_ids: np.ndarray) -> np.ndarray:
        cached = self._candidate_cache
        if cached is not None and cached[0] is fitted and np.array_equal(cached[1], item_ids):
            return cached[2]
        emb = self._embed(fitted.model.candidate_tower, self.item_features(item_ids))
        self._candidate_cache = (fitted, item_ids, emb)
        return emb

    def _score(self, fitted: _Fitted, user_ids, item_ids) -> np.ndarray:
        items = np.asarray([str(i) for i in item_ids], dtype=object)
        candidates = self._candidates(fitted, items)
        queries = self._embed(fitted.model.query_tower,
                              self._query_features(fitted.histories, user_ids))
        return queries.astype(np.float64) @ candidates.astype(np.float64).T

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Float scores [len(user_ids), len(item_ids)] (query · candidate), higher is better.

        Args:
          user_ids: users to score.
          item_ids: column order; default the `item_ids` given at construction, else the
            sorted items the model was fitted on.
        """
        fitted = self._require_fitted()
        if item_ids is None:
            item_ids = (self.item_ids if self.item_ids is not None
                        else np.sort(np.asarray(fitted.vocabularies[ITEM_ID].tokens, dtype=object)))
        return self._score(fitted, user_ids, item_ids)

    def candidate_embeddings(self, item_ids: Iterable[str]) -> np.ndarray:
        """[n, embedding_dim] float32 candidate-tower embeddings of `item_ids`."""
        items = np.asarray([str(i) for i in item_ids], dtype=object)
        return self._embed(self.candidate_tower, self.item_features(items)).astype(np.float32)
