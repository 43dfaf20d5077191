"""P3 (cold-start items) and P4 (sparsity buckets) for the text-using models.

  python -m pipelines.bench_text                      # P3 on synthetic + ml-100k, P4 on ml-100k
  python -m pipelines.bench_text --set p3_datasets=[synthetic] --set p4_datasets=[]

P3 (../shared/BENCHMARK.md): `cold_item_split` holds out 20% of the items; each user with a
held-out interaction ranks the held-out items only. Rows: chance (exact expectation), item-text
nearest neighbours with TF-IDF and with the language-model vectors (profile = mean of the
user's train items), the ID-only two-tower, the text-enhanced two-tower (frozen LM vector with
a trained projection + item-id dropout, zero id vector for unknown items) and the DMF hybrid.
The project models choose their epochs on a cold-item validation carved from TRAIN with the
same rule (`cold_item_split(train)`: its held-out items are ranked for its users), then refit
on train + validation; test data never reaches a fit.

The project models are built by name from `recommenders_tf.evaluation.registry` with this
bench's settings (`model_settings`).

P4: the P1 split; test users bucketed by train interactions (1-20, 21-50, 51-150, >150); per
bucket NDCG@10 / Recall@10 with the bucket sizes, plus an "all" row (the P1 figure). Epochs
and the two-towers' searched settings (`TwoTowerConfig.search`) are chosen on the P1 validation
slice of train, and so is the text two-tower's item-id dropout (`p4_text_dropouts`: items are
warm here, so the dropout that protects cold items may cost).
The peers (`p4_peers`: implicit-ALS, EASE, RP3beta, SASRec by default) are tuned on the same
slice and evaluated on the same buckets in the same run; a note compares the LM model with
the ID-only one, implicit-ALS and the best peer bucket by bucket. With `p4_cascade` the whole
cascade (`cascade.fit_cascade`, the two-tower with its dataset's settings, the ranker with the
LM text context, the re-ranker) is fitted on the same train part and its final top 10 is
bucketed too: it is the package's LM-enhanced recommender as served.

Item vectors come from `pipelines.embed_items` (MiniLM, cache under runs/text_cache); the
encoder throughput and the cache hits of this run's re-embedding go into the notes.
Results: benchmarks/results/<dataset>-P3.json, ml-100k-P4.json; BENCHMARKS.md re-rendered.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from recommenders_tf import cli
from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.fit import fit_cascade
from recommenders_tf.config import dataset_retrieval_overrides
from recommenders_tf.data import (items_for_train, load_dataset, split_for_protocol,
                                   validation_split)
from recommenders_tf.data.splits import cold_item_split, sparsity_buckets
from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.evaluation.registry import get_model, get_spec
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
from recommenders_tf.evaluation.text_baselines import evaluate_text_baselines
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.features.text_encoder import DEFAULT_MODEL
from recommenders_tf.models.recommender import DEFAULT_SEARCH
from recommenders_tf.runs import make_run_dir, record_run, slug

PROJECT_MODELS = ("two-tower-id", "two-tower-text", "dmf-hybrid")
P3_METRICS = ("recall@10", "ndcg@10", "recall@50", "hr@10", "mrr@10")
P4_METRICS = ("ndcg@10", "recall@10")
P4_PEERS = ("implicit-ALS", "EASE", "RP3beta", "SASRec")
SPARSE_BUCKETS = ("1-20", "21-50")


@dataclasses.dataclass
class BenchTextConfig:
    """Args:
      p3_datasets: datasets for P3 (cold-start items).
      p4_datasets: datasets for P4 (sparsity buckets).
      models: project models to run (of PROJECT_MODELS); the text baselines always run.
      seed: split and model seed.
      item_id_dropout: the text two-tower's item-id dropout (0.5 beat 0.8 on the synthetic
        cold-item validation slice).
      text_embedding_dim: width of the text-vector projection of the text two-tower.
      max_epochs: cap on every project model's epoch search (None: each model's default).
      text_model: sentence encoder for the item vectors.
      cache_dir: text-vector cache.
      embed_dir: parent of the per-dataset `pipelines.embed_items` outputs.
      results_dir, benchmarks_md, run_dir: outputs.
      plot_dir: where the P4 per-bucket bar plots go (`p4-<dataset>.png`).
      p4_peers: registry peers run beside the project models in P4 (same split, validation
        slice and buckets).
      p4_text_dropouts: item-id dropouts the P4 text two-tower's settings search tries (after
        the two-tower's own searched settings); the first is where it starts (one value: no
        choice).
      dmf_prior_neighbors: text neighbours of the DMF hybrid's popularity prior (its weight,
        0 among the tries, is chosen on the validation slice; 0 here: no prior).
      p4_cascade: also fit the whole cascade on the P4 train part and bucket its final lists.
    """

    p3_datasets: Tuple[str, ...] = ("synthetic", "ml-100k")
    p4_datasets: Tuple[str, ...] = ("ml-100k", "synthetic")
    models: Tuple[str, ...] = PROJECT_MODELS
    seed: int = 0
    item_id_dropout: float = 0.5
    text_embedding_dim: int = 64
    max_epochs: Optional[int] = None
    text_model: str = DEFAULT_MODEL
    cache_dir: str = "runs/text_cache"
    embed_dir: str = "runs/embed_items"
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    plot_dir: str = "benchmarks"
    run_dir: str = "runs/bench_text"
    p4_peers: Tuple[str, ...] = P4_PEERS
    p4_text_dropouts: Tuple[float, ...] = (0.0, 0.5)
    dmf_prior_neighbors: int = 100
    p4_cascade: bool = True

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in PROJECT_MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from {PROJECT_MODELS}")
        not_peers = [m for m in self.p4_peers if get_spec(m).kind != "peer"
                     or get_spec(m).task != "topk"]
        if not_peers:
            raise ValueError(f"p4_peers must be top-K peers of the registry, got {not_peers}")
        if not self.p4_text_dropouts or not all(0.0 <= d < 1.0 for d in self.p4_text_dropouts):
            raise ValueError(f"p4_text_dropouts must be values in [0, 1), got "
                             f"{self.p4_text_dropouts}")


def item_vectors_for(config: BenchTextConfig, spec: str, protocol: str = "P3"
                     ) -> Tuple[ItemVectors, Dict[str, Any]]:
    """Runs `pipelines.embed_items` for the dataset on `protocol`'s split (cache hits make a
    re-run cheap) and loads its item vectors; returns them with the step's metrics (throughput,
    cache hits). The split matters: item text carries only the tags its train part allows."""
    from pipelines.embed_items import EmbedItemsConfig
    from pipelines.embed_items import main as embed_main

    out = Path(config.embed_dir) / slug(load_dataset(spec).name)
    result = embed_main(EmbedItemsConfig(dataset=spec, model=config.text_model,
                                         cache_dir=config.cache_dir, out_dir=str(out),
                                         split_protocol=protocol, seed=config.seed,
                                         progress=False))
    return ItemVectors.load(result["item_vectors"]), result["metrics"]


def model_settings(config: BenchTextConfig, name: str) -> Dict[str, Any]:
    """The settings of this bench that apply to project model `name` (registry keywords)."""
    settings: Dict[str, Any] = {"seed": config.seed}
    if config.max_epochs is not None:
        settings["epochs"] = int(config.max_epochs)
    if name.startswith("two-tower"):
        settings["text_embedding_dim"] = config.text_embedding_dim
    if name == "two-tower-text":
        settings["item_id_dropout"] = config.item_id_dropout
    if name == "dmf-hybrid":
        settings["prior_neighbors"] = config.dmf_prior_neighbors
    return settings


def build_model(config: BenchTextConfig, name: str, data, vectors: ItemVectors):
    """The registry model `name` with this bench's settings, the dataset and its item vectors."""
    return get_model(name, data=data, item_vectors=vectors, **model_settings(config, name))


def _round(metrics: Dict[str, float], keys) -> Dict[str, float]:
    return {k: round(float(metrics[k]), 5) for k in keys if k in metrics}


def run_p3(config: BenchTextConfig, spec: str) -> Dict[str, Any]:
    data = load_dataset(spec)
    vectors, embed_metrics = item_vectors_for(config, spec, "P3")
    split = split_for_protocol("P3", data, seed=config.seed)
    cold = split.info["cold_items"]
    print(f"[P3 {data.name}] {len(cold)} cold items, train {len(split.train)} rows, "
          f"test {len(split.test)} rows", flush=True)
    rows: List[Dict[str, Any]] = []
    start = time.perf_counter()
    baselines = evaluate_text_baselines(split.train, split.test,
                                        items=items_for_train(data, split.train),
                                        item_vectors=vectors, ks=(10, 50), candidate_items=cold)
    base_seconds = time.perf_counter() - start
    kinds = {"chance": "reference", "tfidf-knn": "baseline", "lm-knn": "baseline"}
    notes = {"chance": "exact expectation of a uniformly random ranking",
             "tfidf-knn": "TF-IDF of the item text; profile = mean of the user's train items",
             "lm-knn": f"{vectors.model} item vectors; profile = mean of the user's train items"}
    for name, result in baselines.items():
        rows.append({"model": name, "kind": kinds[name], "metrics": _round(result.metrics,
                                                                            P3_METRICS),
                     "train_seconds": round(base_seconds, 2) if name != "chance" else 0.0,
                     "notes": notes[name]})
    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50), candidate_items=cold)
    val = cold_item_split(split.train, seed=config.seed, dataset=data.name)
    for name in config.models:
        print(f"[P3 {data.name}] fitting {name} ...", flush=True)
        model = build_model(config, name, data, vectors)
        start = time.perf_counter()
        model.fit(val.train, validation=val.test, validation_candidates=val.info["cold_items"])
        seconds = time.perf_counter() - start
        result = evaluator.evaluate(lambda users: model.score(users, evaluator.item_ids))
        rows.append({"model": name, "kind": "project",
                     "metrics": _round(result.metrics, P3_METRICS),
                     "train_seconds": round(seconds, 2),
                     "notes": getattr(model, "notes", "") + " (cold-item validation)"})
        print(f"  {name}: " + ", ".join(f"{k}={result.metrics[k]:.4f}"
                                       for k in ("recall@10", "ndcg@10")), flush=True)
    split_info = {"train rows": len(split.train), "test rows": len(split.test),
                  "cold items": len(cold), "test users": len(evaluator.user_ids)}
    return {"data": data, "rows": rows, "split": split_info,
            "notes": [_encoding_note(embed_metrics)]}


def _fit_p4_model(config: BenchTextConfig, name: str, data, vectors: ItemVectors, val):
    """Fits project model `name` on the P4 validation slice (settings and epochs chosen there,
    refit on train). The text two-tower's search also chooses its item-id dropout, among
    `config.p4_text_dropouts`; returns (model, seconds of the fit, note on that choice)."""
    settings = dict(model_settings(config, name))
    note = ""
    if name == "two-tower-text":
        settings["item_id_dropout"] = config.p4_text_dropouts[0]
        settings["search"] = {**DEFAULT_SEARCH, "item_id_dropout": config.p4_text_dropouts}
        note = "item_id_dropout chosen on validation with the other searched settings"
    model = get_model(name, data=data, item_vectors=vectors, **settings)
    start = time.perf_counter()
    model.fit(val.train, validation=val.test)
    return model, time.perf_counter() - start, note if len(config.p4_text_dropouts) > 1 else ""


def _bucket_rows(name: str, kind: str, result, seconds: float, notes: str
                 ) -> List[Dict[str, Any]]:
    rows = [{"model": name, "kind": kind, "bucket": label, "n_users": int(metrics["n_users"]),
             "metrics": _round(metrics, P4_METRICS), "train_seconds": round(seconds, 2)}
            for label, metrics in sorted(result.by_group.items())]
    rows.append({"model": name, "kind": kind, "bucket": "all",
                 "n_users": int(result.metrics["n_users"]),
                 "metrics": _round(result.metrics, P4_METRICS),
                 "train_seconds": round(seconds, 2), "notes": notes})
    return rows


def p4_verdict(rows: List[Dict[str, Any]], text: Tuple[str, ...] = ("two-tower-text", "cascade"),
               ids: str = "two-tower-id", als: str = "implicit-ALS",
               metric: str = "ndcg@10") -> List[str]:
    """What the P4 target asks, read off the rows: in each sparse bucket each LM model's margin
    over the ID-only model and implicit-ALS, and in every bucket the best project model against
    the best peer. Models missing from the rows are left out of the sentences."""
    value = {(r["model"], r["bucket"]): r["metrics"][metric] for r in rows}
    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    lines = []
    for model in text:
        for bucket in SPARSE_BUCKETS:
            own = value.get((model, bucket))
            if own is None:
                continue
            parts = [f"{other} {value[(other, bucket)]:.4f} "
                     f"({own / value[(other, bucket)] - 1:+.1%})"
                     for other in (ids, als) if value.get((other, bucket))]
            if parts:
                lines.append(f"Bucket {bucket}: {model} {own:.4f} vs " + ", ".join(parts) + ".")
    project = {r["model"] for r in rows if r["kind"] == "project"}
    peers = {r["model"] for r in rows if r["kind"] == "peer"}
    if project and peers:
        cells = []
        for bucket in buckets:
            best_own = max(project, key=lambda m: value.get((m, bucket), -1.0))
            best_peer = max(peers, key=lambda m: value.get((m, bucket), -1.0))
            mine, theirs = value.get((best_own, bucket)), value.get((best_peer, bucket))
            if mine is None or not theirs:
                continue
            cells.append(f"{bucket}: {best_own} {mine:.4f} vs {best_peer} {theirs:.4f} "
                         f"({mine / theirs - 1:+.1%})")
        lines.append("Best project model vs best peer per bucket (" + metric + "): "
                     + "; ".join(cells) + ".")
    return lines


def run_p4(config: BenchTextConfig, spec: str) -> Dict[str, Any]:
    data = load_dataset(spec)
    vectors, embed_metrics = item_vectors_for(config, spec, "P4")
    split = split_for_protocol("P4", data, seed=config.seed)
    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50))
    buckets = sparsity_buckets(split.train, evaluator.user_ids).to_dict()
    val = validation_split(split.train, seed=config.seed, dataset=data.name)
    rows: List[Dict[str, Any]] = []
    fitted = [(name, "project") for name in config.models] + \
        [(name, "peer") for name in config.p4_peers]
    for name, kind in fitted:
        print(f"[P4 {data.name}] fitting {name} ...", flush=True)
        if kind == "project":
            model, seconds, choice = _fit_p4_model(config, name, data, vectors, val)
        else:
            # Peers see the same slice: tuned on val.test, refit on all of train.
            model = get_model(name, item_ids=evaluator.item_ids, data=data, seed=config.seed)
            start = time.perf_counter()
            model.fit(val.train, validation=val.test)
            seconds, choice = time.perf_counter() - start, ""
        result = evaluator.evaluate(lambda users: model.score(users, evaluator.item_ids),
                                    user_groups=buckets)
        notes = "; ".join(n for n in (getattr(model, "notes", ""), choice) if n)
        rows += _bucket_rows(name, kind, result, seconds, notes)
        print(f"  {name}: " + ", ".join(f"{lab} ndcg@10={m['ndcg@10']:.4f}"
                                       for lab, m in sorted(result.by_group.items())), flush=True)
    if config.p4_cascade:
        print(f"[P4 {data.name}] fitting the cascade ...", flush=True)
        model, seconds = _fit_cascade(config, data, split, vectors)
        stages = model.run(evaluator.user_ids)
        result = evaluator.evaluate_ranked(stages.final_ids, stages.user_ids,
                                           user_groups=buckets)
        fit = model.report["ranking_fits"]["ranking"]
        rows += _bucket_rows(
            "cascade", "project", result, seconds,
            f"two-tower -> {model.config.ranking.loss} ranker with the LM text context "
            f"({fit['lists']} lists) -> re-ranker -> rules, fitted on the P4 train part as "
            f"pipelines.run_all fits it; final top {model.config.k}")
        print("  cascade: " + ", ".join(f"{lab} ndcg@10={m['ndcg@10']:.4f}"
                                        for lab, m in sorted(result.by_group.items())),
              flush=True)
    split_info = {"train rows": len(split.train), "test rows": len(split.test)}
    return {"data": data, "rows": rows, "split": split_info,
            "notes": [_encoding_note(embed_metrics), *p4_verdict(rows)]}


def _fit_cascade(config: BenchTextConfig, data, split, vectors: ItemVectors):
    """The cascade with the dataset's retrieval settings, fitted in a scratch folder (a bench
    run never resumes another's fits); returns (cascade, seconds)."""
    retrieval = {k: v for k, v in dataset_retrieval_overrides(data.name).items()
                 if k not in ("seed", "verbose")}
    if config.max_epochs is not None:
        retrieval["epochs"] = int(config.max_epochs)
    work = Path(tempfile.mkdtemp(prefix="bench_text_cascade_"))
    try:
        start = time.perf_counter()
        model = fit_cascade(split.train, CascadeConfig(retrieval=retrieval, seed=config.seed),
                            work, items=data.items, users=data.users, text_vectors=vectors,
                            log=lambda line: print(line, flush=True))
        return model, time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plot_buckets(rows: List[Dict[str, Any]], path: Path, dataset: str,
                 metric: str = "ndcg@10") -> Path:
    """Grouped bars of `metric` per sparsity bucket (x) and model (one colour each), the
    P4 rows of `run_p4`; the bucket's user count under its label."""
    from matplotlib.figure import Figure

    buckets = list(dict.fromkeys(r["bucket"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    value = {(r["model"], r["bucket"]): r["metrics"][metric] for r in rows}
    users = {r["bucket"]: r["n_users"] for r in rows}
    fig = Figure(figsize=(max(6.0, 1.4 * len(buckets)), 4))
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        xs = [b + (j - (len(models) - 1) / 2) * width for b in range(len(buckets))]
        ys = [value.get((model, bucket), np.nan) for bucket in buckets]
        ax.bar(xs, ys, width=width, label=model)
    ax.set_xticks(range(len(buckets)))
    ax.set_xticklabels([f"{b}\n({users[b]} users)" for b in buckets])
    ax.set_xlabel("train interactions of the test user")
    ax.set_ylabel(f"{metric} (P4 test)")
    ax.set_title(f"P4 sparsity buckets: {dataset}")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _encoding_note(m: Dict[str, Any]) -> str:
    first = m.get("first_run")
    text = (f"Item text encoded by {m['model']} ({m['dim']}-d): {m['items']} items; this run "
            f"{m['cache_hits']} cache hits / {m['cache_misses']} misses, "
            f"{m['encode_seconds']} s ({m['items_per_second']} items/s served)")
    if m.get("encoded_per_second"):
        text += f", model throughput {m['encoded_per_second']} texts/s"
    if first:
        text += (f"; first (uncached) run: {first['cache_misses']} misses, "
                 f"{first['encoded_per_second']} texts/s through the model on this machine")
    return text + "."


def _remember_first_run(config: BenchTextConfig) -> Dict[str, Dict[str, Any]]:
    """Metrics of the existing embed_items outputs (a cold-cache run) before we re-run them."""
    out = {}
    for path in Path(config.embed_dir).glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        if metrics.get("cache_misses"):
            out[metrics.get("dataset")] = metrics
    return out


def main(config: BenchTextConfig) -> Dict[str, Any]:
    config.validate()
    first_runs = _remember_first_run(config)
    command = cli.command_line("pipelines.bench_text")
    run_dir = make_run_dir(config.run_dir, "text")
    written = []
    for protocol, datasets, runner in (("P3", config.p3_datasets, run_p3),
                                       ("P4", config.p4_datasets, run_p4)):
        for spec in datasets:
            out = runner(config, spec)
            name = out["data"].name
            if name in first_runs:
                # The encoding note (always first) gains the cold-cache run's throughput.
                out["notes"] = [_encoding_note({**_last_embed(config, name),
                                                "first_run": first_runs[name]}),
                                *out["notes"][1:]]
            if protocol == "P4":
                plot = plot_buckets(out["rows"], Path(config.plot_dir) / f"p4-{slug(name)}.png",
                                    name)
                out["notes"] = [*out["notes"], f"Per-bucket bars: `{plot}`."]
            path = write_results(Path(config.results_dir), protocol=protocol, dataset=name,
                                 seed=config.seed, command=command, rows=out["rows"],
                                 split=out["split"], notes=out["notes"])
            written.append(str(path))
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    results = {"results_files": written}
    record_run(run_dir, config, results, [f"Results: {p}" for p in written])
    return results


def _last_embed(config: BenchTextConfig, name: str) -> Dict[str, Any]:
    return json.loads((Path(config.embed_dir) / slug(name) / "metrics.json").read_text())


def parse_args(argv=None) -> BenchTextConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchTextConfig)
    return cli.parse_config(BenchTextConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
