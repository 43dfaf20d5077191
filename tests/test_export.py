"""Export tests: TF Serving layout, atomic versions, metadata and warmup, client helpers, and
both exports reloaded in a fresh process that imports only TensorFlow (plus scann for the
ScaNN export) and called through both signatures."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.serving import export as export_module
from recommenders_tf.serving.client import (
    build_grpc_request,
    build_rest_request,
    load_export,
    rest_predict_url,
)
from recommenders_tf.serving.export import export_retrieval

DIM, K, W = 16, 5, 3
USERS = [f"u{i}" for i in range(30)]
ITEMS = [f"i{i}" for i in range(300)]


class QueryTower(tf.keras.Model):
    """User-id embedding plus the masked mean of history item embeddings ("" = padding)."""

    def __init__(self):
        super().__init__()
        init = tf.keras.initializers.RandomNormal(seed=11)
        self.users = tf.keras.layers.StringLookup(vocabulary=USERS, num_oov_indices=1)
        self.items = tf.keras.layers.StringLookup(vocabulary=ITEMS, mask_token="",
                                                  num_oov_indices=1)
        self.user_emb = tf.keras.layers.Embedding(len(USERS) + 1, DIM, embeddings_initializer=init)
        self.item_emb = tf.keras.layers.Embedding(len(ITEMS) + 2, DIM, embeddings_initializer=init)

    def call(self, features):
        history = self.items(features["history"])
        mask = tf.cast(history > 0, tf.float32)[..., None]
        total = tf.reduce_sum(self.item_emb(history) * mask, axis=1)
        mean = total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return self.user_emb(self.users(features["user_id"])) + mean


class CandidateTower(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.items = tf.keras.layers.StringLookup(vocabulary=ITEMS, num_oov_indices=1)
        self.emb = tf.keras.layers.Embedding(
            len(ITEMS) + 1, DIM, embeddings_initializer=tf.keras.initializers.RandomNormal(seed=12))

    def call(self, features):
        return self.emb(self.items(features["item_id"]))


# Known users with histories, an unknown user, an unknown history item, an empty history.
CALL_USERS = ["u1", "u2", "never-seen-user", "u3"]
CALL_HISTORY = [["i1", "i2"], ["", ""], ["unknown-item", ""], ["i5", ""]]


def pad(rows, width):
    return [list(r) + [""] * (width - len(r)) for r in rows]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    query_tower, candidate_tower = QueryTower(), CandidateTower()
    embeddings = candidate_tower({"item_id": tf.constant(ITEMS)}).numpy()
    bf = build_index("bruteforce", query_tower, ITEMS, embeddings, k=K)
    sc = build_index("scann", query_tower, ITEMS, embeddings, k=K,
                     scann_params=ScannParams(num_leaves=10, num_leaves_to_search=5,
                                              num_reordering_candidates=50))
    meta = {"vocab_sizes": {"user_id": len(USERS) + 1, "item_id": len(ITEMS) + 2}}
    paths = {kind: export_retrieval(query_tower, index, base_dir=base, k=K, exclusion_width=W,
                                    metadata=meta)
             for kind, index in (("bruteforce", bf), ("scann", sc))}
    # In-memory expectations, computed through the index API rather than the export module.
    features = {"user_id": tf.constant(CALL_USERS), "history": tf.constant(CALL_HISTORY)}
    queries = query_tower(features).numpy()
    expected = {}
    for kind, index in (("bruteforce", bf), ("scann", sc)):
        scores, ids = index.search(queries, K)
        exclude = np.array(pad([[r[0], r[2]] for r in ids], W))
        ex_scores, ex_ids = index.search_with_exclusions(queries, exclude, K)
        expected[kind] = dict(scores=scores, ids=ids, exclude=exclude, ex_scores=ex_scores,
                              ex_ids=ex_ids)
    return dict(base=base, paths=paths, expected=expected, bf=bf, sc=sc, query_tower=query_tower)


@pytest.fixture(scope="module")
def bruteforce_loaded(exported):
    """The BruteForce export loaded once in this process through its model dir (the client
    resolves the newest version); each load costs about a second."""
    return load_export(exported["paths"]["bruteforce"].parent)


RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    # TF Serving has no Keras: the exports must load and run without one (and TensorFlow starts
    # 2-3 s sooner when it cannot pre-import Keras).
    sys.modules["keras"] = sys.modules["tf_keras"] = None
    import numpy as np
    import tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    out = {}
    for kind in ("bruteforce", "scann"):
        if kind == "scann":
            import scann  # the ScaNN export needs its custom ops registered
        loaded = tf.saved_model.load(spec["paths"][kind])
        if kind == "bruteforce":
            out["scann_imported_for_bruteforce"] = "scann" in sys.modules
        result = {}
        for sig in ("serving_default", "recommend_with_exclusions"):
            fn = loaded.signatures[sig]
            args = dict(user_id=tf.constant(spec["users"]), history=tf.constant(spec["history"]))
            if sig != "serving_default":
                args["exclude_item_ids"] = tf.constant(spec["exclude"][kind])
            res = fn(**args)
            result[sig] = {
                "ids": [[b.decode() for b in row] for row in res["item_ids"].numpy().tolist()],
                "scores": res["scores"].numpy().tolist(),
                "dtypes": [res["item_ids"].dtype.name, res["scores"].dtype.name],
                "inputs": sorted(fn.structured_input_signature[1]),
                "outputs": sorted(fn.structured_outputs),
            }
        empty = loaded.signatures["serving_default"](
            user_id=tf.constant(["u1", "nobody"]), history=tf.zeros([2, 0], tf.string))
        result["empty_width"] = {
            "ids": [[b.decode() for b in r] for r in empty["item_ids"].numpy().tolist()],
            "scores": empty["scores"].numpy().tolist()}
        out[kind] = result
    out["keras_legacy_env"] = __import__("os").environ.get("TF_USE_LEGACY_KERAS")
    json.dump(out, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def reloaded(exported, tmp_path_factory):
    """Runs both exports in ONE fresh interpreter (TensorFlow start-up dominates): the
    BruteForce export is loaded and called before scann is imported."""
    work = tmp_path_factory.mktemp("reload")
    spec = {"paths": {k: str(v) for k, v in exported["paths"].items()},
            "users": CALL_USERS, "history": CALL_HISTORY,
            "exclude": {k: v["exclude"].tolist() for k, v in exported["expected"].items()}}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "reload.py").write_text(RELOAD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, str(work / "reload.py"), str(work / "spec.json"),
                           str(work / "out.json")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bruteforce", "scann"])
def test_export_reloads_in_fresh_process_and_matches_in_memory(kind, exported, reloaded):
    got, want = reloaded[kind], exported["expected"][kind]
    assert reloaded["keras_legacy_env"] is None  # plain tf.saved_model.load, no Keras needed
    for sig in ("serving_default", "recommend_with_exclusions"):
        assert got[sig]["dtypes"] == ["string", "float32"]
        assert got[sig]["outputs"] == ["item_ids", "scores"]
        assert np.array(got[sig]["ids"]).shape == (4, K)
    assert got["serving_default"]["inputs"] == ["history", "user_id"]
    assert got["recommend_with_exclusions"]["inputs"] == ["exclude_item_ids", "history", "user_id"]
    assert got["serving_default"]["ids"] == want["ids"].tolist()
    np.testing.assert_allclose(got["serving_default"]["scores"], want["scores"],
                               rtol=1e-5, atol=1e-6)
    assert got["recommend_with_exclusions"]["ids"] == want["ex_ids"].tolist()
    np.testing.assert_allclose(got["recommend_with_exclusions"]["scores"], want["ex_scores"],
                               rtol=1e-5, atol=1e-6)
    for row, excluded in zip(got["recommend_with_exclusions"]["ids"], want["exclude"]):
        assert not set(row) & (set(excluded) - {""})
        assert "" not in row and set(row) <= set(ITEMS)
    # Unknown users and empty histories (padded or zero-width) still give k real items.
    for rows, scores in ((got["serving_default"]["ids"], got["serving_default"]["scores"]),
                         (got["empty_width"]["ids"], got["empty_width"]["scores"])):
        assert all(len(set(r)) == K and set(r) <= set(ITEMS) for r in rows)
        assert np.isfinite(scores).all()


@pytest.mark.slow
def test_bruteforce_export_needs_no_scann(reloaded):
    assert reloaded["scann_imported_for_bruteforce"] is False


def graph_ops(version_dir):
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    graph = sm.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    return ops


def test_layout_metadata_and_scann_ops(exported):
    for kind, path in exported["paths"].items():
        assert path.parent.name == f"retrieval_{kind}" and path.name == "1"
        assert (path / "saved_model.pb").exists() and (path / "variables").is_dir()
        top = json.loads((path / "metadata.json").read_text())
        assert top == json.loads((path / "assets.extra" / "metadata.json").read_text())
        # Any exclusion width is accepted: the metadata declares none.
        assert top["k"] == K and top["exclusion_width"] is None and top["embedding_dim"] == DIM
        assert "most recent last" in top["input_order"]["history"]
        assert top["index_type"] == kind and top["num_candidates"] == len(ITEMS)
        assert top["vocab_sizes"] == {"user_id": 31, "item_id": 302}
        assert top["versions"]["tensorflow"] == tf.__version__
        assert top["versions"]["tensorflow_recommenders"] == "0.7.7"
        assert top["requires_scann_ops"] is (kind == "scann")
        scann_ops = {op for op in graph_ops(path) if op.startswith("Scann")}
        assert bool(scann_ops) is (kind == "scann"), scann_ops
    assert "import scann" in json.loads(
        (exported["paths"]["scann"] / "metadata.json").read_text())["serving_note"]
    assert exported["expected"]["scann"]["ids"].shape == (4, K)


def test_warmup_file_holds_predict_requests_for_both_signatures(exported, bruteforce_loaded):
    path = exported["paths"]["bruteforce"] / "assets.extra" / "tf_serving_warmup_requests"
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log.predict_log.request)
    assert [r.model_spec.signature_name for r in logs] == ["serving_default",
                                                           "recommend_with_exclusions"]
    assert all(r.model_spec.name == "retrieval_bruteforce" for r in logs)
    excl = tf.make_ndarray(logs[1].inputs["exclude_item_ids"])
    assert excl.shape == (2, W) and excl[0, 0] == b"i0" and excl[1].tolist() == [b""] * W
    # Replay them the way TF Serving does at load: each must be a valid call of its signature.
    loaded = bruteforce_loaded
    for request in logs:
        inputs = {name: tf.constant(tf.make_ndarray(t)) for name, t in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert out["item_ids"].shape == (2, K)
    assert b"i0" not in out["item_ids"].numpy()[0]  # the last request excludes i0 for row 0


def test_versions_are_atomic_and_never_overwritten(exported, tmp_path, monkeypatch):
    bf, tower = exported["bf"], exported["query_tower"]
    first = export_retrieval(tower, bf, base_dir=tmp_path, name="retrieval_bruteforce", k=K,
                             exclusion_width=W)
    first_pb = (first / "saved_model.pb").read_bytes()
    second = export_retrieval(tower, bf, base_dir=tmp_path, k=K, exclusion_width=W)
    assert (first.name, second.name) == ("1", "2")
    assert (first / "saved_model.pb").read_bytes() == first_pb

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    # The failure hits after the SavedModel itself has been written into the temp dir.
    monkeypatch.setattr(export_module, "_write_warmup", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        export_retrieval(tower, bf, base_dir=tmp_path, k=K, exclusion_width=W)
    assert sorted(p.name for p in (tmp_path / "retrieval_bruteforce").iterdir()) == ["1", "2"]


def test_export_rejects_bad_requests_clearly(exported, tmp_path):
    bf, sc, tower = exported["bf"], exported["sc"], exported["query_tower"]
    with pytest.raises(ValueError, match="exceeds this ScaNN index's num_reordering_candidates"):
        export_retrieval(tower, sc, base_dir=tmp_path, k=51)
    with pytest.raises(ValueError, match="larger than the number of candidates"):
        export_retrieval(tower, bf, base_dir=tmp_path, k=301)
    with pytest.raises(ValueError, match="written by export_retrieval itself"):
        export_retrieval(tower, bf, base_dir=tmp_path, metadata={"k": 3})
    wrong_dim = tf.keras.Sequential([tf.keras.layers.Lambda(
        lambda f: tf.zeros([tf.shape(f["user_id"])[0], DIM + 1]))])
    with pytest.raises(ValueError, match=r"share dim and dtype"):
        export_retrieval(wrong_dim, bf, base_dir=tmp_path)
    assert not (tmp_path / "retrieval_bruteforce").exists() or not any(
        (tmp_path / "retrieval_bruteforce").iterdir())


def test_client_requests_and_in_process_load(exported, bruteforce_loaded):
    body = build_rest_request(["u1", "u2"], [["i1", "i2", "i3"], []])
    assert body == {"signature_name": "serving_default", "instances": [
        {"user_id": "u1", "history": ["i1", "i2", "i3"]},
        {"user_id": "u2", "history": ["", "", ""]}]}
    # Left padding keeps the most recent id last, the order the models read.
    assert build_rest_request(["u1", "u2"], [["i1", "i2"], ["i3"]])["instances"][1] == \
        {"user_id": "u2", "history": ["", "i3"]}
    body = build_rest_request("u1", [], exclude_item_ids=["i9"], exclusion_width=W, columnar=True)
    assert body == {"signature_name": "recommend_with_exclusions", "inputs": {
        "user_id": ["u1"], "history": [[""]], "exclude_item_ids": [["", "", "i9"]]}}
    with pytest.raises(ValueError, match="exclude_item_ids row 0 has 4 ids but the width is 3"):
        build_rest_request(["u1"], [[]], exclude_item_ids=[["a", "b", "c", "d"]], exclusion_width=W)
    assert rest_predict_url("retrieval_bruteforce", version=2) == \
        "http://localhost:8501/v1/models/retrieval_bruteforce/versions/2:predict"
    request = build_grpc_request("retrieval_bruteforce", ["u1"], [["i1"]], [["i2"]],
                                 exclusion_width=W, version=1)
    assert request.model_spec.signature_name == "recommend_with_exclusions"
    assert tf.make_ndarray(request.inputs["exclude_item_ids"]).tolist() == [[b"", b"", b"i2"]]

    model = bruteforce_loaded
    assert model.path == exported["paths"]["bruteforce"]  # model dir -> latest version
    want = exported["expected"]["bruteforce"]
    out = model(CALL_USERS, [[h for h in row if h] for row in CALL_HISTORY])
    assert out["item_ids"].tolist() == want["ids"].tolist()
    exclude = [[e for e in r if e] for r in want["exclude"]]
    out = model(CALL_USERS, CALL_HISTORY, exclude_item_ids=exclude)
    assert out["item_ids"].tolist() == want["ex_ids"].tolist()


def test_stale_temp_dirs_of_killed_exports_are_removed_by_the_next_export(exported, tmp_path):
    import os
    import subprocess

    bf, tower = exported["bf"], exported["query_tower"]
    model_dir = tmp_path / "retrieval_bruteforce"
    model_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    host = export_module.host_tag()
    prefix = export_module.TMP_PREFIX
    killed = model_dir / f"{prefix}{host}-{dead.pid}-{'a' * 32}"
    live = model_dir / f"{prefix}{host}-{os.getpid()}-{'b' * 32}"
    old = model_dir / f"{prefix}{'c' * 32}"  # an older name: only its age tells
    for path in (killed, live, old):
        (path / "variables").mkdir(parents=True)
    os.utime(old, (0, 0))
    assert sorted(export_module.stale_temp_dirs(model_dir)) == sorted([killed, old])
    export_retrieval(tower, bf, base_dir=tmp_path, k=K, exclusion_width=W)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(["1", live.name])
