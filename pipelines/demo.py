"""`make demo`: the main job, end to end, on the offline default (synthetic) data.

Steps, each a pipeline of its own that this module only chains:
  1. prepare_data   load + validate the synthetic data, P1 split, manifest, vocabularies
  2. benchmark      peers side by side under P1 (written under runs/demo, not BENCHMARKS.md)
  3. embed_items    item text vectors from the pretrained MiniLM (cached)
  4. train_retrieval the text-enhanced TFRS two-tower model (P1 split, early stopping)
  5. build_index    BruteForce + ScaNN tuned to recall@10 >= 0.95, both exported for TF Serving
  6. recommend      top-k for one user through the reloaded ScaNN export

  python -m pipelines.demo [--dataset synthetic] [--out runs/demo]
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Dict

from pipelines import benchmark, build_index, embed_items, prepare_data, recommend, train_retrieval
from pipelines.benchmark import dataset_retrieval_overrides
from recommenders_tf.config import from_dict, load_config, to_dict


@dataclasses.dataclass
class DemoConfig:
    """Args:
      dataset: dataset spec; the synthetic generator is the offline default.
      out_dir: everything the demo writes goes below this folder.
      peers: the peers to run side by side under P1.
    """

    dataset: str = "synthetic"
    out_dir: str = "runs/demo"
    peers: tuple = ("most-popular", "implicit-ALS", "implicit-BPR")
    export_dir: str = "saved_models"
    epochs: int = 0  # 0 keeps the retrieval config's default


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _a_test_user(dataset: str) -> str:
    """The first P1 test user (by id), so the printed recommendations can be checked by hand."""
    from recommenders_tf.data import load_dataset, temporal_split

    split = temporal_split(load_dataset(dataset).interactions)
    return str(sorted(split.test["user_id"].unique())[0])


def main(config: DemoConfig) -> Dict[str, Any]:
    out = Path(config.out_dir)
    results: Dict[str, Any] = {}
    _banner("1/6 prepare data")
    results["prepare_data"] = prepare_data.main(prepare_data.PrepareDataConfig(
        dataset=config.dataset, protocol="P1", out_dir=str(out / "prepare_data")))
    _banner("2/6 peers under P1")
    results["benchmark"] = benchmark.main(benchmark.BenchmarkConfig(
        dataset=config.dataset, protocol="P1", models=tuple(config.peers),
        results_dir=str(out / "benchmark" / "results"),
        benchmarks_md=str(out / "benchmark" / "BENCHMARKS.md"), run_dir=str(out / "benchmark")))
    _banner("3/6 item text vectors (pretrained MiniLM)")
    results["embed_items"] = embed_items.main(embed_items.EmbedItemsConfig(
        dataset=config.dataset, out_dir=str(out / "embed_items"),
        cache_dir=str(out / "text_cache")))
    _banner("4/6 train the text-enhanced two-tower retrieval model")
    retrieval_cfg = train_retrieval.TrainRetrievalConfig(
        dataset=config.dataset, text_vectors=str(Path(results["embed_items"]["item_vectors"])),
        run_dir=str(out / "train_retrieval"))
    # Settings chosen on this dataset's validation slice, when the repository has them.
    tuned = {k: v for k, v in dataset_retrieval_overrides(config.dataset).items()
             if k not in ("seed", "verbose")}
    if tuned:
        retrieval_cfg.retrieval = from_dict(type(retrieval_cfg.retrieval),
                                            {**to_dict(retrieval_cfg.retrieval), **tuned})
    if config.epochs:
        retrieval_cfg.retrieval.epochs = config.epochs
    results["train_retrieval"] = train_retrieval.main(retrieval_cfg)
    _banner("5/6 build and export the ScaNN and BruteForce indexes")
    results["build_index"] = build_index.main(build_index.BuildIndexConfig(
        run_dir=str(out / "train_retrieval"), export_dir=config.export_dir,
        out_dir=str(out / "build_index")))
    _banner("6/6 recommend through the reloaded ScaNN export")
    user = _a_test_user(config.dataset)
    results["recommend"] = recommend.main(recommend.RecommendConfig(
        export=str(Path(config.export_dir) / "retrieval_scann"), user_id=user,
        dataset=config.dataset))
    _banner("done")
    two_tower = results["train_retrieval"]["test"]
    print(f"{'two-tower (ours)':>16}: recall@10 {two_tower['recall@10']:.4f}  "
          f"ndcg@10 {two_tower['ndcg@10']:.4f}")
    for row in results["benchmark"]["rows"]:
        m = row["metrics"]
        print(f"{row['model']:>16}: recall@10 {m['recall@10']:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    print(f"Artifacts under {out}/")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset")
    parser.add_argument("--out", dest="out_dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = list(args.set) + [f"{k}={getattr(args, k)}" for k in ("dataset", "out_dir")
                                  if getattr(args, k) is not None]
    main(load_config(DemoConfig, None, overrides))
