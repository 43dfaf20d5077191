"""A loopback stand-in for TF Serving: a TEST FIXTURE, not a model server.

It lives in `recommenders_tf.testing`, outside the served package, so nothing that serves
models depends on it; it speaks the same contract (`serving.contract`) as the exports and the
clients.

TF Serving cannot be installed on the development machines (no binary in the package
registries, no Docker engine), so the clients and request formats are tested against this
server instead. It implements the parts of TF Serving's APIs the project uses, on top of the
real exported SavedModels and the real `tensorflow_serving.apis` protos:

* REST (standard library `http.server`, threaded, HTTP/1.1 keep-alive):
  `GET /v1/models/<name>[/versions/<v>|/labels/<l>]` (model status),
  `GET .../metadata` (signature defs), `POST .../<name>[/versions/<v>|/labels/<l>]:predict`
  with the row (`instances`) and columnar (`inputs`) formats, answered with `predictions` /
  `outputs` formatted as TF Serving's `json_tensor.cc` does (single-output responses drop the
  output name; floats shortest-round-trip with a trailing `.0`; NaN/Infinity literals; string
  outputs whose name ends in `_bytes` as `{"b64": ...}`), and errors as `{"error": "..."}`
  with the HTTP codes TF Serving maps its status codes to.
* gRPC (grpcio): `tensorflow.serving.PredictionService/Predict` and `GetModelMetadata`, and
  `tensorflow.serving.ModelService/GetModelStatus`, with TF Serving's status codes.
* Models come from a base dir (every `<name>/<int version>/` with metadata.json, latest
  version served) or from a TF Serving `models.config` (base paths, `latest` / `specific` /
  `all` version policies, version labels). A version whose metadata or graph needs ScaNN ops
  gets `import scann` before loading. Each version's `assets.extra/tf_serving_warmup_requests`
  is replayed at load, as TF Serving does, and a rejected record fails the load.
* Limits, with TF Serving's defaults: a request may hold at most 2**31 - 1 bytes (its gRPC
  `SetMaxMessageSize(kint32max)`; over REST a larger `Content-Length` is answered 413 and the
  connection closed), and a REST connection whose client sends nothing for 50 s (libevent
  evhttp's read timeout, which TF Serving's REST server keeps) is answered 408 if a body was
  due, and closed. Both are constructor arguments, so tests can make them small.

Error messages follow TF Serving's wording ("Servable not found for request: Latest(x)",
"Unrecognized servable version label: x", "input size does not match signature: ...").
Differences that matter: no batching, no model config polling (call `reload()`), no
classify/regress/multi-inference, and every response carries the time spent inside the
signature call (REST header / gRPC trailing metadata `x-model-seconds`) so benchmarks can split
model time from transport time. Run the real TF Serving for anything but tests (see the
README's "Serving with TF Serving").

Example:
    >>> with LocalModelServer("saved_models") as server:      # 127.0.0.1, ephemeral ports
    ...     RestClient("127.0.0.1", server.rest_port).predict("ranking", {...})

  python -m recommenders_tf.testing.local_server --base-dir saved_models \
      --rest-port 8501 --grpc-port 8500
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

from recommenders_tf.serving import server_config
from recommenders_tf.serving.contract import (INTERNAL_SIGNATURE_PREFIX, MODEL_SECONDS_HEADER,
                                              SERVING_DEFAULT)
from recommenders_tf.serving.warmup import read_warmup_requests, warmup_path

DEFAULT_SIGNATURE = SERVING_DEFAULT  # what an empty signature_name means, as in TF Serving
# TF Serving's REST routes (tensorflow_serving/model_servers/http_rest_api_util.cc).
PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
# TF Serving's status-code -> HTTP mapping (tensorflow_serving/model_servers/http_server.cc).
HTTP_STATUS = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
               "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
               "UNAUTHENTICATED": 401}
# TF Serving's gRPC server takes messages up to kint32max bytes; its REST server (libevent
# evhttp) times a connection out after 50 s without data.
DEFAULT_MAX_REQUEST_BYTES = 2**31 - 1
DEFAULT_READ_TIMEOUT = 50.0
# How long a refused oversized body is still read and dropped: clients send the whole body
# before reading the answer, and closing on unread data would reset the connection under them.
LINGER_SECONDS = 1.0
_TF_CODE_NAMES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
                  5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
                  8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
                  11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
                  15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


class ServingStatus(Exception):
    """A TF Serving status: a canonical code name ("NOT_FOUND", ...) and its message."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


def _invalid(message: str) -> ServingStatus:
    return ServingStatus("INVALID_ARGUMENT", message)


# ---- TF dtypes ---------------------------------------------------------------------------------


def _dt_string(enum_value: int) -> str:
    """TF's DataTypeString: "string", "float", "int64", ... (as in TF error messages)."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum_value)[3:].lower()


def _numpy_dtype(enum_value: int):
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(enum_value)
    return object if dtype == tf.string else dtype.as_numpy_dtype


# ---- one loaded version ------------------------------------------------------------------------


@dataclasses.dataclass
class Servable:
    """One loaded model version.

    Args:
        name, version: its model name and integer version.
        path: its version directory.
        loaded: the object from `tf.saved_model.load`.
        signature_defs: {name: SignatureDef} including internal ones (what metadata returns).
        metadata: its metadata.json (or {}).
    """

    name: str
    version: int
    path: Path
    loaded: Any
    signature_defs: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def serving_signatures(self) -> dict[str, Any]:
        return {k: v for k, v in self.signature_defs.items()
                if not k.startswith(INTERNAL_SIGNATURE_PREFIX)}

    def input_infos(self, signature_name: str, *, rest: bool = False) -> Mapping[str, Any]:
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.serving_signatures.get(name)
        if sig is None:
            if rest:  # HttpRestApiHandler::GetInfoMap
                raise _invalid(f'Serving signature name: "{name}" not found in signature def')
            raise ServingStatus("FAILED_PRECONDITION",
                                f'Serving signature key "{name}" not found.')
        return sig.inputs

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_filter: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], float]:
        """Runs one signature like TF Serving's Predict; returns (outputs, model seconds)."""
        import tensorflow as tf

        name = signature_name or DEFAULT_SIGNATURE
        sig = self.serving_signatures.get(name)
        if sig is None:
            raise ServingStatus("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
        if len(inputs) != len(sig.inputs):  # predict_util.cc VerifyRequestInputsSize
            sent, want = sorted(inputs), sorted(sig.inputs)
            raise _invalid(
                f"input size does not match signature: {len(sent)}!={len(want)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(want)}}}). Sent extra: "
                f"{{{','.join(sorted(set(sent) - set(want)))}}}. Missing but required: "
                f"{{{','.join(sorted(set(want) - set(sent)))}}}.")
        tensors = {}
        arg_names = sorted(sig.inputs)
        for alias, value in inputs.items():
            info = sig.inputs.get(alias)
            if info is None:
                raise _invalid(f"input tensor alias not found in signature: {alias}. Inputs "
                               f"expected to be in the set {{{','.join(arg_names)}}}.")
            array, enum = value
            if enum != info.dtype:
                raise _invalid(f"Expects arg[{arg_names.index(alias)}] to be "
                               f"{_dt_string(info.dtype)} but {_dt_string(enum)} is provided")
            want = server_config.shape_list(info.tensor_shape)
            if want is not None and (len(want) != array.ndim or any(
                    w >= 0 and w != g for w, g in zip(want, array.shape))):
                raise _invalid(f"input {alias} of signature {name} has shape "
                               f"{list(array.shape)} but the signature expects {want} "
                               "(-1 = any)")
            tensors[alias] = tf.constant(array, dtype=tf.dtypes.as_dtype(info.dtype))
        outputs_wanted = list(output_filter) or sorted(sig.outputs)
        seen = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise _invalid(f"output tensor alias not found in signature: {alias} Outputs "
                               f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in seen:
                raise _invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        function = self.loaded.signatures[name]
        start = time.perf_counter()
        try:
            result = function(**tensors)
            outputs = {k: result[k].numpy() for k in outputs_wanted}
        except tf.errors.OpError as exc:
            raise ServingStatus(_TF_CODE_NAMES.get(exc.error_code, "UNKNOWN"),
                                exc.message) from exc
        except (TypeError, ValueError) as exc:
            raise _invalid(str(exc)) from exc
        return outputs, time.perf_counter() - start


def load_servable(name: str, version: int, path: Path, replay_warmup: bool = True) -> Servable:
    """Loads one version (importing scann first when it needs ScaNN ops) and replays its
    warmup records.

    Raises:
        ServingStatus: FAILED_PRECONDITION when scann is needed but missing, or when a warmup
            record is rejected (TF Serving would not make the version available either).
    """
    metadata = server_config.read_version_metadata(path) or {}
    if server_config.requires_scann(path, metadata):
        try:
            import scann  # noqa: F401  (registers the ScaNN ops before the graph is loaded)
        except ImportError as exc:
            raise ServingStatus("FAILED_PRECONDITION",
                                f"{path} needs the ScaNN ops: pip install scann") from exc
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path), tags=["serve"])
    signature_defs = dict(server_config.read_signature_defs(path, include_internal=True))
    servable = Servable(name, version, Path(path), loaded, signature_defs, metadata)
    warmup = warmup_path(path)
    if replay_warmup and warmup.exists():
        for i, record in enumerate(read_warmup_requests(warmup)):
            try:
                servable.run(record.signature_name,
                             {k: (v, record.request.inputs[k].dtype)
                              for k, v in record.inputs.items()})
            except ServingStatus as exc:
                raise ServingStatus("FAILED_PRECONDITION",
                                    f"Failed to run warmup record {i} of {warmup}: "
                                    f"{exc.message}") from exc
    return servable


# ---- the model registry ------------------------------------------------------------------------


@dataclasses.dataclass
class ModelEntry:
    """A served model: its loaded versions and version labels."""

    name: str
    base_path: Path
    versions: dict[int, Servable]
    labels: dict[str, int]


def _policy_versions(available: list[int], policy) -> list[int]:
    """Versions a TF Serving `ModelVersionPolicy` keeps loaded."""
    if policy is None or not policy.WhichOneof("policy_choice"):
        return available[-1:]
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return list(available)
    if choice == "specific":
        return sorted(v for v in available if v in set(policy.specific.versions))
    return available[-max(1, policy.latest.num_versions or 1):]


class ModelRegistry:
    """Loaded models by name, resolving version / label requests like TF Serving's core."""

    def __init__(self):
        self.models: dict[str, ModelEntry] = {}
        self.lock = threading.Lock()

    def add(self, entry: ModelEntry) -> None:
        with self.lock:
            self.models[entry.name] = entry

    def resolve(self, name: str, version: int | None = None, label: str | None = None
                ) -> Servable:
        if version is not None and label:
            raise _invalid(f"Both model version ({version}) and model version label ({label}) "
                           "cannot be supplied.")
        entry = self.models.get(name)
        if label:
            if entry is None or label not in entry.labels:
                raise _invalid(f"Unrecognized servable version label: {label}")
            version = entry.labels[label]
        request = (f"Specific({name}, {version})" if version is not None else f"Latest({name})")
        if entry is None or not entry.versions:
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: {request}")
        if version is None:
            return entry.versions[max(entry.versions)]
        if version not in entry.versions:
            raise ServingStatus("NOT_FOUND", f"Servable not found for request: {request}")
        return entry.versions[version]

    def status_versions(self, name: str, version: int | None = None,
                        label: str | None = None) -> list[int]:
        """Versions for GetModelStatus (get_model_status_impl.cc wording)."""
        if version is not None and label:
            raise _invalid(f"Both model version ({version}) and model version label ({label}) "
                           "cannot be supplied.")
        entry = self.models.get(name)
        if label:
            if entry is None or label not in entry.labels:
                raise _invalid(f"Unrecognized servable version label: {label}")
            version = entry.labels[label]
        if entry is None or not entry.versions:
            raise ServingStatus("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is None:
            return sorted(entry.versions)
        if version not in entry.versions:
            raise ServingStatus("NOT_FOUND", f"Could not find version {version} of model {name}")
        return [version]


# ---- JSON <-> tensors (json_tensor.cc) ---------------------------------------------------------

_JSON_TYPES = {type(None): "Null", bool: "True", dict: "Object", list: "Array", str: "String",
               int: "Number", float: "Number"}


def _json_type(value: Any) -> str:
    if value is False:
        return "False"
    return _JSON_TYPES.get(type(value), "Number")


def _json_str(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _leaf(value: Any, enum: int) -> Any:
    """One JSON leaf converted to the dtype `enum` (AddValueToTensor)."""
    from tensorflow.core.framework import types_pb2 as T

    def type_error():
        return _invalid(f"JSON Value: {_json_str(value)} Type: {_json_type(value)} is not of "
                        f"expected type: {_dt_string(enum)}")

    if enum == T.DT_STRING:
        if isinstance(value, dict):
            if set(value) == {"b64"} and isinstance(value["b64"], str):
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except ValueError:
                    raise _invalid("Unable to base64 decode") from None
            raise _invalid(f"JSON Value: {_json_str(value)} not formatted correctly for "
                           "base64 data")
        if not isinstance(value, str):
            raise type_error()
        return value.encode("utf-8")
    if isinstance(value, dict):
        raise type_error()
    if enum in (T.DT_FLOAT, T.DT_DOUBLE, T.DT_HALF, T.DT_BFLOAT16):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise type_error()
        if enum == T.DT_FLOAT and math.isfinite(value) and abs(value) > 3.4028234663852886e38:
            raise _invalid(f"Cannot convert JSON value: {_json_str(value)} to float without "
                           "loss of precision.")
        return float(value)
    if enum == T.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if enum in (T.DT_INT32, T.DT_INT16, T.DT_INT8, T.DT_UINT8, T.DT_INT64, T.DT_UINT32,
                T.DT_UINT64):
        if isinstance(value, bool) or not isinstance(value, int):
            raise type_error()
        return value
    raise ServingStatus("UNIMPLEMENTED", f"Conversion of JSON Value: {_json_str(value)} to "
                                         f"type: {_dt_string(enum)}")


def json_to_array(value: Any, enum: int) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a dense array of dtype `enum`
    (GetDenseTensorShape + FillTensorProto)."""
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list = []

    def fill(v, level):
        if not isinstance(v, list):
            if level != len(shape):
                raise _invalid(f"JSON Value: {_json_str(v)} found at incorrect level: "
                               f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
            flat.append(_leaf(v, enum))
            return
        if level >= len(shape):
            raise _invalid(f"Encountered list at unexpected level: {level} expected < "
                           f"{len(shape)}")
        if len(v) != shape[level]:
            raise _invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                           f"expected size: {shape[level]}")
        for item in v:
            fill(item, level + 1)

    fill(value, 0)
    dtype = _numpy_dtype(enum)
    if dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    return np.array(flat, dtype=dtype).reshape(shape)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def parse_rest_predict(body: bytes, input_infos_for) -> tuple[str, dict[str, tuple], str]:
    """(signature name, {input: (array, dtype enum)}, "row" | "columnar") of a REST predict
    body (FillPredictRequestFromJson). `input_infos_for(signature)` gives the signature's
    input TensorInfos."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_json_str(doc)} Is not object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise _invalid(f"JSON Value: {_json_str(doc)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    infos = input_infos_for(signature)
    if not infos:
        raise _invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    names = sorted(infos)
    if "instances" in doc and "inputs" in doc:
        raise _invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                       "keys to exist")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid("Excepting 'instances' to be an list/array")
        if not instances:
            raise _invalid("No values in 'instances' array")
        objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
        if not objects and len(infos) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as "
                           "multiple input tensors required as per tensorinfo_map")
        columns: dict[str, list] = {n: [] for n in names} if objects else {names[0]: []}
        shapes: dict[str, tuple] = {}
        for i, item in enumerate(instances):
            is_object = isinstance(item, dict) and not _is_b64(item)
            if objects != is_object:
                raise _invalid(f"Expecting {'object' if objects else 'value/list'} but got "
                               f"{'object' if is_object else 'list'} at item {i} of input list")
            pairs = item.items() if objects else [(names[0], item)]
            for key, value in pairs:
                if key not in infos:
                    raise _invalid(f"Failed to process element: {i} key: {key} of 'instances' "
                                   f"list. Error: INVALID_ARGUMENT: JSON object: does not have "
                                   f"named input: {key}")
                try:
                    array = json_to_array(value, infos[key].dtype)
                except ServingStatus as exc:
                    where = f"key: {key} " if objects else ""
                    raise _invalid(f"Failed to process element: {i} {where}of 'instances' "
                                   f"list. Error: {exc.code}: {exc.message}") from None
                if key in shapes and shapes[key] != array.shape:
                    raise _invalid(f"Failed to process element: {i} key: {key} of 'instances' "
                                   f"list. Error: INVALID_ARGUMENT: Expecting shape "
                                   f"[{','.join(map(str, shapes[key]))}] but got: "
                                   f"[{','.join(map(str, array.shape))}]")
                shapes[key] = array.shape
                columns[key].append(array)
            if objects and set(item) != set(names):
                raise _invalid(f"Failed to process element: {i} of 'instances' list. JSON "
                               f"object: {_json_str(item)} keys must be equal to: "
                               f"{','.join(names)}")
        arrays = {k: (np.stack(v) if v else np.zeros((0,)), infos[k].dtype)
                  for k, v in columns.items()}
        return signature, arrays, "row"
    if "inputs" in doc:
        value = doc["inputs"]
        if not isinstance(value, dict) or _is_b64(value):
            if len(infos) > 1:
                raise _invalid("inputs is a plain value/list, but expecting an object as "
                               "multiple input tensors required as per tensorinfo_map")
            return signature, {names[0]: (json_to_array(value, infos[names[0]].dtype),
                                          infos[names[0]].dtype)}, "columnar"
        arrays = {}
        for name in names:
            if name not in value:
                raise _invalid(f"Missing named input: {name} in 'inputs' object.")
            arrays[name] = (json_to_array(value[name], infos[name].dtype), infos[name].dtype)
        return signature, arrays, "columnar"
    raise _invalid("Missing 'inputs' or 'instances' key")


def format_decimal(value: float, single: bool) -> str:
    """A float as TF Serving writes it (WriteDecimal): shortest "%g" that round-trips at the
    tensor's precision (else max_digits10), ".0" on whole numbers, NaN / Infinity literals."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%.6g" % value
    parse = (lambda s: float(np.float32(s))) if single else float
    if parse(text) != value:
        text = "%.*g" % (9 if single else 17, value)
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _write_values(array: np.ndarray, as_bytes: bool) -> str:
    """Nested JSON lists of an array's values (AddTensorValues)."""
    kind = array.dtype.kind
    single = array.dtype == np.float32 or array.dtype == np.float16

    def leaf(v) -> str:
        if kind == "f":
            return format_decimal(float(v), single)
        if kind == "b":
            return "true" if v else "false"
        if kind in "iu":
            return str(int(v))
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        if as_bytes:
            return json.dumps({"b64": base64.b64encode(raw).decode("ascii")},
                              separators=(",", ":"))
        return json.dumps(raw.decode("utf-8", errors="replace"), ensure_ascii=False)

    def walk(a) -> str:
        if a.ndim == 0:
            return leaf(a.item() if kind != "O" else a[()])
        if a.ndim == 1:
            return "[" + ",".join(leaf(x) for x in a.tolist()) + "]"
        return "[" + ",".join(walk(x) for x in a) + "]"

    return walk(array)


def make_json_response(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors: {"predictions": [...]} (row) or {"outputs": ...} (columnar)."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    as_bytes = {n: n.endswith("_bytes") and outputs[n].dtype == object for n in names}
    if fmt == "columnar":
        if len(names) == 1:
            body = _write_values(outputs[names[0]], as_bytes[names[0]])
        else:
            body = "{" + ",".join(f"{json.dumps(n)}: {_write_values(outputs[n], as_bytes[n])}"
                                  for n in names) + "}"
        return '{\n    "outputs": ' + body + "\n}"
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise _invalid(f"Tensor name: {n} has no shape information ")
        if batch is not None and outputs[n].shape[0] != batch:
            raise _invalid(f"Tensor name: {n} has inconsistent batch size: "
                           f"{outputs[n].shape[0]} expecting: {batch}")
        batch = outputs[n].shape[0]
    def item(n, i):  # row i as an array, also for [B] outputs (a 0-d array, not a scalar)
        return np.asarray(outputs[n][i], dtype=outputs[n].dtype)

    rows = []
    for i in range(batch or 0):
        if len(names) == 1:
            rows.append(_write_values(item(names[0], i), as_bytes[names[0]]))
        else:
            rows.append("{" + ", ".join(f"{json.dumps(n)}: "
                                        f"{_write_values(item(n, i), as_bytes[n])}"
                                        for n in names) + "}")
    return '{\n    "predictions": [\n        ' + ",\n        ".join(rows) + "\n    ]\n}"


# ---- protos --------------------------------------------------------------------------------------


def tensor_proto_field(array: np.ndarray):
    """A TensorProto with typed value fields (Tensor::AsProtoField), as TF Serving answers."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    dtype = tf.string if array.dtype == object else tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for d in array.shape:
        proto.tensor_shape.dim.add(size=int(d))
    flat = array.reshape(-1)
    if dtype == tf.string:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8")
                                for v in flat.tolist())
    elif dtype == tf.float32:
        proto.float_val.extend(flat.tolist())
    elif dtype == tf.float64:
        proto.double_val.extend(flat.tolist())
    elif dtype == tf.int64:
        proto.int64_val.extend(flat.tolist())
    elif dtype in (tf.int32, tf.int16, tf.int8, tf.uint8):
        proto.int_val.extend(int(v) for v in flat.tolist())
    elif dtype == tf.bool:
        proto.bool_val.extend(bool(v) for v in flat.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def model_spec_proto(servable: Servable, signature_name: str | None):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=servable.name)
    spec.version.value = servable.version
    if signature_name is not None:
        spec.signature_name = signature_name
    return spec


def status_response(registry: ModelRegistry, name: str, version: int | None,
                    label: str | None):
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for v in registry.status_versions(name, version, label):
        entry = response.model_version_status.add()
        entry.version = v
        entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        entry.status.SetInParent()  # error_code OK, error_message "" (printed as TF Serving does)
    return response


def metadata_response(servable: Servable):
    from tensorflow_serving.apis import get_model_metadata_pb2

    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.CopyFrom(model_spec_proto(servable, ""))
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(sig)
    response.metadata["signature_def"].Pack(signature_map)
    return response, signature_map


def _message_json(message) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


# ---- REST ----------------------------------------------------------------------------------------


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recommenders-tf-local-test-server"

    def log_message(self, format, *args):  # quiet: this is a test fixture
        pass

    def setup(self):
        # StreamRequestHandler.setup puts `timeout` on the socket, so every read of the request
        # line, headers or body gives up after it; an idle keep-alive connection is closed too.
        self.timeout = self.server.read_timeout
        super().setup()
        # Small responses must not wait for the client's delayed ACK (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def registry(self) -> ModelRegistry:
        return self.server.registry

    def _reply(self, status: int, body: str, model_seconds: float | None = None,
               close: bool = False) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if model_seconds is not None:
            self.send_header(MODEL_SECONDS_HEADER, f"{model_seconds:.9f}")
        if close:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: ServingStatus) -> None:
        self._reply(status.http_status, json.dumps({"error": status.message}, indent=4))

    def _body(self) -> bytes | None:
        """The request body, or None after answering a request whose body cannot be read (the
        connection is then closed: whatever the client still sends is not a next request)."""
        text = self.headers.get("Content-Length")
        try:
            length = int(text or 0)
        except ValueError:
            length = -1
        if length < 0:
            return self._reject(400, f"Invalid Content-Length header: {text!r}")
        limit = self.server.max_request_bytes
        if length > limit:
            self._reject(413, f"Request body of {length} bytes exceeds the limit of {limit} "
                              "bytes")
            return self._linger(length)
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            return self._reject(408, f"No request data for {self.timeout} s; expected "
                                     f"{length} body bytes")
        if len(body) < length:  # the client closed its side early
            self.close_connection = True
            return None
        return body

    def _reject(self, status: int, message: str) -> None:
        try:
            self._reply(status, json.dumps({"error": message}, indent=4), close=True)
        except OSError:  # the client may be gone or not reading; closing is all that is left
            pass
        self.close_connection = True

    def _linger(self, most: int) -> None:
        """Drops up to `most` bytes the client is still sending, for at most LINGER_SECONDS."""
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: send FIN now
            while most > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.connection.recv(min(most, 1 << 16))
                if not chunk:
                    break
                most -= len(chunk)
        except OSError:
            pass

    @staticmethod
    def _parse(match) -> tuple[str, int | None, str | None]:
        name = urllib.parse.unquote(match.group(1) or "")
        version = int(match.group(2)) if match.group(2) else None
        label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
        return name, version, label

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path
        if self._body() is None:  # a stray body must not be read as the next request
            return
        match = STATUS_PATH.fullmatch(path)
        try:
            if not match:
                if re.fullmatch(r"(?i)/v1/.*", path):
                    raise _invalid(f"Malformed request: GET {path}")
                self._reply(404, "")
                return
            name, version, label = self._parse(match)
            if not name:
                raise _invalid("Missing model name in request.")
            if match.group(4):
                servable = self.registry.resolve(name, version, label)
                response, signature_map = metadata_response(servable)
                body = {"model_spec": _message_json(response.model_spec),
                        "metadata": {"signature_def": _message_json(signature_map)}}
            else:
                body = _message_json(status_response(self.registry, name, version, label))
            self._reply(200, json.dumps(body, indent=1))
        except ServingStatus as status:
            self._error(status)
        except Exception as exc:  # a fixture bug must still answer, not drop the connection
            self._error(ServingStatus("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def do_POST(self):  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        body = self._body()
        if body is None:
            return
        match = PREDICTION_PATH.fullmatch(path)
        try:
            if not match:
                if re.fullmatch(r"(?i)/v1/.*", path):
                    raise _invalid(f"Malformed request: POST {path}")
                self._reply(404, "")
                return
            name, version, label = self._parse(match)
            if match.group(4).lower() != "predict":
                raise ServingStatus("UNIMPLEMENTED",
                                    f"{match.group(4)} is not implemented by this test fixture "
                                    "(recommenders_tf.testing.local_server); use :predict")
            servable = self.registry.resolve(name, version, label)
            signature, arrays, fmt = parse_rest_predict(
                body, lambda sig: servable.input_infos(sig, rest=True))
            outputs, seconds = servable.run(signature, arrays)
            self._reply(200, make_json_response(outputs, fmt), model_seconds=seconds)
        except ServingStatus as status:
            self._error(status)
        except Exception as exc:  # a fixture bug must still answer, not drop the connection
            self._error(ServingStatus("INTERNAL", f"{type(exc).__name__}: {exc}"))


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
    read_timeout = DEFAULT_READ_TIMEOUT


# ---- gRPC ----------------------------------------------------------------------------------------


def _grpc_servicers(registry: ModelRegistry):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    def abort(context, status: ServingStatus):
        context.abort(getattr(grpc.StatusCode, status.code, grpc.StatusCode.UNKNOWN),
                      status.message)

    def spec_of(model_spec) -> tuple[str, int | None, str | None]:
        choice = model_spec.WhichOneof("version_choice")
        version = model_spec.version.value if choice == "version" else None
        label = model_spec.version_label if choice == "version_label" else None
        return model_spec.name, version, label

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC method names)
            try:
                servable = registry.resolve(*spec_of(request.model_spec))
                signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
                arrays = {}
                for name, proto in request.inputs.items():
                    try:
                        arrays[name] = (tf.make_ndarray(proto), proto.dtype)
                    except Exception:  # malformed TensorProto
                        raise _invalid(f"tensor parsing error: {name}") from None
                outputs, seconds = servable.run(signature, arrays,
                                                tuple(request.output_filter))
            except ServingStatus as status:
                abort(context, status)
                return None
            response = predict_pb2.PredictResponse()
            response.model_spec.CopyFrom(model_spec_proto(servable, signature))
            for name, value in outputs.items():
                response.outputs[name].CopyFrom(tensor_proto_field(value))
            context.set_trailing_metadata(((MODEL_SECONDS_HEADER, f"{seconds:.9f}"),))
            return response

        def GetModelMetadata(self, request, context):  # noqa: N802
            try:
                fields = list(request.metadata_field)
                if not fields:
                    raise _invalid("GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
                for field in fields:
                    if field != "signature_def":
                        raise _invalid(f"Metadata field {field} is not supported")
                servable = registry.resolve(*spec_of(request.model_spec))
            except ServingStatus as status:
                abort(context, status)
                return None
            return metadata_response(servable)[0]

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):  # noqa: N802
            try:
                return status_response(registry, *spec_of(request.model_spec))
            except ServingStatus as status:
                abort(context, status)
                return None

    return (prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
            PredictionServicer(), model_service_pb2_grpc.add_ModelServiceServicer_to_server,
            ModelServicer())


# ---- the server ----------------------------------------------------------------------------------


class LocalModelServer:
    """TEST FIXTURE: a loopback server speaking TF Serving's REST and gRPC APIs over the real
    exported SavedModels (see the module docstring for what it does and does not do).

    Args:
        base_dir: serve every model under this base dir (latest version of each), unless
            `model_config_file` is given.
        model_config_file: a TF Serving `models.config` (text `ModelServerConfig`): base paths,
            version policies and labels are honoured.
        models: only these model names (with `base_dir`).
        host: bind address; keep the loopback default.
        rest_port, grpc_port: 0 picks a free ephemeral port; None disables that API.
        max_workers: gRPC worker threads.
        replay_warmup: replay each version's warmup file at load (as TF Serving does).
        max_request_bytes: the largest REST body (a larger Content-Length gets 413) and gRPC
            message accepted; default TF Serving's 2**31 - 1.
        read_timeout: seconds a REST connection may wait for data before it is answered 408
            (when a body was due) and closed; default 50 as TF Serving's REST server. None
            waits forever.

    Example:
        >>> with LocalModelServer("saved_models") as server:
        ...     print(server.rest_url, server.grpc_target)
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, *,
                 model_config_file: str | os.PathLike | None = None,
                 models: list[str] | None = None, host: str = "127.0.0.1",
                 rest_port: int | None = 0, grpc_port: int | None = 0, max_workers: int = 8,
                 replay_warmup: bool = True,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 read_timeout: float | None = DEFAULT_READ_TIMEOUT):
        if base_dir is None and model_config_file is None:
            raise ValueError("Give base_dir= or model_config_file=.")
        if not 0 < max_request_bytes <= DEFAULT_MAX_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must be in [1, {DEFAULT_MAX_REQUEST_BYTES}] "
                             f"(gRPC's limit), got {max_request_bytes}")
        if read_timeout is not None and read_timeout <= 0:
            raise ValueError(f"read_timeout must be > 0 seconds or None, got {read_timeout}")
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.model_config_file = Path(model_config_file) if model_config_file else None
        self.model_names = list(models) if models else None
        self.host = host
        self._rest_port, self._grpc_port = rest_port, grpc_port
        self.max_workers = max_workers
        self.replay_warmup = replay_warmup
        self.max_request_bytes = max_request_bytes
        self.read_timeout = read_timeout
        self.registry = ModelRegistry()
        self._http: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc = None
        self.rest_port: int | None = None
        self.grpc_port: int | None = None

    # -- models
    def _plan(self) -> list[tuple[str, Path, Any, dict[str, int]]]:
        """(name, base path, version policy, labels) of every model to serve."""
        if self.model_config_file is not None:
            config = server_config.parse_model_config(self.model_config_file)
            if config.WhichOneof("config") != "model_config_list":
                raise ValueError(f"{self.model_config_file} has no model_config_list")
            plan = []
            for entry in config.model_config_list.config:
                if entry.model_platform not in ("", "tensorflow"):
                    raise ValueError(f"model {entry.name}: platform {entry.model_platform!r} "
                                     "is not served (only \"tensorflow\")")
                plan.append((entry.name, Path(entry.base_path), entry.model_version_policy,
                             dict(entry.version_labels)))
            return plan
        found = server_config.discover_models(self.base_dir, self.model_names)
        return [(m.name, m.base_path, None, {}) for m in found]

    def reload(self) -> dict[str, list[int]]:
        """(Re)loads every planned model version (new versions appear, removed ones go, loaded
        ones are kept); returns {model: served versions}."""
        served = {}
        for name, base_path, policy, labels in self._plan():
            available = server_config.integer_versions(base_path)
            wanted = _policy_versions(available, policy)
            if not wanted:
                raise FileNotFoundError(f"No servable version of {name} under {base_path} "
                                        f"(found {available})")
            bad = {label: v for label, v in labels.items() if v not in wanted}
            if bad:
                raise ValueError(f"model {name}: version labels {bad} point at versions that "
                                 f"are not loaded ({wanted}); TF Serving refuses that too")
            old = self.registry.models.get(name)
            versions = {}
            for version in wanted:
                if old is not None and version in old.versions:
                    versions[version] = old.versions[version]
                else:
                    versions[version] = load_servable(name, version, base_path / str(version),
                                                      self.replay_warmup)
            self.registry.add(ModelEntry(name, base_path, versions, labels))
            served[name] = sorted(versions)
        return served

    # -- lifecycle
    def start(self) -> "LocalModelServer":
        self.reload()
        if self._rest_port is not None:
            self._http = _HttpServer((self.host, self._rest_port), _RestHandler)
            self._http.registry = self.registry
            self._http.max_request_bytes = self.max_request_bytes
            self._http.read_timeout = self.read_timeout
            self.rest_port = self._http.server_address[1]
            self._http_thread = threading.Thread(target=self._http.serve_forever,
                                                 name="local-tf-serving-rest", daemon=True)
            self._http_thread.start()
        if self._grpc_port is not None:
            import grpc

            add_prediction, prediction, add_model, model = _grpc_servicers(self.registry)
            limit = self.max_request_bytes
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                                     options=[("grpc.max_receive_message_length", limit),
                                              ("grpc.max_send_message_length", limit)])
            add_prediction(prediction, self._grpc)
            add_model(model, self._grpc)
            self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self._grpc_port}")
            if not self.grpc_port:
                raise OSError(f"could not bind gRPC on {self.host}:{self._grpc_port}")
            self._grpc.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None

    def __enter__(self) -> "LocalModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def served(self) -> dict[str, dict[str, Any]]:
        """{model: {"versions": [...], "labels": {...}}} currently served."""
        return {name: {"versions": sorted(e.versions), "labels": dict(e.labels)}
                for name, e in sorted(self.registry.models.items())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="TEST FIXTURE: a loopback TF-Serving-compatible REST + gRPC server over "
                    "exported SavedModels (not a production model server).")
    parser.add_argument("--base-dir", help="serve every model under this base dir")
    parser.add_argument("--model-config-file", help="a TF Serving models.config instead")
    parser.add_argument("--models", help="comma-separated model names (with --base-dir)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest-port", type=int, default=8501, help="0 = ephemeral, -1 = off")
    parser.add_argument("--grpc-port", type=int, default=8500, help="0 = ephemeral, -1 = off")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="largest request body / gRPC message (default TF Serving's)")
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                        help="seconds a REST connection may wait for data (default 50)")
    parser.add_argument("--ready-file", help="write {rest_port, grpc_port, models} JSON here "
                                             "once serving")
    args = parser.parse_args(argv)
    server = LocalModelServer(args.base_dir, model_config_file=args.model_config_file,
                              models=args.models.split(",") if args.models else None,
                              host=args.host,
                              rest_port=None if args.rest_port < 0 else args.rest_port,
                              grpc_port=None if args.grpc_port < 0 else args.grpc_port,
                              max_request_bytes=args.max_request_bytes,
                              read_timeout=args.read_timeout)
    server.start()
    info = {"rest_port": server.rest_port, "grpc_port": server.grpc_port,
            "models": server.served(), "pid": os.getpid()}
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, args.ready_file)
    print(f"local TF-Serving test fixture on {args.host}: REST {server.rest_port}, gRPC "
          f"{server.grpc_port}, models {info['models']}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
