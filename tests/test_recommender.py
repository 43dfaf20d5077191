"""TwoTowerRecommender: peer interface (shapes, column alignment), a tiny two-group dataset it
must learn, epoch selection on validation followed by the refit, item features, and the public
retrieval API (embeddings equal to the towers' outputs, top-k with exclusions)."""
import json
import types

import numpy as np
import pandas as pd
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.data.splits import sample_users
from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.features.retrieval_inputs import ItemFeatureTable
from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender
from recommenders_tf.models.retrieval import RetrievalConfig
from recommenders_tf.models.towers import title_tokens

GROUP_ITEMS = {"a": [f"ia{k}" for k in range(5)], "b": [f"ib{k}" for k in range(5)]}


def two_groups(users_per_group=8):
    """User j of group g has every item of g except g's item j % 5, in a fixed time order."""
    rows = []
    for group, items in GROUP_ITEMS.items():
        for j in range(users_per_group):
            missing = j % 5
            seen = [items[k] for k in range(5) if k != missing]
            for t, item in enumerate(seen):
                rows.append((f"{group}{j}", item, 4.0, 100 * j + t))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype(
        {"user_id": object, "item_id": object, "rating": "float32", "timestamp": "int64"})


def tiny_config(**overrides):
    values = dict(embedding_dim=8, id_embedding_dim=8, hidden_dims=(), history_len=3,
                  temperature=0.1, logq_correction=False, use_genres=False,
                  optimizer="adam", learning_rate=0.05, batch_size=16, epochs=15, patience=0,
                  seed=0, verbose=0, search={})
    return TwoTowerConfig(**{**values, **overrides})


@pytest.mark.slow
def test_ranks_the_missing_in_group_item_first():
    train = two_groups()
    # Id-only towers: with four fixed-order items per user, a history branch would mostly
    # memorise the order; the group structure is what this test is about.
    rec = TwoTowerRecommender(tiny_config(history_len=0)).fit(train)
    # The "test" frame only names the users to rank; top-k does not look at its items.
    evaluator = TopKEvaluator(train, train.groupby("user_id").head(1))
    top = evaluator.topk(lambda users: rec.score(users, evaluator.item_ids), k=1)
    # After excluding the 4 items they have, each user's best item must be the one item of
    # their own group they lack (the other 5 unseen items belong to the other group).
    assert len(top) == 16
    for user, items in top.items():
        group, j = user[0], int(user[1:])
        assert items == [GROUP_ITEMS[group][j % 5]], (user, items)


@pytest.mark.slow
def test_score_shape_and_column_alignment():
    train = two_groups()
    rec = TwoTowerRecommender(tiny_config(epochs=2)).fit(train)
    items = np.array(sorted(train.item_id.unique()), dtype=object)
    users = ["a0", "b3", "stranger"]
    scores = rec.score(users, items)
    assert scores.shape == (3, 10) and np.isfinite(scores).all()
    # Columns follow the item_ids argument, whatever its order.
    perm = np.array([7, 2, 9, 0, 1, 3, 8, 4, 6, 5])
    # (float32: another column order may round a score near 0 differently in its last bits)
    np.testing.assert_allclose(rec.score(users, items[perm]), scores[:, perm], rtol=1e-6,
                               atol=1e-7)
    # A score is the dot product of the two towers' outputs on the raw features.
    # b3 lacks ib3 and saw ib0, ib1, ib2, ib4 in that order: its last three are ib1, ib2, ib4.
    q = rec.query_tower({"user_id": tf.constant(["b3"]),
                         "history": tf.constant([["ib1", "ib2", "ib4"]])}).numpy()
    c = rec.candidate_tower({"item_id": tf.constant(["ia0", "ib3"])}).numpy()
    np.testing.assert_allclose(scores[1, [0, 8]], (q @ c.T)[0], rtol=1e-5, atol=1e-6)
    # Default columns: the fitted items in sorted order.
    np.testing.assert_allclose(rec.score(users), scores, rtol=1e-6)
    assert rec.query_features(["stranger"])["history"].tolist() == [["", "", ""]]


@pytest.mark.slow
def test_fit_chooses_epochs_on_validation_then_refits_on_train_and_validation(tmp_path):
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    # An item seen only in validation can only be in the final vocabulary through the refit.
    validation = validation.copy()
    validation.loc[validation.index[0], "item_id"] = "new-item"
    rec = TwoTowerRecommender(tiny_config(epochs=4, patience=2), work_dir=tmp_path,
                              validation_evaluator=TopKEvaluator).fit(train, validation)
    values = [r["ndcg@10"] for r in rec.selection]
    # The selection is fit_model's early stopping on the logged validation NDCG@10.
    selection = rec.phase_results["selection"]
    assert selection.history["val_ndcg@10"] == values
    assert selection.best_epoch == rec.best_epoch
    saved = json.loads((tmp_path / "selection" / "selection.json").read_text())
    assert saved["best_epoch"] == rec.best_epoch and saved["epochs"] == rec.selection
    assert 1 <= len(values) <= 4
    if len(values) < 4:  # stopped early: the last `patience` epochs did not improve
        assert max(values[-2:]) <= max(values[:-2])
    assert rec.best_epoch == int(np.argmax(values)) + 1
    assert rec.epochs_trained == rec.best_epoch
    assert "new-item" in rec.vocabularies["item_id"]
    assert rec.vocabularies["item_id"].count("new-item") == 1
    assert set(rec.vocabularies["user_id"].tokens) == set(data.user_id)
    assert rec.epochs_this_session == {"selection": len(rec.selection),
                                       "final": rec.best_epoch}
    assert "chosen on validation by ndcg@10" in rec.notes
    assert rec.fit_seconds > 0 and rec.examples_per_second > 0


def test_epoch_choice_ranks_for_a_seeded_sample_of_validation_users(tmp_path):
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    seen = []

    def evaluator(train, validation, **kwargs):
        seen.append(sorted(validation["user_id"]))
        return TopKEvaluator(train, validation, **kwargs)

    rec = TwoTowerRecommender(tiny_config(epochs=1, max_validation_users=5), work_dir=tmp_path,
                              validation_evaluator=evaluator).fit(train, validation)
    expected, report = sample_users(validation["user_id"].astype(str), 5, 0)
    assert seen == [sorted(expected)] and len(expected) == 5
    assert rec.validation_users == report == {"sampled": 5, "of": 16, "seed": 0}
    saved = json.loads((tmp_path / "selection" / "selection.json").read_text())
    assert saved["validation_users"] == report
    assert "ranking for 5 of 16 validation users" in rec.notes
    # The refit still learns from every validation row.
    assert set(rec.vocabularies["user_id"].tokens) == set(data.user_id)
    with pytest.raises(ValueError, match="max_validation_users"):
        tiny_config(max_validation_users=-1)


def test_search_chooses_one_field_at_a_time_on_validation(tmp_path, monkeypatch):
    """The coordinate search with known validation scores per setting (the selection runs are
    stand-ins; the refit is real): each field is tried from the best setting so far, a gain
    inside `search_min_gain` keeps the earlier setting, and the refit, the notes and
    search.json use the choice."""
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    scores = {(0.2, "attention", 3): 0.30, (0.1, "attention", 3): 0.20,
              # +0.9%, inside search_min_gain (1%): attention stays
              (0.3, "attention", 3): 0.35, (0.3, "mean", 3): 0.353,
              (0.3, "attention", 6): 0.40}
    calls = []

    def select(self, train, validation, run_dir, candidates=None):
        key = (self.config.temperature, self.config.history_pooling, self.config.history_len)
        calls.append((key, run_dir.relative_to(tmp_path).as_posix()))
        self.selection = [{"epoch": 1, "ndcg@10": 0.0}, {"epoch": 2, "ndcg@10": scores[key]}]
        self.phase_results["selection"] = types.SimpleNamespace(
            epochs_done=2, initial_epoch=0, examples_per_second=1.0)
        self.validation_users = {"sampled": 16, "of": 16, "seed": 0}
        return 2

    monkeypatch.setattr(TwoTowerRecommender, "_select_epochs", select)
    search = {"temperature": (0.1, 0.2, 0.3), "history_pooling": ("attention", "mean"),
              "history_len": (3, 6)}
    rec = TwoTowerRecommender(tiny_config(temperature=0.2, search=search), work_dir=tmp_path,
                              validation_evaluator=TopKEvaluator).fit(train, validation)
    assert calls == [((0.2, "attention", 3), "selection"),
                     ((0.1, "attention", 3), "search/1-temperature=0.1"),
                     ((0.3, "attention", 3), "search/2-temperature=0.3"),
                     ((0.3, "mean", 3), "search/3-history_pooling=mean"),
                     ((0.3, "attention", 6), "search/4-history_len=6")]
    chosen = (rec.config.temperature, rec.config.history_pooling, rec.config.history_len)
    assert chosen == (0.3, "attention", 6) and rec.best_epoch == 2
    # The refit is the chosen model: its query tower reads 6 history items.
    assert rec.epochs_trained == 2
    assert rec.query_features(["a0"])["history"].shape == (1, 6)
    assert rec.epochs_this_session == {"selection": 10, "final": 2}
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["chosen"] == {"temperature": 0.3, "history_pooling": "attention",
                               "history_len": 6}
    assert saved["declared"] == {"temperature": 0.2, "history_pooling": "attention",
                                 "history_len": 3}
    assert [s["tried"] for s in saved["steps"]] == [
        [[0.2, 0.30], [0.1, 0.20], [0.3, 0.35]], [["attention", 0.35], ["mean", 0.353]],
        [[3, 0.35], [6, 0.40]]]
    assert "temperature 0.2: 0.3000, 0.1: 0.2000, 0.3: 0.3500 -> 0.3" in rec.notes
    assert "history_pooling attention: 0.3500, mean: 0.3530 -> attention" in rec.notes
    assert "history=6 attention" in rec.notes
    # Without the margin the +0.9% wins.
    rec = TwoTowerRecommender(tiny_config(temperature=0.2, search=search, search_min_gain=0.0),
                              work_dir=tmp_path / "no-margin",
                              validation_evaluator=TopKEvaluator)
    calls.clear()
    scores[(0.3, "mean", 6)] = 0.30
    rec.fit(train, validation)
    assert (rec.config.history_pooling, rec.config.history_len) == ("mean", 3)
    # A second fit of the same object searches from the declared settings again.
    calls.clear()
    rec.fit(train, validation)
    assert calls[0][0] == (0.2, "attention", 3) and len(calls) == 5


def test_search_tries_run_on_a_user_sample_then_epochs_on_all(tmp_path, monkeypatch):
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    calls = []

    def select(self, train, validation, run_dir, candidates=None):
        calls.append((self.config.temperature, train.user_id.nunique(),
                      validation.user_id.nunique(), run_dir.relative_to(tmp_path).as_posix()))
        value = {0.1: 0.2, 0.3: 0.4}[self.config.temperature]
        epochs = 3 if len(calls) == 3 else 1
        self.selection = [{"epoch": e + 1, "ndcg@10": value} for e in range(epochs)]
        self.phase_results["selection"] = types.SimpleNamespace(
            epochs_done=epochs, initial_epoch=0, examples_per_second=1.0)
        self.epochs_this_session["selection"] = epochs
        self.validation_users = {"sampled": 16, "of": 16, "seed": 0}
        return epochs

    monkeypatch.setattr(TwoTowerRecommender, "_select_epochs", select)
    rec = TwoTowerRecommender(tiny_config(temperature=0.1, search={"temperature": (0.1, 0.3)},
                                          search_max_users=6),
                              work_dir=tmp_path, validation_evaluator=TopKEvaluator)
    rec.fit(train, validation)
    assert calls == [(0.1, 6, 6, "search/0-declared"), (0.3, 6, 6, "search/1-temperature=0.3"),
                     (0.3, 16, 16, "selection")]
    # The epochs come from the full-size selection of the chosen settings.
    assert rec.config.temperature == 0.3 and rec.best_epoch == rec.epochs_trained == 3
    assert rec.search_users == {"sampled": 6, "of": 16, "seed": 0}
    assert rec.epochs_this_session["selection"] == 5
    assert "tries on 6 of 16 train users, seed 0; epochs then chosen on all" in rec.notes
    with pytest.raises(ValueError, match="search_max_users"):
        tiny_config(search_max_users=-1)
    with pytest.raises(ValueError, match="search_min_gain"):
        tiny_config(search_min_gain=1.5)


@pytest.mark.slow
def test_search_runs_real_selections_and_keeps_the_best(tmp_path):
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    train, validation = data.drop(index=last), data.loc[last]
    rec = TwoTowerRecommender(tiny_config(epochs=2, search={"temperature": (0.1, 0.5)}),
                              work_dir=tmp_path,
                              validation_evaluator=TopKEvaluator).fit(train, validation)
    saved = json.loads((tmp_path / "search.json").read_text())
    tries = {t["settings"]["temperature"]: t for t in saved["tries"]}
    assert set(tries) == {0.1, 0.5} and tries[0.1]["run_dir"] == "selection"
    # Each try is its own epoch selection, recorded in its own folder.
    for t in tries.values():
        own = json.loads((tmp_path / t["run_dir"] / "selection.json").read_text())
        assert own["best_epoch"] == t["best_epoch"]
        assert own["epochs"][t["best_epoch"] - 1]["ndcg@10"] == t["ndcg@10"]
    # 0.5 replaces the declared 0.1 only by more than search_min_gain (1%).
    wins = tries[0.5]["ndcg@10"] > tries[0.1]["ndcg@10"] * 1.01
    best = tries[0.5] if wins else tries[0.1]
    assert rec.config.temperature == best["settings"]["temperature"]
    assert rec.selection[rec.best_epoch - 1]["ndcg@10"] == best["ndcg@10"]


def test_a_bad_search_is_refused_before_any_training():
    with pytest.raises(ValueError, match="'seed' is not a searchable field"):
        tiny_config(search={"seed": (0, 1)})
    with pytest.raises(ValueError, match="'no_such_field' is not a searchable field"):
        tiny_config(search={"no_such_field": (1,)})
    with pytest.raises(ValueError, match=r"search\['history_pooling'\]: 'max'"):
        tiny_config(search={"history_pooling": ("mean", "max")})
    with pytest.raises(ValueError, match="has no values"):
        tiny_config(search={"temperature": ()})
    # Lists (YAML) become tuples; a tuple-valued field keeps tuple values.
    cfg = tiny_config(search={"temperature": [0.1], "hidden_dims": [[], [8]]})
    assert cfg.search == {"temperature": (0.1,), "hidden_dims": ((), (8,))}
    assert TwoTowerConfig().search == {"temperature": (0.1, 0.2, 0.3),
                                       "history_pooling": ("attention", "mean"),
                                       "history_len": (50, 200)}


def test_title_tokens_match_the_title_tower_standardisation():
    assert title_tokens(["Toy Story (1995)", "Don't Stop: Now!"]) == [
        "toy", "story", "1995", "dont", "stop", "now"]


def test_item_feature_table_fills_unknown_items():
    items = pd.DataFrame({"item_id": ["i1", "i2"], "title": ["One", "Two"],
                          "genres": ["Drama|War", ""]})
    vectors = ItemVectors(ids=["i1", "i2"], vectors=np.array([[1, 0], [0, 1]], np.float32))
    table = ItemFeatureTable(items, use_genres=True, use_titles=True, text_vectors=vectors)
    out = table(["i2", "zz", "i1"])
    assert out["item_genres"].tolist() == ["", "", "Drama|War"]
    assert out["item_title"].tolist() == ["Two", "", "One"]
    np.testing.assert_array_equal(out["item_text_vector"], [[0, 1], [0, 0], [1, 0]])
    assert sorted(table.feature_spec()) == ["item_genres", "item_id", "item_text_vector",
                                             "item_title"]
    assert table.feature_spec()["item_text_vector"].shape.as_list() == [None, 2]
    with pytest.raises(ValueError, match="no vector for 1 train item"):
        table.check_covers(["i1", "i9"], "train")
    with pytest.raises(ValueError, match="'genres' was asked for"):
        ItemFeatureTable(items.drop(columns="genres"), use_genres=True, use_titles=False)


def test_bad_select_metric_is_refused():
    with pytest.raises(ValueError, match="select_metric"):
        TwoTowerConfig(select_metric="auc")
    with pytest.raises(ValueError, match="select_metric"):
        TwoTowerRecommender(tiny_config(), select_metric="auc")


def test_fitting_with_validation_needs_an_evaluator():
    data = two_groups()
    last = data.groupby("user_id").tail(1).index
    rec = TwoTowerRecommender(tiny_config(epochs=1))
    with pytest.raises(ValueError, match="validation_evaluator"):
        rec.fit(data.drop(index=last), validation=data.loc[last])


def test_for_dataset_switches_genres_on_only_when_the_items_have_them():
    from recommenders_tf.data.schema import RecDataset

    items = pd.DataFrame({"item_id": ["i1"], "title": ["One"], "text": ["One."]})
    data = RecDataset(name="x", interactions=two_groups(), items=items)
    rec = TwoTowerRecommender.for_dataset(data, item_ids=["i1"], seed=3, epochs=2,
                                          validation_evaluator=TopKEvaluator)
    assert rec.item_features.names == ["item_id"]
    assert rec.validation_evaluator is TopKEvaluator
    assert (rec.config.seed, rec.config.epochs, rec.config.verbose) == (3, 2, 0)
    data.items = items.assign(genres=["Drama"])
    assert TwoTowerRecommender.for_dataset(data).item_features.names == ["item_id", "item_genres"]


def test_a_plain_retrieval_config_becomes_a_two_tower_config_with_its_own_values():
    rec = TwoTowerRecommender(RetrievalConfig(embedding_dim=8, history_len=2),
                              use_genres=False, select_metric="recall@50")
    assert isinstance(rec.config, TwoTowerConfig)
    assert (rec.config.embedding_dim, rec.config.history_len) == (8, 2)
    # RetrievalConfig's own cold-start default, not TwoTowerConfig's.
    assert rec.config.zero_oov_item_id is False
    assert (rec.config.use_genres, rec.config.use_titles) == (False, False)
    assert rec.select_metric == rec.config.select_metric == "recall@50"
    assert TwoTowerConfig().zero_oov_item_id is True


# ---- the public retrieval API ----------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted():
    return TwoTowerRecommender(tiny_config(epochs=2)).fit(two_groups())


def seen_items(user):
    group, j = user[0], int(user[1:])
    return {item for k, item in enumerate(GROUP_ITEMS[group]) if k != j % 5}


@pytest.mark.slow
def test_candidate_embeddings_are_the_candidate_tower_outputs(fitted):
    rec = fitted
    catalog = rec.catalog
    assert catalog.tolist() == sorted(GROUP_ITEMS["a"] + GROUP_ITEMS["b"])
    assert rec.candidate_tower is rec.model.candidate_tower
    assert rec.query_tower is rec.model.query_tower
    emb = rec.candidate_embeddings()
    assert emb.shape == (10, 8) and emb.dtype == np.float32
    tower = rec.candidate_tower({"item_id": tf.constant(catalog.tolist())}, training=False)
    np.testing.assert_allclose(emb, tower.numpy(), rtol=1e-6, atol=1e-7)
    # Any ids, in the given order; an unknown item is embedded from its features too.
    some = rec.candidate_embeddings(["ib3", "ia0", "brand-new"])
    np.testing.assert_allclose(some[:2], emb[[8, 0]], rtol=1e-6, atol=1e-7)
    new = rec.candidate_tower({"item_id": tf.constant(["brand-new"])}, training=False)
    np.testing.assert_allclose(some[2], new.numpy()[0], rtol=1e-6, atol=1e-7)
    # A copy: the caller may change it without touching what score() uses.
    emb[:] = 0
    assert np.abs(rec.candidate_embeddings()).sum() > 0


@pytest.mark.slow
def test_query_embeddings_with_explicit_histories_are_the_query_tower_outputs(fitted):
    rec = fitted
    users = ["a0", "b3", "stranger"]
    # Padding anywhere, and more ids than history_len (3): the last three real ids count.
    padded = np.array([["", "ia1", "", "ia2", "ia3", "ia4"],
                       ["ib0", "ib1", "ib2", "", "", ""],
                       ["", "", "", "", "", ""]], dtype=object)
    got = rec.query_embeddings(users, padded)
    assert got.shape == (3, 8) and got.dtype == np.float32
    tower = rec.query_tower({"user_id": tf.constant(users), "history": tf.constant(padded)},
                            training=False).numpy()
    np.testing.assert_allclose(got, tower, rtol=1e-6, atol=1e-7)
    # Where the "" padding sits does not matter, nor lists of any length.
    ragged = [["ia2", "ia3", "ia4"], ["", "ib0", "", "ib1", "ib2"], []]
    np.testing.assert_array_equal(rec.query_embeddings(users, ragged), got)
    left = [["", "", "ia2", "ia3", "ia4"], ["ib0", "ib1", "ib2"], [""]]
    np.testing.assert_array_equal(rec.query_embeddings(users, left), got)
    # Default: the fitted histories (b3's last three items are ib1, ib2, ib4).
    default = rec.query_embeddings(["b3"])
    explicit = rec.query_embeddings(["b3"], [["ib1", "ib2", "ib4"]])
    np.testing.assert_array_equal(default, explicit)
    np.testing.assert_allclose(default @ rec.candidate_embeddings().T,
                               rec.score(["b3"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2 rows for 3 users"):
        rec.query_embeddings(users, padded[:2])


@pytest.mark.slow
def test_recommend_ranks_by_score_and_excludes(fitted):
    rec = fitted
    users = ["a0", "b3", "b3", "stranger"]
    scores = rec.score(users)
    catalog = rec.catalog

    def expected(row, banned, k):
        order = sorted((i for i in range(len(catalog)) if catalog[i] not in banned),
                       key=lambda i: (-scores[row, i], i))
        return [catalog[i] for i in order[:k]]

    top = rec.recommend(users, k=3)  # default: every item of the user's fitted data
    assert top.ids.shape == top.scores.shape == (4, 3)
    for row, user in enumerate(users):
        banned = seen_items(user) if user != "stranger" else set()
        assert top.ids[row].tolist() == expected(row, banned, 3), user
        columns = [catalog.tolist().index(i) for i in top.ids[row]]
        np.testing.assert_allclose(top.scores[row], scores[row, columns], rtol=1e-9)
    assert rec.recommend(users, k=3, exclude=None).ids.tolist() == [
        expected(row, set(), 3) for row in range(4)]
    # Explicit exclusions per user ("" and unknown ids exclude nothing).
    mine = [["ia1", ""], ["ib4", "zz"], [], ["ia0", "ib0"]]
    top = rec.recommend(users, k=2, exclude=mine)
    assert top.ids.tolist() == [expected(row, set(mine[row]), 2) for row in range(4)]
    # Fewer rankable items than k: "" and -inf after the real ones (a0 has seen ia1, ia2).
    few = rec.recommend(["a0"], k=4, item_ids=["ia0", "ia1", "ia2", "ib0"])
    real = expected(0, seen_items("a0") | {"ia3", "ia4", "ib1", "ib2", "ib3", "ib4"}, 4)
    assert sorted(real) == ["ia0", "ib0"]
    assert few.ids.tolist() == [real + ["", ""]]
    assert np.isfinite(few.scores[0, :2]).all() and np.isneginf(few.scores[0, 2:]).all()
    with pytest.raises(ValueError, match="duplicates"):
        rec.recommend(["a0"], k=1, item_ids=["ia0", "ia0"])
    with pytest.raises(ValueError, match="exclude must be"):
        rec.recommend(["a0"], k=1, exclude="everything")
