"""Runs SavedModel signatures the way the C++ TF Serving does: the bundle loaded into a TF1
session, each signature run by the tensor names its SignatureDef lists.

Imports TensorFlow (and the TF Serving protos, to read warmup files) and nothing else, so a
signature that only works when the package's own Python code is loaded fails here.

Usage: python tf1_session_runner.py OUT.npz REPORT.json < JOBS

JOBS: one JSON line per export, {"export": key, "path": version dir,
      "cases": [{"id": ..., "signature": name}, ...], "inputs": INPUTS.npz}, each run as soon
      as its line arrives; the caller starts this process before it writes the exports, so
      TensorFlow's import and the first exports' sessions overlap the writing of the others.
INPUTS.npz: one array per case input, named "<case id>/<input name>".
OUT.npz: one array per case output, named "<case id>/<output name>"; strings as str.
REPORT.json: per export, each signature's input and output names and dtypes, the warmup
records replayed (signature, batch size of every output), and which packages got imported;
written with OUT.npz at the end of the input.
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


def run_export(path: str, cases: list, arrays: dict, outputs: dict) -> dict:
    """Runs `cases` (ids and signature names) on the export at `path` in a TF1 session, adding
    their outputs to `outputs`, then replays its warmup records; returns its report."""
    warmup = warmup_requests(path)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        report = {"signatures": {
            name: {"inputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
                   "outputs": {k: tf.as_dtype(v.dtype).name for k, v in sig.outputs.items()}}
            for name, sig in meta.signature_def.items() if name != INIT_OP_KEY}}
        for case in cases:
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
        report["warmup"] = replayed
    return report


def main(out_path: str, report_path: str) -> None:
    outputs, report = {}, {}
    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            with np.load(job["inputs"]) as data:
                arrays = {name: data[name] for name in data.files}
            report[job["export"]] = run_export(job["path"], job["cases"], arrays, outputs)
    np.savez(out_path, **outputs)
    report["imported"] = {name: name in sys.modules for name in ("scann", "recommenders_tf")}
    json.dump(report, open(report_path, "w"))
    assert "scann" not in sys.modules and "recommenders_tf" not in sys.modules, \
        report["imported"]


if __name__ == "__main__":
    main(*sys.argv[1:3])
