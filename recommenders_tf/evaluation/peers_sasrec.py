"""SASRec peer trained with full-softmax cross-entropy over the catalogue.

SASRec (Kang & McAuley 2018) is a causal self-attention model over a user's last L items.
Trained with a cross-entropy over every item at every position, instead of the original
one-sampled-negative binary loss, it becomes one of the strongest sequential baselines
(Klenitskiy & Vasilev 2023, "SASRec+"; Petrov & Macdonald 2023, gSASRec), which is why it is
the sequential peer here.

The score of a user is the logits at the last position of their (fitted) history, so a user's
most recent items drive the ranking. The number of epochs is chosen on the validation slice by
early stopping on NDCG@10, then the model is retrained from scratch on train + validation for
that many epochs, as the other tuned peers are refit.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.ordering import time_order
from recommenders_tf.data.schema import ITEM_ID, TIMESTAMP, USER_ID, check_frame
from recommenders_tf.evaluation.peer_base import TopKPeer
from recommenders_tf.evaluation.protocol import TopKEvaluator

__all__ = ["SASRec", "user_sequences", "training_windows"]


def user_sequences(train: pd.DataFrame, items: pd.Index) -> Dict[str, np.ndarray]:
    """Each user's items as 1-based indices into `items`, in time order (ties by item id,
    compared as strings, as in the P1 split); interactions with other items are dropped."""
    check_frame(train, "train", [USER_ID, ITEM_ID, TIMESTAMP])
    users = train[USER_ID].astype(str).to_numpy()
    item_str = train[ITEM_ID].astype(str).to_numpy()
    codes = items.get_indexer(item_str) + 1
    keep = codes > 0
    users, item_str, codes = users[keep], item_str[keep], codes[keep]
    stamps = train[TIMESTAMP].to_numpy()[keep]
    user_codes, user_ids = pd.factorize(users, sort=True)
    item_order = pd.factorize(item_str, sort=True)[0]
    order = time_order(user_codes, stamps, item_order)
    user_codes, codes = user_codes[order], codes[order]
    bounds = np.flatnonzero(np.diff(user_codes)) + 1
    return {str(u): seq for u, seq in zip(user_ids, np.split(codes.astype(np.int32), bounds))}


def training_windows(sequences: Iterable[np.ndarray], max_len: int) -> Tuple[np.ndarray,
                                                                               np.ndarray]:
    """(inputs, targets), int32 [windows, max_len], left-padded with 0.

    Every sequence is cut, from its end backwards, into windows of max_len + 1 items; a window
    predicts item t + 1 from items up to t at each of its positions. Cutting the whole history
    rather than keeping only the last window matters on MovieLens, where most users have more
    than 50 interactions.
    """
    inputs: List[np.ndarray] = []
    targets: List[np.ndarray] = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            window = seq[max(0, end - max_len - 1): end]
            pad = max_len - (len(window) - 1)
            inputs.append(np.pad(window[:-1], (pad, 0)))
            targets.append(np.pad(window[1:], (pad, 0)))
            end -= max_len
    if not inputs:
        empty = np.zeros((0, max_len), dtype=np.int32)
        return empty, empty
    return np.stack(inputs).astype(np.int32), np.stack(targets).astype(np.int32)


def _last_window(seq: np.ndarray, max_len: int) -> np.ndarray:
    tail = seq[-max_len:]
    return np.pad(tail, (max_len - len(tail), 0))


def _build_network(n_items: int, max_len: int, dim: int, blocks: int, heads: int,
                   dropout: float):
    import recommenders_tf  # noqa: F401  (tf-keras before TensorFlow)
    import tensorflow as tf

    class SASRecNetwork(tf.keras.Model):
        """Item + position embeddings, `blocks` pre-norm causal attention blocks, final norm."""

        def __init__(self):
            super().__init__()
            # Row 0 is padding; logits use rows 1..n_items (tied input/output embeddings).
            self.item_embedding = tf.keras.layers.Embedding(n_items + 1, dim)
            self.position_embedding = tf.keras.layers.Embedding(max_len, dim)
            self.input_dropout = tf.keras.layers.Dropout(dropout)
            self.attention_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-8)
                                    for _ in range(blocks)]
            self.attentions = [tf.keras.layers.MultiHeadAttention(heads, dim // heads,
                                                                  dropout=dropout)
                               for _ in range(blocks)]
            self.ffn_norms = [tf.keras.layers.LayerNormalization(epsilon=1e-8)
                              for _ in range(blocks)]
            self.ffn = [(tf.keras.layers.Dense(dim, activation="relu"), tf.keras.layers.Dense(dim),
                         tf.keras.layers.Dropout(dropout), tf.keras.layers.Dropout(dropout))
                        for _ in range(blocks)]
            self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-8)
            self.causal = tf.cast(tf.linalg.band_part(tf.ones((max_len, max_len)), -1, 0), tf.bool)

        def item_table(self):
            return self.item_embedding.embeddings[1:]

        def call(self, seq, training=False):
            present = seq > 0
            keep = tf.cast(present, tf.float32)[:, :, None]
            x = self.item_embedding(seq) * (dim ** 0.5)
            x = x + self.position_embedding(tf.range(max_len))[None]
            x = self.input_dropout(x, training=training) * keep
            mask = tf.logical_and(self.causal[None], present[:, None, :])
            for norm, attention, ffn_norm, (inner, outer, drop_a, drop_b) in zip(
                    self.attention_norms, self.attentions, self.ffn_norms, self.ffn):
                # As in the reference SASRec: the query is normalised, keys and values are not,
                # and the residual adds the normalised query.
                query = norm(x)
                x = query + attention(query, x, attention_mask=mask, training=training)
                x = ffn_norm(x)
                x = x + drop_b(outer(drop_a(inner(x), training=training)), training=training)
                x = x * keep
            return self.final_norm(x)

    return SASRecNetwork()


class SASRec(TopKPeer):
    """SASRec with full-softmax cross-entropy at every position ("SASRec+" / CE).

    Training data are the users' train sequences cut into windows of `max_len` + 1 items
    (`training_windows`); each position predicts the next item with a softmax over all train
    items (tied input/output item embeddings). Adam, seeded.

    Args:
      item_ids: see `TopKPeer`.
      max_len: L, the number of most recent items the model reads.
      dim, blocks, heads, dropout: the network; SASRec used 50 dims, 2 blocks, 1 head and
        dropout 0.2 on MovieLens-1M.
      learning_rate, batch_size: Adam step size and windows per step. The default 2e-3 (rather
        than SASRec's 1e-3) came from the ml-100k validation slice: best NDCG@10 0.229 after
        14 epochs against 0.233 after 22, a third less training on 2 CPU cores.
      epochs: a fixed number of epochs; None chooses it on validation by early stopping
        (without validation `max_epochs` are run).
      max_epochs: upper bound of the early-stopping search.
      eval_every: epochs between two validation NDCG@10 checks.
      patience: checks without improvement before stopping.
      seed: seeds TF (`tf.keras.utils.set_random_seed`) and the window shuffles.
      verbose: print the validation curve while searching.

    Example:
      >>> peer = SASRec(item_ids=evaluator.item_ids).fit(train, validation=val)
      >>> peer.chosen_epochs, peer.validation_curve  # [(epoch, ndcg@10), ...]
    """

    name = "SASRec"
    tunes_on_validation = True

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        max_len: int = 50,
        dim: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        learning_rate: float = 2e-3,
        batch_size: int = 128,
        epochs: Optional[int] = None,
        max_epochs: int = 100,
        eval_every: int = 2,
        patience: int = 2,
        seed: int = 0,
        verbose: bool = False,
    ):
        super().__init__(item_ids)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        if max_len < 1 or batch_size < 1 or max_epochs < 1 or eval_every < 1 or patience < 1:
            raise ValueError("max_len, batch_size, max_epochs, eval_every and patience must be "
                             ">= 1")
        if epochs is not None and int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        self.max_len, self.dim, self.blocks, self.heads = int(max_len), int(dim), int(blocks), \
            int(heads)
        self.dropout, self.learning_rate = float(dropout), float(learning_rate)
        self.batch_size = int(batch_size)
        self.epochs = None if epochs is None else int(epochs)
        self.max_epochs, self.eval_every, self.patience = int(max_epochs), int(eval_every), \
            int(patience)
        self.seed = int(seed)
        self.verbose = bool(verbose)
        self.chosen_epochs = 0
        self.validation_curve: List[Tuple[int, float]] = []
        self.loss_history: List[float] = []
        self.examples_per_second = 0.0

    def _settings(self) -> str:
        return (f"L={self.max_len}, dim={self.dim}, blocks={self.blocks}, heads={self.heads}, "
                f"dropout={self.dropout}, adam lr={self.learning_rate}, batch={self.batch_size}, "
                f"full-softmax CE, seed {self.seed}")

    def _fit(self, train, validation):
        check_frame(train, "train", [TIMESTAMP])
        if self.epochs is not None or validation is None:
            if validation is not None:
                train = pd.concat([train, validation], ignore_index=True)
            epochs = self.epochs or self.max_epochs
            self._train(train, epochs)
            self.chosen_epochs = epochs
            how = "fixed" if self.epochs is not None else "max_epochs, no validation"
            self.notes = f"epochs={epochs} ({how}); {self._settings()}"
            return
        check_frame(validation, "validation", [TIMESTAMP])
        evaluator = TopKEvaluator(train, validation, ks=(10,))
        self.validation_curve = []
        self._train(train, self.max_epochs, evaluator)
        best_epoch, best_ndcg = max(self.validation_curve, key=lambda r: (r[1], -r[0]))
        self.chosen_epochs = best_epoch
        self._train(pd.concat([train, validation], ignore_index=True), best_epoch)
        self.notes = (f"epochs={best_epoch} chosen on validation by ndcg@10={best_ndcg:.4f} "
                      f"(early stopping: checked every {self.eval_every}, patience "
                      f"{self.patience}, {self.validation_curve[-1][0]} epochs run of at most "
                      f"{self.max_epochs}); refit on train+validation; {self._settings()}")

    def _train(self, train: pd.DataFrame, epochs: int,
               evaluator: Optional[TopKEvaluator] = None) -> None:
        """Fits a fresh network; with `evaluator`, records the validation curve and stops
        early once NDCG@10 has not improved for `patience` checks."""
        import tensorflow as tf

        self._set_catalog(train)
        self._sequences = user_sequences(train, self._train_items)
        self._user_index = pd.Index(list(self._sequences), dtype=object)
        inputs, targets = training_windows(self._sequences.values(), self.max_len)
        if len(inputs) == 0:
            raise ValueError("SASRec needs at least one user with 2 or more train interactions")
        tf.keras.utils.set_random_seed(self.seed)
        net = _build_network(len(self._train_items), self.max_len, self.dim, self.blocks,
                             self.heads, self.dropout)
        optimizer = tf.keras.optimizers.Adam(self.learning_rate)
        # Creating every variable before tracing spares tf.function a second trace (variables
        # may only be created on the first one), which costs seconds per fit.
        net(tf.zeros((1, self.max_len), tf.int32))
        optimizer.build(net.trainable_variables)
        spec = tf.TensorSpec([None, self.max_len], tf.int32)

        @tf.function(input_signature=[spec, spec], autograph=False)
        def step(batch_inputs, batch_targets):
            with tf.GradientTape() as tape:
                hidden = net(batch_inputs, training=True)
                present = batch_targets > 0
                # Logits only where there is a target: padding would cost a full softmax each.
                logits = tf.matmul(tf.boolean_mask(hidden, present), net.item_table(),
                                   transpose_b=True)
                labels = tf.boolean_mask(batch_targets, present) - 1
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
            return loss

        @tf.function(input_signature=[spec], autograph=False)
        def last_logits(seqs):
            return tf.matmul(net(seqs, training=False)[:, -1], net.item_table(), transpose_b=True)

        self._net, self._last_logits = net, last_logits
        rng = np.random.default_rng(self.seed)
        n_targets = int((targets > 0).sum())
        self.loss_history, epoch_seconds = [], []
        best, waited = -1.0, 0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            order = rng.permutation(len(inputs))
            total = 0.0
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo: lo + self.batch_size]
                total += float(step(inputs[idx], targets[idx])) * len(idx)
            epoch_seconds.append(time.perf_counter() - start)
            self.loss_history.append(total / len(order))
            if evaluator is None or (epoch % self.eval_every and epoch != epochs):
                continue
            ndcg = evaluator.evaluate(lambda u: self.score(u, evaluator.item_ids)).metrics[
                "ndcg@10"]
            self.validation_curve.append((epoch, float(ndcg)))
            if self.verbose:
                print(f"  SASRec epoch {epoch}: loss {self.loss_history[-1]:.4f}, "
                      f"validation ndcg@10 {ndcg:.4f}", flush=True)
            if ndcg > best:
                best, waited = ndcg, 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        # P5 throughput: predicted positions per second, the first epoch (tracing) left out.
        later = epoch_seconds[1:] or epoch_seconds
        self.examples_per_second = float(n_targets * len(later) / max(sum(later), 1e-9))

    def _known_user_scores(self, users, cols):
        upos = self._user_index.get_indexer(users)
        known = upos >= 0
        scores = np.zeros((len(users), len(cols)), dtype=np.float64)
        if known.any():
            seqs = np.stack([_last_window(self._sequences[u], self.max_len)
                             for u in users[known]]).astype(np.int32)
            scores[known] = self._last_logits(seqs).numpy()[:, cols]
        return scores, known
