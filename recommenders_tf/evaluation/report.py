"""Benchmark results files and the BENCHMARKS.md tables rendered from them.

Each benchmark run writes `benchmarks/results/<dataset>-<protocol>.json` in the format of
../shared/BENCHMARK.md. BENCHMARKS.md is regenerated from *all* results files, so a run of one
protocol refreshes its own table without clobbering the others.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from recommenders_tf.config import atomic_write_text, machine_info, today, write_json

METRIC_ORDER = [
    "recall@10", "recall@50", "ndcg@10", "hr@10", "mrr@10",
    "coverage@10", "diversity@10", "novelty@10", "rmse", "mae",
    "build_seconds", "qps_single", "qps_batch256", "recall@10_vs_exact",
    "latency_p50_ms", "latency_p99_ms", "examples_per_second",
]
PROTOCOL_TITLES = {
    "P1": "P1 — top-K recommendation (implicit feedback, per-user temporal split)",
    "P1-rerank": "P1 re-ranking — each ranking loss re-scores the two-tower top 100",
    "P1-rerank-implicit-ALS": "P1 re-ranking — each ranking loss re-scores the implicit-ALS top 100",
    "P1-cascade": "P1 — the multi-stage cascade, stage by stage, with peers from the same run",
    "P1-cascade-losses": "P1 — each ranking loss as the cascade's ranker, behind the same retrieval",
    "P1-cascade-ablations": "P1 — what each part of the ranking stages is worth (ablations "
                            "behind the same retrieval)",
    "P1-blend": "P1 — how far re-weighting the two-tower's score against a peer's score goes "
                "(no ranker)",
    "P1-diversity": "P1 — accuracy-diversity trade-off of the full cascade over lambda",
    "P2": "P2 — rating prediction",
    "P3": "P3 — cold-start items",
    "P4": "P4 — sparsity buckets",
    "P5": "P5 — speed and scale",
    "P5-cascade": "P5 — latency of one recommend call through the exported cascade",
    "P5-exclusions": "P5 — cost of excluding W ids in recommend_with_exclusions",
    "P5-scale": "P5 — the whole cascade at one data size: time and memory per stage",
    "P5-scale-growth": "P5 — how each stage's time and memory grow with the data",
    "P5-scale-workers": "P5 — retrieval training on one and on two workers (one machine)",
}


def round_metrics(metrics: Dict[str, Any], digits: int = 5) -> Dict[str, Any]:
    """A row's metrics as results files hold them: floats rounded, other values as they are,
    without the evaluator's `n_users` count."""
    return {k: (round(float(v), digits) if isinstance(v, (float, np.floating)) else v)
            for k, v in metrics.items() if k != "n_users"}


def results_path(results_dir: Path, dataset: str, protocol: str) -> Path:
    return Path(results_dir) / f"{dataset}-{protocol}.json"


def write_results(results_dir: Path, *, protocol: str, dataset: str, seed: int, command: str,
                  rows: List[Dict[str, Any]], split: Optional[Dict[str, Any]] = None,
                  notes: Optional[List[str]] = None,
                  columns: Optional[List[str]] = None) -> Path:
    """Writes one results file; `rows` are {"model", "kind", "metrics", "train_seconds", ...}.
    `columns`: the metric keys its table shows, in order (default: the known headline metrics
    the rows have)."""
    for row in rows:
        for key in ("model", "kind", "metrics"):
            if key not in row:
                raise ValueError(f"benchmark row {row!r} lacks {key!r}")
        for name in row["metrics"]:
            if name != name.lower():
                raise ValueError(f"metric keys are lower case, got {name!r}")
    payload = {
        "protocol": protocol, "dataset": dataset, "seed": seed, "command": command,
        "machine": {k: v for k, v in machine_info().items() if k in ("cores", "memory_gb")},
        "date": today(), "rows": rows,
    }
    if split:
        payload["split"] = split
    if notes:
        payload["notes"] = notes
    if columns:
        payload["columns"] = list(columns)
    path = results_path(results_dir, dataset, protocol)
    write_json(path, payload)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def render_table(payload: Dict[str, Any]) -> str:
    rows = payload["rows"]
    # The table shows the protocol's headline metrics; the JSON file keeps every metric.
    present = {key for row in rows for key in row["metrics"]}
    metric_keys = [k for k in payload.get("columns", METRIC_ORDER) if k in present]
    has_bucket = any("bucket" in r for r in rows)
    has_seconds = any(r.get("train_seconds") is not None for r in rows)
    header = ["model", "kind"] + (["bucket", "users"] if has_bucket else []) + metric_keys
    if has_seconds:
        header.append("train s")
    header.append("notes")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"**{row['model']}**" if row["kind"] == "project" else row["model"], row["kind"]]
        if has_bucket:
            cells += [row.get("bucket", "all"), _fmt(row.get("n_users"))]
        cells += [_fmt(row["metrics"].get(k)) for k in metric_keys]
        if has_seconds:
            cells.append(_fmt(row.get("train_seconds")))
        cells.append(str(row.get("notes", "")).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_benchmarks_md(results_dir: Path, out_path: Path, preamble: str = "") -> str:
    files = sorted(Path(results_dir).glob("*.json"))
    payloads = [json.loads(p.read_text()) for p in files]
    order = {p: i for i, p in enumerate(PROTOCOL_TITLES)}
    payloads.sort(key=lambda p: (order.get(p["protocol"], 99), p["dataset"]))
    out = ["# Benchmarks", "",
           "Generated by the benchmark pipelines (`python -m pipelines.benchmark`, `pipelines.bench_index`, `pipelines.bench_ranking`) from `benchmarks/results/*.json`; "
           "protocols as defined in ../shared/BENCHMARK.md. Every table below comes from one run, "
           "with all of its peers trained and evaluated in that same run. Do not edit by hand.", ""]
    if preamble:
        out += [preamble, ""]
    for p in payloads:
        out.append(f"## {PROTOCOL_TITLES.get(p['protocol'], p['protocol'])} — `{p['dataset']}`")
        out.append("")
        m = p.get("machine", {})
        out.append(f"Command: `{p['command']}`  ")
        out.append(f"Date {p['date']}, seed {p['seed']}, machine {m.get('cores')} cores / "
                   f"{m.get('memory_gb')} GB.")
        if p.get("split"):
            s = p["split"]
            out.append("Split: " + ", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, dict)) + ".")
        out.append("")
        out.append(render_table(p))
        for note in p.get("notes", []):
            out.append("")
            out.append(f"- {note}")
        out.append("")
    text = "\n".join(out)
    atomic_write_text(out_path, text)
    return text
