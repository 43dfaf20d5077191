"""`python -m pipelines.train_ranking`: every loss trains and exports on tiny synthetic data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.train_ranking import TrainRankingConfig, main, parse_args
from recommenders_tf.cascade.ranking_lists import resolve_lists
from recommenders_tf.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]

SMALL = ["ranking.epochs=2", "ranking.patience=0", "ranking.embedding_dim=8",
         "ranking.id_embedding_dim=8", "ranking.feature_embedding_dim=4",
         "ranking.deep_dims=[8]", "ranking.din_units=4", "ranking.history_len=5",
         "ranking.verbose=0", "data.list_size=10", "data.max_positives=3",
         "data.rating_list_size=8"]
# Hard negatives from the cheap most-popular retrieval stand-in.
HARD = "data.candidate_source=most-popular"


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


@pytest.fixture(scope="module")
def softmax_run(tmp_path_factory):
    """The default-strategy softmax run on most-popular hard negatives: the softmax case of the
    loss families and the run the mirrored strategy must reproduce file for file.

    Shared because every main() run builds, traces and exports a fresh model, which is most of
    this file's time; the tests only read the run's outputs.
    """
    out = tmp_path_factory.mktemp("default")
    return out, main(_config(out, "softmax", HARD))


@pytest.mark.slow
# One loss of each family end to end through the pipeline (lists, training, export); every
# loss key trains the model in tests/test_ranking.py::test_every_loss_trains_the_one_model.
# The listwise loss trains on hard negatives from the cheap most-popular retrieval stand-in,
# the pairwise one on easy (catalog) negatives, the pointwise one on rating lists.
@pytest.mark.parametrize("loss, negatives", [("mse", None), ("pairwise_logistic", "easy"),
                                             ("softmax", "hard")],
                         ids=["mse", "pairwise_logistic", "softmax"])
def test_each_loss_family_trains_and_exports(tmp_path, request, loss, negatives):
    if loss == "softmax":
        tmp_path, metrics = request.getfixturevalue("softmax_run")
    else:
        extra = [f"data.negatives={negatives}"] if negatives else []
        metrics = main(_config(tmp_path, loss, HARD, *extra))
    run = tmp_path / "runs" / f"synthetic-tiny-{loss}"
    for name in ("config.yaml", "metrics.json", "summary.md", "split_manifest.json",
                 "vocab/item_id/vocab.txt", "training/history.json",
                 "training/training_curves.png"):
        assert (run / name).exists(), name
    assert list((run / "training" / "tensorboard").rglob("events.*"))
    meta = json.loads((tmp_path / "saved" / "ranking" / "1" / "metadata.json").read_text())
    assert meta["loss"] == loss and meta["dataset"] == "synthetic-tiny"
    assert metrics["epochs_done"] == 2 and metrics["examples_per_second"] > 0
    assert json.loads((run / "metrics.json").read_text())["lists"] == metrics["lists"]
    if loss == "mse":
        assert metrics["lists"]["lists"] == "ratings"
        # Starting from the mean rating, two epochs must beat predicting it (RMSE ~ std).
        assert 0 < metrics["validation"]["rmse"] < 1.5
    else:
        assert metrics["lists"]["negatives"] == negatives
        assert 0 < metrics["validation"]["ndcg_10"] <= 1


def test_a_run_folder_holding_another_config_is_refused(tmp_path):
    from recommenders_tf.runs import claim_run_dir

    first = parse_args(["--loss", "softmax"])
    claim_run_dir(tmp_path, first)
    claim_run_dir(tmp_path, parse_args(["--loss", "softmax"]))  # same config: resume
    with pytest.raises(ValueError, match="another config .*data.negatives: 'hard' -> 'easy'"):
        claim_run_dir(tmp_path, parse_args(["--loss", "softmax",
                                            "--set", "data.negatives=easy"]))


def test_strategy_flag_and_config_field():
    assert parse_args(["--loss", "softmax"]).strategy == "default"
    assert parse_args(["--strategy", "mirrored"]).strategy == "mirrored"
    assert parse_args(["--set", "strategy=multi_worker"]).strategy == "multi_worker"
    with pytest.raises(ConfigError, match=r"strategy must be one of \['default', 'mirrored', "
                                          r"'multi_worker', 'parameter_server'\], got "
                                          r"'one_per_gpu'"):
        parse_args(["--set", "strategy=one_per_gpu"])
    assert parse_args(["--strategy", "parameter_server"]).strategy == "parameter_server"
    with pytest.raises(SystemExit):  # argparse's own choices check, exit status 2
        parse_args(["--strategy", "bogus"])


def test_ranking_losses_run_under_a_strategy_with_the_default_reduction_value():
    # Keras refuses a loss with its default reduction inside a strategy's replica context;
    # RankingLoss reduces itself and must give what the default reduction gives.
    import numpy as np
    import tensorflow as tf

    from recommenders_tf.models.losses import LOSS_KEYS, RankingLoss, get_loss

    labels = np.array([[2.0, 0.0, 1.0, 3.0, -1.0], [0.0, 1.0, 3.0, 2.0, 4.0]], np.float32)
    scores = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    mask = labels >= 0
    strategy = tf.distribute.MirroredStrategy()
    for key in LOSS_KEYS:
        spec = get_loss(key)
        y = (labels > 0).astype(np.float32) if spec.label_kind == "click" else labels
        y = np.where(mask, y, -1.0).astype(np.float32)
        wrapped = RankingLoss(key)
        replica_value = strategy.run(lambda: wrapped(y, scores, mask))
        value = float(strategy.reduce(tf.distribute.ReduceOp.SUM, replica_value, axis=None))
        if not spec.mean_over_valid:
            expected = float(spec.build()(y, np.where(mask, scores, 0.0)))
            assert value == pytest.approx(expected, rel=1e-5), key
        assert value == pytest.approx(float(wrapped(y, scores, mask)), rel=1e-5), key


def _files(folder: Path):
    # TensorBoard names its event files after the host, time and process.
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and "events.out.tfevents" not in p.name)


@pytest.mark.slow
def test_command_line_mirrored_strategy_trains_and_writes_what_default_writes(softmax_run,
                                                                              tmp_path):
    # `python -m pipelines.train_ranking` in a fresh process with --strategy mirrored, the same
    # settings as the default-strategy run; on a machine without GPUs MirroredStrategy mirrors
    # over the CPU alone (one replica).
    default_dir, default = softmax_run
    args = [sys.executable, "-m", "pipelines.train_ranking", "--loss", "softmax",
            "--dataset", "synthetic-tiny", "--strategy", "mirrored",
            "--set", f"run_dir={tmp_path / 'runs'}", "--set", f"export_dir={tmp_path / 'saved'}"]
    for s in SMALL + [HARD]:
        args += ["--set", s]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Export:" in proc.stdout
    mirrored = json.loads((tmp_path / "runs" / "synthetic-tiny-softmax" / "metrics.json")
                          .read_text())
    runs = {"default": default, "mirrored": mirrored}
    for strategy, metrics in runs.items():
        assert metrics["strategy"] == strategy
        assert metrics["workers"] == metrics["replicas"] == 1
        assert metrics["epochs_done"] == 2
        assert 0 < metrics["validation"]["ndcg_10"] <= 1
    default_files = _files(default_dir)
    assert "runs/synthetic-tiny-softmax/training/checkpoints/checkpoint" in default_files
    assert "saved/ranking/1/saved_model.pb" in default_files
    assert _files(tmp_path) == default_files
    assert runs["mirrored"]["n_train_lists"] == runs["default"]["n_train_lists"]


@pytest.mark.slow
def test_rating_context_trains_and_exports_a_model_that_takes_history_ratings(tmp_path):
    metrics = main(_config(tmp_path, "mse", "rating_context=true", "ranking.id_features=false",
                           "context={history_len: 8, neighbors: 5, factors: 4, k: 3, folds: 2}",
                           f"text_cache={tmp_path / 'text_cache'}", "ranking.epochs=10",
                           "ranking.learning_rate=0.01"))
    assert metrics["lists"]["history"] == "others"
    assert "text_prior" in metrics["lists"]["context_features"]
    assert metrics["n_train_lists"] > metrics["n_validation_lists"] > 0
    # Below the ratings' spread (1.29), i.e. better than predicting the mean.
    assert 0 < metrics["validation"]["rmse"] < 1.25
    meta = json.loads((tmp_path / "saved" / "ranking" / "1" / "metadata.json").read_text())
    assert "history_rating" in meta["signatures"]["serving_default"]["inputs"]


def test_rating_context_is_refused_for_a_loss_that_does_not_predict_ratings(tmp_path):
    with pytest.raises(ConfigError, match="rating_context needs a rating loss"):
        _config(tmp_path, "softmax", "rating_context=true")
