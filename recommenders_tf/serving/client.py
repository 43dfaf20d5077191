"""Talking to exported models: TF Serving clients, request builders and in-process loading.

Clients (any model, any signature; inputs are {name: array-like}):
* `RestClient(host, port)`: `predict` (columnar `inputs` or row `instances` format, returning
  numpy arrays keyed by output name), `predict_json` (the raw body), `metadata` (the
  signature defs of `GET .../metadata`), `status` / `versions` (model version status); every
  call takes `version=` or `label=`. Errors come back as `ServingError` carrying TF Serving's
  `{"error": ...}` message, its status code and the HTTP status.
* `GrpcClient(target)`: `predict` through `PredictionService.Predict` with the
  tensorflow-serving-api protos, `metadata` (`GetModelMetadata`), `status`
  (`ModelService.GetModelStatus`); gRPC errors become `ServingError` too.

Retrieval helpers:
* `build_rest_request` -> the JSON body for `POST /v1/models/<name>:predict` (port 8501).
* `build_grpc_request` -> a `PredictRequest` for `PredictionService.Predict` (port 8500).
* `load_export` -> loads a version directory in this process (importing `scann` only when
  the export's metadata says it holds ScaNN ops) and returns a callable; `load_savedmodel`
  does the same for any export and returns the loaded object.

Histories are ragged lists per user, oldest first and most recent last; they are padded on
the left with "" to one width (at least 1, since TF Serving's JSON parser cannot infer the
shape of empty lists). The exports compact every history in the graph, so any padding gives
the same answer; padding on the left keeps the request readable the way the model reads it.
Exclusion lists are padded to the longest row (or to an explicit `exclusion_width`); current
exports accept any width, exports whose metadata declares a fixed width get that width. TensorFlow is imported only by the functions
that need it, so building REST bodies does not load TensorFlow.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recommenders_tf.serving.contract import (ASSETS_EXTRA, EXCLUDE_INPUT, HISTORY,
                                              INTERNAL_SIGNATURE_PREFIX, ITEM_IDS, METADATA_FILE,
                                              MODEL_SECONDS_HEADER, PAD, SCORES, SERVING_DEFAULT,
                                              USER_ID, WITH_EXCLUSIONS)


def _as_batch(user_ids: str | Sequence[str], histories: Sequence[Any]):
    if isinstance(user_ids, (str, bytes)):
        return [user_ids], [list(histories)]
    user_ids, histories = list(user_ids), [list(h) for h in histories]
    if len(user_ids) != len(histories):
        raise ValueError(f"{len(user_ids)} user ids but {len(histories)} histories; "
                         "give one history (possibly empty) per user.")
    return user_ids, histories


def pad_rows(rows: Sequence[Sequence[str]], width: int | None = None, *, field: str = HISTORY,
             min_width: int = 1) -> list[list[str]]:
    """Left-pads ragged id lists with "" to `width` (default: the longest row, at least
    `min_width`), so the last id of each row stays last (histories: most recent last).

    Raises:
        ValueError: naming the row, if a row is longer than an explicit `width`.
    """
    rows = [[r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in row] for row in rows]
    if width is None:
        width = max([len(r) for r in rows] + [min_width])
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"{field} row {i} has {len(row)} ids but the width is {width}; "
                             "trim it or pass a larger width.")
    return [[PAD] * (width - len(row)) + row for row in rows]


def _inputs(user_ids, histories, exclude_item_ids, exclusion_width, signature_name):
    users, hist = _as_batch(user_ids, histories)
    inputs: dict[str, Any] = {USER_ID: [str(u) for u in users], HISTORY: pad_rows(hist)}
    default = WITH_EXCLUSIONS if exclude_item_ids is not None else SERVING_DEFAULT
    signature = signature_name or default
    if signature == WITH_EXCLUSIONS:
        excl = exclude_item_ids if exclude_item_ids is not None else [[] for _ in users]
        if isinstance(user_ids, (str, bytes)):
            excl = [list(excl)]
        if len(excl) != len(users):
            raise ValueError(f"{len(users)} users but {len(excl)} exclusion lists.")
        inputs[EXCLUDE_INPUT] = pad_rows(excl, exclusion_width, field=EXCLUDE_INPUT,
                                         min_width=1 if exclusion_width is None else 0)
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
        exclusion_width: pad exclusion lists to this width (default: the longest list, at
            least 1); needed only for old exports whose metadata.json fixes a width.
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
    instances = [{n: inputs[n][i] for n in names} for i in range(len(inputs[USER_ID]))]
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
        if name == EXCLUDE_INPUT and array.ndim == 1:  # zero-width rows collapse to 1-D
            array = array.reshape(len(inputs[USER_ID]), 0)
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
    for candidate in (version_dir / METADATA_FILE, version_dir / ASSETS_EXTRA / METADATA_FILE):
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
            if array.ndim == 1 and name != USER_ID:
                array = array.reshape(len(inputs[USER_ID]), 0)
            tensors[name] = tf.constant(array.astype(str) if array.size else
                                        np.zeros(array.shape, dtype=str), dtype=tf.string)
        out = self.signatures[signature](**tensors)
        ids = out[ITEM_IDS].numpy()
        decoded = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(ids).astype(str)
        return {ITEM_IDS: decoded, SCORES: out[SCORES].numpy()}


def load_savedmodel(path: str | os.PathLike) -> tuple[Any, dict[str, Any], Path]:
    """(loaded object, metadata, version dir) of any export; imports scann first when the
    export's metadata or graph needs the ScaNN ops (as a ScaNN-enabled server must)."""
    from recommenders_tf.serving.server_config import requires_scann

    version_dir = resolve_version_dir(path)
    metadata = read_metadata(version_dir)
    if requires_scann(version_dir, metadata):
        try:
            import scann  # noqa: F401  (registers the ScaNN ops the graph uses)
        except ImportError as exc:
            raise ImportError(f"{version_dir} holds a ScaNN index and needs `pip install scann` "
                              "(or load the retrieval_bruteforce twin).") from exc
    import tensorflow as tf

    return tf.saved_model.load(str(version_dir)), metadata, version_dir


def load_export(path: str | os.PathLike) -> ExportedRetrieval:
    """Loads an export written by `export_retrieval`; imports scann only if it is needed."""
    loaded, metadata, version_dir = load_savedmodel(path)
    return ExportedRetrieval(loaded, metadata, version_dir)


# ---- TF Serving clients ---------------------------------------------------------------------


class ServingError(RuntimeError):
    """An error answered by (or on the way to) a TF Serving endpoint.

    Args:
        message: TF Serving's error text (its `{"error": ...}` body or gRPC details), prefixed
            with where it came from.
        code: the canonical status ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE", ...).
        http_status: the HTTP status (REST only).
        detail: the server's own message, unprefixed.
    """

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 detail: str = ""):
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.detail = detail or message


_HTTP_TO_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def _model_path(model: str, version: int | None, label: str | None) -> str:
    if version is not None and label:
        raise ValueError(f"Give version= or label=, not both (got {version} and {label!r}).")
    path = "/v1/models/" + urllib.parse.quote(model, safe="")
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label:
        path += "/labels/" + urllib.parse.quote(label, safe="")
    return path


def to_json_value(value: Any, name: str = "") -> Any:
    """An array-like as nested JSON lists; bytes become str (or {"b64": ...} for inputs whose
    name ends in `_bytes` or that are not UTF-8), floats stay floats, NaN/inf as JSON literals."""
    array = np.asarray(value)
    as_b64 = name.endswith("_bytes")

    def leaf(v):
        if isinstance(v, bytes):
            if not as_b64:
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(v).decode("ascii")}
        if isinstance(v, (np.floating, float)):
            return float(v)
        if isinstance(v, (np.bool_, bool)):
            return bool(v)
        if isinstance(v, (np.integer, int)):
            return int(v)
        if isinstance(v, str) and as_b64:
            return {"b64": base64.b64encode(v.encode("utf-8")).decode("ascii")}
        return v

    def walk(v):
        return [walk(x) for x in v] if isinstance(v, list) else leaf(v)

    return walk(array.tolist())


def columnar_to_instances(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """{input: [B, ...]} -> [{input: row}, ...] (the row format's `instances`)."""
    arrays = {k: np.asarray(v) for k, v in inputs.items()}
    sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("The row format needs every input batched along dim 0 with the same "
                         f"size; got shapes { {k: a.shape for k, a in arrays.items()} }")
    n = sizes.pop()
    return [{k: to_json_value(a[i], k) for k, a in arrays.items()} for i in range(n)]


def _tf_dtype_name(dtype: str) -> str:
    """"DT_FLOAT" / "float32" -> numpy-friendly name."""
    name = dtype.lower().removeprefix("dt_")
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


def json_to_numpy(value: Any, dtype: str | None = None) -> np.ndarray:
    """A JSON output value as a numpy array (strings as str, b64 objects as bytes)."""
    def leaf(v):
        if isinstance(v, dict) and set(v) == {"b64"}:
            return base64.b64decode(v["b64"])
        return v

    def walk(v):
        return [walk(x) for x in v] if isinstance(v, list) else leaf(v)

    data = walk(value)
    name = _tf_dtype_name(dtype) if dtype else None
    if name == "string":
        return np.array(data, dtype=object) if _has_bytes(data) else np.array(data, dtype=str)
    if name in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8",
                "bool", "uint32", "uint64"):
        return np.array(data, dtype=name)
    return np.array(data)


def _has_bytes(data) -> bool:
    if isinstance(data, list):
        return any(_has_bytes(x) for x in data)
    return isinstance(data, bytes)


class RestClient:
    """A client of TF Serving's REST API (`/v1/models/...`).

    One persistent HTTP/1.1 connection per thread (reconnecting when the server closes it).

    Args:
        host, port: the server (TF Serving's default REST port is 8501).
        timeout: seconds per call.

    Example:
        >>> client = RestClient("localhost", 8501)
        >>> client.predict("retrieval_bruteforce", {"user_id": ["42"], "history": [["1", "2"]]})
        {'item_ids': array([[...]]), 'scores': array([[...]], dtype=float32)}
        >>> client.predict("ranking", instances=[{"user_id": "42", ...}], label="canary")
    """

    def __init__(self, host: str = "localhost", port: int = 8501, *, timeout: float = 30.0):
        self.host, self.port, self.timeout = host, int(port), timeout
        self._local = threading.local()
        self._signatures: dict[tuple, dict[str, Any]] = {}
        self.last_model_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Sends one call; returns the parsed JSON body or raises `ServingError`."""
        data = None if body is None else (body if isinstance(body, bytes) else
                                          json.dumps(body, allow_nan=True).encode("utf-8"))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        url = self.base_url + path
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.close()  # a kept-alive connection the server dropped: retry once
                if attempt:
                    raise ServingError(f"TF Serving at {self.base_url} closed the connection "
                                       f"during {method} {path}", code="UNAVAILABLE") from None
            except (ConnectionRefusedError, socket.timeout, OSError) as exc:
                self.close()
                raise ServingError(f"Cannot reach TF Serving REST at {self.base_url} ({exc}); "
                                   "is the server running and the port right?",
                                   code="UNAVAILABLE") from None
        seconds = response.getheader(MODEL_SECONDS_HEADER)
        self._local.model_seconds = float(seconds) if seconds else None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"error": raw.decode("utf-8", errors="replace")[:500]}
        if response.status != 200:
            detail = payload.get("error", "") if isinstance(payload, dict) else str(payload)
            code = _HTTP_TO_CODE.get(response.status, "UNKNOWN")
            raise ServingError(f"TF Serving {method} {url} failed with HTTP {response.status} "
                               f"({code}): {detail or '(no error message)'}", code=code,
                               http_status=response.status, detail=detail)
        return payload

    # -- model status and metadata
    def status(self, model: str, version: int | None = None, label: str | None = None
               ) -> dict[str, Any]:
        """`GET /v1/models/<model>[/versions/<v>|/labels/<l>]` (GetModelStatusResponse JSON)."""
        return self.request("GET", _model_path(model, version, label))

    def versions(self, model: str) -> dict[int, str]:
        """{version: state} of every version the server knows of `model`."""
        body = self.status(model)
        return {int(v["version"]): v["state"] for v in body.get("model_version_status", [])}

    def metadata(self, model: str, version: int | None = None, label: str | None = None
                 ) -> dict[str, Any]:
        """`GET .../metadata`: {"model_spec": ..., "metadata": {"signature_def": ...}}."""
        return self.request("GET", _model_path(model, version, label) + "/metadata")

    def signature(self, model: str, signature_name: str = SERVING_DEFAULT,
                  version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}} of one signature (cached)."""
        key = (model, signature_name, version, label)
        if key not in self._signatures:
            body = self.metadata(model, version, label)
            defs = body["metadata"]["signature_def"]["signature_def"]
            if signature_name not in defs:
                served = sorted(k for k in defs if not k.startswith(INTERNAL_SIGNATURE_PREFIX))
                raise ServingError(f"{model} has no signature {signature_name!r}; it has "
                                   f"{served}", code="INVALID_ARGUMENT")
            sig = defs[signature_name]

            def infos(mapping):
                return {name: {"dtype": info.get("dtype", ""),
                               "shape": [int(d.get("size", -1)) for d in
                                         info.get("tensor_shape", {}).get("dim", [])]}
                        for name, info in mapping.items()}

            self._signatures[key] = {"inputs": infos(sig.get("inputs", {})),
                                     "outputs": infos(sig.get("outputs", {}))}
        return self._signatures[key]

    # -- predict
    def predict_json(self, model: str, body: Mapping[str, Any], *, version: int | None = None,
                     label: str | None = None) -> dict[str, Any]:
        """POSTs a ready predict body; returns TF Serving's JSON answer.

        `last_model_seconds` then holds the server-side signature time when the server reports
        it (the local test server does; TF Serving does not).
        """
        answer = self.request("POST", _model_path(model, version, label) + ":predict",
                              dict(body))
        self.last_model_seconds = getattr(self._local, "model_seconds", None)
        return answer

    def predict(self, model: str, inputs: Mapping[str, Any] | None = None, *,
                instances: Sequence[Any] | None = None, signature_name: str | None = None,
                version: int | None = None, label: str | None = None,
                row_format: bool = False) -> dict[str, np.ndarray]:
        """Predicts; returns {output name: numpy array}.

        Args:
            inputs: {input: array-like [B, ...]}; sent in the columnar format (`inputs`), or as
                `instances` rows with `row_format=True`.
            instances: ready row-format instances instead of `inputs`.
            signature_name: default "serving_default".
            version / label: a specific version or a version label.
        """
        if (inputs is None) == (instances is None):
            raise ValueError("Give inputs= (columnar) or instances= (rows), exactly one.")
        signature = signature_name or SERVING_DEFAULT
        body: dict[str, Any] = {"signature_name": signature}
        if instances is not None:
            body["instances"] = list(instances)
        elif row_format:
            body["instances"] = columnar_to_instances(inputs)
        else:
            body["inputs"] = {k: to_json_value(v, k) for k, v in inputs.items()}
        answer = self.predict_json(model, body, version=version, label=label)
        outputs = self.signature(model, signature, version, label)["outputs"]
        names = sorted(outputs)
        if "outputs" in answer:
            value = answer["outputs"]
            columns = value if len(names) > 1 else {names[0]: value}
        else:
            rows = answer.get("predictions", [])
            columns = ({n: [r[n] for r in rows] for n in names} if len(names) > 1
                       else {names[0]: rows})
        return {n: json_to_numpy(columns[n], outputs[n]["dtype"]) for n in names}


class GrpcClient:
    """A client of TF Serving's gRPC API (`PredictionService`, `ModelService`).

    Args:
        target: "host:port" (TF Serving's default gRPC port is 8500).
        timeout: seconds per call.
        max_message_mb: gRPC message size limit both ways.

    Example:
        >>> client = GrpcClient("localhost:8500")
        >>> client.predict("ranking", {"user_id": ["42"], "history": [["1"]],
        ...                            "item_ids": [["3", "4"]]})["scores"]
    """

    def __init__(self, target: str = "localhost:8500", *, timeout: float = 30.0,
                 max_message_mb: int = 64):
        import grpc
        from tensorflow_serving.apis import (model_service_pb2_grpc,
                                             prediction_service_pb2_grpc)

        size = max_message_mb * 1024 * 1024
        self.target, self.timeout = target, timeout
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.last_model_seconds: float | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, what: str):
        import grpc

        try:
            response, call = method.with_call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            detail = exc.details() or ""
            hint = (" (is the server running and the port right?)"
                    if code == "UNAVAILABLE" else "")
            raise ServingError(f"TF Serving gRPC {what} at {self.target} failed ({code}): "
                               f"{detail}{hint}", code=code, detail=detail) from None
        seconds = dict(call.trailing_metadata() or ()).get(MODEL_SECONDS_HEADER)
        self.last_model_seconds = float(seconds) if seconds else None
        return response

    @staticmethod
    def _spec(spec, model: str, version: int | None, label: str | None,
              signature_name: str | None = None) -> None:
        if version is not None and label:
            raise ValueError(f"Give version= or label=, not both (got {version} and {label!r}).")
        spec.name = model
        if signature_name is not None:
            spec.signature_name = signature_name
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label

    def predict_request(self, request):
        """Sends a ready `PredictRequest`; returns the `PredictResponse`."""
        return self._call(self.prediction.Predict, request, f"Predict({request.model_spec.name})")

    def predict(self, model: str, inputs: Mapping[str, Any], *,
                signature_name: str | None = None, version: int | None = None,
                label: str | None = None, output_filter: Sequence[str] = ()
                ) -> dict[str, np.ndarray]:
        """Predicts; returns {output name: numpy array} (strings as bytes)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        from recommenders_tf.serving.warmup import make_predict_request

        request = make_predict_request(model, signature_name or SERVING_DEFAULT, inputs)
        self._spec(request.model_spec, model, version, label)
        request.output_filter.extend(output_filter)
        assert isinstance(request, predict_pb2.PredictRequest)
        response = self.predict_request(request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def metadata(self, model: str, version: int | None = None, label: str | None = None
                 ) -> dict[str, Any]:
        """{signature name: SignatureDef proto} from `GetModelMetadata`."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call(self.prediction.GetModelMetadata, request,
                              f"GetModelMetadata({model})")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def status(self, model: str, version: int | None = None, label: str | None = None
               ) -> dict[int, str]:
        """{version: state name} from `ModelService.GetModelStatus`."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self._call(self.models.GetModelStatus, request, f"GetModelStatus({model})")
        return {int(s.version): get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
                for s in response.model_version_status}
