"""The one tower builder: query (user) and candidate (item) towers over raw feature dicts.

Every model that needs a user or an item representation (two-tower retrieval, the ranking
stage) builds it here. Towers hold their own preprocessing (`StringLookup`, `TextVectorization`)
so they take the raw feature dict the data layer yields, and an exported tower accepts raw
string ids and text:

  query features      user_id [B] string, history [B, N] string (left-padded with ""),
                      history_mask [B, N] bool (optional), plus any user categorical features
  candidate features  item_id [B] string, item_genres [B] '|'-joined string (optional),
                      item_title [B] string (optional), item_text_vector [B, D] float (optional)

The history and the candidate item id share one `ItemIdEmbedding` (lookup table + embedding),
so what the query tower learns about an item from a user's history is the same vector the
candidate tower starts from. Unknown ids land in OOV buckets; "" in a history is the mask slot.

Cold items are an option of the candidate tower (`TowerConfig.zero_oov_item_id`,
`item_id_dropout`): its view of the shared table then gives unknown ids a zero vector, and
training zeroes a share of the id vectors, so the content features carry an item on their own.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.features.id_lists import compact_right, fit_width

HISTORY_POOLINGS = ("attention", "transformer", "mean")
# Masked attention logits: large enough to give exp() == 0, small enough to stay finite in float32.
_MASKED_LOGIT = -1e9


@dataclasses.dataclass
class TowerConfig:
    """Shape of the query and candidate towers.

    Args:
      embedding_dim: size of the tower outputs (the retrieval embedding).
      id_embedding_dim: size of the user-id and item-id embedding tables.
      feature_embedding_dim: size of embeddings for categorical side features and genres.
      text_embedding_dim: size of the title-token embeddings and of the text-vector projection.
      history_len: how many of the most recent history items the query tower reads; 0 disables
        the history branch.
      history_pooling: "attention" (masked additive attention), "transformer" (one self-attention
        block, then masked attention pooling) or "mean" (masked mean).
      num_heads: attention heads of the transformer block.
      hidden_dims: widths of the ReLU layers between the concatenated features and the output.
      dropout: dropout rate after each hidden layer.
      normalize: L2-normalise the tower outputs (dot product == cosine similarity).
      num_oov: OOV buckets of every StringLookup (unknown ids hash into these).
      title_max_len: tokens kept per title by the learned title tower.
      user_id_dropout: share of training examples whose user id is replaced by the first OOV
        bucket, so the OOV embedding and the history branch learn to serve unknown users.
      item_id_dropout: share of training examples whose candidate item-id vector is zeroed
        (`ColdStartItemId`), so the content features learn to represent an item on their own.
      zero_oov_item_id: an item id outside the vocabulary (a cold item) contributes a zero id
        vector to the candidate tower instead of the shared, untrained OOV-bucket vector.
    """

    embedding_dim: int = 64
    id_embedding_dim: int = 32
    feature_embedding_dim: int = 16
    text_embedding_dim: int = 32
    history_len: int = 20
    history_pooling: str = "attention"
    num_heads: int = 2
    hidden_dims: Tuple[int, ...] = (128,)
    dropout: float = 0.0
    normalize: bool = True
    num_oov: int = 1
    title_max_len: int = 16
    user_id_dropout: float = 0.0
    item_id_dropout: float = 0.0
    zero_oov_item_id: bool = False

    def __post_init__(self):
        self.validate_tower()

    def validate_tower(self) -> None:
        self.hidden_dims = tuple(int(d) for d in self.hidden_dims)
        for name in ("embedding_dim", "id_embedding_dim", "feature_embedding_dim",
                     "text_embedding_dim", "num_heads", "num_oov", "title_max_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TowerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.history_len < 0:
            raise ValueError(f"TowerConfig.history_len must be >= 0, got {self.history_len!r}")
        if self.history_pooling not in HISTORY_POOLINGS:
            raise ValueError(f"TowerConfig.history_pooling must be one of {HISTORY_POOLINGS}, "
                             f"got {self.history_pooling!r}")
        if any(d < 1 for d in self.hidden_dims):
            raise ValueError(f"TowerConfig.hidden_dims must be positive, got {self.hidden_dims}")
        for name in ("dropout", "user_id_dropout", "item_id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TowerConfig.{name} must be in [0, 1), "
                                 f"got {getattr(self, name)!r}")


def _clean_vocab(vocab, what: str, allow_empty: bool = False) -> list:
    """Plain str tokens, checked for the mistakes StringLookup reports only obscurely.

    Accepts a list / numpy array of tokens, or any object with a `.tokens` attribute.
    """
    vocab = getattr(vocab, "tokens", vocab)
    tokens = [t.decode() if isinstance(t, bytes) else str(t) for t in np.asarray(vocab).ravel()]
    if not tokens and not allow_empty:
        raise ValueError(f"{what} vocabulary is empty")
    if "" in tokens:
        raise ValueError(f"{what} vocabulary contains the empty string at position "
                         f"{tokens.index('')}; \"\" is reserved for padding/missing values")
    if len(set(tokens)) != len(tokens):
        seen, dup = set(), None
        for t in tokens:
            if t in seen:
                dup = t
                break
            seen.add(t)
        raise ValueError(f"{what} vocabulary has duplicate token {dup!r}")
    return tokens


def _require(features: Mapping[str, tf.Tensor], key: str, tower: str) -> tf.Tensor:
    if key not in features:
        raise KeyError(f"{tower} needs feature {key!r}, but the input only has "
                       f"{sorted(features)}")
    return features[key]


def _mlp(config: TowerConfig, name: str) -> tf.keras.Sequential:
    layers = []
    for i, width in enumerate(config.hidden_dims):
        layers.append(tf.keras.layers.Dense(width, activation="relu", name=f"hidden_{i}"))
        if config.dropout > 0:
            layers.append(tf.keras.layers.Dropout(config.dropout))
    layers.append(tf.keras.layers.Dense(config.embedding_dim, name="output"))
    return tf.keras.Sequential(layers, name=name)


class ItemIdEmbedding(tf.keras.layers.Layer):
    """Item-id lookup + embedding table shared by the query history and the candidate tower.

    Index 0 is the mask slot for "" (history padding), then `num_oov` OOV buckets, then the
    vocabulary.

    Args:
      item_vocab: train item ids (strings, no "" and no duplicates).
      dim: embedding size.
      num_oov: OOV buckets for unknown ids.
    """

    def __init__(self, item_vocab: Sequence[str], dim: int, num_oov: int = 1, **kwargs):
        super().__init__(**kwargs)
        vocab = _clean_vocab(item_vocab, "item id")
        self.lookup = tf.keras.layers.StringLookup(
            vocabulary=vocab, mask_token="", num_oov_indices=num_oov, name="item_id_lookup")
        self.embedding = tf.keras.layers.Embedding(
            self.lookup.vocabulary_size(), dim, name="item_id_embedding")
        self.dim = dim

    def call(self, item_ids: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.lookup(item_ids))


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

    def __init__(self, inner: ItemIdEmbedding, num_oov: int = 1, dropout: float = 0.0,
                 zero_oov: bool = True, **kwargs):
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


class MaskedAttentionPooling(tf.keras.layers.Layer):
    """Additive attention over a masked sequence: softmax(v·tanh(W x_n)) weighted sum.

    A fully masked row gets all-zero weights, hence a zero (finite) output.

    Args:
      units: width of the attention projection.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.proj = tf.keras.layers.Dense(units, activation="tanh")
        self.score = tf.keras.layers.Dense(1, use_bias=False)

    def call(self, x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        logits = tf.squeeze(self.score(self.proj(x)), -1)
        # The rank stated for Grappler's cost model, which loses it inside SavedModel functions
        # and logs an error per export otherwise.
        logits = tf.ensure_shape(tf.where(mask, logits, _MASKED_LOGIT), [None, None])
        # For an all-masked row softmax is uniform; multiplying by the mask zeroes it.
        weights = tf.nn.softmax(logits, axis=-1) * tf.cast(mask, x.dtype)
        return tf.einsum("bn,bnd->bd", weights, x)


def masked_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of `x` [B, N, D] over the unmasked positions; zeros for an all-masked row."""
    m = tf.cast(mask, x.dtype)[..., None]
    return tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


class HistoryEncoder(tf.keras.layers.Layer):
    """Pools a user's recent item embeddings into one vector.

    Args:
      config: TowerConfig (uses history_len, history_pooling, num_heads, dropout).
      dim: size of the item embeddings it receives.
    """

    def __init__(self, config: TowerConfig, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.pooling = config.history_pooling
        self.history_len = config.history_len
        if self.pooling != "mean":
            # Indexed by recency rank (0 = most recent), so any N <= history_len lines up.
            self.positions = tf.keras.layers.Embedding(config.history_len, dim, name="recency")
            self.attention_pool = MaskedAttentionPooling(dim, name="attention_pool")
        if self.pooling == "transformer":
            self.mha = tf.keras.layers.MultiHeadAttention(
                num_heads=config.num_heads, key_dim=max(1, dim // config.num_heads),
                dropout=config.dropout, name="self_attention")
            self.norm1 = tf.keras.layers.LayerNormalization(name="norm1")
            self.ffn = tf.keras.Sequential([tf.keras.layers.Dense(2 * dim, activation="relu"),
                                            tf.keras.layers.Dense(dim)], name="ffn")
            self.norm2 = tf.keras.layers.LayerNormalization(name="norm2")

    def call(self, x: tf.Tensor, mask: tf.Tensor, training=None) -> tf.Tensor:
        if self.pooling == "mean":
            return masked_mean(x, mask)
        n = tf.shape(x)[1]
        recency = tf.range(n - 1, -1, -1)
        x = x + self.positions(recency)[None, :, :]
        if self.pooling == "transformer":
            attn_mask = tf.tile(mask[:, None, :], [1, n, 1])
            attended = self.mha(x, x, attention_mask=attn_mask, training=training)
            x = self.norm1(x + attended)
            x = self.norm2(x + self.ffn(x))
        return self.attention_pool(x, mask)


class QueryTower(tf.keras.Model):
    """User tower: user id, optional user categorical features, pooled recent history.

    Args:
      config: TowerConfig.
      user_vocab: train user ids.
      item_id_embedding: the ItemIdEmbedding shared with the candidate tower.
      user_feature_vocabs: {feature name: vocabulary} of categorical user features read from
        the input dict under the same names.

    Example:
      >>> tower = QueryTower(TowerConfig(), ["u1", "u2"], ItemIdEmbedding(["i1"], 32))
      >>> tower({"user_id": tf.constant(["u1"]), "history": tf.constant([["", "i1"]])})
    """

    def __init__(self, config: TowerConfig, user_vocab: Sequence[str],
                 item_id_embedding: Optional[ItemIdEmbedding] = None,
                 user_feature_vocabs: Optional[Mapping[str, Sequence[str]]] = None,
                 name: str = "query_tower", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.user_lookup = tf.keras.layers.StringLookup(
            vocabulary=_clean_vocab(user_vocab, "user id"), num_oov_indices=config.num_oov,
            name="user_id_lookup")
        self.user_embedding = tf.keras.layers.Embedding(
            self.user_lookup.vocabulary_size(), config.id_embedding_dim, name="user_id_embedding")
        self.feature_names = sorted(user_feature_vocabs or {})
        self.feature_lookups: Dict[str, tf.keras.layers.Layer] = {}
        self.feature_embeddings: Dict[str, tf.keras.layers.Layer] = {}
        for feat in self.feature_names:
            lookup = tf.keras.layers.StringLookup(
                vocabulary=_clean_vocab(user_feature_vocabs[feat], f"user feature {feat!r}"),
                num_oov_indices=config.num_oov, name=f"{feat}_lookup")
            self.feature_lookups[feat] = lookup
            self.feature_embeddings[feat] = tf.keras.layers.Embedding(
                lookup.vocabulary_size(), config.feature_embedding_dim, name=f"{feat}_embedding")
        self.use_history = config.history_len > 0
        if self.use_history:
            if item_id_embedding is None:
                raise ValueError("QueryTower with history_len > 0 needs the shared "
                                 "item_id_embedding (see build_towers)")
            self.item_id_embedding = item_id_embedding
            self.history_encoder = HistoryEncoder(config, item_id_embedding.dim, name="history")
        self.mlp = _mlp(config, "query_mlp")

    def call(self, features: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
        user_ids = _require(features, "user_id", "QueryTower")
        user_index = self.user_lookup(user_ids)
        if training and self.config.user_id_dropout > 0:
            # Index 0 is the first OOV bucket (the user lookup has no mask token).
            drop = tf.random.uniform(tf.shape(user_index)) < self.config.user_id_dropout
            user_index = tf.where(drop, tf.zeros_like(user_index), user_index)
        parts = [self.user_embedding(user_index)]
        for feat in self.feature_names:
            values = _require(features, feat, "QueryTower")
            parts.append(self.feature_embeddings[feat](self.feature_lookups[feat](values)))
        if self.use_history:
            # Compacted first, so the most recent ids are the last ones however the caller
            # padded; a given history_mask clears its positions before that.
            history = compact_right(_require(features, "history", "QueryTower"),
                                    features.get("history_mask"))
            history = fit_width(history, self.config.history_len)
            ids = self.item_id_embedding.lookup(history)
            mask = tf.not_equal(ids, 0)  # "" is the mask slot
            item_vectors = self.item_id_embedding.embedding(ids)
            parts.append(self.history_encoder(item_vectors, mask, training=training))
        out = self.mlp(tf.concat(parts, axis=-1), training=training)
        return tf.math.l2_normalize(out, axis=-1) if self.config.normalize else out


class CandidateTower(tf.keras.Model):
    """Item tower: item id, optional genres (multi-hot), and text (vector or learned titles).

    Text: when `text_vector_dim` is set the tower reads the frozen pretrained vector
    `item_text_vector` and learns a Dense projection of it; otherwise, when `title_vocab` is
    given, it learns a bag-of-tokens title encoder over `item_title`.

    Cold items: with `config.zero_oov_item_id` or `config.item_id_dropout` the tower reads the
    shared table through a `ColdStartItemId` (`item_id_view`); `item_id_embedding` stays the
    shared table itself.

    Args:
      config: TowerConfig.
      item_id_embedding: the ItemIdEmbedding shared with the query tower.
      genre_vocab: genre labels; enables the `item_genres` branch.
      title_vocab: title tokens (see `adapt_title_vocabulary`); enables the `item_title` branch.
      text_vector_dim: width D of `item_text_vector`; enables the text-vector branch.

    Example:
      >>> ids = ItemIdEmbedding(["i1", "i2"], 32)
      >>> tower = CandidateTower(TowerConfig(), ids, genre_vocab=["Action", "Drama"])
      >>> tower({"item_id": tf.constant(["i1"]), "item_genres": tf.constant(["Action|Drama"])})
    """

    def __init__(self, config: TowerConfig, item_id_embedding: ItemIdEmbedding,
                 genre_vocab: Optional[Sequence[str]] = None,
                 title_vocab: Optional[Sequence[str]] = None,
                 text_vector_dim: Optional[int] = None,
                 name: str = "candidate_tower", **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.item_id_embedding = item_id_embedding
        self.item_id_view = item_id_embedding
        if config.item_id_dropout > 0 or config.zero_oov_item_id:
            # Only the candidate tower's use of the shared table changes; the history branch
            # of the query tower keeps reading it directly.
            self.item_id_view = ColdStartItemId(
                item_id_embedding, config.num_oov, config.item_id_dropout,
                config.zero_oov_item_id, name="cold_start_item_id")
        self.use_genres = genre_vocab is not None
        if self.use_genres:
            self.genre_lookup = tf.keras.layers.StringLookup(
                vocabulary=_clean_vocab(genre_vocab, "genre"), mask_token="",
                num_oov_indices=config.num_oov, output_mode="multi_hot", name="genre_lookup")
            # multi-hot @ W == sum of the item's genre embeddings.
            self.genre_projection = tf.keras.layers.Dense(
                config.feature_embedding_dim, use_bias=False, name="genre_embedding")
        self.text_vector_dim = text_vector_dim
        self.use_titles = text_vector_dim is None and title_vocab is not None
        if text_vector_dim is not None:
            if int(text_vector_dim) < 1:
                raise ValueError(f"text_vector_dim must be >= 1, got {text_vector_dim!r}")
            self.text_projection = tf.keras.layers.Dense(
                config.text_embedding_dim, name="text_vector_projection")
        elif self.use_titles:
            self.title_vectorizer = tf.keras.layers.TextVectorization(
                vocabulary=_clean_vocab(title_vocab, "title token"),
                output_sequence_length=config.title_max_len, name="title_vectorizer")
            self.title_embedding = tf.keras.layers.Embedding(
                self.title_vectorizer.vocabulary_size(), config.text_embedding_dim,
                name="title_token_embedding")
        self.mlp = _mlp(config, "candidate_mlp")

    def call(self, features: Mapping[str, tf.Tensor], training=None) -> tf.Tensor:
        parts = [self.item_id_view(_require(features, "item_id", "CandidateTower"))]
        if self.use_genres:
            genres = tf.strings.split(_require(features, "item_genres", "CandidateTower"),
                                      sep="|")
            parts.append(self.genre_projection(self.genre_lookup(genres)))
        if self.text_vector_dim is not None:
            vectors = tf.cast(_require(features, "item_text_vector", "CandidateTower"),
                              tf.float32)
            # The pretrained vectors are inputs, not variables: only the projection trains.
            parts.append(self.text_projection(tf.stop_gradient(vectors)))
        elif self.use_titles:
            tokens = self.title_vectorizer(_require(features, "item_title", "CandidateTower"))
            parts.append(masked_mean(self.title_embedding(tokens), tf.not_equal(tokens, 0)))
        out = self.mlp(tf.concat(parts, axis=-1), training=training)
        return tf.math.l2_normalize(out, axis=-1) if self.config.normalize else out


def title_tokens(titles: Iterable[str]) -> List[str]:
    """Every title token in order, standardised and split by the title tower's own layer.

    Keras `TextVectorization` does the work (default standardisation: lower case, ASCII
    punctuation removed; whitespace split), so a vocabulary counted from these tokens always
    matches what the title tower reads. Adapted without a size limit, its vocabulary maps the
    token ids back to the exact strings.
    """
    titles = [str(t) for t in titles]
    if not titles:
        return []
    vectorizer = tf.keras.layers.TextVectorization(ragged=True)
    vectorizer.adapt(tf.constant(titles))
    vocabulary = [str(t) for t in vectorizer.get_vocabulary()]
    return [vocabulary[i] for i in vectorizer(tf.constant(titles)).flat_values.numpy()]


def adapt_title_vocabulary(titles: Sequence[str], max_tokens: Optional[int] = 20000) -> list:
    """Title-token vocabulary from train titles, with the title tower's standardisation.

    Returns the tokens only (no "" mask or "[UNK]" entries), most frequent first.
    """
    vectorizer = tf.keras.layers.TextVectorization(max_tokens=max_tokens)
    vectorizer.adapt(tf.constant([str(t) for t in titles]))
    return [str(t) for t in vectorizer.get_vocabulary()[2:]]


def build_item_id_embedding(config: TowerConfig, item_vocab: Sequence[str]) -> ItemIdEmbedding:
    """The item-id table to share between a query tower and a candidate tower."""
    return ItemIdEmbedding(item_vocab, config.id_embedding_dim, config.num_oov,
                           name="item_ids")


def build_query_tower(config: TowerConfig, user_vocab: Sequence[str],
                      item_vocab: Optional[Sequence[str]] = None, *,
                      item_id_embedding: Optional[ItemIdEmbedding] = None,
                      user_feature_vocabs: Optional[Mapping[str, Sequence[str]]] = None
                      ) -> QueryTower:
    """Query tower over raw features; pass `item_id_embedding` to share the item table.

    When `item_id_embedding` is None and the history branch is on, a fresh table is built
    from `item_vocab`.
    """
    if item_id_embedding is None and config.history_len > 0:
        if item_vocab is None:
            raise ValueError("build_query_tower needs item_vocab or item_id_embedding "
                             "when history_len > 0")
        item_id_embedding = build_item_id_embedding(config, item_vocab)
    return QueryTower(config, user_vocab, item_id_embedding, user_feature_vocabs)


def build_candidate_tower(config: TowerConfig, item_vocab: Optional[Sequence[str]] = None, *,
                          item_id_embedding: Optional[ItemIdEmbedding] = None,
                          genre_vocab: Optional[Sequence[str]] = None,
                          title_vocab: Optional[Sequence[str]] = None,
                          text_vector_dim: Optional[int] = None) -> CandidateTower:
    """Candidate tower over raw features; pass `item_id_embedding` to share the item table.

    Cold items are handled as `config.zero_oov_item_id` and `config.item_id_dropout` say.
    """
    if item_id_embedding is None:
        if item_vocab is None:
            raise ValueError("build_candidate_tower needs item_vocab or item_id_embedding")
        item_id_embedding = build_item_id_embedding(config, item_vocab)
    return CandidateTower(config, item_id_embedding, genre_vocab, title_vocab, text_vector_dim)


def build_towers(config: TowerConfig, user_vocab: Sequence[str], item_vocab: Sequence[str], *,
                 user_feature_vocabs: Optional[Mapping[str, Sequence[str]]] = None,
                 genre_vocab: Optional[Sequence[str]] = None,
                 title_vocab: Optional[Sequence[str]] = None,
                 text_vector_dim: Optional[int] = None) -> Tuple[QueryTower, CandidateTower]:
    """(query tower, candidate tower) sharing one item-id embedding table."""
    shared = build_item_id_embedding(config, item_vocab)
    query = build_query_tower(config, user_vocab, item_id_embedding=shared,
                              user_feature_vocabs=user_feature_vocabs)
    candidate = build_candidate_tower(config, item_id_embedding=shared, genre_vocab=genre_vocab,
                                      title_vocab=title_vocab, text_vector_dim=text_vector_dim)
    return query, candidate
