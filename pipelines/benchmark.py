"""Run models and peers side by side under one protocol of ../shared/BENCHMARK.md.

Every model in a run sees the same split (printed with its manifest hashes), is tuned only on a
validation slice carved from train, and is evaluated by the same `TopKEvaluator` (P1, P3, P4) or
rating metrics (P2). Results go to `benchmarks/results/<dataset>-<protocol>.json`, and
BENCHMARKS.md is re-rendered from all results files.

  python -m pipelines.benchmark --dataset ml-100k --protocol P1
  python -m pipelines.benchmark --dataset ml-100k --protocol P2
  python -m pipelines.benchmark --dataset synthetic --protocol P1 --models most-popular,implicit-ALS

Models are looked up by name in `recommenders_tf.evaluation.registry` (its "project" and
"peer" entries of the protocol's task).

  python -m pipelines.benchmark --dataset synthetic-10m --protocol P1 --set max_eval_users=20000

evaluates (P1, P4) a seeded sample of the test users, the one `pipelines.run_all` draws with
the same cap and seed, and scores each grid point of the tuned peers on at most as many
validation users; the sample is recorded in the rows' notes and the results.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from recommenders_tf import cli
from recommenders_tf.data import (load_dataset, sample_test_users, split_for_protocol,
                                  validation_split)
from recommenders_tf.data.schema import RATING
from recommenders_tf.evaluation.protocol import TopKEvaluator, evaluate_ratings, genre_features
from recommenders_tf.evaluation.registry import available, build_as_benchmarked, get_spec
from recommenders_tf.evaluation.report import (render_benchmarks_md, round_metrics,
                                               write_results)
from recommenders_tf.runs import make_run_dir, record_run


def build_model(name: str, config: "BenchmarkConfig", data, item_ids=None):
    """The registry model `name` for this run (`build_as_benchmarked` with the run's seed and
    validation-user cap)."""
    return build_as_benchmarked(name, data, item_ids, seed=config.seed,
                                max_validation_users=config.max_eval_users)


PROTOCOL_TASKS = {"P1": "topk", "P2": "rating", "P4": "topk"}
PROTOCOL_DEFAULT_MODELS = {
    "P1": ["two-tower"] + list(available(kind="peer", task="topk")),
    "P2": list(available(kind="peer", task="rating")),
    "P4": ["two-tower"] + list(available(kind="peer", task="topk")),
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
      max_eval_users: test users P1 / P4 are evaluated on, a seeded sample once there are more
        (0: all). The sample is `pipelines.run_all`'s (`sample_users` of the test users in row
        order, the run's seed), so with the same cap both evaluate the same users. The
        grid-searched peers also score each setting on at most this many validation users.
        Rows and results record the sample size.
    """

    dataset: str = "ml-100k"
    protocol: str = "P1"
    models: Tuple[str, ...] = ()
    seed: int = 0
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    run_dir: str = "runs/benchmark"
    max_eval_users: int = 0

    def __post_init__(self):
        if isinstance(self.max_eval_users, bool) or not isinstance(self.max_eval_users, int) \
                or self.max_eval_users < 0:
            raise ValueError(f"max_eval_users must be 0 (all) or a positive integer, got "
                             f"{self.max_eval_users!r}")


def sample_note(sample: Dict[str, int]) -> str:
    """"evaluated on 20000 of 35412 test users (seed 0)", or "" when every user was."""
    if sample["sampled"] >= sample["of"]:
        return ""
    return (f"evaluated on {sample['sampled']} of {sample['of']} test users "
            f"(seed {sample['seed']})")


def _topk_rows(config, data, split, names) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    val = validation_split(split.train, seed=config.seed, dataset=data.name)
    features = None
    if data.items is not None and "genres" in data.items.columns:
        features = genre_features(data.items)  # for intra-list diversity@10
    test, sample = sample_test_users(split.test, config.max_eval_users, config.seed)
    note = sample_note(sample)
    if note:
        print(f"[{config.protocol} {data.name}] {note}", flush=True)
    evaluator = TopKEvaluator(split.train, test, ks=(10, 50), item_features=features)
    buckets = None
    if config.protocol == "P4":
        from recommenders_tf.data import sparsity_buckets

        buckets = sparsity_buckets(split.train).to_dict()
    rows = []
    for name in names:
        kind = get_spec(name).kind
        model = build_model(name, config, data, evaluator.item_ids)
        print(f"[{config.protocol} {data.name}] fitting {name} ...", flush=True)
        start = time.perf_counter()
        # Tuning sees the validation slice only; the final fit covers all of train.
        model.fit(val.train, validation=val.test)
        seconds = time.perf_counter() - start
        result = evaluator.evaluate(lambda users: model.score(users, evaluator.item_ids),
                                    user_groups=buckets)
        notes = "; ".join(n for n in (getattr(model, "notes", ""), note) if n)
        metrics = dict(result.metrics)
        if getattr(model, "examples_per_second", None):
            metrics["examples_per_second"] = float(model.examples_per_second)  # P5 throughput
        if buckets is None:
            rows.append({"model": name, "kind": kind, "metrics": round_metrics(metrics),
                         "train_seconds": round(seconds, 2), "notes": notes})
        else:
            for label, metrics in sorted(result.by_group.items()):
                metrics = dict(metrics)
                n = metrics.pop("n_users")
                rows.append({"model": name, "kind": kind, "bucket": label, "n_users": n,
                             "metrics": round_metrics({k: metrics[k]
                                                       for k in ("ndcg@10", "recall@10")}),
                             "train_seconds": round(seconds, 2),
                             **({"notes": note} if note else {})})
        print(f"  {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                                       if k in ("recall@10", "recall@50", "ndcg@10")), flush=True)
    return rows, sample


def _rating_rows(config, data, split, names) -> List[Dict[str, Any]]:
    rows = []
    for name in names:
        kind = get_spec(name).kind
        model = build_model(name, config, data)
        print(f"[P2 {data.name}] fitting {name} ...", flush=True)
        start = time.perf_counter()
        model.fit(split.train)
        seconds = time.perf_counter() - start
        pred = model.predict(split.test)
        metrics = evaluate_ratings(split.test[RATING].to_numpy(), pred, data.rating_range)
        rows.append({"model": name, "kind": kind, "metrics": round_metrics(metrics),
                     "train_seconds": round(seconds, 2), "notes": getattr(model, "notes", "")})
        print(f"  {name}: rmse={metrics['rmse']:.4f} mae={metrics['mae']:.4f}", flush=True)
    return rows


def main(config: BenchmarkConfig) -> Dict[str, Any]:
    protocol = config.protocol.upper()
    if protocol not in PROTOCOL_DEFAULT_MODELS:
        raise ValueError(f"protocol {config.protocol!r} is not available yet; "
                         f"choose one of {sorted(PROTOCOL_DEFAULT_MODELS)}")
    names = list(config.models) or PROTOCOL_DEFAULT_MODELS[protocol]
    # P2 rows call predict, the others score: a model of the other task cannot run here. The
    # text baselines are left to pipelines.bench_text, which gives them the split's item text.
    task = PROTOCOL_TASKS[protocol]
    known = [n for n in available(task=task) if get_spec(n).kind in ("project", "peer")]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} for {protocol}; known: {', '.join(known)}")
    data = load_dataset(config.dataset)
    split = split_for_protocol(protocol, data, seed=config.seed)
    run_dir = make_run_dir(config.run_dir, f"{data.name}-{protocol}")
    split.write_manifest(run_dir)
    manifest = split.manifest()
    print(f"Protocol {protocol}, dataset {data.name}, seed {config.seed}, models: {', '.join(names)}")
    print("Split: " + ", ".join(f"{k} {v['rows']} rows (sha256 {v['sha256'][:12]})"
                                for k, v in manifest["parts"].items()))
    sample = None
    if protocol == "P2":
        rows = _rating_rows(config, data, split, names)
    else:
        rows, sample = _topk_rows(config, data, split, names)
    note = sample_note(sample) if sample else ""
    command = cli.command_line("pipelines.benchmark",
                               f"--dataset {config.dataset} --protocol {protocol}")
    split_info = {k: v["rows"] for k, v in manifest["parts"].items()}
    split_info = {f"{k} rows": v for k, v in split_info.items()}
    notes = [f"Metrics {note} (max_eval_users {config.max_eval_users}); tuned peers scored "
             f"each setting on at most {config.max_eval_users} validation users."] if note else None
    path = write_results(Path(config.results_dir), protocol=protocol, dataset=data.name,
                         seed=config.seed, command=command, rows=rows, split=split_info,
                         notes=notes)
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    results = {"protocol": protocol, "dataset": data.name, "results_file": str(path), "rows": rows}
    if sample is not None:
        results["evaluation_users"] = sample
    record_run(run_dir, config, results, [f"Results: {path}"] + (notes or []))
    return results


def parse_args(argv=None) -> BenchmarkConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchmarkConfig, dataset=True)
    parser.add_argument("--protocol")
    parser.add_argument("--models", help="comma-separated model names")
    parser.add_argument("--seed", type=int)
    return cli.parse_config(BenchmarkConfig, parser, argv, fields=("protocol", "models", "seed"))


if __name__ == "__main__":
    cli.run(main, parse_args)
