"""Trains every stage of the cascade, evaluates each one under P1, exports everything.

  python -m pipelines.run_all                       # offline synthetic default
  python -m pipelines.run_all --dataset ml-100k
  python -m pipelines.run_all --dataset ml-100k --set cascade.diversity=mmr

Steps: P1 split of the dataset; item text vectors from the pretrained MiniLM (cached, skipped
when the dataset has no item text or `use_text` is off); `cascade.fit_cascade` on the train
part (retrieval -> ranking -> re-ranking, no stage sees the test part); P1 metrics of every
stage on the test part and the accuracy-diversity curves of MMR and DPP over lambda; exports of
the whole cascade (`saved_models/recommender` with ScaNN, `saved_models/recommender_bruteforce`)
and of the retrieval stage alone (`retrieval_scann`, `retrieval_bruteforce`), each reloaded in
this process and called once; one summary table.

The run folder (`runs/run_all/<dataset>/`) holds the resolved config, metrics.json,
summary.md, the item text vectors (`item_vectors/`), the stage vocabularies, each stage's training run (checkpoints, TensorBoard,
training curves), recall_at_k.png (Recall@K of each stage's list) and diversity_tradeoff.png.

`--strategy default|mirrored|multi_worker|parameter_server` (see `pipelines.train_retrieval`
and `recommenders_tf.models.distribute`) applies to retrieval training, the two two-tower fits
of the cascade, whose user and item tables are what outgrows one machine; the ranking and
re-ranking stages train on the default strategy.

Under `multi_worker` each worker fits its own copy of them on the same lists. Every worker runs
the whole command with `--out` and `--export-dir` on folders all of them see; only the chief
(worker 0) writes the run folder and the exports. The other workers write into temporary
folders they remove, reading the chief's retrieval checkpoints (to resume in step with it)
through links in their private cascade folder.

Under `parameter_server` every task runs the same command too, but only the coordinator
(`chief`) runs the program: the worker and ps tasks serve it until they are stopped. The
two-tower fits send their steps to the workers, with the embedding tables split over the ps
tasks (variables of at least 2 x `ps_min_shard_bytes`); the coordinator then scores with a
local copy of the towers, fits the ranking stages itself, evaluates and exports.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recommenders_tf import cli
from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.models.distribute import PS_MIN_SHARD_BYTES, STRATEGIES, check_strategy

EXPORT_KINDS = ("scann", "bruteforce")
STRATEGY_SCOPE = "strategy applies to retrieval training"


@dataclasses.dataclass
class RunAllConfig:
    """Settings of run_all.

    Args:
      dataset: `load_dataset` spec ("synthetic" is the offline default).
      out_dir: run folder (default `runs/run_all/<dataset>`).
      export_dir: TF Serving model base path for the exports.
      cascade: CascadeConfig; an empty `cascade.retrieval` takes the dataset's
        validation-chosen two-tower settings from configs/retrieval_<dataset>.yaml.
      use_text: encode item text with the pretrained LM for the ranker and re-ranker.
      text_cache: cache folder of the text encoder (shared by runs).
      exports: which cascade exports to write ("scann", "bruteforce"); empty skips exports.
      export_retrieval: also export the retrieval stage alone (both index kinds), its
        ScaNN built by the index policy of pipelines.build_index (`recommenders_tf.index.
        policy`): tuned on half the train users' queries, recall measured on the other half.
      retrieval_export_k: results per query of the retrieval-alone exports.
      exclusion_width: exclusions their ScaNN absorbs in its approximate pass.
      target_recall: held-out recall@retrieval_export_k of that ScaNN against BruteForce.
      max_index_query_users: train users whose query embeddings tune each ScaNN export and
        measure its recall, a seeded sample once there are more (0: all); recorded in the
        export metadata.
      retune_targets: tuning targets tried in turn while the held-out recall falls short;
        empty: the target, halfway to 1, then 1.
      diversity_lambdas: lambda grid of the MMR / DPP trade-off curves.
      max_eval_users: test users the P1 metrics and curves are computed on, a seeded sample
        once there are more (0: all); the run records the sample size. Running the cascade
        scores the whole catalogue per user, so this caps the evaluation's users x catalogue.
      seed: split seed.
      strategy: tf.distribute strategy of the cascade's retrieval training: "default",
        "mirrored" (every local GPU), "multi_worker" (the machines of TF_CONFIG) or
        "parameter_server" (a coordinator, workers and ps tasks of TF_CONFIG); ranking and
        re-ranking stay on the default strategy.
      ps_min_shard_bytes: under "parameter_server", the smallest shard of a variable split
        over the ps tasks.
    """

    dataset: str = "synthetic"
    out_dir: str = ""
    export_dir: str = "saved_models"
    cascade: CascadeConfig = dataclasses.field(default_factory=CascadeConfig)
    use_text: bool = True
    text_cache: str = "runs/text_cache"
    exports: Tuple[str, ...] = EXPORT_KINDS
    export_retrieval: bool = True
    retrieval_export_k: int = 10
    exclusion_width: int = 50
    target_recall: float = 0.95
    max_index_query_users: int = 20000
    retune_targets: Tuple[float, ...] = ()
    diversity_lambdas: Tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6,
                                            0.5)
    max_eval_users: int = 20000
    seed: int = 0
    strategy: str = "default"
    ps_min_shard_bytes: int = PS_MIN_SHARD_BYTES

    def __post_init__(self):
        check_strategy(self.strategy, STRATEGIES, "pipelines.run_all")
        if not isinstance(self.ps_min_shard_bytes, int) or self.ps_min_shard_bytes < 1:
            raise ValueError(f"ps_min_shard_bytes must be a positive integer, got "
                             f"{self.ps_min_shard_bytes!r}")
        bad = sorted(set(self.exports) - set(EXPORT_KINDS))
        if bad:
            raise ValueError(f"exports must be a subset of {EXPORT_KINDS}, got {bad}")
        for name in ("max_eval_users", "max_index_query_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be 0 (all) or a positive integer, got "
                                 f"{value!r}")
        for lam in self.diversity_lambdas:
            if not 0.0 <= float(lam) <= 1.0:
                raise ValueError(f"diversity_lambdas must be in [0, 1], got {lam}")


def text_vectors_for(items, split, dataset_spec: str, out_dir: Path, cache_dir: str,
                     log=print, cost=None):
    """The item text vectors of `items` (the text the split's train part may read, from
    `data.items_for_train`), encoded through the cache and saved in `out_dir/item_vectors`.

    `cost` (a StageMeter row) receives the texts encoded and their rate through the model."""
    from recommenders_tf.features.item_encoding import encode_item_texts

    manifest = split.manifest()["parts"]["train"]
    encoded = encode_item_texts(
        items, cache_dir=cache_dir, progress=False, source=f"{split.dataset} items",
        extra={"dataset": split.dataset, "dataset_spec": dataset_spec,
               "text_split": {"protocol": split.protocol, "seed": split.seed, "part": "train",
                              "train_rows": manifest["rows"],
                              "train_sha256": manifest["sha256"]}})
    encoded.vectors.save(out_dir / "item_vectors")
    facts = encoded.facts
    log(f"[run_all] item text vectors: {facts['items']} items, {facts['cache_hits']} from "
        "cache")
    if cost is not None:
        cost["encoded"] = int(facts["encoded"])
        if facts.get("encoded_per_second"):
            cost["texts_per_second"] = float(facts["encoded_per_second"])
    return encoded.vectors


def recall_curve(ids: np.ndarray, users: np.ndarray, test, ks: Sequence[int]) -> List[float]:
    """Mean Recall@K over users of a list matrix [U, L] ("" padding) against test items."""
    from recommenders_tf.data.schema import ITEM_ID, USER_ID

    relevant = test.groupby(test[USER_ID].astype(str))[ITEM_ID].agg(lambda s: set(s.astype(str)))
    hits = np.zeros(ids.shape, bool)
    sizes = np.zeros(len(users))
    for r, u in enumerate(users):
        rel = relevant.get(u, set())
        sizes[r] = len(rel)
        hits[r] = [i in rel for i in ids[r]]
    cum = np.cumsum(hits, 1)
    out = []
    for k in ks:
        k_eff = min(k, ids.shape[1])
        out.append(float(np.mean(cum[:, k_eff - 1] / np.maximum(sizes, 1))))
    return out


def _plots(run_dir: Path, stages, test, curves: Dict[str, List[Dict[str, float]]],
           stage_rows: Dict[str, Dict[str, float]]) -> Dict[str, str]:
    # The Figure API draws without touching pyplot's backend, so a notebook that calls this
    # keeps showing its own figures inline.
    from matplotlib.figure import Figure

    out = {}
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for stage, label in (("retrieval", "retrieval (two-tower)"),
                         ("ranking", "retrieval + ranking"),
                         ("final", "full cascade")):
        ids = getattr(stages, f"{stage}_ids")
        ks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200) if k <= ids.shape[1]]
        ax.plot(ks, recall_curve(ids, stages.user_ids, test, ks), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (P1 test)")
    ax.set_title("Recall@K of each stage's list")
    ax.legend()
    fig.tight_layout()
    path = run_dir / "recall_at_k.png"
    fig.savefig(path, dpi=120)
    out["recall_at_k"] = str(path)

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, rows in curves.items():
        ax.plot([r["diversity@10"] for r in rows], [r["ndcg@10"] for r in rows], marker="o",
                label=method.upper())
        for r in rows:
            ax.annotate(f"{r['lambda']:g}", (r["diversity@10"], r["ndcg@10"]), fontsize=7)
    base = stage_rows["final"]
    ax.axhline(base["ndcg@10"] * 0.97, color="grey", ls="--", lw=0.8, label="-3% NDCG@10")
    ax.axvline(base["diversity@10"] * 1.2, color="grey", ls=":", lw=0.8, label="+20% diversity")
    ax.set_xlabel("intra-list diversity@10")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Accuracy-diversity trade-off over lambda")
    ax.legend()
    fig.tight_layout()
    path = run_dir / "diversity_tradeoff.png"
    fig.savefig(path, dpi=120)
    out["diversity_tradeoff"] = str(path)
    return out


def best_tradeoff(curve: List[Dict[str, float]], base: Dict[str, float],
                  max_loss: float = 0.03) -> Optional[Dict[str, float]]:
    """The lambda with the largest diversity gain whose NDCG@10 loss is <= max_loss."""
    ok = [r for r in curve if r["ndcg@10"] >= base["ndcg@10"] * (1.0 - max_loss)]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["diversity@10"])
    return {**best, "diversity_gain": best["diversity@10"] / base["diversity@10"] - 1.0,
            "ndcg_change": best["ndcg@10"] / base["ndcg@10"] - 1.0}


def _verify_export(path: Path, users: np.ndarray, histories: np.ndarray) -> Dict[str, Any]:
    """Reloads an export as a server would, in a fresh process, and calls its signature."""
    from recommenders_tf.serving.latency import call_in_fresh_process

    out = call_in_fresh_process(path, users, histories)
    return {"path": str(path), "load_seconds": out["load_seconds"],
            "call_seconds": out["call_seconds"], "first_user_top": out["top"][0][:5]}


def main(config: RunAllConfig) -> Dict[str, Any]:
    """Runs every step; returns the metrics, curves, exports and the run folder."""
    import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
    from recommenders_tf.data import items_for_train, load_dataset, temporal_split
    from recommenders_tf.models.distribute import make_strategy, writable_dir
    from recommenders_tf.resources import StageMeter
    from recommenders_tf.runs import default_run_dir

    t0 = time.perf_counter()
    # First: a multi-worker strategy has to configure the runtime before any TensorFlow op.
    strategy = make_strategy(config.strategy, min_shard_bytes=config.ps_min_shard_bytes)
    meter = StageMeter()
    with meter.stage("data") as row:
        data = load_dataset(config.dataset)
        row["interactions"] = int(len(data.interactions))
    run_dir = Path(config.out_dir or default_run_dir("run_all", data.name))
    with contextlib.ExitStack() as stack:
        out = Path(stack.enter_context(writable_dir(str(run_dir), strategy)))
        export_dir = (stack.enter_context(writable_dir(config.export_dir, strategy))
                      if config.exports else config.export_dir)
        with meter.stage("split"):
            split = temporal_split(data.interactions, seed=config.seed, dataset=data.name)
            split.write_manifest(out)
            print(f"[run_all] {data.name}: P1 split, {len(split.train)} train / "
                  f"{len(split.test)} test rows; strategy {config.strategy} "
                  f"({STRATEGY_SCOPE})", flush=True)
            # Tags users wrote are train information only; deciding which needs every
            # interaction, so it is done before they are released.
            text_items = (items_for_train(data, split.train) if config.use_text
                          and data.items is not None and "text" in data.items.columns
                          else None)
        # From here on every stage reads the split's parts: the loaded frame would otherwise
        # stay resident beside them through the run.
        data = dataclasses.replace(data, interactions=data.interactions.iloc[:0])
        text = None
        if text_items is not None:
            with meter.stage("text vectors", items=len(text_items)) as row:
                text = text_vectors_for(text_items, split, config.dataset, out,
                                        config.text_cache, cost=row)
        return _run(config, strategy, data, split, text, run_dir, out, export_dir, t0, meter)


def _cascade_dir(run_dir: Path, out: Path, config: CascadeConfig, train) -> Path:
    """The folder `fit_cascade` works in: `run_dir/cascade` on the chief; on another worker a
    private folder whose retrieval folders link to the chief's, so it resumes the
    strategy-synchronised retrieval fits from the same checkpoints while its own ranking and
    re-ranking fits (default strategy) do not write over the chief's."""
    from recommenders_tf.cascade.fit import RETRIEVAL_DIRS
    from recommenders_tf.data.splits import frame_sha256
    from recommenders_tf.runs import claim_run_dir

    shared = run_dir / "cascade"
    if out == run_dir:
        return shared
    private = out / "cascade"
    private.mkdir(parents=True, exist_ok=True)
    # fit_cascade's own claim, checked here against the chief's folder: a refused run must stop
    # every worker, not leave them waiting for a chief that has exited.
    claim_run_dir(shared, config, data={"train": frame_sha256(train)}, what="cascade",
                  write_to=private)
    for name in RETRIEVAL_DIRS:
        # Created here too: BackupAndRestore makes this worker's temporary folder inside it.
        (shared / name).mkdir(parents=True, exist_ok=True)
        os.symlink((shared / name).resolve(), private / name, target_is_directory=True)
    return private


def _run(config: RunAllConfig, strategy, data, split, text, run_dir: Path, out: Path,
         export_dir: str, t0: float, meter) -> Dict[str, Any]:
    """`main` after the split and the item text vectors (`text`, or None), writing into `out`
    and `export_dir`: `run_dir` and `config.export_dir` on the chief, temporary folders on the
    other workers. `data` no longer holds the interactions; `split` does."""
    from recommenders_tf.cascade.evaluate import diversity_curve, stage_metrics
    from recommenders_tf.cascade.fit import fit_cascade
    from recommenders_tf.data import sample_users
    from recommenders_tf.data.schema import USER_ID
    from recommenders_tf.evaluation.protocol import TopKEvaluator, genre_features
    from recommenders_tf.config import dataset_retrieval_overrides
    from recommenders_tf.models.distribute import num_workers
    from recommenders_tf.runs import record_run
    from recommenders_tf.serving.cascade_export import export_cascade

    cascade_cfg = config.cascade
    if not cascade_cfg.retrieval:
        tuned = {k: v for k, v in dataset_retrieval_overrides(data.name).items()
                 if k not in ("seed", "verbose")}
        cascade_cfg = dataclasses.replace(cascade_cfg, retrieval=tuned)
    resolved = dataclasses.replace(config, out_dir=str(run_dir), cascade=cascade_cfg)
    cascade = fit_cascade(split.train, cascade_cfg,
                          _cascade_dir(run_dir, out, cascade_cfg, split.train),
                          items=data.items, users=data.users, text_vectors=text,
                          strategy=strategy, meter=meter)

    features = genre_features(data.items) if data.items is not None and "genres" in \
        data.items.columns else None
    with meter.stage("evaluation") as row:
        test_users = split.test[USER_ID].astype(str)
        eval_users, eval_sample = sample_users(test_users, config.max_eval_users, config.seed)
        test = split.test[test_users.isin(eval_users).to_numpy()]
        evaluator = TopKEvaluator(split.train, test, ks=(10, 50), item_features=features)
        start = time.perf_counter()
        stages = cascade.run(evaluator.user_ids)
        run_seconds = time.perf_counter() - start
        rows = stage_metrics(stages, evaluator)
        row["users"] = len(evaluator.user_ids)
        row["users_of"] = eval_sample["of"]
    curves = {}
    if cascade.diversity_vectors is not None:
        with meter.stage("diversity curves", lambdas=len(config.diversity_lambdas)):
            for method in ("mmr", "dpp"):
                curves[method] = diversity_curve(cascade, stages, evaluator, method,
                                                 config.diversity_lambdas)
    tradeoffs = {m: best_tradeoff(c, rows["final"]) for m, c in curves.items()}
    plots = _plots(out, stages, test, curves, rows) if curves else {}

    # Every worker exports (the others into a folder they drop): saving reads the retrieval
    # towers' variables, which may be an all-reduce that needs all of them.
    exports: Dict[str, Any] = {}
    sample = np.asarray(evaluator.user_ids[:3], dtype=object)
    sample_hist = cascade.histories_for(sample)
    with meter.stage("export", kinds=list(config.exports)):
        for kind in config.exports:
            path = export_cascade(cascade, export_dir, kind=kind,
                                  metadata={"dataset": data.name, "run_dir": str(run_dir)},
                                  max_query_users=config.max_index_query_users)
            exports[f"cascade_{kind}"] = _verify_export(path, sample, sample_hist)
            print(f"[run_all] exported and reloaded {path}", flush=True)
        if config.export_retrieval and config.exports:
            exports.update(_export_retrieval(cascade, config, sample, sample_hist,
                                             export_dir))

    vocab_dir = out / "vocabularies"
    vocab_dir.mkdir(exist_ok=True)
    (vocab_dir / "items.txt").write_text("\n".join(map(str, cascade.catalog)) + "\n")
    users = cascade.retrieval.vocabularies[USER_ID].tokens
    (vocab_dir / "users.txt").write_text("\n".join(map(str, users)) + "\n")

    metrics = {"dataset": data.name, "stages": rows, "diversity_curves": curves,
               "tradeoffs": tradeoffs, "cascade_report": cascade.report, "exports": exports,
               "training": {"strategy": config.strategy, "scope": STRATEGY_SCOPE,
                            "workers": num_workers(strategy),
                            "replicas": int(strategy.num_replicas_in_sync),
                            # Under parameter servers: each split table's shards.
                            "sharded_variables": getattr(cascade.retrieval,
                                                         "variable_shards", None) or {}},
               "evaluate_seconds": round(run_seconds, 2),
               "evaluation_users": eval_sample,
               "seconds": round(time.perf_counter() - t0, 1),
               # Wall time and peak resident memory of each stage, in run order.
               "cost": meter.rows}
    summary = summary_lines(data.name, rows, tradeoffs, exports, cascade.report)
    if eval_sample["sampled"] < eval_sample["of"]:
        summary.append(f"- P1 metrics on a sample of {eval_sample['sampled']} of "
                       f"{eval_sample['of']} test users (seed {eval_sample['seed']}; "
                       f"max_eval_users)")
    summary.append(f"- strategy {config.strategy}: {STRATEGY_SCOPE} (ranking and re-ranking "
                   f"on the default strategy); {metrics['training']['workers']} worker(s)")
    summary.append("- seconds per stage: " + ", ".join(
        f"{r['stage']} {r['seconds']:.1f}" for r in meter.rows)
        + f"; peak resident memory {meter.peak_mb():.0f} MB")
    record_run(out, resolved, metrics, summary)
    print("\n".join(summary), flush=True)
    return {"run_dir": str(run_dir), "metrics": metrics, "plots": plots, "cascade": cascade,
            "stages": stages, "split": split}


def _export_retrieval(cascade, config: RunAllConfig, users, histories,
                      export_dir: Optional[str] = None) -> Dict[str, Any]:
    """The retrieval stage alone (query tower + BruteForce / ScaNN), built by the index policy
    of pipelines.build_index on the train users' query embeddings."""
    from recommenders_tf.index import (build_index, build_tuned_index, index_query_users,
                                       split_queries)
    from recommenders_tf.serving.export import export_retrieval

    rec = cascade.retrieval
    emb = rec.candidate_embeddings(cascade.catalog)
    k, width = config.retrieval_export_k, config.exclusion_width
    facts: Dict[str, Dict[str, Any]] = {}
    if "scann" in config.exports:
        query_users, sample_note = index_query_users(rec.vocabularies["user_id"].tokens,
                                                     config.max_index_query_users, config.seed)
        tune, held_out, note = split_queries(rec.query_embeddings(query_users),
                                             seed=config.seed)
        built = build_tuned_index(
            cascade.catalog, emb, tune, held_out, k=k, target_recall=config.target_recall,
            ladder=config.retune_targets or None,
            min_reordering_candidates=min(k + width, len(emb)), query_model=rec.query_tower,
            seed=config.seed, log=lambda message: print(f"[run_all] {message}", flush=True))
        indexes = {"scann": built.index, "bruteforce": built.exact}
        facts["scann"] = {**built.report,
                          "query_note": f"train users' queries, {sample_note}: {note}"}
    else:
        indexes = {"bruteforce": build_index("bruteforce", rec.query_tower, cascade.catalog,
                                             emb, k=k)}
    out = {}
    for kind in config.exports:
        metadata: Dict[str, Any] = {"query_history_len": rec.config.history_len}
        if kind in facts:
            metadata["index_build"] = facts[kind]
        path = export_retrieval(rec.query_tower, indexes[kind], export_dir or config.export_dir,
                                k=k, exclusion_width=width, metadata=metadata)
        out[f"retrieval_{kind}"] = _verify_export(path, users, histories)
        if kind in facts:
            out[f"retrieval_{kind}"][f"recall@{k}_vs_exact"] = facts[kind][f"recall@{k}_vs_exact"]
    return out


def summary_lines(dataset: str, rows, tradeoffs, exports, report) -> List[str]:
    labels = {"retrieval": "retrieval (two-tower, ScaNN-servable)",
              "ranking": "retrieval + ranking", "rerank": "re-ranker order",
              "final": "full cascade (re-ranker + rules)"}
    lines = [f"## Cascade on `{dataset}` (P1 test)", "",
             "| stage | ndcg@10 | recall@10 | hr@10 | coverage@10 | diversity@10 |",
             "|---|---|---|---|---|---|"]
    for stage in ("retrieval", "ranking", "final"):
        m = rows[stage]
        lines.append(f"| {labels[stage]} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | "
                     f"{m['hr@10']:.4f} | {m['coverage@10']:.4f} | "
                     f"{m.get('diversity@10', float('nan')):.4f} |")
    for method, best in tradeoffs.items():
        if best:
            lines.append(f"| full cascade + {method.upper()} lambda={best['lambda']:g} | "
                         f"{best['ndcg@10']:.4f} | {best['recall@10']:.4f} | "
                         f"{best['hr@10']:.4f} | {best['coverage@10']:.4f} | "
                         f"{best['diversity@10']:.4f} |")
    lines.append("")
    for method, best in tradeoffs.items():
        if best:
            lines.append(f"- {method.upper()}: at lambda {best['lambda']:g} diversity@10 "
                         f"{best['diversity_gain']:+.1%} for NDCG@10 {best['ndcg_change']:+.1%}")
    for name, facts in exports.items():
        lines.append(f"- export {name}: {facts['path']}")
    lines.append(f"- fit {report.get('fit_seconds')} s; re-ranker held-out NDCG@10 "
                 f"{report.get('reranking', {}).get('held_out_ndcg_10')} vs ranker order "
                 f"{report.get('reranking', {}).get('held_out_ndcg_10_ranker_order')}")
    # Samples that bound a stage's cost are stated wherever its figures are.
    for what, sample in (("ranker lists", report.get("ranking_lists", {}).get("users_sample")),
                         ("re-ranker (cross-fitted) lists", report.get("rerank_lists_sample"))):
        if sample and sample["sampled"] < sample["of"]:
            lines.append(f"- {what} from a sample of {sample['sampled']} of {sample['of']} "
                         f"(seed {sample['seed']})")
    return lines


def parse_args(argv=None) -> RunAllConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], RunAllConfig, dataset=True)
    parser.add_argument("--out", dest="out_dir", help="run folder")
    parser.add_argument("--export-dir", help="TF Serving base path of the exports")
    parser.add_argument("--strategy", choices=STRATEGIES,
                        help=f"tf.distribute strategy ({STRATEGY_SCOPE}; multi_worker and "
                             "parameter_server read "
                             "TF_CONFIG)")
    return cli.parse_config(RunAllConfig, parser, argv,
                            fields=("out_dir", "export_dir", "strategy"))


if __name__ == "__main__":
    cli.run(main, parse_args)
