"""P1 benchmark of the multi-stage cascade, its diversity trade-off, and recommend latency.

  python -m pipelines.bench_cascade --dataset ml-100k
  python -m pipelines.bench_cascade --dataset synthetic

One run, one split (P1, seed 0): the peers most-popular, implicit-ALS, EASE, RP3beta and
SASRec (tuned on the validation slice exactly as in `pipelines.benchmark`), then
`pipelines.run_all` (every stage fitted on train only), giving the rows

  retrieval alone (two-tower top 10) / retrieval + ranking / full cascade /
  full cascade + MMR and + DPP at the lambda with the largest diversity gain within -3% NDCG@10

written to `benchmarks/results/<dataset>-P1-cascade.json`; the MMR/DPP curves over lambda to
`<dataset>-P1-diversity.json`; and the latency of one `recommend` call (one user, their train
history and every train item excluded, as `pipelines.recommend` sends it) from the exported
cascade loaded in a fresh process, p50/p99 over `latency_users` users, to
`<dataset>-P5-cascade.json`. BENCHMARKS.md is re-rendered from all results files.

  python -m pipelines.bench_cascade --dataset ml-100k --set ranking_losses=[all]

also fits the cascade's ranking stages once per ranking loss behind the same fitted retrieval
stage (its two fits shared, not repeated: `share_retrieval_fits`) and writes each ranker's P1
metrics against the retrieval order it re-scores to `<dataset>-P1-cascade-losses.json`.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple


from recommenders_tf import cli

PEERS = ("most-popular", "implicit-ALS", "EASE", "RP3beta", "SASRec")


@dataclasses.dataclass
class BenchCascadeConfig:
    """Args:
      dataset: dataset spec.
      seed: split seed.
      peers: peers run side by side in this run (`pipelines.benchmark` names).
      latency_users: users timed through the exported cascade (one request each).
      export_kinds: exports timed ("scann", "bruteforce").
      results_dir, benchmarks_md: where results JSON and the tables go.
      out_dir: run folder (default runs/bench_cascade/<dataset>).
      ranking_losses: ranking losses (`models.losses.LOSS_KEYS`, or "all") each fitted as the
        cascade's ranker behind the same retrieval stage; empty: only the configured one.
      ranker_ablations: named changes of the cascade config (`RANKER_ABLATIONS`, or "all"),
        each fitted behind the same retrieval stage: what the ranking stages gain or lose by
        each (the P1-cascade-ablations table).
    """

    dataset: str = "ml-100k"
    seed: int = 0
    peers: Tuple[str, ...] = PEERS
    latency_users: int = 200
    export_kinds: Tuple[str, ...] = ("scann", "bruteforce")
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    out_dir: str = ""
    ranking_losses: Tuple[str, ...] = ()
    ranker_ablations: Tuple[str, ...] = ()


def main(config: BenchCascadeConfig) -> Dict[str, Any]:
    import recommenders_tf  # noqa: F401
    from pipelines import benchmark, run_all
    from recommenders_tf.data import load_dataset, temporal_split
    from recommenders_tf.evaluation.report import (render_benchmarks_md, round_metrics,
                                                   write_results)
    from recommenders_tf.runs import default_run_dir
    from recommenders_tf.serving.latency import measure_latency, recommend_requests

    data = load_dataset(config.dataset)
    out_dir = Path(config.out_dir or default_run_dir("bench_cascade", data.name))
    split = temporal_split(data.interactions, seed=config.seed, dataset=data.name)
    print(f"[P1-cascade {data.name}] peers in the same run: {', '.join(config.peers)}",
          flush=True)
    # The peers' rows are pipelines.benchmark's P1 rows on the same split; its results file
    # and tables stay in this run's folder, the published ones come from this bench.
    peers_dir = out_dir / "peers"
    rows = list(benchmark.main(benchmark.BenchmarkConfig(
        dataset=config.dataset, protocol="P1", models=tuple(config.peers), seed=config.seed,
        results_dir=str(peers_dir), benchmarks_md=str(peers_dir / "BENCHMARKS.md"),
        run_dir=str(peers_dir)))["rows"])

    export_dir = Path(tempfile.mkdtemp(prefix="bench_cascade_exports_"))
    start = time.perf_counter()
    result = run_all.main(run_all.RunAllConfig(
        dataset=config.dataset, out_dir=str(out_dir), export_dir=str(export_dir),
        exports=tuple(config.export_kinds), export_retrieval=False, seed=config.seed))
    seconds = time.perf_counter() - start
    metrics = result["metrics"]
    stages, report = metrics["stages"], metrics["cascade_report"]
    cascade = result["cascade"]
    notes_retrieval = report["retrieval"]["notes"]
    ranking_fit = report["ranking_fits"]["ranking"]
    cfg = cascade.config
    project = [
        ("two-tower (retrieval alone)", "retrieval", notes_retrieval),
        ("retrieval + ranking", "ranking",
         f"ranker {cfg.ranking.loss} over the top {cfg.retrieval_k}; context features "
         f"{', '.join(cascade.context.feature_names)}; {ranking_fit['lists']} training lists, "
         f"epochs {ranking_fit['epochs']}{start_note(report)}"),
        ("full cascade", "final",
         f"re-ranker over the ranked top {cfg.ranking_k} (inputs "
         f"{', '.join(cfg.rerank_item_features)}), rules; held-out NDCG@10 "
         f"{report['reranking']['held_out_ndcg_10']:.4f} vs ranker order "
         f"{report['reranking']['held_out_ndcg_10_ranker_order']:.4f}, so the "
         + ("trained re-ranker is served" if report['reranking']['trained_model_kept'] else
            "untrained re-ranker (= ranker order) is served")),
    ]
    for name, stage, note in project:
        rows.append({"model": name, "kind": "project", "metrics": round_metrics(stages[stage]),
                     "train_seconds": round(seconds, 1) if stage == "final" else None,
                     "notes": note})
    for method, best in metrics["tradeoffs"].items():
        if best:
            rows.append({"model": f"full cascade + {method.upper()}", "kind": "project",
                         "metrics": round_metrics({k: best[k] for k in stages["final"]}),
                         "notes": f"lambda={best['lambda']:g} (largest diversity within -3% "
                                  f"NDCG@10): diversity@10 {best['diversity_gain']:+.1%}, "
                                  f"ndcg@10 {best['ndcg_change']:+.1%}"})
    command = cli.command_line("pipelines.bench_cascade", f"--dataset {config.dataset}")
    split_info = {f"{k} rows": v["rows"] for k, v in split.manifest()["parts"].items()}
    results_dir = Path(config.results_dir)
    paths = [write_results(
        results_dir, protocol="P1-cascade", dataset=data.name, seed=config.seed,
        command=command, rows=rows, split=split_info,
        notes=[f"Stages fitted on train only ({report['fit_seconds']} s in all): retrieval "
               "chooses its epochs on the validation slice and is refit on train; the ranker "
               "learns from the validation slice's lists retrieved by a twin fitted before "
               "it; the re-ranker from cross-fitted (out-of-fold) ranker lists.",
               f"Sizes: retrieval top {cfg.retrieval_k} -> ranking top {cfg.ranking_k} -> "
               f"final {cfg.k}; the final list has only {cfg.k} items, so it has no recall@50 "
               "(left blank)."])]
    curve_rows = []
    for method, curve in metrics["diversity_curves"].items():
        for r in curve:
            curve_rows.append({"model": f"{method.upper()} lambda={r['lambda']:g}",
                               "kind": "project",
                               "metrics": round_metrics({k: r[k] for k in (
                                   "ndcg@10", "recall@10", "coverage@10", "diversity@10")})})
    paths.append(write_results(
        results_dir, protocol="P1-diversity", dataset=data.name, seed=config.seed,
        command=command, rows=curve_rows, split=split_info,
        notes=["Diversity re-orders the re-ranked top list (relevance min-max normalised per "
               "list; item similarity = cosine of genre multi-hot vectors, the features "
               "diversity@10 is measured with), then the business rules cut it to 10. "
               "lambda = 1 is the full cascade itself."]))

    # Latency: users of the test part with their train histories, every train item excluded.
    users, hist, exclude = recommend_requests(split.train, split.test, cascade.histories_for,
                                              config.latency_users, config.seed)
    width = len(exclude[0])
    latency_rows = []
    for key, facts in metrics["exports"].items():
        lat = measure_latency(Path(facts["path"]), users, hist, exclude)
        latency_rows.append({"model": key.replace("cascade_", "recommender "), "kind": "project",
                             "metrics": round_metrics({k: lat[k] for k in (
                                 "latency_p50_ms", "latency_p99_ms")}),
                             "notes": f"{lat['requests']} single-user requests after one "
                                      f"warm-up call ({lat['first_call_ms']:.0f} ms); "
                                      f"load {lat['load_seconds']:.1f} s; history "
                                      f"{len(hist[0])} ids, {width} exclusion ids per request"})
        print(f"  {key}: p50 {lat['latency_p50_ms']:.1f} ms, p99 {lat['latency_p99_ms']:.1f} ms",
              flush=True)
    if latency_rows:
        paths.append(write_results(
            results_dir, protocol="P5-cascade", dataset=data.name, seed=config.seed,
            command=command, rows=latency_rows,
            notes=["Latency of the whole cascade (retrieval, ranking, re-ranking, rules) per "
                   "request through the loaded recommend_with_exclusions signature, in a "
                   "fresh process, on this machine (2 cores; other jobs may have been running, so "
                   "compare the two exports of one run rather than absolute figures)."]))
    if config.ranking_losses:
        paths.append(loss_sweep(config, out_dir, result, split, command, split_info))
    if config.ranker_ablations:
        paths.append(ablation_sweep(config, out_dir, result, split, command, split_info))
    render_benchmarks_md(results_dir, Path(config.benchmarks_md))
    return {"results_files": [str(p) for p in paths], "rows": rows, "latency": latency_rows,
            "run_dir": str(out_dir)}


def start_note(report: Dict[str, Any]) -> str:
    """What a cascade report says of the ranker's blend start ("" without one)."""
    verdict = report.get("ranker_start")
    if not verdict:
        return ""
    weights = report["ranking_fits"]["ranking"]["start"]["weights"]
    blend = " + ".join(f"{w:g} {name}" for name, w in weights.items() if w)
    oof = verdict["out_of_fold_ndcg_10"]
    return (f"; started from {blend}, out-of-fold ndcg_10 trained {oof['trained']:.4f} vs "
            f"start {oof['start']:.4f} over {verdict['lists']} lists, so the "
            f"{verdict['served']} ranker serves")


def fit_behind_retrieval(config: BenchCascadeConfig, out_dir: Path, run_dir: Path,
                         cascade, split) -> Dict[str, Any]:
    """`run_all` metrics of `cascade` (a CascadeConfig) fitted in `run_dir` behind the
    retrieval fits of the base run in `out_dir` (resumed, not retrained); no exports,
    relevance-only diversity."""
    from pipelines import run_all
    from recommenders_tf.cascade.fit import share_retrieval_fits

    share_retrieval_fits(out_dir / "cascade", run_dir / "cascade", cascade, split.train)
    return run_all.main(run_all.RunAllConfig(
        dataset=config.dataset, out_dir=str(run_dir), cascade=cascade, exports=(),
        export_retrieval=False, diversity_lambdas=(1.0,), seed=config.seed))["metrics"]


def loss_sweep(config: BenchCascadeConfig, out_dir: Path, base: Dict[str, Any], split,
               command: str, split_info: Dict[str, Any]) -> Path:
    """The cascade's ranking stages fitted once per loss of `config.ranking_losses` behind the
    retrieval stage of `base` (a `run_all.main` result in `out_dir`); returns the results file
    of the rows (retrieval order, then each loss: retrieval + ranking and the full cascade)."""
    from recommenders_tf.evaluation.report import round_metrics, write_results
    from recommenders_tf.models.losses import LOSS_KEYS, get_loss

    losses = (tuple(LOSS_KEYS) if tuple(config.ranking_losses) == ("all",)
              else tuple(get_loss(k).key for k in config.ranking_losses))
    base_cfg = base["cascade"].config
    retrieval = base["metrics"]["stages"]["retrieval"]
    rows = [{"model": "retrieval order", "kind": "baseline", "metrics": round_metrics(
        {k: retrieval[k] for k in ("ndcg@10", "recall@10", "hr@10", "mrr@10")}),
        "notes": "the two-tower's top 10, the order every ranker below re-scores (top "
                 f"{base_cfg.retrieval_k})"}]
    for loss in losses:
        cfg = dataclasses.replace(base_cfg, ranking=dataclasses.replace(base_cfg.ranking,
                                                                        loss=loss))
        if loss == base_cfg.ranking.loss:
            metrics = base["metrics"]
        else:
            print(f"[P1-cascade-losses] ranker {loss} behind the same retrieval", flush=True)
            metrics = fit_behind_retrieval(config, out_dir, out_dir / "losses" / loss, cfg,
                                           split)
        stages, report = metrics["stages"], metrics["cascade_report"]
        fit = report["ranking_fits"]["ranking"]
        change = stages["ranking"]["ndcg@10"] / retrieval["ndcg@10"] - 1.0
        for stage, label in (("ranking", "retrieval + ranking"), ("final", "full cascade")):
            rows.append({"model": f"{label}, {loss}", "kind": "project",
                         "metrics": round_metrics({k: stages[stage][k] for k in (
                             "ndcg@10", "recall@10", "hr@10", "mrr@10")}),
                         "notes": (f"ndcg@10 {change:+.1%} vs the retrieval order; epochs "
                                   f"{fit['epochs']} (held-out ndcg_10 "
                                   f"{fit['held_out_ndcg_10']:.4f}, {fit['lists']} lists)"
                                   f"{start_note(report)}")
                         if stage == "ranking" else
                         ("trained re-ranker served" if report["reranking"]["trained_model_kept"]
                          else "untrained re-ranker (= ranker order) served")})
    return write_results(
        Path(config.results_dir), protocol="P1-cascade-losses", dataset=base["metrics"]["dataset"],
        seed=config.seed, command=command if "ranking_losses" in command else
        f"{command} --set ranking_losses=[{','.join(losses)}]",
        rows=rows, split=split_info,
        notes=["One retrieval stage (fitted once; every loss's cascade resumes its two fits), "
               "then for each loss the ranker and the re-ranker fitted as in the cascade table "
               "(lists from the validation slice, the same context features and sizes); P1 "
               "metrics on the same test users."])


# What each ablation changes in the cascade config, and why it is asked.
RANKER_ABLATIONS: Dict[str, Tuple[Dict[str, Any], str]] = {
    "cuts-2": ({"ranker_cuts": 2}, "ranker lists from two time cuts (one more retrieval twin): "
               "is the ranker short of training lists?"),
    "cuts-3": ({"ranker_cuts": 3}, "three time cuts"),
    "ease-neighbours": ({"neighbor_weights": "ease"}, "EASE weights instead of cosine "
                        "co-occurrence in the collaborative context: a stronger item-item "
                        "signal"),
    "no-neighbours": ({"neighbors": 0}, "no collaborative context features"),
    "no-text": ({"use_text": False}, "no language-model text features in the ranker's context "
                "or the re-ranker's inputs"),
    "random-start": ({"ranker_start": "none"}, "the ALS peer score among the context "
                     "features, but training from a random start"),
    "no-peer-score": ({"peer_score": "none", "ranker_start": "none"}, "neither: the "
                      "configuration before the peer score and the blend start"),
    "start-from-retrieval": ({"peer_score": "none"}, "no peer score; training starts from the "
                             "retrieval order and serves only if it beats it out of fold"),
}


def ablation_sweep(config: BenchCascadeConfig, out_dir: Path, base: Dict[str, Any], split,
                   command: str, split_info: Dict[str, Any]) -> Path:
    """The cascade's ranking stages fitted once per `config.ranker_ablations` change behind the
    retrieval stage of `base`; rows: the retrieval order, the configured cascade, then each
    change (retrieval + ranking and the full cascade)."""
    from recommenders_tf.evaluation.report import round_metrics, write_results

    names = (tuple(RANKER_ABLATIONS) if tuple(config.ranker_ablations) == ("all",)
             else tuple(config.ranker_ablations))
    unknown = [n for n in names if n not in RANKER_ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ranker ablation(s) {unknown}; choose from "
                         f"{sorted(RANKER_ABLATIONS)} or all")
    base_cfg = base["cascade"].config
    keys = ("ndcg@10", "recall@10", "hr@10", "mrr@10")
    retrieval = base["metrics"]["stages"]["retrieval"]
    configured = base["metrics"]["stages"]["ranking"]["ndcg@10"]
    rows = [{"model": "retrieval order", "kind": "baseline",
             "metrics": round_metrics({k: retrieval[k] for k in keys}),
             "notes": f"the two-tower's top 10, the order every ranker re-scores (top "
                      f"{base_cfg.retrieval_k})"}]
    for name, change in (("as configured", None),) + tuple(
            (n, RANKER_ABLATIONS[n]) for n in names):
        if change is None:
            metrics, why = base["metrics"], "the cascade table's configuration"
        else:
            cfg = dataclasses.replace(base_cfg, **change[0])
            print(f"[P1-cascade-ablations] {name} behind the same retrieval", flush=True)
            metrics = fit_behind_retrieval(config, out_dir, out_dir / "ablations" / name, cfg,
                                           split)
            why = f"{', '.join(f'{k}={v}' for k, v in change[0].items())}: {change[1]}"
        stages, report = metrics["stages"], metrics["cascade_report"]
        fit = report["ranking_fits"]["ranking"]
        ranked = stages["ranking"]["ndcg@10"]
        for stage, label in (("ranking", "retrieval + ranking"), ("final", "full cascade")):
            note = (f"{why}; ndcg@10 {ranked / retrieval['ndcg@10'] - 1:+.1%} vs the retrieval "
                    f"order, {ranked / configured - 1:+.1%} vs as configured; held-out ndcg_10 "
                    f"{fit['held_out_ndcg_10']:.4f} over {fit['lists']} training lists"
                    f"{start_note(report)}"
                    if stage == "ranking" else
                    ("trained re-ranker served" if report["reranking"]["trained_model_kept"]
                     else "untrained re-ranker (= ranker order) served"))
            rows.append({"model": f"{label}, {name}", "kind": "project",
                         "metrics": round_metrics({k: stages[stage][k] for k in keys}),
                         "notes": note})
    return write_results(
        Path(config.results_dir), protocol="P1-cascade-ablations",
        dataset=base["metrics"]["dataset"], seed=config.seed,
        command=command if "ranker_ablations" in command else
        f"{command} --set ranker_ablations=[{','.join(names)}]",
        rows=rows, split=split_info,
        notes=["One retrieval stage (fitted once; every variant resumes its two fits), then the "
               "ranker and the re-ranker of each variant fitted as in the cascade table; P1 "
               "metrics on the same test users. One seed: differences of about 0.005 NDCG@10 "
               "are within what another seed moves."])


def parse_args(argv=None) -> BenchCascadeConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchCascadeConfig, dataset=True)
    return cli.parse_config(BenchCascadeConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
