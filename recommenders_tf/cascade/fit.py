"""Training the three-stage cascade without letting any stage learn from data it is judged on.

Stages (sizes from `CascadeConfig`):
  1 retrieval   the TFRS two-tower (`TwoTowerRecommender`): full catalog -> top `retrieval_k`
  2 ranking     `RankingModel` over those candidates, fed the retrieval score, item popularity
                (overall and recent), text and co-occurrence similarity to the user's history
                and the implicit-ALS peer's fold-in score (`CandidateContext`) -> top
                `ranking_k`. It starts training from z(retrieval) + w z(peer), w chosen on its
                own training lists (`cascade.start`), and serves the trained weights only if
                they beat that start out of fold (below)
  3 re-ranking  the PRM-style `Reranker` over the ranked list, then optional MMR/DPP
                diversity and the business rules -> top `k`

Where each stage's training lists come from (`train` is the part of the data we may learn
from; a P1 test part is never an argument here):
  * val = validation_split(train): each user's last 20% of train is "val.test", the rest
    "val.train". Retrieval chooses its epochs on val.test and is refit on all of train
    (`R_full`, the one that serves); a twin with the chosen epochs is fitted on val.train only
    (`R_early`) and retrieves each val user's top `retrieval_k`. Those lists, labelled by
    val.test, are the ranker's training lists: the ranker learns what follows in time from
    candidates of a retrieval model that never saw it, the situation it serves in.
  * The re-ranker needs the ranker's scores on lists the ranker was NOT trained on: the lists
    are cut into `cross_fit_folds` user folds, a ranker is fitted on all folds but one and
    scores the one left out (cross-fitting); the re-ranker trains on these out-of-fold
    rankings. The serving ranker is then fitted on all lists. If the trained re-ranker does
    not beat the ranker's order on its held-out lists, the untrained one (which keeps the
    ranker's order exactly) is served instead, and the report says so.
  * With a blend start, the same cross-fitting judges the ranker: each fold's trained ranker
    and the blend it started from score the fold left out, and the serving ranker keeps its
    trained weights only if they won there over all folds (`ranker_start` in the report);
    otherwise it serves its start, and the re-ranker learns from the folds' starts.
  * Those lists are computed by `CascadeGraph` (`retrieve` with R_early, `rank` with each
    fold's ranker), the same computation the cascade is evaluated and served by.
  * Popularity, neighbour and peer-score tables are computed from val.train while training
    and switched to all of train for serving, the way the retrieval model is refit. The ALS
    peer's setting is chosen on val.test by its P1 grid; the serving tables come from that
    peer refit on all of train.
  * With `ranker_cuts` > 1 the ranker also learns from earlier time cuts: cut 2 is the
    validation slice of val.train, and so on. Each cut has its own retrieval twin (fitted on
    that cut's train part with the chosen epochs) and its own context tables, whose features
    travel with its lists (`CONTEXT_KEY`); the ranker's held-out lists and the re-ranker's
    cross-fitted lists stay those of cut 1, the cut next to the one it serves.

Example:
  >>> cascade = fit_cascade(split.train, CascadeConfig(), "runs/cascade", items=data.items)
  >>> out = cascade.run(["42"])          # per-stage ids, scores, ranks
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)

from recommenders_tf.cascade.config import CascadeConfig
from recommenders_tf.cascade.graph import CascadeGraph
from recommenders_tf.cascade.stages import (Cascade, StageLists, excluded_items, genre_vectors,
                                            item_counts, run_batched)
from recommenders_tf.data.datasets import PAD
from recommenders_tf.data.schema import GENRES, ITEM_ID, USER_ID
from recommenders_tf.data.splits import frame_sha256, sample_users, validation_split
from recommenders_tf.evaluation.protocol import TopKEvaluator
from recommenders_tf.features.item_vectors import ItemVectors
from recommenders_tf.cascade.fold_in import als_fold_in, choose_als
from recommenders_tf.cascade.neighbors import (choose_ease_l2, describe, neighbor_method,
                                               neighbor_table)
from recommenders_tf.cascade.start import choose_start, start_weights
from recommenders_tf.models.candidate_features import (CONTEXT_KEY, RETRIEVAL_SCORE,
                                                       CandidateContext)
from recommenders_tf.index.scann_index import build_index
from recommenders_tf.models.ranking import RankingModel, fit_ranking_model, predict_lists
from recommenders_tf.models.ranking_data import (RankingLists, histories_for, list_ndcg_at_10,
                                                 scoring_lists)
from recommenders_tf.models.recommender import TwoTowerConfig, TwoTowerRecommender
from recommenders_tf.resources import StageMeter, maybe_stage
from recommenders_tf.config import ConfigError, to_dict
from recommenders_tf.runs import CLAIM_FILE, claim_run_dir
from recommenders_tf.models.reranking import (Reranker, build_reranker, fit_reranker,
                                              rerank_scores)

__all__ = ["CascadeConfig", "Cascade", "StageLists", "fit_cascade", "fit_reranking_stage",
           "out_of_fold_inputs", "share_retrieval_fits", "RETRIEVAL_DIRS"]

# The folders of the two retrieval fits inside a cascade folder (the serving model, the twin
# whose lists train the ranker).
RETRIEVAL_DIRS = ("retrieval", "retrieval_early")


def share_retrieval_fits(source, target, config: CascadeConfig, train: pd.DataFrame) -> None:
    """Links the retrieval folders of the cascade fitted in `source` into `target`, so a
    `fit_cascade(train, config, target)` resumes those finished fits (loads them, trains
    nothing) and fits only the ranking stages anew, e.g. one cascade per ranking loss.

    Raises:
      ConfigError: `source` was fitted with another retrieval config or seed.
      ValueError: `source` holds no fitted cascade, or one fitted on other data.
    """
    source, target = Path(source), Path(target)
    claim = source / CLAIM_FILE
    if not claim.exists():
        raise ValueError(f"{source} holds no cascade fit ({CLAIM_FILE} missing)")
    held = json.loads(claim.read_text(encoding="utf-8"))
    mine = json.loads(json.dumps(to_dict(config), default=str))
    for key in ("retrieval", "seed"):
        if held["config"].get(key) != mine.get(key):
            raise ConfigError(f"{source} fitted retrieval with {key}={held['config'].get(key)!r}"
                              f", not {mine.get(key)!r}: its fits cannot be shared")
    if (held.get("data") or {}).get("train") != frame_sha256(train):
        raise ValueError(f"{source} was fitted on other train data: its retrieval fits cannot "
                         "be shared")
    target.mkdir(parents=True, exist_ok=True)
    names = list(RETRIEVAL_DIRS) + sorted(
        d.name for d in source.glob(RETRIEVAL_DIRS[1] + "_cut*") if d.is_dir())
    for name in names:
        link, folder = target / name, (source / name).resolve()
        if link.is_symlink() and link.resolve() == folder:
            continue
        os.symlink(folder, link, target_is_directory=True)


def _twin_parts(model: TwoTowerRecommender, catalog: np.ndarray) -> Dict[str, Any]:
    """What the list-making graph needs of a retrieval twin: its query tower, candidate
    embeddings, an exact index over them and its user vocabulary (not its training state)."""
    emb = model.candidate_embeddings(catalog)
    return {"query": model.query_tower, "embeddings": emb,
            "index": build_index("bruteforce", None, catalog, emb, k=len(catalog)),
            "users": model.vocabularies[USER_ID].tokens}


def _user_folds(users: np.ndarray, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold = np.empty(len(users), np.int64)
    fold[rng.permutation(len(users))] = np.arange(len(users)) % folds
    return fold


def fit_cascade(train: pd.DataFrame, config: CascadeConfig, run_dir, *,
                items: Optional[pd.DataFrame] = None, users: Optional[pd.DataFrame] = None,
                text_vectors: Optional[ItemVectors] = None,
                log: Callable[[str], None] = print, strategy=None,
                meter: Optional[StageMeter] = None) -> Cascade:
    """Fits the three stages on `train` only (see the module docstring for who sees what).

    Args:
      train: the interactions to learn from (canonical schema with timestamps).
      config: CascadeConfig.
      run_dir: artifact folder (each stage's training run below it). A folder left by an
        interrupted fit of the same config and data resumes; one claimed by another fit is
        refused (`claim_run_dir`).
      items: items frame (genres feed the towers, diversity and category caps).
      users: users frame (for `config.ranking.user_features`).
      text_vectors: item text vectors (e.g. MiniLM, `pipelines.embed_items`); used when
        `config.use_text`.
      log: progress printer.
      strategy: tf.distribute strategy of the two retrieval fits (`TwoTowerRecommender`);
        default the current one. Ranking and re-ranking train on the current strategy.
      meter: a `StageMeter` that records the wall time and peak memory of each stage
        (retrieval training, ranker lists, ranker training, re-ranker training).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Every stage's loop resumes from the checkpoints it finds: right for an interrupted fit,
    # silently wrong for another one, so the folder is claimed for this config and data.
    claim_run_dir(run_dir, config, data={"train": frame_sha256(train)}, what="cascade")
    cfg = config
    report: Dict[str, Any] = {"train_rows": int(len(train))}
    t0 = time.perf_counter()
    catalog = np.unique(train[ITEM_ID].astype(str).to_numpy()).astype(object)
    val = validation_split(train, seed=cfg.seed)
    text = None
    if cfg.use_text and text_vectors is not None:
        vecs, found = text_vectors.lookup(catalog)
        text = np.where(found[:, None], vecs, 0.0).astype(np.float32)
        report["text_items_found"] = int(found.sum())
    has_genres = items is not None and GENRES in items.columns
    rcfg = TwoTowerConfig(**{"seed": cfg.seed, "verbose": 0, "use_genres": has_genres,
                             **cfg.retrieval})

    log(f"[cascade] 1/3 retrieval: two-tower, epochs chosen on the validation slice "
        f"({len(val.train)} / {len(val.test)} rows), refit on all {len(train)} train rows")
    start = time.perf_counter()
    with maybe_stage(meter, "retrieval training", examples=len(train)):
        retrieval = TwoTowerRecommender(rcfg, item_ids=catalog, items=items,
                                        work_dir=run_dir / RETRIEVAL_DIRS[0],
                                        strategy=strategy,
                                        validation_evaluator=TopKEvaluator).fit(
                                            val.train, validation=val.test)
        # The twins repeat the fit with the settings and epochs chosen on validation.
        chosen = dataclasses.replace(retrieval.config, epochs=retrieval.best_epoch, search={})
        early = TwoTowerRecommender(chosen,
                                    item_ids=catalog, items=items, strategy=strategy,
                                    work_dir=run_dir / RETRIEVAL_DIRS[1]).fit(val.train)
        # Earlier cuts, each with a twin that never saw that cut's targets.
        cuts = [val]
        while len(cuts) < cfg.ranker_cuts:
            cuts.append(validation_split(cuts[-1].train, seed=cfg.seed))
        cut_twins = []
        for c, cut in enumerate(cuts[1:], start=2):
            model = TwoTowerRecommender(chosen,
                                        item_ids=catalog, items=items, strategy=strategy,
                                        work_dir=run_dir / f"{RETRIEVAL_DIRS[1]}_cut{c}"
                                        ).fit(cut.train)
            cut_twins.append(_twin_parts(model, catalog))
            del model
    report["retrieval"] = {"epochs": retrieval.best_epoch, "notes": retrieval.notes,
                           "seconds": round(time.perf_counter() - start, 2),
                           "examples_per_second": retrieval.examples_per_second}

    all_vusers = np.unique(val.test[USER_ID].astype(str).to_numpy()).astype(object)
    vusers, sampled = sample_users(all_vusers, cfg.max_ranker_users, cfg.seed)
    # The lists the ranker and the re-ranker learn from come from the cascade's own graph
    # (with the early retrieval model and each fold's ranker): trained on what it serves.
    # Only the early twin's query tower, candidate embeddings and user vocabulary are kept
    # (dropped once the lists are made): its training state, histories and seen pairs are not.
    twin = _twin_parts(early, catalog)
    del early
    gc.collect()
    tables_for_rerank = {"text": text, "genres": genre_vectors(items, catalog)}

    def stage_graph(ranker: Optional[RankingModel], parts=None, seen=None) -> CascadeGraph:
        parts = twin if parts is None else parts
        return CascadeGraph(cfg, parts["query"], parts["index"], ranker, None, catalog,
                            parts["embeddings"],
                            {n: t for n, t in tables_for_rerank.items()
                             if n in cfg.rerank_item_features},
                            None, {}, item_counts(val.train if seen is None else seen, catalog),
                            None, chosen.history_len, cfg.ranking.history_len, parts["users"])

    vhist = histories_for(vusers, val.train, max(chosen.history_len, cfg.ranking.history_len, 1))
    with maybe_stage(meter, "ranker lists", users=len(vusers)):
        retrieved = run_batched(stage_graph(None).retrieve, vusers, vhist,
                                excluded_items(val.train))
    cids = retrieved["retrieval_ids"]
    cscores = np.where(cids != PAD, retrieved["retrieval_scores"], 0.0).astype(np.float32)
    lists = scoring_lists(vusers, cids, val.train, cfg.ranking.history_len, relevant=val.test)
    lists = lists.with_extra(**{RETRIEVAL_SCORE: cscores})
    positives = (lists.label > 0).sum(1)
    report["ranking_lists"] = {"users": int(len(vusers)), "users_sample": sampled,
                               "with_positive_in_candidates": int((positives > 0).sum()),
                               "candidate_recall": float(positives.sum() / max(
                                   val.test.drop_duplicates([USER_ID, ITEM_ID]).shape[0], 1))}
    lists = lists.subset(np.flatnonzero(positives > 0))

    def cut_lists(cut, parts) -> RankingLists:
        """An earlier cut's lists: its twin's candidates for its validation users, labelled by
        its validation slice, with positives among them."""
        users, _ = sample_users(np.unique(cut.test[USER_ID].astype(str).to_numpy()).astype(
            object), cfg.max_ranker_users, cfg.seed)
        hist = histories_for(users, cut.train, max(chosen.history_len, cfg.ranking.history_len,
                                                   1))
        got = run_batched(stage_graph(None, parts, cut.train).retrieve, users, hist,
                          excluded_items(cut.train))
        ids = got["retrieval_ids"]
        out = scoring_lists(users, ids, cut.train, cfg.ranking.history_len, relevant=cut.test)
        out = out.with_extra(**{RETRIEVAL_SCORE: np.where(
            ids != PAD, got["retrieval_scores"], 0.0).astype(np.float32)})
        return out.subset(np.flatnonzero((out.label > 0).sum(1) > 0))

    earlier = []
    if cut_twins:
        with maybe_stage(meter, "ranker lists of earlier cuts", cuts=len(cut_twins)):
            earlier = [cut_lists(cut, parts) for cut, parts in zip(cuts[1:], cut_twins)]
        cut_twins.clear()
        gc.collect()
        report["ranking_lists"]["earlier_cuts"] = [len(part) for part in earlier]

    method = (neighbor_method(cfg.neighbor_weights, len(catalog), cfg.ease_max_items)
              if cfg.neighbors > 0 else None)
    l2, l2_note, als = None, "", None

    def tables(frame, fold_in=None):
        if als is not None and fold_in is None:
            fold_in = als_fold_in(frame, catalog, als.chosen_params, cfg.seed)
        return dict(counts=item_counts(frame, catalog),
                    recent_counts=item_counts(frame, catalog, cfg.trend_share),
                    neighbors=(neighbor_table(frame, catalog, cfg.neighbors, method, l2)
                               if method else None), fold_in=fold_in)

    with maybe_stage(meter, "context tables", items=len(catalog)):
        if method == "ease":
            # The penalty EASE itself would choose on these lists' window.
            l2, l2_note = choose_ease_l2(val.train, val.test, catalog, cfg.max_ranker_users)
        if cfg.peer_score == "als":
            # Chosen on the ranker's validation window, then refit on all of train (serving).
            als = choose_als(val.train, val.test, catalog, cfg.max_ranker_users, cfg.seed)
            report["peer_score"] = {"peer": "implicit-ALS", "params": als.chosen_params,
                                    "choice": als.notes}
        early_tables = tables(val.train)
    report["neighbors"] = {"per_item": cfg.neighbors, **describe(method, l2, l2_note)}

    def described(part: RankingLists, own) -> RankingLists:
        """`part` carrying its context features from its own cut's tables (`own`)."""
        layer = CandidateContext(catalog, own["counts"], text_vectors=text,
                                 recent=cfg.recent_items, recent_counts=own["recent_counts"],
                                 neighbors=own["neighbors"], fold_in=own["fold_in"],
                                 name="cut_context")
        return part.with_extra(**{CONTEXT_KEY: layer.raw_values(part.features())})

    extra_lists = None
    if earlier:
        # Cut 1's values equal what the layer computes from early_tables in the graph; they
        # are precomputed only so that every training list has the same features.
        lists = described(lists, early_tables)
        extra_lists = RankingLists.concat([described(part, tables(cut.train))
                                           for part, cut in zip(earlier, cuts[1:])])
        del earlier

    def context(part: RankingLists) -> Tuple[CandidateContext, np.ndarray]:
        """The ranker's context layer, standardised on `part`, and `part`'s raw features."""
        layer = CandidateContext(catalog, early_tables["counts"], text_vectors=text,
                                 recent=cfg.recent_items,
                                 recent_counts=early_tables["recent_counts"],
                                 neighbors=early_tables["neighbors"],
                                 fold_in=early_tables["fold_in"], name="candidate_context")
        features = part.features()
        raw = (features[CONTEXT_KEY] if CONTEXT_KEY in features
               else layer.raw_values(features))
        layer.adapt({**features, CONTEXT_KEY: raw})
        return layer, raw

    def fit_ranker(part: RankingLists, name: str
                   ) -> Tuple[RankingModel, Optional[Dict[str, float]]]:
        """A ranker trained on `part` (a share held out for early stopping) and the blend it
        started from (None without `ranker_start`); the trained weights are kept, the
        cross-fitted folds judge them against the start."""
        fit_part, held = part.split(cfg.held_out_share, seed=cfg.seed)
        if extra_lists is not None:
            # Held-out lists stay cut 1's: early stopping judges the cut next to serving.
            fit_part = RankingLists.concat([fit_part, extra_lists])
        layer, raw = context(fit_part)
        blend, chosen = None, {}
        if cfg.ranker_start == "blend":
            if als is None:
                blend = {"retrieval_z": 1.0}
            else:
                weight, chosen = choose_start(raw, layer.feature_names, fit_part.label,
                                              fit_part.mask)
                blend = start_weights(weight)
        del raw
        model, result, _ = fit_ranking_model(cfg.ranking, fit_part, held, val.train,
                                             str(run_dir / name), items=items, users=users,
                                             context_features=layer, start=blend,
                                             judge_start=False)
        report.setdefault("ranking_fits", {})[name] = {
            "lists": len(fit_part), "held_out": len(held), "epochs": result.best_epoch,
            "held_out_ndcg_10": result.best_value,
            "examples_per_second": result.examples_per_second,
            **({"start": {**chosen, **result.start}} if blend else {})}
        return model, blend

    # Cross-fitting runs on a sample of the lists (its cost is folds x lists); only the
    # serving ranker trains on all of them.
    crossed_users, crossed = sample_users(lists.user_id, cfg.max_rerank_lists, cfg.seed + 1)
    crossed_lists = lists.subset(np.flatnonzero(np.isin(lists.user_id, crossed_users)))
    report["rerank_lists_sample"] = crossed
    log(f"[cascade] 2/3 ranking: {cfg.ranking.loss} over the top {cfg.retrieval_k}, "
        f"{len(lists)} lists ({sampled['sampled']} of {sampled['of']} validation users), "
        f"{cfg.cross_fit_folds}-fold cross-fitting over {len(crossed_lists)} of them for the "
        f"re-ranker")
    start = time.perf_counter()
    folds = _user_folds(crossed_lists.user_id, cfg.cross_fit_folds, cfg.seed)
    row_of = {u: r for r, u in enumerate(vusers)}
    # The re-ranker's inputs from each fold's trained ranker and, with a blend start, from
    # that fold's start; which ones it learns from follows the verdict below.
    oof: Dict[str, List[Dict[str, np.ndarray]]] = {"trained": [], "start": []}
    judged = {"trained": [], "start": []}  # out-of-fold NDCG@10 x lists, per fold
    with maybe_stage(meter, "ranker training", lists=len(lists),
                     cross_fitted_lists=len(crossed_lists), fits=cfg.cross_fit_folds + 1):
        for f in range(cfg.cross_fit_folds):
            held = folds == f
            model, blend = fit_ranker(crossed_lists.subset(np.flatnonzero(~held)),
                                      f"ranking_fold{f}")
            fold = crossed_lists.subset(np.flatnonzero(held))
            fold_hist = vhist[[row_of[u] for u in fold.user_id]]
            for kind in ("trained", "start") if blend else ("trained",):
                if kind == "start":
                    model.start_from(blend)
                oof[kind].append(out_of_fold_inputs(stage_graph(model), fold, fold_hist))
                judged[kind].append(len(fold) * list_ndcg_at_10(
                    fold.label, predict_lists(model, fold), fold.mask))
            # A fold's ranker (id tables, optimizer slots, traced steps) is done once it has
            # scored its fold; Keras models hold reference cycles, so without a collection
            # every fold's model stayed resident until the end of the fit.
            del model, fold
            gc.collect()
        served = "trained"
        if judged["start"]:
            # Judged on lists no fold ranker trained or stopped early on: the held-out share
            # that chose each ranker's epoch would favour the trained weights.
            n = len(crossed_lists)
            verdict = {k: float(sum(v) / n) for k, v in judged.items()}
            served = "trained" if verdict["trained"] > verdict["start"] else "start"
            report["ranker_start"] = {"out_of_fold_ndcg_10": verdict, "lists": n,
                                      "served": served}
        # The early twin and its index only produced lists; the serving fits do not use them.
        twin.clear()
        del crossed_lists, retrieved, cids, cscores
        gc.collect()
        ranker, blend = fit_ranker(lists, "ranking")
        if served == "start":
            ranker.start_from(blend)
        oof = oof[served]
        del lists, vhist
        gc.collect()
    report["ranking_seconds"] = round(time.perf_counter() - start, 2)

    log(f"[cascade] 3/3 re-ranking: listwise Transformer over the ranked top {cfg.ranking_k}")
    with maybe_stage(meter, "re-ranker training", lists=sum(len(p["mask"]) for p in oof)):
        reranker, report["reranking"] = fit_reranking_stage(cfg, oof, run_dir / "reranking")

    # Serve with what all of train says about popularity, like the refit retrieval model.
    full_tables = tables(train, als.fold_in_tables(catalog) if als is not None else None)
    ranker.context_features.set_tables(full_tables["counts"], full_tables["recent_counts"],
                                       full_tables["neighbors"], full_tables["fold_in"])
    report["fit_seconds"] = round(time.perf_counter() - t0, 2)
    (run_dir / "cascade_report.json").write_text(json.dumps(report, indent=2, default=str))
    return Cascade(cfg, retrieval, ranker, reranker, ranker.context_features, catalog,
                   train, text, items, report)


def out_of_fold_inputs(graph: CascadeGraph, lists: RankingLists, histories: np.ndarray
                       ) -> Dict[str, np.ndarray]:
    """The re-ranker's training arrays of one fold: `graph.rank` (the fold's ranker, which did
    not see these lists) over the lists' retrieval candidates, labelled from `lists`
    (max(label, 0) on entries, -1 on padding)."""
    scores = np.where(lists.mask, lists.extra[RETRIEVAL_SCORE], -np.inf).astype(np.float32)
    out = run_batched(graph.rank, lists.user_id, histories, {},
                      extra={"ids": lists.item_id.astype(str), "scores": scores})
    prefix = "rerank_input_"
    arrays = {k[len(prefix):]: v for k, v in out.items() if k.startswith(prefix)}
    ids = out["ranking_ids"]
    labels = np.full(ids.shape, -1.0, np.float32)
    for r in range(len(ids)):
        row = dict(zip(lists.item_id[r], lists.label[r]))
        labels[r] = [max(float(row.get(i, 0.0)), 0.0) if i != PAD else -1.0 for i in ids[r]]
    arrays["label"] = labels
    return arrays


def fit_reranking_stage(config: CascadeConfig, parts: List[Dict[str, np.ndarray]], run_dir
                        ) -> Tuple[Reranker, Dict[str, Any]]:
    """Fits the re-ranker on the out-of-fold arrays of `out_of_fold_inputs` (a share held out
    for early stopping)."""
    start = time.perf_counter()
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(data["mask"])
    held = np.sort(np.random.default_rng(config.seed).permutation(n)[
        :max(1, int(config.held_out_share * n))])
    keep = np.setdiff1d(np.arange(n), held)
    held_out = {k: v[held] for k, v in data.items()}
    reranker, result = fit_reranker(config.reranker, {k: v[keep] for k, v in data.items()},
                                    held_out, str(run_dir))
    # The bar the re-ranker must clear: the ranker's own order on the same held-out lists,
    # both measured by one function (lists without a positive left out).
    labels = np.maximum(held_out["label"], 0.0)
    base = list_ndcg_at_10(labels, held_out["item_scores"][:, :, 0], held_out["mask"])
    trained = list_ndcg_at_10(labels, rerank_scores(reranker, held_out), held_out["mask"])
    kept = trained > base
    if not kept:
        # Untrained, the re-ranker reproduces its input order exactly (skip term, zero head):
        # serve that rather than a model that lost to the ranker on held-out lists.
        reranker = build_reranker(config.reranker, data["item_vectors"].shape[-1],
                                  data["item_scores"].shape[-1],
                                  data["user_vector"].shape[-1] if "user_vector" in data else 0)
        rerank_scores(reranker, held_out)  # builds the variables
    return reranker, {"lists": int(len(keep)), "held_out": int(len(held)),
                      "epochs": result.best_epoch, "held_out_ndcg_10": trained,
                      "held_out_ndcg_10_ranker_order": base, "trained_model_kept": bool(kept),
                      "item_features": list(config.rerank_item_features),
                      "seconds": round(time.perf_counter() - start, 2)}
