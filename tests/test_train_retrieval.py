"""pipelines.train_retrieval: end to end on synthetic-tiny (learns, writes the artifacts the
index step reads, resumes instead of retraining) and config loading."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import recommenders_tf  # noqa: F401

from pipelines.train_retrieval import TrainRetrievalConfig, main, parse_args
from recommenders_tf.config import ConfigError, load_config, to_dict
from recommenders_tf.data import load_dataset, temporal_split
from recommenders_tf.evaluation.peers import MostPopular
from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.features.vocab import Vocabulary
from recommenders_tf.index.candidate_store import CandidateStore, load_tower
from recommenders_tf.models.recommender import TwoTowerConfig

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "retrieval_synthetic_tiny.yaml"
ML100K_YAML = REPO / "configs" / "retrieval_ml100k.yaml"


def tiny_config(run_dir) -> TrainRetrievalConfig:
    config = load_config(TrainRetrievalConfig, str(TINY_YAML), [f"run_dir={run_dir}"])
    # Fewer epochs than the yaml keeps the test short; the structure is learned within them.
    config.retrieval = dataclasses.replace(config.retrieval, epochs=5)
    return config


@pytest.mark.slow
def test_main_learns_writes_artifacts_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    results = main(tiny_config(run_dir))

    # Learned: beats most-popular on the P1 test, computed here independently of the pipeline.
    data = load_dataset("synthetic-tiny")
    split = temporal_split(data.interactions, dataset=data.name)
    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50))
    popular = MostPopular(item_ids=evaluator.item_ids).fit(split.train)
    popular_ndcg = evaluator.evaluate(popular.score).metrics["ndcg@10"]
    assert results["most_popular_test"]["ndcg@10"] == pytest.approx(popular_ndcg)
    assert results["test"]["ndcg@10"] > popular_ndcg + 0.03
    assert results["test"]["recall@50"] > results["most_popular_test"]["recall@50"]

    # Epochs: chosen on validation, the final model trained exactly that many.
    training = results["training"]
    best = results["validation"]["best_epoch"]
    assert 1 <= best <= training["selection_epochs_done"] <= 5
    assert training["final_epochs_done"] == best
    assert training["epochs_trained_this_run"] == {"selection": training["selection_epochs_done"],
                                                   "final": best}
    selection = json.loads((run_dir / "selection" / "selection.json").read_text())["epochs"]
    ndcgs = [r["ndcg@10"] for r in selection]
    assert best == int(np.argmax(ndcgs)) + 1
    assert results["validation"]["ndcg@10"] == pytest.approx(max(ndcgs))

    for name in ("config.yaml", "metrics.json", "history.json", "training_curves.png",
                 "recall_at_k.png", "summary.md", "split_manifest.json", "towers.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == results["test"]

    # Recall@K curve: 100 points, non-decreasing, agreeing with the headline metrics.
    curve = json.loads((run_dir / "recall_at_k.json").read_text())
    assert curve["k"] == list(range(1, 101))
    assert np.all(np.diff(curve["two-tower"]) >= 0)
    assert curve["two-tower"][9] == pytest.approx(results["test"]["recall@10"], abs=1e-6)
    assert curve["two-tower"][49] == pytest.approx(results["test"]["recall@50"], abs=1e-6)
    assert curve["most-popular"][9] == pytest.approx(results["most_popular_test"]["recall@10"],
                                                     abs=1e-6)

    # Vocabularies: from the P1 train only (train + validation slice), counts included.
    train_items = split.train.item_id.value_counts()
    items_vocab = Vocabulary.load(run_dir / "vocab" / "item_id")
    assert set(items_vocab.tokens) == set(train_items.index)
    assert items_vocab.count("i00003") == train_items.get("i00003", 0)
    assert set(Vocabulary.load(run_dir / "vocab" / "user_id").tokens) == set(split.train.user_id)
    assert (run_dir / "vocab" / "genre" / "vocab.txt").exists()

    # Candidate store: every train item in sorted order; the saved towers reproduce it.
    store = CandidateStore.load(run_dir / "candidate_store")
    assert store.ids.tolist() == sorted(train_items.index)
    assert store.embeddings.shape == (len(train_items), 16)
    np.testing.assert_allclose(np.linalg.norm(store.embeddings, axis=1), 1.0, atol=1e-5)
    towers = json.loads((run_dir / "towers.json").read_text())
    assert sorted(towers["candidate_features"]) == ["item_genres", "item_id"]
    assert sorted(towers["query_features"]) == ["history", "user_id"]
    genres = data.items.set_index("item_id").genres
    candidate = load_tower(run_dir / "candidate_store" / "candidate_tower")
    ids = store.ids[:7].tolist()
    got = np.asarray(candidate({"item_id": ids, "item_genres": genres.loc[ids].tolist()}))
    np.testing.assert_allclose(got, store.embeddings[:7], rtol=1e-5, atol=1e-6)
    query = load_tower(run_dir / "candidate_store" / "query_tower")
    q = np.asarray(query({"user_id": ["u00001", "nobody"],
                          "history": [["", "i00003"], ["", ""]]}))
    assert q.shape == (2, 16) and np.all(np.isfinite(q))

    # Re-running on the same run_dir resumes: nothing is trained again, same model.
    again = main(tiny_config(run_dir))
    assert again["training"]["epochs_trained_this_run"] == {"selection": 0, "final": 0}
    assert again["training"]["selection_epochs_done"] == training["selection_epochs_done"]
    assert again["training"]["final_epochs_done"] == training["final_epochs_done"]
    for key, value in results["test"].items():
        assert again["test"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    # ... but not with different settings.
    changed = tiny_config(run_dir)
    changed.retrieval = dataclasses.replace(changed.retrieval, temperature=0.5)
    with pytest.raises(ConfigError, match="retrieval.temperature: 0.1 -> 0.5"):
        main(changed)


@pytest.mark.slow
def test_main_records_the_settings_its_search_chose(tmp_path):
    config = tiny_config(tmp_path / "run")
    config.retrieval = dataclasses.replace(config.retrieval, epochs=2,
                                           search={"history_len": (10, 3)})
    results = main(config)
    search = json.loads((tmp_path / "run" / "search.json").read_text())
    assert [t["settings"]["history_len"] for t in search["tries"]] == [10, 3]
    chosen = search["chosen"]["history_len"]
    assert results["chosen_settings"]["history_len"] == chosen
    assert results["search"] == search["steps"]
    assert f"history={chosen} attention" in results["notes"]
    # config.yaml keeps the declared settings and the grid, so a re-run repeats the search.
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["retrieval"]["history_len"] == 10
    assert saved["retrieval"]["search"] == {"history_len": [10, 3]}


def test_parse_args_merges_file_flags_and_overrides(tmp_path):
    config = parse_args(["--config", str(ML100K_YAML), "--dataset", "synthetic",
                         "--set", "retrieval.temperature=0.3", "--run-dir", str(tmp_path)])
    assert config.dataset == "synthetic" and config.run_dir == str(tmp_path)
    assert config.retrieval.temperature == 0.3
    assert isinstance(config.retrieval, TwoTowerConfig)
    # Fields the override did not touch keep the file's values.
    from_file = load_config(TrainRetrievalConfig, str(ML100K_YAML))
    assert config.retrieval.history_len == from_file.retrieval.history_len
    with pytest.raises(ConfigError, match="retrieval.temprature"):
        parse_args(["--set", "retrieval.temprature=0.3"])


def test_ml100k_yaml_holds_the_library_defaults():
    """The tuned settings live in two places; they must not drift apart."""
    from_file = load_config(TrainRetrievalConfig, str(ML100K_YAML))
    assert from_file.dataset == "ml-100k"
    file_values = to_dict(from_file.retrieval)
    defaults = to_dict(TwoTowerConfig())
    assert {k: v for k, v in file_values.items() if k != "verbose"} == \
        {k: v for k, v in defaults.items() if k != "verbose"}
    assert to_dict(TrainRetrievalConfig().retrieval) == defaults


def test_missing_text_vector_folder_is_reported(tmp_path):
    config = TrainRetrievalConfig(dataset="synthetic-tiny", text_vectors=str(tmp_path / "no"),
                                  run_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="text_vectors="):
        main(config)
