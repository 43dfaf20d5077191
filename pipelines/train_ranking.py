"""Train the ranking stage with any loss of the registry, then export it for TF Serving.

  python -m pipelines.train_ranking --loss softmax
  python -m pipelines.train_ranking --loss mse --dataset ml-100k --protocol P2
  python -m pipelines.train_ranking --loss listmle --set data.negatives=easy --set ranking.epochs=5

Data (only the train part of the protocol's split is read; its test part is never touched):
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
import time
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from recommenders_tf import cli
from recommenders_tf.config import load_config, save_config, to_dict
from recommenders_tf.data import load_dataset, split_for_protocol, validation_split
from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.runs import make_run_dir, record_run

RATING_LISTS, CANDIDATE_LISTS = "ratings", "candidates"


@dataclasses.dataclass
class RankingDataConfig:
    """How the training lists are built.

    Args:
      lists: "auto" ("ratings" for pointwise losses, "candidates" otherwise), "ratings" or
        "candidates" (see the module docstring).
      rating_list_size: entries per "ratings" list.
      list_size: entries per "candidates" list.
      max_positives: positives per "candidates" list.
      negatives: "hard" (retrieval candidates) or "easy" (catalog).
      candidate_source: retrieval stage for hard negatives ("two-tower", "implicit-ALS",
        "implicit-BPR", "most-popular").
      num_candidates: retrieval candidates per user the hard negatives are drawn from.
      label: "auto" (ratings lists: rating for "mse", click otherwise; candidates lists:
        binary), "rating", "click" or "binary".
      click_threshold: rating that counts as a click.
      validation_fraction: share of lists held out for early stopping.
    """

    lists: str = "auto"
    rating_list_size: int = 16
    list_size: int = 50
    max_positives: int = 5
    negatives: str = "hard"
    candidate_source: str = "implicit-ALS"
    num_candidates: int = 100
    label: str = "auto"
    click_threshold: float = 4.0
    validation_fraction: float = 0.1


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


def resolve_lists(config: TrainRankingConfig) -> tuple:
    """(list kind, label) after resolving "auto" for the configured loss."""
    from recommenders_tf.models.losses import get_loss

    spec = get_loss(config.ranking.loss)
    kind = config.data.lists
    if kind == "auto":
        kind = RATING_LISTS if spec.mode == "pointwise" else CANDIDATE_LISTS
    if kind not in (RATING_LISTS, CANDIDATE_LISTS):
        raise ValueError(f"data.lists must be auto, {RATING_LISTS} or {CANDIDATE_LISTS}, "
                         f"got {kind!r}")
    label = config.data.label
    if label == "auto":
        if kind == RATING_LISTS:
            label = "rating" if spec.predicts_rating else "click"
        else:
            label = "binary"
    if spec.predicts_rating and label != "rating":
        raise ValueError(f"loss {spec.key!r} predicts ratings; it needs data.label=rating")
    if spec.label_kind == "click" and label == "rating":
        raise ValueError(f"loss {spec.key!r} needs 0/1 labels; use data.label=click or binary")
    return kind, label


def build_training_lists(config: TrainRankingConfig, train, items=None, log=print):
    """The training lists from the train part of a split (see the module docstring)."""
    from recommenders_tf.models.ranking_data import (candidate_lists, make_candidate_source,
                                                     rating_lists, top_candidates)

    kind, label = resolve_lists(config)
    rcfg, dcfg = config.ranking, config.data
    if kind == RATING_LISTS:
        lists = rating_lists(train, dcfg.rating_list_size, rcfg.history_len, label=label,
                             click_threshold=dcfg.click_threshold)
        return lists, {"lists": kind, "label": label}
    cut = validation_split(train, seed=config.seed)
    candidates = None
    info: Dict[str, Any] = {"lists": kind, "label": label, "negatives": dcfg.negatives}
    if dcfg.negatives == "hard":
        catalog = sorted(cut.train[ITEM_ID].astype(str).unique())
        source = make_candidate_source(dcfg.candidate_source, catalog, items, config.seed)
        # The retrieval stage sees only the part before the cut, tuned on its own later slice.
        inner = validation_split(cut.train, seed=config.seed)
        log(f"fitting candidate source {dcfg.candidate_source} on {len(cut.train)} "
            "interactions before the cut ...")
        start = time.perf_counter()
        source.fit(inner.train, validation=inner.test)
        users = sorted(cut.test[USER_ID].astype(str).unique())
        top = top_candidates(lambda u: source.score(u, catalog), users, catalog, cut.train,
                             dcfg.num_candidates)
        candidates = dict(zip(users, top))
        info.update(candidate_source=dcfg.candidate_source,
                    candidate_seconds=round(time.perf_counter() - start, 2),
                    candidate_notes=getattr(source, "notes", ""))
    lists = candidate_lists(cut.train, cut.test, dcfg.list_size, negatives=dcfg.negatives,
                            candidates=candidates, max_positives=dcfg.max_positives,
                            history_len=rcfg.history_len, label=label,
                            click_threshold=dcfg.click_threshold, seed=config.seed)
    return lists, info


def _claim_run_dir(run_dir: Path, config: TrainRankingConfig) -> None:
    """Saves the config; a folder holding another config is refused, not resumed.

    `fit_model` resumes from the checkpoints it finds, which is right for an interrupted run
    and wrong for a different one (it would continue another model).
    """
    path = run_dir / "config.yaml"
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if path.exists() and path.read_text(encoding="utf-8") != text:
        raise ValueError(f"{run_dir} holds a run with a different config ({path}); pass "
                         "--set run_name=<new name> or delete the folder to start over")
    save_config(config, run_dir)


def main(config: TrainRankingConfig) -> Dict[str, Any]:
    """Builds lists, trains, evaluates on the held-out lists, exports; returns the metrics."""
    from recommenders_tf.features.vocab import save_vocabularies
    from recommenders_tf.models.ranking import fit_ranking_model
    from recommenders_tf.serving.ranking_export import export_ranking

    rcfg = config.ranking
    data = load_dataset(config.dataset)
    split = split_for_protocol(config.protocol, data, seed=config.seed)
    run_dir = make_run_dir(config.run_dir, config.run_name or f"{data.name}-{rcfg.loss}")
    _claim_run_dir(run_dir, config)
    split.write_manifest(run_dir)
    print(f"Ranking stage: loss {rcfg.loss}, dataset {data.name}, protocol {config.protocol} "
          f"(train part only, {len(split.train)} interactions), run folder {run_dir}",
          flush=True)
    lists, info = build_training_lists(config, split.train, data.items)
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
    parser = cli.make_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with TrainRankingConfig fields")
    parser.add_argument("--loss", help="ranking loss key (mse, bce, pairwise_logistic, "
                                       "pairwise_hinge, softmax, listmle, approx_ndcg)")
    parser.add_argument("--dataset")
    parser.add_argument("--protocol")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, e.g. ranking.epochs=5 or data.negatives=easy")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key in ("dataset", "protocol", "seed"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    if args.loss is not None:
        overrides.append(f"ranking.loss={args.loss}")
    return load_config(TrainRankingConfig, args.config, overrides)


if __name__ == "__main__":
    cli.run(main, parse_args)
