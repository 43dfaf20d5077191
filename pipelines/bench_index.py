"""P5 speed and scale of the retrieval indexes and of their exports (../shared/BENCHMARK.md).

  python -m pipelines.bench_index                              # 100K and 1M items, 64 dims
  python -m pipelines.bench_index --set sizes=[100000] --set serving=false

For each catalogue size, `recommenders_tf.index.bench.benchmark_indexes` builds BruteForce and
ScaNN (tuned to recall@10 >= 0.95 against BruteForce) over a synthetic clustered catalogue and
times search on query embeddings in this process: rows `bruteforce-100k`, `scann-1m`, ... with
`build_seconds`, `qps_single`, `qps_batch256` and `recall@10_vs_exact`.

Serving (rows `bruteforce-100k-serving`, ...): both indexes are exported with
`export_retrieval` behind a small query tower (user-id table holding the synthetic query
embeddings + hashed-history mean, so served queries follow the benchmark's query distribution),
then each export is loaded in a FRESH Python process that imports only TensorFlow (and scann for
the ScaNN export), the way a model server loads it, and timed through `serving_default`:
`latency_p50_ms` / `latency_p99_ms` of one-user requests and `qps_batch256` (users per second
in 256-user requests). The ScaNN serving row also reports the export's recall@10 against the
BruteForce export on the same requests.

Writes `benchmarks/results/synthetic-catalog-P5.json` and re-renders BENCHMARKS.md from every
results file; the notes state the machine (cores, memory, load average: other jobs may share the
cores) and the ScaNN/BruteForce single-query QPS ratio against the >= 5x target at 1M.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf import cli
from recommenders_tf.config import machine_info
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.index.bench import benchmark_indexes, synthetic_catalogue
from recommenders_tf.runs import make_run_dir, record_run
from recommenders_tf.serving.contract import SERVING_DEFAULT

PROTOCOL = "P5"
TARGET_SPEEDUP = 5.0
HISTORY_LEN = 20
HISTORY_BINS = 65_536


@dataclasses.dataclass
class BenchIndexConfig:
    """Settings of the P5 index benchmark.

    Args:
        sizes: catalogue sizes (items).
        dim: embedding dim.
        n_queries: synthetic queries (half tune ScaNN, half measure).
        seed: catalogue and query seed.
        k: recall cut-off and results per query.
        target_recall: ScaNN tuning target.
        min_seconds: minimum wall time of each in-process throughput measurement.
        serving: also export both indexes and time them in fresh processes.
        serving_requests: timed single-user requests per export.
        serving_min_seconds: minimum wall time of the batched serving measurement.
        exclusion_width: W of the exports (capped by ScaNN's reordering budget minus k).
        results_dir: where `synthetic-catalog-P5.json` goes.
        benchmarks_md: the BENCHMARKS.md re-rendered from `results_dir`.
        work_dir: run record and (temporary) exports.
        keep_exports: keep the exports under `work_dir` after timing them.
        dataset: dataset name in the results file.
    """

    sizes: Tuple[int, ...] = (100_000, 1_000_000)
    dim: int = 64
    n_queries: int = 2000
    seed: int = 0
    k: int = 10
    target_recall: float = 0.95
    min_seconds: float = 3.0
    serving: bool = True
    serving_requests: int = 1000
    serving_min_seconds: float = 3.0
    exclusion_width: int = 50
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    work_dir: str = "runs/bench_index"
    keep_exports: bool = False
    dataset: str = "synthetic-catalog"


def size_label(n: int) -> str:
    """100000 -> "100k", 1000000 -> "1m", 2500 -> "2500"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def tuned_params_from_notes(notes: str) -> Optional[ScannParams]:
    """The ScaNN parameters `benchmark_indexes` reports in its row notes ("tuned: {...};")."""
    match = re.search(r"tuned: (\{[^{}]*\})", notes)
    if not match:
        return None
    try:
        return ScannParams(**ast.literal_eval(match.group(1)))
    except (ValueError, SyntaxError, TypeError):
        return None


class SyntheticQueryTower(tf.Module):
    """Query tower for the synthetic catalogue: the user-id row of a table holding the
    benchmark's query embeddings, plus a small hashed-history mean, L2-normalised.

    Args:
        queries: [U, d] query embeddings; user "user-<j>" maps to row j, unknown users to zeros.
        seed: seed of the history table.
    """

    def __init__(self, queries: np.ndarray, seed: int = 0):
        super().__init__()
        dim = queries.shape[1]
        vocab = [f"user-{j}" for j in range(len(queries))]
        self.users = tf.keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1)
        self.user_table = tf.Variable(np.concatenate([np.zeros((1, dim), np.float32), queries]),
                                      trainable=False, name="user_table")
        rng = np.random.default_rng(seed)
        self.history_table = tf.Variable(
            (0.05 * rng.standard_normal((HISTORY_BINS, dim))).astype(np.float32),
            trainable=False, name="history_table")

    def __call__(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        user = tf.gather(self.user_table, self.users(features["user_id"]))
        history = features["history"]
        buckets = tf.strings.to_hash_bucket_fast(history, HISTORY_BINS)
        mask = tf.cast(tf.not_equal(history, ""), tf.float32)[..., None]
        pooled = tf.reduce_sum(tf.gather(self.history_table, buckets) * mask, axis=1)
        pooled /= tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return tf.math.l2_normalize(user + pooled, axis=-1)


PROBE_SCRIPT = r'''
import json, resource, sys, time
spec = json.load(open(sys.argv[1]))
start = time.perf_counter()
if spec["requires_scann_ops"]:
    import scann  # noqa: F401  (registers the ScaNN ops before loading)
import numpy as np
import tensorflow as tf
import_seconds = time.perf_counter() - start
start = time.perf_counter()
serve = tf.saved_model.load(spec["path"]).signatures[spec["signature"]]
load_seconds = time.perf_counter() - start
users, histories = spec["users"], spec["histories"]

def request(rows):
    return {"user_id": tf.constant([users[r % len(users)] for r in rows]),
            "history": tf.constant([histories[r % len(users)] for r in rows])}

for r in range(20):
    serve(**request([r]))["item_ids"].numpy()
singles = [request([r]) for r in range(spec["single_requests"])]
latencies, answers = [], []
for inputs in singles:
    t = time.perf_counter()
    ids = serve(**inputs)["item_ids"].numpy()
    latencies.append(time.perf_counter() - t)
    if len(answers) < len(users):
        answers.append([b.decode() for b in ids[0]])
batches = [request(range(b * 256, b * 256 + 256)) for b in range(4)]
serve(**batches[0])["item_ids"].numpy()
done, t = 0, time.perf_counter()
while True:
    for inputs in batches:
        serve(**inputs)["item_ids"].numpy()
        done += 256
    if time.perf_counter() - t >= spec["min_seconds"]:
        break
qps = done / (time.perf_counter() - t)
ms = np.asarray(latencies) * 1000
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
peak_kb = next((int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM:")), None)
if peak_kb is None:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
json.dump({"latency_p50_ms": float(np.percentile(ms, 50)),
           "latency_p99_ms": float(np.percentile(ms, 99)),
           "qps_batch256": qps, "load_seconds": load_seconds, "import_seconds": import_seconds,
           "peak_rss_mb": peak_kb / 1024,
           "scann_imported": "scann" in sys.modules, "answers": answers},
          open(sys.argv[2], "w"))
'''


def probe_export(path: Path, requires_scann: bool, users: List[str], histories: List[List[str]],
                 config: BenchIndexConfig, work: Path) -> Dict[str, Any]:
    """Times one export's `serving_default` in a fresh interpreter; returns its figures."""
    path, work = Path(path).resolve(), Path(work).resolve()  # the probe runs in `work`
    # The probe imports no project code (its import cost is measured), so names come in here.
    spec = {"path": str(path), "signature": SERVING_DEFAULT,
            "requires_scann_ops": requires_scann, "users": users,
            "histories": histories, "single_requests": config.serving_requests,
            "min_seconds": config.serving_min_seconds}
    spec_path, out_path = work / f"probe-{path.parent.name}.json", work / "probe-out.json"
    spec_path.write_text(json.dumps(spec))
    # A clean environment as a server would have: no legacy-Keras switch, nothing preloaded.
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=3600, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"Serving probe of {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out_path.read_text())


def serving_rows(n: int, index_rows: List[Dict[str, Any]], config: BenchIndexConfig,
                 work: Path, log) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Exports both indexes of one catalogue size and times each in a fresh process."""
    from recommenders_tf.serving.export import export_retrieval

    label, k = size_label(n), config.k
    ids, items, queries = synthetic_catalogue(n, config.dim, config.n_queries, config.seed)
    held_out = queries[config.n_queries // 2:]  # the queries the index rows were measured on
    tower = SyntheticQueryTower(held_out, config.seed)
    notes = []
    scann_notes = next(r["notes"] for r in index_rows if r["model"] == "index-scann")
    params = tuned_params_from_notes(scann_notes)
    if params is None:  # the row format changed: re-tune rather than guess
        from recommenders_tf.index import tune_scann

        params = tune_scann(ids, items, queries[: config.n_queries // 2], k=k,
                            target_recall=config.target_recall, seed=config.seed).params
        notes.append(f"{label}: ScaNN parameters not found in the index row; re-tuned.")
    reorder = params.num_reordering_candidates or k
    width = max(0, min(config.exclusion_width, min(reorder, n) - k))
    export_base = work / f"exports-{label}"
    rng = np.random.default_rng(config.seed)
    users = [f"user-{j}" for j in range(len(held_out))]
    histories = [ids[rng.choice(n, HISTORY_LEN, replace=False)].tolist() for _ in users]
    results, rows = {}, []
    shutil.rmtree(export_base, ignore_errors=True)  # leftovers of an interrupted run
    try:
        for kind in ("bruteforce", "scann"):
            index = build_index(kind, tower, ids, items, k=k,
                                scann_params=params if kind == "scann" else None)
            path = export_retrieval(tower, index, base_dir=export_base, k=k,
                                    exclusion_width=width)
            size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
            del index
            log(f"{label}: exported {kind} ({size_mb:.0f} MB) -> {path}; probing in a fresh "
                f"process (load {_load()})")
            results[kind] = probe_export(path, kind == "scann", users, histories, config, work)
            results[kind]["export_mb"] = size_mb
            log(f"{label}: {kind} serving p50 {results[kind]['latency_p50_ms']:.2f} ms, p99 "
                f"{results[kind]['latency_p99_ms']:.2f} ms, {results[kind]['qps_batch256']:.0f} "
                f"users/s in batches of 256")
    finally:
        if not config.keep_exports:
            shutil.rmtree(export_base, ignore_errors=True)
    exact = results["bruteforce"]["answers"]
    approx = results["scann"]["answers"]
    export_recall = float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))
    for kind in ("bruteforce", "scann"):
        got = results[kind]
        metrics = {"latency_p50_ms": round(got["latency_p50_ms"], 3),
                   "latency_p99_ms": round(got["latency_p99_ms"], 3),
                   "qps_batch256": round(got["qps_batch256"], 1)}
        if kind == "scann":
            metrics[f"recall@{k}_vs_exact"] = round(export_recall, 4)
        rows.append({
            "model": f"{kind}-{label}-serving", "kind": "project", "metrics": metrics,
            "notes": (f"exported SavedModel ({got['export_mb']:.0f} MB) loaded in a fresh "
                      f"process in {got['load_seconds']:.1f}s after {got['import_seconds']:.1f}s "
                      f"of imports (peak RSS {got['peak_rss_mb']:.0f} MB); serving_default "
                      f"with the query tower; "
                      f"{config.serving_requests} one-user requests with {HISTORY_LEN}-item "
                      f"histories" + (f"; recall vs the BruteForce export on "
                                      f"{len(approx)} users" if kind == "scann" else "")),
        })
    return rows, notes


def main(config: BenchIndexConfig) -> Dict[str, Any]:
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[bench_index {time.perf_counter() - start:7.1f}s] {message}", flush=True)

    machine = machine_info()
    work = make_run_dir(config.work_dir, "latest")
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    ratios: Dict[int, Tuple[float, float]] = {}
    for n in sorted(config.sizes):
        label = size_label(n)
        load_before = _load()
        log(f"{label}: building and timing BruteForce and ScaNN over {n} x {config.dim} "
            f"(load average {load_before})")
        index_rows = benchmark_indexes(n, config.dim, config.n_queries, config.seed,
                                       k=config.k, target_recall=config.target_recall,
                                       min_seconds=config.min_seconds)
        by_kind = {r["model"].removeprefix("index-"): r for r in index_rows}
        for kind in ("bruteforce", "scann"):
            row = by_kind[kind]
            rows.append({**row, "model": f"{kind}-{label}"})
            log(f"{label}: {kind} {row['metrics']}")
        brute, scann = by_kind["bruteforce"]["metrics"], by_kind["scann"]["metrics"]
        ratio = scann["qps_single"] / brute["qps_single"]
        recall = scann[f"recall@{config.k}_vs_exact"]
        ratios[n] = (ratio, recall)
        notes.append(f"{label}: ScaNN/BruteForce single-query QPS ratio {ratio:.1f}x "
                     f"(batch-256 {scann['qps_batch256'] / brute['qps_batch256']:.1f}x) at "
                     f"recall@{config.k} {recall:.3f}; load average {load_before} before, "
                     f"{_load()} after the index runs.")
        if config.serving:
            serve_rows, serve_notes = serving_rows(n, index_rows, config, work, log)
            rows.extend(serve_rows)
            notes.extend(serve_notes)
        del index_rows

    if 1_000_000 in ratios:
        ratio, recall = ratios[1_000_000]
        met = ratio >= TARGET_SPEEDUP and recall >= config.target_recall
        notes.insert(0, (f"Target at 1M (ScaNN >= {TARGET_SPEEDUP:.0f}x BruteForce single-query "
                         f"QPS at recall@{config.k} >= {config.target_recall}): "
                         f"{'MET' if met else 'NOT MET'} ({ratio:.1f}x at recall {recall:.3f})."))
    else:
        notes.insert(0, f"Target at 1M not assessed: sizes run were {list(config.sizes)}.")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    notes.append(
        f"Machine: {machine['cores']} cores, {machine['memory_gb']} GB, shared with other jobs "
        f"(load average {_load()} at the end), so absolute timings are noisy; ratios come from "
        f"the same run. Benchmark process peak RSS {peak_mb:.0f} MB. Index rows time the "
        "search on query embeddings in-process; serving rows time the exported "
        "serving_default (query tower + index) in a fresh process.")
    command = "python -m pipelines.bench_index" + (
        " " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "")
    path = write_results(Path(config.results_dir), protocol=PROTOCOL, dataset=config.dataset,
                         seed=config.seed, command=command, rows=rows, notes=notes)
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    log(f"wrote {path} and {config.benchmarks_md}")
    results = {"results_file": str(path), "rows": rows, "notes": notes,
               "seconds": round(time.perf_counter() - start, 1)}
    record_run(work, config, results, [f"- {note}" for note in notes])
    return results


def parse_args(argv=None) -> BenchIndexConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchIndexConfig)
    return cli.parse_config(BenchIndexConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
