"""Ranking-stage benchmarks: P2 rating prediction and P1 re-scoring of retrieval candidates.

  python -m pipelines.bench_ranking                         # both, on ml-100k
  python -m pipelines.bench_ranking --only P2
  python -m pipelines.bench_ranking --only P1-rerank --set candidate_source=implicit-ALS

P2 (`benchmarks/results/<dataset>-P2.json`): the "mse" ranking model predicts ratings on the P2
split (u1.base / u1.test for ml-100k), beside the global mean and Surprise SVD / SVD++ fitted
in the same run. The model reads the user's rated history through a `RatingContext`
(`models.rating_context`: baseline biases, residual item kNN, an ALS fold-in, and the
large-model text kNN and text prior) and trains on rating lists of the train part with 10% of
the lists held out for early stopping; with or without id embeddings beside the context,
whichever has the lower RMSE on those held-out lists. Three ablation rows follow it in the same
run: the other of the two, the chosen one without the large-model features, and the id model
without any rated history. Settings (`P2_SETTINGS`, `P2_CONTEXT_SETTINGS`) were chosen on held-out parts of
u1.base, never on u1.test.

P1-rerank (`benchmarks/results/<dataset>-P1-rerank.json`, or `...-P1-rerank-<source>.json`
for a stand-in retrieval stage such as implicit-ALS): on the P1 temporal split, the
retrieval stage (`candidate_source`) proposes its top `num_candidates` items for every test user
(train items excluded); each of the seven losses trains the same ranking model and re-orders
those candidates. NDCG@10, Recall@10 and MRR@10 follow P1 exactly (every test item counts in
the denominators, including those retrieval missed), against the retrieval order alone.
Training lists never see test data: the train part is cut again in time, a second retrieval
model fitted on the earlier part proposes hard negatives for each user's later interactions
(the positives), and 10% of those lists are held out for early stopping.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from recommenders_tf import cli
from recommenders_tf.cascade.ranking_lists import RankingDataConfig, build_training_lists
from recommenders_tf.data import (items_for_train, load_dataset, rating_split, temporal_split,
                                  validation_split)
from recommenders_tf.data.schema import RATING
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
from recommenders_tf.runs import make_run_dir, record_run

BENCHMARKS = ("P2", "P1-rerank")
RERANK_PROTOCOL = "P1-rerank"
RERANK_METRICS = ("ndcg@10", "recall@10", "mrr@10", "hr@10")

# Chosen on a random 10% validation slice of ml-100k u1.base (u1.test never looked at), RMSE on
# that slice (SVD 0.9423, SVD++ 0.9228 there): histories of the items before each list 0.9418;
# + embedding_l2 0.01/0.1/1.0 no better (0.9412/0.9416/0.9454); histories of the user's other
# rated items 0.9328; history_len 100 0.9314; + age/gender/occupation 0.9285; + 64-dim
# embeddings 0.9254; + embedding_l2 0.05 0.9246 (chosen); history_len 200 0.9243 at 2.8x time.
# With the rated-history context (RMSE on the 10% held-out training lists, whose features are
# cross-fitted like the training lists'): beside the id model 0.9108 (best epoch 2: the id
# embeddings overfit first); + dropout 0.2 0.9079 (0.3: 0.9096; l2 0.2 no better, lr 3e-4
# 0.9121); + ALS fold-in 0.9078; the context alone (no id embeddings) 0.9036 at epoch 17,
# 10 folds 0.9015; + item_count and the text prior 0.8943 (k 20: 0.8946; temperature 0.1:
# 0.8930, within noise, the default kept). Without the text features 0.9088 before the prior.
P2_SETTINGS = dict(loss="mse", embedding_dim=64, id_embedding_dim=64, history_len=100,
                   user_features=("age", "gender", "occupation"), deep_dims=(64, 32),
                   din_units=32, num_cross_layers=2, embedding_l2=0.05, learning_rate=1e-3,
                   batch_size=32, epochs=20, patience=3)
P2_CONTEXT_SETTINGS = dict(id_features=False, deep_dropout=0.2, epochs=50)
P2_LIST_SIZE = 16
# One setting for all seven losses, so the table compares losses, not tuning effort; epochs
# are chosen per loss by early stopping on held-out training lists.
RERANK_SETTINGS = dict(embedding_dim=32, id_embedding_dim=32, history_len=50,
                       user_features=("age", "gender", "occupation"),
                       deep_dims=(64, 32), din_units=32, num_cross_layers=2,
                       learning_rate=1e-3, batch_size=32, epochs=15, patience=3,
                       monitor="val_ndcg_10", monitor_mode="max")


@dataclasses.dataclass
class BenchRankingConfig:
    """Args:
      dataset: dataset spec.
      only: benchmarks to run ("P2", "P1-rerank"); empty runs both.
      losses: losses of the re-scoring table (default all seven).
      candidate_source: retrieval stage proposing the candidates ("two-tower",
        "implicit-ALS", "implicit-BPR", "most-popular").
      num_candidates: candidates re-scored per test user.
      seed: split, sampling and model seed.
      epochs: overrides both settings' epochs when > 0 (tests).
      p2_settings, rerank_settings: RankingConfig overrides merged over the defaults above.
      p2_context: `RatingContextConfig` overrides of the P2 model's rated-history context.
      text_cache_dir: item-text vector cache.
      data: list building for the re-scoring training lists.
      rerank_protocol: protocol name of the re-scoring results file; default "P1-rerank"
        for the two-tower retrieval stage, "P1-rerank-<source>" for a stand-in source.
      verbose: Keras verbosity.
      results_dir, benchmarks_md, run_dir: output locations.
    """

    dataset: str = "ml-100k"
    only: Tuple[str, ...] = ()
    losses: Tuple[str, ...] = ()
    candidate_source: str = "two-tower"
    num_candidates: int = 100
    seed: int = 0
    epochs: int = 0
    p2_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    p2_context: Dict[str, Any] = dataclasses.field(default_factory=dict)
    text_cache_dir: str = "runs/text_cache"
    rerank_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    data: RankingDataConfig = dataclasses.field(default_factory=RankingDataConfig)
    rerank_protocol: str = ""
    verbose: int = 2
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    run_dir: str = "runs/bench_ranking"


def _ranking_config(defaults: Dict[str, Any], overrides: Dict[str, Any], config, data,
                    **extra):
    from recommenders_tf.models.ranking import RankingConfig

    settings = {**defaults, **overrides, **extra, "seed": config.seed,
                "verbose": config.verbose}
    # User features are used where the dataset has them (MovieLens), skipped elsewhere.
    columns = () if data.users is None else tuple(data.users.columns)
    settings["user_features"] = tuple(f for f in settings.get("user_features", ())
                                      if f in columns)
    if config.epochs > 0:
        settings["epochs"] = config.epochs
    return RankingConfig(**settings)


def _round(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: round(float(v), 5) for k, v in metrics.items()}


def run_p2(config: BenchRankingConfig, data, run_dir: Path):
    """Rating-prediction rows, one run: the three peers, the mse ranking model with its
    rated-history context (with or without id embeddings, whichever has the lower held-out
    RMSE), the other of the two, the chosen one without the large-model features, and the id
    model without the context."""
    from recommenders_tf.evaluation.protocol import evaluate_ratings
    from recommenders_tf.evaluation.registry import available, get_model
    from recommenders_tf.features.item_encoding import encode_item_texts
    from recommenders_tf.models.rating_context import RatingContextConfig

    split = rating_split(data, seed=config.seed)
    truth = split.test[RATING].to_numpy()
    rows = []
    for name in available(kind="peer", task="rating"):
        print(f"[P2 {data.name}] fitting {name} ...", flush=True)
        start = time.perf_counter()
        peer = get_model(name, data=data, seed=config.seed).fit(split.train)
        seconds = time.perf_counter() - start
        metrics = evaluate_ratings(truth, peer.predict(split.test), data.rating_range)
        rows.append({"model": name, "kind": "peer", "metrics": _round(metrics),
                     "train_seconds": round(seconds, 2), "notes": peer.notes})
        print(f"  {name}: rmse={metrics['rmse']:.4f} mae={metrics['mae']:.4f}", flush=True)

    context = RatingContextConfig(**config.p2_context)
    text = None
    if context.use_text:
        encoded = encode_item_texts(items_for_train(data, split.train),
                                    cache_dir=config.text_cache_dir)
        text = (encoded.vectors.ids, encoded.vectors.vectors)
    no_text = dataclasses.replace(context, use_text=False)
    # Whether id embeddings beside the context help depends on the data (on ml-100k they
    # overfit within two epochs, on synthetic's strong latent factors they help): both are
    # fitted and the one with the lower held-out RMSE is the P2 model, the other an ablation
    # row; then the chosen one without the large-model features, and the id model without
    # any rated history.
    with_ids = {k: v for k, v in P2_CONTEXT_SETTINGS.items() if k != "id_features"}
    fits = {}
    for name, settings, ctx in [("without id embeddings", P2_CONTEXT_SETTINGS, context),
                                ("with id embeddings", with_ids, context)]:
        fits[name] = _fit_p2(config, data, split, run_dir, name, settings, ctx, text)
    chosen = min(fits, key=lambda n: fits[n]["val_rmse"])
    other = next(n for n in fits if n != chosen)
    choice = (f"; {chosen} chosen on held-out lists (val rmse {fits[chosen]['val_rmse']:.4f} "
              f"against {fits[other]['val_rmse']:.4f} {other})")
    fits[chosen]["row"]["notes"] += choice
    rows.append(dict(fits[chosen]["row"], model="ranking-mse"))
    rows.append(dict(fits[other]["row"], model=f"ranking-mse {other}"))
    chosen_settings = P2_CONTEXT_SETTINGS if chosen == "without id embeddings" else with_ids
    rows.append(_fit_p2(config, data, split, run_dir, "without LM", chosen_settings,
                        no_text, text)["row"])
    rows.append(_fit_p2(config, data, split, run_dir, "ids only", {}, None, text)["row"])
    for row in rows[-4:]:
        print(f"  {row['model']}: rmse={row['metrics']['rmse']:.4f} "
              f"mae={row['metrics']['mae']:.4f}", flush=True)
    return rows, split


def _fit_p2(config: BenchRankingConfig, data, split, run_dir: Path, variant: str,
            settings: Dict[str, Any], ctx, text) -> Dict[str, Any]:
    """One P2 rating model (`models.rating_context.fit_rating_model`) fitted and scored on
    the test part: {"row": its results row named "ranking-mse <variant>", "val_rmse"}."""
    from recommenders_tf.evaluation.protocol import evaluate_ratings
    from recommenders_tf.models.rating_context import (fit_rating_model, list_width,
                                                       predict_ratings)

    name = f"ranking-mse {variant}"
    rcfg = _ranking_config({**P2_SETTINGS, **settings}, config.p2_settings, config, data,
                           loss="mse")
    print(f"[P2 {data.name}] training {name} ...", flush=True)
    start = time.perf_counter()
    model, result, _, _ = fit_rating_model(
        rcfg, split.train, str(run_dir / f"P2-{name.replace(' ', '-')}"), context=ctx,
        text=text, items=data.items, users=data.users, list_size=P2_LIST_SIZE)
    seconds = time.perf_counter() - start
    prediction = predict_ratings(model, split.test, split.train, list_width(rcfg, ctx),
                                 P2_LIST_SIZE)
    metrics = evaluate_ratings(split.test[RATING].to_numpy(), prediction, data.rating_range)
    metrics["examples_per_second"] = result.examples_per_second or 0.0
    notes = f"DCN-v2 x{rcfg.num_cross_layers} + deep {list(rcfg.deep_dims)}"
    if rcfg.id_features:
        notes += (f" + DIN over {rcfg.history_len} other rated items; embeddings "
                  f"{rcfg.id_embedding_dim}, l2 {rcfg.embedding_l2}")
    else:
        notes += " over the context features alone (no id embeddings)"
    notes += f"; dropout {rcfg.deep_dropout}, {rcfg.optimizer} lr {rcfg.learning_rate}"
    if ctx is not None:
        notes += (f"; rated-history context over {ctx.history_len} items "
                  f"({', '.join(model.context_features.feature_names)}), train "
                  f"features cross-fitted in {ctx.folds} folds")
    notes += (f"; epochs={result.best_epoch} by early stopping on 10% held-out train "
              f"lists (val rmse {result.best_value:.4f})")
    return {"val_rmse": float(result.best_value),
            "row": {"model": name, "kind": "project", "metrics": _round(metrics),
                    "train_seconds": round(seconds, 2), "notes": notes}}


def _rank_scores(n_users: int, n_items: int, order: np.ndarray) -> np.ndarray:
    """Score matrix putting each user's ordered candidates first (K, K-1, ...), others 0."""
    scores = np.zeros((n_users, n_items))
    k = order.shape[1]
    for r in range(n_users):
        valid = order[r] >= 0
        scores[r, order[r][valid]] = k + 1 - np.arange(k)[valid]
    return scores


def run_rerank(config: BenchRankingConfig, data, run_dir: Path):
    """Re-scoring rows: retrieval order, then each loss re-ordering the same candidates."""
    from recommenders_tf.evaluation.protocol import TopKEvaluator
    from recommenders_tf.models.losses import LOSS_KEYS
    from recommenders_tf.models.ranking import fit_ranking_model, predict_lists
    from recommenders_tf.cascade.candidates import make_candidate_source, top_candidates
    from recommenders_tf.models.ranking_data import scoring_lists

    split = temporal_split(data.interactions, seed=config.seed, dataset=data.name)
    evaluator = TopKEvaluator(split.train, split.test, ks=(10,))
    users, catalog = evaluator.user_ids, evaluator.item_ids
    losses = list(config.losses) or list(LOSS_KEYS)
    data_cfg = dataclasses.replace(config.data, negatives=config.data.negatives,
                                   candidate_source=config.candidate_source,
                                   num_candidates=config.num_candidates, label="binary",
                                   lists="candidates")
    base = _ranking_config(RERANK_SETTINGS, config.rerank_settings, config, data)
    print(f"[{RERANK_PROTOCOL} {data.name}] building training lists (retrieval stage "
          f"{config.candidate_source} fitted before the time cut) ...", flush=True)
    start = time.perf_counter()
    lists, info = build_training_lists(split.train, base, data_cfg, data.items,
                                       seed=config.seed)
    list_seconds = time.perf_counter() - start
    train_lists, held_out = lists.split(data_cfg.validation_fraction, seed=config.seed)
    print(f"  {len(lists)} lists of {lists.list_size} ({lists.num_entries} entries) in "
          f"{list_seconds:.0f}s", flush=True)

    print(f"[{RERANK_PROTOCOL} {data.name}] fitting retrieval stage {config.candidate_source} "
          "on the whole train part ...", flush=True)
    start = time.perf_counter()
    val = validation_split(split.train, seed=config.seed, dataset=data.name)
    source = make_candidate_source(config.candidate_source, catalog, data.items, config.seed)
    source.fit(val.train, validation=val.test)
    candidates = top_candidates(lambda u: source.score(u, catalog), users, catalog,
                                split.train, config.num_candidates)
    retrieval_seconds = time.perf_counter() - start
    item_pos = {item: j for j, item in enumerate(catalog)}
    cand_pos = np.vectorize(lambda i: item_pos.get(i, -1), otypes=[np.int64])(candidates)
    scoring = scoring_lists(users, candidates, split.train, base.history_len,
                            relevant=split.test)
    recall_k = float(np.mean([lab[m].sum() for lab, m in zip(scoring.label, scoring.mask)]
                             / evaluator.n_relevant))

    def evaluate(order: np.ndarray) -> Dict[str, float]:
        table = _rank_scores(len(users), len(catalog), order)
        row_of = {u: r for r, u in enumerate(users)}
        metrics = evaluator.evaluate(
            lambda batch: table[[row_of[u] for u in batch]]).metrics
        return {k: metrics[k] for k in RERANK_METRICS}

    name = config.candidate_source
    retrieval_metrics = evaluate(cand_pos)
    rows = [{"model": f"{name} order", "kind": "baseline", "metrics": _round(retrieval_metrics),
             "train_seconds": round(retrieval_seconds, 2),
             "notes": f"retrieval stage alone; recall@{config.num_candidates} of its candidates "
                      f"{recall_k:.4f}; {getattr(source, 'notes', '')}"}]
    print(f"  {name} order: " + ", ".join(f"{k}={v:.4f}" for k, v in retrieval_metrics.items()),
          flush=True)
    for key in losses:
        rcfg = dataclasses.replace(base, loss=key)
        print(f"[{RERANK_PROTOCOL} {data.name}] training ranking model, loss {key} ...",
              flush=True)
        start = time.perf_counter()
        model, result, _ = fit_ranking_model(rcfg, train_lists, held_out, split.train,
                                             str(run_dir / f"rerank-{name}-{key}"),
                                             items=data.items,
                                             users=data.users)
        seconds = time.perf_counter() - start
        scores = predict_lists(model, scoring)
        # Stable sort: equal scores keep the retrieval order.
        order = np.take_along_axis(cand_pos, np.argsort(-scores, axis=1, kind="stable"), 1)
        metrics = evaluate(order)
        gain = metrics["ndcg@10"] / retrieval_metrics["ndcg@10"] - 1.0
        metrics["examples_per_second"] = result.examples_per_second or 0.0
        rows.append({"model": f"ranking-{key}", "kind": "project", "metrics": _round(metrics),
                     "train_seconds": round(seconds, 2),
                     "notes": f"ndcg@10 {gain:+.1%} vs retrieval order; epochs="
                              f"{result.best_epoch} (held-out ndcg_10 "
                              f"{result.best_value or 0:.4f})"})
        print(f"  ranking-{key}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
              + f" ({gain:+.1%} ndcg@10)", flush=True)
    notes = [f"Candidates: the top {config.num_candidates} of {name} (fitted on the whole "
             f"train part, epochs/settings chosen on its validation slice) per test user, "
             "train items excluded; metrics over all test items as in P1.",
             f"Training lists: {info}; {len(lists)} lists of {lists.list_size} "
             f"(<= {data_cfg.max_positives} positives), 10% held out for early stopping.",
             "examples_per_second counts list entries (user-item pairs) per second of "
             "training after the first epoch; mse/bce here regress/classify the 0/1 labels."]
    return rows, split, notes


def main(config: BenchRankingConfig) -> Dict[str, Any]:
    only = [b for b in (config.only or BENCHMARKS)]
    unknown = [b for b in only if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    data = load_dataset(config.dataset)
    # A fresh folder per run: fit_model resumes from checkpoints in a reused folder, which
    # would silently carry models over from another benchmark configuration.
    run_dir = make_run_dir(config.run_dir,
                           f"{data.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
    command = cli.command_line("pipelines.bench_ranking", f"--dataset {config.dataset}")
    results: Dict[str, Any] = {}
    if "P2" in only:
        rows, split = run_p2(config, data, run_dir)
        path = write_results(Path(config.results_dir), protocol="P2", dataset=data.name,
                             seed=config.seed, command=command, rows=rows,
                             split={f"{k} rows": v["rows"]
                                    for k, v in split.manifest()["parts"].items()})
        results["P2"] = {"results_file": str(path), "rows": rows}
    if RERANK_PROTOCOL in only:
        rows, split, notes = run_rerank(config, data, run_dir)
        protocol = config.rerank_protocol or (
            RERANK_PROTOCOL if config.candidate_source == "two-tower"
            else f"{RERANK_PROTOCOL}-{config.candidate_source}")
        path = write_results(Path(config.results_dir), protocol=protocol,
                             dataset=data.name, seed=config.seed, command=command, rows=rows,
                             split={f"{k} rows": v["rows"]
                                    for k, v in split.manifest()["parts"].items()},
                             notes=notes)
        results[RERANK_PROTOCOL] = {"results_file": str(path), "rows": rows}
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    record_run(run_dir, config, results, [f"{k}: {v['results_file']}"
                                          for k, v in results.items()])
    return results


def parse_args(argv=None) -> BenchRankingConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchRankingConfig, dataset=True)
    parser.add_argument("--only", help="comma-separated: P2, P1-rerank")
    parser.add_argument("--losses", help="comma-separated loss keys")
    return cli.parse_config(BenchRankingConfig, parser, argv, fields=("only", "losses"))


if __name__ == "__main__":
    cli.run(main, parse_args)
