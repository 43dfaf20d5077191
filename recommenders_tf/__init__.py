"""recommenders-tf: a large-model-enhanced, multi-stage recommender on TensorFlow Recommenders.

TFRS 0.7.7 and TF-Ranking speak `tf.keras` (Keras 2). On TF >= 2.16 `tf.keras` is Keras 3
unless `TF_USE_LEGACY_KERAS=1` is set *before* TensorFlow is first imported, so this package
sets it at import time and refuses to run on top of a TensorFlow already bound to Keras 3.
"""
import os
import sys

__version__ = "0.1.0"


class KerasVersionError(RuntimeError):
    """TensorFlow was imported with Keras 3 before recommenders_tf could select tf-keras."""


def _select_legacy_keras() -> None:
    already = "tensorflow" in sys.modules
    if not already:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        return
    # TensorFlow decides which Keras backs `tf.keras` lazily, from the environment variable
    # as it is on first access; if that happened without the variable we cannot undo it.
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        return
    raise KerasVersionError(
        "TensorFlow was imported before recommenders_tf without TF_USE_LEGACY_KERAS=1, so "
        "tf.keras is Keras 3, which TensorFlow Recommenders and TF-Ranking cannot use. "
        "Import recommenders_tf before tensorflow, or set TF_USE_LEGACY_KERAS=1 in the "
        "environment (or via os.environ) before the first `import tensorflow`."
    )


_select_legacy_keras()
