"""P5 serving benchmark: every exported model through its signature, REST and gRPC.

  python -m pipelines.bench_serving                                 # trains small synthetic models first
  python -m pipelines.bench_serving --base-dir saved_models         # time existing exports
  python -m pipelines.bench_serving --base-dir saved_models --set models=[ranking] --set requests=500

For each model under the base dir (latest version of every `<name>/<int version>/` with
metadata.json; `server_config.discover_models`), with example inputs taken from the export's own
warmup file (real ids; the batch of 256 repeats its rows):

1. signature: a FRESH Python process that imports only TensorFlow (plus scann when the export
   needs ScaNN ops), loads the SavedModel the way a model server does and calls
   `serving_default`: single-request latency p50/p99 over `requests` one-row calls, and
   throughput (rows/s) of `batch_requests` calls of `batch_size` rows.
2. REST and gRPC: the loopback TF-Serving-compatible test fixture
   (`recommenders_tf.testing.local_server`, a fresh process serving every model) answers
   `RestClient` (columnar JSON) and `GrpcClient` (PredictRequest protos) calls from this
   process, timed end to end. The fixture reports the time spent inside the signature call of
   each request, so every row splits the latency into model time and transport time (HTTP/JSON
   or gRPC/protobuf encoding, the server's Python request handling, the loopback network).

TF Serving itself (C++) is not installable here, so the REST/gRPC rows measure this project's
clients against the Python fixture; its transport overhead is an upper bound for what TF
Serving's C++ front ends add. The signature rows are what any server pays for the model.

Without `--base-dir`, small models are trained on `dataset` with the project's pipelines
(train_retrieval -> build_index for the ScaNN and BruteForce exports, train_ranking for the
ranking export) under `out_dir`. Results: `benchmarks/results/serving-<dataset>-P5.json` through
the shared report writer, which re-renders BENCHMARKS.md; the run record goes to
`out_dir/<run name>/`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from recommenders_tf import cli
from recommenders_tf.config import machine_info
from recommenders_tf.serving.contract import SERVING_DEFAULT

PROTOCOL = "P5"


@dataclasses.dataclass
class BenchServingConfig:
    """Args:
        base_dir: exports to time; "" trains small models on `dataset` and exports them to
            `<out_dir>/saved_models`.
        models: only these model names (default: every model under base_dir).
        signature: the signature timed.
        dataset: dataset the models are trained on (or were, with `base_dir`); the results
            file is `serving-<dataset>-P5.json`.
        requests: timed one-row requests per model and path.
        warmup_requests: untimed calls before each measurement.
        batch_size: rows per batched request.
        batch_requests: timed batched requests per model and path.
        retrieval_epochs, ranking_epochs: training epochs of the small models.
        ranking_loss: loss of the trained ranking model.
        out_dir: work and run-record folder.
        run_name: run folder name (default: a timestamp).
        results_dir, benchmarks_md: where the P5 table goes; results_dir "" skips writing.
    """

    base_dir: str = ""
    models: Tuple[str, ...] = ()
    signature: str = SERVING_DEFAULT
    dataset: str = "synthetic"
    requests: int = 200
    warmup_requests: int = 20
    batch_size: int = 256
    batch_requests: int = 20
    retrieval_epochs: int = 2
    ranking_epochs: int = 2
    ranking_loss: str = "softmax"
    out_dir: str = "runs/bench_serving"
    run_name: str = ""
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"


# ---- exports to time -------------------------------------------------------------------------


def train_small_exports(config: BenchServingConfig, work: Path) -> Path:
    """ScaNN + BruteForce retrieval and ranking exports of small models trained on `dataset`."""
    from pipelines import build_index, train_ranking, train_retrieval
    from recommenders_tf.config import from_dict, to_dict

    export_dir = work / "saved_models"
    retrieval = train_retrieval.TrainRetrievalConfig(dataset=config.dataset,
                                                     run_dir=str(work / "train_retrieval"))
    retrieval.retrieval = from_dict(type(retrieval.retrieval), {
        **to_dict(retrieval.retrieval), "epochs": config.retrieval_epochs, "verbose": 0})
    print(f"[bench_serving] training retrieval on {config.dataset}", flush=True)
    train_retrieval.main(retrieval)
    print("[bench_serving] building and exporting the ScaNN and BruteForce indexes", flush=True)
    build_index.main(build_index.BuildIndexConfig(
        run_dir=str(work / "train_retrieval"), export_dir=str(export_dir),
        out_dir=str(work / "build_index"), num_query_users=1000))
    print(f"[bench_serving] training ranking ({config.ranking_loss})", flush=True)
    train_ranking.main(train_ranking.TrainRankingConfig(
        dataset=config.dataset, run_dir=str(work / "ranking"), export_dir=str(export_dir),
        ranking={"loss": config.ranking_loss, "epochs": config.ranking_epochs, "verbose": 0},
        data={"negatives": "easy"}))
    return export_dir


# ---- the signature in a fresh process -------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, resource, sys, time
    start = time.perf_counter()
    spec = json.load(open(sys.argv[1]))
    import numpy as np
    import tensorflow as tf
    if spec["scann"]:
        import scann  # the ScaNN ops must be registered before the graph loads
    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    fn = tf.saved_model.load(spec["path"]).signatures[spec["signature"]]
    load_seconds = time.perf_counter() - start

    def tensors(inputs):
        return {k: tf.constant(np.array(v["value"], dtype=v["dtype"]).reshape(v["shape"]))
                for k, v in inputs.items()}

    single, batch = tensors(spec["single"]), tensors(spec["batch"])
    for _ in range(spec["warmup"]):
        fn(**single)
    times = []
    for _ in range(spec["requests"]):
        t = time.perf_counter()
        out = fn(**single)
        [v.numpy() for v in out.values()]
        times.append(time.perf_counter() - t)
    for _ in range(3):
        fn(**batch)
    t = time.perf_counter()
    for _ in range(spec["batch_requests"]):
        out = fn(**batch)
        [v.numpy() for v in out.values()]
    batch_seconds = time.perf_counter() - t
    json.dump({"times": times, "batch_seconds": batch_seconds, "import_seconds": import_seconds,
               "load_seconds": load_seconds,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              open(sys.argv[2], "w"))
""")


def _encode(inputs: Dict[str, np.ndarray]) -> Dict[str, Any]:
    out = {}
    for name, value in inputs.items():
        value = np.asarray(value)
        if value.dtype == object:
            data = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value.ravel()]
            out[name] = {"value": data, "dtype": "str", "shape": list(value.shape)}
        else:
            out[name] = {"value": value.ravel().tolist(), "dtype": value.dtype.name,
                         "shape": list(value.shape)}
    return out


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def time_signature(path: Path, scann: bool, signature: str, single: Dict[str, np.ndarray],
                   batch: Dict[str, np.ndarray], config: BenchServingConfig, work: Path
                   ) -> Dict[str, Any]:
    """Runs the WORKER on one export in a fresh interpreter; returns its raw timings."""
    spec = {"path": str(path), "scann": scann, "signature": signature,
            "single": _encode(single), "batch": _encode(batch), "warmup": config.warmup_requests,
            "requests": config.requests, "batch_requests": config.batch_requests}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        (Path(tmp) / "worker.py").write_text(WORKER)
        proc = subprocess.run([sys.executable, str(Path(tmp) / "worker.py"),
                               str(Path(tmp) / "spec.json"), str(Path(tmp) / "out.json")],
                              env=_env(), capture_output=True, text=True, timeout=1800, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"signature timing of {path} failed:\n{proc.stderr[-3000:]}")
        return json.loads((Path(tmp) / "out.json").read_text())


# ---- REST and gRPC through the local test server -------------------------------------------


class ServerProcess:
    """The loopback TF-Serving test fixture in its own process (ephemeral ports)."""

    def __init__(self, base_dir: Path, models: List[str], work: Path):
        self.ready = work / f"server-ready-{os.getpid()}.json"
        self.ready.unlink(missing_ok=True)
        self.log = open(work / "local_server.log", "w")
        repo = str(Path(__file__).resolve().parents[1])
        env = _env()
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recommenders_tf.testing.local_server", "--base-dir",
             str(base_dir), "--models", ",".join(models), "--rest-port", "0", "--grpc-port",
             "0", "--ready-file", str(self.ready)], env=env, cwd=repo, stdout=self.log,
            stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"local server exited; see {work / 'local_server.log'}")
            if time.time() > deadline:
                self.stop()
                raise TimeoutError("local server did not come up in 600 s")
            time.sleep(0.2)
        self.info = json.loads(self.ready.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        self.ready.unlink(missing_ok=True)


def time_client(call, single, batch, config: BenchServingConfig, client) -> Dict[str, Any]:
    """End-to-end and server-side model times of `call(inputs)` through one client."""
    for _ in range(config.warmup_requests):
        call(single)
    times, model = [], []
    for _ in range(config.requests):
        t = time.perf_counter()
        call(single)
        times.append(time.perf_counter() - t)
        model.append(client.last_model_seconds or 0.0)
    for _ in range(3):
        call(batch)
    batch_model, start = [], time.perf_counter()
    for _ in range(config.batch_requests):
        call(batch)
        batch_model.append(client.last_model_seconds or 0.0)
    return {"times": times, "model_times": model, "batch_seconds": time.perf_counter() - start,
            "batch_model_seconds": float(sum(batch_model))}


# ---- figures ---------------------------------------------------------------------------------


def figures(raw: Dict[str, Any], config: BenchServingConfig) -> Dict[str, float]:
    ms = np.asarray(raw["times"]) * 1000.0
    out = {"latency_p50_ms": round(float(np.percentile(ms, 50)), 3),
           "latency_p99_ms": round(float(np.percentile(ms, 99)), 3),
           "qps_single": round(float(1000.0 / ms.mean()), 1),
           "qps_batch256": round(config.batch_requests * config.batch_size
                                 / raw["batch_seconds"], 1)}
    if "model_times" in raw:
        model = np.asarray(raw["model_times"]) * 1000.0
        out["model_p50_ms"] = round(float(np.percentile(model, 50)), 3)
        out["transport_p50_ms"] = round(float(np.percentile(ms - model, 50)), 3)
        out["model_share_single"] = round(float(model.sum() / ms.sum()), 4)
        out["model_share_batch256"] = round(raw["batch_model_seconds"] / raw["batch_seconds"], 4)
    return out


def _describe(inputs: Dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {list(np.asarray(v).shape[1:]) or 'scalar'}"
                     for k, v in sorted(inputs.items()))


def main(config: BenchServingConfig) -> Dict[str, Any]:
    from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
    from recommenders_tf.runs import make_run_dir, record_run
    from recommenders_tf.serving.client import GrpcClient, RestClient
    from recommenders_tf.serving.server_config import discover_models
    from recommenders_tf.serving.warmup import example_inputs

    run_dir = make_run_dir(config.out_dir, config.run_name or None).resolve()
    work = run_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    base = Path(config.base_dir) if config.base_dir else train_small_exports(config, run_dir)
    models = discover_models(base, list(config.models) or None)
    if not models:
        raise FileNotFoundError(f"No exported models under {base}")
    machine = machine_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    inputs = {}
    for model in models:
        if config.signature not in model.signatures:
            raise ValueError(f"{model.name} has no signature {config.signature!r}")
        inputs[model.name] = (
            example_inputs(model.version_dir(), config.signature, batch_size=1),
            example_inputs(model.version_dir(), config.signature, batch_size=config.batch_size))

    raw: Dict[str, Dict[str, Any]] = {}
    for model in models:
        single, batch = inputs[model.name]
        print(f"[bench_serving] {model.name} v{model.latest}: signature in a fresh process",
              flush=True)
        raw[f"{model.name}/signature"] = time_signature(
            model.version_dir(), model.requires_scann, config.signature, single, batch, config,
            work)
    print("[bench_serving] starting the local REST + gRPC test server", flush=True)
    server = ServerProcess(base.resolve(), [m.name for m in models], work)
    try:
        rest = RestClient("127.0.0.1", server.info["rest_port"], timeout=120)
        grpc_client = GrpcClient(f"127.0.0.1:{server.info['grpc_port']}", timeout=120)
        for model in models:
            single, batch = inputs[model.name]
            rest.signature(model.name, config.signature)  # metadata fetched once, untimed
            print(f"[bench_serving] {model.name}: REST and gRPC", flush=True)
            raw[f"{model.name}/rest"] = time_client(
                lambda x, m=model.name: rest.predict(m, x, signature_name=config.signature),
                single, batch, config, rest)
            raw[f"{model.name}/grpc"] = time_client(
                lambda x, m=model.name: grpc_client.predict(m, x,
                                                            signature_name=config.signature),
                single, batch, config, grpc_client)
        rest.close()
        grpc_client.close()
    finally:
        server.stop()

    rows: List[Dict[str, Any]] = []
    lines = [f"Base dir `{base}`; machine {machine['cores']} cores / {machine['memory_gb']} GB, "
             f"load average {load[0]:.2f} at start.", "",
             "| model | path | p50 ms | p99 ms | single req/s | rows/s (batch "
             f"{config.batch_size}) | model share (single / batch) |", "|---|---|---|---|---|---|---|"]
    for model in models:
        single, _ = inputs[model.name]
        sig = figures(raw[f"{model.name}/signature"], config)
        size = (f"{model.metadata['num_candidates']} candidates, k={model.metadata.get('k')}; "
                if "num_candidates" in model.metadata else "")
        base_note = (f"v{model.latest}, {'ScaNN' if model.requires_scann else 'stock'} ops; "
                     f"{size}"
                     f"{config.signature}({_describe(single)}); {config.requests} one-row "
                     f"requests, {config.batch_requests} x {config.batch_size} rows")
        worker = raw[f"{model.name}/signature"]
        rows.append({"model": f"{model.name} · signature", "kind": "project", "metrics": sig,
                     "notes": f"{base_note}; fresh process: TF import "
                              f"{worker['import_seconds']:.1f} s, load "
                              f"{worker['load_seconds']:.2f} s, peak RSS "
                              f"{worker['peak_rss_mb']:.0f} MB"})
        lines.append(f"| {model.name} | signature | {sig['latency_p50_ms']} | "
                     f"{sig['latency_p99_ms']} | {sig['qps_single']} | {sig['qps_batch256']} | "
                     "1.0 |")
        for path, label in (("rest", "REST (JSON, columnar)"), ("grpc", "gRPC (protobuf)")):
            got = figures(raw[f"{model.name}/{path}"], config)
            share = (f"model {100 * got['model_share_single']:.0f}% / transport "
                     f"{100 - 100 * got['model_share_single']:.0f}% of single-request time "
                     f"(p50 model {got['model_p50_ms']} ms + transport "
                     f"{got['transport_p50_ms']} ms); batch {config.batch_size}: model "
                     f"{100 * got['model_share_batch256']:.0f}%")
            rows.append({"model": f"{model.name} · {label}", "kind": "project",
                         "metrics": got,
                         "notes": f"{share}; local test server (Python fixture) on loopback, "
                                  "client in another process"})
            lines.append(f"| {model.name} | {path} | {got['latency_p50_ms']} | "
                         f"{got['latency_p99_ms']} | {got['qps_single']} | "
                         f"{got['qps_batch256']} | {got['model_share_single']} / "
                         f"{got['model_share_batch256']} |")
    print("\n".join(lines), flush=True)
    notes = [
        f"Machine: {machine['cores']} cores, {machine['memory_gb']} GB; load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start (other jobs may share "
        "the cores). One run; every figure of this table comes from it.",
        "signature rows: the export loaded in a fresh Python process that imports only "
        "TensorFlow (plus scann for ScaNN exports), as a model server loads it; timed around "
        "the signature call including reading its outputs. qps_single = one-row requests per "
        f"second, qps_batch256 = rows per second in {config.batch_size}-row requests; a row is "
        "one user (for ranking, one user's whole candidate list, item_ids [S] in the notes).",
        "REST / gRPC rows: end-to-end calls from this project's RestClient / GrpcClient to the "
        "loopback TF-Serving-compatible test fixture (recommenders_tf.testing.local_server, "
        "Python, its own process), NOT the C++ TF Serving, which cannot be installed here. The "
        "model share is the server-side signature time over the end-to-end time; the rest is "
        "transport (encoding, HTTP/gRPC, the fixture's Python request handling).",
        "Example inputs are each export's warmup requests (real ids); the batch repeats their "
        "rows.",
    ]
    results = {"base_dir": str(base), "models": [m.name for m in models],
               "rows": rows, "raw_summary": {k: figures(v, config) for k, v in raw.items()},
               "machine": machine, "load_average": list(load)}
    if config.results_dir:
        dataset = f"serving-{config.dataset}"
        command = "python -m pipelines.bench_serving " + " ".join(
            shlex.quote(a) for a in sys.argv[1:])
        path = write_results(Path(config.results_dir), protocol=PROTOCOL, dataset=dataset,
                             seed=0, command=command.strip(), rows=rows, notes=notes)
        render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
        results["results_file"] = str(path)
        print(f"[bench_serving] wrote {path} and {config.benchmarks_md}", flush=True)
    record_run(run_dir, config, results, lines + [""] + [f"- {n}" for n in notes])
    return results


def parse_args(argv=None) -> BenchServingConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchServingConfig)
    parser.add_argument("--base-dir", help="exports to time (default: train small ones)")
    return cli.parse_config(BenchServingConfig, parser, argv, fields=("base_dir",))


if __name__ == "__main__":
    cli.run(main, parse_args)
