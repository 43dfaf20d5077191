"""`make demo`: the main job, end to end, on the offline default (synthetic) data.

Steps, each a pipeline of its own that this module only chains:
  1. prepare_data   load + validate the synthetic data, P1 split, manifest, vocabularies
  2. run_all        the whole cascade: MiniLM item text vectors (cached), two-tower retrieval,
                    ranking over its top 200, the listwise re-ranker and business rules; P1
                    metrics of every stage, the MMR/DPP trade-off, and the exports
                    (saved_models/recommender with ScaNN, recommender_bruteforce, and the
                    retrieval stage alone), each reloaded and called
  3. recommend      one test user's top 10 through the reloaded cascade export, with titles,
                    scores and per-stage ranks; then an unknown user (the fallback)
  4. benchmark      the classic peers (most-popular, EASE, RP3beta, implicit-ALS; tuned on the
                    same validation slice) on the same P1 split, printed beside the cascade's
                    stages, so the margin (or its absence) is the last thing on the screen

  python -m pipelines.demo [--dataset synthetic] [--out runs/demo]
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

from pipelines import benchmark, prepare_data, recommend, run_all
from recommenders_tf import cli


# The cheap peers the reproducibility studies found hardest to beat (SASRec, the strongest
# sequential one, trains for minutes: see BENCHMARKS.md).
PEERS = ("most-popular", "EASE", "RP3beta", "implicit-ALS")


@dataclasses.dataclass
class DemoConfig:
    """Args:
      dataset: dataset spec; the synthetic generator is the offline default.
      out_dir: everything the demo writes goes below this folder.
      export_dir: TF Serving model base path of the exports.
      peers: peers run on the same split and printed beside the cascade (empty: none).
    """

    dataset: str = "synthetic"
    out_dir: str = "runs/demo"
    export_dir: str = "saved_models"
    peers: Tuple[str, ...] = PEERS


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _a_test_user(dataset: str) -> str:
    """The first P1 test user (by id), so the printed recommendations can be checked by hand."""
    from recommenders_tf.data import load_dataset, temporal_split

    split = temporal_split(load_dataset(dataset).interactions)
    return str(sorted(split.test["user_id"].unique())[0])


def main(config: DemoConfig) -> Dict[str, Any]:
    out = Path(config.out_dir)
    results: Dict[str, Any] = {}
    _banner("1/4 prepare data")
    results["prepare_data"] = prepare_data.main(prepare_data.PrepareDataConfig(
        dataset=config.dataset, protocol="P1", out_dir=str(out / "prepare_data")))
    _banner("2/4 train, evaluate and export the cascade (retrieval -> ranking -> re-ranking)")
    results["run_all"] = run_all.main(run_all.RunAllConfig(
        dataset=config.dataset, out_dir=str(out / "run_all"), export_dir=config.export_dir,
        text_cache=str(out / "text_cache")))
    _banner("3/4 recommend through the reloaded cascade export")
    export = str(Path(config.export_dir) / "recommender")
    user = _a_test_user(config.dataset)
    results["recommend"] = recommend.main(recommend.RecommendConfig(
        export=export, user_id=user, dataset=config.dataset, k=10))
    print()
    results["recommend_unknown"] = recommend.main(recommend.RecommendConfig(
        export=export, user_id="a-new-user", dataset=config.dataset, k=10))
    peer_rows: List[Dict[str, Any]] = []
    if config.peers:
        _banner("4/4 peers on the same P1 split (tuned on the same validation slice)")
        peer_dir = out / "peers"
        results["peers"] = benchmark.main(benchmark.BenchmarkConfig(
            dataset=config.dataset, protocol="P1", models=tuple(config.peers),
            results_dir=str(peer_dir), benchmarks_md=str(peer_dir / "BENCHMARKS.md"),
            run_dir=str(peer_dir)))
        peer_rows = results["peers"]["rows"]
    _banner("done")
    print("\n".join(comparison_lines(results["run_all"]["metrics"]["stages"], peer_rows)))
    print(f"Artifacts under {out}/, models under {config.export_dir}/")
    return results


def comparison_lines(stages: Dict[str, Dict[str, float]],
                     peer_rows: List[Dict[str, Any]]) -> List[str]:
    """The cascade's stages and the peers, one line each (P1 test), with the full cascade's
    NDCG@10 margin over each peer."""
    final = stages["final"]["ndcg@10"]
    lines = [f"{'':>22}  ndcg@10  recall@10  diversity@10  cascade vs this"]
    for stage, label in (("retrieval", "retrieval"), ("ranking", "retrieval + ranking"),
                         ("final", "full cascade")):
        m = stages[stage]
        margin = "" if stage == "final" else f"{final / m['ndcg@10'] - 1:+.1%}"
        lines.append(f"{label:>22}  {m['ndcg@10']:.4f}   {m['recall@10']:.4f}     "
                     f"{m.get('diversity@10', float('nan')):.4f}        {margin}")
    for row in peer_rows:
        m = row["metrics"]
        lines.append(f"{'peer ' + row['model']:>22}  {m['ndcg@10']:.4f}   {m['recall@10']:.4f}"
                     f"     {m.get('diversity@10', float('nan')):.4f}        "
                     f"{final / m['ndcg@10'] - 1:+.1%}")
    return lines


def parse_args(argv=None) -> DemoConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], DemoConfig, dataset=True)
    parser.add_argument("--out", dest="out_dir", help="folder the demo writes everything below")
    return cli.parse_config(DemoConfig, parser, argv, fields=("out_dir",))


if __name__ == "__main__":
    cli.run(main, parse_args)
