"""Build the retrieval indexes from a training run and export both for serving.

Reads the candidate store (ids, embeddings, saved query and candidate towers) of a
`train_retrieval` run, builds the exact BruteForce index, tunes ScaNN until its recall@k against
BruteForce reaches the target with a reordering budget of k + exclusion width (so
`recommend_with_exclusions` always has k answers left after masking), and exports both:

    saved_models/retrieval_scann/<v>/        ScaNN ops: `import scann` first / ScaNN TF Serving
    saved_models/retrieval_bruteforce/<v>/   stock ops: any TF Serving

ScaNN is tuned on real query embeddings: the P1 train histories of sampled users, run through the
saved query tower (its signature says which inputs it takes). Half of the sampled users tune,
the other half measure the recall that is reported. Only when no query inputs can be built (no
dataset, or a query input this step cannot fill) does it fall back to perturbed candidate
embeddings, and it says so in the metrics, the summary and the export metadata.

  python -m pipelines.build_index --run-dir runs/train_retrieval/synthetic
  python -m pipelines.build_index --run-dir runs/train_retrieval/ml-100k --set k=20

Writes `runs/build_index/<run name>/` (config.yaml, metrics.json, summary.md). A re-indexed
store (`pipelines.reindex`) sits beside the original as `candidate_store.v<N>`; the newest one
is used unless `store_dir` is given.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf import cli
from recommenders_tf.features.vocab import load_vocabularies
from recommenders_tf.index import (CandidateStore, LoadedTower, build_tuned_index,
                                   latest_store_dir, noise_queries, split_queries)
from recommenders_tf.index.candidate_store import QUERY_TOWER_DIR
from recommenders_tf.runs import (Progress, find_setting, make_run_dir, read_run_config,
                                  record_run)

DEFAULT_HISTORY_LEN = 20
EXPORT_NAMES = {"scann": "retrieval_scann", "bruteforce": "retrieval_bruteforce"}


@dataclasses.dataclass
class BuildIndexConfig:
    """Settings of the build_index step.

    Args:
        run_dir: the train_retrieval run folder (holds candidate_store/, vocab/, config.yaml).
        store_dir: candidate store to index; default the newest store in `run_dir`.
        dataset: `load_dataset` spec whose train histories make the tuning queries; default the
            `dataset` of the training run's config.yaml. "none" forces the noise fallback.
        protocol: split whose train part gives the histories (the training run's, else "P1").
        split_seed: split seed; -1 takes the training run's `seed`, else 0.
        history_len: history items per query when the query tower accepts any width; 0 takes
            the training run's `history_len`, else 20.
        k: results per query in the exports.
        exclusion_width: exclusions ScaNN absorbs in its approximate pass (it reorders >= k + W
            candidates); requests may exclude more, rows left short get an exact pass.
        target_recall: ScaNN held-out recall@k target against BruteForce.
        retune_targets: tuning targets tried in turn while the held-out recall falls short;
            empty: the target, halfway to 1, then 1 (`recommenders_tf.index.policy`).
        num_query_users: users sampled for the queries (half tune, half measure).
        seed: sampling seed (users, noise fallback, ScaNN tuning sample).
        export_dir: TF Serving base path of the exports.
        out_dir: parent of this step's run folder.
        run_name: run folder name; default the training run's folder name.
    """

    run_dir: str = "runs/train_retrieval/synthetic"
    store_dir: str = ""
    dataset: str = ""
    protocol: str = ""
    split_seed: int = -1
    history_len: int = 0
    k: int = 10
    exclusion_width: int = 50
    target_recall: float = 0.95
    retune_targets: Tuple[float, ...] = ()
    num_query_users: int = 2000
    seed: int = 0
    export_dir: str = "saved_models"
    out_dir: str = "runs/build_index"
    run_name: str = ""


def vocab_sizes(run_dir: str | Path) -> Dict[str, int]:
    """Token counts of the run's train-only vocabularies (without OOV or mask slots)."""
    directory = Path(run_dir) / "vocab"
    if not directory.is_dir():
        return {}
    return {name: len(vocab) for name, vocab in load_vocabularies(directory).items()}


# ---- tuning queries -----------------------------------------------------------------------


@dataclasses.dataclass
class QuerySet:
    """Query embeddings for tuning ScaNN and for measuring its recall.

    Args:
        tune: [m, d] embeddings the tuner searches with.
        evaluate: [m', d] held-out embeddings whose recall is reported.
        source: "users" (real histories through the query tower) or "noise" (fallback).
        note: one human sentence on where the queries came from.
    """

    tune: np.ndarray
    evaluate: np.ndarray
    source: str
    note: str


def training_settings(run_dir) -> Dict[str, Any]:
    """A training run's config.yaml, with the settings its validation search chose (its
    metrics.json `chosen_settings`, e.g. the history length the query tower reads) on top."""
    metrics_file = Path(run_dir) / "metrics.json"
    chosen = (json.loads(metrics_file.read_text(encoding="utf-8")).get("chosen_settings") or {}
              if metrics_file.exists() else {})
    return {**read_run_config(run_dir), **chosen}


def _history_len(config: BuildIndexConfig, spec: Mapping[str, tf.TensorSpec],
                 run_config: Mapping[str, Any]) -> int:
    history = spec.get("history")
    if history is not None and history.shape.rank == 2 and history.shape[1] is not None:
        return int(history.shape[1])  # the tower only accepts this width
    if config.history_len > 0:
        return config.history_len
    return int(find_setting(run_config, "history_len") or DEFAULT_HISTORY_LEN)


def user_query_features(config: BuildIndexConfig, spec: Mapping[str, tf.TensorSpec],
                        run_config: Mapping[str, Any]) -> Tuple[Optional[Dict[str, np.ndarray]],
                                                                 str]:
    """Query inputs for sampled train users, or (None, reason) when they cannot be built."""
    dataset = config.dataset or find_setting(run_config, "dataset") or ""
    if not dataset or str(dataset).lower() == "none":
        return None, "no dataset given (neither --dataset nor `dataset` in the run config)"
    from recommenders_tf.data import load_dataset, split_for_protocol, user_history

    protocol = config.protocol or find_setting(run_config, "protocol") or "P1"
    seed = config.split_seed if config.split_seed >= 0 else int(
        find_setting(run_config, "seed") or 0)
    data = load_dataset(str(dataset))
    train = split_for_protocol(str(protocol), data, seed=seed).train
    length = _history_len(config, spec, run_config)
    histories = user_history(train, length)
    users = histories["user_id"]
    rng = np.random.default_rng(config.seed)
    # Random order, so the tuning and held-out halves are both random samples of users.
    chosen = rng.choice(len(users), min(len(users), config.num_query_users), replace=False)
    user_frame = None
    if data.users is not None:
        user_frame = data.users.set_index("user_id")
    features: Dict[str, np.ndarray] = {}
    for name, feature in spec.items():
        if name == "user_id":
            features[name] = users[chosen].astype(str)
        elif name == "history":
            features[name] = histories["history"][chosen].astype(str)
        elif name == "history_mask":
            features[name] = histories["history_mask"][chosen]
        elif user_frame is not None and name in user_frame.columns and feature.dtype == tf.string:
            column = user_frame[name].astype(str)
            features[name] = np.asarray([column.get(u, "") for u in users[chosen]], dtype=str)
        else:
            return None, (f"the query tower takes input {name!r} ({feature.dtype.name} "
                          f"{feature.shape}), which {dataset!r} does not provide")
    return features, (f"{len(chosen)} {dataset} users' {protocol} train histories "
                      f"(last {length} items, split seed {seed}) through the saved query tower")


def make_queries(config: BuildIndexConfig, store: CandidateStore,
                 query_tower: Optional[LoadedTower], run_config: Mapping[str, Any],
                 log: Progress) -> QuerySet:
    """Tuning and held-out query embeddings, from real users when possible."""
    reason = "the store has no saved query tower"
    if query_tower is not None:
        features, reason = user_query_features(config, query_tower.feature_spec, run_config)
        if features is not None:
            batches = []
            total = len(next(iter(features.values())))
            for start in range(0, total, 1024):
                batch = {n: v[start:start + 1024] for n, v in features.items()}
                batches.append(query_tower(batch).numpy())
            # The users were sampled in random order, so halving needs no shuffle.
            tune, held_out, split_note = split_queries(np.concatenate(batches), shuffle=False)
            return QuerySet(tune, held_out, "users", f"{reason}; {split_note}")
    count = max(2 * min(config.num_query_users, 1000), 20)
    tune, held_out, _ = split_queries(noise_queries(store.embeddings, count, config.seed),
                                      shuffle=False)
    note = (f"FALLBACK: {reason}, so ScaNN was tuned on {len(tune)} sampled candidate "
            "embeddings plus Gaussian noise, not real user queries; recall on real traffic "
            "may differ (pass --dataset to tune on users)")
    log(note)
    return QuerySet(tune, held_out, "noise", note)


# ---- building and exporting ---------------------------------------------------------------


def build_and_export(config: BuildIndexConfig, store: CandidateStore, store_dir: Path,
                     query_tower: LoadedTower, queries: QuerySet, log: Progress,
                     extra_metadata: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Builds BruteForce and tuned ScaNN over `store` and exports both; returns the figures."""
    from recommenders_tf.serving.export import export_retrieval

    k, width = config.k, config.exclusion_width
    built = build_tuned_index(store.ids, store.embeddings, queries.tune, queries.evaluate, k=k,
                              target_recall=config.target_recall,
                              ladder=config.retune_targets or None,
                              min_reordering_candidates=min(k + width, len(store)),
                              query_model=query_tower, seed=config.seed, log=log)
    log(f"ScaNN built in {built.report['build_seconds']:.2f}s after "
        f"{built.report['tuning_seconds']:.1f}s of tuning")

    build_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    indexes = {
        "scann": (built.index, built.report),
        "bruteforce": (built.exact, {"build_seconds": round(built.exact.build_seconds, 4),
                                     f"recall@{k}_vs_exact": 1.0, "params": None}),
    }
    results: Dict[str, Any] = {"build_id": build_id, "indexes": {}, "exports": {}}
    for kind, (index, facts) in indexes.items():
        metadata = {
            "build_id": build_id,
            "candidate_store": str(store_dir),
            "index_build": {**facts, "target_recall": config.target_recall,
                            "query_source": queries.source, "query_note": queries.note},
            **dict(extra_metadata or {}),
        }
        path = export_retrieval(query_tower, index, base_dir=config.export_dir,
                                name=EXPORT_NAMES[kind], k=k, exclusion_width=width,
                                metadata=metadata, query_feature_spec=query_tower.feature_spec)
        log(f"exported {kind} -> {path}")
        results["indexes"][kind] = facts
        results["exports"][kind] = str(path)
    return results


def load_store(config: BuildIndexConfig, log: Progress
               ) -> Tuple[CandidateStore, Path, Optional[LoadedTower]]:
    store_dir = Path(config.store_dir) if config.store_dir else latest_store_dir(config.run_dir)
    store = CandidateStore.load(store_dir)
    query_tower = (LoadedTower(store_dir / QUERY_TOWER_DIR)
                   if (store_dir / QUERY_TOWER_DIR).is_dir() else None)
    log(f"loaded {store_dir}: {len(store)} candidates, dim {store.embedding_dim}, query tower "
        f"{'inputs ' + str(sorted(query_tower.feature_spec)) if query_tower else 'MISSING'}")
    return store, store_dir, query_tower


def run_build(config: BuildIndexConfig, store: CandidateStore, store_dir: Path,
              query_tower: Optional[LoadedTower], log: Progress) -> Dict[str, Any]:
    """Queries + both indexes + both exports for one store."""
    if query_tower is None:
        raise FileNotFoundError(
            f"{store_dir / QUERY_TOWER_DIR} is missing: the exports need the query tower. "
            "Save the store with CandidateStore.save(..., query_tower=...).")
    run_config = training_settings(config.run_dir)
    queries = make_queries(config, store, query_tower, run_config, log)
    sizes = vocab_sizes(config.run_dir)
    # Clients send this many recent items per user (the tower reads no more than it trained on).
    history_len = _history_len(config, query_tower.feature_spec, run_config)
    extra = {"vocab_sizes": sizes, "training_run": str(config.run_dir),
             "query_history_len": history_len}
    built = build_and_export(config, store, store_dir, query_tower, queries, log, extra)
    return {
        "run_dir": str(config.run_dir),
        "candidate_store": str(store_dir),
        "num_candidates": len(store),
        "embedding_dim": store.embedding_dim,
        "k": config.k,
        "exclusion_width": config.exclusion_width,
        "vocab_sizes": sizes,
        "query_history_len": history_len,
        "tensorflow": tf.__version__,
        "query_source": queries.source,
        "query_note": queries.note,
        **built,
    }


def summary_lines(results: Mapping[str, Any]) -> List[str]:
    k = results["k"]
    lines = [f"Candidate store `{results['candidate_store']}`: {results['num_candidates']} "
             f"items, dim {results['embedding_dim']}.",
             f"Tuning queries: {results['query_note']}.", "",
             f"| index | build s | recall@{k} vs exact | export |", "|---|---|---|---|"]
    for kind, facts in results["indexes"].items():
        lines.append(f"| {kind} | {facts['build_seconds']} | {facts[f'recall@{k}_vs_exact']} "
                     f"| `{results['exports'][kind]}` |")
    scann = results["indexes"]["scann"]
    lines += ["", f"ScaNN parameters: {scann['params']}.", scann["tuning_note"]]
    return lines


def main(config: BuildIndexConfig) -> Dict[str, Any]:
    log = Progress("build_index")
    store, store_dir, query_tower = load_store(config, log)
    results = run_build(config, store, store_dir, query_tower, log)
    run_dir = make_run_dir(config.out_dir, config.run_name or Path(config.run_dir).name)
    results["build_run_dir"] = str(run_dir)
    record_run(run_dir, config, results, summary_lines(results))
    log(f"done; run record in {run_dir}")
    return results


def parse_args(argv=None) -> BuildIndexConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BuildIndexConfig, dataset=True)
    parser.add_argument("--run-dir", help="train_retrieval run folder")
    return cli.parse_config(BuildIndexConfig, parser, argv, fields=("run_dir",))


if __name__ == "__main__":
    cli.run(main, parse_args)
