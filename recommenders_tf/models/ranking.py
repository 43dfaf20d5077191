"""Stage 2: one ranking model whose loss is a parameter (pointwise, pairwise or listwise).

`RankingModel` scores every candidate of a list for the list's user. It wires injected parts:

  user vector     the query tower (user id + pooled recent history), the shared tower builder
  item vector     the candidate tower (item id [+ genres]), sharing its item-id table with the
                  query tower's history branch
  history match   `CandidateAttention`: DIN-style attention of each candidate over the user's
                  recent items (padding masked), so "this user just watched three films like
                  this one" is a feature of the pair, not only of the user
  interaction     `CrossNetwork`: DCN-v2 cross layers (`tfrs.layers.dcn.Cross`) over the
                  concatenated pair features and the towers' dot product, then a deep ReLU
                  stack and one output unit

The loss comes from the registry in `models.losses` by key ("mse", "bce",
"pairwise_logistic", "pairwise_hinge", "softmax", "listmle", "approx_ndcg"); every key reads
the same padded-list batches from `models.ranking_data`. Metrics: TF-Ranking NDCG@10 and
MRR@10 (padding ignored), the per-example loss, and RMSE for rating losses.

Inputs of `call` (B lists of S candidates, history width N):
  user_id [B] string, history [B, N] string ("" padding), item_id [B, S] string ("" padding);
  training batches add label [B, S] float32 (-1 on padding) and mask [B, S] bool.
Output: scores [B, S] float32 (a rating for "mse", a click logit for "bce", an order score
otherwise). Unknown ids use the towers' OOV buckets, so any string gets a finite score.

Example:
  >>> config = RankingConfig(loss="softmax")
  >>> model = build_ranking_model(config, user_vocab, item_vocab)
  >>> fit_model(model, lists.to_dataset(32), None, config, "runs/ranking/x")
  >>> predict_lists(model, scoring)          # [L, S] scores, -inf on padding
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recommenders_tf.compat import tfr
from recommenders_tf.data.schema import GENRES, ITEM_ID, USER_ID
from recommenders_tf.features.vocab import Vocabulary, build_vocabularies
from recommenders_tf.features.id_lists import compact_right
from recommenders_tf.models.losses import RankingLoss, get_loss
from recommenders_tf.models.ranking_data import HISTORY_RATING, RankingLists, list_ndcg_at_10
from recommenders_tf.models.towers import (
    CandidateTower,
    ItemIdEmbedding,
    QueryTower,
    TowerConfig,
    build_towers,
)
from recommenders_tf.models.distribute import (copy_variables, uses_parameter_servers,
                                               variable_shards)
from recommenders_tf.models.training import (FitResult, TrainingConfig, ValidationMetrics,
                                             fit_model)

# Masked attention logits: exp() underflows to exactly 0 while staying finite in float32.
_MASKED_LOGIT = -1e9
AUTO = "auto"


@dataclasses.dataclass
class RankingConfig(TowerConfig, TrainingConfig):
    """Everything that defines a ranking model and its training.

    Tower fields (embedding sizes, history_len, history_pooling, ...) are documented on
    `TowerConfig`, training fields on `TrainingConfig`; only some defaults differ here.

    Args:
      loss: registry key (see `models.losses.LOSS_KEYS`).
      num_cross_layers: DCN-v2 cross layers; 0 skips the cross network.
      cross_projection_dim: low-rank size of each cross layer's kernel; 0 means full rank.
      deep_dims: widths of the ReLU stack after the cross layers.
      deep_dropout: dropout after each deep layer.
      din_units: width of the candidate-attention MLP; 0 disables the DIN feature.
      embedding_l2: L2 penalty on the user and item id embeddings used in a batch (mean
        squared norm per example), the regulariser of classic matrix factorisation.
      user_features: categorical columns of the users frame fed to the query tower (e.g.
        ("age", "gender", "occupation") for MovieLens); looked up by user id inside the model.
      monitor: "auto" watches val_rmse (min) for rating losses and val_ndcg_10 (max) otherwise.
      id_features: feed the towers' user/item vectors, their dot product and the DIN feature
        to the scorer. False scores from the context features alone (a model built with
        `context_features`): behind a retrieval stage, id embeddings learned from one time cut
        memorise that period, while dense features (retrieval score, popularity, text and
        co-occurrence similarity) carry over to the next one (measured in BENCHMARKS.md).
    """

    loss: str = "softmax"
    num_cross_layers: int = 2
    cross_projection_dim: int = 0
    deep_dims: Tuple[int, ...] = (64, 32)
    deep_dropout: float = 0.0
    din_units: int = 32
    embedding_l2: float = 0.0
    user_features: Tuple[str, ...] = ()
    normalize: bool = False
    embedding_dim: int = 32
    hidden_dims: Tuple[int, ...] = ()
    history_len: int = 50
    monitor: str = AUTO
    monitor_mode: str = "max"
    batch_size: int = 32
    id_features: bool = True

    def __post_init__(self):
        spec = get_loss(self.loss)
        self.loss = spec.key
        if self.monitor == AUTO:
            self.monitor, self.monitor_mode = (("val_rmse", "min") if spec.predicts_rating
                                               else ("val_ndcg_10", "max"))
        self.validate_tower()
        self.validate_training()
        self.deep_dims = tuple(int(d) for d in self.deep_dims)
        self.user_features = tuple(str(f) for f in self.user_features)
        if any(d < 1 for d in self.deep_dims):
            raise ValueError(f"RankingConfig.deep_dims must be positive, got {self.deep_dims}")
        for name in ("num_cross_layers", "cross_projection_dim", "din_units"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"RankingConfig.{name} must be >= 0, "
                                 f"got {getattr(self, name)!r}")
        if not 0.0 <= self.deep_dropout < 1.0:
            raise ValueError(f"RankingConfig.deep_dropout must be in [0, 1), "
                             f"got {self.deep_dropout!r}")
        if self.embedding_l2 < 0:
            raise ValueError(f"RankingConfig.embedding_l2 must be >= 0, got {self.embedding_l2!r}")


class CandidateAttention(tf.keras.layers.Layer):
    """DIN-style attention of each candidate over the user's history (Zhou et al., KDD 2018).

    The weight of history item h for candidate c comes from an MLP over [h, c, h - c, h * c];
    weights are a softmax over the unmasked history positions (a fully padded history gives
    all-zero weights and a zero vector). Output: sum_n w_cn h_n per candidate.

    Args:
      units: width of the attention MLP's hidden layer.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tf.keras.layers.Dense(units, activation="relu", name="attention_hidden")
        self.score = tf.keras.layers.Dense(1, name="attention_logit")

    def call(self, candidates: tf.Tensor, history: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        """candidates [B, S, d], history [B, N, d], mask [B, N] bool -> [B, S, d]."""
        shape = tf.stack([tf.shape(candidates)[0], tf.shape(candidates)[1],
                          tf.shape(history)[1], tf.shape(history)[2]])
        c = tf.broadcast_to(candidates[:, :, None, :], shape)
        h = tf.broadcast_to(history[:, None, :, :], shape)
        logits = tf.squeeze(self.score(self.hidden(tf.concat([h, c, h - c, h * c], -1))), -1)
        valid = tf.broadcast_to(mask[:, None, :], tf.shape(logits))
        # Rank stated for Grappler's cost model (it loses it inside exported functions).
        logits = tf.ensure_shape(tf.where(valid, logits, _MASKED_LOGIT), [None, None, None])
        # softmax of an all-masked row is uniform; the mask product zeroes it.
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(valid, logits.dtype)
        return tf.einsum("bsn,bnd->bsd", weights, history)


class CrossNetwork(tf.keras.layers.Layer):
    """DCN-v2: x_{l+1} = x_0 * (W x_l + b) + x_l for each cross layer, then a deep stack.

    Args:
      num_cross_layers: number of `tfrs.layers.dcn.Cross` layers.
      projection_dim: low-rank size of the cross kernels (None: full rank).
      deep_dims: ReLU widths after the cross layers.
      dropout: dropout after each deep layer.
      output_bias: initial bias of the output unit (the mean label for rating losses, so
        training starts at the global mean instead of 0).
    """

    def __init__(self, num_cross_layers: int, projection_dim: Optional[int],
                 deep_dims: Sequence[int], dropout: float = 0.0, output_bias: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.cross_layers = [tfrs.layers.dcn.Cross(projection_dim=projection_dim,
                                                   kernel_initializer="glorot_uniform",
                                                   name=f"cross_{i}")
                             for i in range(num_cross_layers)]
        self.deep_layers = []
        for i, width in enumerate(deep_dims):
            self.deep_layers.append(tf.keras.layers.Dense(width, activation="relu",
                                                          name=f"deep_{i}"))
            if dropout > 0:
                self.deep_layers.append(tf.keras.layers.Dropout(dropout))
        self.output_layer = tf.keras.layers.Dense(
            1, bias_initializer=tf.keras.initializers.Constant(output_bias), name="score")

    def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
        x0 = x
        for layer in self.cross_layers:
            x = layer(x0, x)
        for layer in self.deep_layers:
            x = layer(x, training=training)
        return tf.squeeze(self.output_layer(x), -1)


class AttributeLookup(tf.keras.layers.Layer):
    """Raw id -> a string attribute (an item's '|'-joined genres, a user's occupation).

    Held inside the model.

    Keeping the table in the model lets an export take ids only. Unknown ids get `default`.

    Args:
      item_ids: ids.
      values: the attribute of each id, aligned with `item_ids`.
      default: value for unknown ids.
    """

    def __init__(self, item_ids: Sequence[str], values: Sequence[str], default: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        keys = [str(i) for i in item_ids]
        vals = ["" if v is None else str(v) for v in values]
        if len(keys) != len(vals):
            raise ValueError(f"AttributeLookup: {len(keys)} ids but {len(vals)} values")
        if len(set(keys)) != len(keys):
            raise ValueError("AttributeLookup: ids must be distinct")
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string),
                                                tf.constant(vals, tf.string)),
            default_value=default)

    def call(self, item_ids: tf.Tensor) -> tf.Tensor:
        return self.table.lookup(item_ids)


class RankingModel(tfrs.Model):
    """Scores candidate lists; trains with any loss of the registry.

    Args:
      query_tower: `QueryTower` (user id + history -> [B, D]).
      candidate_tower: `CandidateTower` (item features -> [B, D]).
      scorer: `CrossNetwork` mapping pair features [n, F] to scores [n].
      loss: registry key.
      history_attention: `CandidateAttention`, or None to leave out the DIN feature.
      item_genres: `AttributeLookup` feeding `item_genres` to the candidate tower, or None.
      user_attributes: {feature: `AttributeLookup`} feeding categorical user features to the
        query tower.
      history_len: history positions read (the most recent ones).
      embedding_l2: see `RankingConfig`.
      context_features: optional layer (e.g. `candidate_features.CandidateContext`) mapping
        the feature dict to dense per-candidate features [B, S, F]; they join the pair
        features and a linear "wide" term on the output, so a strong upstream signal such as
        the retrieval score reaches the score directly instead of through the deep stack.
    """

    def __init__(self, query_tower: Optional[QueryTower], candidate_tower: Optional[CandidateTower],
                 scorer: CrossNetwork, loss: str,
                 history_attention: Optional[CandidateAttention] = None,
                 item_genres: Optional[AttributeLookup] = None, history_len: int = 50,
                 embedding_l2: float = 0.0,
                 user_attributes: Optional[Mapping[str, AttributeLookup]] = None,
                 context_features: Optional[tf.keras.layers.Layer] = None,
                 id_features: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not id_features and context_features is None:
            raise ValueError("RankingModel with id_features=False needs context_features")
        if id_features and (query_tower is None or candidate_tower is None):
            raise ValueError("RankingModel with id_features=True needs both towers")
        self.id_features = bool(id_features)
        self.context_features = context_features
        self.wide = (tf.keras.layers.Dense(1, use_bias=False, name="wide")
                     if context_features is not None else None)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.scorer = scorer
        self.history_attention = history_attention
        self.item_genres = item_genres
        self.user_attributes = dict(user_attributes or {})
        self.history_len = int(history_len)
        self.embedding_l2 = float(embedding_l2)
        self.loss_spec = get_loss(loss)
        self.ranking_loss = RankingLoss(self.loss_spec.key)
        self.example_loss = tf.keras.metrics.Mean(name="example_loss")
        self.ndcg = tfr.keras.metrics.NDCGMetric(name="ndcg_10", topn=10)
        self.mrr = tfr.keras.metrics.MRRMetric(name="mrr_10", topn=10)
        self.rmse = (tf.keras.metrics.RootMeanSquaredError(name="rmse")
                     if self.loss_spec.predicts_rating else None)

    @property
    def item_id_embedding(self) -> ItemIdEmbedding:
        return self.candidate_tower.item_id_embedding

    def _history(self, features) -> tf.Tensor:
        # Compacted so the most recent ids are last however the caller padded.
        history = compact_right(features["history"])
        return history[:, -self.history_len:] if self.history_len > 0 else history[:, :0]

    def user_vectors(self, features: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
        """The query tower's user representation [B, D] (user id, history, user features)."""
        if self.query_tower is None:
            raise ValueError("this RankingModel has no towers (id_features=False)")
        query_inputs = {"user_id": features["user_id"], "history": self._history(features)}
        for name, lookup in self.user_attributes.items():
            query_inputs[name] = lookup(features["user_id"])
        return self.query_tower(query_inputs, training=training)

    def item_vectors(self, items: tf.Tensor, training=None) -> tf.Tensor:
        """The candidate tower's item representation [B, S, D] of raw ids [B, S]."""
        if self.candidate_tower is None:
            raise ValueError("this RankingModel has no towers (id_features=False)")
        items = tf.convert_to_tensor(items)
        batch, size = tf.shape(items)[0], tf.shape(items)[1]
        flat = tf.reshape(items, [-1])
        candidate_inputs = {"item_id": flat}
        if self.item_genres is not None:
            candidate_inputs["item_genres"] = self.item_genres(flat)
        item = self.candidate_tower(candidate_inputs, training=training)
        return tf.reshape(item, tf.stack([batch, size, tf.shape(item)[-1]]))

    def call(self, features: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
        items = tf.convert_to_tensor(features["item_id"])
        batch, size = tf.shape(items)[0], tf.shape(items)[1]
        history = self._history(features)
        parts = []
        if self.id_features:
            user = self.user_vectors(features, training=training)  # [B, D]
            item = self.item_vectors(items, training=training)  # [B, S, D]
            user_b = tf.broadcast_to(user[:, None, :], tf.shape(item))
            parts = [user_b, item, tf.reduce_sum(user_b * item, -1, keepdims=True)]
        if self.history_attention is not None and self.id_features:
            table = self.item_id_embedding
            history_ids = table.lookup(history)
            history_vectors = table.embedding(history_ids)
            candidate_vectors = table(items)
            parts.append(self.history_attention(candidate_vectors, history_vectors,
                                                tf.not_equal(history_ids, 0)))
        wide = None
        if self.context_features is not None:
            context = self.context_features(features)  # [B, S, F]
            parts.append(context)
            wide = tf.squeeze(self.wide(context), -1)
        pair = tf.concat(parts, axis=-1)
        scores = self.scorer(tf.reshape(pair, tf.stack([-1, tf.shape(pair)[-1]])),
                             training=training)
        scores = tf.reshape(scores, tf.stack([batch, size]))
        return scores if wide is None else scores + wide

    def start_from(self, weights: Mapping[str, float]) -> None:
        """Makes the (built) model score Σ_f weights[f] · f over its context features, plus a
        constant: the wide term carries those weights and the scorer's output unit is zeroed,
        so training starts from that fixed scorer (e.g. a validation-chosen blend of the
        retrieval score and a peer's score) and learns corrections to it.

        The context layer standardises each feature with constants of the training lists; its
        wide weight is scaled back by the feature's std, so the term is the blend of the
        features as the layer computes them before that step (its means only add a constant
        to every entry, which no list order sees). Called on a trained model it puts the
        model back at that scorer: the deep stack's output reaches the score only through
        the output unit it zeroes.
        """
        layer = self.context_features
        if layer is None or not self.wide.built or not self.scorer.output_layer.built:
            raise ValueError("start_from needs a built model with context features (call it "
                             "on a batch first)")
        names = list(layer.feature_names)
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"start_from: no context feature(s) {unknown}; the layer has "
                             f"{names}")
        std = (np.ones(len(names), np.float32) if layer.feature_std is None
               else np.asarray(layer.feature_std, np.float32))
        kernel = np.zeros((len(names), 1), np.float32)
        for name, weight in weights.items():
            kernel[names.index(name), 0] = float(weight) * std[names.index(name)]
        self.wide.kernel.assign(kernel)
        output = self.scorer.output_layer
        output.kernel.assign(tf.zeros_like(output.kernel))
        output.bias.assign(tf.zeros_like(output.bias))

    def _penalty(self, features, mask) -> tf.Tensor:
        tower = self.query_tower
        users = tower.user_embedding(tower.user_lookup(features["user_id"]))
        items = self.item_id_embedding(features["item_id"])
        weights = tf.cast(mask, tf.float32)
        item_sq = tf.reduce_sum(tf.reduce_sum(tf.square(items), -1) * weights)
        user_sq = tf.reduce_sum(tf.reduce_sum(tf.square(users), -1) * tf.reduce_sum(weights, 1))
        # Each real entry is one (user, item) example: penalise both of its embeddings once.
        return self.embedding_l2 * (item_sq + user_sq) / tf.maximum(tf.reduce_sum(weights), 1.0)

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False
                     ) -> tf.Tensor:
        for key in ("label", "mask"):
            if key not in features:
                raise KeyError(f"RankingModel training batches need {key!r}; got "
                               f"{sorted(features)}")
        mask = tf.cast(features["mask"], tf.bool)
        labels = tf.where(mask, tf.cast(features["label"], tf.float32), -1.0)
        scores = self(features, training=training)
        loss = self.ranking_loss(labels, scores, mask)
        self.example_loss.update_state(loss)
        masked_scores = tf.where(mask, scores, tf.reduce_min(scores) - 1.0)
        self.ndcg.update_state(labels, masked_scores)
        self.mrr.update_state(labels, masked_scores)
        if self.rmse is not None:
            self.rmse.update_state(labels, scores, sample_weight=tf.cast(mask, tf.float32))
        if self.embedding_l2 > 0 and self.id_features:
            loss = loss + self._penalty(features, mask)
        return loss

    def train_step(self, inputs):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas == 1:
            return super().train_step(inputs)
        # The optimizer sums the replicas' gradients while each replica's loss is a mean over
        # its part of the global batch: dividing by the replicas makes a step follow the
        # global mean, as Keras does for compiled losses. The logged values stay unscaled.
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization_loss = tf.reduce_sum([tf.reduce_sum(extra) for extra in self.losses])
            total_loss = loss + regularization_loss
            share = total_loss / replicas
        gradients = tape.gradient(share, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        logs = {metric.name: metric.result() for metric in self.metrics}
        logs.update(loss=loss, regularization_loss=regularization_loss, total_loss=total_loss)
        return logs


def build_ranking_model(config: RankingConfig, user_vocab: Sequence[str],
                        item_vocab: Sequence[str], *,
                        item_genres: Optional[Mapping[str, str]] = None,
                        genre_vocab: Optional[Sequence[str]] = None, label_mean: float = 0.0,
                        towers: Optional[Tuple[QueryTower, CandidateTower]] = None,
                        user_features: Optional[Mapping[str, Mapping[str, str]]] = None,
                        context_features: Optional[tf.keras.layers.Layer] = None
                        ) -> RankingModel:
    """Seeded towers, DIN attention and cross network wired into one `RankingModel`.

    Call inside `strategy.scope()` when training under a tf.distribute strategy.

    Args:
      config: RankingConfig.
      user_vocab, item_vocab: train user / item ids (lists or `Vocabulary` objects).
      item_genres: {item id: '|'-joined genres}; with `genre_vocab` it enables the candidate
        tower's genre branch, looked up inside the model so inputs stay raw ids.
      genre_vocab: genre labels (default: every label in `item_genres`).
      label_mean: initial output bias; use the mean train rating for rating losses.
      towers: (query tower, candidate tower) to reuse, e.g. a trained retrieval model's (they
        must share one item-id table and be built for `config.history_len`); default fresh
        towers from `towers.build_towers`.
      user_features: {feature: {user id: value}} of categorical user features (see
        `user_attribute_maps`); unknown users and values fall into OOV buckets.
    """
    tf.keras.utils.set_random_seed(config.seed)
    genre_lookup = None
    if item_genres:
        ids = sorted(item_genres)
        genre_lookup = AttributeLookup(ids, [item_genres[i] for i in ids],
                                       name="item_genre_lookup")
        if genre_vocab is None:
            genre_vocab = sorted({g for v in item_genres.values() for g in str(v).split("|")
                                  if g})
        if not genre_vocab:
            genre_lookup, genre_vocab = None, None
    user_lookups, user_vocabs = {}, {}
    for name, values in sorted((user_features or {}).items()):
        ids = sorted(values)
        user_lookups[name] = AttributeLookup(ids, [values[u] for u in ids],
                                             name=f"user_{name}_lookup")
        user_vocabs[name] = sorted({str(v) for v in values.values() if str(v)})
    if not config.id_features:
        # Scored from context features alone: untrained towers would only be dead weight
        # (and unbuilt variables Keras refuses to train around).
        query = candidate = None
    elif towers is None:
        query, candidate = build_towers(config, user_vocab, item_vocab,
                                        genre_vocab=genre_vocab if genre_lookup else None,
                                        user_feature_vocabs=user_vocabs or None)
    else:
        query, candidate = towers
        if query.config.history_len > 0 and query.item_id_embedding is not \
                candidate.item_id_embedding:
            raise ValueError("the given towers must share one item-id table")
        if genre_lookup is not None and not candidate.use_genres:
            genre_lookup = None  # the reused tower has no genre branch to feed
    attention = (CandidateAttention(config.din_units, name="candidate_attention")
                 if config.din_units > 0 and config.history_len > 0 and config.id_features
                 else None)
    scorer = CrossNetwork(config.num_cross_layers, config.cross_projection_dim or None,
                          config.deep_dims, config.deep_dropout,
                          output_bias=float(label_mean), name="cross_network")
    return RankingModel(query, candidate, scorer, config.loss, attention, genre_lookup,
                        config.history_len, config.embedding_l2, user_lookups,
                        context_features=context_features, id_features=config.id_features)


def predict_lists(model: RankingModel, lists: RankingLists, batch_size: int = 256
                  ) -> np.ndarray:
    """Scores [L, S] of every list entry (float64), -inf on padding."""
    parts = []
    for start in range(0, len(lists), batch_size):
        stop = start + batch_size
        feats = {"user_id": tf.constant(lists.user_id[start:stop].astype(str)),
                 "history": tf.constant(lists.history[start:stop].astype(str)),
                 "item_id": tf.constant(lists.item_id[start:stop].astype(str))}
        feats.update({k: tf.constant(v[start:stop]) for k, v in lists.extra.items()})
        if lists.history_rating is not None:
            feats[HISTORY_RATING] = tf.constant(lists.history_rating[start:stop])
        parts.append(model(feats, training=False).numpy().astype(np.float64))
    scores = (np.concatenate(parts) if parts
              else np.zeros((0, lists.list_size), np.float64))
    return np.where(lists.mask, scores, -np.inf)


def item_genre_map(items) -> Optional[Dict[str, str]]:
    """{item id: '|'-joined genres} from an items frame, or None when it has no genres."""
    if items is None or GENRES not in getattr(items, "columns", ()):
        return None
    frame = items.drop_duplicates(ITEM_ID)
    return dict(zip(frame[ITEM_ID].astype(str), frame[GENRES].fillna("").astype(str)))


def user_attribute_maps(users, columns: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """{column: {user id: value}} of categorical user columns of a users frame."""
    if not columns:
        return {}
    if users is None:
        raise ValueError(f"user features {list(columns)} were asked for but the dataset has "
                         "no users frame")
    missing = [c for c in columns if c not in users.columns]
    if missing:
        raise ValueError(f"user features {missing} are not columns of the users frame "
                         f"({list(users.columns)})")
    frame = users.drop_duplicates(USER_ID)
    return {c: dict(zip(frame[USER_ID].astype(str), frame[c].fillna("").astype(str)))
            for c in columns}


def fit_ranking_model(config: RankingConfig, train_lists: RankingLists,
                      val_lists: Optional[RankingLists], interactions, run_dir: str, *,
                      items=None, users=None, strategy: Optional[tf.distribute.Strategy] = None,
                      towers: Optional[Tuple[QueryTower, CandidateTower]] = None,
                      context_features: Optional[tf.keras.layers.Layer] = None,
                      start: Optional[Mapping[str, float]] = None, judge_start: bool = True
                      ) -> Tuple[RankingModel, FitResult, Dict[str, Vocabulary]]:
    """Builds a ranking model from `interactions`' vocabularies and trains it on lists.

    Early stopping and best-weight restore follow `config.monitor` on `val_lists` (the
    held-out lists of the training data, never test). Throughput counts list entries.

    Args:
      config: RankingConfig.
      train_lists, val_lists: training and held-out lists (`models.ranking_data`).
      interactions: the train interactions the user / item vocabularies come from.
      run_dir: `fit_model` run folder (checkpoints, TensorBoard, history, curves).
      items: optional items frame; its genres feed the candidate tower.
      users: optional users frame; `config.user_features` columns feed the query tower.
      strategy: tf.distribute strategy (default: the current one).
      towers: optional towers to reuse (see `build_ranking_model`).
      context_features: optional dense per-candidate feature layer (see `RankingModel`); the
        lists must then carry the extra features it reads (e.g. "retrieval_score").
      start: {context feature: weight} of a fixed scorer to start training from
        (`RankingModel.start_from`). Both that scorer and the trained model are judged on
        `val_lists` by NDCG@10 (`list_ndcg_at_10`); the trained weights are kept only if they
        beat it, otherwise the model is put back at the start, so a loss that cannot improve
        on the blend never serves something below it. Recorded in `FitResult.start`.
        The held-out lists also chose the best epoch, which favours the trained model; a
        caller with lists neither saw (cross-fitting, `cascade.fit`) passes
        `judge_start=False`, judges there, and calls `model.start_from(start)` to go back.
      judge_start: with `start`, judge it against the trained model on `val_lists` as above;
        False keeps the trained model.

    Returns:
      (model with the best epoch's weights, FitResult, {"user_id", "item_id"} vocabularies).
      Under a ParameterServerStrategy the model is a copy on this machine, and its
      `variable_shards` says how the trained variables were split over the ps tasks.
    """
    strategy = strategy or tf.distribute.get_strategy()
    parameter_servers = uses_parameter_servers(strategy)
    if parameter_servers and (towers is not None or context_features is not None):
        raise ValueError("fit_ranking_model: towers= and context_features= are layers built "
                         "on this machine, which a ParameterServerStrategy cannot place on its "
                         "ps tasks; fit such a ranker on the default strategy")
    vocabs = build_vocabularies(interactions, (USER_ID, ITEM_ID))
    labels = train_lists.label[train_lists.mask]
    label_mean = float(labels.mean()) if get_loss(config.loss).predicts_rating and labels.size \
        else 0.0

    def build(scope: tf.distribute.Strategy) -> RankingModel:
        with scope.scope():
            return build_ranking_model(
                config, vocabs[USER_ID].tokens, vocabs[ITEM_ID].tokens,
                item_genres=item_genre_map(items), label_mean=label_mean, towers=towers,
                user_features=user_attribute_maps(users, config.user_features),
                context_features=context_features)

    model = build(strategy)
    train_ds = train_lists.to_dataset(config.batch_size, shuffle=True, seed=config.seed)
    val_ds = (None if val_lists is None
              else val_lists.to_dataset(config.batch_size, shuffle=False))
    start_ndcg = None
    if start is not None:
        if context_features is None:
            raise ValueError("fit_ranking_model(start=...) needs context_features")
        if judge_start and (val_lists is None or not len(val_lists)):
            raise ValueError("fit_ranking_model(start=...) needs held-out val_lists to judge "
                             "the start by (or judge_start=False)")
        with strategy.scope():
            model(next(iter(train_ds)))  # creates the variables start_from sets
        model.start_from(start)
        if judge_start:
            start_ndcg = list_ndcg_at_10(val_lists.label, predict_lists(model, val_lists),
                                         val_lists.mask)
    metric_callbacks, local = [], None
    if parameter_servers:
        # Keras does not evaluate a validation set under parameter servers (see
        # models.training), so the held-out lists are scored on the coordinator by a local
        # copy of the model after every epoch, under the names Keras would log, for early
        # stopping and the best-epoch restore. The copy is also what is returned: it scores
        # without fetching every variable from the ps tasks, and exports whole variables.
        local = build(tf.distribute.get_strategy())
        local.compile(optimizer=tf.keras.optimizers.SGD())
        # One evaluation step creates every variable the copies below fill, metrics included.
        names = sorted(local.evaluate(train_ds.take(1), return_dict=True, verbose=0))
        if val_ds is not None:
            # Keras' evaluate would distribute over the strategy `fit` runs under; the copy's
            # own test step, looped here, runs on this machine.
            step = tf.function(local.test_step)

            def held_out() -> Dict[str, float]:
                copy_variables(model, local)
                local.reset_metrics()
                logs = {}
                for batch in val_ds:
                    logs = step(batch)
                return {k: float(v) for k, v in logs.items()}

            metric_callbacks.append(ValidationMetrics(held_out, names))
    result = fit_model(model, train_ds, val_ds, config, run_dir, strategy=strategy,
                       examples_per_epoch=train_lists.num_entries,
                       metric_callbacks=metric_callbacks)
    if local is not None:
        copy_variables(model, local)
        # Which tables were split, and where: the copy's record of the cluster's layout.
        local.variable_shards = variable_shards(model)
        model = local
    if start is not None:
        result.start = {"weights": {k: float(v) for k, v in start.items()}}
    if start_ndcg is not None:
        trained_ndcg = list_ndcg_at_10(val_lists.label, predict_lists(model, val_lists),
                                       val_lists.mask)
        kept = "trained" if trained_ndcg > start_ndcg else "start"
        if kept == "start":
            # The output unit zeroed again: whatever the deep stack learned no longer counts.
            model.start_from(start)
        result.start.update(held_out_ndcg_10_start=start_ndcg,
                            held_out_ndcg_10_trained=trained_ndcg, kept=kept)
    return model, result, vocabs
