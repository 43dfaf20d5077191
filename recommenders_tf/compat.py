"""The one place that makes TensorFlow Ranking importable on TensorFlow >= 2.16.

tensorflow-ranking 0.5.5 (its last release) imports `tensorflow.estimator` at module level for
its Estimator API, which TensorFlow removed in 2.16. We only use its Keras losses and metrics,
which never touch the Estimator, so a stub module stands in for `tensorflow.estimator` during
the import. The stub provides the constants read at import time (`ModeKeys`) and turns any
Estimator-API call into a clear error instead of a silent misbehaviour.

Everything in this package imports TF-Ranking as `from recommenders_tf.compat import tfr`.
"""
from __future__ import annotations

import sys
import types

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf


class _ModeKeys:
    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"


class EstimatorUnavailableError(RuntimeError):
    pass


def _unavailable(name: str):
    def _raise(*args, **kwargs):
        raise EstimatorUnavailableError(
            f"tf.estimator.{name} was removed in TensorFlow 2.16; recommenders_tf only "
            "supports TF-Ranking's Keras API (losses, metrics, layers)."
        )

    return _raise


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(name)


def _estimator_stub() -> types.ModuleType:
    stub = _StubModule("tensorflow.estimator")
    stub.ModeKeys = _ModeKeys
    export = _StubModule("tensorflow.estimator.export")
    stub.export = export
    return stub


def _import_tensorflow_ranking():
    has_estimator = True
    try:
        import tensorflow.estimator  # noqa: F401
    except ImportError:
        has_estimator = False
    if not has_estimator:
        stub = _estimator_stub()
        sys.modules.setdefault("tensorflow.estimator", stub)
        sys.modules.setdefault("tensorflow.compat.v1.estimator", stub)
        # `from tensorflow import estimator` reads the attribute, not sys.modules.
        if not hasattr(tf, "estimator"):
            tf.estimator = stub
        if not hasattr(tf.compat.v1, "estimator"):
            tf.compat.v1.estimator = stub
    import tensorflow_ranking

    return tensorflow_ranking


tfr = _import_tensorflow_ranking()

__all__ = ["tfr", "EstimatorUnavailableError"]
