"""Run models and peers side by side under one protocol of ../shared/BENCHMARK.md.

Every model in a run sees the same split (printed with its manifest hashes), is tuned only on a
validation slice carved from train, and is evaluated by the same `TopKEvaluator` (P1, P3, P4) or
rating metrics (P2). Results go to `benchmarks/results/<dataset>-<protocol>.json`, and
BENCHMARKS.md is re-rendered from all results files.

  python -m pipelines.benchmark --dataset ml-100k --protocol P1
  python -m pipelines.benchmark --dataset ml-100k --protocol P2
  python -m pipelines.benchmark --dataset synthetic --protocol P1 --models most-popular,implicit-ALS
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from recommenders_tf import cli
from recommenders_tf.config import load_config
from recommenders_tf.data import load_dataset, split_for_protocol, validation_split
from recommenders_tf.data.schema import RATING
from recommenders_tf.evaluation.peers import PEERS, RATING_PEERS, TOPK_PEERS
from recommenders_tf.evaluation.protocol import TopKEvaluator, evaluate_ratings, genre_features
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
from recommenders_tf.runs import make_run_dir, record_run

# name -> (kind, factory(config, dataset, item_ids) -> object with fit(train, validation) and
# score(user_ids, item_ids) [top-K] or predict(pairs) [rating]). Later stages register here.
MODELS: Dict[str, Tuple[str, Callable[..., Any]]] = {}


def register_model(name: str, kind: str, factory: Callable[..., Any]) -> None:
    MODELS[name] = (kind, factory)


def _peer_factory(name: str):
    def make(config: "BenchmarkConfig", data, item_ids):
        cls = PEERS[name]
        if cls.task == "rating":
            return cls(rating_range=data.rating_range, seed=config.seed)
        kwargs = {"item_ids": item_ids}
        if name == "tfrs-tutorial" and data.items is not None:
            kwargs["items"] = data.items
        return cls(**kwargs)

    return make


for _name in TOPK_PEERS + RATING_PEERS:
    register_model(_name, "peer", _peer_factory(_name))

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def dataset_retrieval_overrides(dataset_name: str) -> Dict[str, Any]:
    """The two-tower settings chosen on this dataset's validation slice, if the repository has
    them (`configs/retrieval_<name without dashes>.yaml`, `retrieval:` section); else {}."""
    import yaml

    path = CONFIG_DIR / f"retrieval_{dataset_name.replace('-', '')}.yaml"
    if not path.exists():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("retrieval") or {})


def _two_tower_factory(config: "BenchmarkConfig", data, item_ids):
    from recommenders_tf.models.recommender import TwoTowerRecommender

    overrides = dataset_retrieval_overrides(data.name)
    for key in ("seed", "verbose"):  # the benchmark's seed; no per-epoch logs in tables' runs
        overrides.pop(key, None)
    return TwoTowerRecommender.for_dataset(data, item_ids=item_ids, seed=config.seed, **overrides)


register_model("two-tower", "project", _two_tower_factory)

PROTOCOL_DEFAULT_MODELS = {
    "P1": ["two-tower"] + list(TOPK_PEERS),
    "P2": list(RATING_PEERS),
    "P4": ["two-tower"] + list(TOPK_PEERS),
}


@dataclasses.dataclass
class BenchmarkConfig:
    """Args:
      dataset: dataset spec ("ml-100k", "synthetic", "dir:...", ...).
      protocol: "P1", "P2" or "P4" (P3 and P5 arrive with the models that need them).
      models: model names to run; empty means the protocol's default set.
      seed: split and model seed.
      results_dir: where `<dataset>-<protocol>.json` goes.
      benchmarks_md: the Markdown file re-rendered from all results.
      run_dir: parent of this run's folder (config, metrics, split manifest).
    """

    dataset: str = "ml-100k"
    protocol: str = "P1"
    models: Tuple[str, ...] = ()
    seed: int = 0
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    run_dir: str = "runs/benchmark"


def _topk_rows(config, data, split, names) -> List[Dict[str, Any]]:
    val = validation_split(split.train, seed=config.seed, dataset=data.name)
    features = None
    if data.items is not None and "genres" in data.items.columns:
        features = genre_features(data.items)  # for intra-list diversity@10
    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50), item_features=features)
    buckets = None
    if config.protocol == "P4":
        from recommenders_tf.data import sparsity_buckets

        buckets = sparsity_buckets(split.train).to_dict()
    rows = []
    for name in names:
        kind, factory = MODELS[name]
        model = factory(config, data, evaluator.item_ids)
        print(f"[{config.protocol} {data.name}] fitting {name} ...", flush=True)
        start = time.perf_counter()
        # Tuning sees the validation slice only; the final fit covers all of train.
        model.fit(val.train, validation=val.test)
        seconds = time.perf_counter() - start
        result = evaluator.evaluate(lambda users: model.score(users, evaluator.item_ids),
                                    user_groups=buckets)
        notes = getattr(model, "notes", "")
        metrics = dict(result.metrics)
        if getattr(model, "examples_per_second", None):
            metrics["examples_per_second"] = float(model.examples_per_second)  # P5 throughput
        if buckets is None:
            rows.append({"model": name, "kind": kind, "metrics": _round(metrics),
                         "train_seconds": round(seconds, 2), "notes": notes})
        else:
            for label, metrics in sorted(result.by_group.items()):
                metrics = dict(metrics)
                n = metrics.pop("n_users")
                rows.append({"model": name, "kind": kind, "bucket": label, "n_users": n,
                             "metrics": _round({k: metrics[k] for k in ("ndcg@10", "recall@10")}),
                             "train_seconds": round(seconds, 2)})
        print(f"  {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                                       if k in ("recall@10", "recall@50", "ndcg@10")), flush=True)
    return rows


def _rating_rows(config, data, split, names) -> List[Dict[str, Any]]:
    rows = []
    for name in names:
        kind, factory = MODELS[name]
        model = factory(config, data, None)
        print(f"[P2 {data.name}] fitting {name} ...", flush=True)
        start = time.perf_counter()
        model.fit(split.train)
        seconds = time.perf_counter() - start
        pred = model.predict(split.test)
        metrics = evaluate_ratings(split.test[RATING].to_numpy(), pred, data.rating_range)
        rows.append({"model": name, "kind": kind, "metrics": _round(metrics),
                     "train_seconds": round(seconds, 2), "notes": getattr(model, "notes", "")})
        print(f"  {name}: rmse={metrics['rmse']:.4f} mae={metrics['mae']:.4f}", flush=True)
    return rows


def _round(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: (round(float(v), 5) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.items() if k != "n_users"}


def main(config: BenchmarkConfig) -> Dict[str, Any]:
    protocol = config.protocol.upper()
    if protocol not in PROTOCOL_DEFAULT_MODELS:
        raise ValueError(f"protocol {config.protocol!r} is not available yet; "
                         f"choose one of {sorted(PROTOCOL_DEFAULT_MODELS)}")
    names = list(config.models) or PROTOCOL_DEFAULT_MODELS[protocol]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    data = load_dataset(config.dataset)
    split = split_for_protocol(protocol, data, seed=config.seed)
    run_dir = make_run_dir(config.run_dir, f"{data.name}-{protocol}")
    split.write_manifest(run_dir)
    manifest = split.manifest()
    print(f"Protocol {protocol}, dataset {data.name}, seed {config.seed}, models: {', '.join(names)}")
    print("Split: " + ", ".join(f"{k} {v['rows']} rows (sha256 {v['sha256'][:12]})"
                                for k, v in manifest["parts"].items()))
    if protocol == "P2":
        rows = _rating_rows(config, data, split, names)
    else:
        rows = _topk_rows(config, data, split, names)
    command = "python -m pipelines.benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
        if sys.argv and sys.argv[0].endswith("benchmark.py") else \
        f"python -m pipelines.benchmark --dataset {config.dataset} --protocol {protocol}"
    split_info = {k: v["rows"] for k, v in manifest["parts"].items()}
    split_info = {f"{k} rows": v for k, v in split_info.items()}
    path = write_results(Path(config.results_dir), protocol=protocol, dataset=data.name,
                         seed=config.seed, command=command, rows=rows, split=split_info)
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    results = {"protocol": protocol, "dataset": data.name, "results_file": str(path), "rows": rows}
    record_run(run_dir, config, results, [f"Results: {path}"])
    return results


def parse_args(argv=None) -> BenchmarkConfig:
    parser = cli.make_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with BenchmarkConfig fields")
    parser.add_argument("--dataset")
    parser.add_argument("--protocol")
    parser.add_argument("--models", help="comma-separated model names")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key in ("dataset", "protocol", "models", "seed"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    return load_config(BenchmarkConfig, args.config, overrides)


if __name__ == "__main__":
    cli.run(main, parse_args)
