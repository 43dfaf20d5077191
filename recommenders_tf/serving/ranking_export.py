"""Atomic SavedModel export of the ranking stage in TF Serving layout.

```
saved_models/ranking/<version>/saved_model.pb, variables/
                               metadata.json                 (copy, for humans and tools)
                               assets.extra/metadata.json
                               assets.extra/tf_serving_warmup_requests
```

Signature (B users, N history items, S candidates per user):

* `serving_default(user_id: string [B], history: string [B, N], item_ids: string [B, S])
  -> {scores: float32 [B, S]}`

Raw ids in, scores out. Ids unknown to the model go to the towers' OOV buckets and get a finite
score; "" pads `history` (ignored) and `item_ids` (score -inf, as the retrieval export marks an
empty slot). What a score means depends on the loss (metadata `score_kind`): a predicted rating
("mse"), a click logit ("bce") or an order-only score (pairwise/listwise losses).

Versioning and atomicity are the retrieval export's (`serving.export`): the model is saved
under a temporary name inside `<name>/` and renamed to the next integer version, so TF Serving
never sees a half-written version and no version is overwritten.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

import recommenders_tf
import tensorflow as tf

# The retrieval export owns atomic versioning and metadata; reuse it rather than a second copy.
from recommenders_tf.serving.export import (
    ASSETS_EXTRA,
    METADATA_FILE,
    SERVING_DEFAULT,
    WARMUP_FILE,
    TMP_PREFIX,
    package_version,
    publish_version,
    existing_versions,
)

DEFAULT_NAME = "ranking"
INPUTS = ("user_id", "history", "item_ids")
SCORE_KINDS = {"rating": "predicted rating", "click": "click logit (sigmoid = probability)",
               "relevance": "ranking score (only the order within a list is meaningful)"}
_RESERVED_KEYS = {"format_version", "model_name", "stage", "loss", "loss_mode", "score_kind",
                  "history_len", "signatures", "versions", "created_utc", "pad_item_id"}

__all__ = ["export_ranking", "existing_versions", "DEFAULT_NAME", "INPUTS"]


class _RankingModule(tf.Module):
    """The object saved: the ranking model and its one serving function."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.string, name="user_id"),
            tf.TensorSpec([None, None], tf.string, name="history"),
            tf.TensorSpec([None, None], tf.string, name="item_ids"),
        ])
        def serve(user_id, history, item_ids):
            scores = self.model({"user_id": user_id, "history": history, "item_id": item_ids},
                                training=False)
            scores = tf.where(tf.equal(item_ids, ""), tf.constant(-float("inf")), scores)
            return {"scores": scores}

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
        "pad_item_id": "",
        "signatures": {SERVING_DEFAULT: {
            "inputs": {"user_id": {"dtype": "string", "shape": [-1]},
                       "history": {"dtype": "string", "shape": [-1, -1]},
                       "item_ids": {"dtype": "string", "shape": [-1, -1]}},
            "outputs": {"scores": {"dtype": "float32", "shape": [-1, -1]}},
        }},
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


def _write_warmup(path: Path, name: str, example_item_ids: list) -> None:
    """Two PredictRequests TF Serving replays at load: a known and an unknown user."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    items = (list(example_item_ids) + ["__warmup_unknown_item__"])[:2]
    while len(items) < 2:
        items.append("__warmup_unknown_item__")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = SERVING_DEFAULT
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["__warmup_unknown_user__"] * 2))
    request.inputs["history"].CopyFrom(tf.make_tensor_proto([[items[0]], [""]]))
    request.inputs["item_ids"].CopyFrom(tf.make_tensor_proto([items, [items[1], ""]]))
    with tf.io.TFRecordWriter(str(path)) as writer:
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def export_ranking(model: Any, base_dir: str | os.PathLike = "saved_models",
                   name: str = DEFAULT_NAME, metadata: Optional[Mapping[str, Any]] = None,
                   example_item_ids: Optional[list] = None) -> Path:
    """Exports a `RankingModel` as the next integer version of `base_dir/name`.

    Args:
      model: a trained `RankingModel`.
      base_dir: TF Serving model base path.
      name: model name (one path component).
      metadata: extra JSON-serialisable facts for metadata.json (vocab sizes, metrics, ...).
      example_item_ids: a couple of real item ids for the warmup requests.

    Returns:
      The new version directory, e.g. saved_models/ranking/3.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"Model name {name!r} must be one path component of letters, digits, "
                         "'_', '.', '-'.")
    if not hasattr(model, "loss_spec") or not hasattr(model, "history_len"):
        raise TypeError(f"export_ranking needs a RankingModel, got {type(model).__name__}")
    meta = _metadata(name, model, dict(metadata or {}))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"  # fails early if not serialisable
    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        module = _RankingModule(model)
        signatures = {SERVING_DEFAULT: module.serve.get_concrete_function()}
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        extra = tmp / ASSETS_EXTRA
        extra.mkdir()
        (extra / METADATA_FILE).write_text(text, encoding="utf-8")
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
        _write_warmup(extra / WARMUP_FILE, name, list(example_item_ids or []))
        return publish_version(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
