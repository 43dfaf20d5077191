"""What TF Serving sees in a base dir, and the files and command lines that serve it.

* `discover_models(base_dir)`: every `<name>/<integer version>/` holding `saved_model.pb` and
  `metadata.json`, with its signatures read from the SavedModel itself and whether it needs the
  ScaNN custom ops (metadata flag, or `Scann*` ops in its graph).
* `read_signature_defs(version_dir)` / `signature_summary(...)`: the SignatureDefs TF Serving
  serves (named inputs/outputs, dtypes, shapes); `check_signatures` rejects empty ones.
* `model_config(models, ...)` -> a `ModelServerConfig` proto (`model_config_list`: name, base
  path, `model_platform: "tensorflow"`, version policy, optional version labels), written as
  text with `model_config_text` and read back with `parse_model_config`.
* `batching_parameters_text(...)` / `parse_batching_parameters(...)`: the
  `--batching_parameters_file` (a `BatchingParameters` text proto).
* `server_command(...)`: the exact `docker run` and `tensorflow_model_server` lines: stock
  `tensorflow/serving` for models with stock ops, the ScaNN-enabled build for ScaNN models.
* `write_server_configs(base_dir, ...)`: writes `models.config` (stock-loadable models),
  `models.scann.config` (models that need ScaNN ops), `batching_parameters.txt` and
  `serving_commands.txt` next to the models; `pipelines.export` calls it.

Nothing here imports TensorFlow at module import; reading a SavedModel does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from recommenders_tf.serving.contract import (ASSETS_EXTRA, INTERNAL_SIGNATURE_PREFIX,
                                              METADATA_FILE, is_valid_model_name)

STOCK_CONFIG = "models.config"
SCANN_CONFIG = "models.scann.config"
BATCHING_FILE = "batching_parameters.txt"
COMMANDS_FILE = "serving_commands.txt"
STOCK_IMAGE = "tensorflow/serving"
SCANN_IMAGE = "google/tf-serving-scann"
SCANN_WARNING = (
    "The public ScaNN-enabled TF Serving image ({image}) is built by the ScaNN authors and lags "
    "TensorFlow releases: its newest tag may predate TF {tf_version}, the version these models "
    "were exported with, and an older model server can refuse ops or attributes newer "
    "TensorFlow writes. Check its tags; if none matches, build TF Serving with the ScaNN ops "
    "yourself (google-research/scann, scann/tf_serving: the Dockerfile takes "
    "TF_SERVING_VERSION_GIT_BRANCH) or serve the BruteForce twin on stock TF Serving.")
_DT_PREFIX = "DT_"


# ---- reading one SavedModel -----------------------------------------------------------------


def read_saved_model_proto(version_dir: str | os.PathLike):
    """The `SavedModel` proto of `<version_dir>/saved_model.pb`."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(version_dir) / "saved_model.pb"
    if not path.exists():
        raise FileNotFoundError(f"{version_dir} is not a SavedModel version directory "
                                "(no saved_model.pb)")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(path.read_bytes())
    return proto


def serve_meta_graph(saved_model):
    """The MetaGraphDef tagged "serve" (what TF Serving loads), else the first one."""
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    if not saved_model.meta_graphs:
        raise ValueError("SavedModel has no MetaGraphDef")
    return saved_model.meta_graphs[0]


def read_signature_defs(version_dir: str | os.PathLike, include_internal: bool = False
                        ) -> dict[str, Any]:
    """{name: SignatureDef proto} of the serving MetaGraphDef (without `__...` entries unless
    `include_internal`)."""
    meta_graph = serve_meta_graph(read_saved_model_proto(version_dir))
    return {name: sig for name, sig in meta_graph.signature_def.items()
            if include_internal or not name.startswith(INTERNAL_SIGNATURE_PREFIX)}


def dtype_name(enum_value: int) -> str:
    """TF dtype name ("string", "float32", ...) of a `DataType` enum value."""
    import tensorflow as tf

    return tf.dtypes.as_dtype(enum_value).name


def shape_list(tensor_shape) -> list[int] | None:
    """A `TensorShapeProto` as a list (-1 = unknown dim), None for unknown rank."""
    if tensor_shape.unknown_rank:
        return None
    return [int(d.size) for d in tensor_shape.dim]


def signature_summary(signature_def) -> dict[str, Any]:
    """{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}, "method_name"} of a SignatureDef."""
    def infos(mapping):
        return {name: {"dtype": dtype_name(info.dtype), "shape": shape_list(info.tensor_shape)}
                for name, info in sorted(mapping.items())}

    return {"inputs": infos(signature_def.inputs), "outputs": infos(signature_def.outputs),
            "method_name": signature_def.method_name}


def check_signatures(version_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Summaries of every serving signature; raises if there is none or one is empty.

    Raises:
        ValueError: naming the export and the signature with no inputs or no outputs.
    """
    signatures = read_signature_defs(version_dir)
    if not signatures:
        raise ValueError(f"{version_dir} has no serving signatures; export it with explicit "
                         "signatures={...}.")
    out = {}
    for name, sig in sorted(signatures.items()):
        if not sig.inputs or not sig.outputs:
            raise ValueError(f"{version_dir}: signature {name!r} has "
                             f"{len(sig.inputs)} inputs and {len(sig.outputs)} outputs; every "
                             "signature needs named inputs and outputs.")
        out[name] = signature_summary(sig)
    return out


def graph_ops(version_dir: str | os.PathLike) -> set[str]:
    """Every op type in the serving graph and its function library."""
    meta_graph = serve_meta_graph(read_saved_model_proto(version_dir))
    graph = meta_graph.graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def _metadata_wants_scann(metadata: Any) -> bool:
    """True if any (nested) metadata entry says ScaNN ops are needed."""
    if isinstance(metadata, Mapping):
        if metadata.get("requires_scann_ops") is True:
            return True
        return any(_metadata_wants_scann(v) for v in metadata.values())
    if isinstance(metadata, (list, tuple)):
        return any(_metadata_wants_scann(v) for v in metadata)
    return False


def requires_scann(version_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None
                   ) -> bool:
    """Whether loading this version needs the ScaNN custom ops: its metadata says so
    (`requires_scann_ops`, at any nesting level, e.g. a cascade's stages) or its graph holds
    `Scann*` ops."""
    if metadata is None:
        metadata = read_version_metadata(version_dir) or {}
    if _metadata_wants_scann(metadata):
        return True
    return any(op.startswith("Scann") for op in graph_ops(version_dir))


def read_version_metadata(version_dir: str | os.PathLike) -> dict[str, Any] | None:
    """metadata.json beside the SavedModel (or in assets.extra/), None if there is none."""
    for path in (Path(version_dir) / METADATA_FILE,
                 Path(version_dir) / ASSETS_EXTRA / METADATA_FILE):
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


# ---- a base dir -------------------------------------------------------------------------------


def integer_versions(model_dir: str | os.PathLike) -> list[int]:
    """Integer-named version dirs holding a saved_model.pb, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").exists())


@dataclasses.dataclass
class ServableModel:
    """One model of a base dir, as TF Serving would find it.

    Args:
        name: the model name (its folder name).
        base_path: absolute `<base>/<name>` (TF Serving's `base_path`).
        versions: integer versions with a SavedModel, ascending.
        metadata: metadata.json of the latest version.
        requires_scann: the latest version needs the ScaNN custom ops.
        signatures: `signature_summary` of each serving signature of the latest version.
    """

    name: str
    base_path: Path
    versions: list[int]
    metadata: dict[str, Any]
    requires_scann: bool
    signatures: dict[str, dict[str, Any]]

    @property
    def latest(self) -> int:
        return self.versions[-1]

    def version_dir(self, version: int | None = None) -> Path:
        return self.base_path / str(self.latest if version is None else version)


def discover_models(base_dir: str | os.PathLike, names: Iterable[str] | None = None
                    ) -> list[ServableModel]:
    """Every model under `base_dir` with an integer version holding saved_model.pb and
    metadata.json, sorted by name (hidden and temporary folders are skipped).

    Args:
        base_dir: the TF Serving base dir (e.g. saved_models/).
        names: only these models (each must exist).

    Raises:
        FileNotFoundError: `base_dir` is missing, or a requested name is not a model there.
    """
    base = Path(base_dir).resolve()
    if not base.is_dir():
        raise FileNotFoundError(f"Model base dir {base} does not exist")
    found = []
    for model_dir in sorted(base.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith((".", "_")):
            continue
        versions = [v for v in integer_versions(model_dir)
                    if read_version_metadata(model_dir / str(v)) is not None]
        if not versions:
            continue
        latest = model_dir / str(versions[-1])
        metadata = read_version_metadata(latest) or {}
        found.append(ServableModel(model_dir.name, model_dir, versions, metadata,
                                   requires_scann(latest, metadata), check_signatures(latest)))
    if names is not None:
        wanted = list(names)
        by_name = {m.name: m for m in found}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise FileNotFoundError(f"No exported model {missing} under {base}; found "
                                    f"{sorted(by_name)}")
        found = [by_name[n] for n in wanted]
    return found


# ---- models.config ---------------------------------------------------------------------------


def model_config(models: Sequence[ServableModel], *,
                 labels: Mapping[str, Mapping[str, int]] | None = None,
                 num_versions: int = 1,
                 base_paths: Mapping[str, str] | None = None):
    """A `ModelServerConfig` with one `config` entry per model.

    Args:
        models: from `discover_models`.
        labels: {model: {label: version}}, e.g. {"ranking": {"stable": 1, "canary": 2}}. A
            labelled model gets a `specific` version policy listing its labelled versions (TF
            Serving only accepts labels on loaded versions).
        num_versions: `latest { num_versions }` for the other models.
        base_paths: {model: base path} overrides (default the absolute host path).

    Raises:
        ValueError: a label on a model that is not in `models`, or on a missing version.
    """
    from tensorflow_serving.config import model_server_config_pb2

    labels = {k: dict(v) for k, v in (labels or {}).items()}
    unknown = sorted(set(labels) - {m.name for m in models})
    if unknown:
        raise ValueError(f"version labels for {unknown}, which are not among the served "
                         f"models {[m.name for m in models]}")
    if num_versions < 1:
        raise ValueError(f"num_versions must be >= 1, got {num_versions}")
    config = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = str((base_paths or {}).get(model.name, model.base_path))
        entry.model_platform = "tensorflow"
        model_labels = labels.get(model.name) or {}
        if model_labels:
            for label, version in sorted(model_labels.items()):
                if int(version) not in model.versions:
                    raise ValueError(f"label {label!r} of {model.name} points at version "
                                     f"{version}, but {model.base_path} holds {model.versions}")
                if not is_valid_model_name(label):
                    raise ValueError(f"version label {label!r} must be letters, digits, "
                                     "'_', '.', '-'")
                entry.version_labels[label] = int(version)
            entry.model_version_policy.specific.versions.extend(
                sorted({int(v) for v in model_labels.values()}))
        else:
            entry.model_version_policy.latest.num_versions = num_versions
    return config


def model_config_text(config, header: Sequence[str] = ()) -> str:
    """The text-proto form TF Serving's `--model_config_file` reads (with `#` comments)."""
    from google.protobuf import text_format

    lines = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines + [text_format.MessageToString(config).rstrip()]) + "\n"


def _text_of(text_or_path: str | os.PathLike) -> str:
    if isinstance(text_or_path, os.PathLike):
        return Path(text_or_path).read_text(encoding="utf-8")
    text = str(text_or_path)
    if "\n" not in text and "{" not in text and Path(text).is_file():
        return Path(text).read_text(encoding="utf-8")
    return text


def parse_model_config(text_or_path: str | os.PathLike):
    """Parses a models.config (text or path) as a TF Serving `ModelServerConfig` proto."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = _text_of(text_or_path)
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


# ---- batching_parameters.txt -----------------------------------------------------------------

_BATCHING_CLASS = None


def batching_parameters_class():
    """`tensorflow.serving.BatchingParameters` (session_bundle_config.proto), built here with the
    same package, names and field numbers because tensorflow-serving-api does not ship it."""
    global _BATCHING_CLASS
    if _BATCHING_CLASS is not None:
        return _BATCHING_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
    from google.protobuf import message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="recommenders_tf/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    fields = [("max_batch_size", 1, ".google.protobuf.Int64Value"),
              ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
              ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
              ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
              ("thread_pool_name", 5, ".google.protobuf.StringValue")]
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in fields:
        message.field.add(name=name, number=number, type=F.TYPE_MESSAGE, type_name=type_name,
                          label=F.LABEL_OPTIONAL)
    message.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                      label=F.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                      label=F.LABEL_OPTIONAL)
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    _BATCHING_CLASS = message_factory.GetMessageClass(descriptor)
    return _BATCHING_CLASS


def batching_parameters(max_batch_size: int = 256, batch_timeout_micros: int = 2000,
                        max_enqueued_batches: int = 100, num_batch_threads: int | None = None,
                        allowed_batch_sizes: Sequence[int] = ()):
    """A `BatchingParameters` proto; `num_batch_threads` defaults to the machine's cores.

    `pad_variable_length_inputs` stays false: TF Serving pads with a value taken from the
    tensor (not ""), which would turn history padding into real items. Clients must therefore
    send fixed widths (history padded to the export's `query_history_len`, a fixed number of
    candidates) so requests can be concatenated into one batch.
    """
    if max_batch_size < 1 or batch_timeout_micros < 0 or max_enqueued_batches < 1:
        raise ValueError("max_batch_size >= 1, batch_timeout_micros >= 0 and "
                         "max_enqueued_batches >= 1 are required")
    sizes = [int(s) for s in allowed_batch_sizes]
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != max_batch_size):
        raise ValueError(f"allowed_batch_sizes {sizes} must increase and end at "
                         f"max_batch_size {max_batch_size}")
    message = batching_parameters_class()()
    message.max_batch_size.value = int(max_batch_size)
    message.batch_timeout_micros.value = int(batch_timeout_micros)
    message.max_enqueued_batches.value = int(max_enqueued_batches)
    message.num_batch_threads.value = int(num_batch_threads or os.cpu_count() or 1)
    message.allowed_batch_sizes.extend(sizes)
    message.pad_variable_length_inputs = False
    return message


def batching_parameters_text(message=None, header: Sequence[str] = ()) -> str:
    from google.protobuf import text_format

    message = message if message is not None else batching_parameters()
    lines = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines + [text_format.MessageToString(message).rstrip()]) + "\n"


def parse_batching_parameters(text_or_path: str | os.PathLike):
    """Parses a batching_parameters.txt (text or path) as `BatchingParameters`."""
    from google.protobuf import text_format

    text = _text_of(text_or_path)
    return text_format.Parse(text, batching_parameters_class()())


# ---- command lines ----------------------------------------------------------------------------


@dataclasses.dataclass
class ServerCommand:
    """How to run one TF Serving process for a group of models.

    Args:
        kind: "stock" (tensorflow/serving) or "scann" (the ScaNN-enabled build).
        models: the model names it serves.
        config_file: its `--model_config_file`.
        grpc_port, rest_port: its ports.
        docker: the `docker run` line.
        binary: the `tensorflow_model_server` line (a local build or package).
        warning: caveats to print with it ("" if none).
    """

    kind: str
    models: list[str]
    config_file: Path
    grpc_port: int
    rest_port: int
    docker: str
    binary: str
    warning: str = ""


def _server_flags(config_file: Path, batching_file: Path | None, grpc_port: int,
                  rest_port: int, poll_seconds: int) -> list[str]:
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}",
             f"--model_config_file={config_file}",
             f"--model_config_file_poll_wait_seconds={poll_seconds}"]
    if batching_file is not None:
        flags += ["--enable_batching=true", f"--batching_parameters_file={batching_file}"]
    return flags


def server_command(kind: str, models: Sequence[str], base_dir: Path, config_file: Path,
                   batching_file: Path | None, grpc_port: int, rest_port: int,
                   image: str, poll_seconds: int = 60, tf_version: str = "") -> ServerCommand:
    """The docker and binary command lines for one server (see `ServerCommand`).

    The base dir is bind-mounted at the same absolute path inside the container, so the
    config's absolute base paths are valid on both sides.
    """
    base_dir = Path(base_dir).resolve()
    flags = _server_flags(config_file, batching_file, grpc_port, rest_port, poll_seconds)
    # The image's entrypoint serves on 8500/8501 inside the container; map host ports to them
    # and pass the in-container ports in the flags.
    container_flags = _server_flags(config_file, batching_file, 8500, 8501, poll_seconds)
    docker = " ".join(
        ["docker run --rm", f"-p {grpc_port}:8500", f"-p {rest_port}:8501",
         f"--mount type=bind,source={shlex.quote(str(base_dir))},"
         f"target={shlex.quote(str(base_dir))},readonly", image]
        + [shlex.quote(f) for f in container_flags])
    binary = " ".join(["tensorflow_model_server"] + [shlex.quote(f) for f in flags])
    warning = ""
    if kind == "scann":
        warning = SCANN_WARNING.format(image=image, tf_version=tf_version or "of this export")
    return ServerCommand(kind, list(models), config_file, grpc_port, rest_port, docker, binary,
                         warning)


def write_server_configs(base_dir: str | os.PathLike, models: Sequence[ServableModel] | None
                         = None, *, labels: Mapping[str, Mapping[str, int]] | None = None,
                         num_versions: int = 1, grpc_port: int = 8500, rest_port: int = 8501,
                         scann_grpc_port: int = 8510, scann_rest_port: int = 8511,
                         stock_image: str | None = None, scann_image: str | None = None,
                         batching: Any = None, poll_seconds: int = 60) -> dict[str, Any]:
    """Writes models.config, models.scann.config, batching_parameters.txt and
    serving_commands.txt next to the models; returns their paths, the commands and the models.

    Models with stock ops go to `models.config` (stock TF Serving); models that need ScaNN ops
    go to `models.scann.config` (the ScaNN-enabled build, on its own ports). A file whose group
    is empty is not written (and a stale one is removed).
    """
    base = Path(base_dir).resolve()
    models = list(models) if models is not None else discover_models(base)
    if not models:
        raise FileNotFoundError(f"No exported models under {base} (expected "
                                "<name>/<integer version>/ with saved_model.pb and metadata.json)")
    unknown = sorted(set(labels or {}) - {m.name for m in models})
    if unknown:
        raise ValueError(f"version labels for {unknown}, which are not exported under {base}; "
                         f"models: {[m.name for m in models]}")
    tf_version = next((m.metadata.get("versions", {}).get("tensorflow") for m in models
                       if m.metadata.get("versions", {}).get("tensorflow")), "")
    stock_image = stock_image or f"{STOCK_IMAGE}:{tf_version or 'latest'}"
    scann_image = scann_image or f"{SCANN_IMAGE}:latest"
    batching_path = base / BATCHING_FILE
    batching_text = batching_parameters_text(batching, header=[
        "TF Serving --batching_parameters_file (BatchingParameters text proto), written by",
        "python -m pipelines.export. Batching concatenates requests along dim 0, so clients",
        "must send fixed widths (history padded to metadata.json query_history_len, the same",
        "number of candidates per request); pad_variable_length_inputs would pad with real",
        "values, not \"\", so it stays off."])
    parse_batching_parameters(batching_text)  # what we write must parse
    batching_path.write_text(batching_text, encoding="utf-8")
    groups = {"stock": [m for m in models if not m.requires_scann],
              "scann": [m for m in models if m.requires_scann]}
    files = {"stock": base / STOCK_CONFIG, "scann": base / SCANN_CONFIG}
    ports = {"stock": (grpc_port, rest_port), "scann": (scann_grpc_port, scann_rest_port)}
    images = {"stock": stock_image, "scann": scann_image}
    commands: list[ServerCommand] = []
    written = {"batching_parameters": batching_path}
    for kind in ("stock", "scann"):
        group = groups[kind]
        if not group:
            files[kind].unlink(missing_ok=True)
            continue
        group_labels = {k: v for k, v in (labels or {}).items()
                        if k in {m.name for m in group}}
        config = model_config(group, labels=group_labels, num_versions=num_versions)
        what = ("stock TensorFlow ops: any TF Serving build" if kind == "stock" else
                "ScaNN custom ops: only the ScaNN-enabled TF Serving build loads these")
        text = model_config_text(config, header=[
            f"TF Serving --model_config_file for models with {what}.",
            "Written by python -m pipelines.export; see serving_commands.txt."])
        parse_model_config(text)
        files[kind].write_text(text, encoding="utf-8")
        written[f"{kind}_config"] = files[kind]
        commands.append(server_command(kind, [m.name for m in group], base, files[kind],
                                       batching_path, *ports[kind], image=images[kind],
                                       poll_seconds=poll_seconds, tf_version=tf_version))
    script = ["# Written by python -m pipelines.export. One TF Serving process per group;",
              "# the base dir is mounted at the same absolute path inside the container."]
    for command in commands:
        script += ["", f"## {command.kind} TF Serving: {', '.join(command.models)} "
                   f"(gRPC {command.grpc_port}, REST {command.rest_port})"]
        if command.warning:
            script += [f"# WARNING: {command.warning}"]
        script += ["# docker:", command.docker, "# or a tensorflow_model_server binary:",
                   command.binary]
    commands_path = base / COMMANDS_FILE
    commands_path.write_text("\n".join(script) + "\n", encoding="utf-8")
    written["commands"] = commands_path
    return {"files": written, "commands": commands, "models": models}


# ---- checking an export the way a server would meet it ---------------------------------------


def verify_export(version_dir: str | os.PathLike) -> dict[str, Any]:
    """Checks one version as TF Serving will meet it, without loading the model.

    Checked: metadata.json exists; every serving signature has named inputs and outputs;
    `assets.extra/tf_serving_warmup_requests` exists, at most 1000 records (TF Serving's limit)
    parse as `PredictionLog`s, every signature has at least one, and every record's inputs
    match its signature's input names, dtypes and shapes.

    Returns:
        {"signatures": summaries, "warmup_records": n, "warmup_by_signature": {sig: n},
         "assets": [files in assets/], "requires_scann": bool}

    Raises:
        ValueError / FileNotFoundError: naming the version dir and the first problem.
    """
    from recommenders_tf.serving.warmup import read_warmup_requests, warmup_path

    version_dir = Path(version_dir)
    metadata = read_version_metadata(version_dir)
    if metadata is None:
        raise FileNotFoundError(f"{version_dir} has no metadata.json")
    summaries = check_signatures(version_dir)
    defs = read_signature_defs(version_dir)
    path = warmup_path(version_dir)
    if not path.exists():
        raise FileNotFoundError(f"{version_dir} has no warmup file ({path.relative_to(version_dir)})")
    records = read_warmup_requests(path)
    if not records:
        raise ValueError(f"{path} holds no records")
    if len(records) > 1000:
        raise ValueError(f"{path} holds {len(records)} records; TF Serving reads at most 1000")
    counts: dict[str, int] = {}
    for i, record in enumerate(records):
        sig = defs.get(record.signature_name)
        if sig is None:
            raise ValueError(f"{path}: record {i} names signature {record.signature_name!r}, "
                             f"not one of {sorted(defs)}")
        sent, want = set(record.inputs), set(sig.inputs)
        if sent != want:
            raise ValueError(f"{path}: record {i} ({record.signature_name}) sends inputs "
                             f"{sorted(sent)} but the signature takes {sorted(want)}")
        for name, info in sig.inputs.items():
            proto = record.request.inputs[name]
            if proto.dtype != info.dtype:
                raise ValueError(f"{path}: record {i} input {name} is {dtype_name(proto.dtype)}"
                                 f", the signature wants {dtype_name(info.dtype)}")
            shape, got = shape_list(info.tensor_shape), record.inputs[name].shape
            if shape is not None and (len(shape) != len(got) or any(
                    s >= 0 and s != g for s, g in zip(shape, got))):
                raise ValueError(f"{path}: record {i} input {name} has shape {list(got)}, the "
                                 f"signature wants {shape}")
        counts[record.signature_name] = counts.get(record.signature_name, 0) + 1
    uncovered = sorted(set(summaries) - set(counts))
    if uncovered:
        raise ValueError(f"{path} has no warmup request for signatures {uncovered}")
    assets = sorted(p.name for p in (version_dir / "assets").iterdir()) \
        if (version_dir / "assets").is_dir() else []
    return {"signatures": summaries, "warmup_records": len(records),
            "warmup_by_signature": counts, "assets": assets,
            "requires_scann": requires_scann(version_dir, metadata)}
