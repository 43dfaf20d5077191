"""Hybrid deep matrix factorization (DMF, Xue et al. 2017) fused with pretrained text vectors.

For sparse users and cold items. A user is represented by their row of the (train) interaction
matrix Y [users x items], an item by its column; each goes through its own MLP tower. The text
side adds a trained projection of the frozen language-model vectors: the item's own vector and
the user's profile (mean vector of their train items). Each side is the sum of its DMF and text
parts, L2-normalised; the score is the cosine times a learned scale, so the model serves both
as a retrieval model (user and item embeddings, dot product) and as a ranking model (`score`).

Training: each train interaction (u, i) forms a list [i, n_negatives uniformly sampled items]
with labels [1, 0, ...], scored and passed to a loss of the ranking stage's registry
(`recommenders_tf.models.losses.RankingLoss`, default "softmax"; "bce" is pointwise sigmoid
cross-entropy). The positive's own entry is removed from the user's row and the user from the
item's column before they enter the towers, so the model cannot learn to read the answer off
its input (at test time, the test items are not in the rows either). With `column_dropout`,
an item's column is zeroed in that share of training lists, so the text part learns to carry
an item alone: a cold item (all-zero column) is then ranked by its text.

With `prior_neighbors`, each item's score also gets w times its text popularity prior
(`features.text_prior.neighbor_popularity`: how popular its nearest train items in text are,
itself left out), standardised over the train items. Cosine towers over a text projection say
what an item is about, not how many people want it; on a cold-item validation slice the prior
doubled the recall of the text profile alone (see that module). w is chosen on the validation
slice with the epochs (`prior_weights`, 0 among them, so the slice can turn it off): a weight
learned in training stayed near 0 (0.022 on ml-100k), because warm items' columns carry their
popularity there, while the cold items that need the prior have no column.

Training runs in `fit_model` (the project's Keras loop); one step is one batch of positives.

`fit(train, validation)` follows the peers' convention: epochs chosen on `validation` by
NDCG@10 (full catalog, or `validation_candidates` for a cold-item validation; a
`ValidationMetrics` callback logs it after every epoch and `fit_model`'s early stopping selects
on it), then a refit on train + validation for that many epochs. `score(user_ids, item_ids)`
returns [users, items].
The validation ranking is measured by the evaluator the caller passes (the evaluation layer's
`TopKEvaluator`), so the model and the benchmark it is compared in share one protocol.

Example:
  >>> dmf = DMFHybrid(DMFConfig(), item_vectors=vectors, validation_evaluator=TopKEvaluator)
  >>> dmf.fit(val.train, validation=val.test)
  >>> scores = dmf.score(["1", "2"], evaluator.item_ids)
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.data.schema import ITEM_ID, USER_ID, check_frame
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.features.text_prior import neighbor_popularity
from recommenders_tf.models.losses import RankingLoss
from recommenders_tf.models.training import (FitResult, TrainingConfig, ValidationMetrics,
                                             fit_model)

# Logged by the epoch selection (as "val_..."); the first one chooses.
SELECT_METRICS = ("ndcg@10", "recall@10")


@dataclasses.dataclass
class DMFConfig:
    """Settings of the hybrid DMF model.

    Args:
      hidden_dims: widths of the ReLU layers of each DMF tower (before the output layer).
      embedding_dim: output width of both sides.
      use_text: add the projected item text vector / user profile vector (needs item vectors).
      loss: key of the ranking-loss registry ("softmax", "bce", "pairwise_logistic", ...).
      num_negatives: uniformly sampled negatives per positive.
      column_dropout: share of training lists whose item columns are zeroed (text-only path).
      prior_neighbors: nearest train items in text whose popularity makes an item's prior
        bias (0: no prior; needs use_text).
      prior_weights: weights of the standardised prior tried on the validation slice after
        every epoch (the best with the best epoch is kept); a fit without validation uses 1.
      learning_rate: Adam learning rate.
      batch_size: positives per step.
      epochs: most epochs the validation selection trains (or the epochs without validation).
      patience: epochs without validation improvement before the selection stops; 0 never
        stops early.
      seed: seed of initialisation and sampling.
      verbose: print per-epoch validation metrics.
    """

    hidden_dims: Tuple[int, ...] = (256,)
    embedding_dim: int = 64
    use_text: bool = True
    loss: str = "softmax"
    num_negatives: int = 20
    column_dropout: float = 0.3
    prior_neighbors: int = 0
    prior_weights: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    learning_rate: float = 1e-3
    batch_size: int = 256
    epochs: int = 15
    patience: int = 2
    seed: int = 0
    verbose: int = 0

    def __post_init__(self):
        self.hidden_dims = tuple(int(d) for d in self.hidden_dims)
        self.prior_weights = tuple(float(w) for w in self.prior_weights)
        if not self.prior_weights:
            raise ValueError("DMFConfig.prior_weights must name at least one weight")
        if self.prior_neighbors < 0 or (self.prior_neighbors and not self.use_text):
            raise ValueError(f"DMFConfig.prior_neighbors must be >= 0 and needs use_text, got "
                             f"{self.prior_neighbors} with use_text={self.use_text}")
        if any(d < 1 for d in self.hidden_dims) or self.embedding_dim < 1:
            raise ValueError(f"DMFConfig: layer widths must be >= 1, got hidden_dims="
                             f"{self.hidden_dims}, embedding_dim={self.embedding_dim}")
        if self.num_negatives < 1:
            raise ValueError(f"DMFConfig.num_negatives must be >= 1, got {self.num_negatives}")
        if not 0.0 <= self.column_dropout < 1.0:
            raise ValueError(f"DMFConfig.column_dropout must be in [0, 1), "
                             f"got {self.column_dropout}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("DMFConfig.epochs and batch_size must be >= 1")


class DMFNetwork(tf.keras.Model):
    """The two DMF towers with their text projections.

    Args:
      config: DMFConfig.
      text_dim: width of the text vectors, or None for a DMF without text.
    """

    def __init__(self, config: DMFConfig, text_dim: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)

        def mlp(name):
            layers = [tf.keras.layers.Dense(d, activation="relu") for d in config.hidden_dims]
            layers.append(tf.keras.layers.Dense(config.embedding_dim))
            return tf.keras.Sequential(layers, name=name)

        self.user_mlp, self.item_mlp = mlp("user_dmf"), mlp("item_dmf")
        self.text_dim = text_dim
        if text_dim is not None:
            self.user_text = tf.keras.layers.Dense(config.embedding_dim, use_bias=False,
                                                   name="user_profile_projection")
            self.item_text = tf.keras.layers.Dense(config.embedding_dim, use_bias=False,
                                                   name="item_text_projection")
        # Cosine scores live in [-1, 1]; a learned scale lets the losses reach confident logits.
        self.log_scale = self.add_weight(name="log_scale", shape=(),
                                         initializer=tf.keras.initializers.Constant(np.log(10.0)))

    def users(self, rows, profiles=None):
        out = self.user_mlp(rows)
        if self.text_dim is not None:
            out = out + self.user_text(tf.stop_gradient(profiles))
        return tf.math.l2_normalize(out, axis=-1)

    def items(self, columns, texts=None):
        out = self.item_mlp(columns)
        if self.text_dim is not None:
            out = out + self.item_text(tf.stop_gradient(texts))
        return tf.math.l2_normalize(out, axis=-1)

    @property
    def scale(self):
        return tf.exp(self.log_scale)


class _DMFTraining(tf.keras.Model):
    """A DMFNetwork's training step as a Keras model, so `fit_model` trains it.

    A batch is {"user", "item"}: row / column indices of positives; each becomes the list
    [positive, sampled negatives] described in the module docstring.
    """

    def __init__(self, state: "_State", config: DMFConfig, loss: RankingLoss,
                 text_table: Optional[np.ndarray] = None, **kwargs):
        super().__init__(**kwargs)
        self.network = state.network
        self.dmf_config = config
        self.ranking_loss = loss
        self.matrix = tf.constant(state.matrix)
        self.matrix_t = tf.constant(np.ascontiguousarray(state.matrix.T))
        self.text_table = None if text_table is None else tf.constant(text_table)
        self.profiles = None if state.profiles is None else tf.constant(state.profiles)
        self.n_items = len(state.items)
        self.loss_mean = tf.keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        # Listed here so Keras resets it every epoch: "loss" is the epoch's mean batch loss.
        return [self.loss_mean]

    def train_step(self, data):
        cfg, net, matrix = self.dmf_config, self.network, self.matrix
        u, i = data["user"], data["item"]
        b = tf.shape(u)[0]
        negatives = tf.random.uniform([b, cfg.num_negatives], 0, self.n_items, dtype=tf.int32)
        lists = tf.concat([i[:, None], negatives], axis=1)              # [B, L]
        labels = tf.concat([tf.ones([b, 1]), tf.zeros([b, cfg.num_negatives])], axis=1)
        # A sampled negative the user did interact with is not a negative: mask it out.
        seen = tf.gather_nd(matrix, tf.stack([tf.repeat(u[:, None], cfg.num_negatives + 1,
                                                        axis=1), lists], axis=-1))
        mask = tf.concat([tf.ones([b, 1], tf.bool), seen[:, 1:] < 0.5], axis=1)
        # Leave the positive out of its own user row / item column.
        rows = tf.gather(matrix, u) - tf.one_hot(i, self.n_items)
        flat = tf.reshape(lists, [-1])
        columns = tf.gather(self.matrix_t, flat)                         # [B*L, U]
        own = tf.one_hot(tf.repeat(u, cfg.num_negatives + 1), tf.shape(matrix)[0])
        columns = columns - own * tf.reshape(tf.cast(labels, tf.float32), [-1, 1])
        keep = tf.cast(tf.random.uniform([b * (cfg.num_negatives + 1), 1])
                       >= cfg.column_dropout, tf.float32)
        columns = columns * keep
        with tf.GradientTape() as tape:
            if self.profiles is None:
                user_emb = net.users(rows)
                item_emb = net.items(columns)
            else:
                # The profile keeps the positive: it is a mean over many items, and at
                # test time a user's profile is built from all their train items too.
                user_emb = net.users(rows, tf.gather(self.profiles, u))
                item_emb = net.items(columns, tf.gather(self.text_table, flat))
            item_emb = tf.reshape(item_emb, [b, cfg.num_negatives + 1, -1])
            scores = net.scale * tf.einsum("bd,bld->bl", user_emb, item_emb)
            loss = self.ranking_loss(labels, scores, mask)
        grads = tape.gradient(loss, net.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, net.trainable_variables))
        self.loss_mean.update_state(loss)
        return {"loss": self.loss_mean.result()}


@dataclasses.dataclass
class _State:
    network: DMFNetwork
    users: pd.Index
    items: pd.Index
    matrix: np.ndarray          # [users, items] binary train matrix
    profiles: Optional[np.ndarray]
    prior: Optional[np.ndarray] = None   # [items] standardised text popularity prior
    prior_scale: Tuple[float, float] = (0.0, 1.0)  # its (mean, std) over the train items
    prior_weight: float = 1.0


class DMFHybrid:
    """Hybrid DMF with the peers' fit/score interface (see the module docstring).

    Args:
      config: DMFConfig.
      item_vectors: an `ItemVectors` store (needed when `config.use_text`).
      item_ids: default column order of `score`.
      validation_evaluator: builds the evaluator of `fit`'s epoch choice, called as
        `validation_evaluator(train, validation, ks=(10,), candidate_items=...)` and returning
        an object with `item_ids` and `evaluate(score_fn).metrics` (e.g.
        `recommenders_tf.evaluation.protocol.TopKEvaluator`); needed only to fit with
        validation.
    """

    name = "dmf-hybrid"
    task = "topk"

    def __init__(self, config: Optional[DMFConfig] = None, *,
                 item_vectors: Optional[ItemVectors] = None,
                 item_ids: Optional[Iterable[str]] = None,
                 validation_evaluator: Optional[Callable[..., Any]] = None):
        self.config = config if config is not None else DMFConfig()
        if self.config.use_text and item_vectors is None:
            raise ValueError("DMFHybrid: use_text=True needs item_vectors (an ItemVectors "
                             "store from pipelines.embed_items); or set use_text=False")
        self.item_vectors = item_vectors if self.config.use_text else None
        self.item_ids = None if item_ids is None else np.asarray(list(item_ids), dtype=object)
        self.validation_evaluator = validation_evaluator
        self.loss = RankingLoss(self.config.loss)
        self.selection: List[Dict[str, float]] = []
        self.best_epoch: Optional[int] = None
        self.notes = ""
        self.fit_seconds = 0.0
        self._state: Optional[_State] = None

    # ---- data ----------------------------------------------------------------------------------

    def _text(self, item_ids) -> np.ndarray:
        vectors, _ = self.item_vectors.lookup(item_ids)
        return vectors.astype(np.float32)

    def _prepare(self, train: pd.DataFrame, extra_items: Sequence[str] = ()) -> _State:
        users = pd.Index(np.sort(train[USER_ID].astype(str).unique()))
        item_list = np.union1d(train[ITEM_ID].astype(str).unique(),
                               np.asarray(list(extra_items), dtype=str))
        items = pd.Index(item_list.astype(object))
        matrix = np.zeros((len(users), len(items)), np.float32)
        matrix[users.get_indexer(train[USER_ID].astype(str)),
               items.get_indexer(train[ITEM_ID].astype(str))] = 1.0
        profiles = prior = None
        prior_scale = (0.0, 1.0)
        if self.item_vectors is not None:
            missing = np.flatnonzero(self.item_vectors.positions(train[ITEM_ID].astype(str)) < 0)
            if missing.size:
                raise ValueError(f"DMFHybrid: the item vector store has no vector for train "
                                 f"item {train[ITEM_ID].iloc[missing[0]]!r} (row {missing[0]});"
                                 " re-run pipelines.embed_items on this dataset")
            texts = self._text(items)
            counts = np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
            profiles = (matrix @ texts) / counts
            if self.config.prior_neighbors > 0:
                # Every item here is a train item: each one's prior leaves itself out.
                raw = neighbor_popularity(texts, texts, matrix.sum(0),
                                          self.config.prior_neighbors,
                                          exclude=np.arange(len(items)))
                prior_scale = (float(raw.mean()), float(raw.std()) or 1.0)
                prior = ((raw - prior_scale[0]) / prior_scale[1]).astype(np.float32)
        tf.keras.utils.set_random_seed(self.config.seed)
        network = DMFNetwork(self.config, None if profiles is None else profiles.shape[1])
        return _State(network, users, items, matrix, profiles, prior, prior_scale)

    # ---- training ------------------------------------------------------------------------------

    def _pairs(self, state: _State, train: pd.DataFrame) -> np.ndarray:
        u = state.users.get_indexer(train[USER_ID].astype(str))
        i = state.items.get_indexer(train[ITEM_ID].astype(str))
        return np.unique(np.stack([u, i], axis=1).astype(np.int32), axis=0)

    def _train(self, train: pd.DataFrame, epochs: int, run_dir: Path, validation=None,
               candidates=None) -> Tuple[_State, FitResult]:
        """One `fit_model` run on `train`; with `validation`, ranked after every epoch and
        stopped by early stopping on validation NDCG@10."""
        cfg = self.config
        state = self._prepare(train)
        trainer = _DMFTraining(state, cfg, self.loss,
                               None if state.profiles is None else self._text(state.items))
        pairs = self._pairs(state, train)
        ds = (tf.data.Dataset.from_tensor_slices({"user": pairs[:, 0], "item": pairs[:, 1]})
              .shuffle(len(pairs), seed=cfg.seed, reshuffle_each_iteration=True)
              .batch(cfg.batch_size))
        training = TrainingConfig(optimizer="adam", learning_rate=cfg.learning_rate,
                                  epochs=epochs, batch_size=cfg.batch_size, patience=0,
                                  monitor="loss", monitor_mode="min", restore_best=False,
                                  seed=cfg.seed, verbose=0)
        callbacks = []
        if validation is not None:
            evaluator = self.validation_evaluator(train, validation, ks=(10,),
                                                  candidate_items=candidates)
            # score() reads the network through self._state while it trains.
            self._state = state
            log = (lambda line: print(line, flush=True)) if cfg.verbose else None
            names = SELECT_METRICS + (("prior_weight",) if state.prior is not None else ())
            callbacks.append(ValidationMetrics(lambda: self._validation_metrics(evaluator),
                                               names, log=log))
            training = dataclasses.replace(training, patience=cfg.patience,
                                           monitor="val_" + SELECT_METRICS[0], monitor_mode="max")
        result = fit_model(trainer, ds, None, training, str(run_dir),
                           examples_per_epoch=len(pairs), metric_callbacks=callbacks)
        return state, result

    def _validation_metrics(self, evaluator) -> Dict[str, float]:
        """The validation metrics of the current weights; with a prior, those of the best of
        `prior_weights` (by NDCG@10), which is returned as "prior_weight"."""
        s = self._require()
        if s.prior is None:
            return evaluator.evaluate(lambda users: self.score(users, evaluator.item_ids)).metrics
        prior = self.item_prior(evaluator.item_ids)[None, :]
        s.prior_weight = 0.0  # score() without the prior; each weight is added below
        best = None
        for weight in self.config.prior_weights:
            metrics = dict(evaluator.evaluate(
                lambda users: self.score(users, evaluator.item_ids) + weight * prior).metrics)
            if best is None or metrics[SELECT_METRICS[0]] > best[SELECT_METRICS[0]]:
                best = {**metrics, "prior_weight": float(weight)}
        return best

    def fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame] = None,
            validation_candidates: Optional[Iterable[str]] = None) -> "DMFHybrid":
        """Chooses epochs on `validation` (if given), then refits on train + validation.

        Args:
          train: interactions (canonical schema); every interaction counts as positive.
          validation: held-out interactions for the epoch choice, folded into the refit.
          validation_candidates: rank only these items in validation (cold-item validation).
        """
        check_frame(train, "train", [USER_ID, ITEM_ID])
        start = time.perf_counter()
        cfg = self.config
        if validation is not None:
            check_frame(validation, "validation", [USER_ID, ITEM_ID])
            if self.validation_evaluator is None:
                raise ValueError("DMFHybrid: fitting with validation needs "
                                 "validation_evaluator= (e.g. TopKEvaluator from "
                                 "recommenders_tf.evaluation.protocol); or fit without "
                                 "validation")
            cands = None if validation_candidates is None else [str(i) for i in
                                                                validation_candidates]
        # fit_model keeps checkpoints and logs; this model does not resume, so they are
        # scratch.
        work = Path(tempfile.mkdtemp(prefix="dmf_"))
        try:
            if validation is not None:
                _, result = self._train(train, cfg.epochs, work / "selection", validation,
                                        cands)
                self.selection = [
                    {"epoch": e + 1, "loss": result.history["loss"][e],
                     **{m: result.history["val_" + m][e] for m in SELECT_METRICS
                        + (("prior_weight",) if cfg.prior_neighbors else ())}}
                    for e in range(result.epochs_done)]
                self.best_epoch = result.best_epoch or 1
                weight = self.selection[self.best_epoch - 1].get("prior_weight", 1.0)
                data = pd.concat([train, validation], ignore_index=True)
                epochs = self.best_epoch
            else:
                self.selection, self.best_epoch = [], None
                data, epochs, weight = train, cfg.epochs, 1.0
            self._state, _ = self._train(data, epochs, work / "final")
            self._state.prior_weight = float(weight)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.fit_seconds = time.perf_counter() - start
        chosen = (f"epochs={self.best_epoch} chosen on validation ndcg@10="
                  f"{self.selection[self.best_epoch - 1]['ndcg@10']:.4f}; refit on "
                  "train+validation" if self.best_epoch else f"epochs={epochs} (no validation)")
        self.notes = (f"DMF towers {list(cfg.hidden_dims)}->{cfg.embedding_dim}, "
                      f"text={'LM item vector + user profile' if cfg.use_text else 'off'}, "
                      f"loss={cfg.loss} with {cfg.num_negatives} sampled negatives, "
                      f"column_dropout={cfg.column_dropout}, "
                      + (f"text popularity prior of {cfg.prior_neighbors} neighbours "
                         f"(weight {self._state.prior_weight:g}"
                         + (" chosen on validation" if self.best_epoch else "") + "), "
                         if cfg.prior_neighbors else "")
                      + f"adam lr={cfg.learning_rate}; "
                      + chosen)
        return self

    # ---- inference -----------------------------------------------------------------------------

    def _require(self) -> _State:
        if self._state is None:
            raise RuntimeError("DMFHybrid: call fit() first")
        return self._state

    def user_embeddings(self, user_ids: Sequence[str]) -> np.ndarray:
        """[n, embedding_dim]; unknown users get an all-zero row and profile."""
        s = self._require()
        pos = s.users.get_indexer([str(u) for u in user_ids])
        rows = np.where(pos[:, None] >= 0, s.matrix[np.maximum(pos, 0)], 0.0).astype(np.float32)
        profiles = None
        if s.profiles is not None:
            profiles = np.where(pos[:, None] >= 0, s.profiles[np.maximum(pos, 0)],
                                0.0).astype(np.float32)
        return s.network.users(rows, profiles).numpy()

    def item_embeddings(self, item_ids: Sequence[str]) -> np.ndarray:
        """[n, embedding_dim]; an item absent from the training matrix (cold) has an all-zero
        column and is represented through its text vector."""
        s = self._require()
        ids = [str(i) for i in item_ids]
        pos = s.items.get_indexer(ids)
        columns = np.where(pos[:, None] >= 0, s.matrix.T[np.maximum(pos, 0)],
                           0.0).astype(np.float32)
        texts = None if s.profiles is None else self._text(ids)
        return s.network.items(columns, texts).numpy()

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Scores [len(user_ids), len(item_ids)] (scaled cosine), higher is better."""
        s = self._require()
        if item_ids is None:
            item_ids = self.item_ids if self.item_ids is not None else s.items.to_numpy()
        users = self.user_embeddings(user_ids)
        item_ids = [str(i) for i in item_ids]
        items = self.item_embeddings(item_ids)
        scores = float(s.network.scale.numpy()) * (users.astype(np.float64)
                                                   @ items.astype(np.float64).T)
        if s.prior is not None and s.prior_weight:
            scores += s.prior_weight * self.item_prior(item_ids)[None, :]
        return scores

    def item_prior(self, item_ids: Sequence[str]) -> np.ndarray:
        """[n] standardised text popularity priors: a train item's own (itself left out), any
        other item's from its nearest train items in text (zeros without a prior)."""
        s = self._require()
        ids = [str(i) for i in item_ids]
        if s.prior is None:
            return np.zeros(len(ids))
        pos = s.items.get_indexer(ids)
        out = np.where(pos >= 0, s.prior[np.maximum(pos, 0)], 0.0).astype(np.float64)
        other = np.flatnonzero(pos < 0)
        if other.size:
            raw = neighbor_popularity(self._text([ids[j] for j in other]),
                                      self._text(s.items), s.matrix.sum(0),
                                      self.config.prior_neighbors)
            out[other] = (raw - s.prior_scale[0]) / s.prior_scale[1]
        return out
