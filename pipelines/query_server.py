"""Query a running TF Serving (or the local test fixture) for one user, over REST and/or gRPC.

  python -m pipelines.query_server --host localhost --user-id 42
  python -m pipelines.query_server --host localhost --model ranking --user-id 42 --history 1,2 --items 5,9,12
  python -m pipelines.query_server --model retrieval_scann --rest-port 8511 --grpc-port 8510 --user-id 42 --exclude 50,51
  python -m pipelines.query_server --model retrieval_bruteforce --user-id 42 --label canary --protocol grpc

The request is built from the signature the server reports (`GET .../metadata` or
`GetModelMetadata`), not from local files, so it works for any export: `user_id` <- --user-id,
`history` <- --history, `item_ids` <- --items, `exclude_item_ids` <- --exclude (each left-padded
with "" to the signature's fixed width, if it has one), and any other input from
`--input NAME=v1,v2`. With `--protocol both` (the default) the same request goes through REST
and gRPC and the answers are compared. Errors are TF Serving's own messages (`ServingError`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from recommenders_tf import cli
from recommenders_tf.serving.contract import (EXCLUDE_INPUT, HISTORY, INTERNAL_SIGNATURE_PREFIX,
                                              ITEM_IDS, PAD, SERVING_DEFAULT, USER_ID,
                                              WITH_EXCLUSIONS)

NAMED_INPUTS = {USER_ID: "user_id", HISTORY: "history", ITEM_IDS: "items",
                EXCLUDE_INPUT: "exclude"}


@dataclasses.dataclass
class QueryServerConfig:
    """Args:
        host: TF Serving host.
        rest_port, grpc_port: its REST and gRPC ports.
        model: model name on the server.
        user_id: the user to ask for.
        history: the user's recent item ids, oldest first.
        items: candidate item ids (ranking signatures).
        exclude: item ids that must not come back (`recommend_with_exclusions`).
        inputs: other inputs {name: comma-separated values}.
        signature: signature name ("" = `recommend_with_exclusions` when `exclude` is given
            and the model has it, else `serving_default`).
        version, label: ask a specific version (0 = latest) or a version label.
        protocol: "rest", "grpc" or "both".
        row_format: send REST `instances` rows instead of columnar `inputs`.
        timeout: seconds per call.
    """

    host: str = "localhost"
    rest_port: int = 8501
    grpc_port: int = 8500
    model: str = "retrieval_bruteforce"
    user_id: str = ""
    history: List[str] = dataclasses.field(default_factory=list)
    items: List[str] = dataclasses.field(default_factory=list)
    exclude: List[str] = dataclasses.field(default_factory=list)
    inputs: Dict[str, str] = dataclasses.field(default_factory=dict)
    signature: str = ""
    version: int = 0
    label: str = ""
    protocol: str = "both"
    row_format: bool = False
    timeout: float = 30.0


def _fixed_width(shape: Optional[Sequence[int]]) -> Optional[int]:
    if shape and len(shape) == 2 and shape[1] >= 0:
        return int(shape[1])
    return None


def build_inputs(config: QueryServerConfig, signature: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """One-row inputs for `signature` ({"inputs": {name: {"dtype", "shape"}}}) from the config.

    Raises:
        ValueError: an input the config cannot fill, or values longer than a fixed width.
    """
    values = {USER_ID: [config.user_id] if config.user_id else [],
              HISTORY: list(config.history), ITEM_IDS: list(config.items),
              EXCLUDE_INPUT: list(config.exclude)}
    out: Dict[str, np.ndarray] = {}
    for name, spec in sorted(signature["inputs"].items()):
        if name in config.inputs:
            row = [v for v in str(config.inputs[name]).split(",")]
        elif name in values:
            row = values[name]
        else:
            raise ValueError(f"signature input {name!r} ({spec}) has no value: pass "
                             f"--input {name}=v1,v2")
        shape = spec.get("shape")
        rank = len(shape) if shape is not None else (1 if name == USER_ID else 2)
        dtype = str(spec.get("dtype", "DT_STRING")).lower().removeprefix("dt_")
        if rank == 1:
            if len(row) != 1:
                what = "--user-id is required" if name == USER_ID else \
                    f"input {name!r} takes one value per row, got {row}"
                raise ValueError(what)
            cells: List[Any] = row
        elif rank == 2:
            width = _fixed_width(shape)
            if width is not None and len(row) > width:
                raise ValueError(f"input {name!r} takes at most {width} values, got {len(row)}")
            # Left-padded, as the client helpers do: the last id stays last (most recent).
            cells = [[PAD] * ((width if width is not None else max(len(row), 1)) - len(row))
                     + row]
        else:
            raise ValueError(f"input {name!r} has rank {rank}; pass it with a client directly")
        if dtype == "string":
            out[name] = np.array(cells, dtype=object)
        else:
            numeric = {"float": "float32", "double": "float64"}.get(dtype, dtype)
            out[name] = np.array(cells, dtype=object).astype(float).astype(numeric) \
                if rank == 1 else np.array([[float(c or 0) for c in r] for r in cells],
                                           dtype=numeric)
    return out


def _decode(array: np.ndarray) -> List[Any]:
    return [[v.decode("utf-8") if isinstance(v, bytes) else v for v in row]
            for row in np.asarray(array).reshape(len(array), -1).tolist()]


def main(config: QueryServerConfig) -> Dict[str, Any]:
    from recommenders_tf.serving.client import GrpcClient, RestClient

    if config.protocol not in ("rest", "grpc", "both"):
        raise ValueError(f"protocol must be rest, grpc or both, got {config.protocol!r}")
    version = config.version or None
    label = config.label or None
    rest = RestClient(config.host, config.rest_port, timeout=config.timeout) \
        if config.protocol in ("rest", "both") else None
    grpc_client = GrpcClient(f"{config.host}:{config.grpc_port}", timeout=config.timeout) \
        if config.protocol in ("grpc", "both") else None
    # The signatures the server reports, through whichever API we were given.
    if rest is not None:
        body = rest.metadata(config.model, version, label)
        names = sorted(k for k in body["metadata"]["signature_def"]["signature_def"]
                       if not k.startswith(INTERNAL_SIGNATURE_PREFIX))
        served_version = body["model_spec"].get("version")
    else:
        names = sorted(k for k in grpc_client.metadata(config.model, version, label)
                       if not k.startswith(INTERNAL_SIGNATURE_PREFIX))
        served_version = None
    signature_name = config.signature or (
        WITH_EXCLUSIONS if config.exclude and WITH_EXCLUSIONS in names else SERVING_DEFAULT)
    if signature_name not in names:
        raise ValueError(f"{config.model} has no signature {signature_name!r}; it has {names}")
    if rest is not None:
        signature = rest.signature(config.model, signature_name, version, label)
    else:
        from recommenders_tf.serving.server_config import signature_summary

        summary = signature_summary(grpc_client.metadata(config.model, version, label)
                                    [signature_name])
        signature = {"inputs": {n: {"dtype": i["dtype"], "shape": i["shape"]}
                                for n, i in summary["inputs"].items()},
                     "outputs": summary["outputs"]}
    inputs = build_inputs(config, signature)
    results: Dict[str, Any] = {"model": config.model, "signature": signature_name,
                               "version": served_version, "label": label,
                               "inputs": {k: _decode(v) for k, v in inputs.items()}}
    answers = {}
    if rest is not None:
        answers["rest"] = rest.predict(config.model, inputs, signature_name=signature_name,
                                       version=version, label=label,
                                       row_format=config.row_format)
    if grpc_client is not None:
        answers["grpc"] = grpc_client.predict(config.model, inputs, signature_name=signature_name,
                                              version=version, label=label)
        grpc_client.close()
    for path, outputs in answers.items():
        results[path] = {k: _decode(v) for k, v in sorted(outputs.items())}
    if len(answers) == 2:
        same = all(results["rest"][k] == results["grpc"][k] or np.allclose(
            np.asarray(results["rest"][k], dtype=float), np.asarray(results["grpc"][k],
                                                                      dtype=float), rtol=1e-6)
            for k in results["rest"])
        results["rest_equals_grpc"] = bool(same)
    where = f"{config.model}" + (f" version {version}" if version else "") + \
        (f" label {label}" if label else "")
    print(f"{where}, signature {signature_name}, inputs {results['inputs']}")
    for path in answers:
        print(f"  {path}:")
        for name, value in results[path].items():
            print(f"    {name}: {value[0] if len(value) == 1 else value}")
    if "rest_equals_grpc" in results:
        print(f"  REST and gRPC answers {'agree' if results['rest_equals_grpc'] else 'DIFFER'}")
    return results


def _id_list(text: str) -> List[str]:
    return [v for v in text.split(",") if v != ""]


def parse_args(argv=None) -> QueryServerConfig:
    parser = cli.config_parser(__doc__.splitlines()[0], QueryServerConfig)
    parser.add_argument("--host")
    parser.add_argument("--rest-port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--model")
    parser.add_argument("--user-id")
    parser.add_argument("--history", type=_id_list, help="comma-separated item ids, oldest first")
    parser.add_argument("--items", type=_id_list, help="comma-separated candidate ids (ranking)")
    parser.add_argument("--exclude", type=_id_list,
                        help="comma-separated ids that must not come back")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=v1,v2")
    parser.add_argument("--signature")
    parser.add_argument("--version", type=int)
    parser.add_argument("--label")
    parser.add_argument("--protocol", choices=["rest", "grpc", "both"])
    parser.add_argument("--rows", dest="row_format", action="store_true", default=None,
                        help="REST row format (instances)")
    args = parser.parse_args(argv)
    config = cli.config_from_args(QueryServerConfig, args, fields=(
        "host", "rest_port", "grpc_port", "model", "user_id", "history", "items", "exclude",
        "signature", "version", "label", "protocol", "row_format"))
    for text in args.input:
        name, _, values = text.partition("=")
        config.inputs[name] = values
    return config


if __name__ == "__main__":
    from recommenders_tf.serving.client import ServingError

    # The server's answer or a bad input value is the whole story for a command-line user.
    cli.run(main, parse_args, extra_errors=(ServingError, ValueError))
