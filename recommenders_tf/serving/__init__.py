"""Serving: atomic SavedModel export in TF Serving layout, warmup, and client helpers.

`export_retrieval` (in `export`, imports TensorFlow) writes `saved_models/<name>/<version>/`;
`build_rest_request`, `build_grpc_request` and `load_export` (in `client`) talk to it. Names
are resolved lazily so that building a REST body does not import TensorFlow.
"""
import importlib

_EXPORTS = {
    "export_retrieval": "export",
    "export_ranking": "ranking_export",
    "publish_version": "export",
    "existing_versions": "export",
    "build_rest_request": "client",
    "build_grpc_request": "client",
    "rest_predict_url": "client",
    "load_export": "client",
    "read_metadata": "client",
    "resolve_version_dir": "client",
    "ExportedRetrieval": "client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
