"""TF Serving configs and command lines for every exported model under a base dir.

  python -m pipelines.export                                    # base dir saved_models/
  python -m pipelines.export --base-dir saved_models --stable ranking=1 --canary ranking=2
  python -m pipelines.export --label retrieval_bruteforce:stable=3 --set num_versions=2

The exports themselves are written by the stage pipelines (`build_index`, `train_ranking`, the
cascade export). This step finds every `<name>/<integer version>/` with saved_model.pb and
metadata.json, checks each version TF Serving will load the way the server meets it
(`server_config.verify_export`: named, non-empty signatures read from the SavedModel; a warmup
file of PredictionLog records that covers every signature and matches its input names, dtypes
and shapes; metadata present), then writes next to the models:

  models.config             model_config_list of the models stock TF Serving can load
  models.scann.config       the models that need the ScaNN custom ops (ScaNN-enabled build)
  batching_parameters.txt   --batching_parameters_file
  serving_commands.txt      the docker run / tensorflow_model_server lines printed below

Version policy: `latest { num_versions }` (default 1); a model with version labels (`--stable`,
`--canary`, `--label`) gets `specific { versions }` of its labelled versions, since TF Serving
only accepts labels on loaded versions. The run record goes to runs/export/<run name>/.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Dict, List, Tuple

from recommenders_tf import cli
from recommenders_tf.config import ConfigError
from recommenders_tf.runs import make_run_dir, record_run


@dataclasses.dataclass
class ExportConfig:
    """Settings of the export step.

    Args:
        base_dir: the TF Serving base dir holding `<name>/<version>/` exports.
        models: only these model names (empty: every model found).
        labels: {model: {label: version}}, e.g. {"ranking": {"stable": 1, "canary": 2}}.
        num_versions: versions each unlabelled model keeps loaded (`latest` policy).
        grpc_port, rest_port: ports of the stock TF Serving process.
        scann_grpc_port, scann_rest_port: ports of the ScaNN-enabled process.
        max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads: the
            batching parameters (num_batch_threads 0 = this machine's cores).
        stock_image: stock TF Serving image (default tensorflow/serving:<TF version>).
        scann_image: ScaNN-enabled image (default google/tf-serving-scann:latest).
        poll_seconds: `--model_config_file_poll_wait_seconds` (config reloads, label moves).
        out_dir: parent of this step's run folder.
        run_name: run folder name (default: the base dir's name).
    """

    base_dir: str = "saved_models"
    models: Tuple[str, ...] = ()
    labels: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
    num_versions: int = 1
    grpc_port: int = 8500
    rest_port: int = 8501
    scann_grpc_port: int = 8510
    scann_rest_port: int = 8511
    max_batch_size: int = 256
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 0
    stock_image: str = ""
    scann_image: str = ""
    poll_seconds: int = 60
    out_dir: str = "runs/export"
    run_name: str = ""


def _signature_line(name: str, summary: Dict[str, Any]) -> str:
    def part(infos):
        return ", ".join(f"{n}: {i['dtype']} {i['shape']}" for n, i in infos.items())

    return f"{name}({part(summary['inputs'])}) -> {{{part(summary['outputs'])}}}"


def example_curl(model: Any, rest_port: int) -> str:
    """A `curl` predict call for a model, its body the first row of its warmup requests."""
    from recommenders_tf.serving.client import columnar_to_instances
    from recommenders_tf.serving.warmup import example_inputs

    from recommenders_tf.serving.contract import SERVING_DEFAULT

    signature = SERVING_DEFAULT if SERVING_DEFAULT in model.signatures else \
        sorted(model.signatures)[0]
    inputs = example_inputs(model.version_dir(), signature, batch_size=1)
    body = json.dumps({"signature_name": signature, "instances": columnar_to_instances(inputs)})
    return (f"curl -s -X POST http://localhost:{rest_port}/v1/models/{model.name}:predict "
            f"-d {shlex.quote(body)}")


def main(config: ExportConfig) -> Dict[str, Any]:
    from recommenders_tf.serving import server_config as sc
    from recommenders_tf.serving.export import stale_temp_dirs

    base = Path(config.base_dir).resolve()
    models = sc.discover_models(base, list(config.models) or None)
    if not models:
        raise FileNotFoundError(
            f"No exported models under {base}: expected <name>/<integer version>/ with "
            "saved_model.pb and metadata.json (run pipelines.build_index / train_ranking first).")
    checks: Dict[str, Any] = {}
    for model in models:
        versions = sorted({model.latest, *[int(v) for v in
                                           config.labels.get(model.name, {}).values()]})
        for version in versions:
            if version not in model.versions:
                raise ValueError(f"{model.name} has no version {version} (has {model.versions})")
            checks[f"{model.name}/{version}"] = sc.verify_export(model.version_dir(version))
    batching = sc.batching_parameters(config.max_batch_size, config.batch_timeout_micros,
                                      config.max_enqueued_batches,
                                      config.num_batch_threads or None)
    written = sc.write_server_configs(
        base, models, labels=config.labels, num_versions=config.num_versions,
        grpc_port=config.grpc_port, rest_port=config.rest_port,
        scann_grpc_port=config.scann_grpc_port, scann_rest_port=config.scann_rest_port,
        stock_image=config.stock_image or None, scann_image=config.scann_image or None,
        batching=batching, poll_seconds=config.poll_seconds)

    lines: List[str] = [f"Models under {base}:"]
    for model in models:
        check = checks[f"{model.name}/{model.latest}"]
        lines.append(f"  {model.name}: versions {model.versions} (latest {model.latest}), "
                     f"{'ScaNN ops' if model.requires_scann else 'stock ops'}, "
                     f"{check['warmup_records']} warmup records, assets {check['assets']}")
        lines += [f"    {_signature_line(n, s)}" for n, s in model.signatures.items()]
    # Folders of killed exports: harmless to TF Serving (not integer names), removed by the
    # next export into that model folder.
    stale = {m.name: [p.name for p in stale_temp_dirs(m.base_path)] for m in models}
    for name, dirs in stale.items():
        if dirs:
            lines.append(f"  {name}: {len(dirs)} temp folder(s) left by killed exports "
                         f"({', '.join(dirs[:3])}{', ...' if len(dirs) > 3 else ''}); the next "
                         "export removes them")
    lines.append("")
    lines += [f"Wrote {path}" for path in written["files"].values()]
    for command in written["commands"]:
        port = command.rest_port
        lines += ["", f"{'Stock' if command.kind == 'stock' else 'ScaNN-enabled'} TF Serving "
                      f"for {', '.join(command.models)} (gRPC {command.grpc_port}, REST {port}):"]
        if command.warning:
            lines.append(f"  WARNING: {command.warning}")
        lines += [f"  {command.docker}", "  or, with a tensorflow_model_server binary:",
                  f"  {command.binary}"]
        first = next(m for m in models if m.name == command.models[0])
        lines += ["  then, for example:", f"  {example_curl(first, port)}",
                  f"  python -m pipelines.query_server --host localhost --rest-port {port} "
                  f"--grpc-port {command.grpc_port} --model {first.name} --user-id <id>"]
    print("\n".join(lines), flush=True)
    results = {
        "base_dir": str(base),
        "models": {m.name: {"versions": m.versions, "latest": m.latest,
                            "requires_scann": m.requires_scann,
                            "signatures": sorted(m.signatures)} for m in models},
        "checks": checks,
        "stale_temp_dirs": {k: v for k, v in stale.items() if v},
        "files": {k: str(v) for k, v in written["files"].items()},
        "commands": [dataclasses.asdict(c) | {"config_file": str(c.config_file)}
                     for c in written["commands"]],
    }
    run_dir = make_run_dir(config.out_dir, config.run_name or base.name)
    record_run(run_dir, config, results, ["```"] + lines + ["```"])
    return results


def _parse_label(text: str, label: str | None = None) -> Tuple[str, str, int]:
    """"model:label=version" (or "model=version" with a fixed label)."""
    try:
        left, version = text.rsplit("=", 1)
        if label is None:
            model, label = left.split(":", 1)
        else:
            model = left
        return model, label, int(version)
    except ValueError:
        form = "MODEL=VERSION" if label else "MODEL:LABEL=VERSION"
        raise ConfigError(f"bad label {text!r}: expected {form}") from None


def parse_args(argv=None) -> ExportConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], ExportConfig)
    parser.add_argument("--base-dir", help="TF Serving base dir (default saved_models)")
    parser.add_argument("--stable", action="append", default=[], metavar="MODEL=VERSION")
    parser.add_argument("--canary", action="append", default=[], metavar="MODEL=VERSION")
    parser.add_argument("--label", action="append", default=[], metavar="MODEL:LABEL=VERSION")
    args = parser.parse_args(argv)
    config = cli.config_from_args(ExportConfig, args, fields=("base_dir",))
    labels = {k: dict(v) for k, v in config.labels.items()}
    for text, fixed in ([(t, "stable") for t in args.stable] + [(t, "canary") for t in args.canary]
                        + [(t, None) for t in args.label]):
        model, label, version = _parse_label(text, fixed)
        labels.setdefault(model, {})[label] = version
    config.labels = labels
    return config


if __name__ == "__main__":
    cli.run(main, parse_args)
