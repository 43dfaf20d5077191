"""Serving: SavedModel exports in TF Serving layout, warmup files, server configs, clients.

* `contract`: the one definition of what exports answer to and clients send: signature and
  input names, their specs, the "" padding id and how it is read, metadata and warmup file
  names, the model-name rule.
* `export` / `ranking_export`: `export_retrieval`, `export_ranking`, and `save_export`, the
  shared machinery any export (the cascade too) goes through: signature checks, vocabularies
  in `assets/`, warmup, metadata.json, atomic integer versions.
* `warmup`: `write_warmup_requests(path, model_name, requests)`, `read_warmup_requests(path)`.
* `server_config`: `discover_models(base_dir)`, `models.config` / `batching_parameters.txt`
  writers and parsers, TF Serving command lines.
* `client`: `RestClient`, `GrpcClient`, `ServingError`, request builders, `load_export`.

The loopback TF-Serving-compatible test server is a fixture, not part of serving:
`recommenders_tf.testing.local_server.LocalModelServer`.

Names are resolved lazily so that building a REST body does not import TensorFlow.
"""
import importlib

_EXPORTS = {
    "export_retrieval": "export",
    "export_ranking": "ranking_export",
    "save_export": "export",
    "publish_version": "export",
    "existing_versions": "export",
    "find_vocabularies": "export",
    "write_warmup_requests": "warmup",
    "read_warmup_requests": "warmup",
    "batched_requests": "warmup",
    "example_inputs": "warmup",
    "replay_warmup": "warmup",
    "discover_models": "server_config",
    "write_server_configs": "server_config",
    "parse_model_config": "server_config",
    "read_signature_defs": "server_config",
    "build_rest_request": "client",
    "build_grpc_request": "client",
    "rest_predict_url": "client",
    "load_export": "client",
    "load_savedmodel": "client",
    "read_metadata": "client",
    "resolve_version_dir": "client",
    "ExportedRetrieval": "client",
    "RestClient": "client",
    "GrpcClient": "client",
    "ServingError": "client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
