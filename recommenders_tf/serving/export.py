"""Atomic SavedModel export of a retrieval stage (query tower + index) in TF Serving layout.

```
saved_models/<name>/<version>/saved_model.pb, variables/
                              metadata.json                     (copy, for humans and tools)
                              assets.extra/metadata.json
                              assets.extra/tf_serving_warmup_requests
```

Signatures (named inputs and outputs; B = batch, N = history length, W = exclusion width):

* `serving_default(user_id: string [B], history: string [B, N])
  -> {item_ids: string [B, k], scores: float32 [B, k]}`
* `recommend_with_exclusions(user_id, history, exclude_item_ids: string [B, W])`, same outputs,
  never containing an excluded id: it asks the index for k + W results, masks the excluded
  ones and keeps the best k. "" pads `exclude_item_ids` and excludes nothing.

Slots that could not be filled (ScaNN found fewer candidates) hold item id "" and score -inf.
The version directory is written under a temporary name inside `<name>/` (TF Serving only
watches integer names) and renamed to the next integer version, so a server never sees a
half-written version and an existing version is never overwritten.

A ScaNN export needs the ScaNN custom ops: in Python `import scann` before loading; in TF
Serving only the ScaNN-enabled build. A BruteForce export uses stock ops only.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import recommenders_tf
import tensorflow as tf

from recommenders_tf.index.candidate_store import QUERY_FEATURE_SPEC
from recommenders_tf.index.scann_index import RetrievalIndex, top_k_excluding

SERVING_DEFAULT = "serving_default"
WITH_EXCLUSIONS = "recommend_with_exclusions"
EXCLUDE_INPUT = "exclude_item_ids"
METADATA_FILE = "metadata.json"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
TMP_PREFIX = ".tmp-export-"
_RESERVED_KEYS = {
    "format_version", "model_name", "index_type", "k", "exclusion_width", "embedding_dim",
    "num_candidates", "scann_params", "requires_scann_ops", "serving_note", "signatures",
    "versions", "created_utc", "pad_item_id",
}
SCANN_NOTE = ("Contains ScaNN custom ops: in Python run `import scann` before "
              "`tf.saved_model.load`; in TF Serving it needs the ScaNN-enabled TF Serving build "
              "(stock TF Serving cannot load it). Serve the retrieval_bruteforce twin on stock "
              "TF Serving.")
BRUTEFORCE_NOTE = ("Stock TensorFlow ops only: loads in stock TF Serving and with plain "
                   "tf.saved_model.load.")


class _RetrievalModule(tf.Module):
    """The object saved: query tower + index layer, with the two serving functions."""

    def __init__(self, query_model: Any, index: RetrievalIndex, k: int, exclusion_width: int,
                 feature_spec: Mapping[str, tf.TensorSpec]):
        super().__init__()
        self.query_model = query_model
        self.index_layer = index.layer
        names = list(feature_spec)
        spec = {n: tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in feature_spec.items()}
        excl_spec = tf.TensorSpec([None, exclusion_width], tf.string, name=EXCLUDE_INPUT)
        width = min(k + exclusion_width, index.num_candidates)

        def embed(features):
            return self.query_model({n: features[n] for n in names})

        @tf.function(input_signature=[spec])
        def serve(features):
            scores, ids = index.search_tensors(embed(features), k)
            return {"item_ids": ids, "scores": scores}

        @tf.function(input_signature=[spec, excl_spec])
        def serve_with_exclusions(features, exclude_item_ids):
            scores, ids = index.search_tensors(embed(features), width)
            scores, ids = top_k_excluding(scores, ids, exclude_item_ids, k)
            return {"item_ids": ids, "scores": scores}

        self.serve = serve
        self.serve_with_exclusions = serve_with_exclusions

    def signatures(self) -> dict[str, Any]:
        serve = self.serve.get_concrete_function()
        excl = self.serve_with_exclusions.get_concrete_function()
        return {SERVING_DEFAULT: serve, WITH_EXCLUSIONS: excl}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe_features(feature_spec: Mapping[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    """A one-row batch of padding values, shaped by the spec (unknown dims become 1)."""
    out = {}
    for name, spec in feature_spec.items():
        shape = [1] + [d if d is not None else 1 for d in spec.shape.as_list()[1:]]
        fill = "" if spec.dtype == tf.string else 0
        out[name] = tf.fill(shape, tf.constant(fill, spec.dtype))
    return out


def _check_query_model(query_model: Any, index: RetrievalIndex,
                       feature_spec: Mapping[str, tf.TensorSpec]) -> None:
    try:
        out = query_model(_probe_features(feature_spec))
    except Exception as exc:  # re-raised with the inputs we tried, the tower's error chained
        raise ValueError(
            f"The query model failed on a probe batch with inputs {dict(feature_spec)}; it "
            "must take that feature dict (pass query_feature_spec= if its inputs differ)."
        ) from exc
    if out.shape.rank != 2 or out.shape[-1] != index.embedding_dim or out.dtype != tf.float32:
        raise ValueError(
            f"The query model returns {out.dtype.name} {out.shape} but the index holds "
            f"float32 [n, {index.embedding_dim}] candidates; the towers must share dim and dtype."
        )


def existing_versions(model_dir: str | os.PathLike) -> list[int]:
    """Integer version directories under `model_dir`, ascending (what TF Serving would see)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _metadata(name: str, index: RetrievalIndex, k: int, exclusion_width: int,
              feature_spec: Mapping[str, tf.TensorSpec], extra: Mapping[str, Any]) -> dict:
    clash = sorted(_RESERVED_KEYS & set(extra))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by export_retrieval itself; "
                         "rename them (e.g. nest them under 'extra').")
    inputs = {n: {"dtype": s.dtype.name, "shape": [d if d is not None else -1
                                                   for d in s.shape.as_list()]}
              for n, s in feature_spec.items()}
    outputs = {"item_ids": {"dtype": "string", "shape": [-1, k]},
               "scores": {"dtype": "float32", "shape": [-1, k]}}
    scann = index.requires_scann_ops
    meta = {
        "format_version": 1,
        "model_name": name,
        "index_type": index.kind,
        "k": k,
        "exclusion_width": exclusion_width,
        "embedding_dim": index.embedding_dim,
        "num_candidates": index.num_candidates,
        "scann_params": index.scann_params.to_dict() if index.scann_params else None,
        "requires_scann_ops": scann,
        "serving_note": SCANN_NOTE if scann else BRUTEFORCE_NOTE,
        "pad_item_id": "",
        "signatures": {
            SERVING_DEFAULT: {"inputs": inputs, "outputs": outputs},
            WITH_EXCLUSIONS: {
                "inputs": {**inputs, EXCLUDE_INPUT: {"dtype": "string",
                                                    "shape": [-1, exclusion_width]}},
                "outputs": outputs,
            },
        },
        "versions": {
            "tensorflow": tf.__version__,
            "tensorflow_recommenders": package_version("tensorflow-recommenders"),
            "scann": package_version("scann"),
            "tf_keras": package_version("tf-keras"),
            "recommenders_tf": recommenders_tf.__version__,
        },
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra)
    return meta


def _write_warmup(path: Path, name: str, feature_spec: Mapping[str, tf.TensorSpec],
                  exclusion_width: int, example_item_ids: list[str]) -> None:
    """TF Serving replays these PredictRequests at load so the first user is not slow."""
    from tensorflow_serving.apis import prediction_log_pb2  # lazily: only export needs it

    from recommenders_tf.serving.client import build_grpc_request

    if set(feature_spec) != set(QUERY_FEATURE_SPEC):
        return  # warmup needs meaningful example features; only known for the default spec
    users = ["__warmup_unknown_user__", "__warmup_unknown_user__"]
    histories = [example_item_ids[:2], []]
    requests = [
        build_grpc_request(name, users, histories, signature_name=SERVING_DEFAULT),
        build_grpc_request(name, users, histories,
                           exclude_item_ids=[example_item_ids[:min(1, exclusion_width)], []],
                           exclusion_width=exclusion_width, signature_name=WITH_EXCLUSIONS),
    ]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_retrieval(
    query_model: Any,
    index: RetrievalIndex,
    base_dir: str | os.PathLike = "saved_models",
    name: str | None = None,
    k: int | None = None,
    exclusion_width: int = 50,
    metadata: Mapping[str, Any] | None = None,
    query_feature_spec: Mapping[str, tf.TensorSpec] | None = None,
) -> Path:
    """Exports query tower + index as the next integer version of `base_dir/name`.

    Args:
        query_model: tower from the raw query feature dict to [B, d] float32 embeddings
            (None: use `index.query_model`).
        index: a `RetrievalIndex` from `build_index` / `tune_scann`.
        base_dir: TF Serving model base path.
        name: model name; default `retrieval_<index kind>`.
        k: results per query (default `index.k`).
        exclusion_width: W, the fixed width of `exclude_item_ids` (pad with "").
        metadata: extra JSON-serialisable facts for metadata.json, e.g. vocab sizes.
        query_feature_spec: the query tower's inputs; default user_id [B] and history [B, N].

    Returns:
        The new version directory, e.g. saved_models/retrieval_scann/3.
    """
    query_model = query_model if query_model is not None else index.query_model
    if query_model is None:
        raise ValueError("No query model: pass query_model= or build the index with one.")
    name = name or f"retrieval_{index.kind}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"Model name {name!r} must be one path component of letters, digits, "
                         "'_', '.', '-'.")
    k = index.check_query_k(index.k if k is None else k)
    if (isinstance(exclusion_width, bool) or not isinstance(exclusion_width, int)
            or exclusion_width < 0):
        raise ValueError(f"exclusion_width must be a non-negative int, got {exclusion_width!r}.")
    width = min(k + exclusion_width, index.num_candidates)
    if width > index.max_k:
        raise ValueError(
            f"k + exclusion_width = {k + exclusion_width} exceeds this ScaNN index's "
            f"num_reordering_candidates ({index.max_k}), so excluded items could leave fewer "
            f"than k results; rebuild with num_reordering_candidates >= {width} (tune_scann("
            f"..., min_reordering_candidates={width})) or lower exclusion_width."
        )
    feature_spec = dict(query_feature_spec or QUERY_FEATURE_SPEC)
    meta = _metadata(name, index, k, exclusion_width, feature_spec, dict(metadata or {}))
    json.dumps(meta)  # fail before writing anything if metadata is not JSON-serialisable
    _check_query_model(query_model, index, feature_spec)

    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        module = _RetrievalModule(query_model, index, k, exclusion_width, feature_spec)
        # Tracing the signatures calls the index layer, which TFRS needs before saving.
        signatures = module.signatures()
        options = tf.saved_model.SaveOptions(
            namespace_whitelist=["Scann"] if index.requires_scann_ops else None)
        tf.saved_model.save(module, str(tmp), signatures=signatures, options=options)
        extra = tmp / ASSETS_EXTRA
        extra.mkdir()
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        (extra / METADATA_FILE).write_text(text, encoding="utf-8")
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
        _write_warmup(extra / WARMUP_FILE, name, feature_spec, exclusion_width,
                      index.candidate_ids[:2].tolist())
        return publish_version(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_version(tmp: Path, model_dir: Path) -> Path:
    """Renames the finished temp dir to the next free integer version."""
    for _ in range(100):
        # Any integer-named entry (even a stray file) blocks its number, so it is never replaced.
        taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        target = model_dir / str(max(taken, default=0) + 1)
        try:
            os.rename(tmp, target)
        except OSError:  # another exporter took this version between the check and the rename
            continue
        return target
    raise RuntimeError(f"Could not claim a new version under {model_dir} after 100 attempts.")
