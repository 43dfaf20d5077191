"""End-to-end cascade on the tiny synthetic dataset: fit, stage invariants, learning, export.

One module-scoped fit (~1 min on 2 cores) feeds every test. The exports are reloaded in a
fresh process and must reproduce the in-process cascade exactly (BruteForce retrieval, so the
only difference could be the export itself).
"""
import copy
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401

from recommenders_tf.cascade.evaluate import diversity_curve, stage_metrics
from recommenders_tf.cascade.fit import CascadeConfig, fit_cascade
from recommenders_tf.data import load_dataset, temporal_split
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.evaluation.protocol import TopKEvaluator, genre_features
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.models.ranking import RankingConfig
from recommenders_tf.models.reranking import RerankerConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

TINY = CascadeConfig(
    retrieval_k=60, ranking_k=20, k=10,
    retrieval=dict(embedding_dim=16, id_embedding_dim=16, feature_embedding_dim=8,
                   hidden_dims=(), history_len=10, temperature=0.1, learning_rate=0.01,
                   batch_size=128, epochs=4, patience=1,
                   # One searched field, so the fixture's fit runs the search and its twins
                   # (which must repeat the chosen settings) cheaply.
                   search={"history_len": (10, 5)}),
    ranking=RankingConfig(loss="softmax", id_features=False, num_cross_layers=1,
                          deep_dims=(8,), din_units=0, embedding_dim=8, history_len=10,
                          learning_rate=0.01, batch_size=16, epochs=6, patience=2, verbose=0),
    reranker=RerankerConfig(num_layers=1, model_dim=8, ff_dim=16, max_list_size=20,
                            epochs=3, patience=1, verbose=0),
    # Both caps bind on synthetic-tiny's 108 validation users, so the fixture's fit runs the
    # sampled path that bounds these stages at scale.
    neighbors=10, cross_fit_folds=2, max_ranker_users=90, max_rerank_lists=60)


def _topic_text(data):
    """Stand-in for LM vectors: a bag of the item text's words (the synthetic text is made
    of its topics), so the text features carry the real signal without loading MiniLM."""
    words = sorted({w for t in data.items["text"] for w in str(t).lower().split()})
    index = {w: j for j, w in enumerate(words)}
    vectors = np.zeros((len(data.items), len(words)), np.float32)
    for r, t in enumerate(data.items["text"]):
        for w in str(t).lower().split():
            vectors[r, index[w]] = 1.0
    return ItemVectors(ids=data.items[ITEM_ID].astype(str).tolist(), vectors=vectors,
                       model="bag-of-words", fingerprint="test", text_fields=("text",))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    data = load_dataset("synthetic-tiny")
    split = temporal_split(data.interactions, dataset=data.name)
    run_dir = tmp_path_factory.mktemp("cascade")
    cascade = fit_cascade(split.train, TINY, run_dir, items=data.items,
                          text_vectors=_topic_text(data), log=lambda *_: None)
    evaluator = TopKEvaluator(split.train, split.test, ks=(10,),
                              item_features=genre_features(data.items))
    stages = cascade.run(evaluator.user_ids)
    return data, split, cascade, evaluator, stages, run_dir


def test_stage_lists_are_nested_and_clean(fitted):
    data, split, cascade, evaluator, stages, _ = fitted
    assert stages.retrieval_ids.shape == (len(evaluator.user_ids), 60)
    assert stages.ranking_ids.shape[1] == 20 and stages.final_ids.shape[1] == 10
    seen = split.train.groupby(split.train[USER_ID].astype(str))[ITEM_ID].agg(
        lambda s: set(s.astype(str)))
    for r, user in enumerate(stages.user_ids):
        final = [i for i in stages.final_ids[r] if i]
        assert len(final) == len(set(final)) == 10
        assert not set(final) & seen.get(user, set()), "a train item was recommended"
        assert set(final) <= set(stages.ranking_ids[r]) <= set(stages.retrieval_ids[r])
        # the ranker's list is its own order of retrieval candidates, best first
        assert np.all(np.diff(stages.ranking_scores[r][np.isfinite(stages.ranking_scores[r])])
                      <= 1e-6)
    ranks = stages.stage_rank("ranking", stages.final_ids)
    assert ranks.min() >= 1 and ranks.max() <= 20


def test_cascade_learns_beyond_popularity(fitted):
    data, split, cascade, evaluator, stages, _ = fitted
    rows = stage_metrics(stages, evaluator)
    pop = split.train[ITEM_ID].astype(str).value_counts().reindex(evaluator.item_ids).fillna(0)
    popular = evaluator.evaluate(lambda users: np.tile(pop.to_numpy(float),
                                                       (len(users), 1))).metrics
    assert rows["final"]["ndcg@10"] > 1.2 * popular["ndcg@10"], (rows, popular)
    assert rows["ranking"]["ndcg@10"] > 1.2 * popular["ndcg@10"]
    report = cascade.report
    assert report["ranking_fits"]["ranking"]["lists"] > 0
    assert report["reranking"]["lists"] > 0


def test_ranker_and_cross_fitting_lists_are_seeded_samples_that_are_reported(fitted):
    _, split, cascade, _, _, _ = fitted
    report = cascade.report
    users = report["ranking_lists"]["users_sample"]
    assert users == {"sampled": 90, "of": 108, "seed": 0}
    assert report["ranking_lists"]["users"] == 90
    crossed = report["rerank_lists_sample"]
    fits = report["ranking_fits"]
    served = fits["ranking"]["lists"] + fits["ranking"]["held_out"]
    # the serving ranker sees every sampled user's list with a positive, the cross-fitting a
    # sample of those lists: each fold ranker trains on the other fold's share of it
    assert crossed["of"] == served and crossed["sampled"] == 60 < served
    assert sum(fits[f"ranking_fold{f}"]["lists"] + fits[f"ranking_fold{f}"]["held_out"]
               for f in range(2)) == 60
    # the re-ranker learns from the 60 cross-fitted lists' out-of-fold scores
    assert report["reranking"]["lists"] + report["reranking"]["held_out"] == 60


def test_mmr_raises_diversity_monotonically_at_the_extremes(fitted):
    _, _, cascade, evaluator, stages, _ = fitted
    curve = diversity_curve(cascade, stages, evaluator, "mmr", (1.0, 0.0))
    full, diverse = curve
    base = stage_metrics(stages, evaluator)["final"]
    assert full["ndcg@10"] == pytest.approx(base["ndcg@10"])  # lambda 1 = no diversity
    assert diverse["diversity@10"] > full["diversity@10"]


# One fresh process (TensorFlow and ScaNN's ops only, no recommenders_tf) loads every export
# once and answers every request the export tests below check: a process start and a model
# load cost seconds each, the requests milliseconds.
_FRESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import scann  # the ScaNN export's ops; the BruteForce ones need none
    spec = json.load(open(sys.argv[1]))
    loaded, out = {}, {}
    for name, call in spec.items():
        if call["path"] not in loaded:
            loaded[call["path"]] = tf.saved_model.load(call["path"])
        fn = loaded[call["path"]].signatures[call.get("signature", "recommend_with_exclusions")]
        res = fn(**{k: tf.constant(v, tf.string) for k, v in call["args"].items()})
        out[name] = {k: (v.numpy().astype(str).tolist() if v.dtype == tf.string
                         else v.numpy().tolist()) for k, v in res.items()}
    out["recommenders_tf_imported"] = "recommenders_tf" in sys.modules
    json.dump(out, open(sys.argv[2], "w"))
""")


def _run_fresh(calls, folder: Path):
    (folder / "spec.json").write_text(json.dumps(calls))
    proc = subprocess.run([sys.executable, "-c", _FRESH_SCRIPT, str(folder / "spec.json"),
                           str(folder / "out.json")], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((folder / "out.json").read_text())
    assert out.pop("recommenders_tf_imported") is False
    return out


@pytest.fixture(scope="module")
def cascade_exports(fitted, tmp_path_factory):
    """Both cascade exports of the fitted tiny cascade, written once for the export tests."""
    from recommenders_tf.serving.cascade_export import export_cascade

    cascade = fitted[2]
    base = tmp_path_factory.mktemp("cascade_models")
    return base, {kind: export_cascade(cascade, base, kind=kind, log=lambda *_: None)
                  for kind in ("bruteforce", "scann")}


@pytest.fixture(scope="module")
def diverse(fitted, tmp_path_factory):
    """The same cascade with MMR at lambda 0.3 in its served path: evaluated and exported."""
    from recommenders_tf.serving.cascade_export import export_cascade

    _, _, cascade, evaluator, _, _ = fitted
    diverse = copy.copy(cascade)
    diverse.config = dataclasses.replace(cascade.config, diversity="mmr", diversity_lambda=0.3)
    diverse._graphs = {}
    stages = diverse.run(evaluator.user_ids)
    path = export_cascade(diverse, tmp_path_factory.mktemp("diverse"), kind="bruteforce",
                          log=lambda *_: None)
    return diverse, stages, path


def _exclusions(split, users):
    """Each user's train items, "" padded: what `Cascade.run` excludes by default."""
    seen = split.train.groupby(split.train[USER_ID].astype(str))[ITEM_ID].agg(
        lambda s: sorted(set(s.astype(str))))
    width = max(len(seen.get(u, [])) for u in users)
    return [(seen.get(u, []) + [""] * width)[:width] for u in users]


def _evaluated_request(cascade, split, stages):
    users = list(stages.user_ids)
    return {"user_id": users, "history": cascade.histories_for(users).astype(str).tolist(),
            "exclude_item_ids": _exclusions(split, users)}


@pytest.fixture(scope="module")
def fresh(fitted, cascade_exports, diverse, tmp_path_factory):
    """Every export test's requests answered by the exports reloaded in one fresh process."""
    _, split, cascade, _, stages, _ = fitted
    paths = {kind: str(path) for kind, path in cascade_exports[1].items()}
    hist = cascade.histories_for(stages.user_ids[:1]).astype(str).tolist()[0]
    cold_history = [h for h in hist if h][-3:]
    scann_users = list(stages.user_ids[:4])
    calls = {
        "bruteforce/evaluated": {"path": paths["bruteforce"],
                                 "args": _evaluated_request(cascade, split, stages)},
        "bruteforce/unknown": {"path": paths["bruteforce"], "args": {
            "user_id": ["__nobody__", "__nobody__"],
            "history": [([""] * len(hist) + cold_history)[-len(hist):], [""] * len(hist)],
            "exclude_item_ids": [[""], [""]]}},
        "scann/four_users": {"path": paths["scann"], "args": {
            "user_id": scann_users,
            "history": cascade.histories_for(scann_users).astype(str).tolist(),
            "exclude_item_ids": [[""]] * 4}},
        "diverse/evaluated": {"path": str(diverse[2]),
                              "args": _evaluated_request(diverse[0], split, diverse[1])},
    }
    cases = _padding_cases(cascade, list(stages.user_ids[:2]))
    for kind, path in paths.items():
        for case, args in cases.items():
            calls[f"{kind}/padding/{case}"] = {"path": path, "args": args}
    calls.update(_wide_exclusion_calls(split, cascade, stages, paths))
    out = _run_fresh(calls, tmp_path_factory.mktemp("fresh"))
    out["cold_history"], out["requests"] = cold_history, calls
    return out


def _assert_answers_are_the_evaluated_lists(out, stages):
    """Every evaluated user's final list (the one the P1 metrics judge) is the export's
    answer to the same request."""
    np.testing.assert_array_equal(np.array(out["item_ids"]), stages.final_ids.astype(str))
    np.testing.assert_allclose(np.array(out["scores"]), stages.final_scores, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(np.array(out["retrieval_rank"]),
                                  stages.stage_rank("retrieval", stages.final_ids))
    assert out["source"] == list(stages.sources)


def test_bruteforce_export_answers_are_the_evaluated_lists(fitted, cascade_exports, fresh):
    data, split, cascade, evaluator, stages, _ = fitted
    path = cascade_exports[1]["bruteforce"]
    assert path.name == "1" and path.parent.name == "recommender_bruteforce"
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["kind"] == "cascade" and not meta["requires_scann_ops"]
    assert (path / "assets.extra" / "tf_serving_warmup_requests").exists()
    _assert_answers_are_the_evaluated_lists(fresh["bruteforce/evaluated"], stages)

    out = fresh["bruteforce/unknown"]
    assert out["source"] == ["fallback"] * 2
    # Unknown user, no history: the most popular train items, in order.
    popular = split.train[ITEM_ID].astype(str).value_counts()
    top = popular[popular >= popular.iloc[9]].index
    assert set(out["item_ids"][1]) <= set(top)
    # Unknown user with a history: that history is never recommended back.
    assert not set(out["item_ids"][0]) & set(fresh["cold_history"])


def _constant_shapes(saved_model_pb: Path):
    """Shapes of every Const node in a SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(saved_model_pb.read_bytes())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return [tuple(d.size for d in n.attr["value"].tensor.tensor_shape.dim)
            for n in nodes if n.op == "Const"]


def test_catalogue_sized_tables_are_saved_as_variables_not_graph_constants(fitted,
                                                                           cascade_exports):
    """A constant is copied into saved_model.pb, which cannot exceed 2 GB (at 200K items the
    proto was 671 MB); the tables must be in the variables files instead. One value per item
    may stay (the id lookups' vocabularies, popularity): megabytes at a million items."""
    cascade = fitted[2]
    n = len(cascade.catalog)
    for kind, path in cascade_exports[1].items():
        big = [s for s in _constant_shapes(path / "saved_model.pb")
               if len(s) > 1 and s[0] >= n]
        assert not big, (kind, big)
    graph = cascade.graph(None)
    # The fallback reads the ranker context's text table, not a second copy of it.
    assert graph.fallback_text is cascade.context.text is not None


def test_with_diversity_on_the_evaluated_lists_are_the_exports_answers(fitted, diverse, fresh):
    """MMR in the served path: `Cascade.run` and the export compute the same lists, and the
    diversity really re-orders them (otherwise this would only repeat the test above)."""
    _, _, cascade, evaluator, stages, _ = fitted
    _, diverse_stages, _ = diverse
    assert (diverse_stages.final_ids != stages.final_ids).any(axis=1).mean() > 0.3
    np.testing.assert_array_equal(diverse_stages.rerank_ids, stages.rerank_ids)
    _assert_answers_are_the_evaluated_lists(fresh["diverse/evaluated"], diverse_stages)
    # The diversity curve at the same lambda is the same computation's tail.
    curve = diversity_curve(cascade, stages, evaluator, "mmr", (0.3,))[0]
    assert curve["ndcg@10"] == pytest.approx(
        stage_metrics(diverse_stages, evaluator)["final"]["ndcg@10"])


def test_scann_export_loads_with_scann_in_a_fresh_process(fitted, cascade_exports, fresh):
    _, _, _, _, stages, _ = fitted
    meta = json.loads((cascade_exports[1]["scann"] / "metadata.json").read_text())
    assert meta["requires_scann_ops"] and meta["model_name"] == "recommender"
    got = np.array(fresh["scann/four_users"]["item_ids"])
    assert got.shape == (4, 10) and (got != "").all()
    # ScaNN is approximate: most of the exact cascade's final items come back.
    overlap = np.mean([len(set(got[r]) & set(stages.final_ids[r])) / 10 for r in range(4)])
    assert overlap >= 0.6


def _padding_cases(cascade, users):
    """Row 0 of every case is the same request of users[0], padded differently; users[1] has
    the longest history and is batched with it in the last cases."""
    hists = [[h for h in row if h] for row in cascade.histories_for(users).astype(str).tolist()]
    short, long_ = hists[0][-4:], hists[1]
    width = len(long_) + 3
    middle = [x for h in short for x in (h, "")]
    excl = ["", short[0], ""]
    cases = {
        "alone": ([users[0]], [short]),
        "left": ([users[0]], [[""] * 5 + short]),
        "right": ([users[0]], [short + [""] * 5]),
        "middle": ([users[0]], [[""] + middle]),
        "batched_right": (users[:2], [short + [""] * (width - len(short)),
                                      long_ + [""] * (width - len(long_))]),
        "batched_left": (users[:2], [[""] * (width - len(short)) + short,
                                     [""] * (width - len(long_)) + long_]),
        "long_alone": ([users[1]], [long_]),
        "unknown_alone": (["__nobody__"], [short]),
        "unknown_batched_right": (["__nobody__", users[1]],
                                  [short + [""] * (width - len(short)),
                                   long_ + [""] * (width - len(long_))]),
    }
    return {name: {"user_id": u, "history": h, "exclude_item_ids": [excl] * len(u)}
            for name, (u, h) in cases.items()}


def _check_cascade_padding(results):
    def row(case, r=0):
        return {k: np.asarray(v)[r] for k, v in results[case].items()}

    def same(a, b, what):
        for key in b:
            if np.asarray(b[key]).dtype.kind == "f":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=what)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=what)

    for case in ("left", "right", "middle", "batched_right", "batched_left"):
        same(row(case), row("alone"), case)
    for case in ("batched_right", "batched_left"):
        same(row(case, 1), row("long_alone"), "long user " + case)
    same(row("unknown_batched_right"), row("unknown_alone"), "unknown user batched")
    same(row("unknown_batched_right", 1), row("long_alone"), "long user beside an unknown one")
    assert results["alone"]["source"] == ["cascade"]
    assert results["unknown_alone"]["source"] == ["fallback"]


def test_cascade_answers_do_not_depend_on_padding(fitted, cascade_exports, fresh):
    """Fresh process (no recommenders_tf), then REST and gRPC of the loopback test server."""
    from recommenders_tf.serving.client import GrpcClient, RestClient
    from recommenders_tf.testing.local_server import LocalModelServer

    _, _, cascade, _, stages, _ = fitted
    base, paths = cascade_exports
    cases = _padding_cases(cascade, list(stages.user_ids[:2]))
    for kind in paths:
        _check_cascade_padding({case: fresh[f"{kind}/padding/{case}"] for case in cases})

    with LocalModelServer(base) as server:
        rest = RestClient("127.0.0.1", server.rest_port)
        grpc_client = GrpcClient(server.grpc_target)
        try:
            for kind, path in paths.items():
                model = path.parent.name
                for transport in (rest, grpc_client):
                    got = {}
                    for case, args in cases.items():
                        out = transport.predict(model, args,
                                                signature_name="recommend_with_exclusions")
                        got[case] = {k: (np.asarray(v).astype(str) if np.asarray(v).dtype.kind
                                         in "OSU" else np.asarray(v)) for k, v in out.items()}
                    _check_cascade_padding(got)
                    np.testing.assert_array_equal(got["alone"]["item_ids"],
                                                  fresh[f"{kind}/padding/alone"]["item_ids"])
        finally:
            rest.close()
            grpc_client.close()


def _wide_exclusion_calls(split, cascade, stages, paths):
    """Exclusions as wide as the catalogue minus k, for a known and an unknown user."""
    catalog = [str(i) for i in cascade.catalog]
    user = str(stages.user_ids[0])
    hist = [h for h in cascade.histories_for([user]).astype(str).tolist()[0] if h]
    seen = set(split.train.loc[split.train[USER_ID].astype(str) == user, ITEM_ID].astype(str))
    pool = list(dict.fromkeys(i for i in stages.retrieval_ids[0].tolist() + catalog
                              if i and i not in seen))
    calls = {}
    for kind, path in paths.items():
        for width in (3, 60, len(catalog) - len(seen) - 10):
            calls[f"{kind}/exclude/{width}"] = {"path": path, "args": {
                "user_id": [user, "__nobody__"], "history": [hist, hist],
                "exclude_item_ids": [pool[:width], pool[:width]]}}
    return calls


def test_cascade_exports_fill_k_slots_for_any_exclusion_width(fitted, fresh):
    """Exclusions as wide as the catalogue minus k still leave k real items, in both exports,
    for a known and an unknown user (the ScaNN search width is far smaller than that)."""
    names = [name for name in fresh if "/exclude/" in name]
    assert len(names) == 6
    for name in names:
        request = fresh["requests"][name]["args"]
        ids = np.array(fresh[name]["item_ids"])
        assert (ids != "").all(), (name, ids)
        assert not set(ids.ravel()) & (set(request["exclude_item_ids"][0])
                                       | set(request["history"][0])), name


def test_a_run_folder_of_another_fit_is_refused(fitted):
    _, split, _, _, _, run_dir = fitted
    from recommenders_tf.data.splits import frame_sha256
    from recommenders_tf.runs import claim_run_dir

    # The claim fit_cascade wrote: the same config and data are accepted (the fit resumes).
    claim_run_dir(run_dir, TINY, data={"train": frame_sha256(split.train)}, what="cascade")
    other = dataclasses.replace(TINY, cross_fit_folds=3)
    with pytest.raises(ValueError, match="another config"):
        fit_cascade(split.train, other, run_dir, log=lambda *_: None)
    with pytest.raises(ValueError, match="another train data"):
        fit_cascade(split.train.iloc[:-1], TINY, run_dir, log=lambda *_: None)


def test_scann_of_an_export_is_tuned_on_a_stated_sample_of_users(fitted):
    """The held-out recall is an exact catalogue search per query: its users are capped."""
    from recommenders_tf.serving.cascade_export import build_cascade_index

    _, split, cascade, _, _, _ = fitted
    n_users = split.train[USER_ID].nunique()
    assert n_users > 40
    index, facts = build_cascade_index(cascade, "scann", cascade.config.retrieval_k,
                                       log=lambda *_: None, max_query_users=40)
    assert facts["tune_queries"] + facts["held_out_queries"] == 40
    assert f"a sample of 40 of {n_users} users (seed {cascade.config.seed})" in facts["queries"]
    _, every = build_cascade_index(cascade, "scann", cascade.config.retrieval_k,
                                   log=lambda *_: None, max_query_users=0)
    assert every["tune_queries"] + every["held_out_queries"] == n_users
    assert f"all {n_users} users" in every["queries"]


def test_a_second_loss_reuses_the_retrieval_fits_and_refits_only_the_ranking(fitted, tmp_path):
    from recommenders_tf.cascade.fit import share_retrieval_fits
    from recommenders_tf.config import ConfigError

    data, split, cascade, _, _, run_dir = fitted
    other = dataclasses.replace(TINY, ranking=dataclasses.replace(TINY.ranking,
                                                                  loss="pairwise_logistic"))
    share_retrieval_fits(run_dir, tmp_path / "pairwise", other, split.train)
    second = fit_cascade(split.train, other, tmp_path / "pairwise", items=data.items,
                         text_vectors=_topic_text(data), log=lambda *_: None)
    # The retrieval stage is the first fit's, loaded from its checkpoints, not retrained.
    assert set(second.retrieval.epochs_this_session.values()) == {0}
    assert sum(cascade.retrieval.epochs_this_session.values()) > 0
    np.testing.assert_array_equal(second.retrieval.candidate_embeddings(second.catalog),
                                  cascade.retrieval.candidate_embeddings(cascade.catalog))
    assert second.report["retrieval"]["epochs"] == cascade.report["retrieval"]["epochs"]
    assert second.ranker.loss_spec.key == "pairwise_logistic"
    assert (tmp_path / "pairwise" / "ranking").is_dir() and not (
        tmp_path / "pairwise" / "ranking").is_symlink()
    # Fits of another retrieval config or other data are not shared.
    changed = dataclasses.replace(TINY, retrieval={**TINY.retrieval, "temperature": 0.5})
    with pytest.raises(ConfigError, match="temperature|retrieval"):
        share_retrieval_fits(run_dir, tmp_path / "x", changed, split.train)
    with pytest.raises(ValueError, match="other train data"):
        share_retrieval_fits(run_dir, tmp_path / "y", other, split.train.iloc[1:])
    with pytest.raises(ValueError, match="no cascade fit"):
        share_retrieval_fits(tmp_path / "nothing", tmp_path / "z", other, split.train)


def test_ranker_lists_from_earlier_cuts_train_one_ranker(fitted, tmp_path):
    """ranker_cuts=2: a second twin on cut 2's train part adds its lists, described by cut 2's
    own tables; the retrieval fits of cut 1 are shared, the served cascade still answers."""
    from recommenders_tf.cascade.fit import share_retrieval_fits
    from recommenders_tf.data.splits import validation_split

    data, split, cascade, evaluator, _, run_dir = fitted
    two = dataclasses.replace(TINY, ranker_cuts=2)
    share_retrieval_fits(run_dir, tmp_path / "cuts", two, split.train)
    second = fit_cascade(split.train, two, tmp_path / "cuts", items=data.items,
                         text_vectors=_topic_text(data), log=lambda *_: None)
    earlier = second.report["ranking_lists"]["earlier_cuts"]
    cut2 = validation_split(validation_split(split.train, seed=0).train, seed=0)
    assert len(earlier) == 1 and 0 < earlier[0] <= min(90, cut2.test["user_id"].nunique())
    assert (tmp_path / "cuts" / "retrieval_early_cut2").is_dir()
    # Held-out lists are cut 1's only; training saw both cuts.
    fits = second.report["ranking_fits"]["ranking"]
    first = cascade.report["ranking_fits"]["ranking"]
    assert fits["held_out"] == first["held_out"]
    assert fits["lists"] == first["lists"] + earlier[0]
    stages = second.run(evaluator.user_ids[:5])
    assert stages.final_ids.shape == (5, 10)
    # Serving computes the context in the graph from all of train, as with one cut.
    assert second.ranker.context_features.popularity.shape == \
        cascade.ranker.context_features.popularity.shape
    with pytest.raises(ValueError, match="ranker_cuts"):
        dataclasses.replace(TINY, ranker_cuts=0)


def test_a_ranker_started_from_the_peer_blend_keeps_what_beats_it_on_held_out_lists(
        fitted, tmp_path):
    """peer_score="als", ranker_start="blend": the ALS peer's fold-in score is a context
    feature computed in graph from full-train tables, the start weight is chosen on the
    training lists, and the served ranker is the trained one only if, cross-fitted, it beat
    that start."""
    from recommenders_tf.cascade.fit import share_retrieval_fits
    from recommenders_tf.cascade.fold_in import choose_als
    from recommenders_tf.cascade.start import START_WEIGHTS
    from recommenders_tf.data.splits import validation_split
    from recommenders_tf.models.candidate_features import RETRIEVAL_SCORE

    data, split, cascade, evaluator, _, run_dir = fitted
    blend = dataclasses.replace(TINY, peer_score="als", ranker_start="blend", ranker_cuts=2)
    share_retrieval_fits(run_dir, tmp_path / "blend", blend, split.train)
    second = fit_cascade(split.train, blend, tmp_path / "blend", items=data.items,
                         text_vectors=_topic_text(data), log=lambda *_: None)
    report = second.report
    assert report["peer_score"]["peer"] == "implicit-ALS"
    layer = second.ranker.context_features
    assert layer.feature_names[-1] == "peer_z"
    for name, fit in report["ranking_fits"].items():
        start = fit["start"]
        assert [w for w, _ in start["curve"]] == [
            "peer alone" if w == float("inf") else w for w in START_WEIGHTS]
        assert start["weight"] == max(start["curve"], key=lambda c: c[1])[0]
        assert set(start["weights"]) <= {"retrieval_z", "peer_z"}
    verdict = report["ranker_start"]
    assert verdict["lists"] == 60  # the cross-fitted sample (max_rerank_lists)
    oof = verdict["out_of_fold_ndcg_10"]
    assert verdict["served"] == ("trained" if oof["trained"] > oof["start"] else "start")
    if verdict["served"] == "start":
        # The served ranker scores its start blend: its output unit is zero.
        assert not second.ranker.scorer.output_layer.kernel.numpy().any()
    # Serving reads the peer refit on all of train with the setting chosen on validation.
    val = validation_split(split.train, seed=0)
    peer = choose_als(val.train, val.test, second.catalog, TINY.max_ranker_users, 0)
    y, p = peer.fold_in_tables(second.catalog)
    np.testing.assert_allclose(layer.fold_y.values.numpy()[1:], y, rtol=1e-5, atol=1e-6)
    # In graph, the feature is the peer's own score of its own users, standardised per list.
    users = evaluator.user_ids[:4]
    hist = second.histories_for(users)
    ids = np.tile(second.catalog[None, :12].astype(str), (len(users), 1))
    feats = layer({"item_id": ids, "history": hist.astype(str),
                   RETRIEVAL_SCORE: np.zeros(ids.shape, np.float32)}).numpy()[..., -1]
    own = np.stack([y[:12] @ p[[list(second.catalog).index(h) for h in row if h]].sum(0)
                    for row in hist])
    own_z = (own - own.mean(1, keepdims=True)) / own.std(1, keepdims=True)
    expected = (own_z - layer.feature_mean.numpy()[-1]) / layer.feature_std.numpy()[-1]
    np.testing.assert_allclose(feats, expected, rtol=1e-3, atol=1e-3)
    assert second.run(users).final_ids.shape == (4, 10)
    with pytest.raises(ValueError, match="ranker_start"):
        dataclasses.replace(TINY, ranker_start="ease")
