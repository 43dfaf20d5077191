"""The model interface and the one registry of every model a benchmark can run, keyed by name.

Each entry is a name, a factory and a `kind` (the benchmark tables' "kind" column), with
optional tags; the same way `models.losses.get_loss` resolves a loss key:

  name             kind       tags              task    interface
  two-tower        project    candidate-source  topk    Recommender
  two-tower-id     project                      topk    Recommender
  two-tower-text   project                      topk    Recommender (needs item_vectors)
  dmf-hybrid       project                      topk    Recommender (needs item_vectors)
  most-popular     peer       candidate-source  topk    Recommender
  implicit-ALS     peer       candidate-source  topk    Recommender
  implicit-BPR     peer       candidate-source  topk    Recommender
  EASE             peer                         topk    Recommender
  RP3beta          peer                         topk    Recommender
  SASRec           peer                         topk    Recommender
  tfrs-tutorial    peer                         topk    Recommender
  global-mean      peer                         rating  RatingPredictor
  surprise-SVD     peer                         rating  RatingPredictor
  surprise-SVD++   peer                         rating  RatingPredictor
  tfidf-knn        baseline                     topk    Recommender (needs items with text)
  lm-knn           baseline                     topk    Recommender (needs item_vectors)
  random           reference                    topk    Recommender

`available(kind)` matches the kind or a tag, so `available("candidate-source")` lists the
retrieval stages a cascade or a ranking pipeline may draw candidates from.

Factories take keyword arguments only. The built-in ones all accept the same context keywords,
so a pipeline can pass one context to whichever model it runs by name, and each factory takes
what it needs:

  item_ids      default column order of `score` (usually `TopKEvaluator.item_ids`)
  data          a `RecDataset` (its items frame, rating range; the two-tower reads its genres)
  items         an items frame, when there is no `data` (wins over `data.items`)
  item_vectors  an `ItemVectors` store for the text-reading models
  seed          the run's seed (each model's own seed argument)

Any other keyword is a setting of that model (a constructor argument or config field), so a
typo fails in the constructor rather than being dropped. Models are imported when built:
importing this module costs numpy and pandas only, TensorFlow loads with the first TF model.

Example:
  >>> available("candidate-source")
  ('two-tower', 'most-popular', 'implicit-ALS', 'implicit-BPR')
  >>> peer = get_model("EASE", item_ids=evaluator.item_ids, seed=0)
  >>> isinstance(peer.fit(train, validation=val), Recommender)
  True
"""
from __future__ import annotations

import dataclasses
from typing import (Any, Callable, Dict, Iterable, Optional, Protocol, Sequence, Tuple,
                    runtime_checkable)

import numpy as np
import pandas as pd

from recommenders_tf.config import dataset_retrieval_overrides
from recommenders_tf.evaluation import peers as _peers
from recommenders_tf.evaluation.peer_base import GridSearchPeer
from recommenders_tf.evaluation import text_baselines as _text
from recommenders_tf.evaluation.protocol import TopKEvaluator

__all__ = [
    "Recommender",
    "RatingPredictor",
    "ModelSpec",
    "TASKS",
    "CANDIDATE_SOURCE",
    "register",
    "unregister",
    "get_spec",
    "get_model",
    "available",
]

TASKS = ("topk", "rating")
CANDIDATE_SOURCE = "candidate-source"


@runtime_checkable
class Recommender(Protocol):
    """What every top-K model of the benchmarks offers (peers, project models, baselines).

    Attributes:
      name: registry name, also the model column of the results tables.
      notes: a short description of the fitted settings (what was tuned and chosen); "" before
        `fit`.

    `isinstance(model, Recommender)` checks that the members exist, not their signatures; the
    tests call them on every registered model.
    """

    name: str
    notes: str

    def fit(self, train: pd.DataFrame,
            validation: Optional[pd.DataFrame] = None) -> "Recommender":
        """Fits on `train` (tuning on `validation` where the model tunes); returns self."""
        ...

    def score(self, user_ids: Sequence[str],
              item_ids: Optional[Iterable[str]] = None) -> np.ndarray:
        """Float scores [len(user_ids), len(item_ids)], higher is better; `item_ids` defaults
        to the model's own column order (the `item_ids` it was built with)."""
        ...


@runtime_checkable
class RatingPredictor(Protocol):
    """What the rating-prediction (P2) models offer: `predict` instead of `score`.

    Attributes:
      name, notes: as for `Recommender`.
    """

    name: str
    notes: str

    def fit(self, train: pd.DataFrame,
            validation: Optional[pd.DataFrame] = None) -> "RatingPredictor":
        ...

    def predict(self, pairs: pd.DataFrame) -> np.ndarray:
        """Predicted ratings [len(pairs)] for the (user_id, item_id) rows of `pairs`."""
        ...


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Args:
      name: registry key.
      factory: builds a fresh, unfitted model from keyword arguments (see the module docstring).
      kind: "peer", "project", "baseline", "reference", ...: the results tables' kind column.
      task: "topk" (a `Recommender`) or "rating" (a `RatingPredictor`).
      tags: further labels `available` matches, e.g. "candidate-source".
      notes: one line for help texts: what the model is and what it needs.
    """

    name: str
    factory: Callable[..., Any]
    kind: str
    task: str = "topk"
    tags: Tuple[str, ...] = ()
    notes: str = ""

    @property
    def kinds(self) -> Tuple[str, ...]:
        """The kind followed by the tags: everything `available(kind=...)` matches."""
        return (self.kind,) + self.tags

    @property
    def interface(self) -> type:
        """The Protocol the built model satisfies: `Recommender` or `RatingPredictor`."""
        return Recommender if self.task == "topk" else RatingPredictor

    def build(self, **kwargs) -> Any:
        """A fresh model: `factory(**kwargs)`."""
        return self.factory(**kwargs)


_REGISTRY: Dict[str, ModelSpec] = {}


def register(name: str, factory: Callable[..., Any], kind: str, *, task: str = "topk",
             tags: Iterable[str] = (), notes: str = "", replace: bool = False) -> ModelSpec:
    """Adds a model to the registry.

    Args:
      name: registry key (case-sensitive, as in the results tables).
      factory: keyword-only callable returning an unfitted model; accept the context keywords
        of the module docstring (`**_` is enough for the ones it ignores) so pipelines can
        build it like the built-in ones.
      kind: the results tables' kind ("peer", "project", "baseline", "reference", ...).
      task: "topk" or "rating".
      tags: labels `available` matches besides `kind` (e.g. CANDIDATE_SOURCE).
      notes: one line describing the model.
      replace: allow re-registering an existing name.

    Returns:
      The new ModelSpec.

    Example:
      >>> register("my-peer", lambda item_ids=None, **_: MyPeer(item_ids), kind="peer")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory of {name!r} must be callable, got {type(factory).__name__}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind of {name!r} must be a non-empty string, got {kind!r}")
    if task not in TASKS:
        raise ValueError(f"task of {name!r} must be one of {TASKS}, got {task!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered (as {_REGISTRY[name].kind}); "
                         "pass replace=True to override it")
    spec = ModelSpec(name=name, factory=factory, kind=kind, task=task,
                     tags=tuple(str(t) for t in tags), notes=str(notes))
    _REGISTRY[name] = spec
    return spec


def unregister(name: str) -> ModelSpec:
    """Removes `name` from the registry and returns its entry."""
    spec = get_spec(name)
    del _REGISTRY[name]
    return spec


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of `name`; an unknown name fails with the list of known ones."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}")
    return spec


def get_model(name: str, **kwargs) -> Any:
    """A fresh, unfitted model of registry entry `name`.

    Args:
      name: registry key.
      **kwargs: the context keywords (item_ids, data, items, item_vectors, seed) and settings
        of that model, passed to its factory.

    Example:
      >>> get_model("implicit-ALS", item_ids=evaluator.item_ids, seed=0, grid={})
    """
    return get_spec(name).build(**kwargs)


def build_as_benchmarked(name: str, data: Any = None, item_ids: Optional[Sequence[str]] = None,
                         seed: int = 0, max_validation_users: int = 0) -> Any:
    """The registry model `name` as the P1/P2/P4 tables build it: `seed` and the dataset as
    its context, the two-tower with its dataset's settings from configs/ (the rest with their
    defaults), and the grid-searched peers scoring each setting on at most
    `max_validation_users` validation users (a sample seeded by `seed`; 0: all)."""
    settings: Dict[str, Any] = {}
    if name == "two-tower" and data is not None:
        settings = dataset_retrieval_overrides(data.name)
        for key in ("seed", "verbose"):  # the run's seed; no per-epoch logs in tables' runs
            settings.pop(key, None)
    model = get_spec(name).build(item_ids=item_ids, data=data, seed=seed, **settings)
    if isinstance(model, GridSearchPeer):
        model.max_validation_users = max_validation_users
        model.validation_seed = seed
    return model


def available(kind: Optional[str] = None, task: Optional[str] = None) -> Tuple[str, ...]:
    """Registered names in registration order, optionally only those with `kind` as their kind
    or a tag, and of `task`. An unknown kind or task fails with the list of known ones."""
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if kind is not None:
        known = list(dict.fromkeys(k for s in _REGISTRY.values() for k in s.kinds))
        if kind not in known:
            raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(known)}")
    return tuple(n for n, s in _REGISTRY.items()
                 if (kind is None or kind in s.kinds) and (task is None or s.task == task))


# ---- built-in entries ----------------------------------------------------------------------


def _items_of(items: Optional[pd.DataFrame], data: Any) -> Optional[pd.DataFrame]:
    return items if items is not None else getattr(data, "items", None)


def _two_tower(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0,
               validation_evaluator=TopKEvaluator, **overrides):
    from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender

    # The model takes its validation evaluator as an argument (models sit below evaluation);
    # the benchmarks' TopKEvaluator keeps its epoch choice under the benchmarks' protocol.
    if data is not None and items is None:
        # The benchmark default: genres on only when the dataset has them.
        return TwoTowerRecommender.for_dataset(data, item_ids=item_ids, seed=seed,
                                               validation_evaluator=validation_evaluator,
                                               **overrides)
    return TwoTowerRecommender(TwoTowerConfig(seed=seed, **overrides), item_ids=item_ids,
                               items=_items_of(items, data),
                               validation_evaluator=validation_evaluator)


def _text_two_tower(text: bool):
    def make(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0,
             item_id_dropout: Optional[float] = None, validation_evaluator=TopKEvaluator,
             **overrides):
        from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender

        if text and item_vectors is None:
            raise ValueError("two-tower-text needs item_vectors (an ItemVectors store from "
                             "pipelines.embed_items)")
        # Genres are off in both: the ID-only model is the pure collaborative baseline, and
        # the text (title + genres + year / description) reaches the text model as one vector.
        if item_id_dropout is None:
            # 0.5 beat 0.8 on the synthetic cold-item validation slice; an ID-only model has
            # no content path to fall back on, so it keeps every id.
            item_id_dropout = 0.5 if text else 0.0
        values = {"seed": seed, "verbose": 0, "use_genres": False,
                  "item_id_dropout": item_id_dropout, **overrides}
        model = TwoTowerRecommender(TwoTowerConfig(**values), item_ids=item_ids,
                                    items=_items_of(items, data),
                                    text_vectors=item_vectors if text else None,
                                    validation_evaluator=validation_evaluator)
        # One class, two registry entries: the instance carries the name it was built by.
        model.name = "two-tower-text" if text else "two-tower-id"
        return model

    return make


def _dmf_hybrid(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0,
                **config):
    from recommenders_tf.models.dmf import DMFConfig, DMFHybrid

    # The model takes its validation evaluator as an argument (models sit below evaluation);
    # the benchmarks' TopKEvaluator keeps its epoch choice under the benchmarks' protocol.
    evaluator = config.pop("validation_evaluator", TopKEvaluator)
    return DMFHybrid(DMFConfig(**{"seed": seed, **config}), item_vectors=item_vectors,
                     item_ids=item_ids, validation_evaluator=evaluator)


def _topk_peer(cls, seed_argument: Optional[str] = None, reads_items: bool = False):
    def make(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0, **params):
        if seed_argument is not None:
            params.setdefault(seed_argument, seed)
        frame = _items_of(items, data)
        if reads_items and frame is not None:
            params.setdefault("items", frame)
        return cls(item_ids=item_ids, **params)

    return make


def _rating_peer(cls):
    def make(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0,
             rating_range=None, **params):
        if rating_range is None:
            rating_range = getattr(data, "rating_range", None)
        return cls(rating_range=rating_range, seed=seed, **params)

    return make


def _tfidf_knn(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0, **params):
    frame = _items_of(items, data)
    if frame is None:
        raise ValueError("tfidf-knn needs items (a frame with item_id and text) or data with "
                         "an items frame")
    return _text.TfidfNeighbours(frame, item_ids=item_ids, **params)


def _lm_knn(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0, **params):
    if item_vectors is None:
        raise ValueError("lm-knn needs item_vectors (an ItemVectors store from "
                         "pipelines.embed_items)")
    return _text.LMNeighbours(item_vectors, item_ids=item_ids, **params)


def _random(item_ids=None, *, data=None, items=None, item_vectors=None, seed=0, **params):
    return _text.RandomScorer(item_ids=item_ids, seed=seed, **params)


def _register_builtins() -> None:
    project, peer = "project", "peer"
    # The project's model first: benchmark tables list it above its peers.
    register("two-tower", _two_tower, project, tags=(CANDIDATE_SOURCE,),
             notes="TwoTowerRecommender, TwoTowerConfig defaults (+ dataset overrides); epochs "
                   "chosen on validation")
    register("two-tower-id", _text_two_tower(False), project,
             notes="ID-only two-tower (no genres): the collaborative baseline of P3/P4")
    register("two-tower-text", _text_two_tower(True), project,
             notes="two-tower with the frozen item text vector (needs item_vectors) and "
                   "item-id dropout 0.5")
    register("dmf-hybrid", _dmf_hybrid, project,
             notes="hybrid deep matrix factorization over ids and item text (needs "
                   "item_vectors unless use_text=False)")
    register("most-popular", _topk_peer(_peers.MostPopular), peer, tags=(CANDIDATE_SOURCE,),
             notes="train interaction counts, the same list for every user")
    register("implicit-ALS", _topk_peer(_peers.ImplicitALS, "random_state"), peer,
             tags=(CANDIDATE_SOURCE,),
             notes="implicit ALS; factors x regularization tuned on validation")
    register("implicit-BPR", _topk_peer(_peers.ImplicitBPR, "random_state"), peer,
             tags=(CANDIDATE_SOURCE,),
             notes="implicit BPR; learning rate x regularization tuned on validation")
    register("EASE", _topk_peer(_peers.EASE), peer,
             notes="EASE closed form; l2 tuned on validation")
    register("RP3beta", _topk_peer(_peers.RP3beta), peer,
             notes="RP3beta random walk; alpha x beta x top_k tuned on validation")
    register("SASRec", _topk_peer(_peers.SASRec, "seed"), peer,
             notes="SASRec with full-softmax CE; epochs by early stopping on validation")
    register("tfrs-tutorial", _topk_peer(_peers.TFRSTutorialRetrieval, "seed", reads_items=True),
             peer, notes="the TFRS basic retrieval tutorial model, as published")
    for cls in (_peers.GlobalMean, _peers.SurpriseSVD, _peers.SurpriseSVDpp):
        register(cls.name, _rating_peer(cls), peer, task="rating",
                 notes=(cls.__doc__ or "").strip().splitlines()[0])
    register("tfidf-knn", _tfidf_knn, "baseline",
             notes="cosine of the mean TF-IDF vector of the user's train items (needs items "
                   "with text)")
    register("lm-knn", _lm_knn, "baseline",
             notes="cosine of the mean language-model vector of the user's train items (needs "
                   "item_vectors)")
    register("random", _random, "reference",
             notes="uniform random scores, seeded per (seed, user)")


_register_builtins()
