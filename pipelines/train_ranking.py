"""Train the ranking stage with any loss of the registry, then export it for TF Serving.

  python -m pipelines.train_ranking --loss softmax
  python -m pipelines.train_ranking --loss mse --dataset ml-100k --protocol P2
  python -m pipelines.train_ranking --loss mse --dataset ml-100k --protocol P2 \
      --set rating_context=true --set ranking.id_features=false --set ranking.epochs=50 \
      --set ranking.deep_dropout=0.2             # the P2 benchmark's rating model
  python -m pipelines.train_ranking --loss listmle --set data.negatives=easy --set ranking.epochs=5

Data (only the train part of the protocol's split is read; its test part is never touched;
the lists are built by `recommenders_tf.cascade.ranking_lists`):
  * "ratings" lists (default for "mse" and "bce"): the train interactions cut into per-user
    lists in time order; labels are ratings ("mse") or clicks, rating >= click_threshold ("bce").
    With `rating_context` the lists' history is the user's other rated items with their
    ratings (`models.rating_context`), and the export takes `history_rating` beside `history`.
  * "candidates" lists (default for pairwise/listwise): the train part is cut again in time
    (`validation_split`); each user's later interactions are the positives, filled with
    negatives from the retrieval stage's top candidates after the cut ("hard", the retrieval
    model is fitted on the earlier part only) or from the catalog ("easy").
A seeded share of the lists (`validation_fraction`) is held out for early stopping.

Artifacts: runs/ranking/<run>/ holds config.yaml, claim.json, split_manifest.json, vocab/,
training/ (checkpoints/, tensorboard/, history.json, training_curves.png), metrics.json and
summary.md; the model is exported to saved_models/ranking/<next integer version>/.

Several workers (`--strategy multi_worker`, synchronous data parallelism with
MultiWorkerMirroredStrategy, see `recommenders_tf.models.distribute`): start the same command
on every machine with the standard `TF_CONFIG` set per process and `--set run_dir=...` /
`--set export_dir=...` on folders all of them see:

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' \
      python -m pipelines.train_ranking --loss softmax --dataset synthetic \
        --strategy multi_worker --set run_dir=runs/ranking_two_workers
    # and the same with "index": 1 in a second shell

`ranking.batch_size` is then the global batch (lists per step over all workers). Every worker
builds the same lists (same data, same seed) and trains, evaluates and exports the same
synchronised model; only the chief (worker 0) writes the run folder and the export, the others
write into temporary folders they remove. A restarted cluster resumes from the chief's
checkpoints and, inside an interrupted `fit`, from the `BackupAndRestore` state under
`training/backup`. `--strategy mirrored` uses every local GPU of one machine.

Parameter servers (`--strategy parameter_server`, for user and item tables larger than one
machine): TF_CONFIG lists a `chief` (the coordinator), `worker`s and `ps` tasks, and every task
runs the same command. The worker and ps tasks serve the coordinator until stopped; the
coordinator builds the lists, sends training steps to the workers (variables of at least
2 x `ps_min_shard_bytes` split over the ps tasks), scores the held-out lists after every epoch
with a local copy of the model (for early stopping and the best epoch), and exports that copy.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

from recommenders_tf import cli
from recommenders_tf.cascade.ranking_lists import (RATING_LISTS, RankingDataConfig,
                                                   build_training_lists, resolve_lists)
from recommenders_tf.data import load_dataset, split_for_protocol
from recommenders_tf.data.schema import ITEM_ID
from recommenders_tf.config import ConfigError
from recommenders_tf.models.distribute import (PS_MIN_SHARD_BYTES, STRATEGIES, check_strategy,
                                               make_strategy, num_workers, writable_dir)
from recommenders_tf.runs import claim_run_dir, record_run

# Config fields that may change between a run and its resumption (TensorFlow checkpoints do
# not depend on the strategy that wrote them).
_RESUMABLE_FIELDS = {"strategy", "ps_min_shard_bytes"}


@dataclasses.dataclass
class TrainRankingConfig:
    """Args:
      dataset: dataset spec ("ml-100k", "synthetic", "dir:...", ...).
      protocol: whose split's train part to learn from ("P1" temporal, "P2" rating split).
      seed: split, sampling and model seed.
      ranking: the model and training config (`--loss` sets `ranking.loss`).
      data: list building (`RankingDataConfig`).
      run_dir: parent folder of run folders.
      run_name: run folder name (default: <dataset>-<loss>); reuse it to resume.
      export_dir: TF Serving base path; "" skips the export.
      export_name: model name under export_dir.
      strategy: "default" (one device), "mirrored" (every local GPU), "multi_worker"
        (the machines of TF_CONFIG) or "parameter_server"; see the module docstring.
      ps_min_shard_bytes: under "parameter_server", the smallest shard of a variable split
        over the ps tasks.
      rating_context: a rating model ("mse" on rating lists) that reads the user's rated
        history through a `models.rating_context.RatingContext` (the P2 model; with
        `ranking.id_features=false` it scores from the context alone, as benchmarked); its
        lists take each user's other items as the history and its export takes
        `history_rating`.
      context: the `RatingContextConfig` of `rating_context`.
      text_cache: item-text vector cache of the context's large-model features.
    """

    dataset: str = "ml-100k"
    protocol: str = "P1"
    seed: int = 0
    ranking: Any = None
    data: RankingDataConfig = dataclasses.field(default_factory=RankingDataConfig)
    run_dir: str = "runs/ranking"
    run_name: str = ""
    export_dir: str = "saved_models"
    export_name: str = "ranking"
    strategy: str = "default"
    ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES
    rating_context: bool = False
    context: Any = None
    text_cache: str = "runs/text_cache"

    def __post_init__(self):
        check_strategy(self.strategy, STRATEGIES, "pipelines.train_ranking")
        if not isinstance(self.ps_min_shard_bytes, int) or self.ps_min_shard_bytes < 1:
            raise ConfigError(f"ps_min_shard_bytes must be a positive integer, got "
                              f"{self.ps_min_shard_bytes!r}")
        from recommenders_tf.config import from_dict
        from recommenders_tf.models.ranking import RankingConfig

        if self.ranking is None:
            self.ranking = RankingConfig()
        elif isinstance(self.ranking, dict):
            self.ranking = from_dict(RankingConfig, self.ranking, prefix="ranking.")
        if isinstance(self.data, dict):
            self.data = from_dict(RankingDataConfig, self.data, prefix="data.")
        from recommenders_tf.models.rating_context import RatingContextConfig

        if self.context is None:
            self.context = RatingContextConfig()
        elif isinstance(self.context, dict):
            self.context = from_dict(RatingContextConfig, self.context, prefix="context.")
        if self.rating_context and resolve_lists(self.ranking.loss, self.data) != (
                RATING_LISTS, "rating"):
            raise ConfigError("rating_context needs a rating loss (mse) on rating lists, got "
                              f"loss {self.ranking.loss!r} with lists "
                              f"{resolve_lists(self.ranking.loss, self.data)}")


def main(config: TrainRankingConfig) -> Dict[str, Any]:
    """Builds lists, trains, evaluates on the held-out lists, exports; returns the metrics."""
    # First: a multi-worker strategy has to configure the runtime before any TensorFlow op.
    strategy = make_strategy(config.strategy, min_shard_bytes=config.ps_min_shard_bytes)
    data = load_dataset(config.dataset)
    run_dir = Path(config.run_dir) / (config.run_name or f"{data.name}-{config.ranking.loss}")
    with writable_dir(str(run_dir), strategy) as out:
        return _run(config, strategy, data, run_dir, Path(out))


def _run(config: TrainRankingConfig, strategy, data, run_dir: Path, out: Path
         ) -> Dict[str, Any]:
    """`main` writing its artifacts into `out`: `run_dir` on the chief, a temporary folder on
    the other workers (which still read `run_dir` to resume and train the same model)."""
    from recommenders_tf.features.vocab import save_vocabularies
    from recommenders_tf.data import items_for_train
    from recommenders_tf.features.item_encoding import encode_item_texts
    from recommenders_tf.models.ranking import fit_ranking_model
    from recommenders_tf.models.rating_context import fit_rating_model
    from recommenders_tf.serving.ranking_export import export_ranking

    rcfg = config.ranking
    split = split_for_protocol(config.protocol, data, seed=config.seed)
    # fit_model resumes from the checkpoints it finds: right for this run, wrong for another.
    # Checked against the shared run_dir (what this run resumes from), written by the chief.
    claim_run_dir(run_dir, config, what="ranking run", ignore=_RESUMABLE_FIELDS, write_to=out,
                  data={part: info["sha256"] for part, info in split.manifest()["parts"].items()})
    split.write_manifest(out)
    print(f"Ranking stage: loss {rcfg.loss}, dataset {data.name}, protocol {config.protocol} "
          f"(train part only, {len(split.train)} interactions), run folder {run_dir}, "
          f"strategy {config.strategy}", flush=True)
    if config.rating_context:
        text = None
        if config.context.use_text:
            encoded = encode_item_texts(items_for_train(data, split.train),
                                        cache_dir=config.text_cache)
            text = (encoded.vectors.ids, encoded.vectors.vectors)
        print(f"rating lists with a rated-history context over {config.context.history_len} "
              f"items (features cross-fitted in {config.context.folds} folds)", flush=True)
        model, result, vocabs, info = fit_rating_model(
            rcfg, split.train, str(run_dir / "training"), context=config.context, text=text,
            items=data.items, users=data.users, list_size=config.data.rating_list_size,
            held_out=config.data.validation_fraction, strategy=strategy)
        n_train, n_val = info["n_train_lists"], info["n_validation_lists"]
    else:
        lists, info = build_training_lists(split.train, rcfg, config.data, data.items,
                                           seed=config.seed)
        train_lists, val_lists = lists.split(config.data.validation_fraction, seed=config.seed)
        print(f"{len(lists)} {info['lists']} lists of {lists.list_size} ({lists.num_entries} "
              f"entries, label {info['label']}); {len(val_lists)} held out for early stopping",
              flush=True)
        model, result, vocabs = fit_ranking_model(rcfg, train_lists, val_lists, split.train,
                                                  str(run_dir / "training"), items=data.items,
                                                  users=data.users, strategy=strategy)
        n_train, n_val = len(train_lists), len(val_lists)
    save_vocabularies(vocabs, out / "vocab")
    best = (result.best_epoch or result.epochs_done) - 1
    val_metrics = {k[len("val_"):]: float(v[best]) for k, v in result.history.items()
                   if k.startswith("val_") and "regularization" not in k and best < len(v)}
    metrics: Dict[str, Any] = {
        "loss": rcfg.loss, "validation": val_metrics, "best_epoch": result.best_epoch,
        "epochs_done": result.epochs_done, "stopped_early": result.stopped_early,
        "examples_per_second": result.examples_per_second,
        "train_seconds": round(result.train_seconds, 2), "lists": info,
        "n_train_lists": n_train, "n_validation_lists": n_val,
        "strategy": config.strategy, "workers": num_workers(strategy),
        "replicas": int(strategy.num_replicas_in_sync),
        # Plain types: Keras wraps a dict attribute of a model in a tracking wrapper.
        "sharded_variables": {str(name): [str(d) for d in devices] for name, devices in
                              (getattr(model, "variable_shards", None) or {}).items()},
    }
    export_path: Optional[Path] = None
    if config.export_dir:
        # Every worker exports (the others into a folder they drop): saving reads the model's
        # variables, which may be an all-reduce that needs all of them.
        with writable_dir(config.export_dir, strategy) as export_base:
            export_path = export_ranking(
                model, export_base, config.export_name,
                metadata={"dataset": data.name, "run_dir": str(run_dir),
                          "vocab_sizes": {k: len(v) for k, v in vocabs.items()},
                          "validation_metrics": val_metrics, "list_info": info},
                example_item_ids=vocabs[ITEM_ID].tokens[:2])
        metrics["export"] = str(export_path)
    summary = [f"Loss `{rcfg.loss}`; lists: {info}.",
               f"Best epoch {result.best_epoch} of {result.epochs_done}; held-out lists: "
               + ", ".join(f"{k}={v:.4f}" for k, v in val_metrics.items()),
               f"Throughput: {result.examples_per_second or 0:.0f} list entries/s "
               f"(strategy {config.strategy}, {metrics['workers']} worker(s), "
               f"{metrics['replicas']} replica(s)).",
               f"Export: {export_path or 'skipped'}"]
    record_run(out, config, metrics, summary)
    print("\n".join(summary), flush=True)
    return metrics


def parse_args(argv=None) -> TrainRankingConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], TrainRankingConfig, dataset=True)
    parser.add_argument("--loss", help="ranking loss key (mse, bce, pairwise_logistic, "
                                       "pairwise_hinge, softmax, listmle, approx_ndcg)")
    parser.add_argument("--protocol")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help="tf.distribute strategy (multi_worker and parameter_server read "
                             "TF_CONFIG)")
    return cli.parse_config(TrainRankingConfig, parser, argv,
                            fields={"protocol": "protocol", "seed": "seed",
                                    "loss": "ranking.loss", "strategy": "strategy"})


if __name__ == "__main__":
    cli.run(main, parse_args)
