"""Train the ranking stage with any loss of the registry, then export it for TF Serving.

  python -m pipelines.train_ranking --loss softmax
  python -m pipelines.train_ranking --loss mse --dataset ml-100k --protocol P2
  python -m pipelines.train_ranking --loss listmle --set data.negatives=easy --set ranking.epochs=5

Data (only the train part of the protocol's split is read; its test part is never touched;
the lists are built by `recommenders_tf.cascade.ranking_lists`):
  * "ratings" lists (default for "mse" and "bce"): the train interactions cut into per-user
    lists in time order; labels are ratings ("mse") or clicks, rating >= click_threshold ("bce").
  * "candidates" lists (default for pairwise/listwise): the train part is cut again in time
    (`validation_split`); each user's later interactions are the positives, filled with
    negatives from the retrieval stage's top candidates after the cut ("hard", the retrieval
    model is fitted on the earlier part only) or from the catalog ("easy").
A seeded share of the lists (`validation_fraction`) is held out for early stopping.

Artifacts: runs/ranking/<run>/ holds config.yaml, vocab/, checkpoints/, tensorboard/,
history.json, training_curves.png, metrics.json and summary.md; the model is exported to
saved_models/ranking/<next integer version>/.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

from recommenders_tf import cli
from recommenders_tf.cascade.ranking_lists import RankingDataConfig, build_training_lists
from recommenders_tf.data import load_dataset, split_for_protocol
from recommenders_tf.data.schema import ITEM_ID
from recommenders_tf.runs import claim_run_dir, make_run_dir, record_run


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

    def __post_init__(self):
        from recommenders_tf.config import from_dict
        from recommenders_tf.models.ranking import RankingConfig

        if self.ranking is None:
            self.ranking = RankingConfig()
        elif isinstance(self.ranking, dict):
            self.ranking = from_dict(RankingConfig, self.ranking, prefix="ranking.")
        if isinstance(self.data, dict):
            self.data = from_dict(RankingDataConfig, self.data, prefix="data.")


def main(config: TrainRankingConfig) -> Dict[str, Any]:
    """Builds lists, trains, evaluates on the held-out lists, exports; returns the metrics."""
    from recommenders_tf.features.vocab import save_vocabularies
    from recommenders_tf.models.ranking import fit_ranking_model
    from recommenders_tf.serving.ranking_export import export_ranking

    rcfg = config.ranking
    data = load_dataset(config.dataset)
    split = split_for_protocol(config.protocol, data, seed=config.seed)
    run_dir = make_run_dir(config.run_dir, config.run_name or f"{data.name}-{rcfg.loss}")
    # fit_model resumes from the checkpoints it finds: right for this run, wrong for another.
    claim_run_dir(run_dir, config, what="ranking run",
                  data={part: info["sha256"] for part, info in split.manifest()["parts"].items()})
    split.write_manifest(run_dir)
    print(f"Ranking stage: loss {rcfg.loss}, dataset {data.name}, protocol {config.protocol} "
          f"(train part only, {len(split.train)} interactions), run folder {run_dir}",
          flush=True)
    lists, info = build_training_lists(split.train, rcfg, config.data, data.items,
                                       seed=config.seed)
    train_lists, val_lists = lists.split(config.data.validation_fraction, seed=config.seed)
    print(f"{len(lists)} {info['lists']} lists of {lists.list_size} ({lists.num_entries} "
          f"entries, label {info['label']}); {len(val_lists)} held out for early stopping",
          flush=True)
    model, result, vocabs = fit_ranking_model(rcfg, train_lists, val_lists, split.train,
                                              str(run_dir / "training"), items=data.items,
                                              users=data.users)
    save_vocabularies(vocabs, run_dir / "vocab")
    best = (result.best_epoch or result.epochs_done) - 1
    val_metrics = {k[len("val_"):]: float(v[best]) for k, v in result.history.items()
                   if k.startswith("val_") and "regularization" not in k and best < len(v)}
    metrics: Dict[str, Any] = {
        "loss": rcfg.loss, "validation": val_metrics, "best_epoch": result.best_epoch,
        "epochs_done": result.epochs_done, "stopped_early": result.stopped_early,
        "examples_per_second": result.examples_per_second,
        "train_seconds": round(result.train_seconds, 2), "lists": info,
        "n_train_lists": len(train_lists), "n_validation_lists": len(val_lists),
    }
    export_path: Optional[Path] = None
    if config.export_dir:
        export_path = export_ranking(
            model, config.export_dir, config.export_name,
            metadata={"dataset": data.name, "run_dir": str(run_dir),
                      "vocab_sizes": {k: len(v) for k, v in vocabs.items()},
                      "validation_metrics": val_metrics, "list_info": info},
            example_item_ids=vocabs[ITEM_ID].tokens[:2])
        metrics["export"] = str(export_path)
    summary = [f"Loss `{rcfg.loss}`; lists: {info}.",
               f"Best epoch {result.best_epoch} of {result.epochs_done}; held-out lists: "
               + ", ".join(f"{k}={v:.4f}" for k, v in val_metrics.items()),
               f"Throughput: {result.examples_per_second or 0:.0f} list entries/s.",
               f"Export: {export_path or 'skipped'}"]
    record_run(run_dir, config, metrics, summary)
    print("\n".join(summary), flush=True)
    return metrics


def parse_args(argv=None) -> TrainRankingConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], TrainRankingConfig, dataset=True)
    parser.add_argument("--loss", help="ranking loss key (mse, bce, pairwise_logistic, "
                                       "pairwise_hinge, softmax, listmle, approx_ndcg)")
    parser.add_argument("--protocol")
    parser.add_argument("--seed", type=int)
    return cli.parse_config(TrainRankingConfig, parser, argv,
                            fields={"protocol": "protocol", "seed": "seed",
                                    "loss": "ranking.loss"})


if __name__ == "__main__":
    cli.run(main, parse_args)
