"""The ranking-loss sweep of pipelines.bench_cascade: one retrieval stage shared by every
loss's cascade, rows measured against the retrieval order (run_all replaced by a stand-in)."""
import dataclasses
import json
import types

from pipelines import bench_cascade, run_all
from recommenders_tf.cascade import fit as cascade_fit
from recommenders_tf.cascade.config import CascadeConfig


def _metrics(ranking, final, loss):
    stage = lambda v: {"ndcg@10": v, "recall@10": v / 2, "hr@10": 0.5, "mrr@10": 0.4}  # noqa
    return {"dataset": "synthetic-tiny",
            "stages": {"retrieval": stage(0.25), "ranking": stage(ranking),
                       "final": stage(final)},
            "cascade_report": {"ranking_fits": {"ranking": {"epochs": 3, "lists": 80,
                                                            "held_out_ndcg_10": 0.3}},
                               "reranking": {"trained_model_kept": loss == "listmle"}}}


def test_each_loss_is_fitted_behind_the_shared_retrieval_and_compared_with_its_order(
        tmp_path, monkeypatch):
    shared, fitted = [], []
    monkeypatch.setattr(cascade_fit, "share_retrieval_fits",
                        lambda source, target, config, train: shared.append(
                            (source, target, config.ranking.loss)))

    def fake_run_all(config):
        fitted.append(config)
        return {"metrics": _metrics(0.3, 0.31, config.cascade.ranking.loss)}

    monkeypatch.setattr(run_all, "main", fake_run_all)
    base_cfg = CascadeConfig()  # softmax ranker
    base = {"cascade": types.SimpleNamespace(config=base_cfg),
            "metrics": _metrics(0.2, 0.2, "softmax")}
    config = bench_cascade.BenchCascadeConfig(dataset="synthetic-tiny",
                                              results_dir=str(tmp_path / "results"),
                                              ranking_losses=("softmax", "listmle"))
    split = types.SimpleNamespace(train="TRAIN")
    path = bench_cascade.loss_sweep(config, tmp_path / "run", base, split, "cmd", {})
    # The configured loss is the base run itself; only the other one is fitted, sharing the
    # base run's retrieval folders and nothing else of its config changed.
    assert shared == [(tmp_path / "run" / "cascade",
                       tmp_path / "run" / "losses" / "listmle" / "cascade", "listmle")]
    assert len(fitted) == 1 and fitted[0].exports == ()
    assert fitted[0].cascade == CascadeConfig(
        ranking=dataclasses.replace(base_cfg.ranking, loss="listmle"))
    payload = json.loads(path.read_text())
    assert payload["protocol"] == "P1-cascade-losses"
    assert payload["command"] == "cmd --set ranking_losses=[softmax,listmle]"
    rows = {r["model"]: r for r in payload["rows"]}
    assert rows["retrieval order"]["metrics"]["ndcg@10"] == 0.25
    assert rows["retrieval + ranking, softmax"]["notes"].startswith(
        "ndcg@10 -20.0% vs the retrieval order")
    assert rows["retrieval + ranking, listmle"]["notes"].startswith(
        "ndcg@10 +20.0% vs the retrieval order")
    assert rows["full cascade, listmle"]["metrics"]["ndcg@10"] == 0.31
    assert rows["full cascade, listmle"]["notes"] == "trained re-ranker served"


def test_each_ablation_changes_one_thing_behind_the_shared_retrieval(tmp_path, monkeypatch):
    import pytest

    shared, fitted = [], []
    monkeypatch.setattr(cascade_fit, "share_retrieval_fits",
                        lambda source, target, config, train: shared.append((source, target)))

    def fake_run_all(config):
        fitted.append(config.cascade)
        return {"metrics": _metrics(0.3 if config.cascade.ranker_cuts == 2 else 0.22, 0.3,
                                    "softmax")}

    monkeypatch.setattr(run_all, "main", fake_run_all)
    base_cfg = CascadeConfig()
    base = {"cascade": types.SimpleNamespace(config=base_cfg),
            "metrics": _metrics(0.275, 0.275, "softmax")}
    config = bench_cascade.BenchCascadeConfig(dataset="synthetic-tiny",
                                              results_dir=str(tmp_path / "results"),
                                              ranker_ablations=("cuts-2", "no-text"))
    split = types.SimpleNamespace(train="TRAIN")
    path = bench_cascade.ablation_sweep(config, tmp_path / "run", base, split, "cmd", {})
    assert fitted == [dataclasses.replace(base_cfg, ranker_cuts=2),
                      dataclasses.replace(base_cfg, use_text=False)]
    assert shared[0] == (tmp_path / "run" / "cascade",
                         tmp_path / "run" / "ablations" / "cuts-2" / "cascade")
    payload = json.loads(path.read_text())
    assert payload["protocol"] == "P1-cascade-ablations"
    assert payload["command"] == "cmd --set ranker_ablations=[cuts-2,no-text]"
    rows = {r["model"]: r for r in payload["rows"]}
    assert rows["retrieval + ranking, as configured"]["metrics"]["ndcg@10"] == 0.275
    note = rows["retrieval + ranking, cuts-2"]["notes"]
    assert note.startswith("ranker_cuts=2: ")
    assert "+20.0% vs the retrieval order, +9.1% vs as configured" in note
    assert "-20.0% vs as configured" in rows["retrieval + ranking, no-text"]["notes"]
    with pytest.raises(ValueError, match="unknown ranker ablation"):
        bench_cascade.ablation_sweep(dataclasses.replace(config, ranker_ablations=("x",)),
                                     tmp_path / "run", base, split, "cmd", {})


def test_start_note_says_which_ranker_serves_and_why():
    report = {"ranking_fits": {"ranking": {"start": {"weights": {"retrieval_z": 1.0,
                                                                 "peer_z": 0.25}}}},
              "ranker_start": {"out_of_fold_ndcg_10": {"trained": 0.31, "start": 0.32},
                               "lists": 900, "served": "start"}}
    assert bench_cascade.start_note(report) == (
        "; started from 1 retrieval_z + 0.25 peer_z, out-of-fold ndcg_10 trained 0.3100 vs "
        "start 0.3200 over 900 lists, so the start ranker serves")
    assert bench_cascade.start_note({"ranking_fits": {}}) == ""
