"""The ranking stage's training lists, built from the train part of a split only.

  "ratings" lists (default for pointwise losses, "mse" and "bce"): the train interactions cut
    into per-user lists in time order; labels are ratings ("mse") or clicks, rating >=
    click_threshold ("bce").
  "candidates" lists (default for pairwise/listwise losses): the train part is cut again in
    time (`validation_split`); each user's later interactions are the positives, filled with
    negatives from a retrieval stage's top candidates after the cut ("hard": the candidate
    source is fitted on the earlier part only) or from the catalog ("easy").

The hard negatives come from the cascade's candidate sources (`make_candidate_source`), which
is why the lists are built at this layer; `pipelines.train_ranking` and
`pipelines.bench_ranking` both build theirs here.

Example:
  >>> lists, info = build_training_lists(split.train, RankingConfig(loss="softmax"),
  ...                                    RankingDataConfig(), items=data.items, seed=0)
  >>> train_lists, held_out = lists.split(0.1, seed=0)
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Optional, Tuple

import pandas as pd

from recommenders_tf.cascade.candidates import make_candidate_source, top_candidates
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.data.splits import validation_split
from recommenders_tf.models.losses import get_loss
from recommenders_tf.models.ranking import RankingConfig
from recommenders_tf.models.ranking_data import RankingLists, candidate_lists, rating_lists

__all__ = ["RATING_LISTS", "CANDIDATE_LISTS", "RankingDataConfig", "resolve_lists",
           "build_training_lists"]

RATING_LISTS, CANDIDATE_LISTS = "ratings", "candidates"


@dataclasses.dataclass
class RankingDataConfig:
    """How the training lists are built.

    Args:
      lists: "auto" ("ratings" for pointwise losses, "candidates" otherwise), "ratings" or
        "candidates" (see the module docstring).
      rating_list_size: entries per "ratings" list.
      list_size: entries per "candidates" list.
      max_positives: positives per "candidates" list.
      negatives: "hard" (retrieval candidates) or "easy" (catalog).
      candidate_source: retrieval stage for hard negatives ("two-tower", "implicit-ALS",
        "implicit-BPR", "most-popular").
      num_candidates: retrieval candidates per user the hard negatives are drawn from.
      label: "auto" (ratings lists: rating for "mse", click otherwise; candidates lists:
        binary), "rating", "click" or "binary".
      click_threshold: rating that counts as a click.
      validation_fraction: share of lists held out for early stopping.
    """

    lists: str = "auto"
    rating_list_size: int = 16
    list_size: int = 50
    max_positives: int = 5
    negatives: str = "hard"
    candidate_source: str = "implicit-ALS"
    num_candidates: int = 100
    label: str = "auto"
    click_threshold: float = 4.0
    validation_fraction: float = 0.1


def resolve_lists(loss: str, data: RankingDataConfig) -> Tuple[str, str]:
    """(list kind, label) after resolving "auto" for the ranking loss `loss`."""
    spec = get_loss(loss)
    kind = data.lists
    if kind == "auto":
        kind = RATING_LISTS if spec.mode == "pointwise" else CANDIDATE_LISTS
    if kind not in (RATING_LISTS, CANDIDATE_LISTS):
        raise ValueError(f"data.lists must be auto, {RATING_LISTS} or {CANDIDATE_LISTS}, "
                         f"got {kind!r}")
    label = data.label
    if label == "auto":
        if kind == RATING_LISTS:
            label = "rating" if spec.predicts_rating else "click"
        else:
            label = "binary"
    if spec.predicts_rating and label != "rating":
        raise ValueError(f"loss {spec.key!r} predicts ratings; it needs data.label=rating")
    if spec.label_kind == "click" and label == "rating":
        raise ValueError(f"loss {spec.key!r} needs 0/1 labels; use data.label=click or binary")
    return kind, label


def build_training_lists(train: pd.DataFrame, ranking: RankingConfig, data: RankingDataConfig,
                         items: Optional[pd.DataFrame] = None, seed: int = 0,
                         log: Callable[[str], Any] = print
                         ) -> Tuple[RankingLists, Dict[str, Any]]:
    """The training lists from the train part of a split (see the module docstring).

    Args:
      train: the train part (canonical schema); nothing else is read.
      ranking: the ranking model's config (its `loss` and `history_len`).
      data: how the lists are built.
      items: the items frame, for a candidate source that reads it (the two-tower's genres).
      seed: seed of the time cut, the candidate source and the negative sampling.
      log: progress lines.

    Returns:
      (lists, info): the lists and what was built ({"lists", "label"[, "negatives",
      "candidate_source", "candidate_seconds", "candidate_notes"]}).
    """
    kind, label = resolve_lists(ranking.loss, data)
    if kind == RATING_LISTS:
        lists = rating_lists(train, data.rating_list_size, ranking.history_len, label=label,
                             click_threshold=data.click_threshold)
        return lists, {"lists": kind, "label": label}
    cut = validation_split(train, seed=seed)
    candidates = None
    info: Dict[str, Any] = {"lists": kind, "label": label, "negatives": data.negatives}
    if data.negatives == "hard":
        catalog = sorted(cut.train[ITEM_ID].astype(str).unique())
        source = make_candidate_source(data.candidate_source, catalog, items, seed)
        # The retrieval stage sees only the part before the cut, tuned on its own later slice.
        inner = validation_split(cut.train, seed=seed)
        log(f"fitting candidate source {data.candidate_source} on {len(cut.train)} "
            "interactions before the cut ...")
        start = time.perf_counter()
        source.fit(inner.train, validation=inner.test)
        users = sorted(cut.test[USER_ID].astype(str).unique())
        top = top_candidates(lambda u: source.score(u, catalog), users, catalog, cut.train,
                             data.num_candidates)
        candidates = dict(zip(users, top))
        info.update(candidate_source=data.candidate_source,
                    candidate_seconds=round(time.perf_counter() - start, 2),
                    candidate_notes=getattr(source, "notes", ""))
    lists = candidate_lists(cut.train, cut.test, data.list_size, negatives=data.negatives,
                            candidates=candidates, max_positives=data.max_positives,
                            history_len=ranking.history_len, label=label,
                            click_threshold=data.click_threshold, seed=seed)
    return lists, info
