"""Stage 3: a listwise re-ranker that reads the whole ranked list at once (PRM-style).

PRM (Pei et al., "Personalized Re-ranking for Recommendation", RecSys 2019) re-scores the
ranking stage's top list with a Transformer encoder, so each candidate's new score depends on
the other candidates (a film is worth less in a list already holding three like it) and on
the user. `Reranker` wires injected parts:

  input layer     `RerankerInput`: per-list masked standardisation of the dense score
                  features, a projection of [item vector, scores, user vector] to model_dim
                  plus a user x item product term, plus a learned embedding of the input rank
  encoder         `num_layers` `RerankerEncoderBlock`s: tf.keras MultiHeadAttention over
                  the list with the padding mask, feed-forward, layer norm, dropout
  output head     a per-candidate MLP to one score, its last kernel initialised to zero
  skip term       a learned scalar (initialised to `skip_init` > 0) times the standardised
                  first score column, added to the head's output

The skip term and the zero-initialised head make an untrained re-ranker reproduce the input
order exactly (the first score column must be the score the ranking stage sorted by), and let
training move away from it only as far as the data supports: with little data the re-ranker
does not destroy a good ranker order.

Inputs of `call` (B lists of L candidates, in the ranking stage's order; L fixed per trace):
  item_vectors [B, L, Di] float32   each candidate's representation (text vector, embedding)
  item_scores  [B, L, F]  float32   dense per-candidate features, column 0 the ranker score
                                    (others e.g. the retrieval score); standardised per list
  user_vector  [B, Du]    float32   the user (PRM's personalisation); omitted when Du = 0
  mask         [B, L]     bool      False on padding
Training batches add label [B, L] float32 (-1 or anything on padding; the mask decides).
Output: scores [B, L] float32, padding at -1e9 (finite, so exports and losses stay NaN-free).

Example:
  >>> config = RerankerConfig(num_layers=1, model_dim=32, epochs=5)
  >>> model, result = fit_reranker(config, train_arrays, val_arrays, "runs/rerank/x")
  >>> scores = rerank_scores(model, test_arrays)        # [B, L], -inf on padding
  >>> order = np.argsort(-scores, axis=1)
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recommenders_tf.compat import tfr
from recommenders_tf.models.losses import RankingLoss, get_loss
from recommenders_tf.models.training import FitResult, TrainingConfig, fit_model

# Score of padded entries: far below any real score yet finite (an -inf would turn into NaN
# in losses that multiply or subtract scores, and JSON/TF Serving clients dislike it).
PAD_SCORE = -1e9
# The keys of `Reranker.call`'s input dict (an export's signature inputs).
INPUT_KEYS = ("item_vectors", "item_scores", "user_vector", "mask")


@dataclasses.dataclass
class RerankerConfig(TrainingConfig):
    """Everything that defines a re-ranker and its training.

    Training fields are documented on `TrainingConfig`; only some defaults differ here.

    Args:
      num_layers: Transformer encoder blocks (0 leaves a per-candidate model: the input layer,
        the head and the skip term, with no attention across the list).
      num_heads: attention heads; must divide `model_dim`.
      model_dim: width of the encoder.
      ff_dim: hidden width of each block's feed-forward layer and of the output head.
      dropout: dropout of attention weights, block outputs and the head.
      loss: ranking-loss registry key (`models.losses.LOSS_KEYS`); listwise by default.
      max_list_size: longest list the position embedding covers (input ranks 0..max-1).
      skip_init: initial weight of the skip term on the standardised first score column;
        > 0 so an untrained model keeps the input order (0 disables the skip term).
      train_skip: let training change the skip weight.
      monitor: early stopping watches validation NDCG@10 by default.
    """

    num_layers: int = 2
    num_heads: int = 2
    model_dim: int = 32
    ff_dim: int = 64
    dropout: float = 0.1
    loss: str = "softmax"
    max_list_size: int = 100
    skip_init: float = 1.0
    train_skip: bool = True
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 20
    patience: int = 3
    monitor: str = "val_ndcg_10"
    monitor_mode: str = "max"

    def __post_init__(self):
        self.loss = get_loss(self.loss).key
        self.validate_training()
        for name, low in (("num_layers", 0), ("num_heads", 1), ("model_dim", 1), ("ff_dim", 1),
                          ("max_list_size", 1)):
            value = getattr(self, name)
            if int(value) != value or int(value) < low:
                raise ValueError(f"RerankerConfig.{name} must be an integer >= {low}, "
                                 f"got {value!r}")
            setattr(self, name, int(value))
        if self.model_dim % self.num_heads:
            raise ValueError(f"RerankerConfig.model_dim ({self.model_dim}) must be divisible "
                             f"by num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RerankerConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.skip_init >= 0:
            raise ValueError(f"RerankerConfig.skip_init must be >= 0 (a negative weight would "
                             f"reverse the input order), got {self.skip_init!r}")


def standardize_scores(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Per-list, per-column z-scores over the unpadded entries; 0 on padding.

    A column that is constant within a list (std below 1e-6 of its largest magnitude, so the
    test is scale-free) maps to 0 instead of amplifying rounding noise.

    Args:
      scores: [B, L, F] float32.
      mask: [B, L] bool.
    """
    weights = tf.cast(mask, scores.dtype)[..., None]                       # [B, L, 1]
    scores = tf.where(weights > 0, scores, 0.0)  # NaN/inf padding must not leak into sums
    count = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
    mean = tf.reduce_sum(scores * weights, axis=1, keepdims=True) / count
    centred = (scores - mean) * weights
    std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=1, keepdims=True) / count)
    scale = tf.reduce_max(tf.abs(scores) * weights, axis=1, keepdims=True)
    informative = std > 1e-6 * scale
    return tf.where(informative, centred / tf.where(informative, std, 1.0), 0.0)


class RerankerInput(tf.keras.layers.Layer):
    """[item vector, standardised scores, user vector] -> model_dim, plus rank embedding.

    x_i = W [v_i, z_i, u] + (A v_i) * (C u) + P[rank i]. The product term is there because a
    linear projection of a concatenation adds the user's part as one offset shared by every
    candidate of the list, which cannot change the order; the product lets the user re-weight
    item dimensions from the first layer on (a factorisation-machine-style interaction).

    Args:
      model_dim: output width.
      max_list_size: ranks the position embedding covers.
      use_user: whether a user vector is read.
    """

    def __init__(self, model_dim: int, max_list_size: int, use_user: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.max_list_size = int(max_list_size)
        self.use_user = bool(use_user)
        self.projection = tf.keras.layers.Dense(model_dim, name="projection")
        self.position = tf.keras.layers.Embedding(max_list_size, model_dim,
                                                  name="position_embedding")
        if self.use_user:
            self.item_factor = tf.keras.layers.Dense(model_dim, use_bias=False,
                                                     name="item_factor")
            self.user_factor = tf.keras.layers.Dense(model_dim, name="user_factor")

    def call(self, items: tf.Tensor, scores: tf.Tensor, user: Optional[tf.Tensor]
             ) -> tf.Tensor:
        length = tf.shape(items)[1]
        parts = [items, scores]
        if self.use_user:
            parts.append(tf.broadcast_to(user[:, None, :],
                                         tf.stack([tf.shape(items)[0], length,
                                                   tf.shape(user)[-1]])))
        x = self.projection(tf.concat(parts, axis=-1))
        if self.use_user:
            x += self.item_factor(items) * self.user_factor(user)[:, None, :]
        return x + self.position(tf.range(length))[None]


class RerankerEncoderBlock(tf.keras.layers.Layer):
    """One Transformer encoder block over a candidate list (post-norm, as Vaswani et al.).

    h = LayerNorm(x + Dropout(MHA(x, x, mask))); out = LayerNorm(h + Dropout(FF(h))).
    Attention keys are restricted to unpadded positions; padded queries still get a finite
    output (they attend to the real items) that the model never reads.

    Args:
      model_dim, num_heads, ff_dim, dropout: see `RerankerConfig`.
    """

    def __init__(self, model_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.attention = tf.keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=model_dim // num_heads, dropout=dropout,
            name="attention")
        self.attention_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6,
                                                                 name="attention_norm")
        self.ff_hidden = tf.keras.layers.Dense(ff_dim, activation="relu", name="ff_hidden")
        self.ff_output = tf.keras.layers.Dense(model_dim, name="ff_output")
        self.ff_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="ff_norm")
        self.dropout = tf.keras.layers.Dropout(dropout)

    def call(self, x: tf.Tensor, mask: tf.Tensor, training=None) -> tf.Tensor:
        # [B, 1, L]: every query may look at every real key. A fully padded list masks every
        # key; Keras' masked softmax then stays finite (uniform weights), never NaN.
        attention_mask = mask[:, None, :]
        attended = self.attention(x, x, attention_mask=attention_mask, training=training)
        h = self.attention_norm(x + self.dropout(attended, training=training))
        ff = self.ff_output(self.ff_hidden(h))
        return self.ff_norm(h + self.dropout(ff, training=training))


class RerankerHead(tf.keras.layers.Layer):
    """Per-candidate MLP [B, L, d] -> [B, L]; the last kernel starts at zero.

    The zero start makes the Transformer's contribution exactly 0 before training (only the
    skip term orders the list); gradients still reach the zero kernel at once (they are the
    hidden activations), so the rest of the network starts learning from the first step.

    Args:
      hidden_dim: hidden width (0: a single linear unit).
      dropout: dropout on the hidden layer.
    """

    def __init__(self, hidden_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = (tf.keras.layers.Dense(hidden_dim, activation="relu", name="head_hidden")
                       if hidden_dim else None)
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.output_layer = tf.keras.layers.Dense(1, kernel_initializer="zeros",
                                                  name="head_score")

    def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
        if self.hidden is not None:
            x = self.dropout(self.hidden(x), training=training)
        return tf.squeeze(self.output_layer(x), -1)


class Reranker(tfrs.Model):
    """Re-scores whole candidate lists; trains with any loss of the ranking-loss registry.

    Args:
      input_layer: `RerankerInput`.
      encoder_blocks: `RerankerEncoderBlock`s applied in order (may be empty).
      head: `RerankerHead`.
      loss: registry key.
      skip_init: initial skip weight on the standardised first score column (0: no skip).
      train_skip: whether the skip weight is trainable.
      item_dim, score_dim, user_dim: input widths Di, F, Du (checked at trace time;
        user_dim = 0 means the model reads no user vector).

    Example:
      >>> model = build_reranker(RerankerConfig(), item_dim=384, score_dim=2, user_dim=32)
      >>> scores = model({"item_vectors": v, "item_scores": s, "user_vector": u, "mask": m})
    """

    def __init__(self, input_layer: RerankerInput, encoder_blocks, head: RerankerHead,
                 loss: str = "softmax", skip_init: float = 1.0, train_skip: bool = True,
                 item_dim: Optional[int] = None, score_dim: Optional[int] = None,
                 user_dim: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.input_layer = input_layer
        self.encoder_blocks = list(encoder_blocks)
        self.head = head
        self.item_dim, self.score_dim, self.user_dim = item_dim, score_dim, user_dim
        self.use_skip = float(skip_init) != 0.0
        self.skip_weight = self.add_weight(
            name="skip_weight", shape=(), trainable=bool(train_skip) and self.use_skip,
            initializer=tf.keras.initializers.Constant(float(skip_init)))
        self.loss_spec = get_loss(loss)
        self.ranking_loss = RankingLoss(self.loss_spec.key)
        self.example_loss = tf.keras.metrics.Mean(name="example_loss")
        self.ndcg = tfr.keras.metrics.NDCGMetric(name="ndcg_10", topn=10)

    def _check(self, name: str, tensor: tf.Tensor, rank: int, last: Optional[int]) -> None:
        # Static checks only: they run once per trace and fail with a readable message.
        shape = tensor.shape
        if shape.rank is not None and shape.rank != rank:
            raise ValueError(f"Reranker input {name!r} must have rank {rank}, got shape {shape}")
        if last is not None and shape.rank is not None and shape[-1] is not None \
                and shape[-1] != last:
            raise ValueError(f"Reranker input {name!r} must have last dimension {last}, "
                             f"got shape {shape}")

    def call(self, features: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
        needed = ("item_vectors", "item_scores", "mask") + (
            ("user_vector",) if self.input_layer.use_user else ())
        missing = [k for k in needed if k not in features]
        if missing:
            raise KeyError(f"Reranker inputs need {missing}; got {sorted(features)}")
        items = tf.cast(features["item_vectors"], tf.float32)
        scores = tf.cast(features["item_scores"], tf.float32)
        mask = tf.cast(features["mask"], tf.bool)
        self._check("item_vectors", items, 3, self.item_dim)
        self._check("item_scores", scores, 3, self.score_dim)
        self._check("mask", mask, 2, None)
        user = None
        if self.input_layer.use_user:
            user = tf.cast(features["user_vector"], tf.float32)
            self._check("user_vector", user, 2, self.user_dim)
        length = items.shape[1]
        max_size = self.input_layer.max_list_size
        if length is not None and length > max_size:
            raise ValueError(f"lists of {length} candidates exceed RerankerConfig."
                             f"max_list_size={max_size}; cut them or raise max_list_size")
        if length is None:
            tf.debugging.assert_less_equal(tf.shape(items)[1], max_size,
                                           message="list longer than max_list_size")
        # Padded slots may hold garbage (NaN vectors of unknown items): zero them first.
        items = tf.where(mask[..., None], items, 0.0)
        z = standardize_scores(scores, mask)
        x = self.input_layer(items, z, user)
        for block in self.encoder_blocks:
            x = block(x, mask, training=training)
        out = self.head(x, training=training)
        if self.use_skip:
            out += self.skip_weight * z[..., 0]
        return tf.where(mask, out, PAD_SCORE)

    def compute_loss(self, features: Mapping[str, tf.Tensor], training: bool = False
                     ) -> tf.Tensor:
        for key in ("label", "mask"):
            if key not in features:
                raise KeyError(f"Reranker training batches need {key!r}; got "
                               f"{sorted(features)}")
        mask = tf.cast(features["mask"], tf.bool)
        labels = tf.where(mask, tf.cast(features["label"], tf.float32), -1.0)
        scores = self(features, training=training)
        loss = self.ranking_loss(labels, scores, mask)
        self.example_loss.update_state(loss)
        self.ndcg.update_state(labels, tf.where(mask, scores, tf.reduce_min(scores) - 1.0))
        return loss


def build_reranker(config: RerankerConfig, item_dim: int, score_dim: int, user_dim: int
                   ) -> Reranker:
    """A seeded `Reranker` for inputs of widths Di = item_dim, F = score_dim, Du = user_dim.

    Call inside `strategy.scope()` when training under a tf.distribute strategy.

    Args:
      config: RerankerConfig.
      item_dim: width of "item_vectors" (>= 1).
      score_dim: columns of "item_scores" (>= 1; column 0 is the ranker score).
      user_dim: width of "user_vector" (0: no user vector is read).
    """
    for name, value, low in (("item_dim", item_dim, 1), ("score_dim", score_dim, 1),
                             ("user_dim", user_dim, 0)):
        if int(value) < low:
            raise ValueError(f"build_reranker: {name} must be >= {low}, got {value!r}")
    tf.keras.utils.set_random_seed(config.seed)
    input_layer = RerankerInput(config.model_dim, config.max_list_size,
                                use_user=int(user_dim) > 0, name="reranker_input")
    blocks = [RerankerEncoderBlock(config.model_dim, config.num_heads, config.ff_dim,
                                   config.dropout, name=f"encoder_{i}")
              for i in range(config.num_layers)]
    head = RerankerHead(config.ff_dim, config.dropout, name="reranker_head")
    return Reranker(input_layer, blocks, head, config.loss, config.skip_init,
                    config.train_skip, int(item_dim), int(score_dim), int(user_dim))


def check_arrays(arrays: Mapping[str, np.ndarray], need_label: bool = False,
                 user_dim: Optional[int] = None, where: str = "arrays"
                 ) -> Dict[str, np.ndarray]:
    """Validates and converts a dict of re-ranker arrays (dtype, rank, matching B and L).

    Returns the arrays as float32/bool numpy (label float32 when present). "user_vector" may be
    left out when `user_dim` is 0.
    """
    keys = ["item_vectors", "item_scores", "mask"]
    if user_dim != 0:
        keys.append("user_vector")
    if need_label:
        keys.append("label")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise KeyError(f"{where}: missing {missing}; got {sorted(arrays)}")
    out = {k: np.asarray(arrays[k]) for k in keys}
    ranks = {"item_vectors": 3, "item_scores": 3, "mask": 2, "user_vector": 2, "label": 2}
    for key in keys:
        if out[key].ndim != ranks[key]:
            raise ValueError(f"{where}[{key!r}] must have rank {ranks[key]}, "
                             f"got shape {out[key].shape}")
    b, length = out["mask"].shape
    for key in keys:
        per_entry = ranks[key] == 3 or key == "label"
        if out[key].shape[0] != b or (per_entry and out[key].shape[1] != length):
            raise ValueError(f"{where}[{key!r}] has shape {out[key].shape}; the mask says "
                             f"B={b} lists of L={length}")
    out["mask"] = out["mask"].astype(bool)
    for key in keys:
        if key != "mask":
            out[key] = out[key].astype(np.float32)
    bad = ~np.isfinite(out["item_scores"]).all(-1) & out["mask"]
    if bad.any():
        row, pos = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{where}['item_scores'] is not finite at list {row}, position {pos} "
                         "(an unpadded entry); fix the scores or mask the entry")
    return out


def _dataset(arrays: Dict[str, np.ndarray], batch_size: int, shuffle: bool, seed: int
             ) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        ds = ds.shuffle(len(arrays["mask"]), seed=seed, reshuffle_each_iteration=True)
    # Fixed L per batch (drop_remainder=False keeps B dynamic, L stays the arrays' width).
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit_reranker(config: RerankerConfig, train: Mapping[str, np.ndarray],
                 val: Optional[Mapping[str, np.ndarray]], run_dir: str, *,
                 strategy: Optional[tf.distribute.Strategy] = None
                 ) -> Tuple[Reranker, FitResult]:
    """Builds a re-ranker from the widths of `train` and trains it with `fit_model`.

    Early stopping and best-weight restore follow `config.monitor` (validation NDCG@10 by
    default) on `val`, lists held out from the training data (never test).

    Args:
      config: RerankerConfig.
      train, val: {"item_vectors" [N, L, Di], "item_scores" [N, L, F], "user_vector"
        [N, Du] (optional: leave it out for no user vector), "mask" [N, L], "label" [N, L]}
        numpy arrays; `val` may be None.
      run_dir: `fit_model` run folder (checkpoints, TensorBoard, history, curves).
      strategy: tf.distribute strategy (default: the current one).

    Returns:
      (model with the best epoch's weights, FitResult). Throughput counts lists.
    """
    user_dim = (0 if "user_vector" not in train
                else int(np.asarray(train["user_vector"]).shape[-1]))
    train = check_arrays(train, need_label=True, user_dim=user_dim, where="train")
    if val is not None:
        val = check_arrays(val, need_label=True, user_dim=user_dim, where="val")
        for key in ("item_vectors", "item_scores", "user_vector"):
            if key in train and val[key].shape[-1] != train[key].shape[-1]:
                raise ValueError(f"val[{key!r}] width {val[key].shape[-1]} differs from "
                                 f"train's {train[key].shape[-1]}")
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_reranker(config, train["item_vectors"].shape[-1],
                               train["item_scores"].shape[-1], user_dim)
    train_ds = _dataset(train, config.batch_size, shuffle=True, seed=config.seed)
    val_ds = None if val is None else _dataset(val, config.batch_size, False, config.seed)
    result = fit_model(model, train_ds, val_ds, config, run_dir, strategy=strategy,
                       examples_per_epoch=len(train["mask"]))
    return model, result


def rerank_scores(model: Reranker, arrays: Mapping[str, np.ndarray], batch_size: int = 256
                  ) -> np.ndarray:
    """Re-ranker scores [B, L] (float64) of every list entry, -inf on padding."""
    arrays = check_arrays(arrays, user_dim=0 if not model.input_layer.use_user else None,
                          where="arrays")
    n, length = arrays["mask"].shape
    parts = []
    for start in range(0, n, batch_size):
        feats = {k: tf.constant(v[start:start + batch_size]) for k, v in arrays.items()}
        parts.append(model(feats, training=False).numpy().astype(np.float64))
    scores = np.concatenate(parts) if parts else np.zeros((0, length), np.float64)
    return np.where(arrays["mask"], scores, -np.inf)
