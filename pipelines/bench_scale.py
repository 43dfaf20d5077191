"""P5 scale ladder: the whole cascade's time and memory per stage at growing data sizes.

  python -m pipelines.bench_scale                        # synthetic 100k, 1m and 10m
  python -m pipelines.bench_scale --set sizes=[100k,1m]

Each size is the `synthetic-<size>` preset (about 25 interactions per user and 50 per item,
see `recommenders_tf.data.synthetic.SCALE_PRESETS`), run in its own process so that one
size's memory does not carry into the next. In that process: `pipelines.run_all` (P1 split,
item text vectors, retrieval with epoch selection, ranker lists, ranker training with
cross-fitting, re-ranker, P1 evaluation, diversity curves, both cascade exports), each stage's
wall seconds and peak resident memory measured by `recommenders_tf.resources.StageMeter`; the
peers most-popular and implicit-ALS (`pipelines.benchmark`, P1 on the same split) measured the
same way, each in a process of its own; and the exported ScaNN cascade's latency for one user
per request, in a fresh process. Results go to `benchmarks/results/scale-<size>.json`; the
growth of every stage (the slope of log seconds and log memory against log interactions) to
`benchmarks/results/scale-growth.json` with a log-log plot `benchmarks/scale.png`, and all
of them into BENCHMARKS.md.

  python -m pipelines.bench_scale --set sizes=[] --set workers_datasets=[synthetic-100k]

adds the P5-scale-workers rows: `pipelines.train_retrieval` on one worker and on two
MultiWorkerMirroredStrategy worker processes of this machine (`run_workers`), wall time,
examples per second and P1 quality of each.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from recommenders_tf import cli

SIZES = ("100k", "1m", "10m")
PEERS = ("most-popular", "implicit-ALS")


@dataclasses.dataclass
class BenchScaleConfig:
    """Args:
      sizes: synthetic scale presets to run, smallest first.
      isolate: run each size in its own process (peak memory of that size alone).
      seed: split seed.
      peers: peers run beside the cascade at each size (`pipelines.benchmark` names).
      latency_users: users timed through the exported ScaNN cascade.
      use_text: item text vectors from the pretrained LM (as `run_all`).
      results_dir, benchmarks_md, plot: where results JSON, tables and the plot go.
      out_dir: run folders (`<out_dir>/<size>`), default runs/bench_scale.
      workers_datasets: datasets on which `pipelines.train_retrieval` is also run on one
        worker and on two MultiWorkerMirroredStrategy workers (two local processes), for the
        P5-scale-workers rows (e.g. [synthetic-100k]); empty: none.
      workers_flags: extra flags of those train_retrieval runs (both worker counts).
      peer: set by `run_size` for the child process that runs one peer (`run_peer`) at
        `sizes`; empty: the ladder.
    """

    sizes: Tuple[str, ...] = SIZES
    isolate: bool = True
    seed: int = 0
    peers: Tuple[str, ...] = PEERS
    latency_users: int = 100
    use_text: bool = True
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    plot: str = "benchmarks/scale.png"
    out_dir: str = "runs/bench_scale"
    workers_datasets: Tuple[str, ...] = ()
    workers_flags: Tuple[str, ...] = ()
    peer: str = ""


def run_note(interactions: int, run_seconds: float,
             examples_per_second: Optional[float]) -> str:
    """The results' first note. A run folder whose retrieval fits were finished resumes them
    without training an epoch, so it has no throughput to report (None)."""
    throughput = ("retrieval resumed from finished fits, no training epoch in this run"
                  if examples_per_second is None
                  else f"retrieval training {examples_per_second:.0f} examples/s")
    return (f"{interactions} interactions; run_all {run_seconds:.0f} s in all, {throughput}. "
            "Stage rows: wall seconds and peak resident memory during that stage (the kernel's "
            "high-water mark, reset at each stage's start). Each peer runs in a process of its "
            "own after run_all: its peak is that process's.")


def run_size(config: BenchScaleConfig, size: str) -> Path:
    """One size in this process; returns its results file."""
    import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
    from pipelines import run_all
    from recommenders_tf.evaluation.report import round_metrics, write_results
    from recommenders_tf.serving.latency import measure_latency, recommend_requests

    dataset = f"synthetic-{size}"
    out = Path(config.out_dir) / size
    export_dir = out / "saved_models"
    print(f"[bench_scale] {dataset}: run_all", flush=True)
    start = time.perf_counter()
    result = run_all.main(run_all.RunAllConfig(
        dataset=dataset, out_dir=str(out / "run_all"), export_dir=str(export_dir),
        use_text=config.use_text, export_retrieval=False, seed=config.seed))
    run_seconds = time.perf_counter() - start
    metrics, split, cascade = result["metrics"], result["split"], result["cascade"]
    interactions = next(r["interactions"] for r in metrics["cost"] if r["stage"] == "data")
    report = metrics["cascade_report"]

    rows: List[Dict[str, Any]] = []
    for cost in metrics["cost"]:
        # Sizes the stage worked on (interactions, users, lists, ...) beside its cost.
        facts = {k: v for k, v in cost.items() if isinstance(v, (int, float))
                 and k not in ("seconds", "peak_rss_mb")}
        if cost["stage"] == "retrieval training":
            facts["examples_per_second"] = report["retrieval"]["examples_per_second"]
        rows.append({"model": cost["stage"], "kind": "stage",
                     "metrics": {"seconds": cost["seconds"], "peak_rss_mb": cost["peak_rss_mb"],
                                 **facts},
                     "notes": ", ".join(f"{k} {v}" for k, v in cost.items()
                                        if k not in ("stage", "seconds", "peak_rss_mb"))})
    for stage, label in (("retrieval", "two-tower (retrieval alone)"),
                         ("ranking", "retrieval + ranking"), ("final", "full cascade")):
        rows.append({"model": label, "kind": "project",
                     "metrics": round_metrics({k: metrics["stages"][stage][k]
                                               for k in ("ndcg@10", "recall@10")})})

    # The peers are evaluated on run_all's test users: the same split and seed, and the cap of
    # the run_all call above (its default), draw the same sample; the tuned peers' validation
    # gets the same cap. Each runs in a process of its own, so its peak memory is its own and
    # not on top of the fitted cascade this one holds.
    for peer in config.peers:
        peer_result = _peer_in_process(config, size, peer)
        peer_rows, peer_users = peer_result["rows"], peer_result["evaluation_users"]
        ours = metrics["evaluation_users"]
        users_note = (f"{peer_users['sampled']} of {peer_users['of']} test users (seed "
                      f"{peer_users['seed']})" + (", the cascade's" if peer_users == ours else
                                                  f"; the cascade on {ours['sampled']} of "
                                                  f"{ours['of']}"))
        cost = peer_result["cost"]
        for row in peer_rows:
            rows.append({"model": row["model"], "kind": "peer",
                         "metrics": {"seconds": cost["seconds"],
                                     "peak_rss_mb": cost["peak_rss_mb"],
                                     **{k: row["metrics"][k] for k in ("ndcg@10", "recall@10")}},
                         "notes": f"fit (validation-tuned) and P1 evaluation on {users_note}, "
                                  "in a process of its own"})

    users, hist, exclude = recommend_requests(split.train, split.test, cascade.histories_for,
                                              config.latency_users, config.seed)
    width = len(exclude[0])
    for key, facts in metrics["exports"].items():
        lat = measure_latency(Path(facts["path"]), users, hist, exclude)
        size_mb = sum(f.stat().st_size for f in Path(facts["path"]).rglob("*")
                      if f.is_file()) / 2 ** 20
        rows.append({"model": key.replace("cascade_", "recommender "), "kind": "latency",
                     "metrics": round_metrics({k: lat[k] for k in (
                         "latency_p50_ms", "latency_p99_ms")}),
                     "notes": f"export {size_mb:.1f} MB, load {lat['load_seconds']:.1f} s, "
                              f"{lat['requests']} single-user requests, {width} exclusion ids"})

    command = f"python -m pipelines.bench_scale --set sizes=[{size}]"
    payload_path = write_results(
        Path(config.results_dir), protocol="P5-scale", dataset=dataset, seed=config.seed,
        command=command, rows=rows, columns=["seconds", "peak_rss_mb", "examples_per_second",
                                             "ndcg@10", "recall@10", "latency_p50_ms",
                                             "latency_p99_ms"],
        split={f"{k} rows": v["rows"] for k, v in split.manifest()["parts"].items()},
        notes=[run_note(interactions, run_seconds, report["retrieval"]["examples_per_second"])])
    named = Path(config.results_dir) / f"scale-{size}.json"
    payload_path.replace(named)
    return named



def run_workers(config: BenchScaleConfig, dataset: str, timeout: float = 4 * 3600) -> Path:
    """`pipelines.train_retrieval` (epoch selection, refit, P1 test) on one worker and on two
    MultiWorkerMirroredStrategy workers on this machine; returns the results file.

    Both runs use the same global batch (`retrieval.batch_size`; two workers take half each),
    so the rows show what the all-reduce costs and that the quality holds, not a speed-up:
    two workers on the same cores share them."""
    from recommenders_tf.evaluation.report import round_metrics, write_results
    from recommenders_tf.models.distribute import local_ports

    base = Path(config.out_dir) / "workers" / dataset
    rows: List[Dict[str, Any]] = []
    for n in (1, 2):
        run_dir = base / f"{n}-worker"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh measurement, not a resumed run
        args = [sys.executable, "-m", "pipelines.train_retrieval", "--dataset", dataset,
                "--run-dir", str(run_dir), "--strategy",
                "default" if n == 1 else "multi_worker", *config.workers_flags]
        envs = [dict(os.environ)]
        if n > 1:
            hosts = [f"127.0.0.1:{p}" for p in local_ports(n)]
            envs = [dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}))
                for i in range(n)]
        print(f"[bench_scale] {dataset}: train_retrieval on {n} worker(s)", flush=True)
        start = time.perf_counter()
        procs = [subprocess.Popen(args, env=env) for env in envs]
        try:
            codes = [p.wait(timeout=timeout) for p in procs]
        finally:
            for p in procs:  # one failed worker leaves the other waiting on its all-reduce
                if p.poll() is None:
                    p.kill()
        seconds = time.perf_counter() - start
        if any(codes):
            raise RuntimeError(f"train_retrieval on {n} worker(s) failed (exit codes {codes})")
        m = json.loads((run_dir / "metrics.json").read_text())
        rows.append({"model": f"retrieval training, {n} worker{'s' if n > 1 else ''}",
                     "kind": "workers",
                     "metrics": round_metrics({
                         "seconds": seconds,
                         "examples_per_second": m["training"]["examples_per_second"] or 0.0,
                         "ndcg@10": m["test"]["ndcg@10"], "recall@10": m["test"]["recall@10"]}),
                     "notes": f"epochs chosen {m['validation']['best_epoch']} of "
                              f"{m['validation']['epochs_tried']} tried; workers "
                              f"{m['training']['workers']}; wall seconds of the whole command"})
    one, two = rows[0]["metrics"], rows[1]["metrics"]
    notes = [f"Two workers took {two['seconds'] / one['seconds']:.2f}x the wall time of one "
             f"and trained at {two['examples_per_second'] / max(one['examples_per_second'], 1):.2f}"
             f"x its examples per second (same global batch, same 2 cores: the difference is "
             f"the all-reduce and the second process), P1 NDCG@10 {two['ndcg@10']:.4f} vs "
             f"{one['ndcg@10']:.4f}."]
    path = write_results(Path(config.results_dir), protocol="P5-scale-workers", dataset=dataset,
                         seed=config.seed, command="python -m pipelines.bench_scale --set "
                         f"sizes=[] --set workers_datasets=[{dataset}]", rows=rows,
                         columns=["seconds", "examples_per_second", "ndcg@10", "recall@10"],
                         notes=notes)
    return path


def growth(payloads: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per stage: seconds and peak MB at each size and the least-squares slope of log cost
    against log interactions (1 = linear)."""
    sizes = sorted(payloads, key=lambda p: p["interactions"])
    n = np.array([p["interactions"] for p in sizes], float)
    stages = [r["model"] for r in sizes[-1]["rows"] if r["kind"] in ("stage", "peer")]
    rows = []
    for stage in dict.fromkeys(stages):
        found = [next((r for r in p["rows"] if r["model"] == stage
                       and r["kind"] in ("stage", "peer")), None) for p in sizes]
        metrics: Dict[str, Any] = {}
        for p, r in zip(sizes, found):
            if r is not None:
                metrics[f"seconds_{p['size']}"] = r["metrics"]["seconds"]
                metrics[f"peak_mb_{p['size']}"] = r["metrics"]["peak_rss_mb"]
        have = [i for i, r in enumerate(found) if r is not None]
        for key, name in (("seconds", "time_exponent"), ("peak_rss_mb", "memory_exponent")):
            if len(have) >= 2:
                y = np.array([max(found[i]["metrics"][key], 1e-3) for i in have])
                metrics[name] = round(float(np.polyfit(np.log(n[have]), np.log(y), 1)[0]), 2)
        rows.append({"model": stage, "kind": found[have[-1]]["kind"], "metrics": metrics})
    return rows


def growth_columns(payloads: List[Dict[str, Any]]) -> List[str]:
    sizes = [p["size"] for p in sorted(payloads, key=lambda p: p["interactions"])]
    return ([f"seconds_{s}" for s in sizes] + ["time_exponent"]
            + [f"peak_mb_{s}" for s in sizes] + ["memory_exponent"])


def plot_growth(payloads: List[Dict[str, Any]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(payloads, key=lambda p: p["interactions"])
    n = [p["interactions"] for p in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    kinds = {r["model"]: r["kind"] for r in sizes[-1]["rows"] if r["kind"] in ("stage", "peer")}
    # More series than a default colour cycle: tab20 keeps each one distinct, peers dashed.
    colours = plt.get_cmap("tab20")
    for j, stage in enumerate(kinds):
        style = {"color": colours(j % 20), "ls": "--" if kinds[stage] == "peer" else "-"}
        for ax, key in zip(axes, ("seconds", "peak_rss_mb")):
            xs, ys = [], []
            for x, p in zip(n, sizes):
                r = next((r for r in p["rows"] if r["model"] == stage
                          and r["kind"] in ("stage", "peer")), None)
                if r is not None:
                    xs.append(x)
                    ys.append(max(r["metrics"][key], 1e-2))
            ax.plot(xs, ys, marker="o", label=stage if kinds[stage] == "stage"
                    else f"{stage} (peer)", **style)
    if len(n) > 1:
        # Reference: a stage on this line grows exactly linearly in interactions.
        ref = np.array([n[0], n[-1]], float)
        axes[0].plot(ref, ref / ref[0], "k--", lw=0.8, label="linear (from 1 s)")
    for ax, label in zip(axes, ("wall seconds", "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle("Cascade stages and peers against data size (synthetic presets)")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _load(results_dir: Path) -> List[Dict[str, Any]]:
    payloads = []
    for path in sorted(results_dir.glob("scale-*.json")):
        if path.name == "scale-growth.json":
            continue
        payload = json.loads(path.read_text())
        payload["size"] = path.stem[len("scale-"):]
        data = next(r for r in payload["rows"] if r["model"] == "data")
        payload["interactions"] = int(data["metrics"]["interactions"])
        payloads.append(payload)
    return payloads


def _peer_file(config: BenchScaleConfig, size: str, peer: str) -> Path:
    # Not in the peers' results folder: every benchmark run renders the JSON files there.
    return Path(config.out_dir) / size / "peer_costs" / f"{peer}.json"


def run_peer(config: BenchScaleConfig, size: str, peer: str) -> Path:
    """One peer at one size in this process (`pipelines.benchmark`, P1): its rows, evaluation
    users and cost (seconds, peak resident memory) into `_peer_file`."""
    import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
    from pipelines import benchmark, run_all
    from recommenders_tf.resources import StageMeter

    out = Path(config.out_dir) / size / "peers"
    out.mkdir(parents=True, exist_ok=True)
    meter = StageMeter()
    with meter.stage(peer):
        result = benchmark.main(benchmark.BenchmarkConfig(
            dataset=f"synthetic-{size}", protocol="P1", models=(peer,), seed=config.seed,
            results_dir=str(out), benchmarks_md=str(out / "B.md"), run_dir=str(out),
            max_eval_users=run_all.RunAllConfig().max_eval_users))
    path = _peer_file(config, size, peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": result["rows"],
                                "evaluation_users": result["evaluation_users"],
                                "cost": meter.rows[-1]}, default=str))
    return path


def _peer_in_process(config: BenchScaleConfig, size: str, peer: str) -> Dict[str, Any]:
    """`run_peer` in a child process; its results."""
    path = _peer_file(config, size, peer)
    path.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pipelines.bench_scale", "--set", "isolate=false",
            "--set", f"sizes=[{size}]", "--set", f"seed={config.seed}",
            "--set", f"out_dir={config.out_dir}", "--set", f"peer={peer}"]
    proc = subprocess.run(args)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"bench_scale peer {peer} at {size} failed (exit {proc.returncode})")
    return json.loads(path.read_text())


def main(config: BenchScaleConfig) -> Dict[str, Any]:
    from recommenders_tf.evaluation.report import render_benchmarks_md, write_results

    unknown = sorted(set(config.sizes) - set(SIZES))
    if unknown:
        raise ValueError(f"sizes must be among {SIZES}, got {unknown}")
    if config.peer:
        return {"peer_files": [str(run_peer(config, size, config.peer))
                               for size in config.sizes]}
    results_dir = Path(config.results_dir)
    files = []
    for size in config.sizes:
        if not config.isolate:
            files.append(run_size(config, size))
            continue
        args = [sys.executable, "-m", "pipelines.bench_scale", "--set", "isolate=false",
                "--set", f"sizes=[{size}]", "--set", f"seed={config.seed}",
                "--set", f"latency_users={config.latency_users}",
                "--set", f"use_text={str(config.use_text).lower()}",
                "--set", f"results_dir={config.results_dir}",
                "--set", f"out_dir={config.out_dir}",
                "--set", f"peers=[{','.join(config.peers)}]",
                "--set", f"benchmarks_md={config.benchmarks_md}",
                "--set", f"plot={config.plot}"]
        proc = subprocess.run(args)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_scale at {size} failed (exit {proc.returncode})")
        files.append(results_dir / f"scale-{size}.json")
    for dataset in config.workers_datasets:
        files.append(run_workers(config, dataset))
    payloads = _load(results_dir)
    out: Dict[str, Any] = {"results_files": [str(f) for f in files]}
    if len(payloads) >= 2:
        plot = plot_growth(payloads, Path(config.plot))
        ladder = ", ".join(f"{p['size']} ({p['interactions']:,} interactions)"
                           for p in sorted(payloads, key=lambda p: p["interactions"]))
        path = write_results(
            results_dir, protocol="P5-scale-growth", dataset="synthetic", seed=config.seed,
            command="python -m pipelines.bench_scale", rows=growth(payloads),
            columns=growth_columns(payloads),
            notes=[f"Sizes: {ladder}. time_exponent / memory_exponent: least-squares slope of "
                   "log seconds / log peak MB against log interactions (1 = linear).",
                   f"![time and memory against interactions]({plot.as_posix()})"])
        growth_path = results_dir / "scale-growth.json"
        path.replace(growth_path)
        out["growth"] = str(growth_path)
        out["plot"] = str(plot)
    render_benchmarks_md(results_dir, Path(config.benchmarks_md))
    return out


def parse_args(argv=None) -> BenchScaleConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchScaleConfig)
    return cli.parse_config(BenchScaleConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
