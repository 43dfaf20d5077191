"""Talking to an exported retrieval model: TF Serving requests and in-process loading.

* `build_rest_request` -> the JSON body for `POST /v1/models/<name>:predict` (port 8501).
* `build_grpc_request` -> a `PredictRequest` for `PredictionService.Predict` (port 8500).
* `load_export` -> loads a version directory in this process (importing `scann` only when
  the export's metadata says it holds ScaNN ops) and returns a callable.

Histories are ragged lists per user; they are padded with "" to one width (at least 1, since
TF Serving's JSON parser cannot infer the shape of empty lists). Exclusion lists are padded to
the export's fixed width W and may not be longer. TensorFlow is imported only by the functions
that need it, so building REST bodies does not load TensorFlow.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SERVING_DEFAULT = "serving_default"
WITH_EXCLUSIONS = "recommend_with_exclusions"
PAD = ""


def _as_batch(user_ids: str | Sequence[str], histories: Sequence[Any]):
    if isinstance(user_ids, (str, bytes)):
        return [user_ids], [list(histories)]
    user_ids, histories = list(user_ids), [list(h) for h in histories]
    if len(user_ids) != len(histories):
        raise ValueError(f"{len(user_ids)} user ids but {len(histories)} histories; "
                         "give one history (possibly empty) per user.")
    return user_ids, histories


def pad_rows(rows: Sequence[Sequence[str]], width: int | None = None, *, field: str = "history",
             min_width: int = 1) -> list[list[str]]:
    """Pads ragged id lists with "" to `width` (default: the longest row, at least `min_width`).

    Raises:
        ValueError: naming the row, if a row is longer than an explicit `width`.
    """
    rows = [[r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in row] for row in rows]
    if width is None:
        width = max([len(r) for r in rows] + [min_width])
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"{field} row {i} has {len(row)} ids but the width is {width}; "
                             "trim it (or export with a larger exclusion_width).")
    return [row + [PAD] * (width - len(row)) for row in rows]


def _inputs(user_ids, histories, exclude_item_ids, exclusion_width, signature_name):
    users, hist = _as_batch(user_ids, histories)
    inputs: dict[str, Any] = {"user_id": [str(u) for u in users], "history": pad_rows(hist)}
    default = WITH_EXCLUSIONS if exclude_item_ids is not None else SERVING_DEFAULT
    signature = signature_name or default
    if signature == WITH_EXCLUSIONS:
        if exclusion_width is None:
            raise ValueError("exclusion_width is required for recommend_with_exclusions: it is "
                             "fixed at export (metadata.json 'exclusion_width').")
        excl = exclude_item_ids if exclude_item_ids is not None else [[] for _ in users]
        if isinstance(user_ids, (str, bytes)):
            excl = [list(excl)]
        if len(excl) != len(users):
            raise ValueError(f"{len(users)} users but {len(excl)} exclusion lists.")
        inputs["exclude_item_ids"] = pad_rows(excl, exclusion_width, field="exclude_item_ids",
                                              min_width=0)
    elif exclude_item_ids is not None:
        raise ValueError(f"Signature {signature!r} takes no exclusions; use {WITH_EXCLUSIONS!r}.")
    return signature, inputs


def build_rest_request(
    user_ids: str | Sequence[str],
    histories: Sequence[Any],
    exclude_item_ids: Sequence[Sequence[str]] | None = None,
    *,
    exclusion_width: int | None = None,
    signature_name: str | None = None,
    columnar: bool = False,
) -> dict[str, Any]:
    """The JSON body of a TF Serving REST predict call.

    Args:
        user_ids: one user id, or a list of them.
        histories: that user's item ids, or one list per user (ragged is fine).
        exclude_item_ids: per-user ids that must not be returned (selects
            `recommend_with_exclusions`).
        exclusion_width: the export's W (metadata.json); required with exclusions.
        signature_name: override the signature.
        columnar: use the `{"inputs": {...}}` form instead of `{"instances": [...]}`.

    Example:
        >>> build_rest_request("u1", ["i1", "i2"])
        {'signature_name': 'serving_default',
         'instances': [{'user_id': 'u1', 'history': ['i1', 'i2']}]}
    """
    signature, inputs = _inputs(user_ids, histories, exclude_item_ids, exclusion_width,
                                signature_name)
    if columnar:
        return {"signature_name": signature, "inputs": inputs}
    names = list(inputs)
    instances = [{n: inputs[n][i] for n in names} for i in range(len(inputs["user_id"]))]
    return {"signature_name": signature, "instances": instances}


def rest_predict_url(model_name: str, host: str = "localhost", port: int = 8501,
                     version: int | None = None) -> str:
    """`http://host:port/v1/models/<name>[/versions/<v>]:predict`."""
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version is not None else "")
    return f"http://{host}:{port}{path}:predict"


def build_grpc_request(
    model_name: str,
    user_ids: str | Sequence[str],
    histories: Sequence[Any],
    exclude_item_ids: Sequence[Sequence[str]] | None = None,
    *,
    exclusion_width: int | None = None,
    signature_name: str | None = None,
    version: int | None = None,
):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for the same inputs as
    `build_rest_request` (send it with `PredictionServiceStub(channel).Predict`)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    signature, inputs = _inputs(user_ids, histories, exclude_item_ids, exclusion_width,
                                signature_name)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        array = np.asarray(value, dtype=object)
        if name == "exclude_item_ids" and array.ndim == 1:  # zero-width rows collapse to 1-D
            array = array.reshape(len(inputs["user_id"]), 0)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=tf.string))
    return request


def resolve_version_dir(path: str | os.PathLike) -> Path:
    """A version dir as given, or the highest integer version under a model dir."""
    path = Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = sorted((int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()),
                      ) if path.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel version directory nor a model "
                                "directory with integer version subdirectories.")
    return path / str(versions[-1])


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of an export (version dir or model dir)."""
    version_dir = resolve_version_dir(path)
    for candidate in (version_dir / "metadata.json",
                      version_dir / "assets.extra" / "metadata.json"):
        if candidate.exists():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(
        f"No metadata.json in {version_dir}; was it written by export_retrieval?")


class ExportedRetrieval:
    """A loaded retrieval export, callable like the server.

    Args:
        loaded: the object from `tf.saved_model.load`.
        metadata: its metadata.json.
        path: its version directory.

    Example:
        >>> model = load_export("saved_models/retrieval_bruteforce")
        >>> model(["u1"], [["i1", "i2"]], exclude_item_ids=[["i1"]])["item_ids"]
    """

    def __init__(self, loaded: Any, metadata: dict[str, Any], path: Path):
        self.loaded = loaded
        self.metadata = metadata
        self.path = path
        self.signatures = loaded.signatures

    def __call__(self, user_ids, histories, exclude_item_ids=None) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature, inputs = _inputs(user_ids, histories, exclude_item_ids,
                                    self.metadata.get("exclusion_width"), None)
        tensors = {}
        for name, value in inputs.items():
            array = np.asarray(value, dtype=object)
            if array.ndim == 1 and name != "user_id":
                array = array.reshape(len(inputs["user_id"]), 0)
            tensors[name] = tf.constant(array.astype(str) if array.size else
                                        np.zeros(array.shape, dtype=str), dtype=tf.string)
        out = self.signatures[signature](**tensors)
        ids = out["item_ids"].numpy()
        decoded = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(ids).astype(str)
        return {"item_ids": decoded, "scores": out["scores"].numpy()}


def load_export(path: str | os.PathLike) -> ExportedRetrieval:
    """Loads an export written by `export_retrieval`; imports scann only if it is needed."""
    version_dir = resolve_version_dir(path)
    metadata = read_metadata(version_dir)
    if metadata.get("requires_scann_ops"):
        try:
            import scann  # noqa: F401  (registers the ScaNN ops the graph uses)
        except ImportError as exc:
            raise ImportError(f"{version_dir} holds a ScaNN index and needs `pip install scann` "
                              "(or load the retrieval_bruteforce twin).") from exc
    import tensorflow as tf

    return ExportedRetrieval(tf.saved_model.load(str(version_dir)), metadata, version_dir)
