"""The serving path end to end on tiny exports: retrieval (BruteForce in two versions with
stable/canary labels, ScaNN) and ranking exports, `pipelines.export` configs, the loopback
TF-Serving test fixture started from those configs, and the REST and gRPC clients.

Known answers: every REST (row and columnar) and gRPC answer equals the signature called in
this process on the same inputs (the exports' own warmup inputs); BruteForce answers equal the
numpy top-k of the hand-made towers; labels route to the versions they name (k=5 vs k=3).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipelines import export as export_pipeline
from pipelines import query_server
from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.models.ranking import RankingConfig, build_ranking_model
from recommenders_tf.serving import server_config as sc
from recommenders_tf.serving.client import GrpcClient, RestClient, ServingError
from recommenders_tf.serving.export import export_retrieval
from recommenders_tf.testing.local_server import LocalModelServer, ServingStatus
from recommenders_tf.serving.ranking_export import export_ranking
from recommenders_tf.serving.warmup import (example_inputs, read_warmup_requests, replay_warmup,
                                            warmup_path, write_warmup_requests)
from tiny_retrieval import (ITEM_GENRES, ITEM_TITLES, ITEMS, USERS, GenreCandidateTower,
                            GenreQueryTower, item_features)

W, HISTORY = 3, 3
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    query, candidate = GenreQueryTower(), GenreCandidateTower()
    embeddings = candidate(item_features(ITEMS, ITEM_TITLES, ITEM_GENRES)).numpy()
    meta = {"query_history_len": HISTORY}
    brute = build_index("bruteforce", query, ITEMS, embeddings, k=5)
    scann = build_index("scann", query, ITEMS, embeddings, k=5, scann_params=ScannParams(
        num_leaves=10, num_leaves_to_search=5, num_reordering_candidates=50))
    paths = {"retrieval_bruteforce/1": export_retrieval(query, brute, base, k=5,
                                                        exclusion_width=W, metadata=meta),
             "retrieval_bruteforce/2": export_retrieval(query, brute, base, k=3,
                                                        exclusion_width=W, metadata=meta),
             "retrieval_scann/1": export_retrieval(query, scann, base, k=5, exclusion_width=W,
                                                   metadata=meta)}
    ranking = build_ranking_model(
        RankingConfig(loss="mse", embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                      deep_dims=(8,), din_units=4, history_len=HISTORY, seed=3),
        USERS, ITEMS, label_mean=3.5)
    paths["ranking/1"] = export_ranking(ranking, base)
    results = export_pipeline.main(export_pipeline.ExportConfig(
        base_dir=str(base), labels={"retrieval_bruteforce": {"stable": 1, "canary": 2}},
        out_dir=str(base.parent / "runs")))
    return dict(base=base, paths=paths, results=results, query=query, embeddings=embeddings)


@pytest.fixture(scope="module")
def servers(exports):
    base = exports["base"]
    stock = LocalModelServer(model_config_file=base / "models.config").start()
    scann = LocalModelServer(model_config_file=base / "models.scann.config").start()
    clients = {}
    for model, server in (("retrieval_bruteforce", stock), ("ranking", stock),
                          ("retrieval_scann", scann)):
        clients[model] = (RestClient("127.0.0.1", server.rest_port),
                          GrpcClient(server.grpc_target))
    # The in-process answers come from the SavedModels the servers loaded, called directly
    # rather than through REST or gRPC: loading every export a second time cost about a second
    # apiece. Each is checked against its export directory, so a server that loaded the wrong
    # directory for a version still fails.
    direct = {}
    for key, path in exports["paths"].items():
        name, version = key.split("/")
        server = scann if name == "retrieval_scann" else stock
        servable = server.registry.models[name].versions[int(version)]
        assert servable.path.resolve() == path.resolve(), (key, servable.path)
        direct[key] = servable.loaded
    yield dict(stock=stock, scann=scann, clients=clients, direct=direct)
    for rest, grpc_client in clients.values():
        rest.close()
        grpc_client.close()
    stock.stop()
    scann.stop()


def _text(array):
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v),
                            otypes=[object])(array).astype(str) if array.size else array
    return array


def _direct(servers, key, signature, inputs):
    out = servers["direct"][key].signatures[signature](
        **{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def _same(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(_text(got[name]), _text(want[name]), err_msg=name)


# ---- the exports --------------------------------------------------------------------------------


def test_every_export_has_tf_serving_layout_assets_warmup_and_named_signatures(exports):
    for key, path in exports["paths"].items():
        name, version = key.split("/")
        assert path == exports["base"] / name / version
        assert (path / "saved_model.pb").exists() and (path / "variables").is_dir()
        meta = json.loads((path / "metadata.json").read_text())
        check = sc.verify_export(path)
        assert check["requires_scann"] is (name == "retrieval_scann")
        assert meta["warmup"]["records"] == check["warmup_records"] >= 2
        for sig_name, sig in sc.read_signature_defs(path).items():
            assert sig.inputs and sig.outputs, (key, sig_name)
            assert sig.method_name == "tensorflow/serving/predict"
        assert set(meta["signatures"]) == set(check["signatures"])
    retrieval = exports["paths"]["retrieval_bruteforce/1"]
    assert sorted(sc.read_signature_defs(retrieval)) == ["recommend_with_exclusions",
                                                         "serving_default"]
    # The query tower's user vocabulary and the index's candidates, in index order.
    assert (retrieval / "assets" / "query_model.users.txt").read_text().split() == USERS
    assert (retrieval / "assets" / "candidate_ids.txt").read_text().split() == ITEMS
    vocabularies = json.loads((retrieval / "metadata.json").read_text())["assets"]["vocabularies"]
    assert vocabularies["query_model.users"]["first_index"] == 1  # after the OOV bucket
    ranking = exports["paths"]["ranking/1"]
    assert set(sc.read_signature_defs(ranking)["serving_default"].inputs) == {
        "user_id", "history", "item_ids"}
    files = {p.name: p.read_text().split() for p in (ranking / "assets").iterdir()}
    assert sorted(USERS) in [sorted(v) for v in files.values()]
    assert sorted(ITEMS) in [sorted(v) for v in files.values()]


def test_warmup_records_parse_and_every_one_is_accepted_by_its_signature(exports, servers):
    for key, path in exports["paths"].items():
        records = read_warmup_requests(warmup_path(path))
        signatures = set(sc.read_signature_defs(path))
        assert {r.signature_name for r in records} == signatures, key
        assert all(r.model_name == key.split("/")[0] for r in records)
        assert replay_warmup(servers["direct"][key].signatures, warmup_path(path)) == len(records)
    # Built from real ids: a known user with real history items, then an unknown user.
    first = read_warmup_requests(warmup_path(exports["paths"]["retrieval_scann/1"]))[0]
    assert first.inputs["user_id"].tolist() == [b"u0", b"__warmup_unknown_user__"]
    assert first.inputs["history"].tolist() == [[b"i000", b"i001", b"i002"], [b""] * HISTORY]
    ranking = read_warmup_requests(warmup_path(exports["paths"]["ranking/1"]))
    assert ranking[0].inputs["user_id"][0].decode() in USERS
    assert {i.decode() for i in ranking[0].inputs["item_ids"].ravel()} <= set(ITEMS)


# ---- answers through the server ---------------------------------------------------------------

CASES = [("retrieval_bruteforce/2", "serving_default"),
         ("retrieval_bruteforce/2", "recommend_with_exclusions"),
         ("retrieval_scann/1", "serving_default"),
         ("retrieval_scann/1", "recommend_with_exclusions"),
         ("ranking/1", "serving_default")]


@pytest.mark.parametrize("key,signature", CASES)
def test_rest_and_grpc_answers_equal_the_signature_called_in_process(key, signature, exports,
                                                                     servers):
    model = key.split("/")[0]
    inputs = example_inputs(exports["paths"][key], signature, batch_size=3)
    want = _direct(servers, key, signature, inputs)
    rest, grpc_client = servers["clients"][model]
    columnar = rest.predict(model, inputs, signature_name=signature)
    rows = rest.predict(model, inputs, signature_name=signature, row_format=True)
    via_grpc = grpc_client.predict(model, inputs, signature_name=signature)
    for got in (columnar, rows, via_grpc):
        _same(got, want)
    assert rest.last_model_seconds > 0 and grpc_client.last_model_seconds > 0
    if model == "ranking":  # "" candidates score -inf, sent as JSON -Infinity
        assert np.isneginf(columnar["scores"]).any()


def test_rest_bodies_are_formatted_like_tf_serving(servers):
    rest, _ = servers["clients"]["ranking"]
    inputs = {"user_id": ["u1", "stranger"], "history": [["i001", "", ""], ["", "", ""]],
              "item_ids": [["i002", ""], ["i003", "i004"]]}
    rows = rest.predict_json("ranking", {"instances": [
        {k: v[i] for k, v in inputs.items()} for i in range(2)]})
    # One output tensor: predictions are its rows, not {"scores": ...} objects.
    assert list(rows) == ["predictions"] and len(rows["predictions"]) == 2
    assert isinstance(rows["predictions"][0], list) and rows["predictions"][0][1] == -np.inf
    columns = rest.predict_json("ranking", {"inputs": inputs})
    assert list(columns) == ["outputs"] and np.array(columns["outputs"]).shape == (2, 2)
    two = servers["clients"]["retrieval_bruteforce"][0].predict_json(
        "retrieval_bruteforce", {"instances": [{"user_id": "u1", "history": ["i001"]}]})
    assert sorted(two["predictions"][0]) == ["item_ids", "scores"]


def test_bruteforce_answers_are_the_numpy_top_k(exports, servers):
    """u0 prefers Action: through REST, the top 5 is the numpy top 5 of the towers' scores, and
    with exclusions the excluded items are gone and the next best fill in."""
    rest, grpc_client = servers["clients"]["retrieval_bruteforce"]
    history = [["i000", "i003", ""]]  # right-padded: the export reads it as ["", i000, i003]
    query = exports["query"]({"user_id": tf.constant(["u0"]),
                              "history": tf.constant([["", "i000", "i003"]])})
    scores = exports["embeddings"] @ query.numpy()[0]
    order = [ITEMS[i] for i in np.argsort(-scores, kind="stable")]
    got = rest.predict("retrieval_bruteforce", {"user_id": ["u0"], "history": history},
                       label="stable")
    assert got["item_ids"][0].tolist() == order[:5]
    np.testing.assert_allclose(got["scores"][0], np.sort(scores)[::-1][:5], rtol=1e-5)
    exclude = [order[0], order[2], ""]
    got = grpc_client.predict("retrieval_bruteforce", {"user_id": ["u0"], "history": history,
                                                       "exclude_item_ids": [exclude]},
                              signature_name="recommend_with_exclusions", label="stable")
    assert [i.decode() for i in got["item_ids"][0]] == [i for i in order if i not in exclude][:5]


def test_versions_labels_status_and_metadata(exports, servers):
    rest, grpc_client = servers["clients"]["retrieval_bruteforce"]
    inputs = {"user_id": ["u1"], "history": [["i001", "", ""]]}
    widths = {"stable": 5, "canary": 3}
    for label, k in widths.items():
        assert rest.predict("retrieval_bruteforce", inputs, label=label)["item_ids"].shape == (1, k)
        assert grpc_client.predict("retrieval_bruteforce", inputs,
                                   label=label)["scores"].shape == (1, k)
    assert rest.predict("retrieval_bruteforce", inputs, version=1)["item_ids"].shape == (1, 5)
    assert rest.predict("retrieval_bruteforce", inputs)["item_ids"].shape == (1, 3)  # latest = 2
    assert rest.versions("retrieval_bruteforce") == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert grpc_client.status("retrieval_bruteforce", label="canary") == {2: "AVAILABLE"}
    status = rest.status("retrieval_bruteforce", version=1)
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    body = rest.metadata("retrieval_bruteforce", label="stable")
    assert body["model_spec"] == {"name": "retrieval_bruteforce", "version": "1",
                                  "signature_name": ""}
    defs = body["metadata"]["signature_def"]["signature_def"]  # TF Serving's double nesting
    assert defs["serving_default"]["inputs"]["user_id"]["dtype"] == "DT_STRING"
    assert defs["recommend_with_exclusions"]["inputs"]["exclude_item_ids"]["tensor_shape"][
        "dim"][1]["size"] == "-1"  # any exclusion width
    protos = grpc_client.metadata("retrieval_bruteforce", version=2)
    assert protos == sc.read_signature_defs(exports["paths"]["retrieval_bruteforce/2"],
                                            include_internal=True)
    assert rest.signature("ranking", "serving_default")["outputs"] == {
        "scores": {"dtype": "DT_FLOAT", "shape": [-1, -1]}}


REST_ERRORS = [
    (dict(model="nope"), 404, "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    (dict(version=9), 404, "NOT_FOUND", "Servable not found for request: Specific("
                                        "retrieval_bruteforce, 9)"),
    (dict(label="beta"), 400, "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
    (dict(inputs={"user_id": ["u1"]}), 400, "INVALID_ARGUMENT",
     "Missing named input: history in 'inputs' object."),
    (dict(inputs={"user_id": ["u1"]}, row_format=True), 400, "INVALID_ARGUMENT",
     "keys must be equal to: history,user_id"),
    (dict(inputs={"user_id": [7], "history": [["i1"]]}), 400, "INVALID_ARGUMENT",
     "JSON Value: 7 Type: Number is not of expected type: string"),
    (dict(signature_name="nah"), 400, "INVALID_ARGUMENT",
     'Serving signature name: "nah" not found in signature def'),
    (dict(signature_name="recommend_with_exclusions",
          inputs={"user_id": ["u1"], "history": [["i1"]], "exclude_item_ids": ["a", "b"]}),
     400, "INVALID_ARGUMENT", "has shape [2] but the signature expects [-1, -1]"),
]


@pytest.mark.parametrize("call,http_status,code,message", REST_ERRORS)
def test_bad_rest_requests_fail_with_tf_serving_errors(call, http_status, code, message,
                                                       servers):
    rest, _ = servers["clients"]["retrieval_bruteforce"]
    call = dict(call)
    model = call.pop("model", "retrieval_bruteforce")
    inputs = call.pop("inputs", {"user_id": ["u1"], "history": [["i001"]]})
    with pytest.raises(ServingError) as info:
        rest.predict(model, inputs, **call)
    error = info.value
    assert (error.http_status, error.code) == (http_status, code)
    assert message in error.detail and message in str(error)
    assert "HTTP" in str(error) and "/v1/models/" in str(error)


GRPC_ERRORS = [
    (dict(model="nope"), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    (dict(version=9), "NOT_FOUND", "Specific(retrieval_bruteforce, 9)"),
    (dict(label="beta"), "INVALID_ARGUMENT", "Unrecognized servable version label: beta"),
    (dict(inputs={"user_id": ["u1"]}), "INVALID_ARGUMENT",
     "input size does not match signature: 1!=2 len({user_id}) != len({history,user_id}). "
     "Sent extra: {}. Missing but required: {history}."),
    (dict(inputs={"user_id": np.array([1.0], np.float32), "history": [["i1"]]}),
     "INVALID_ARGUMENT", "Expects arg[1] to be string but float is provided"),
    (dict(signature_name="nah"), "FAILED_PRECONDITION", 'Serving signature key "nah" not found.'),
]


@pytest.mark.parametrize("call,code,message", GRPC_ERRORS)
def test_bad_grpc_requests_fail_with_tf_serving_errors(call, code, message, servers):
    _, grpc_client = servers["clients"]["retrieval_bruteforce"]
    call = dict(call)
    model = call.pop("model", "retrieval_bruteforce")
    inputs = call.pop("inputs", {"user_id": ["u1"], "history": [["i001"]]})
    with pytest.raises(ServingError) as info:
        grpc_client.predict(model, inputs, **call)
    assert info.value.code == code and message in info.value.detail


def test_transport_errors_are_clear(servers):
    rest, _ = servers["clients"]["ranking"]
    with pytest.raises(ServingError, match="JSON Parse error") as info:
        rest.request("POST", "/v1/models/ranking:predict", b"{not json")
    assert info.value.http_status == 400
    with pytest.raises(ServingError, match="Malformed request: GET /v1/nothing"):
        rest.request("GET", "/v1/nothing")
    with pytest.raises(ValueError, match="not both"):
        rest.predict("ranking", {}, version=1, label="stable")
    closed = RestClient("127.0.0.1", _free_port(), timeout=2)
    with pytest.raises(ServingError, match="Cannot reach TF Serving REST") as info:
        closed.status("ranking")
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(ServingError, match="UNAVAILABLE") as info:
        GrpcClient(f"127.0.0.1:{_free_port()}", timeout=2).status("ranking")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- configs, pipelines ------------------------------------------------------------------------


def test_export_pipeline_writes_configs_that_parse_as_model_server_config(exports):
    base, results = exports["base"], exports["results"]
    stock = text_format.Parse((base / "models.config").read_text(),
                              model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c for c in stock.model_config_list.config}
    assert sorted(entries) == ["ranking", "retrieval_bruteforce"]
    brute = entries["retrieval_bruteforce"]
    assert brute.base_path == str(base.resolve() / "retrieval_bruteforce")
    assert brute.model_platform == "tensorflow"
    assert list(brute.model_version_policy.specific.versions) == [1, 2]
    assert dict(brute.version_labels) == {"stable": 1, "canary": 2}
    assert entries["ranking"].model_version_policy.latest.num_versions == 1
    scann = sc.parse_model_config(base / "models.scann.config")
    assert [c.name for c in scann.model_config_list.config] == ["retrieval_scann"]
    sc.parse_batching_parameters(base / "batching_parameters.txt")
    commands = {c["kind"]: c for c in results["commands"]}
    assert commands["stock"]["models"] == ["ranking", "retrieval_bruteforce"]
    assert f" tensorflow/serving:{tf.__version__} " in commands["stock"]["docker"]
    assert "google/tf-serving-scann" in commands["scann"]["docker"]
    assert commands["stock"]["warning"] == ""
    assert "build TF Serving with the ScaNN ops" in commands["scann"]["warning"]
    assert set(results["checks"]) == {"retrieval_bruteforce/1", "retrieval_bruteforce/2",
                                      "retrieval_scann/1", "ranking/1"}


def test_query_server_pipeline_over_rest_and_grpc(exports, servers):
    stock = servers["stock"]
    args = ["--host", "127.0.0.1", "--rest-port", str(stock.rest_port), "--grpc-port",
            str(stock.grpc_port)]
    ranked = query_server.main(query_server.parse_args(
        args + ["--model", "ranking", "--user-id", "u2", "--history", "i001,i002",
                "--items", "i003,i004,brand-new"]))
    assert ranked["rest_equals_grpc"] and ranked["signature"] == "serving_default"
    want = _direct(servers, "ranking/1", "serving_default",
                   {"user_id": np.array(["u2"]), "history": np.array([["i001", "i002"]]),
                    "item_ids": np.array([["i003", "i004", "brand-new"]])})
    np.testing.assert_array_equal(ranked["rest"]["scores"], want["scores"])
    retrieved = query_server.main(query_server.parse_args(
        args + ["--user-id", "u0", "--history", "i000", "--exclude", "i003", "--label",
                "stable"]))
    assert retrieved["signature"] == "recommend_with_exclusions"
    assert retrieved["inputs"]["exclude_item_ids"] == [["i003"]]  # any width: no padding
    assert len(retrieved["grpc"]["item_ids"][0]) == 5 and "i003" not in \
        retrieved["grpc"]["item_ids"][0]
    wide = [f"i{i:03d}" for i in range(0, 60, 3)]  # wider than the warmup's W = 3
    retrieved = query_server.main(query_server.parse_args(
        args + ["--user-id", "u0", "--exclude", ",".join(wide), "--label", "stable"]))
    assert len(retrieved["grpc"]["item_ids"][0]) == 5
    assert not set(retrieved["grpc"]["item_ids"][0]) & set(wide)


def test_a_rejected_warmup_record_fails_the_load_and_the_check(exports, tmp_path):
    base = tmp_path / "models"
    shutil.copytree(exports["paths"]["ranking/1"], base / "ranking" / "1")
    write_warmup_requests(warmup_path(base / "ranking" / "1"), "ranking",
                          [("serving_default", {"user_id": np.array(["u1"]),
                                                "items": np.array([["i1"]])})])
    with pytest.raises(ValueError, match=r"sends inputs \['items', 'user_id'\] but the "
                                         r"signature takes"):
        sc.verify_export(base / "ranking" / "1")
    with pytest.raises(ServingStatus, match="Failed to run warmup record 0") as info:
        LocalModelServer(base).start()
    assert info.value.code == "FAILED_PRECONDITION"


def test_reload_serves_a_new_version(exports, tmp_path):
    base = tmp_path / "models"
    shutil.copytree(exports["paths"]["retrieval_bruteforce/1"],
                    base / "retrieval_bruteforce" / "1")
    with LocalModelServer(base, grpc_port=None) as server:
        rest = RestClient("127.0.0.1", server.rest_port)
        inputs = {"user_id": ["u1"], "history": [["i001"]]}
        assert rest.predict("retrieval_bruteforce", inputs)["item_ids"].shape == (1, 5)
        shutil.copytree(exports["paths"]["retrieval_bruteforce/2"],
                        base / "retrieval_bruteforce" / "2")
        assert server.reload() == {"retrieval_bruteforce": [2]}  # latest policy: one version
        assert rest.predict("retrieval_bruteforce", inputs)["item_ids"].shape == (1, 3)
        rest.close()


# ---- fresh processes --------------------------------------------------------------------------

RELOAD = textwrap.dedent("""
    import json, sys
    # TF Serving has no Keras: the exports must load and run without one (and TensorFlow starts
    # 2-3 s sooner when it cannot pre-import Keras).
    sys.modules["keras"] = sys.modules["tf_keras"] = None
    import numpy as np
    import tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    out = {}
    for key, item in spec.items():
        if item["scann"]:
            import scann  # only the ScaNN export needs its custom ops
        loaded = tf.saved_model.load(item["path"])
        fn = loaded.signatures[item["signature"]]
        res = fn(**{k: tf.constant(v) for k, v in item["inputs"].items()})
        out[key] = {k: [[x.decode() if isinstance(x, bytes) else float(x) for x in row]
                        for row in v.numpy().reshape(len(v), -1).tolist()]
                    for k, v in res.items()}
    json.dump(out, open(sys.argv[2], "w"))
""")


@pytest.mark.slow
def test_exports_reloaded_in_a_fresh_process_give_the_same_outputs(exports, servers, tmp_path):
    spec, want = {}, {}
    for key, signature in CASES:
        inputs = example_inputs(exports["paths"][key], signature, batch_size=3)
        spec[f"{key}:{signature}"] = {
            "path": str(exports["paths"][key]), "signature": signature,
            "scann": key.startswith("retrieval_scann"),
            "inputs": {k: _text(v).tolist() for k, v in inputs.items()}}
        want[f"{key}:{signature}"] = _direct(servers, key, signature, inputs)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "reload.py").write_text(RELOAD)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, str(tmp_path / "reload.py"), str(tmp_path / "spec.json"),
                           str(tmp_path / "out.json")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    for key, outputs in want.items():
        for name, value in outputs.items():
            expected = _text(value).reshape(len(value), -1)
            if expected.dtype.kind == "f":
                np.testing.assert_array_equal(np.array(got[key][name], np.float32), expected)
            else:
                assert got[key][name] == expected.tolist(), (key, name)


@pytest.mark.slow
def test_local_server_command_line_serves_a_base_dir(exports, servers, tmp_path):
    ready = tmp_path / "ready.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "recommenders_tf.testing.local_server",
                             "--base-dir", str(exports["base"]), "--models", "ranking",
                             "--rest-port", "0", "--grpc-port", "0", "--ready-file", str(ready)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "local server did not come up"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        assert info["models"] == {"ranking": {"versions": [1], "labels": {}}}
        inputs = example_inputs(exports["paths"]["ranking/1"], "serving_default")
        got = RestClient("127.0.0.1", info["rest_port"]).predict("ranking", inputs)
        _same(got, _direct(servers, "ranking/1", "serving_default", inputs))
        _same(GrpcClient(f"127.0.0.1:{info['grpc_port']}").predict("ranking", inputs), got)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_export_pipeline_reports_temp_folders_of_killed_exports(exports, tmp_path, capsys):
    from recommenders_tf.serving import export as export_module

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: its temp folder is stale
    stale = (exports["base"] / "ranking" /
             f"{export_module.TMP_PREFIX}{export_module.host_tag()}-{dead.pid}-{'d' * 32}")
    (stale / "variables").mkdir(parents=True)
    try:
        results = export_pipeline.main(export_pipeline.ExportConfig(
            base_dir=str(exports["base"]), out_dir=str(tmp_path / "runs")))
        assert results["stale_temp_dirs"] == {"ranking": [stale.name]}
        assert "1 temp folder(s) left by killed exports" in capsys.readouterr().out
    finally:
        shutil.rmtree(stale)
