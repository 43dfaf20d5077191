"""TF Serving warmup files: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays the records of this file (a TFRecord of `PredictionLog` protos, each holding
a `PredictRequest`) right after it loads a version and before it marks the version AVAILABLE,
so the first real user does not pay for graph tracing, kernel selection and memory allocation.
TF Serving reads at most 1000 records; this module writes at most `MAX_WARMUP_REQUESTS`.

* `write_warmup_requests(path, model_name, requests)` writes the file from
  `[(signature_name, {input_name: numpy array}), ...]`; any export (retrieval, ranking, the
  cascade) calls it with requests built from real inputs, covering every signature.
* `read_warmup_requests(path)` parses it back into `WarmupRecord`s (signature, numpy inputs and
  the `PredictRequest` proto itself).
* `batched_requests(signature_name, rows)` turns real example rows into requests of a few batch
  sizes, the shapes a server meets first.
* `replay_warmup(signatures, path)` calls each record's signature the way TF Serving does at
  load; it raises on the first record a signature rejects.
* `example_inputs(version_dir, signature, batch_size)` reads real example inputs back from the
  file (clients, `pipelines.export`'s curl line and `pipelines.bench_serving` use it).

Example:
    >>> requests = batched_requests("serving_default",
    ...                             {"user_id": np.array(["u1", "u2"]),
    ...                              "history": np.array([["i1", ""], ["i2", "i3"]])})
    >>> write_warmup_requests(version_dir / "assets.extra" / WARMUP_FILE, "ranking", requests)
    >>> [r.signature_name for r in read_warmup_requests(version_dir / "assets.extra" / WARMUP_FILE)]
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recommenders_tf.serving.contract import ASSETS_EXTRA, SERVING_DEFAULT, WARMUP_FILE

MAX_WARMUP_REQUESTS = 200
DEFAULT_BATCH_SIZES = (1, 8)


@dataclasses.dataclass
class WarmupRecord:
    """One parsed warmup record.

    Args:
        model_name: `model_spec.name` of the request.
        signature_name: `model_spec.signature_name` ("serving_default" when left empty).
        inputs: {input name: numpy array}; strings come back as bytes (object arrays).
        request: the `PredictRequest` proto as stored.
    """

    model_name: str
    signature_name: str
    inputs: dict[str, np.ndarray]
    request: Any

    @property
    def batch_size(self) -> int:
        sizes = {v.shape[0] for v in self.inputs.values() if v.ndim}
        return max(sizes) if sizes else 1


def warmup_path(version_dir: str | os.PathLike) -> Path:
    """`<version_dir>/assets.extra/tf_serving_warmup_requests`."""
    return Path(version_dir) / ASSETS_EXTRA / WARMUP_FILE


def _as_array(value: Any) -> np.ndarray:
    """numpy array for a TensorProto: str -> bytes objects (DT_STRING), floats -> float32."""
    array = np.asarray(value)
    if array.dtype.kind in "US" or array.dtype == object:
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel().tolist()]
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = flat if flat else []
        return out
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    return array


def _select(requests: list, max_requests: int) -> list:
    """At most `max_requests`, taken round-robin over signatures so each stays covered."""
    if len(requests) <= max_requests:
        return list(requests)
    by_signature: dict[str, list] = {}
    for request in requests:
        by_signature.setdefault(request[0], []).append(request)
    chosen: list = []
    queues = list(by_signature.values())
    while len(chosen) < max_requests:
        for queue in queues:
            if queue and len(chosen) < max_requests:
                chosen.append(queue.pop(0))
    return chosen


def make_predict_request(model_name: str, signature_name: str, inputs: Mapping[str, Any],
                         version: int | None = None, dtypes: Mapping[str, Any] | None = None):
    """A `PredictRequest` with `inputs` as TensorProtos (str arrays become DT_STRING).

    Args:
        dtypes: optional {input: tf.DType} to force (e.g. an empty array that must be string).
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        dtype = (dtypes or {}).get(name)
        array = _as_array(value)
        proto = request.inputs[name]
        if array.dtype == object and dtype in (None, tf.string):
            # Strings go in string_val directly (what tf.make_tensor_proto does, minus its
            # per-element checks, which dominate a small request's cost).
            proto.dtype = tf.string.as_datatype_enum
            for size in array.shape:
                proto.tensor_shape.dim.add(size=int(size))
            proto.string_val.extend(array.reshape(-1).tolist())
        else:
            proto.CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    return request


def write_warmup_requests(path: str | os.PathLike, model_name: str,
                          requests: Sequence[tuple[str, Mapping[str, Any]]],
                          *, max_requests: int = MAX_WARMUP_REQUESTS) -> int:
    """Writes TF Serving's warmup file: one `PredictionLog(predict_log=...)` per request.

    Args:
        path: the file to write, normally `<version>/assets.extra/tf_serving_warmup_requests`
            (see `warmup_path`); its folder is created.
        model_name: `model_spec.name` of every request (the TF Serving model name).
        requests: `[(signature_name, {input_name: numpy array or nested list}), ...]`, built
            from real inputs and covering every signature of the export. Strings may be str
            or bytes; floats are sent as float32, integers keep their numpy dtype.
        max_requests: cap; longer lists are cut round-robin over signatures, so every
            signature keeps at least one request.

    Returns:
        The number of records written.

    Raises:
        ValueError: no requests, an empty signature name, or a request without inputs.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = list(requests)
    if not requests:
        raise ValueError(f"No warmup requests for {model_name!r}: give at least one "
                         "(signature_name, inputs) pair per signature.")
    if max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, got {max_requests}")
    for i, item in enumerate(requests):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"warmup request {i} must be (signature_name, inputs), got "
                             f"{type(item).__name__}")
        signature, inputs = item
        if not signature or not isinstance(signature, str):
            raise ValueError(f"warmup request {i} has no signature name")
        if not inputs:
            raise ValueError(f"warmup request {i} ({signature}) has no inputs")
    chosen = _select(requests, max_requests)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in chosen:
            request = make_predict_request(model_name, signature, inputs)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(chosen)


def read_warmup_requests(path: str | os.PathLike) -> list[WarmupRecord]:
    """Parses a warmup file into `WarmupRecord`s, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a record that is not a `PredictionLog` holding a `predict_log` request
            (naming the record index).
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No warmup file at {path}")
    records = []
    for i, raw in enumerate(tf.data.TFRecordDataset(str(path))):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw.numpy())
        except Exception as exc:  # protobuf raises DecodeError; name the record
            raise ValueError(f"{path}: record {i} is not a PredictionLog proto") from exc
        if log.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"{path}: record {i} holds {log.WhichOneof('log_type')!r}, "
                             "not a predict_log")
        request = log.predict_log.request
        inputs = {name: tf.make_ndarray(t) for name, t in request.inputs.items()}
        records.append(WarmupRecord(request.model_spec.name,
                                    request.model_spec.signature_name or SERVING_DEFAULT,
                                    inputs, request))
    return records


def batched_requests(signature_name: str, rows: Mapping[str, Any],
                     batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     extra: Mapping[str, Any] | None = None) -> list[tuple[str, dict]]:
    """Requests of the first 1, 8, ... rows of real example inputs (all sharing dim 0).

    Args:
        signature_name: the signature these inputs are for.
        rows: {input: array [n, ...]} of real example inputs.
        batch_sizes: batch sizes to cut; sizes above n are cut to n (and deduplicated).
        extra: {input: array [n, ...]} added to every request (sliced the same way).
    """
    arrays = {k: np.asarray(v) for k, v in {**dict(rows), **dict(extra or {})}.items()}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"example inputs for {signature_name!r} disagree on the batch size: "
                         f"{ {k: a.shape for k, a in arrays.items()} }")
    n = sizes.pop()
    if n < 1:
        raise ValueError(f"no example rows for {signature_name!r}")
    out, seen = [], set()
    for size in batch_sizes:
        size = min(int(size), n)
        if size in seen:
            continue
        seen.add(size)
        out.append((signature_name, {k: a[:size] for k, a in arrays.items()}))
    return out


def replay_warmup(signatures: Mapping[str, Any], path: str | os.PathLike) -> int:
    """Calls every warmup record's signature with its inputs, as TF Serving does at load.

    Args:
        signatures: `loaded.signatures` of the SavedModel the file belongs to.
        path: the warmup file.

    Returns:
        The number of records replayed.

    Raises:
        ValueError: a record names an unknown signature or its inputs are rejected (the
            signature's error is chained).
    """
    import tensorflow as tf

    records = read_warmup_requests(path)
    for i, record in enumerate(records):
        if record.signature_name not in signatures:
            raise ValueError(f"{path}: record {i} names signature {record.signature_name!r}, "
                             f"not one of {sorted(signatures)}")
        fn = signatures[record.signature_name]
        try:
            fn(**{name: tf.constant(value) for name, value in record.inputs.items()})
        except Exception as exc:
            raise ValueError(f"{path}: record {i} ({record.signature_name}) is rejected by its "
                             f"signature: {exc}") from exc
    return len(records)


def example_inputs(path: str | os.PathLike, signature_name: str = SERVING_DEFAULT,
                   batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Real example inputs for one signature, taken from an export's warmup file.

    Args:
        path: a version dir or the warmup file itself.
        signature_name: whose inputs.
        batch_size: rows wanted: the record with the most rows is cut, or its rows repeated in
            order, to exactly this many (None: that record as it is).

    Raises:
        LookupError: the file has no record for `signature_name`.
    """
    path = Path(path)
    file = path if path.is_file() else warmup_path(path)
    records = [r for r in read_warmup_requests(file) if r.signature_name == signature_name]
    if not records:
        raise LookupError(f"{file} holds no warmup request for signature {signature_name!r}")
    best = max(records, key=lambda r: r.batch_size)
    if batch_size is None:
        return dict(best.inputs)
    rows = np.arange(int(batch_size)) % best.batch_size
    return {name: value[rows] for name, value in best.inputs.items()}
