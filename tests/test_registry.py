"""The model registry: lookup by name and kind, its errors, the Recommender / RatingPredictor
interface of every entry, and the candidate-source path of the cascade."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow is imported)
from recommenders_tf.cascade.candidates import (CANDIDATE_SOURCES, make_candidate_source,
                                                top_candidates)
from recommenders_tf.evaluation.peers import ImplicitALS, MostPopular
from recommenders_tf.evaluation.registry import (CANDIDATE_SOURCE, RatingPredictor, Recommender,
                                                 available, get_model, get_spec, register,
                                                 unregister)
from recommenders_tf.features.item_vectors import ItemVectors

ITEMS = [f"i{j}" for j in range(6)]
# Two taste blocks (u0-u2 on i0-i2, u3-u5 on i3-i5) with a few crossings, ratings 1-5 and
# timestamps, so every model (sequential, rating, text) has what it reads.
PAIRS = [(f"u{u}", f"i{i}") for u in range(6) for i in range(6)
         if (u < 3) == (i < 3) and (u + i) % 4 != 3] + [("u0", "i4"), ("u4", "i1")]
TRAIN = pd.DataFrame({
    "user_id": [u for u, _ in PAIRS],
    "item_id": [i for _, i in PAIRS],
    "rating": np.asarray([1 + (k * 7) % 5 for k in range(len(PAIRS))], np.float32),
    "timestamp": np.arange(len(PAIRS), dtype=np.int64),
})
ITEMS_FRAME = pd.DataFrame({
    "item_id": ITEMS,
    "title": [f"Title {j}" for j in range(6)],
    "genres": ["space|war", "space", "war", "cooking", "cooking|romance", "romance"],
    "text": ["space rocket war", "space galaxy", "war story", "pasta cooking",
             "cooking for two", "romance in paris"],
})
VECTORS = ItemVectors(ids=ITEMS, vectors=np.random.default_rng(0).normal(size=(6, 8)),
                      model="test", text_fields=("text",))

# Small enough to fit in about a second each; models not listed fit with their defaults.
FAST = {
    "two-tower": dict(epochs=1, embedding_dim=8, id_embedding_dim=8, batch_size=16, verbose=0),
    "two-tower-id": dict(epochs=1, embedding_dim=8, id_embedding_dim=8, batch_size=16),
    "two-tower-text": dict(epochs=1, embedding_dim=8, id_embedding_dim=8, text_embedding_dim=8,
                           batch_size=16),
    "dmf-hybrid": dict(epochs=1, hidden_dims=(8,), embedding_dim=8, num_negatives=2,
                       batch_size=16),
    "implicit-ALS": dict(grid={}, factors=4, iterations=2),
    "implicit-BPR": dict(grid={}, factors=4, iterations=2),
    "EASE": dict(grid={}),
    "RP3beta": dict(grid={}),
    "SASRec": dict(epochs=1, dim=8, max_len=4, batch_size=8),
    "tfrs-tutorial": dict(epochs=1, embedding_dim=8, batch_size=16),
}


def test_lookup_by_name_and_kind():
    assert get_spec("EASE").kind == "peer" and get_spec("EASE").task == "topk"
    assert get_spec("global-mean").task == "rating"
    assert get_spec("global-mean").interface is RatingPredictor
    assert get_spec("two-tower").interface is Recommender
    assert set(available(CANDIDATE_SOURCE)) == {"two-tower", "implicit-ALS", "implicit-BPR",
                                                "most-popular"}
    assert CANDIDATE_SOURCES == available(CANDIDATE_SOURCE)
    assert set(available("project")) == {"two-tower", "two-tower-id", "two-tower-text",
                                         "dmf-hybrid"}
    assert set(available("baseline")) == {"tfidf-knn", "lm-knn"}
    assert set(available(task="rating")) == {"global-mean", "surprise-SVD", "surprise-SVD++"}
    # A kind or a tag: the candidate sources keep their own kind for the results tables.
    assert get_spec("implicit-ALS").kinds == ("peer", CANDIDATE_SOURCE)
    # Registration order: the project's model heads the benchmark tables.
    assert available()[0] == "two-tower"
    assert available(kind="peer", task="topk")[:3] == ("most-popular", "implicit-ALS",
                                                       "implicit-BPR")


def test_built_models_take_the_context_they_need():
    als = get_model("implicit-ALS", item_ids=ITEMS, seed=7, data=None, item_vectors=VECTORS)
    assert isinstance(als, ImplicitALS) and als.random_state == 7
    assert list(als.item_ids) == ITEMS
    tutorial = get_model("tfrs-tutorial", items=ITEMS_FRAME, seed=3)
    assert tutorial.items is ITEMS_FRAME and tutorial.seed == 3

    class Data:
        items = ITEMS_FRAME
        rating_range = (1.0, 5.0)

    assert get_model("surprise-SVD", data=Data(), seed=2).rating_range == (1.0, 5.0)
    assert get_model("tfidf-knn", data=Data()).item_ids is None
    # Settings reach the model's constructor, so a typo fails there instead of vanishing.
    with pytest.raises(ValueError, match=r"EASE has no parameter\(s\) \['l2_typo'\]"):
        get_model("EASE", l2_typo=1.0)
    with pytest.raises(TypeError):
        get_model("most-popular", l2=1.0)
    with pytest.raises(ValueError, match="needs item_vectors"):
        get_model("lm-knn")
    with pytest.raises(ValueError, match="needs items"):
        get_model("tfidf-knn")


def test_unknown_names_kinds_and_tasks_fail_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'nope'") as err:
        get_model("nope")
    for name in ("two-tower", "implicit-ALS", "EASE", "surprise-SVD++", "tfidf-knn"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown model kind 'nope'.*candidate-source"):
        available("nope")
    with pytest.raises(ValueError, match="unknown task 'nope'.*topk, rating"):
        available(task="nope")
    with pytest.raises(ValueError, match="unknown candidate source 'EASE'.*implicit-ALS"):
        make_candidate_source("EASE", ITEMS)


def test_the_project_models_choose_epochs_with_the_benchmarks_evaluator():
    from recommenders_tf.data.schema import RecDataset
    from recommenders_tf.evaluation.protocol import TopKEvaluator

    # The models cannot import the evaluation layer; the registry hands them its evaluator,
    # so their epoch choice runs under the protocol they are benchmarked with.
    for name in ("two-tower", "two-tower-id", "two-tower-text", "dmf-hybrid"):
        model = get_model(name, item_ids=ITEMS, items=ITEMS_FRAME, item_vectors=VECTORS)
        assert model.validation_evaluator is TopKEvaluator, name
    data = RecDataset(name="x", interactions=TRAIN, items=ITEMS_FRAME)
    assert get_model("two-tower", data=data).validation_evaluator is TopKEvaluator
    source = make_candidate_source("two-tower", ITEMS, items=ITEMS_FRAME)
    assert source.validation_evaluator is TopKEvaluator


def test_register_and_unregister():
    spec = register("test-popular", lambda item_ids=None, **_: MostPopular(item_ids),
                    kind="peer", tags=("test-tag",), notes="for this test")
    try:
        assert available("test-tag") == ("test-popular",)
        assert isinstance(get_model("test-popular", item_ids=ITEMS, seed=0), MostPopular)
        with pytest.raises(ValueError, match="already registered"):
            register("test-popular", spec.factory, kind="peer")
        assert register("test-popular", spec.factory, kind="baseline",
                        replace=True).kind == "baseline"
        with pytest.raises(ValueError, match="task"):
            register("test-other", spec.factory, kind="peer", task="ranking")
    finally:
        unregister("test-popular")
    assert "test-popular" not in available()
    with pytest.raises(ValueError, match="unknown model"):
        unregister("test-popular")


# TensorFlow models: seconds each (graph building), so `-m "not slow"` leaves them out.
TF_MODELS = {"two-tower", "two-tower-id", "two-tower-text", "dmf-hybrid", "SASRec",
             "tfrs-tutorial"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in TF_MODELS else n for n in available()])
def test_every_registered_model_fits_and_scores_through_the_interface(name):
    spec = get_spec(name)
    if name.startswith("surprise"):
        pytest.importorskip("surprise", reason="scikit-surprise does not import",
                            exc_type=ImportError)
    model = get_model(name, item_ids=ITEMS, items=ITEMS_FRAME, item_vectors=VECTORS, seed=0,
                      **FAST.get(name, {}))
    assert isinstance(model, spec.interface)
    assert model.name == name
    assert model.fit(TRAIN) is model
    assert isinstance(model, spec.interface) and isinstance(model.notes, str)
    users = ["u0", "u4", "stranger"]
    if spec.task == "rating":
        pairs = pd.DataFrame({"user_id": users, "item_id": ["i1", "i4", "i0"]})
        pred = model.predict(pairs)
        assert pred.shape == (3,) and np.isfinite(pred).all()
        return
    scores = model.score(users)
    assert scores.shape == (3, len(ITEMS)) and np.isfinite(scores).all()
    # Other columns than the built ones, in another order; random scores are drawn per row
    # for the columns asked, so only the shape carries over.
    sub = model.score(users[:2], ["i5", "i0"])
    assert sub.shape == (2, 2)
    if name != "random":
        np.testing.assert_allclose(sub, scores[:2][:, [5, 0]], rtol=1e-5, atol=1e-6)


def test_two_tower_recommender_satisfies_the_protocol_unfitted():
    from recommenders_tf.models.recommender import TwoTowerRecommender

    model = TwoTowerRecommender(item_ids=ITEMS, items=ITEMS_FRAME)
    assert isinstance(model, Recommender) and not isinstance(model, RatingPredictor)


def _popularity_oracle(train, users, catalog, k):
    """Top-k by train count per user, seen items excluded, ties by catalog position."""
    counts = train["item_id"].value_counts().reindex(catalog, fill_value=0).to_numpy()
    out = []
    for user in users:
        seen = set(train.loc[train["user_id"] == user, "item_id"])
        order = [catalog[j] for j in np.lexsort((np.arange(len(catalog)), -counts))
                 if catalog[j] not in seen]
        out.append((order + [""] * k)[:k])
    return out


def test_candidate_source_path_matches_the_popularity_oracle():
    catalog = ITEMS + ["i_new"]  # never in train: ranks below every seen item
    users = ["u0", "u3", "u5", "stranger"]
    source = make_candidate_source("most-popular", catalog, seed=0)
    assert isinstance(source, MostPopular)
    source.fit(TRAIN)
    top = top_candidates(lambda u: source.score(u, catalog), users, catalog, TRAIN, k=5)
    assert top.tolist() == _popularity_oracle(TRAIN, users, catalog, 5)
    # u0 has seen i0, i1, i2 and i4: i5 (3 interactions), i3 (2), then the item train never
    # saw, and padding.
    assert top[0].tolist() == ["i5", "i3", "i_new", "", ""]


def test_candidate_source_builds_what_the_old_path_built():
    # Before the registry, the implicit sources were ImplicitALS(item_ids, random_state=seed).
    users = sorted(TRAIN["user_id"].unique())
    source = make_candidate_source("implicit-ALS", ITEMS, seed=3).fit(TRAIN)
    direct = ImplicitALS(item_ids=ITEMS, random_state=3).fit(TRAIN)
    got = top_candidates(lambda u: source.score(u, ITEMS), users, ITEMS, TRAIN, k=3)
    want = top_candidates(lambda u: direct.score(u, ITEMS), users, ITEMS, TRAIN, k=3)
    assert got.tolist() == want.tolist()


def test_importing_the_registry_loads_no_tensorflow():
    code = "import sys, recommenders_tf.evaluation.registry; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
