"""Load a dataset, validate it, split it under a benchmark protocol, and build vocabularies.

Writes to `runs/prepare_data/<dataset>-<protocol>/`: the resolved config, the load report, the
split manifest (counts and hashes), train-only vocabularies and a short summary. Later steps
(training, benchmarks) rebuild the same split deterministically from the same seed, and can
check it against this manifest.

  python -m pipelines.prepare_data --dataset synthetic --protocol P1
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

from recommenders_tf import cli
from recommenders_tf.config import write_json
from recommenders_tf.data import load_dataset, split_for_protocol
from recommenders_tf.features.vocab import build_vocabularies, save_vocabularies
from recommenders_tf.runs import make_run_dir, record_run


@dataclasses.dataclass
class PrepareDataConfig:
    """Args:
      dataset: dataset spec for `recommenders_tf.data.load_dataset` ("synthetic", "ml-100k", ...).
      protocol: which split to make ("P1", "P2", "P3", "P4").
      seed: split seed.
      out_dir: parent of the run folder.
      run_name: run folder name; default "<dataset>-<protocol>".
    """

    dataset: str = "synthetic"
    protocol: str = "P1"
    seed: int = 0
    out_dir: str = "runs/prepare_data"
    run_name: str = ""


def main(config: PrepareDataConfig) -> Dict[str, Any]:
    data = load_dataset(config.dataset)
    split = split_for_protocol(config.protocol, data, seed=config.seed)
    run_dir = make_run_dir(config.out_dir, config.run_name or f"{data.name}-{config.protocol}")
    manifest_path = split.write_manifest(run_dir)
    if data.report is not None:
        write_json(run_dir / "load_report.json", data.report.to_dict())
    vocabs = build_vocabularies(split.train)
    save_vocabularies(vocabs, run_dir / "vocab")
    manifest = split.manifest()
    results = {
        "dataset": data.name,
        "protocol": config.protocol,
        "run_dir": str(run_dir),
        "manifest": str(manifest_path),
        "parts": {name: part["rows"] for name, part in manifest["parts"].items()},
        "vocab_sizes": {name: len(v.tokens) for name, v in vocabs.items()},
        "load_report": data.report.to_dict() if data.report is not None else None,
    }
    summary: List[str] = [data.summary(), "", "Split parts (rows): " + ", ".join(
        f"{k} {v}" for k, v in results["parts"].items())]
    if data.report is not None:
        summary.append(f"Load report: {data.report.rows_read} rows read, "
                       f"{data.report.duplicates} duplicates, {data.report.out_of_range} out of range (kept).")
    record_run(run_dir, config, results, summary)
    print("\n".join(summary))
    print(f"Artifacts: {run_dir}")
    return results


def parse_args(argv=None) -> PrepareDataConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], PrepareDataConfig, dataset=True)
    parser.add_argument("--protocol")
    parser.add_argument("--seed", type=int)
    return cli.parse_config(PrepareDataConfig, parser, argv, fields=("protocol", "seed"))


if __name__ == "__main__":
    cli.run(main, parse_args)
