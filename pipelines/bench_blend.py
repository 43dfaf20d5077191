"""P1: how far re-weighting the two-tower's score against a peer's score goes.

  python -m pipelines.bench_blend --dataset ml-100k
  python -m pipelines.bench_blend --dataset synthetic --set 'peers=[EASE]'

The cascade's ranker reads the retrieval score beside features that carry what the peers know.
Whatever else it learns, it can re-weight the two; this bench measures what that is worth with
no ranker at all: z(two-tower) + w * z(peer), scores standardised per user over the candidate
items (`recommenders_tf.evaluation.blend`). Each model is fitted as the P1 tables fit it; the
weight is chosen on the validation slice of train (models refit on its train part for that
stage) and the P1 test metrics are reported at the chosen weight, with the test NDCG@10 at every
weight of the grid in the notes. Results go to `<dataset>-P1-blend.json`, the curves over the
weight to `benchmarks/p1-blend-<dataset>.png`; BENCHMARKS.md is re-rendered from all results
files.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Tuple

from recommenders_tf import cli


@dataclasses.dataclass
class BenchBlendConfig:
    """Args:
      dataset: dataset spec.
      seed: split seed (and every model's).
      base: the first score source (`pipelines.benchmark` model names).
      peers: the second sources, one blend each.
      weights: the peer's weights tried (> 0); the base alone (0) and the peer alone are added.
      max_eval_users: evaluated users per stage, a seeded sample once there are more (0: all);
        the blend scores every candidate once per weight for each of them.
      results_dir, benchmarks_md: where results JSON and the tables go.
      plot_dir: where the plot of NDCG@10 over the weight goes (`p1-blend-<dataset>.png`).
    """

    dataset: str = "ml-100k"
    seed: int = 0
    base: str = "two-tower"
    peers: Tuple[str, ...] = ("EASE", "implicit-ALS", "SASRec")
    weights: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    max_eval_users: int = 20000
    results_dir: str = "benchmarks/results"
    benchmarks_md: str = "BENCHMARKS.md"
    plot_dir: str = "benchmarks"


def _weight(w: float) -> str:
    return "peer alone" if w == float("inf") else f"{w:g}"


def _curve_note(curve) -> str:
    return ", ".join(f"{_weight(r['weight'])}: {r['ndcg@10']:.4f}" for r in curve)


def _curves(found) -> Dict[str, Any]:
    return {"weights": [_weight(r["weight"]) for r in found["test"]],
            **{f"{stage}_ndcg@10": [round(r["ndcg@10"], 5) for r in found[stage]]
               for stage in ("validation", "test")}}


def plot_curves(rows, path: Path, dataset: str, base: str) -> Path:
    """NDCG@10 over the peer's weight for each blend row: test solid, validation dashed, the
    chosen weight marked; x runs from the base alone to the peer alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for row in (r for r in rows if "curve" in r):
        curve = row["curve"]
        xs = range(len(curve["weights"]))
        line, = ax.plot(xs, curve["test_ndcg@10"], marker="o", label=f"{row['model']} (test)")
        ax.plot(xs, curve["validation_ndcg@10"], ls="--", color=line.get_color(), alpha=0.6,
                label=f"{row['model']} (validation)")
        chosen = curve["weights"].index(row["chosen_weight"])
        ax.plot([chosen], [curve["test_ndcg@10"][chosen]], marker="*", ms=14,
                color=line.get_color())
        ax.set_xticks(list(xs))
        ax.set_xticklabels(curve["weights"])
    ax.set_xlabel(f"weight w of the peer in z({base}) + w z(peer) (star: chosen on validation)")
    ax.set_ylabel("ndcg@10")
    ax.set_title(f"P1 score blends: {dataset}")
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.14, top=0.92)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def main(config: BenchBlendConfig) -> Dict[str, Any]:
    import recommenders_tf  # noqa: F401
    from recommenders_tf.data import load_dataset, temporal_split
    from recommenders_tf.evaluation.blend import blend_study
    from recommenders_tf.evaluation.registry import build_as_benchmarked, get_spec
    from recommenders_tf.evaluation.report import (render_benchmarks_md, round_metrics,
                                                   write_results)
    from recommenders_tf.runs import slug

    data = load_dataset(config.dataset)
    split = temporal_split(data.interactions, seed=config.seed, dataset=data.name)
    print(f"[P1-blend {data.name}] {config.base} blended with {', '.join(config.peers)}",
          flush=True)
    study = blend_study(split.train, split.test,
                        lambda name, item_ids: build_as_benchmarked(
                            name, data, item_ids, seed=config.seed,
                            max_validation_users=config.max_eval_users),
                        base=config.base, peers=config.peers, weights=config.weights,
                        seed=config.seed, dataset=data.name, max_users=config.max_eval_users,
                        progress=lambda line: print(f"  {line}", flush=True))
    keys = ("recall@10", "recall@50", "ndcg@10", "hr@10", "mrr@10")
    first = study["peers"][config.peers[0]]["test"]
    rows = [{"model": config.base, "kind": get_spec(config.base).kind,
             "metrics": round_metrics({k: first[0][k] for k in keys}),
             "notes": "alone (weight 0), fitted as in the P1 table"}]
    for peer, found in study["peers"].items():
        alone, chosen = found["test"][-1], found["chosen"]
        ends = max(first[0]["ndcg@10"], alone["ndcg@10"])
        best = max(found["test"], key=lambda r: r["ndcg@10"])
        rows.append({"model": peer, "kind": get_spec(peer).kind,
                     "metrics": round_metrics({k: alone[k] for k in keys}),
                     "notes": "alone, fitted as in the P1 table"})
        rows.append({
            "model": f"{config.base} + w x {peer}", "kind": "blend",
            "chosen_weight": _weight(found["chosen_weight"]), "curve": _curves(found),
            "metrics": round_metrics({k: chosen[k] for k in keys}),
            "notes": f"w={_weight(found['chosen_weight'])} chosen on validation "
                     f"(ndcg@10 by w: {_curve_note(found['validation'])}); test ndcg@10 "
                     f"{chosen['ndcg@10'] / ends - 1:+.1%} over the better of the two alone; "
                     f"test ndcg@10 by w: {_curve_note(found['test'])} (best "
                     f"{best['ndcg@10']:.4f}, {best['ndcg@10'] / ends - 1:+.1%})"})
    command = cli.command_line("pipelines.bench_blend", f"--dataset {config.dataset}")
    stages = study["stages"]
    path = write_results(
        Path(config.results_dir), protocol="P1-blend", dataset=data.name, seed=config.seed,
        command=command, rows=rows, columns=list(keys),
        split={"train rows": len(split.train), "test rows": len(split.test),
               "validation users": stages["validation"]["users"],
               "test users": stages["test"]["users"]},
        notes=["Blend = z(base) + w * z(peer), each score standardised per user over the "
               "candidate items; w chosen on the P1 validation slice of train (both models "
               "refit on its train part for that stage), P1 test metrics at that w. The test "
               "curve over every w is shown so that one sees whether any weight reaches "
               "further; it chooses nothing. A ranker that reads both scores can represent this "
               "re-weighting, so the margin over the better model alone is what re-weighting "
               "these two sources is worth on this dataset, whether or not a ranker learns it."])
    plot = plot_curves(rows, Path(config.plot_dir) / f"p1-blend-{slug(data.name)}.png",
                       data.name, config.base)
    render_benchmarks_md(Path(config.results_dir), Path(config.benchmarks_md))
    return {"results_file": str(path), "rows": rows, "study": study, "plot": str(plot)}


def parse_args(argv=None) -> BenchBlendConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], BenchBlendConfig, dataset=True)
    return cli.parse_config(BenchBlendConfig, parser, argv)


if __name__ == "__main__":
    cli.run(main, parse_args)
