"""Serving building blocks with known answers: warmup files, save_export's checks on tiny
modules, models.config / batching_parameters.txt as real TF Serving protos, TF Serving's JSON
tensor formatting and parsing, and the command lines."""
import json

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from recommenders_tf.testing import local_server as ls
from recommenders_tf.serving import server_config as sc
from recommenders_tf.serving.client import columnar_to_instances, json_to_numpy, to_json_value
from recommenders_tf.serving.export import find_vocabularies, save_export
from recommenders_tf.serving.warmup import (batched_requests, example_inputs,
                                            read_warmup_requests, replay_warmup,
                                            write_warmup_requests)

TOKENS = ["apple", "banana", "cherry"]


class Doubler(tf.Module):
    """y = 2x plus the index of a token (StringLookup, 1 OOV bucket): a generic two-signature
    export like the cascade's, with a vocabulary to find."""

    def __init__(self):
        super().__init__()
        self.lookup = tf.keras.layers.StringLookup(vocabulary=TOKENS, num_oov_indices=1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(x):
            return {"y": 2.0 * x}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="token"),
                                      tf.TensorSpec([None], tf.float32, name="x")])
        def index(token, x):
            return {"index": self.lookup(token), "y": x + 1.0}

        self.double, self.index = double, index

    def signatures(self):
        return {"serving_default": self.double.get_concrete_function(),
                "index": self.index.get_concrete_function()}


GOOD_REQUESTS = [("serving_default", {"x": np.array([1.5, -2.0], np.float32)}),
                 ("index", {"token": np.array(["banana", "durian"]), "x": np.array([0.0, 1.0])})]


def test_warmup_round_trip_with_cap_and_coverage(tmp_path):
    path = tmp_path / "assets.extra" / "tf_serving_warmup_requests"
    requests = [("a", {"x": np.array([float(i)])}) for i in range(5)] + \
               [("b", {"s": np.array([["u1", ""]]), "n": np.array([[3]], np.int64)})]
    assert write_warmup_requests(path, "m", requests, max_requests=3) == 3
    records = read_warmup_requests(path)
    # Round-robin over signatures: a0, b, a1 -- both signatures survive the cap.
    assert [(r.model_name, r.signature_name) for r in records] == [("m", "a"), ("m", "b"),
                                                                   ("m", "a")]
    assert records[0].inputs["x"].dtype == np.float32 and records[0].inputs["x"].tolist() == [0.0]
    assert records[1].inputs["s"].tolist() == [[b"u1", b""]]
    assert records[1].request.inputs["n"].dtype == tf.int64.as_datatype_enum
    assert records[2].inputs["x"].tolist() == [1.0]
    # The raw file is plain PredictionLog TFRecords, as TF Serving reads it.
    raw = next(iter(tf.data.TFRecordDataset(str(path)))).numpy()
    log = prediction_log_pb2.PredictionLog.FromString(raw)
    assert log.predict_log.request.model_spec.signature_name == "a"
    with pytest.raises(ValueError, match="no signature name"):
        write_warmup_requests(path, "m", [("", {"x": [1.0]})])
    with pytest.raises(ValueError, match="No warmup requests"):
        write_warmup_requests(path, "m", [])


def test_batched_requests_and_example_inputs(tmp_path):
    rows = {"user_id": np.array(["u1", "u2", "u3"]), "history": np.array([["a"], ["b"], ["c"]])}
    got = batched_requests("serving_default", rows, batch_sizes=(1, 8, 3))
    assert [r[1]["user_id"].tolist() for r in got] == [["u1"], ["u1", "u2", "u3"]]
    with pytest.raises(ValueError, match="disagree on the batch size"):
        batched_requests("s", {"a": np.zeros(2), "b": np.zeros(3)})
    path = tmp_path / "w"
    write_warmup_requests(path, "m", got)
    five = example_inputs(path, "serving_default", batch_size=5)
    assert five["user_id"].tolist() == [b"u1", b"u2", b"u3", b"u1", b"u2"]
    assert five["history"].shape == (5, 1)
    with pytest.raises(LookupError, match="no warmup request for signature 'other'"):
        example_inputs(path, "other")


def test_save_export_checks_signatures_and_warmup_before_publishing(tmp_path):
    module = Doubler()
    signatures = module.signatures()
    with pytest.raises(ValueError, match=r"No warmup request for signatures \['index'\]"):
        save_export(module, signatures, tmp_path, "doubler", {}, GOOD_REQUESTS[:1])
    bad = GOOD_REQUESTS[:1] + [("index", {"token": np.array(["a"])})]
    with pytest.raises(ValueError, match=r"Warmup request 1 \(index\) is rejected.*missing "
                                         r"inputs \['x'\]"):
        save_export(module, signatures, tmp_path, "doubler", {}, bad)
    with pytest.raises(ValueError, match="written by save_export"):
        save_export(module, signatures, tmp_path, "doubler", {"warmup": 1}, GOOD_REQUESTS)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def bare(x):
        return 2.0 * x

    with pytest.raises(ValueError, match="non-empty dict of named outputs"):
        save_export(module, {"serving_default": bare.get_concrete_function()}, tmp_path, "d",
                    {}, [("serving_default", {"x": [1.0]})])
    assert not (tmp_path / "doubler").exists() or not any((tmp_path / "doubler").iterdir())


def test_save_export_layout_vocabulary_assets_and_metadata(tmp_path):
    module = Doubler()
    path = save_export(module, module.signatures(), tmp_path, "doubler", {"stage": "demo"},
                       GOOD_REQUESTS, extra_vocabularies={"extra ids": ["x1", "x2"]})
    assert path == tmp_path / "doubler" / "1"
    assert sorted(p.name for p in (tmp_path / "doubler").iterdir()) == ["1"]  # temp dirs gone
    assert (path / "assets" / "lookup.txt").read_text() == "apple\nbanana\ncherry\n"
    assert (path / "assets" / "extra_ids.txt").read_text() == "x1\nx2\n"
    meta = json.loads((path / "metadata.json").read_text())
    assert meta == json.loads((path / "assets.extra" / "metadata.json").read_text())
    assert meta["stage"] == "demo"
    assert meta["assets"]["vocabularies"]["lookup"] == {
        "file": "assets/lookup.txt", "size": 3, "first_index": 1, "contiguous": True}
    assert meta["warmup"] == {"file": "assets.extra/tf_serving_warmup_requests", "records": 2,
                              "signatures": ["index", "serving_default"]}
    assert meta["signatures"]["index"]["inputs"] == {
        "token": {"dtype": "string", "shape": [-1]}, "x": {"dtype": "float32", "shape": [-1]}}
    assert meta["signatures"]["index"]["outputs"]["index"]["dtype"] == "int64"
    # The SavedModel's asset table lists the files, so TF Serving ships them with the model.
    meta_graph = sc.serve_meta_graph(sc.read_saved_model_proto(path))
    assert sorted(a.filename for a in meta_graph.asset_file_def) == ["extra_ids.txt",
                                                                     "lookup.txt"]
    loaded = tf.saved_model.load(str(path))
    assert replay_warmup(loaded.signatures, path / "assets.extra" /
                         "tf_serving_warmup_requests") == 2
    out = loaded.signatures["index"](token=tf.constant(["banana", "durian"]),
                                     x=tf.constant([0.0, 1.0]))
    assert out["index"].numpy().tolist() == [2, 0]  # banana = 1 OOV slot + 1; unknown = OOV 0
    # The restored twin of the lookup is found inside a loaded SavedModel as well.
    found = {v.name: v.tokens for v in find_vocabularies(loaded)}
    assert TOKENS in found.values()
    check = sc.verify_export(path)
    assert check["warmup_by_signature"] == {"serving_default": 1, "index": 1}
    assert check["requires_scann"] is False and check["assets"] == ["extra_ids.txt",
                                                                    "lookup.txt"]


def _models(tmp_path):
    base = tmp_path / "base"
    for name, versions in (("ranking", [1, 2, 3]), ("retrieval_scann", [1])):
        for v in versions:
            (base / name / str(v)).mkdir(parents=True)
    stock = sc.ServableModel("ranking", base / "ranking", [1, 2, 3],
                             {"versions": {"tensorflow": "2.20.0"}}, False, {})
    scann = sc.ServableModel("retrieval_scann", base / "retrieval_scann", [1], {}, True, {})
    return base, stock, scann


def test_model_config_is_a_valid_model_server_config(tmp_path):
    base, stock, scann = _models(tmp_path)
    config = sc.model_config([stock, scann], labels={"ranking": {"stable": 2, "canary": 3}},
                             num_versions=2)
    text = sc.model_config_text(config, header=["a comment"])
    assert text.startswith("# a comment\n")
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in parsed.model_config_list.config}
    assert sorted(entries) == ["ranking", "retrieval_scann"]
    ranking = entries["ranking"]
    assert ranking.base_path == str(base / "ranking") and ranking.model_platform == "tensorflow"
    assert list(ranking.model_version_policy.specific.versions) == [2, 3]
    assert dict(ranking.version_labels) == {"stable": 2, "canary": 3}
    assert entries["retrieval_scann"].model_version_policy.latest.num_versions == 2
    assert sc.parse_model_config(text) == parsed
    with pytest.raises(ValueError, match="points at version 9"):
        sc.model_config([stock], labels={"ranking": {"stable": 9}})
    with pytest.raises(ValueError, match="not among the served models"):
        sc.model_config([stock], labels={"nope": {"stable": 1}})


def test_batching_parameters_parse_and_validate():
    text = sc.batching_parameters_text(sc.batching_parameters(128, 500, 10, 4, (32, 128)),
                                       header=["x"])
    parsed = sc.parse_batching_parameters(text)
    assert parsed.max_batch_size.value == 128 and parsed.batch_timeout_micros.value == 500
    assert parsed.num_batch_threads.value == 4 and list(parsed.allowed_batch_sizes) == [32, 128]
    assert parsed.pad_variable_length_inputs is False
    # Same wire format as TF Serving's own message: field numbers as session_bundle_config.proto.
    assert parsed.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"
    assert parsed.DESCRIPTOR.fields_by_name["allowed_batch_sizes"].number == 6
    with pytest.raises(ValueError, match="must increase and end at max_batch_size"):
        sc.batching_parameters(128, allowed_batch_sizes=(64, 32))
    with pytest.raises(text_format.ParseError):
        sc.parse_batching_parameters("max_batch_size { value: 1 }\nno_such_field: 2")


def test_write_server_configs_splits_stock_and_scann(tmp_path):
    base, stock, scann = _models(tmp_path)
    out = sc.write_server_configs(base, [stock, scann], labels={"ranking": {"canary": 3}})
    stock_config = sc.parse_model_config(base / "models.config")
    scann_config = sc.parse_model_config(base / "models.scann.config")
    assert [c.name for c in stock_config.model_config_list.config] == ["ranking"]
    assert [c.name for c in scann_config.model_config_list.config] == ["retrieval_scann"]
    commands = {c.kind: c for c in out["commands"]}
    assert "tensorflow/serving:2.20.0" in commands["stock"].docker
    assert f"--model_config_file={base / 'models.config'}" in commands["stock"].binary
    assert "--enable_batching=true" in commands["stock"].binary
    assert "google/tf-serving-scann" in commands["scann"].docker
    assert "-p 8511:8501" in commands["scann"].docker and "--rest_api_port=8511" in \
        commands["scann"].binary
    assert "lags TensorFlow releases" in commands["scann"].warning
    assert commands["stock"].warning == ""
    text = (base / "serving_commands.txt").read_text()
    assert commands["scann"].docker in text and commands["stock"].binary in text
    sc.parse_batching_parameters(base / "batching_parameters.txt")
    # Only stock models left: the ScaNN config file is removed, not left stale.
    sc.write_server_configs(base, [stock])
    assert not (base / "models.scann.config").exists()
    with pytest.raises(ValueError, match="not exported under"):
        sc.write_server_configs(base, [stock], labels={"ghost": {"stable": 1}})


@pytest.mark.parametrize("value,single,text", [
    (0.2, True, "0.2"), (2.0, True, "2.0"), (1e6, True, "1e+06"), (3e-5, True, "3e-05"),
    (float(np.float32(0.1234567)), True, "0.123456702"), (0.1, False, "0.1"),
    (float("nan"), True, "NaN"), (float("-inf"), True, "-Infinity"), (-7.0, False, "-7.0")])
def test_floats_are_written_as_tf_serving_writes_them(value, single, text):
    if single:
        value = float(np.float32(value))
    assert ls.format_decimal(value, single) == text


def test_json_responses_have_tf_serving_shapes():
    scores = np.array([[1.5, -np.inf]], np.float32)
    ids = np.array([[b"a", b""]], dtype=object)
    # One output: its name is dropped in both formats.
    assert json.loads(ls.make_json_response({"scores": scores}, "row")) == {
        "predictions": [[1.5, -np.inf]]}
    assert json.loads(ls.make_json_response({"scores": scores}, "columnar")) == {
        "outputs": [[1.5, -np.inf]]}
    both = {"item_ids": ids, "scores": scores}
    assert json.loads(ls.make_json_response(both, "row")) == {
        "predictions": [{"item_ids": ["a", ""], "scores": [1.5, -np.inf]}]}
    assert json.loads(ls.make_json_response(both, "columnar")) == {
        "outputs": {"item_ids": [["a", ""]], "scores": [[1.5, -np.inf]]}}
    assert "-Infinity" in ls.make_json_response({"scores": scores}, "row")
    # [B] outputs (one value per row) next to [B, k] ones, as the cascade's `source`.
    mixed = {"source": np.array([b"model", b"fallback"], dtype=object),
             "rank": np.array([[1, 2], [3, 4]], np.int32)}
    assert json.loads(ls.make_json_response(mixed, "row")) == {"predictions": [
        {"rank": [1, 2], "source": "model"}, {"rank": [3, 4], "source": "fallback"}]}
    assert json.loads(ls.make_json_response(mixed, "columnar")) == {
        "outputs": {"rank": [[1, 2], [3, 4]], "source": ["model", "fallback"]}}
    # Outputs named *_bytes go out base64-encoded.
    assert json.loads(ls.make_json_response({"raw_bytes": np.array([b"\x00\xff"], object)},
                                             "columnar")) == {"outputs": [{"b64": "AP8="}]}


def test_json_inputs_parse_like_tf_serving():
    from tensorflow.core.framework import types_pb2 as T

    assert ls.json_to_array([["a", "b"], ["", "c"]], T.DT_STRING).tolist() == [
        [b"a", b"b"], [b"", b"c"]]
    assert ls.json_to_array([{"b64": "AP8="}], T.DT_STRING).tolist() == [b"\x00\xff"]
    assert ls.json_to_array([1, 2.5], T.DT_FLOAT).dtype == np.float32
    assert ls.json_to_array([[], []], T.DT_STRING).shape == (2, 0)
    with pytest.raises(ls.ServingStatus, match="JSON Value: 1 Type: Number is not of expected "
                                               "type: string"):
        ls.json_to_array([1], T.DT_STRING)
    with pytest.raises(ls.ServingStatus, match="Encountered list at unexpected size: 1 at "
                                               "level: 1 expected size: 2"):
        ls.json_to_array([["a", "b"], ["c"]], T.DT_STRING)
    with pytest.raises(ls.ServingStatus, match="is not of expected type: int64"):
        ls.json_to_array([1.5], T.DT_INT64)
    with pytest.raises(ls.ServingStatus, match="is not of expected type: float"):
        ls.json_to_array([True], T.DT_FLOAT)


def test_client_json_conversions():
    inputs = {"user_id": np.array([b"u1", b"u2"], dtype=object),
              "history": np.array([["a", ""], ["b", "c"]]),
              "weight": np.array([0.5, 1.0], np.float32)}
    assert columnar_to_instances(inputs) == [
        {"user_id": "u1", "history": ["a", ""], "weight": 0.5},
        {"user_id": "u2", "history": ["b", "c"], "weight": 1.0}]
    assert to_json_value(np.array([b"\xff"], dtype=object)) == [{"b64": "/w=="}]
    assert to_json_value(["x"], "img_bytes") == [{"b64": "eA=="}]
    assert json_to_numpy([[1.5, -np.inf]], "DT_FLOAT").dtype == np.float32
    assert json_to_numpy([["a"]], "DT_STRING").tolist() == [["a"]]
    with pytest.raises(ValueError, match="same size"):
        columnar_to_instances({"a": np.zeros(2), "b": np.zeros(3)})


def test_tensor_protos_use_typed_fields_as_tf_serving_answers():
    proto = ls.tensor_proto_field(np.array([[1.0, 2.0]], np.float32))
    assert list(proto.float_val) == [1.0, 2.0] and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == [1, 2]
    strings = ls.tensor_proto_field(np.array([b"a", b"b"], dtype=object))
    assert list(strings.string_val) == [b"a", b"b"]
    assert tf.make_ndarray(ls.tensor_proto_field(np.array([3, 4], np.int64))).tolist() == [3, 4]
