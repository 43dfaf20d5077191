"""`python -m pipelines.train_ranking`: every loss trains and exports on tiny synthetic data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.train_ranking import TrainRankingConfig, main, parse_args
from recommenders_tf.cascade.ranking_lists import resolve_lists

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL = ["ranking.epochs=2", "ranking.patience=0", "ranking.embedding_dim=8",
         "ranking.id_embedding_dim=8", "ranking.feature_embedding_dim=4",
         "ranking.deep_dims=[8]", "ranking.din_units=4", "ranking.history_len=5",
         "ranking.verbose=0", "data.list_size=10", "data.max_positives=3",
         "data.rating_list_size=8"]


def _config(tmp_path, loss, *extra):
    return parse_args(["--loss", loss, "--dataset", "synthetic-tiny",
                       "--set", f"run_dir={tmp_path / 'runs'}",
                       "--set", f"export_dir={tmp_path / 'saved'}",
                       *[a for s in SMALL + list(extra) for a in ("--set", s)]])


def test_parse_args_and_list_resolution():
    config = parse_args(["--loss", "mse", "--set", "data.negatives=easy",
                         "--set", "ranking.learning_rate=0.01"])
    assert config.ranking.loss == "mse" and config.ranking.learning_rate == 0.01
    assert config.ranking.monitor == "val_rmse" and config.data.negatives == "easy"
    assert resolve_lists(config.ranking.loss, config.data) == ("ratings", "rating")
    for loss, resolved in (("bce", ("ratings", "click")), ("listmle", ("candidates", "binary"))):
        parsed = parse_args(["--loss", loss])
        assert resolve_lists(parsed.ranking.loss, parsed.data) == resolved
    parsed = parse_args(["--loss", "mse", "--set", "data.label=click"])
    with pytest.raises(ValueError, match="needs data.label=rating"):
        resolve_lists(parsed.ranking.loss, parsed.data)
    assert isinstance(TrainRankingConfig(), TrainRankingConfig)


@pytest.mark.slow
# One loss of each family end to end through the pipeline (lists, training, export); every
# loss key trains the model in tests/test_ranking.py::test_every_loss_trains_the_one_model.
@pytest.mark.parametrize("loss", ["mse", "pairwise_logistic", "softmax"])
def test_each_loss_family_trains_and_exports(tmp_path, loss):
    # Hard negatives from the cheap most-popular retrieval stand-in keep the test fast; the
    # two pointwise losses train on rating lists.
    config = _config(tmp_path, loss, "data.candidate_source=most-popular")
    metrics = main(config)
    run = tmp_path / "runs" / f"synthetic-tiny-{loss}"
    for name in ("config.yaml", "metrics.json", "summary.md", "split_manifest.json",
                 "vocab/item_id/vocab.txt", "training/history.json",
                 "training/training_curves.png"):
        assert (run / name).exists(), name
    assert list((run / "training" / "tensorboard").rglob("events.*"))
    meta = json.loads((tmp_path / "saved" / "ranking" / "1" / "metadata.json").read_text())
    assert meta["loss"] == loss and meta["dataset"] == "synthetic-tiny"
    assert metrics["epochs_done"] == 2 and metrics["examples_per_second"] > 0
    if loss == "mse":
        # Starting from the mean rating, two epochs must beat predicting it (RMSE ~ std).
        assert 0 < metrics["validation"]["rmse"] < 1.5
    else:
        assert 0 < metrics["validation"]["ndcg_10"] <= 1


@pytest.mark.slow
def test_command_line_with_easy_negatives(tmp_path):
    args = [sys.executable, "-m", "pipelines.train_ranking", "--loss", "softmax",
            "--dataset", "synthetic-tiny", "--set", f"run_dir={tmp_path / 'runs'}",
            "--set", f"export_dir={tmp_path / 'saved'}", "--set", "data.negatives=easy",
            "--set", "ranking.epochs=1"]
    for s in SMALL[2:]:
        args += ["--set", s]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Export:" in proc.stdout
    metrics = json.loads((tmp_path / "runs" / "synthetic-tiny-softmax" / "metrics.json")
                         .read_text())
    assert metrics["lists"]["negatives"] == "easy"
    assert (tmp_path / "saved" / "ranking" / "1" / "saved_model.pb").exists()


def test_a_run_folder_holding_another_config_is_refused(tmp_path):
    from recommenders_tf.runs import claim_run_dir

    first = parse_args(["--loss", "softmax"])
    claim_run_dir(tmp_path, first)
    claim_run_dir(tmp_path, parse_args(["--loss", "softmax"]))  # same config: resume
    with pytest.raises(ValueError, match="another config .*data.negatives: 'hard' -> 'easy'"):
        claim_run_dir(tmp_path, parse_args(["--loss", "softmax",
                                            "--set", "data.negatives=easy"]))