"""Every stock-op export run the way the C++ TF Serving runs it, against the Python answers.

The model server loads a SavedModel bundle into a TF1 session and runs a signature by the
tensor names in its SignatureDef (and replays the warmup records at load); the other export
tests call the signatures through `tf.saved_model.load`, which runs the same functions as TF2
concrete functions. Here the retrieval BruteForce, ranking, rating and cascade BruteForce
exports are loaded with `tf.compat.v1.saved_model.loader.load` in one fresh process that imports only
TensorFlow (`tf1_session_runner.py`), and every signature runs on real requests: known users
with their histories, an unknown user, empty histories (padded and zero-width), unknown and
padded candidates, exclusions of items the user would otherwise get. The session's outputs
must equal the `tf.saved_model.load` signatures' here (ids and ranks exactly, scores to 1e-5),
and the retrieval and ranking answers also equal the numpy top-k of the towers and the
in-memory ranking model. The ScaNN exports are left out: they need ScaNN's custom ops.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.stages import Cascade, genre_vectors, item_counts
from recommenders_tf.data.schema import ITEM_ID, TIMESTAMP, USER_ID
from recommenders_tf.index import build_index
from recommenders_tf.models.candidate_features import CandidateContext, item_neighbors
from recommenders_tf.models.ranking import RankingConfig, build_ranking_model
from recommenders_tf.models.rating_context import RatingContext, rating_tables
from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender, _Fitted
from recommenders_tf.models.reranking import RerankerConfig, build_reranker
from recommenders_tf.models.rules import BusinessRules
from recommenders_tf.serving.cascade_export import export_cascade
from recommenders_tf.serving.export import export_retrieval
from recommenders_tf.serving.ranking_export import export_ranking
from tiny_retrieval import (ITEM_GENRES, ITEM_TITLES, ITEMS, USERS, GenreCandidateTower,
                            GenreQueryTower, item_features, write_interactions)

pytestmark = pytest.mark.slow
RUNNER = Path(__file__).with_name("tf1_session_runner.py")
K, W, HISTORY = 5, 3, 3

CASE_IDS = [
    "retrieval/serving_default",
    "retrieval/serving_default/zero_width_history",
    "retrieval/recommend_with_exclusions",
    "ranking/serving_default",
    "rating/serving_default",
    "cascade/serving_default",
    "cascade/serving_default/empty_history",
    "cascade/recommend_with_exclusions",
]


def _last_items(interactions: pd.DataFrame, user: str, n: int) -> list:
    rows = interactions[interactions[USER_ID].astype(str) == user].sort_values(TIMESTAMP)
    return rows[ITEM_ID].astype(str).tolist()[-n:]


def _left_pad(rows, width):
    return np.array([[""] * (width - len(r)) + list(r) for r in rows], dtype=str)


def _exclude_top(ids: np.ndarray, counts, width: int) -> np.ndarray:
    """The first `counts[r]` ids of each row of a previous answer, "" padded to `width`."""
    return np.array([list(row[:n]) + [""] * (width - n) for row, n in zip(ids, counts)],
                    dtype=str)


def _untrained_cascade(data, base: Path) -> Cascade:
    """A cascade built from untrained stages over the tiny synthetic data.

    Fitting takes minutes; the graph the export writes (and so what the session has to run)
    does not depend on the weights. Every optional part is switched on so each kind of op
    reaches the session: text and collaborative context features, all re-ranker inputs, the
    user vector, MMR and the category caps (a lookup table the session must initialise).
    """
    train = data.interactions
    catalog = np.unique(train[ITEM_ID].astype(str).to_numpy()).astype(object)
    cfg = CascadeConfig(
        retrieval_k=30, ranking_k=10, k=K,
        retrieval=dict(embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                       hidden_dims=(), history_len=5, search={}),
        ranking=RankingConfig(loss="softmax", id_features=False, num_cross_layers=1,
                              deep_dims=(8,), din_units=0, history_len=5, verbose=0),
        reranker=RerankerConfig(num_layers=1, model_dim=8, ff_dim=16, max_list_size=10,
                                verbose=0),
        neighbors=5, rerank_item_features=("context", "genres", "text", "embedding"),
        rerank_user="embedding", diversity="mmr", diversity_lambda=0.7,
        rules=BusinessRules(category_caps=2))
    rec = TwoTowerRecommender(TwoTowerConfig(seed=0, verbose=0, use_genres=True,
                                             **cfg.retrieval),
                              item_ids=catalog, items=data.items, work_dir=base / "retrieval")
    vocabs = rec._vocabularies(train)
    rec._fitted = _Fitted(rec._build(vocabs), vocabs, rec._histories(train), None)
    text = np.random.default_rng(0).normal(size=(len(catalog), 6)).astype(np.float32)
    context = CandidateContext(catalog, item_counts(train, catalog), text_vectors=text,
                               recent=cfg.recent_items,
                               recent_counts=item_counts(train, catalog, cfg.trend_share),
                               neighbors=item_neighbors(train, catalog, cfg.neighbors),
                               name="candidate_context")
    ranker = build_ranking_model(cfg.ranking, np.unique(train[USER_ID].astype(str)), catalog,
                                 context_features=context)
    item_dim = (context.num_features + genre_vectors(data.items, catalog).shape[1]
                + text.shape[1] + cfg.retrieval["embedding_dim"])
    reranker = build_reranker(cfg.reranker, item_dim, 2, cfg.retrieval["embedding_dim"])
    return Cascade(cfg, rec, ranker, reranker, context, catalog, train, text, data.items, {})


def _call(loaded, signature: str, inputs: dict) -> dict:
    out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
            for k, v in out.items()}


class _SessionProcess:
    """`tf1_session_runner.py` in ONE fresh process (TF start-up dominates), started before
    the exports are written and handed each one as soon as its cases are known, so its
    import and sessions overlap the writing of the next exports."""

    def __init__(self, work: Path):
        self.work = work
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        self.log = work / "runner.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), str(work / "out.npz"), str(work / "report.json")],
                env=env, cwd=work, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                text=True)
        self.deadline = time.monotonic() + 600

    def submit(self, key: str, path: Path, cases: dict) -> None:
        inputs = self.work / f"{key}_inputs.npz"
        np.savez(inputs, **{f"{case}/{name}": value for case, named in cases.items()
                            for name, value in named.items()})
        job = {"export": key, "path": str(path), "inputs": str(inputs),
               "cases": [{"id": case, "signature": case.split("/")[1]} for case in cases]}
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it stopped; `results` shows why

    def results(self) -> dict:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=max(1, self.deadline - time.monotonic()))
        finally:
            self.kill()
        assert self.proc.returncode == 0, self.log.read_text(errors="replace")[-5000:]
        outputs = {}
        with np.load(self.work / "out.npz") as data:
            for name in data.files:
                case, output = name.rsplit("/", 1)
                outputs.setdefault(case, {})[output] = data[name]
        return dict(outputs=outputs,
                    report=json.loads((self.work / "report.json").read_text()))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, synthetic_tiny):
    """The three exports, each case's inputs, the answers of `tf.saved_model.load`, and the
    session process each export went to (the biggest first, so that its session runs while
    the others are written)."""
    base = tmp_path_factory.mktemp("saved_models")
    session = _SessionProcess(tmp_path_factory.mktemp("tf1_session"))
    try:
        yield _write_exports(base, synthetic_tiny, session)
    finally:
        session.kill()


def _write_exports(base: Path, synthetic_tiny, session: _SessionProcess) -> dict:
    interactions = pd.read_csv(write_interactions(base / "interactions.csv"), dtype=str)
    paths, cases, expected, loaded = {}, {}, {}, {}

    def publish(key: str, path: Path, key_cases: dict, exclusions=None) -> None:
        """Records the `tf.saved_model.load` answers to `key_cases` and hands the export to
        the session. `exclusions` (width, counts): a recommend_with_exclusions case that
        excludes what each row of serving_default would otherwise get first."""
        paths[key], loaded[key] = path, tf.saved_model.load(str(path))
        for case, inputs in key_cases.items():
            expected[case] = _call(loaded[key], case.split("/")[1], inputs)
        if exclusions is not None:
            width, counts = exclusions
            plain = key_cases[f"{key}/serving_default"]
            case = f"{key}/recommend_with_exclusions"
            key_cases[case] = dict(plain, exclude_item_ids=_exclude_top(
                expected[f"{key}/serving_default"]["item_ids"], counts, width))
            expected[case] = _call(loaded[key], "recommend_with_exclusions", key_cases[case])
        cases.update(key_cases)
        session.submit(key, path, key_cases)

    cascade = _untrained_cascade(synthetic_tiny, base)
    path = export_cascade(cascade, base, kind="bruteforce", log=lambda *_: None)
    known = [str(u) for u in cascade.train[USER_ID].unique()[:3]]
    hist = cascade.histories_for(known[:2]).astype(str)
    cold = [h for h in hist[0] if h][-2:]
    cascade_history = np.concatenate([hist, _left_pad([cold], hist.shape[1])])
    publish("cascade", path, {
        "cascade/serving_default": {"user_id": np.array(known[:2] + ["__nobody__"]),
                                    "history": cascade_history},
        "cascade/serving_default/empty_history": {
            "user_id": np.array([known[2], "__nobody__"]), "history": np.full((2, 4), "")},
    }, exclusions=(2, (2, 1, 0)))

    # Genres and a user feature are lookup tables, which the session's init op must fill.
    ranking = build_ranking_model(
        RankingConfig(loss="mse", embedding_dim=8, id_embedding_dim=8, feature_embedding_dim=4,
                      deep_dims=(8,), din_units=4, history_len=HISTORY, seed=3),
        USERS, ITEMS, item_genres=dict(zip(ITEMS, ITEM_GENRES)), label_mean=3.5,
        user_features={"gender": {"u1": "F", "u2": "M"}})
    publish("ranking", export_ranking(ranking, base), {"ranking/serving_default": {
        "user_id": np.array(["u1", "stranger", "u2"]),
        "history": _left_pad([_last_items(interactions, "u1", HISTORY),
                              _last_items(interactions, "u2", 1), []], HISTORY),
        "item_ids": np.array([["i010", "i005", "brand-new", ""],
                              ["i001", "i002", "i003", "i004"],
                              ["i299", "", "", ""]])}})

    # A rating model takes history_rating, a float32 input beside the string ids, and solves
    # a small linear system per user in the graph (its fold-in feature).
    rng = np.random.default_rng(5)
    rated = pd.DataFrame({"user_id": rng.choice(USERS, 200), "item_id": rng.choice(ITEMS, 200),
                          "rating": rng.integers(1, 6, 200).astype(float)})
    rated = rated.drop_duplicates(["user_id", "item_id"])
    context = RatingContext(ITEMS, rating_tables(rated, ITEMS, neighbors=5, factors=4),
                            text_vectors=rng.normal(size=(len(ITEMS), 6)).astype(np.float32),
                            k=3)
    rating = build_ranking_model(
        RankingConfig(loss="mse", deep_dims=(8,), id_features=False, history_len=HISTORY,
                      seed=3), USERS, ITEMS, label_mean=3.5, context_features=context)
    rating_history = _left_pad([_last_items(interactions, "u1", HISTORY), [ITEMS[3]], []],
                               HISTORY)
    publish("rating", export_ranking(rating, base, name="rating"), {"rating/serving_default": {
        "user_id": np.array(["u1", "stranger", "u2"]), "history": rating_history,
        "history_rating": np.where(rating_history == "", 0.0,
                                   rng.integers(1, 6, rating_history.shape)).astype(np.float32),
        "item_ids": np.array([[ITEMS[0], ITEMS[5], "brand-new", ""],
                              [ITEMS[1], ITEMS[2], ITEMS[3], ITEMS[4]],
                              [ITEMS[6], "", "", ""]])}})

    query, candidate = GenreQueryTower(), GenreCandidateTower()
    embeddings = candidate(item_features(ITEMS, ITEM_TITLES, ITEM_GENRES)).numpy()
    index = build_index("bruteforce", query, ITEMS, embeddings, k=K)
    path = export_retrieval(query, index, base, k=K, exclusion_width=W,
                            metadata={"query_history_len": HISTORY})
    users = np.array(["u-horror", "never-seen-user", "u4"])
    history = _left_pad([_last_items(interactions, "u-horror", HISTORY),
                         _last_items(interactions, "u7", 2), []], HISTORY)
    publish("retrieval", path, {
        "retrieval/serving_default": {"user_id": users, "history": history},
        "retrieval/serving_default/zero_width_history": {
            "user_id": np.array(["u1", "nobody"]), "history": np.zeros((2, 0), str)},
    }, exclusions=(W, (3, 1, 0)))

    assert sorted(cases) == sorted(CASE_IDS)
    return dict(paths=paths, cases=cases, expected=expected, loaded=loaded, query=query,
                embeddings=embeddings, ranking=ranking, session=session)


@pytest.fixture(scope="module")
def session_run(exports):
    """What the TF1 session loader answered to every case, and its report."""
    return exports["session"].results()


def test_the_session_process_imported_only_tensorflow(session_run):
    assert session_run["report"]["imported"] == {"scann": False, "recommenders_tf": False}


def test_signature_defs_name_the_same_inputs_outputs_and_dtypes(exports, session_run):
    for key, loaded in exports["loaded"].items():
        defs = session_run["report"][key]["signatures"]
        assert sorted(defs) == sorted(loaded.signatures), key
        for name, fn in loaded.signatures.items():
            inputs = {k: spec.dtype.name for k, spec in fn.structured_input_signature[1].items()}
            outputs = {k: spec.dtype.name for k, spec in fn.structured_outputs.items()}
            assert defs[name] == {"inputs": inputs, "outputs": outputs}, (key, name)


@pytest.mark.parametrize("case", CASE_IDS)
def test_session_outputs_equal_the_tf2_signature(case, exports, session_run):
    got, want = session_run["outputs"][case], exports["expected"][case]
    assert sorted(got) == sorted(want)
    rows = len(next(iter(exports["cases"][case].values())))
    for name, value in want.items():
        assert got[name].shape == value.shape and len(value) == rows, (name, got[name].shape)
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_warmup_records_replay_in_the_session(exports, session_run):
    for key, path in exports["paths"].items():
        meta = json.loads((path / "metadata.json").read_text())
        replayed = session_run["report"][key]["warmup"]
        assert len(replayed) == meta["warmup"]["records"] > 0, key
        assert sorted({r["signature"] for r in replayed}) == meta["warmup"]["signatures"]
        assert all(r["output_batches"] == [r["batch"]] for r in replayed), replayed


def _numpy_top_k(exports, inputs, exclude=None):
    queries = exports["query"]({k: tf.constant(v) for k, v in inputs.items()
                                if k != "exclude_item_ids"}).numpy()
    scores = queries @ exports["embeddings"].T
    if exclude is not None:
        banned = np.array([[item in set(row) for item in ITEMS] for row in exclude])
        scores = np.where(banned, -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.array(ITEMS)[top], np.take_along_axis(scores, top, 1)


def test_retrieval_session_answers_are_the_numpy_top_k(exports, session_run):
    for case in ("retrieval/serving_default", "retrieval/recommend_with_exclusions"):
        inputs = exports["cases"][case]
        exclude = inputs.get("exclude_item_ids")
        ids, scores = _numpy_top_k(exports, inputs, exclude)
        got = session_run["outputs"][case]
        np.testing.assert_array_equal(got["item_ids"], ids)
        np.testing.assert_allclose(got["scores"], scores, rtol=1e-5, atol=1e-6)
        if exclude is not None:
            assert exclude[0].tolist() == exports["expected"][
                "retrieval/serving_default"]["item_ids"][0, :W].tolist()
            for row, banned in zip(got["item_ids"], exclude):
                assert not set(row) & (set(banned) - {""})
    # u-horror's favourite genre wins even though its history is Drama.
    top = session_run["outputs"]["retrieval/serving_default"]["item_ids"][0, 0]
    assert "Horror" in ITEM_GENRES[ITEMS.index(top)]


def test_ranking_session_scores_are_the_in_memory_model(exports, session_run):
    inputs = exports["cases"]["ranking/serving_default"]
    scores = exports["ranking"]({"user_id": tf.constant(inputs["user_id"]),
                                 "history": tf.constant(inputs["history"]),
                                 "item_id": tf.constant(inputs["item_ids"])}).numpy()
    scores = np.where(inputs["item_ids"] == "", -np.inf, scores)
    got = session_run["outputs"]["ranking/serving_default"]["scores"]
    np.testing.assert_allclose(got, scores, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got[inputs["item_ids"] != ""]).all()


def test_cascade_session_answers_route_users_and_honour_exclusions(exports, session_run):
    out = session_run["outputs"]
    assert out["cascade/serving_default"]["source"].tolist() == ["cascade", "cascade",
                                                                 "fallback"]
    assert out["cascade/serving_default/empty_history"]["source"].tolist() == ["cascade",
                                                                              "fallback"]
    cases = exports["cases"]
    for case in ("cascade/serving_default", "cascade/recommend_with_exclusions"):
        banned = np.concatenate([cases[case]["history"],
                                 cases[case].get("exclude_item_ids", np.zeros((3, 0), str))], 1)
        for row, ban in zip(out[case]["item_ids"], banned):
            items = [i for i in row if i]
            assert len(set(items)) == len(items) >= 1
            assert not set(items) & set(ban)
    # The excluded ids were the rows' first answers, so the lists did change.
    plain, excluded = (out[c]["item_ids"] for c in ("cascade/serving_default",
                                                    "cascade/recommend_with_exclusions"))
    assert (plain[:2, 0] != excluded[:2, 0]).all()
    np.testing.assert_array_equal(plain[2], excluded[2])
