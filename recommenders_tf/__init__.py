"""recommenders-tf: a large-model-enhanced, multi-stage recommender on TensorFlow Recommenders.

TFRS 0.7.7 and TF-Ranking speak `tf.keras` (Keras 2). On TF >= 2.16 `tf.keras` is Keras 3
unless `TF_USE_LEGACY_KERAS=1` is set *before* TensorFlow is first imported, so this package
sets it at import time and refuses to run on top of a TensorFlow already bound to Keras 3.

It also sets quiet logging defaults, so a run shows its progress and results rather than
TensorFlow's chatter: `TF_CPP_MIN_LOG_LEVEL=2` (C++ errors only) unless the environment already
sets it, and a filter on the "tensorflow" logger that drops tf-keras' "non-serializable objects"
warning repeated at every SavedModel export (remove `NOISE_FILTER` from that logger to see it).
"""
import logging
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

# Read by TensorFlow when it loads, hence here: it hides the INFO/WARNING start-up lines (CUDA
# stub, cpu_feature_guard, oneDNN notes) and keeps C++ errors. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_KERAS_NO_CONFIG = "Model's `__init__()` arguments contain non-serializable objects"


class _KerasConfigNoise(logging.Filter):
    """Drops tf-keras' warning that a subclassed Model has no `get_config()`.

    Saving a SavedModel asks every subclassed Keras model for its config; ours take towers and
    config objects, so each export logs the warning about a dozen times. The exports are served
    and reloaded through their signatures, never rebuilt from a Keras config, so it says nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_KERAS_NO_CONFIG)


NOISE_FILTER = _KerasConfigNoise()
# tf-keras logs through TensorFlow's Python logger, which is this same named logger.
logging.getLogger("tensorflow").addFilter(NOISE_FILTER)
