"""Writing a SavedModel whose signatures are the whole interface: no tf-keras layer traces.

`tf.saved_model.save` on a module that holds tf-keras layers also traces every layer's `call`
(and its losses) so the layers can be revived as Keras objects. Our exports are served and
reloaded through their own signatures and tf.functions only (`serving.client.load_savedmodel`,
`index.candidate_store.load_tower`, TF Serving); the extra traces cost most of an export's
time (a cascade export 39-53 s -> 25 s, a ranking export 2.7 -> 1.3 CPU-s measured here),
enlarge the files and slow every load, for objects nothing calls. tf-keras turns them off
with `save_traces=False` on `Model.save`; `tf.saved_model.save` has no such argument, so the
same switch is set through the scope tf-keras itself uses.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Optional

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

try:  # tf-keras 2.x keeps the switch in its legacy SavedModel utilities
    from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
except ImportError:  # pragma: no cover - another Keras: save with its defaults
    keras_option_scope = None


@contextlib.contextmanager
def without_layer_traces() -> Iterator[None]:
    """Keras layers saved inside this scope keep their variables but not their call traces."""
    if keras_option_scope is None:  # pragma: no cover
        yield
        return
    with keras_option_scope(save_traces=False, in_tf_saved_model_scope=True):
        yield


def save(module: Any, path: str, signatures: Optional[Mapping[str, Any]] = None,
         options: Optional[tf.saved_model.SaveOptions] = None) -> None:
    """`tf.saved_model.save` without the layer traces (see the module docstring)."""
    with without_layer_traces():
        tf.saved_model.save(module, path, signatures=dict(signatures or {}) or None,
                            options=options)
