"""Atomic SavedModel export of the ranking stage in TF Serving layout.

```
saved_models/ranking/<version>/saved_model.pb, variables/
                               assets/<vocabulary>.txt       (the model's lookup vocabularies)
                               metadata.json                 (copy, for humans and tools)
                               assets.extra/metadata.json
                               assets.extra/tf_serving_warmup_requests
```

Signature (B users, N history items, S candidates per user):

* `serving_default(user_id: string [B], history: string [B, N], item_ids: string [B, S])
  -> {scores: float32 [B, S]}`
* a rating model with a rated-history context (`models.rating_context.RatingContext`) also
  takes `history_rating: float32 [B, N]`, the user's rating of each history id, beside it.

Raw ids in, scores out. Ids unknown to the model go to the towers' OOV buckets and get a finite
score; "" pads `history` (ignored) and `item_ids` (score -inf, as the retrieval export marks an
empty slot). What a score means depends on the loss (metadata `score_kind`): a predicted rating
("mse"), a click logit ("bce") or an order-only score (pairwise/listwise losses).

Versioning, assets, warmup and atomicity are `serving.export.save_export`'s: the model is
saved under a temporary name inside `<name>/` and renamed to the next integer version, so TF
Serving never sees a half-written version and no version is overwritten. The warmup requests
use real ids: a user and items from the model's own vocabularies (or `example_item_ids`),
plus an unknown user, an unknown item and "" padding.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

import recommenders_tf
import tensorflow as tf

from recommenders_tf.features.id_lists import compact_right, compact_right_with
from recommenders_tf.serving.contract import (HISTORY, HISTORY_RATING, ITEM_IDS, PAD,
                                              RANKING_INPUTS, RATED_RANKING_INPUTS, SCORES,
                                              SERVING_DEFAULT, USER_ID, check_model_name,
                                              input_order_metadata, tensor_specs)
# The shared export machinery (versioning, assets, warmup, metadata) lives in serving.export.
from recommenders_tf.serving.export import (
    UNKNOWN_ITEM,
    UNKNOWN_USER,
    existing_versions,
    find_vocabularies,
    package_version,
    pick_vocabulary,
    save_export,
)

DEFAULT_NAME = "ranking"
INPUTS = RANKING_INPUTS
SCORE_KINDS = {"rating": "predicted rating", "click": "click logit (sigmoid = probability)",
               "relevance": "ranking score (only the order within a list is meaningful)"}
_RESERVED_KEYS = {"format_version", "model_name", "stage", "loss", "loss_mode", "score_kind",
                  "history_len", "signatures", "versions", "created_utc", "pad_item_id",
                  "assets", "warmup", "input_order"}
WARMUP_CANDIDATES = 100
WARMUP_HISTORY = 50

__all__ = ["export_ranking", "existing_versions", "ranking_warmup_requests", "DEFAULT_NAME",
           "INPUTS"]


def reads_history_rating(model: Any) -> bool:
    """Whether the model's context features read `history_rating` (a rating model)."""
    return bool(getattr(getattr(model, "context_features", None), "reads_history_rating",
                        False))


class _RankingModule(tf.Module):
    """The object saved: the ranking model and its one serving function."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

        def score(features, item_ids):
            scores = self.model({**features, "item_id": item_ids}, training=False)
            return {SCORES: tf.where(tf.equal(item_ids, PAD), tf.constant(-float("inf")),
                                     scores)}

        if reads_history_rating(model):
            @tf.function(input_signature=list(tensor_specs(RATED_RANKING_INPUTS).values()))
            def serve(user_id, history, history_rating, item_ids):
                # Each rating moves with its id, wherever the client padded.
                history, history_rating = compact_right_with(history, history_rating)
                return score({"user_id": user_id, "history": history,
                              HISTORY_RATING: history_rating}, item_ids)
        else:
            @tf.function(input_signature=list(tensor_specs(RANKING_INPUTS).values()))
            def serve(user_id, history, item_ids):
                history = compact_right(history)  # recency from the right, wherever the padding
                return score({"user_id": user_id, "history": history}, item_ids)

        self.serve = serve


def _metadata(name: str, model: Any, extra: Mapping[str, Any]) -> dict:
    clash = sorted(_RESERVED_KEYS & set(extra))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by export_ranking itself; "
                         "rename them (e.g. nest them under 'extra').")
    spec = model.loss_spec
    return {
        "format_version": 1,
        "model_name": name,
        "stage": "ranking",
        "loss": spec.key,
        "loss_mode": spec.mode,
        "score_kind": SCORE_KINDS[spec.label_kind],
        "history_len": model.history_len,
        **input_order_metadata(with_exclusions=False, rated=reads_history_rating(model)),
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_recommenders": package_version("tensorflow-recommenders"),
            "tensorflow_ranking": package_version("tensorflow-ranking"),
            "tf_keras": package_version("tf-keras"),
            "recommenders_tf": recommenders_tf.__version__,
        },
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra),
    }


def ranking_warmup_requests(user_ids: Sequence[str], item_ids: Sequence[str],
                            history_len: int, rated: bool = False) -> list:
    """Two `serving_default` requests from real ids: one user with real history (up to the
    model's history_len, at most 50) and up to 100 real candidates, then two users (a real one
    and an unknown one) whose lists also hold an unknown item and "" padding. `rated` adds
    `history_rating` (4.0 for every history item, 0 on padding)."""
    items = [str(i) for i in item_ids][:WARMUP_CANDIDATES] or [UNKNOWN_ITEM]
    user = str(user_ids[0]) if len(user_ids) else UNKNOWN_USER
    width = max(1, min(int(history_len or 1), WARMUP_HISTORY))
    history = (items * width)[:width]
    single = {USER_ID: np.array([user], dtype=object),
              HISTORY: np.array([history], dtype=object),
              ITEM_IDS: np.array([items], dtype=object)}
    row_items = items[1:] + [UNKNOWN_ITEM] + [PAD]
    pair = {USER_ID: np.array([user, UNKNOWN_USER], dtype=object),
            HISTORY: np.array([history, [PAD] * (width - 1) + [items[0]]], dtype=object),
            ITEM_IDS: np.array([row_items, list(reversed(row_items))], dtype=object)}
    requests = [single, pair]
    if rated:
        for request in requests:
            request[HISTORY_RATING] = np.where(request[HISTORY] == PAD, 0.0,
                                               4.0).astype(np.float32)
    return [(SERVING_DEFAULT, request) for request in requests]


def export_ranking(model: Any, base_dir: str | os.PathLike = "saved_models",
                   name: str = DEFAULT_NAME, metadata: Optional[Mapping[str, Any]] = None,
                   example_item_ids: Optional[list] = None) -> Path:
    """Exports a `RankingModel` as the next integer version of `base_dir/name`.

    Args:
      model: a trained `RankingModel`.
      base_dir: TF Serving model base path.
      name: model name (one path component).
      metadata: extra JSON-serialisable facts for metadata.json (vocab sizes, metrics, ...).
      example_item_ids: real item ids to put first in the warmup requests (the model's item
        vocabulary fills up the rest).

    Returns:
      The new version directory, e.g. saved_models/ranking/3.
    """
    check_model_name(name)
    if not hasattr(model, "loss_spec") or not hasattr(model, "history_len"):
        raise TypeError(f"export_ranking needs a RankingModel, got {type(model).__name__}")
    meta = _metadata(name, model, dict(metadata or {}))
    json.dumps(meta)  # fails early if not serialisable
    vocabularies = find_vocabularies(model)
    users = pick_vocabulary(vocabularies, "user", avoid=("feature",))
    items = list(dict.fromkeys([str(i) for i in example_item_ids or []]
                               + pick_vocabulary(vocabularies, "item")))
    module = _RankingModule(model)
    signatures = {SERVING_DEFAULT: module.serve.get_concrete_function()}
    return save_export(module, signatures, base_dir, name, meta,
                       ranking_warmup_requests(users, items, model.history_len,
                                               rated=reads_history_rating(model)))
