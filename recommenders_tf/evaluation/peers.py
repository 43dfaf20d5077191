"""Peer baselines run beside the project's models in every benchmark (BENCHMARK.md P1, P2).

Top-K peers (`task == "topk"`) follow the `Recommender` interface of `evaluation.registry`::

    peer = get_model("implicit-ALS", item_ids=evaluator.item_ids)   # or ImplicitALS(...)
    peer.fit(train, validation=val)        # returns self; peer.notes says what was chosen
    scores = peer.score(user_ids)          # float [len(user_ids), len(item_ids)]
    evaluator.evaluate(peer.score)

Users unseen in training get the train popularity counts as scores (the most-popular ranking),
for every top-K peer alike; items unseen in training score below every seen item.

Rating peers (`task == "rating"`, the registry's `RatingPredictor`) have
`fit(train, validation=None)` and `predict(pairs) -> np.ndarray`, clipped to the rating range;
unknown users and items fall back to the global mean (Surprise does this through its
baselines).

Hyperparameters of the tuned peers (`implicit` ALS and BPR, EASE, RP3beta, SASRec's epochs)
are chosen on `validation`, interactions held out from `train` (disjoint from it, e.g. the P1
temporal split applied again to train), by NDCG@10 from `TopKEvaluator`; the chosen setting is
then refit on train + validation so the peer sees the same data as an untuned model.
TensorFlow, `implicit` and `scikit-surprise` are imported lazily so that importing this module
is cheap.

This module holds the classic peers; the shared base classes live in `peer_base`, the
item-item peers (EASE, RP3beta) in `peers_item_item` and SASRec in `peers_sasrec`. Every peer
is registered by its `name` in `evaluation.registry` (`available(kind="peer")`), the one place
benchmarks and pipelines look models up.
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import ITEM_ID, RATING, TITLE, USER_ID, check_frame
from recommenders_tf.evaluation.metrics import clip_ratings
from recommenders_tf.evaluation.peer_base import GridSearchPeer, TopKPeer, binary_matrix
from recommenders_tf.evaluation.peers_item_item import EASE, RP3beta
from recommenders_tf.evaluation.peers_sasrec import SASRec

__all__ = [
    "TopKPeer",
    "RatingPeer",
    "MostPopular",
    "ImplicitALS",
    "ImplicitBPR",
    "EASE",
    "RP3beta",
    "SASRec",
    "TFRSTutorialRetrieval",
    "GlobalMean",
    "SurpriseSVD",
    "SurpriseSVDpp",
]


class MostPopular(TopKPeer):
    """Ranks items by their number of train interactions, the same list for every user.

    Args:
      item_ids: see `TopKPeer`.
    """

    name = "most-popular"

    def _fit(self, train, validation):
        self._set_catalog(train)
        self.notes = "train interaction counts"

    def _known_user_scores(self, users, cols):
        return np.tile(self._popularity[cols], (len(users), 1)), np.zeros(len(users), dtype=bool)


class _ImplicitPeer(GridSearchPeer):
    """Shared code of the `implicit` matrix-factorization peers: CSR input, factor scoring."""

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        grid: Optional[Dict[str, Sequence[float]]] = None,
        iterations: int = 15,
        random_state: int = 0,
        num_threads: int = 1,
        **params,
    ):
        super().__init__(item_ids, grid, **params)
        self.iterations = int(iterations)
        self.random_state = int(random_state)
        # One thread keeps BPR's Hogwild SGD deterministic and leaves cores to other jobs.
        self.num_threads = int(num_threads)
        self._model = None
        self._user_index: Optional[pd.Index] = None

    def _make_model(self, params):
        raise NotImplementedError

    def _train(self, train: pd.DataFrame, params) -> Tuple[object, pd.Index, pd.Index]:
        import implicit.cpu.als  # noqa: F401  (loads its BLAS before the thread limit below)
        import implicit.cpu.bpr  # noqa: F401
        from threadpoolctl import threadpool_limits

        matrix, users, items = binary_matrix(train)
        # implicit warns (and slows down) when BLAS runs multi-threaded beside its own threads;
        # it checks at construction, so both steps run under the limit.
        with threadpool_limits(limits=1, user_api="blas"):
            model = self._make_model(params)
            model.fit(matrix, show_progress=False)
        return model, users, items

    def _install(self, model, users: pd.Index, train: pd.DataFrame) -> None:
        self._model, self._user_index = model, users
        self._set_catalog(train)
        self._item_factors = np.asarray(model.item_factors, dtype=np.float64)
        self._user_factors = np.asarray(model.user_factors, dtype=np.float64)

    def _fit_setting(self, train, params):
        model, users, _ = self._train(train, params)
        self._install(model, users, train)

    def _known_user_scores(self, users, cols):
        upos = self._user_index.get_indexer(users)
        known = upos >= 0
        scores = np.zeros((len(users), len(cols)), dtype=np.float64)
        if known.any():
            # Item rows of the model follow the sorted train items, as does _train_items.
            scores[known] = self._user_factors[upos[known]] @ self._item_factors[cols].T
        return scores, known


class ImplicitALS(_ImplicitPeer):
    """`implicit` alternating least squares on the binary user x item matrix.

    Args:
      item_ids: see `TopKPeer`.
      grid: {param: values} searched on validation; default factors {32, 64, 128} x
        regularization {0.1, 1, 10, 30, 100} (a first grid stopped at its edge, 10, on ml-100k).
      iterations: ALS sweeps (fixed, not tuned).
      random_state: seed of the factor initialisation.
      num_threads: threads of implicit's solver.
      **params: fixed values (factors, regularization, alpha) used when not tuned.
    """

    name = "implicit-ALS"
    default_params = {"factors": 64, "regularization": 0.01, "alpha": 1.0}
    default_grid = {"factors": (32, 64, 128), "regularization": (0.1, 1.0, 10.0, 30.0, 100.0)}

    def _make_model(self, params):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=int(params["factors"]),
            regularization=float(params["regularization"]),
            alpha=float(params["alpha"]),
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.random_state,
        )

    def fold_in_tables(self, item_ids: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(Y, P) [len(item_ids), factors] float32 such that Σ_{h in history} P[h] is the
        factor this fitted model gives a user with that history, and Y[c] · (that sum) the
        user's score of item c.

        With binary interactions and alpha = 1 (how `fit` builds the matrix, and the default)
        implicit's least squares solves u = (YᵀY + λI)⁻¹ Σ_h y_h over the history's factors
        y_h, so P = Y (YᵀY + λI)⁻¹ and a user's score is linear in their history: any history,
        including one this model never saw, is scored without a solve. Rows of items outside
        the model's train items are zeros.
        """
        if self._model is None:
            raise RuntimeError("ImplicitALS.fold_in_tables called before fit")
        alpha = float(self.chosen_params.get("alpha", 1.0))
        if alpha != 1.0:
            # With other confidences every history item adds (alpha - 1) y_h y_hᵀ to the
            # system: a per-user solve, not a table.
            raise ValueError(f"fold_in_tables needs alpha = 1, got {alpha}")
        factors = self._item_factors
        system = factors.T @ factors + float(self.chosen_params["regularization"]) * np.eye(
            factors.shape[1])
        pos = self._train_items.get_indexer(np.asarray([str(i) for i in item_ids], object))
        known = (pos >= 0)[:, None]
        y = np.where(known, factors[np.maximum(pos, 0)], 0.0)
        p = np.linalg.solve(system, y.T).T  # the system is symmetric: y A⁻¹ = (A⁻¹ yᵀ)ᵀ
        return y.astype(np.float32), p.astype(np.float32)


class ImplicitBPR(_ImplicitPeer):
    """`implicit` Bayesian personalized ranking (SGD with sampled negatives).

    Args:
      item_ids: see `TopKPeer`.
      grid: default learning_rate {0.003, 0.01, 0.05} x regularization {0.0001, 0.001, 0.01}.
      iterations: SGD epochs (fixed, default 100 as in implicit).
      random_state, num_threads, **params: as for `ImplicitALS` (factors, learning_rate,
        regularization).
    """

    name = "implicit-BPR"
    default_params = {"factors": 64, "learning_rate": 0.01, "regularization": 0.01}
    default_grid = {"learning_rate": (0.003, 0.01, 0.05), "regularization": (0.0001, 0.001, 0.01)}

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        grid: Optional[Dict[str, Sequence[float]]] = None,
        iterations: int = 100,
        random_state: int = 0,
        num_threads: int = 1,
        **params,
    ):
        super().__init__(item_ids, grid, iterations, random_state, num_threads, **params)

    def _make_model(self, params):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=int(params["factors"]),
            learning_rate=float(params["learning_rate"]),
            regularization=float(params["regularization"]),
            iterations=self.iterations,
            num_threads=self.num_threads,
            random_state=self.random_state,
        )


class TFRSTutorialRetrieval(TopKPeer):
    """The TFRS "basic retrieval" tutorial model, as published.

    User-id and movie-title towers (StringLookup + Embedding(32)), `tfrs.tasks.Retrieval`
    with in-batch softmax (no FactorizedTopK metrics, for speed), Adagrad(0.1), 3 epochs,
    batch 8192, training examples shuffled once (seeded) and cached as in the tutorial.
    Items sharing a title share an embedding, as in the tutorial.

    Args:
      item_ids: see `TopKPeer`.
      items: optional items frame with `item_id` and `title`; without it the item id is the
        title.
      embedding_dim, epochs, batch_size, learning_rate: tutorial values by default.
      seed: seeds TF (`tf.keras.utils.set_random_seed`) and the shuffle.
    """

    name = "tfrs-tutorial"

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        items: Optional[pd.DataFrame] = None,
        embedding_dim: int = 32,
        epochs: int = 3,
        batch_size: int = 8192,
        learning_rate: float = 0.1,
        seed: int = 0,
    ):
        super().__init__(item_ids)
        self.items = items
        self.embedding_dim = int(embedding_dim)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.seed = int(seed)
        self.history: Optional[Dict[str, List[float]]] = None

    def _titles(self, item_ids: np.ndarray) -> np.ndarray:
        if self.items is None or TITLE not in getattr(self.items, "columns", ()):
            return np.asarray(item_ids, dtype=str)
        check_frame(self.items, "items", [ITEM_ID, TITLE])
        lookup = pd.Series(self.items[TITLE].astype(str).to_numpy(),
                           index=self.items[ITEM_ID].astype(str).to_numpy())
        lookup = lookup[~lookup.index.duplicated()]
        titles = lookup.reindex(np.asarray(item_ids, dtype=str))
        # Items the frame does not describe fall back to their id rather than failing.
        ids = np.asarray(item_ids, dtype=str)
        return np.where(titles.isna(), ids, titles.astype(str)).astype(str)

    def _fit(self, train, validation):
        import recommenders_tf  # noqa: F401  (tf-keras before TensorFlow)
        import tensorflow as tf
        import tensorflow_recommenders as tfrs

        self._set_catalog(train)
        tf.keras.utils.set_random_seed(self.seed)
        users = train[USER_ID].astype(str).to_numpy()
        titles = self._titles(train[ITEM_ID].astype(str).to_numpy())
        unique_users = np.unique(users)
        # Vocabulary: titles of train items and of every item we will be asked to score.
        candidate_ids = np.union1d(
            self._train_items.to_numpy().astype(str), np.asarray(self.item_ids, dtype=str)
        )
        unique_titles = np.unique(self._titles(candidate_ids))

        user_model = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=unique_users, mask_token=None),
            tf.keras.layers.Embedding(len(unique_users) + 1, self.embedding_dim),
        ])
        movie_model = tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=unique_titles, mask_token=None),
            tf.keras.layers.Embedding(len(unique_titles) + 1, self.embedding_dim),
        ])

        class MovielensModel(tfrs.Model):
            def __init__(self, user_model, movie_model):
                super().__init__()
                self.movie_model = movie_model
                self.user_model = user_model
                self.task = tfrs.tasks.Retrieval()

            def compute_loss(self, features, training=False):
                user_embeddings = self.user_model(features["user_id"])
                positive_movie_embeddings = self.movie_model(features["movie_title"])
                return self.task(user_embeddings, positive_movie_embeddings)

        model = MovielensModel(user_model, movie_model)
        model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=self.learning_rate))
        order = np.random.default_rng(self.seed).permutation(len(users))
        data = tf.data.Dataset.from_tensor_slices(
            {"user_id": users[order], "movie_title": titles[order]}
        )
        cached_train = data.batch(self.batch_size).cache()
        epoch_seconds: List[float] = []

        class _EpochTimer(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                epoch_seconds.append(time.perf_counter() - self.start)

        hist = model.fit(cached_train, epochs=self.epochs, verbose=0, callbacks=[_EpochTimer()])
        # P5 throughput excludes the first epoch (tracing, cache fill).
        later = epoch_seconds[1:] or epoch_seconds
        self.examples_per_second = float(len(users) * len(later) / max(sum(later), 1e-9))
        self.history = {k: [float(x) for x in v] for k, v in hist.history.items()}
        self._user_index = pd.Index(unique_users.astype(object))
        self._user_emb = user_model(tf.constant(unique_users)).numpy().astype(np.float64)
        self._movie_model = movie_model
        self.notes = (
            f"tutorial settings: dim={self.embedding_dim}, Adagrad({self.learning_rate}), "
            f"{self.epochs} epochs, batch {self.batch_size}, seed {self.seed}"
        )

    def _known_user_scores(self, users, cols):
        import tensorflow as tf

        item_titles = self._titles(self._train_items.to_numpy()[cols].astype(str))
        item_emb = self._movie_model(tf.constant(item_titles)).numpy().astype(np.float64) \
            if len(cols) else np.zeros((0, self.embedding_dim))
        upos = self._user_index.get_indexer(users)
        known = upos >= 0
        scores = np.zeros((len(users), len(cols)), dtype=np.float64)
        if known.any():
            scores[known] = self._user_emb[upos[known]] @ item_emb.T
        return scores, known


class RatingPeer:
    """Base of the rating-prediction peers.

    Args:
      rating_range: (min, max) used to clip predictions; default the train min and max.
      seed: random seed of the algorithm.
    """

    name = "rating-peer"
    task = "rating"

    def __init__(self, rating_range: Optional[Tuple[float, float]] = None, seed: int = 0):
        self.rating_range = (
            None if rating_range is None else (float(rating_range[0]), float(rating_range[1]))
        )
        self.seed = int(seed)
        self.notes = ""
        self.fit_seconds = 0.0

    def fit(self, train: pd.DataFrame, validation: Optional[pd.DataFrame] = None) -> "RatingPeer":
        """Fits on `train`; `validation` is accepted for a uniform interface and not used."""
        check_frame(train, "train", [USER_ID, ITEM_ID, RATING])
        if self.rating_range is None:
            r = train[RATING].to_numpy(np.float64)
            self.rating_range = (float(r.min()), float(r.max()))
        start = time.perf_counter()
        self._fit(train)
        self.fit_seconds = time.perf_counter() - start
        return self

    def _fit(self, train: pd.DataFrame) -> None:
        raise NotImplementedError

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """Predicted ratings for the (user_id, item_id) rows of `pairs`, clipped to the range."""
        check_frame(pairs, "pairs", [USER_ID, ITEM_ID])
        if self.rating_range is None:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        return clip_ratings(self._predict(pairs), self.rating_range)

    def _predict(self, pairs: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError


class GlobalMean(RatingPeer):
    """Predicts the mean train rating for every pair.

    Args:
      rating_range, seed: see `RatingPeer`.
    """

    name = "global-mean"

    def _fit(self, train):
        self.mean_ = float(train[RATING].to_numpy(np.float64).mean())
        self.notes = f"mean={self.mean_:.4f}"

    def _predict(self, pairs):
        return np.full(len(pairs), self.mean_, dtype=np.float64)


class _SurprisePeer(RatingPeer):
    def _algorithm(self):
        raise NotImplementedError

    def _fit(self, train):
        from surprise import Dataset, Reader

        frame = pd.DataFrame({
            "u": train[USER_ID].astype(str).to_numpy(),
            "i": train[ITEM_ID].astype(str).to_numpy(),
            "r": train[RATING].to_numpy(np.float64),
        })
        data = Dataset.load_from_df(frame, Reader(rating_scale=self.rating_range))
        self._algo = self._algorithm()
        self._algo.fit(data.build_full_trainset())
        self.notes = "scikit-surprise defaults, random_state=%d" % self.seed

    def _predict(self, pairs):
        users = pairs[USER_ID].astype(str).to_numpy()
        items = pairs[ITEM_ID].astype(str).to_numpy()
        # Surprise falls back to the global mean plus any known bias for unknown ids.
        return np.fromiter((self._algo.predict(u, i).est for u, i in zip(users, items)),
                           dtype=np.float64, count=len(users))


class SurpriseSVD(_SurprisePeer):
    """Surprise's SVD (Funk MF with biases), default settings, seeded.

    Args:
      rating_range, seed: see `RatingPeer`.
    """

    name = "surprise-SVD"

    def _algorithm(self):
        from surprise import SVD

        return SVD(random_state=self.seed)


class SurpriseSVDpp(_SurprisePeer):
    """Surprise's SVD++ (SVD with implicit feedback of rated items), default settings, seeded.

    Args:
      rating_range, seed: see `RatingPeer`.
    """

    name = "surprise-SVD++"

    def _algorithm(self):
        from surprise import SVDpp

        return SVDpp(random_state=self.seed)
