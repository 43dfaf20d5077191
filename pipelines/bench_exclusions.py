"""P5: what excluding W ids costs in the exported retrieval signature (BruteForce and ScaNN).

For each catalogue (the MovieLens 100K items when the data is present, and a synthetic
catalogue of 100K items), a query tower and candidate embeddings (seeded, untrained: latency
does not depend on the weights) are exported with both indexes. Each export is loaded in a
fresh process and `recommend_with_exclusions` is timed for one user at a time with W = 50, 500
and 2,000 excluded ids (drawn from the catalogue; where the catalogue is smaller than W + k,
all but k items plus unknown ids, which the signature ignores). Results go to
`benchmarks/results/<catalogue>-P5-exclusions.json` and BENCHMARKS.md; the target is that
2,000 exclusions cost at most 2x the time of 50.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf import cli
from recommenders_tf.evaluation.report import render_benchmarks_md, write_results
from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.models.towers import (TowerConfig, build_candidate_tower,
                                           build_item_id_embedding, build_query_tower)
from recommenders_tf.serving.contract import WITH_EXCLUSIONS
from recommenders_tf.serving.export import export_retrieval


@dataclasses.dataclass
class BenchExclusionsConfig:
    """Args:
      catalogues: "ml-100k" (its item ids; skipped when the data is absent) and/or
        "synthetic-<n>" (n synthetic item ids).
      widths: exclusion widths W timed.
      requests: single-user requests timed per (export, W), after one warm-up call.
      k: results per request.
      history_len: history ids per request (the query tower reads this many).
      scann_budget: ScaNN reordering candidates beyond k (exclusions absorbed by the
        approximate pass; more get an exact pass over the catalogue).
      results_dir: where the JSON results go (BENCHMARKS.md is rendered beside it).
      seed: towers, embeddings and sampled ids.
    """

    catalogues: Tuple[str, ...] = ("ml-100k", "synthetic-100000")
    widths: Tuple[int, ...] = (50, 500, 2000)
    requests: int = 200
    k: int = 10
    history_len: int = 50
    scann_budget: int = 100
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    seed: int = 0


_TIMING = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    args = json.loads(sys.stdin.read())
    if args["scann"]:
        import scann
    fn = tf.saved_model.load(args["path"]).signatures[args["signature"]]
    out = {}
    for width, rows in args["exclude"].items():
        times = []
        for i, (user, hist, excl) in enumerate(zip(args["users"], args["history"], rows)):
            feed = dict(user_id=tf.constant([user]), history=tf.constant([hist]),
                        exclude_item_ids=tf.constant([excl]))
            t = time.perf_counter()
            res = fn(**feed)
            ids = res["item_ids"].numpy()
            if i:
                times.append(time.perf_counter() - t)
            assert not set(ids[0].tolist()) & set(e.encode() for e in excl)
            assert (ids != b"").all(), "an empty slot"
        ms = np.array(times) * 1000
        out[width] = {"latency_p50_ms": float(np.percentile(ms, 50)),
                      "latency_p99_ms": float(np.percentile(ms, 99)), "requests": len(ms)}
    print(json.dumps(out))
""")


def _catalogue(name: str) -> List[str]:
    if name == "ml-100k":
        from recommenders_tf.data import load_dataset

        return sorted(load_dataset("ml-100k").items["item_id"].astype(str).unique())
    if name.startswith("synthetic-"):
        return [f"item{i}" for i in range(int(name.split("-", 1)[1]))]
    raise ValueError(f"unknown catalogue {name!r}: 'ml-100k' or 'synthetic-<n>'")


def _exclusions(items: List[str], width: int, k: int, rng) -> List[str]:
    take = min(width, len(items) - k)
    chosen = [items[j] for j in rng.choice(len(items), size=take, replace=False)]
    return chosen + [f"not-in-catalogue-{j}" for j in range(width - take)]


def bench_catalogue(name: str, config: BenchExclusionsConfig, work: Path) -> List[Dict]:
    tf.keras.utils.set_random_seed(config.seed)
    items = _catalogue(name)
    users = [f"user{i}" for i in range(1000)]
    towers = TowerConfig(embedding_dim=64, history_len=config.history_len, hidden_dims=())
    table = build_item_id_embedding(towers, items)
    query = build_query_tower(towers, users, item_id_embedding=table)
    candidate = build_candidate_tower(towers, item_id_embedding=table)
    embeddings = np.concatenate([candidate({"item_id": tf.constant(items[s:s + 8192])}).numpy()
                                 for s in range(0, len(items), 8192)])
    n = len(items)
    leaves = max(1, int(np.sqrt(n)))
    scann_params = ScannParams(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10),
                               num_reordering_candidates=min(n, config.k + config.scann_budget))
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(users), size=config.requests, replace=False)
    req_users = [users[j] for j in picked]
    history = [[items[j] for j in rng.choice(n, size=config.history_len, replace=False)]
               for _ in picked]
    exclude = {str(w): [_exclusions(items, w, config.k, rng) for _ in picked]
               for w in config.widths}
    rows = []
    for kind in ("bruteforce", "scann"):
        index = build_index(kind, query, items, embeddings, k=config.k,
                            scann_params=scann_params if kind == "scann" else None)
        path = export_retrieval(query, index, work, name=f"{kind}_{n}", k=config.k,
                                exclusion_width=50)
        payload = json.dumps({"path": str(path), "signature": WITH_EXCLUSIONS,
                              "scann": kind == "scann", "users": req_users,
                              "history": history, "exclude": exclude})
        proc = subprocess.run([sys.executable, "-c", _TIMING], input=payload, text=True,
                              capture_output=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"timing {path} failed:\n{proc.stderr[-3000:]}")
        timed = json.loads(proc.stdout.strip().splitlines()[-1])
        base = timed[str(config.widths[0])]["latency_p50_ms"]
        for width in config.widths:
            t = timed[str(width)]
            rows.append({"model": f"retrieval {kind} W={width}", "kind": "project",
                         "metrics": {"latency_p50_ms": round(t["latency_p50_ms"], 3),
                                     "latency_p99_ms": round(t["latency_p99_ms"], 3)},
                         "exclusion_width": width,
                         "notes": f"{n} items; p50 {t['latency_p50_ms'] / base:.2f}x of "
                                  f"W={config.widths[0]}; {t['requests']} single-user requests"})
            print(f"  {name} {kind:10s} W={width:5d}: p50 {t['latency_p50_ms']:.2f} ms, "
                  f"p99 {t['latency_p99_ms']:.2f} ms", flush=True)
    return rows


def main(config: BenchExclusionsConfig) -> Dict[str, Any]:
    from recommenders_tf.data.registry import DatasetNotFoundError

    results_dir = Path(config.results_dir)
    files, all_rows = [], {}
    command = "python -m pipelines.bench_exclusions"
    with tempfile.TemporaryDirectory() as tmp:
        for name in config.catalogues:
            try:
                rows = bench_catalogue(name, config, Path(tmp))
            except DatasetNotFoundError as err:
                print(f"  skipped {name}: {err}")
                continue
            all_rows[name] = rows
            files.append(write_results(
                results_dir, protocol="P5-exclusions", dataset=name, seed=config.seed,
                command=command, rows=rows,
                notes=["recommend_with_exclusions of the exported retrieval model, one user per "
                       "request, in a fresh process; history of "
                       f"{config.history_len} ids; exclusions drawn from the catalogue. "
                       f"ScaNN reorders k + {config.scann_budget} candidates: wider exclusions "
                       "that leave a row short get an exact pass over the catalogue.",
                       "Target: W=2000 at most 2x the time of W=50."]))
    if files:
        render_benchmarks_md(results_dir, Path(config.benchmarks_md))
    return {"results_files": [str(f) for f in files], "rows": all_rows}


def parse_args(argv=None) -> BenchExclusionsConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchExclusionsConfig)
    return cli.parse_config(BenchExclusionsConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
