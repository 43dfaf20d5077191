"""Atomic SavedModel export of a retrieval stage (query tower + index) in TF Serving layout.

```
saved_models/<name>/<version>/saved_model.pb, variables/
                              assets/<vocabulary>.txt           (the towers' lookup vocabularies,
                                                                 candidate_ids.txt)
                              metadata.json                     (copy, for humans and tools)
                              assets.extra/metadata.json
                              assets.extra/tf_serving_warmup_requests
```

Signatures (named inputs and outputs; B = batch, N = history length, W = exclusion width):

* `serving_default(user_id: string [B], history: string [B, N])
  -> {item_ids: string [B, k], scores: float32 [B, k]}`
* `recommend_with_exclusions(user_id, history, exclude_item_ids: string [B, W])`, same outputs,
  never containing an excluded id, for any width W (metadata `exclusion_width` is null: not
  fixed). The excluded ids are looked up to catalogue rows and dropped by binary search, so
  the cost grows with k + W, not with k x W; "" pads `exclude_item_ids` and excludes nothing.

`history` is read oldest first, most recent last; "" padding may sit anywhere (left, right,
in between): the graph first moves the real ids to the end, keeping their order, so a user
gets the same answer alone or batched with a longer history (metadata `input_order`).

Slots are empty (item id "", score -inf) only when the catalogue minus the excluded ids holds
fewer than k items: where ScaNN's approximate pass comes back short, an exact pass over the
catalogue fills the row.
The version directory is written under a temporary name inside `<name>/` (TF Serving only
watches integer names) and renamed to the next integer version, so a server never sees a
half-written version and an existing version is never overwritten.

A ScaNN export needs the ScaNN custom ops: in Python `import scann` before loading; in TF
Serving only the ScaNN-enabled build. A BruteForce export uses stock ops only.

`save_export(module, signatures, base_dir, name, metadata, warmup_requests)` is the shared
machinery every export goes through (retrieval, ranking, the cascade): it checks that each
signature has named inputs and outputs and accepts every warmup request, copies the lookup
vocabularies found in the module into `assets/`, saves, reads the signatures back from the
SavedModel into metadata.json, writes the warmup file (`serving.warmup`) and publishes the next
integer version atomically.

The lookup tables of `StringLookup` layers built from a vocabulary list live as constants in
the graph (not as asset files), so the exported graph does not read `assets/`; the files there
are the same vocabularies, one token per line in index order, for people and tools (metadata
`assets.vocabularies` names each file, its size and the index of its first token).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import recommenders_tf
import tensorflow as tf

from recommenders_tf import savedmodel
from recommenders_tf.features.id_lists import compact_right
from recommenders_tf.features.vocab import Vocabulary
from recommenders_tf.index.candidate_store import QUERY_FEATURE_SPEC
from recommenders_tf.index.scann_index import RetrievalIndex
from recommenders_tf.serving.contract import (ASSETS_EXTRA, EXCLUDE_INPUT, HISTORY, ITEM_IDS,
                                              METADATA_FILE, ORDERED_ID_LISTS, PAD, SCORES,
                                              SERVING_DEFAULT, USER_ID, WARMUP_FILE,
                                              WITH_EXCLUSIONS, check_model_name,
                                              input_order_metadata, tensor_spec)
from recommenders_tf.serving.server_config import check_signatures
from recommenders_tf.serving.warmup import batched_requests, write_warmup_requests

TMP_PREFIX = ".tmp-export-"
UNKNOWN_USER = "__warmup_unknown_user__"
UNKNOWN_ITEM = "__warmup_unknown_item__"
# Written by save_export for every export.
EXPORT_KEYS = {"signatures", "assets", "warmup"}
_RESERVED_KEYS = {
    "format_version", "model_name", "index_type", "k", "exclusion_width", "embedding_dim",
    "num_candidates", "scann_params", "requires_scann_ops", "serving_note", "signatures",
    "versions", "created_utc", "pad_item_id", "assets", "warmup", "input_order",
}
SCANN_NOTE = ("Contains ScaNN custom ops: in Python run `import scann` before "
              "`tf.saved_model.load`; in TF Serving it needs the ScaNN-enabled TF Serving build "
              "(stock TF Serving cannot load it). Serve the retrieval_bruteforce twin on stock "
              "TF Serving.")
BRUTEFORCE_NOTE = ("Stock TensorFlow ops only: loads in stock TF Serving and with plain "
                   "tf.saved_model.load.")


class _RetrievalModule(tf.Module):
    """The object saved: query tower + index layer, with the two serving functions."""

    def __init__(self, query_model: Any, index: RetrievalIndex, k: int,
                 feature_spec: Mapping[str, tf.TensorSpec]):
        super().__init__()
        self.query_model = query_model
        self.index_layer = index.layer
        self.catalog_rows = index.rows
        names = list(feature_spec)
        spec = {n: tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in feature_spec.items()}
        # Any exclusion width W: the cost grows with W, not with the catalogue times W.
        excl_spec = tensor_spec(EXCLUDE_INPUT)
        ordered = [n for n, s in feature_spec.items() if n in ORDERED_ID_LISTS
                   and s.dtype == tf.string and s.shape.rank == 2]

        def embed(features):
            features = {n: compact_right(features[n]) if n in ordered else features[n]
                        for n in names}
            return index.serving_embeddings(self.query_model, features)

        def search(features, exclude):
            scores, ids = index.search_excluding(embed(features), exclude, k)
            return {ITEM_IDS: ids, SCORES: scores}

        @tf.function(input_signature=[spec])
        def serve(features):
            batch = tf.shape(features[names[0]])[0]
            return search(features, tf.fill(tf.stack([batch, 0]), PAD))

        @tf.function(input_signature=[spec, excl_spec])
        def serve_with_exclusions(features, exclude_item_ids):
            return search(features, exclude_item_ids)

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
        fill = PAD if spec.dtype == tf.string else 0
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
    scann = index.requires_scann_ops
    meta = {
        "format_version": 1,
        "model_name": name,
        "index_type": index.kind,
        "k": k,
        "exclusion_width": None,  # any width; the warmup requests use `exclusion_width`
        "embedding_dim": index.embedding_dim,
        "num_candidates": index.num_candidates,
        "scann_params": index.scann_params.to_dict() if index.scann_params else None,
        "requires_scann_ops": scann,
        "serving_note": SCANN_NOTE if scann else BRUTEFORCE_NOTE,
        **input_order_metadata(with_exclusions=True),
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


# ---- vocabularies as assets ---------------------------------------------------------------


def _is_hash_table(obj: Any) -> bool:
    return "HashTable" in type(obj).__name__ and hasattr(obj, "resource_handle")


def _export_table(table: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(keys, values) of a string- or int-keyed table with int64 values, else None."""
    key_dtypes = [getattr(table, "key_dtype", None)] if hasattr(table, "key_dtype") else [
        tf.string, tf.int64]
    if getattr(table, "value_dtype", tf.int64) != tf.int64:
        return None
    for key_dtype in key_dtypes:
        try:
            keys, values = tf.raw_ops.LookupTableExportV2(
                table_handle=table.resource_handle, Tkeys=key_dtype, Tvalues=tf.int64)
        except (tf.errors.OpError, TypeError, ValueError):
            continue
        return keys.numpy(), values.numpy()
    return None


def find_vocabularies(root: Any) -> list[Vocabulary]:
    """Every int64-valued lookup table reachable from `root` (Keras `StringLookup` /
    `IntegerLookup` layers, or their restored twins inside a loaded SavedModel), breadth first,
    so each table is named by its shortest attribute path; as `Vocabulary` objects with tokens
    in index order and no counts."""
    from collections import deque

    queue, seen, found = deque([((), root)]), set(), []
    while queue:
        path, obj = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if _is_hash_table(obj):
            exported = _export_table(obj)
            if exported is not None:
                keys, values = exported
                order = np.argsort(values, kind="stable")
                tokens = [k.decode("utf-8") if isinstance(k, bytes) else str(k)
                          for k in keys[order].tolist()]
                ordered = values[order]
                parts = [p for p in path if p != "lookup_table"] or ["table"]
                found.append(Vocabulary(
                    tokens, name=".".join(parts),
                    first_index=int(ordered[0]) if len(ordered) else 0,
                    contiguous=bool(len(ordered) == 0 or np.all(np.diff(ordered) == 1))))
            continue
        try:
            children = obj._trackable_children("checkpoint")  # the checkpoint object graph
        except Exception:  # not trackable, or a type that refuses to list children
            continue
        for key in sorted(children):
            queue.append((path + (key,), children[key]))
    return found


def _asset_file_name(name: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "vocabulary"
    candidate, i = f"{base}.txt", 2
    while candidate in taken:
        candidate, i = f"{base}_{i}.txt", i + 1
    taken.add(candidate)
    return candidate


def attach_vocabulary_assets(module: tf.Module, source_dir: Path,
                             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes each vocabulary of `module` (plus `extra` {name: tokens}) to `source_dir` and
    tracks it on the module as a `tf.saved_model.Asset`, so saving copies it to `assets/`.

    Returns:
        {"vocabularies": {name: {"file": "assets/<file>", "size", "first_index",
        "contiguous"}}} for metadata.json.
    """
    vocabularies = find_vocabularies(module)
    for name, tokens in (extra or {}).items():
        vocabularies.append(Vocabulary([str(t) for t in tokens], name=name))
    source_dir.mkdir(parents=True, exist_ok=True)
    taken: set = set()
    assets, info = {}, {}
    for vocab in vocabularies:
        if any("\n" in t for t in vocab.tokens):
            continue  # one token per line cannot hold it; the graph still has the table
        file_name = _asset_file_name(vocab.name, taken)
        path = source_dir / file_name
        path.write_text("".join(t + "\n" for t in vocab.tokens), encoding="utf-8")
        assets[file_name] = tf.saved_model.Asset(str(path))
        info[vocab.name] = {"file": f"assets/{file_name}", "size": len(vocab.tokens),
                            "first_index": vocab.first_index, "contiguous": vocab.contiguous}
    module.vocabulary_assets = assets
    return {"vocabularies": info}


def pick_vocabulary(vocabularies: Sequence[Vocabulary], word: str, avoid: Sequence[str] = ()
                    ) -> list[str]:
    """Tokens of the vocabulary whose path mentions `word` (and none of `avoid`); the shortest
    such path wins. [] if there is none."""
    matches = [v for v in vocabularies
               if word in v.name.lower() and not any(a in v.name.lower() for a in avoid)]
    return min(matches, key=lambda v: (len(v.name), v.name)).tokens if matches else []


# ---- the shared export machinery ------------------------------------------------------------


def _call_signature(function: Any, inputs: Mapping[str, Any]) -> Any:
    """Calls a concrete function with inputs keyed by its input specs' names."""
    args, kwargs = function.structured_input_signature
    missing = []

    def pick(spec):
        if spec.name not in inputs:
            missing.append(spec.name)
            return None
        return tf.constant(np.asarray(inputs[spec.name]), dtype=spec.dtype)

    call_args = tf.nest.map_structure(pick, args)
    call_kwargs = tf.nest.map_structure(pick, kwargs)
    if missing:
        raise ValueError(f"missing inputs {sorted(set(missing))}")
    return function(*call_args, **call_kwargs)


def check_signature_functions(signatures: Mapping[str, Any]) -> None:
    """Every signature has named inputs and a non-empty dict of named outputs.

    Raises:
        ValueError: naming the signature and what is missing.
    """
    if not signatures:
        raise ValueError("An export needs at least one signature.")
    for name, function in signatures.items():
        specs = tf.nest.flatten(function.structured_input_signature)
        if not specs:
            raise ValueError(f"Signature {name!r} takes no inputs.")
        unnamed = [s for s in specs if not getattr(s, "name", None)]
        if unnamed:
            raise ValueError(f"Signature {name!r} has unnamed inputs {unnamed}; give every "
                             "TensorSpec a name= (it becomes the request key).")
        outputs = function.structured_outputs
        if not isinstance(outputs, Mapping) or not outputs:
            raise ValueError(f"Signature {name!r} must return a non-empty dict of named "
                             f"outputs, got {type(outputs).__name__}.")


def check_warmup_requests(signatures: Mapping[str, Any],
                          requests: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Every signature has a warmup request and every request is accepted by its signature.

    Raises:
        ValueError: naming the request, its signature and the signature's error.
    """
    covered = {sig for sig, _ in requests}
    uncovered = sorted(set(signatures) - covered)
    if uncovered:
        raise ValueError(f"No warmup request for signatures {uncovered}; cover every one.")
    for i, (sig, inputs) in enumerate(requests):
        if sig not in signatures:
            raise ValueError(f"Warmup request {i} names signature {sig!r}, not one of "
                             f"{sorted(signatures)}.")
        try:
            _call_signature(signatures[sig], inputs)
        except Exception as exc:
            raise ValueError(f"Warmup request {i} ({sig}) is rejected by its signature: "
                             f"{exc}") from exc


def _write_warmup(path: Path, name: str, requests: Sequence[tuple[str, Mapping[str, Any]]]
                  ) -> int:
    """TF Serving replays these PredictRequests at load so the first user is not slow."""
    return write_warmup_requests(path, name, requests)


def save_export(module: tf.Module, signatures: Mapping[str, Any],
                base_dir: str | os.PathLike, name: str, metadata: Mapping[str, Any],
                warmup_requests: Sequence[tuple[str, Mapping[str, Any]]], *,
                options: tf.saved_model.SaveOptions | None = None,
                extra_vocabularies: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Saves `module` as the next integer version of `base_dir/name`, in TF Serving layout.

    Steps: check the signatures (named inputs, named outputs) and replay every warmup request
    through them in memory; write the module's lookup vocabularies (and
    `extra_vocabularies`) to `assets/`; `tf.saved_model.save` into a temp dir inside
    `base_dir/name`; read the signatures back from the SavedModel (none may be empty); write
    `assets.extra/tf_serving_warmup_requests` and metadata.json (beside the model and in
    assets.extra/) with `signatures`, `assets` and `warmup` filled in; rename the temp dir to
    the next integer version. On any failure nothing is published.

    Args:
        module: the object to save (a `tf.Module` holding the model).
        signatures: {signature name: concrete function}; input specs must carry names.
        base_dir: TF Serving model base path.
        name: model name (one path component).
        metadata: JSON-serialisable facts for metadata.json (must not set `signatures`,
            `assets` or `warmup`).
        warmup_requests: `[(signature name, {input: array}), ...]` built from real inputs,
            covering every signature (see `serving.warmup`).
        options: `tf.saved_model.SaveOptions` (e.g. the ScaNN namespace whitelist).
        extra_vocabularies: {name: tokens} written to assets/ as well (e.g. candidate ids).

    Returns:
        The published version directory.
    """
    check_model_name(name)
    clash = sorted(EXPORT_KEYS & set(metadata))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by save_export itself.")
    metadata = dict(metadata)
    json.dumps(metadata)  # fail before writing anything if metadata is not JSON-serialisable
    requests = list(warmup_requests)
    check_signature_functions(signatures)
    check_warmup_requests(signatures, requests)

    model_dir = Path(base_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(model_dir)
    tmp = model_dir / temp_dir_name()
    assets_source = model_dir / (tmp.name + "-assets")
    try:
        metadata["assets"] = attach_vocabulary_assets(module, assets_source, extra_vocabularies)
        savedmodel.save(module, str(tmp), signatures=signatures, options=options)
        summaries = check_signatures(tmp)
        lost = sorted(set(signatures) - set(summaries))
        if lost:
            raise ValueError(f"Signatures {lost} are missing from the saved model {tmp}.")
        metadata["signatures"] = summaries
        extra = tmp / ASSETS_EXTRA
        extra.mkdir(exist_ok=True)
        count = _write_warmup(extra / WARMUP_FILE, name, requests)
        metadata["warmup"] = {"file": f"{ASSETS_EXTRA}/{WARMUP_FILE}", "records": count,
                              "signatures": sorted({sig for sig, _ in requests})}
        text = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
        (extra / METADATA_FILE).write_text(text, encoding="utf-8")
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
        return publish_version(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(assets_source, ignore_errors=True)


# ---- the retrieval export -------------------------------------------------------------------


def _fill_rows(spec: tf.TensorSpec, rows: list[list[str]] | None, batch: int, width: int,
               pad: Any) -> np.ndarray:
    """[batch, ...] values for one query input: the given string rows fitted to the spec's
    width, else padding values shaped by the spec (unknown dims take `width`)."""
    dims = [d if d is not None else width for d in spec.shape.as_list()[1:]]
    if rows is not None and len(dims) == 1:
        w = dims[0]
        return np.array([(list(r) + [PAD] * w)[:w] for r in rows], dtype=object)
    return np.full([batch] + dims, pad, dtype=object if spec.dtype == tf.string else
                   spec.dtype.as_numpy_dtype)


def retrieval_warmup_requests(feature_spec: Mapping[str, tf.TensorSpec], exclusion_width: int,
                              item_ids: Sequence[str], user_ids: Sequence[str],
                              history_len: int, warmup_inputs: Mapping[str, Any] | None = None
                              ) -> list[tuple[str, dict]]:
    """Warmup requests for both retrieval signatures, from real ids.

    Default (no `warmup_inputs`): one 2-row request per signature, row 0 a real user (from
    the query tower's vocabulary) with real items as history, row 1 an unknown user with an
    empty history; `recommend_with_exclusions` excludes a real item for row 0 and nothing for
    row 1. Inputs other than `user_id` / `history` get padding values shaped by the spec.
    With `warmup_inputs` ({input: array [n, ...]} of real query features, e.g. sampled train
    users), each signature gets requests of the first 1 and 8 rows.
    """
    if warmup_inputs is not None:
        rows = {n: np.asarray(warmup_inputs[n]) for n in feature_spec}
        n = len(next(iter(rows.values())))
        excl = [[item_ids[i % len(item_ids)]] if exclusion_width else [] for i in range(n)]
        excl_rows = np.array([(r + [PAD] * exclusion_width)[:exclusion_width] for r in excl],
                             dtype=object).reshape(n, exclusion_width)
        return (batched_requests(SERVING_DEFAULT, rows)
                + batched_requests(WITH_EXCLUSIONS, rows, extra={EXCLUDE_INPUT: excl_rows}))
    width = max(int(history_len or 0), 1)
    users = [user_ids[0] if user_ids else UNKNOWN_USER, UNKNOWN_USER]
    histories = [list(item_ids[:width]), []]
    inputs = {}
    for name, spec in feature_spec.items():
        if name == USER_ID and spec.shape.rank == 1:
            inputs[name] = np.array(users, dtype=object)
        elif name == HISTORY:
            inputs[name] = _fill_rows(spec, histories, 2, width, PAD)
        else:
            inputs[name] = _fill_rows(spec, None, 2, width, PAD if spec.dtype == tf.string else 0)
    exclude = np.array([([item_ids[0]] if exclusion_width else []) + [PAD] * max(
        exclusion_width - 1, 0), [PAD] * exclusion_width], dtype=object).reshape(2, exclusion_width)
    return [(SERVING_DEFAULT, inputs),
            (WITH_EXCLUSIONS, {**inputs, EXCLUDE_INPUT: exclude})]


def export_retrieval(
    query_model: Any,
    index: RetrievalIndex,
    base_dir: str | os.PathLike = "saved_models",
    name: str | None = None,
    k: int | None = None,
    exclusion_width: int = 50,
    metadata: Mapping[str, Any] | None = None,
    query_feature_spec: Mapping[str, tf.TensorSpec] | None = None,
    warmup_inputs: Mapping[str, Any] | None = None,
) -> Path:
    """Exports query tower + index as the next integer version of `base_dir/name`.

    Args:
        query_model: tower from the raw query feature dict to [B, d] float32 embeddings
            (None: use `index.query_model`).
        index: a `RetrievalIndex` from `build_index` / `tune_scann`.
        base_dir: TF Serving model base path.
        name: model name; default `retrieval_<index kind>`.
        k: results per query (default `index.k`).
        exclusion_width: W of the warmup requests' `exclude_item_ids`; the signature accepts
            any width (pad rows with "").
        metadata: extra JSON-serialisable facts for metadata.json, e.g. vocab sizes and
            `query_history_len` (the history width clients send; warmup requests use it).
        query_feature_spec: the query tower's inputs; default user_id [B] and history [B, N].
        warmup_inputs: optional real query features {input: array [n, ...]} for the warmup
            requests (default: a real user from the tower's vocabulary and real item ids).

    Returns:
        The new version directory, e.g. saved_models/retrieval_scann/3.
    """
    query_model = query_model if query_model is not None else index.query_model
    if query_model is None:
        raise ValueError("No query model: pass query_model= or build the index with one.")
    name = check_model_name(name or f"retrieval_{index.kind}")
    k = index.check_query_k(index.k if k is None else k)
    if (isinstance(exclusion_width, bool) or not isinstance(exclusion_width, int)
            or exclusion_width < 0):
        raise ValueError(f"exclusion_width must be a non-negative int, got {exclusion_width!r}.")
    feature_spec = dict(query_feature_spec or QUERY_FEATURE_SPEC)
    extra = dict(metadata or {})
    meta = _metadata(name, index, k, exclusion_width, feature_spec, extra)
    json.dumps(meta)  # fail before writing anything if metadata is not JSON-serialisable
    _check_query_model(query_model, index, feature_spec)
    if warmup_inputs is not None:
        missing = sorted(set(feature_spec) - set(warmup_inputs))
        if missing:
            raise ValueError(f"warmup_inputs lacks query inputs {missing}")

    module = _RetrievalModule(query_model, index, k, feature_spec)
    # Tracing the signatures calls the index layer, which TFRS needs before saving.
    signatures = module.signatures()
    item_ids = [str(i) for i in index.candidate_ids[:64].tolist()] or [UNKNOWN_ITEM]
    spec_width = feature_spec.get(HISTORY)
    history_len = (spec_width.shape[1] if spec_width is not None and spec_width.shape.rank == 2
                   and spec_width.shape[1] is not None else extra.get("query_history_len", 2))
    users = pick_vocabulary(find_vocabularies(query_model), "user", avoid=("feature",))
    requests = retrieval_warmup_requests(feature_spec, exclusion_width, item_ids, users,
                                         int(history_len or 2), warmup_inputs)
    options = tf.saved_model.SaveOptions(
        namespace_whitelist=["Scann"] if index.requires_scann_ops else None)
    return save_export(module, signatures, base_dir, name, meta, requests, options=options,
                       extra_vocabularies={"candidate_ids": [str(i) for i in
                                                             index.candidate_ids.tolist()]})


# A temp dir of a killed export is left behind; one whose owner is gone is removed by the
# next export. Names carry host and pid so a live exporter's dir is never taken for stale.
STALE_AFTER_SECONDS = 24 * 3600  # for dirs whose owner cannot be checked (other host, old name)
_TEMP_NAME = re.compile(r"(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{32})(-assets)?")


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"


def temp_dir_name() -> str:
    return f"{TMP_PREFIX}{host_tag()}-{os.getpid()}-{uuid.uuid4().hex}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temp_dirs(model_dir: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Temp dirs under `model_dir` left by exports that are no longer running: the owner
    process (same host) is gone, or, when that cannot be checked, older than a day."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    now = time.time() if now is None else now
    host = host_tag()
    stale = []
    for path in sorted(model_dir.iterdir()):
        if not path.name.startswith(TMP_PREFIX):
            continue
        match = _TEMP_NAME.fullmatch(path.name[len(TMP_PREFIX):])
        if match and match["host"] == host:
            gone = not _pid_alive(int(match["pid"]))
        else:
            try:
                gone = now - path.stat().st_mtime > STALE_AFTER_SECONDS
            except FileNotFoundError:  # its exporter just finished
                continue
        if gone:
            stale.append(path)
    return stale


def remove_stale_temp_dirs(model_dir: str | os.PathLike) -> list[Path]:
    """Removes `stale_temp_dirs(model_dir)`; returns what was removed."""
    removed = []
    for path in stale_temp_dirs(model_dir):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


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
