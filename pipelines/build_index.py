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
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import yaml

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf import cli
from recommenders_tf.config import load_config
from recommenders_tf.features.vocab import load_vocabularies
from recommenders_tf.index import (CandidateStore, build_index, recall_at_k_vs_exact,
                                   tune_scann)
from recommenders_tf.index.candidate_store import QUERY_TOWER_DIR
from recommenders_tf.runs import make_run_dir, record_run

STORE_DIR = "candidate_store"
_STORE_VERSION = re.compile(rf"{STORE_DIR}\.v(\d+)")
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
        target_recall: ScaNN recall@k target against BruteForce.
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
    num_query_users: int = 2000
    seed: int = 0
    export_dir: str = "saved_models"
    out_dir: str = "runs/build_index"
    run_name: str = ""


class Progress:
    """Prints one timestamped line per step, so a long build shows where it is."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{self.prefix} {time.perf_counter() - self.start:7.1f}s] {message}", flush=True)


# ---- the training run ---------------------------------------------------------------------


def store_dirs(run_dir: str | Path) -> List[Tuple[int, Path]]:
    """(version, path) of every candidate store in a run folder, oldest first.

    The training run writes `candidate_store/` (version 1); each re-index adds
    `candidate_store.v<N>/`.
    """
    run_dir = Path(run_dir)
    found = []
    if (run_dir / STORE_DIR).is_dir():
        found.append((1, run_dir / STORE_DIR))
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _STORE_VERSION.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_store_dir(run_dir: str | Path) -> Path:
    """The newest candidate store of a run folder (see `store_dirs`)."""
    found = store_dirs(run_dir)
    if not found:
        raise FileNotFoundError(
            f"No candidate store in {run_dir}: expected {STORE_DIR}/ (written by "
            "pipelines.train_retrieval); pass --run-dir of a finished training run or "
            "--set store_dir=<dir>.")
    return found[-1][1]


def read_run_config(run_dir: str | Path) -> Dict[str, Any]:
    """The training run's config.yaml as a dict ({} if it has none)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def find_setting(config: Mapping[str, Any], key: str) -> Any:
    """`key` at the top of a (possibly nested) run config, else in its nested sections."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, Mapping):
            found = find_setting(value, key)
            if found is not None:
                return found
    return None


def vocab_sizes(run_dir: str | Path) -> Dict[str, int]:
    """Token counts of the run's train-only vocabularies (without OOV or mask slots)."""
    directory = Path(run_dir) / "vocab"
    if not directory.is_dir():
        return {}
    return {name: len(vocab) for name, vocab in load_vocabularies(directory).items()}


class SavedTower(tf.Module):
    """A tower SavedModel (`serving_default`: feature dict -> {"embedding"}) as a callable.

    Being a `tf.Module` that owns the loaded object, it is tracked when an export wraps it, so
    the tower's variables are saved into the export.

    Args:
        path: the tower's SavedModel folder (e.g. `candidate_store/query_tower`).

    Example:
        >>> tower = SavedTower("runs/train_retrieval/synthetic/candidate_store/query_tower")
        >>> tower({"user_id": tf.constant(["u1"]), "history": tf.constant([["i1"]])})
    """

    def __init__(self, path: str | Path):
        super().__init__(name="saved_tower")
        self.path = str(path)
        if not (Path(path) / "saved_model.pb").exists():
            raise FileNotFoundError(f"{path} is not a SavedModel folder (no saved_model.pb).")
        self.saved = tf.saved_model.load(self.path)
        if "serving_default" not in self.saved.signatures:
            raise ValueError(f"The tower saved at {path} has no serving_default signature.")
        self._fn = self.saved.signatures["serving_default"]
        self.feature_spec = {name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
                             for name, spec in self._fn.structured_input_signature[1].items()}

    def __call__(self, features: Mapping[str, Any]) -> tf.Tensor:
        missing = sorted(set(self.feature_spec) - set(features))
        if missing:
            raise KeyError(f"The tower saved at {self.path} needs features "
                           f"{sorted(self.feature_spec)}; missing {missing}.")
        inputs = {name: tf.convert_to_tensor(features[name], spec.dtype)
                  for name, spec in self.feature_spec.items()}
        return self._fn(**inputs)["embedding"]


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


def noise_queries(store: CandidateStore, count: int, seed: int) -> np.ndarray:
    """Sampled candidate embeddings plus Gaussian noise of half their per-dimension spread."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(store), count, replace=len(store) < count)
    spread = store.embeddings.std(axis=0, keepdims=True)
    noisy = store.embeddings[rows] + 0.5 * spread * rng.standard_normal(
        (count, store.embedding_dim)).astype(np.float32)
    return noisy.astype(np.float32)


def make_queries(config: BuildIndexConfig, store: CandidateStore, query_tower: Optional[SavedTower],
                 run_config: Mapping[str, Any], log: Progress) -> QuerySet:
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
            embeddings = np.concatenate(batches).astype(np.float32)
            if len(embeddings) >= 20:
                half = len(embeddings) // 2
                return QuerySet(embeddings[:half], embeddings[half:], "users",
                                f"{reason}; {half} tune, {len(embeddings) - half} measure")
            return QuerySet(embeddings, embeddings, "users",
                            f"{reason}; too few users to hold some out, so recall is "
                            "measured on the tuning queries")
    count = max(2 * min(config.num_query_users, 1000), 20)
    noise = noise_queries(store, count, config.seed)
    note = (f"FALLBACK: {reason}, so ScaNN was tuned on {count // 2} sampled candidate "
            "embeddings plus Gaussian noise, not real user queries; recall on real traffic "
            "may differ (pass --dataset to tune on users)")
    log(note)
    return QuerySet(noise[: count // 2], noise[count // 2:], "noise", note)


# ---- building and exporting ---------------------------------------------------------------


def build_and_export(config: BuildIndexConfig, store: CandidateStore, store_dir: Path,
                     query_tower: SavedTower, queries: QuerySet, log: Progress,
                     extra_metadata: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Builds BruteForce and tuned ScaNN over `store` and exports both; returns the figures."""
    from recommenders_tf.serving.export import export_retrieval

    k, width = config.k, config.exclusion_width
    min_reorder = min(k + width, len(store))
    log(f"building BruteForce over {len(store)} candidates (dim {store.embedding_dim})")
    brute = build_index("bruteforce", query_tower, store.ids, store.embeddings, k=k)
    log(f"BruteForce built in {brute.build_seconds:.2f}s; tuning ScaNN to recall@{k} >= "
        f"{config.target_recall} with >= {min_reorder} reordering candidates")
    start = time.perf_counter()
    # The target must hold on held-out queries, not only on the ones tuned on; when it does
    # not (few or unusual tuning queries), tune again with the tuning target raised halfway
    # to 1, then to 1.
    targets = [config.target_recall, 1 - (1 - config.target_recall) / 2, 1.0]
    for tuning_target in targets:
        tuned = tune_scann(store.ids, store.embeddings, queries.tune, k=k,
                           target_recall=tuning_target, seed=config.seed,
                           query_model=query_tower, min_reordering_candidates=min_reorder)
        held_out = recall_at_k_vs_exact(tuned.index, brute, queries.evaluate, k)
        log(f"ScaNN {tuned.params.to_dict()} (tuning target {tuning_target:.3f}, "
            f"{len(tuned.trials)} trials): recall@{k} {tuned.recall:.4f} on tuning queries, "
            f"{held_out:.4f} held out")
        if held_out >= config.target_recall:
            break
    else:
        # Last resort, still ScaNN: search every leaf, so only the quantised scoring before the
        # exact reordering can lose neighbours.
        params = dataclasses.replace(tuned.params, num_leaves_to_search=tuned.params.num_leaves)
        index = build_index("scann", query_tower, store.ids, store.embeddings, k=k,
                            scann_params=params)
        exhaustive = recall_at_k_vs_exact(index, brute, queries.evaluate, k)
        log(f"ScaNN searching all {params.num_leaves} leaves: recall@{k} {exhaustive:.4f} held out")
        if exhaustive > held_out:
            tuned = dataclasses.replace(tuned, params=params, index=index,
                                        note=tuned.note + " Fell back to searching every leaf.")
            held_out = exhaustive
    tuning_seconds = time.perf_counter() - start
    target_met = held_out >= config.target_recall
    log(f"ScaNN built in {tuned.build_seconds:.2f}s after {tuning_seconds:.1f}s of tuning")
    if not target_met:
        log(f"WARNING: held-out recall@{k} {held_out:.4f} < {config.target_recall}. "
            f"{tuned.note}")

    build_id = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    indexes = {
        "bruteforce": {"index": brute, "recall": 1.0, "params": None},
        "scann": {"index": tuned.index, "recall": held_out, "params": tuned.params.to_dict()},
    }
    results: Dict[str, Any] = {"build_id": build_id, "indexes": {}, "exports": {}}
    for kind in ("scann", "bruteforce"):
        entry = indexes[kind]
        index = entry["index"]
        facts = {
            "build_seconds": round(index.build_seconds, 4),
            f"recall@{k}_vs_exact": round(entry["recall"], 4),
            "params": entry["params"],
        }
        if kind == "scann":
            facts.update({f"recall@{k}_vs_exact_tuning_queries": round(tuned.recall, 4),
                          "tuning_target": tuning_target,
                          "tuning_seconds": round(tuning_seconds, 2),
                          "tuning_trials": len(tuned.trials), "target_met": target_met,
                          "tuning_note": tuned.note})
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


def load_store(config: BuildIndexConfig, log: Progress) -> Tuple[CandidateStore, Path,
                                                                 Optional[SavedTower]]:
    store_dir = Path(config.store_dir) if config.store_dir else latest_store_dir(config.run_dir)
    store = CandidateStore.load(store_dir)
    query_tower = (SavedTower(store_dir / QUERY_TOWER_DIR)
                   if (store_dir / QUERY_TOWER_DIR).is_dir() else None)
    log(f"loaded {store_dir}: {len(store)} candidates, dim {store.embedding_dim}, query tower "
        f"{'inputs ' + str(sorted(query_tower.feature_spec)) if query_tower else 'MISSING'}")
    return store, store_dir, query_tower


def run_build(config: BuildIndexConfig, store: CandidateStore, store_dir: Path,
              query_tower: Optional[SavedTower], log: Progress) -> Dict[str, Any]:
    """Queries + both indexes + both exports for one store (shared with `pipelines.reindex`)."""
    if query_tower is None:
        raise FileNotFoundError(
            f"{store_dir / QUERY_TOWER_DIR} is missing: the exports need the query tower. "
            "Save the store with CandidateStore.save(..., query_tower=...).")
    run_config = read_run_config(config.run_dir)
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
    parser = cli.make_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with BuildIndexConfig fields")
    parser.add_argument("--run-dir", help="train_retrieval run folder")
    parser.add_argument("--dataset", help="dataset spec for the tuning queries")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key in ("run_dir", "dataset"):
        if getattr(args, key):
            # Quoted, so a value stays a string through the YAML override parser.
            overrides.append(f"{key}={json.dumps(getattr(args, key))}")
    return load_config(BuildIndexConfig, args.config, overrides)


if __name__ == "__main__":
    cli.run(main, parse_args)
