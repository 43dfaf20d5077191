"""Pipeline step: train the two-tower retrieval model under protocol P1 and export its towers.

    python -m pipelines.train_retrieval --dataset ml-100k
    python -m pipelines.train_retrieval --config configs/retrieval_ml100k.yaml
    python -m pipelines.train_retrieval --dataset synthetic --set retrieval.temperature=0.1 \
        --set text_vectors=runs/embed_items/synthetic/item_vectors --run-dir runs/x

Steps: load the dataset, P1 temporal split, validation slice carved from the P1 train (the
last 20% of each train user's interactions), `TwoTowerRecommender.fit(train, validation)`
(epochs chosen by validation NDCG@10, then refit on the whole P1 train, see
`recommenders_tf.models.recommender`), evaluation on the P1 test with `TopKEvaluator` (full
train catalog, each user's train items excluded) beside most-popular, export.

Re-running with the same `run_dir` resumes: finished epochs are not trained again, an
interrupted epoch loop continues from its last checkpoint. A run_dir that holds a different
config or split is refused.

Several workers (`--strategy multi_worker`, synchronous data parallelism with
MultiWorkerMirroredStrategy): start the same command on every machine with the standard
`TF_CONFIG` set per process and `--run-dir` on a folder all of them see, e.g. for two workers
on one machine

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' \
      python -m pipelines.train_retrieval --dataset synthetic --strategy multi_worker \
        --run-dir runs/two_workers
    # and the same with "index": 1 in a second shell

`retrieval.batch_size` is the global batch, split evenly over the workers (so each in-batch
softmax sees batch_size / workers negatives). Every worker trains, evaluates and exports the
same synchronised model; only the chief (worker 0) writes into the run directory, the others
into a temporary folder they remove. If a worker dies, restart all of them with the same
command: they resume from the chief's checkpoints (and, inside an interrupted `fit`, from the
`BackupAndRestore` state under `selection/backup` or `final/backup`). `--strategy mirrored`
uses every local GPU of one machine.

Input from files (`--set retrieval.input_shards=N`, N >= the number of workers): the
selection and final fits write their training examples as N TFRecord files under
`<run-dir>/selection/examples/` and `<run-dir>/final/examples/` (the chief writes, a
folder already holding the same examples is reused) and train from them; under
`multi_worker` each worker reads only its own files. `metrics.json` records
`training.input_shards` and the examples of each file per phase
(`training.examples_per_shard`). 0 (the default) keeps the in-memory input.

Parameter servers (`--strategy parameter_server`, asynchronous training with
ParameterServerStrategy, for embedding tables larger than one machine): TF_CONFIG names one
`chief` (the coordinator), the `worker`s and the `ps` tasks, and every task runs the same
command with its own TF_CONFIG. A worker or ps task serves the coordinator until it is killed;
the coordinator trains, evaluates and writes the run folder and the export alone. Variables of
at least twice `ps_min_shard_bytes` (the user and item embedding tables) are split over the ps
tasks; `metrics.json` lists them under `training.sharded_variables` with the device of each
shard. `retrieval.batch_size` is the batch of one step (each step runs on one worker). The
towers are scored and exported from a copy on the coordinator, so the export is the same as
one machine's. See `recommenders_tf.models.distribute` for a five-process example on one
machine; stop the servers once the coordinator has finished, and restart only the coordinator
(same command) to resume an interrupted run.

Run directory (default `runs/train_retrieval/<dataset name>`):

    config.yaml             resolved TrainRetrievalConfig
    claim.json              the config and split hashes the folder belongs to (a resumed run
                            must match them; `recommenders_tf.runs.claim_run_dir`)
    split_manifest.json     rows and sha256 of the P1 train and test parts
    vocab/                  vocabularies of the final model's training data (the P1 train),
      user_id/ item_id/     `Vocabulary.save` layout (vocab.txt, counts.tsv, vocab.json),
      genre/ title_token/   the last two only when those item features are used
    candidate_store/        `CandidateStore.save`: candidate_ids.txt, candidate_embeddings.npy
                            (every P1-train item, sorted id order), store.json,
                            candidate_tower/ and query_tower/ SavedModels (signature
                            `serving_default`, output `embedding`)
    towers.json             feature specs of both SavedModels (name -> dtype, shape),
                            embedding_dim, history_len, text vector store path
    selection/ final/       checkpoints, TensorBoard logs, per-phase history.json and curves
                            of the epoch-selection and final fits (`selection/selection.json`
                            holds validation NDCG/recall per epoch; `examples/` the
                            TFRecord files and manifest.json of the training examples when
                            `retrieval.input_shards` > 0)
    history.json            {"selection": per-epoch records, "final": Keras history}
    training_curves.png     losses per epoch and validation NDCG@10 / Recall@50 per epoch
    recall_at_k.json/.png   test Recall@K for K = 1..recall_curve_max_k, model and most-popular
    metrics.json            test metrics, most-popular on the same split, validation figures,
                            epochs, timing and throughput
    summary.md              the headline figures

Query-tower inputs: `user_id` [B] string, `history` [B, N] string (the user's most recent
items, oldest first, left-padded with ""). Candidate-tower inputs: `item_id` [B] string, plus
`item_genres` [B] ('|'-joined), `item_title` [B] and/or `item_text_vector` [B, D] float32 when
the config uses them (towers.json lists exactly what each SavedModel takes).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before anything imports TensorFlow)
import tensorflow as tf
from recommenders_tf import cli
from recommenders_tf.config import ConfigError, write_json
from recommenders_tf.data import load_dataset, temporal_split, validation_split
from recommenders_tf.data.schema import GENRES
from recommenders_tf.evaluation.peers import MostPopular
from recommenders_tf.evaluation.protocol import TopKEvaluator, genre_features
from recommenders_tf.features.vocab import save_vocabularies
from recommenders_tf.index.candidate_store import CandidateStore
from recommenders_tf.models.distribute import (PS_MIN_SHARD_BYTES, STRATEGIES, check_strategy,
                                               make_strategy, num_workers, writable_dir)
from recommenders_tf.models.recommender import (FINAL_DIR, SELECTION_DIR, TwoTowerConfig,
                                                TwoTowerRecommender)
from recommenders_tf.runs import claim_run_dir, default_run_dir, record_run

HEADLINE = ("ndcg@10", "recall@10", "recall@50", "hr@10", "mrr@10", "coverage@10")
# Fields that may change between a run and its resumption without invalidating checkpoints
# (TensorFlow checkpoints do not depend on the strategy that wrote them, nor on how a variable
# was sharded over parameter servers: each shard is saved as a slice of the whole variable).
# The same holds for `retrieval.input_shards`: it changes where the examples are read from,
# not what the checkpoints hold.
_RESUMABLE_FIELDS = {"retrieval.verbose", "strategy", "ps_min_shard_bytes",
                     "retrieval.input_shards"}


@dataclasses.dataclass
class TrainRetrievalConfig:
    """Settings of the train_retrieval step.

    Args:
      dataset: `load_dataset` spec ("ml-100k", "synthetic", "synthetic-tiny", "dir:<path>", ...).
      retrieval: model, task, training and feature settings (TwoTowerConfig; its defaults are
        the ones chosen on ml-100k validation).
      text_vectors: folder of an `ItemVectors` store (pipelines.embed_items' `item_vectors/`);
        when set, the candidate tower reads `item_text_vector` instead of learned titles.
      seed: seed of the split and validation slice (the model seed is `retrieval.seed`).
      run_dir: artifact folder; default `runs/train_retrieval/<dataset name>`.
      recall_curve_max_k: the Recall@K curve covers K = 1..this.
      strategy: "default" (one device), "mirrored" (every local GPU), "multi_worker"
        (the machines of TF_CONFIG) or "parameter_server" (a coordinator, workers and
        parameter servers of TF_CONFIG); see the module docstring.
      ps_min_shard_bytes: under "parameter_server", the smallest shard of a variable split
        over the parameter servers (variables under twice this stay whole; the default is
        TensorFlow's, 256 KiB).
    """

    dataset: str = "ml-100k"
    retrieval: TwoTowerConfig = dataclasses.field(default_factory=TwoTowerConfig)
    text_vectors: Optional[str] = None
    seed: int = 0
    run_dir: Optional[str] = None
    recall_curve_max_k: int = 100
    strategy: str = "default"
    ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES

    def validate(self) -> None:
        check_strategy(self.strategy, STRATEGIES, "pipelines.train_retrieval")
        if not isinstance(self.ps_min_shard_bytes, int) or self.ps_min_shard_bytes < 1:
            raise ConfigError("ps_min_shard_bytes must be a positive integer, got "
                              f"{self.ps_min_shard_bytes!r}")
        if self.recall_curve_max_k < 1:
            raise ValueError(f"recall_curve_max_k must be >= 1, got {self.recall_curve_max_k}")
        if self.text_vectors is not None and not Path(self.text_vectors).is_dir():
            raise FileNotFoundError(f"text_vectors={self.text_vectors!r} is not a folder; give "
                                    "the item_vectors/ folder written by pipelines.embed_items")


def export_towers(recommender: TwoTowerRecommender, run_dir: Path,
                  text_vectors: Optional[str] = None) -> Path:
    """Writes run_dir/candidate_store (both towers as SavedModels) and run_dir/towers.json.

    The store is written beside its target and renamed into place, so a reader never sees a
    half-written store and a re-run replaces it whole.
    """
    item_ids = np.sort(np.asarray(recommender.vocabularies["item_id"].tokens, dtype=object))
    store = CandidateStore(item_ids.astype(str), recommender.candidate_embeddings(item_ids))
    target = run_dir / "candidate_store"
    tmp = run_dir / ".candidate_store.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    query_spec = recommender.query_feature_spec()
    candidate_spec = recommender.candidate_feature_spec()
    store.save(tmp, candidate_tower=recommender.candidate_tower,
               query_tower=recommender.query_tower, candidate_feature_spec=candidate_spec,
               query_feature_spec=query_spec)
    old = run_dir / ".candidate_store.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)

    def describe(spec):
        return {name: {"dtype": s.dtype.name, "shape": [d for d in s.shape.as_list()]}
                for name, s in spec.items()}

    cfg = recommender.config
    write_json(run_dir / "towers.json", {
        "candidate_store": "candidate_store", "vocab": "vocab",
        "query_features": describe(query_spec), "candidate_features": describe(candidate_spec),
        "embedding_dim": int(cfg.embedding_dim), "history_len": int(cfg.history_len),
        "normalized": bool(cfg.normalize), "num_candidates": len(store),
        "text_vectors": text_vectors})
    return target


def _plot_training(records, final_history, best_epoch, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(2, 1, figsize=(6.5, 6.5))
    if records:
        epochs = [r["epoch"] for r in records]
        for key, label in (("example_loss", "selection train"),
                           ("val_example_loss", "selection validation")):
            values = [r.get(key) for r in records]
            if all(v is not None for v in values):
                loss_ax.plot(epochs, values, marker="o", label=label)
        for key in ("ndcg@10", "recall@50"):
            metric_ax.plot(epochs, [r[key] for r in records], marker="o", label=f"val {key}")
        if best_epoch:
            metric_ax.axvline(best_epoch, color="grey", linestyle="--", label="chosen epochs")
    final = (final_history or {}).get("example_loss")
    if final:
        loss_ax.plot(range(1, len(final) + 1), final, marker="s", label="final (train+val)")
    loss_ax.set_title("in-batch softmax loss per example")
    metric_ax.set_title("validation ranking (full catalog, train items excluded)")
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_recall_curve(curves: Dict[str, list], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (P1 test)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(config: TrainRetrievalConfig) -> Dict[str, Any]:
    """Runs the step; returns the metrics written to metrics.json plus the output paths."""
    config.validate()
    # First: a multi-worker strategy has to configure the runtime before any TensorFlow op.
    # Under parameter servers a worker or ps task serves the coordinator here until killed.
    strategy = make_strategy(config.strategy, min_shard_bytes=config.ps_min_shard_bytes)
    data = load_dataset(config.dataset)
    run_dir = Path(config.run_dir or default_run_dir("train_retrieval", data.name))
    with writable_dir(str(run_dir), strategy) as out:
        return _run(config, strategy, data, run_dir, Path(out))


def _run(config: TrainRetrievalConfig, strategy: tf.distribute.Strategy, data, run_dir: Path,
         out: Path) -> Dict[str, Any]:
    """`main` writing its artifacts into `out`: `run_dir` on the chief, a temporary folder on
    the other workers (which still read `run_dir` to resume and train the same model)."""
    resolved = dataclasses.replace(config, run_dir=str(run_dir))
    split = temporal_split(data.interactions, seed=config.seed, dataset=data.name)
    manifest = split.manifest()
    # Checked against the shared run_dir (what this run resumes from), written by the chief.
    claim_run_dir(run_dir, resolved, ignore=_RESUMABLE_FIELDS, write_to=out,
                  data={part: info["sha256"] for part, info in manifest["parts"].items()})
    split.write_manifest(out)
    # Saved before training, so an interrupted run can be traced and resumed.
    record_run(out, resolved, {"status": "training"})
    val = validation_split(split.train, seed=config.seed, dataset=data.name)

    recommender = TwoTowerRecommender(resolved.retrieval, items=data.items,
                                      text_vectors=config.text_vectors, work_dir=run_dir,
                                      strategy=strategy, validation_evaluator=TopKEvaluator)
    recommender.fit(val.train, validation=val.test)
    save_vocabularies(recommender.vocabularies, out / "vocab")

    items = data.items
    features = (genre_features(items) if items is not None and GENRES in items.columns
                else None)
    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50), item_features=features)
    item_ids = evaluator.item_ids

    def model_scores(users):
        return recommender.score(users, item_ids)

    popular = MostPopular(item_ids=item_ids).fit(split.train)

    def popular_scores(users):
        return popular.score(users, item_ids)

    test = evaluator.evaluate(model_scores).metrics
    popular_test = evaluator.evaluate(popular_scores).metrics
    max_k = config.recall_curve_max_k
    curve_eval = TopKEvaluator(split.train, split.test, ks=range(1, max_k + 1))
    curves = {}
    for name, fn in (("two-tower", model_scores), ("most-popular", popular_scores)):
        metrics = curve_eval.evaluate(fn).metrics
        curves[name] = [round(metrics[f"recall@{k}"], 6) for k in range(1, max_k + 1)]
    write_json(out / "recall_at_k.json", {"k": list(range(1, max_k + 1)), **curves})
    _plot_recall_curve(curves, out / "recall_at_k.png")

    # Every worker exports (into its own folder): saving reads the model's variables, which
    # may be an all-reduce that needs all of them.
    export_towers(recommender, out, config.text_vectors)
    final_history = recommender.phase_results[FINAL_DIR].history
    write_json(out / "history.json", {SELECTION_DIR: recommender.selection,
                                      FINAL_DIR: final_history})
    _plot_training(recommender.selection, final_history, recommender.best_epoch,
                   out / "training_curves.png")

    best = recommender.selection[recommender.best_epoch - 1]
    results = {
        "protocol": "P1", "dataset": data.name, "seed": config.seed,
        "test": {k: float(v) for k, v in test.items()},
        "most_popular_test": {k: float(v) for k, v in popular_test.items()},
        "validation": {"best_epoch": recommender.best_epoch,
                       **{k: best[k] for k in ("ndcg@10", "recall@10", "recall@50")},
                       "epochs_tried": len(recommender.selection)},
        "training": {"selection_epochs_done": len(recommender.selection),
                     "final_epochs_done": recommender.epochs_trained,
                     "epochs_trained_this_run": dict(recommender.epochs_this_session),
                     "fit_seconds_this_run": round(recommender.fit_seconds, 2),
                     "examples_per_second": recommender.examples_per_second,
                     "strategy": config.strategy, "workers": num_workers(strategy),
                     "replicas": int(strategy.num_replicas_in_sync),
                     "input_shards": int(resolved.retrieval.input_shards),
                     **({"examples_per_shard": dict(recommender.input_shards)}
                        if recommender.input_shards else {}),
                     **({"sharded_variables": recommender.variable_shards}
                        if recommender.variable_shards else {})},
        # The settings the validation search chose (config.yaml keeps the declared ones and
        # the grid, so a resumed run repeats the same search).
        "chosen_settings": {name: getattr(recommender.config, name)
                            for name in ("history_len", "history_pooling", "temperature",
                                         *resolved.retrieval.search)},
        "search": recommender.search_steps,
        "notes": recommender.notes,
        "split": {part: info["rows"] for part, info in manifest["parts"].items()},
        "validation_split": {"train rows": len(val.train), "validation rows": len(val.test)},
        "run_dir": str(run_dir),
    }
    lines = [f"Two-tower retrieval on {data.name}, protocol P1 (seed {config.seed}).", "",
             "| model | " + " | ".join(HEADLINE) + " |",
             "|---|" + "---|" * len(HEADLINE)]
    for name, metrics in (("two-tower", test), ("most-popular", popular_test)):
        lines.append(f"| {name} | " + " | ".join(f"{metrics[k]:.4f}" for k in HEADLINE) + " |")
    lines += ["", f"Validation: {recommender.best_epoch} epochs chosen, ndcg@10="
                  f"{best['ndcg@10']:.4f}, recall@50={best['recall@50']:.4f}.",
              f"Settings: {recommender.notes}.",
              f"Towers: {run_dir / 'candidate_store'}; vocabularies: {run_dir / 'vocab'}."]
    record_run(out, resolved, results, lines)
    print("\n".join(lines), flush=True)
    return results


def parse_args(argv=None) -> TrainRetrievalConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], TrainRetrievalConfig, dataset=True)
    parser.add_argument("--run-dir", help="artifact folder (resumed when it exists)")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="tf.distribute strategy (multi_worker and parameter_server read "
                             "TF_CONFIG)")
    return cli.parse_config(TrainRetrievalConfig, parser, argv, fields=("run_dir", "strategy"))


if __name__ == "__main__":
    cli.run(main, parse_args)
