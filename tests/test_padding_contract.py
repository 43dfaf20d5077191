"""The serving contract of the retrieval and ranking exports: an answer never depends on where
a client puts the "" padding, and exclusions of any width leave k real items.

Real towers (seeded, untrained: random weights make every history position matter) read the
most recent ids from the right. Each variant of one user's request (alone, left-padded,
right-padded, "" between the ids, batched with a longer history) must give the same ids and
scores, in a fresh process that only loads the SavedModels, and through REST and gRPC of the
loopback test server. The same checks for the cascade exports live in test_cascade.py.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.models.ranking import RankingConfig, build_ranking_model
from recommenders_tf.models.towers import (TowerConfig, build_candidate_tower,
                                           build_item_id_embedding, build_query_tower)
from recommenders_tf.serving.client import GrpcClient, RestClient, build_rest_request, pad_rows
from recommenders_tf.serving.export import export_retrieval
from recommenders_tf.testing.local_server import LocalModelServer
from recommenders_tf.serving.ranking_export import export_ranking

REPO = Path(__file__).resolve().parents[1]
ITEMS = [f"i{i:03d}" for i in range(400)]
USERS = [f"u{i}" for i in range(12)]
K, HISTORY_LEN = 10, 4
HIST = ["i005", "i017", "i230"]  # oldest first, most recent last
LONG = [f"i{i:03d}" for i in range(100, 109)]  # longer than the towers read


def variants(history, long_history, pad=""):
    """{name: (users, histories)}; row 0 is always user u1 with `history`."""
    h = list(history)
    middle = [x for i in h for x in ([i, pad] if i != h[-1] else [i])]
    width = len(long_history)
    return {
        "alone": (["u1"], [h]),
        "left": (["u1"], [[pad] * 3 + h]),
        "right": (["u1"], [h + [pad] * 3]),
        "middle": (["u1"], [[pad] + middle + [pad]]),
        "batched_right": (["u1", "u2"], [h + [pad] * (width - len(h)), list(long_history)]),
        "batched_left": (["u1", "u2"], [[pad] * (width - len(h)) + h, list(long_history)]),
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tf.random.set_seed(7)
    base = tmp_path_factory.mktemp("padding_models")
    config = TowerConfig(embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                         hidden_dims=(), history_len=HISTORY_LEN)
    table = build_item_id_embedding(config, ITEMS)
    query = build_query_tower(config, USERS, item_id_embedding=table)
    candidate = build_candidate_tower(config, item_id_embedding=table)
    embeddings = candidate({"item_id": tf.constant(ITEMS)}).numpy()
    brute = build_index("bruteforce", query, ITEMS, embeddings, k=K)
    scann = build_index("scann", query, ITEMS, embeddings, k=K, scann_params=ScannParams(
        num_leaves=20, num_leaves_to_search=4, num_reordering_candidates=40))
    meta = {"query_history_len": HISTORY_LEN}
    paths = {"retrieval_bruteforce": export_retrieval(query, brute, base, k=K, metadata=meta,
                                                      exclusion_width=3),
             "retrieval_scann": export_retrieval(query, scann, base, k=K, metadata=meta,
                                                 exclusion_width=3)}
    ranking = build_ranking_model(
        RankingConfig(loss="mse", embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                      deep_dims=(8,), din_units=4, history_len=HISTORY_LEN, seed=3),
        USERS, ITEMS, label_mean=3.5)
    paths["ranking"] = export_ranking(ranking, base)
    return dict(base=base, paths=paths, brute=brute, scann=scann, query=query)


@pytest.fixture(scope="module")
def loaded(exports):
    """Both retrieval exports loaded once in this process (each load costs about a second)."""
    from recommenders_tf.serving.client import load_export

    return {kind: load_export(exports["paths"][kind])
            for kind in ("retrieval_bruteforce", "retrieval_scann")}


FRESH = textwrap.dedent("""
    import json, sys
    # TF Serving has no Keras: the exports must load and run without one (and TensorFlow starts
    # 2-3 s sooner when it cannot pre-import Keras).
    sys.modules["keras"] = sys.modules["tf_keras"] = None
    import tensorflow as tf
    spec = json.load(open(sys.argv[1]))
    import scann  # the ScaNN export needs its ops; the others use stock ops only
    out = {}
    for name, path in spec["paths"].items():
        loaded = tf.saved_model.load(path)
        out[name] = {}
        for case, args in spec["cases"][name].items():
            fn = loaded.signatures[args.pop("signature")]
            res = fn(**{k: tf.constant(v, dtype=tf.string) for k, v in args.items()})
            out[name][case] = {k: (v.numpy().astype(str).tolist() if v.dtype == tf.string
                                   else v.numpy().tolist()) for k, v in res.items()}
    out["recommenders_tf_imported"] = "recommenders_tf" in sys.modules
    json.dump(out, open(sys.argv[2], "w"))
""")

CANDIDATES = ["i230", "i005", "i101", "i399", "i042"]


def _cases():
    """{export: {case: inputs}} for every padding variant and signature."""
    cases = {"retrieval_bruteforce": {}, "retrieval_scann": {}, "ranking": {}}
    for name, (users, hist) in variants(HIST, LONG).items():
        for model in ("retrieval_bruteforce", "retrieval_scann"):
            cases[model][name] = {"signature": "serving_default", "user_id": users,
                                  "history": hist}
            cases[model][name + "+excl"] = {
                "signature": "recommend_with_exclusions", "user_id": users, "history": hist,
                "exclude_item_ids": pad_rows([["i005", "i017"]] * len(users))}
        cases["ranking"][name] = {"signature": "serving_default", "user_id": users,
                                  "history": hist, "item_ids": [CANDIDATES] * len(users)}
    # The long-history user alone vs. batched with the short one.
    for model in ("retrieval_bruteforce", "retrieval_scann"):
        cases[model]["long_alone"] = {"signature": "serving_default", "user_id": ["u2"],
                                      "history": [LONG]}
    cases["ranking"]["long_alone"] = {"signature": "serving_default", "user_id": ["u2"],
                                      "history": [LONG], "item_ids": [CANDIDATES]}
    return cases


def _row(result, row=0):
    return {k: np.asarray(v)[row] for k, v in result.items()}


def _assert_same(a, b, what):
    assert sorted(a) == sorted(b), what
    for key in a:
        if np.asarray(a[key]).dtype.kind in "fc":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=what)
        else:
            np.testing.assert_array_equal(np.asarray(a[key]).astype(str),
                                          np.asarray(b[key]).astype(str), err_msg=what)


def _check_padding_invariance(results, model):
    got = results[model]
    for suffix in ("", "+excl") if model != "ranking" else ("",):
        alone = _row(got["alone" + suffix])
        for case in ("left", "right", "middle", "batched_right", "batched_left"):
            _assert_same(_row(got[case + suffix]), alone, f"{model} {case}{suffix} vs alone")
    for case in ("batched_right", "batched_left"):
        _assert_same(_row(got[case], 1), _row(got["long_alone"]), f"{model} long user {case}")


def test_answers_do_not_depend_on_padding_in_a_fresh_process(exports, tmp_path):
    spec = {"paths": {k: str(v) for k, v in exports["paths"].items()}, "cases": _cases()}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "spec.json"),
                           str(tmp_path / "out.json")], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert results.pop("recommenders_tf_imported") is False
    for model in exports["paths"]:
        _check_padding_invariance(results, model)
    # Sanity: the history matters at all (so invariance is not a tower that ignores it).
    brute = results["retrieval_bruteforce"]
    assert brute["alone"]["item_ids"][0] != brute["long_alone"]["item_ids"][0]
    # And the in-process index agrees with the export on the compacted request.
    queries = exports["query"]({"user_id": tf.constant(["u1"]),
                                "history": tf.constant([HIST])})
    _, ids = exports["brute"].search(queries, K)
    assert brute["alone"]["item_ids"][0] == ids[0].tolist()


def test_answers_do_not_depend_on_padding_through_rest_and_grpc(exports):
    with LocalModelServer(exports["base"]) as server:
        rest = RestClient("127.0.0.1", server.rest_port)
        grpc_client = GrpcClient(server.grpc_target)
        try:
            results = {}
            for model, cases in _cases().items():
                results[model] = {}
                for case, args in cases.items():
                    args = dict(args)
                    signature = args.pop("signature")
                    rest_out = rest.predict(model, args, signature_name=signature)
                    grpc_out = grpc_client.predict(model, args, signature_name=signature)
                    _assert_same({k: np.asarray(v).astype(str) if np.asarray(v).dtype.kind in
                                  "OSU" else v for k, v in grpc_out.items()},
                                 {k: np.asarray(v).astype(str) if np.asarray(v).dtype.kind in
                                  "OSU" else v for k, v in rest_out.items()},
                                 f"{model} {case}: REST vs gRPC")
                    results[model][case] = rest_out
        finally:
            rest.close()
            grpc_client.close()
    for model in results:
        _check_padding_invariance(results, model)


def _exact_top(exports, users, history, n):
    queries = exports["query"]({"user_id": tf.constant(users), "history": tf.constant(history)})
    _, ids = exports["brute"].search(queries, n)
    return ids


@pytest.mark.parametrize("width", [50, 60])
def test_scann_never_leaves_a_slot_empty_that_bruteforce_fills(exports, width):
    """Excluding a user's own exact top 50 / 60 used up ScaNN's reordering budget (40) and
    left empty slots; the exact pass over the shortfall fills them as BruteForce does."""
    users = ["u1", "u3", "u5", "unknown"]
    history = pad_rows([HIST, ["i300"], [], LONG])
    exclude = _exact_top(exports, users, history, width)
    queries = exports["query"]({"user_id": tf.constant(users), "history": tf.constant(history)})
    _, brute = exports["brute"].search_with_exclusions(queries, exclude, K)
    _, scann = exports["scann"].search_with_exclusions(queries, exclude, K)
    assert (brute != "").all() and (scann != "").all()
    for r in range(len(users)):
        assert not set(scann[r]) & set(exclude[r]) and not set(brute[r]) & set(exclude[r])


def test_exclusions_of_any_width_return_k_real_items_from_the_exports(exports, loaded):
    users, history = ["u1", "u4"], pad_rows([HIST, []])
    for width in (1, 7, 200, len(ITEMS) - K):
        exclude = _exact_top(exports, users, history, width)
        for kind in ("retrieval_bruteforce", "retrieval_scann"):
            out = loaded[kind](users, history, exclude_item_ids=exclude.tolist())
            ids = out["item_ids"]
            assert ids.shape == (2, K) and (ids != "").all(), (kind, width)
            for r in range(2):
                assert not set(ids[r]) & set(exclude[r]), (kind, width)
    # Everything but 3 items excluded: exactly 3 real items, then empty slots.
    exclude = _exact_top(exports, users, history, len(ITEMS) - 3)
    out = loaded["retrieval_scann"](users, history, exclude_item_ids=exclude.tolist())
    assert ((out["item_ids"] != "").sum(axis=1) == 3).all()
    assert np.isneginf(out["scores"][:, 3:]).all()


def test_client_helpers_pad_on_the_left_and_accept_any_exclusion_width():
    assert pad_rows([["a", "b"], ["c"]]) == [["a", "b"], ["", "c"]]
    body = build_rest_request(["u1"], [["a"]], exclude_item_ids=[["x"] * 120])
    assert len(body["instances"][0]["exclude_item_ids"]) == 120
    with pytest.raises(ValueError, match="row 0 has 3 ids but the width is 2"):
        build_rest_request(["u1"], [[]], exclude_item_ids=[["a", "b", "c"]], exclusion_width=2)


def test_scann_answer_of_each_user_is_the_same_alone_and_in_any_batch(loaded):
    """A batched matmul changes the last bits of a query vector with the batch size, and ScaNN's
    candidate selection is discontinuous, so embedding the batch at once changed some users' top
    10. The ScaNN export embeds one row at a time: every user of a 40-user batch (and of the
    same batch reversed) gets exactly the answer it gets alone."""
    rng = np.random.default_rng(0)
    users = [USERS[i % len(USERS)] for i in range(40)]
    history = pad_rows([list(rng.choice(ITEMS, size=rng.integers(0, 9), replace=False))
                        for _ in users])
    serve = loaded["retrieval_scann"].signatures["serving_default"]

    def call(u, h):
        out = serve(user_id=tf.constant(u), history=tf.constant(h))
        return out["item_ids"].numpy().astype(str), out["scores"].numpy()

    batch_ids, batch_scores = call(users, history)
    reversed_ids, _ = call(users[::-1], history[::-1])
    np.testing.assert_array_equal(reversed_ids[::-1], batch_ids)
    for r in range(len(users)):
        ids, scores = call([users[r]], [[x for x in history[r] if x] or [""]])
        np.testing.assert_array_equal(ids[0], batch_ids[r], err_msg=f"user row {r}")
        np.testing.assert_array_equal(scores[0], batch_scores[r], err_msg=f"user row {r}")
