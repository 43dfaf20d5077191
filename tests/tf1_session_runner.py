"""Runs SavedModel signatures the way the C++ TF Serving does: the bundle loaded into a TF1
session, each signature run by the tensor names its SignatureDef lists.

Imports TensorFlow (and the TF Serving protos, to read warmup files) and nothing else, so a
signature that only works when the package's own Python code is loaded fails here.

Usage: python tf1_session_runner.py SPEC.json INPUTS.npz OUT.npz REPORT.json

SPEC.json: {"exports": {key: version dir},
            "cases": [{"id": ..., "export": key, "signature": name}, ...]}
INPUTS.npz: one array per case input, named "<case id>/<input name>".
OUT.npz: one array per case output, named "<case id>/<output name>"; strings as str.
REPORT.json: per export, each signature's input and output names and dtypes, the warmup
records replayed (signature, batch size of every output), and which packages got imported.
"""
import json
import sys

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# A TF2 SavedModel stores its init op as this pseudo-signature (an untyped NoOp output); the
# loader has already run it, and TF Serving does not offer it as a signature.
INIT_OP_KEY = "__saved_model_init_op"


def feed_value(array: np.ndarray) -> np.ndarray:
    return np.char.encode(array, "utf-8") if array.dtype.kind == "U" else array


def fetched_value(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        return np.array([v.decode("utf-8") for v in array.ravel()], dtype=str).reshape(
            array.shape)
    return array


def warmup_requests(path: str) -> list:
    # Read before any session opens: tf.data needs the eager context, not a session's graph.
    requests = []
    for record in tf.data.TFRecordDataset(f"{path}/{WARMUP_FILE}"):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests


def run(sess, signature_def, inputs: dict) -> dict:
    missing = sorted(set(signature_def.inputs) - set(inputs))
    extra = sorted(set(inputs) - set(signature_def.inputs))
    if missing or extra:
        raise KeyError(f"inputs do not match the SignatureDef: missing {missing}, "
                       f"unexpected {extra}")
    feeds = {signature_def.inputs[name].name: feed_value(value)
             for name, value in inputs.items()}
    fetches = {name: info.name for name, info in signature_def.outputs.items()}
    return sess.run(fetches, feed_dict=feeds)


def main(spec_path: str, inputs_path: str, out_path: str, report_path: str) -> None:
    spec = json.load(open(spec_path))
    arrays = dict(np.load(inputs_path))
    outputs, report = {}, {}
    for key, path in spec["exports"].items():
        warmup = warmup_requests(path)
        with tf.compat.v1.Session(graph=tf.Graph()) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
            report[key] = {"signatures": {
                name: {"inputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
                       "outputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.outputs.items()}}
                for name, sig in meta.signature_def.items() if name != INIT_OP_KEY}}
            for case in spec["cases"]:
                if case["export"] != key:
                    continue
                inputs = {name.rsplit("/", 1)[1]: value for name, value in arrays.items()
                          if name.rsplit("/", 1)[0] == case["id"]}
                result = run(sess, meta.signature_def[case["signature"]], inputs)
                for name, value in result.items():
                    outputs[f"{case['id']}/{name}"] = fetched_value(value)
            # TF Serving replays these at load and refuses the model if one fails.
            replayed = []
            for request in warmup:
                name = request.model_spec.signature_name or "serving_default"
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                result = run(sess, meta.signature_def[name], inputs)
                replayed.append({"signature": name,
                                 "batch": len(next(iter(inputs.values()))),
                                 "output_batches": sorted({len(v) for v in result.values()})})
            report[key]["warmup"] = replayed
    np.savez(out_path, **outputs)
    report["imported"] = {name: name in sys.modules for name in ("scann", "recommenders_tf")}
    json.dump(report, open(report_path, "w"))
    assert "scann" not in sys.modules and "recommenders_tf" not in sys.modules, \
        report["imported"]


if __name__ == "__main__":
    main(*sys.argv[1:5])
