"""`tf.saved_model.save` for modules that hold tf-keras layers, without the layers' traces.

Saving a `tf.Module` that holds Keras layers makes tf-keras trace every layer's `call` (with
and without `training`, plus its loss and activity functions) so that `tf.keras.models.
load_model` could rebuild each layer. Nothing here loads an export that way: TF Serving and
`tf.saved_model.load` only run the module's own signatures and restore its variables and
tables, which are saved either way. Skipping the traces is what `save_traces=False` does for
`Model.save`; on a cascade export it halves the save time and shrinks the SavedModel.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Mapping, Optional

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf


def _keras_traces_off():
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:  # another tf-keras layout: save with the traces, slower but correct
        return contextlib.nullcontext()
    return keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)


def save(obj: tf.Module, path: str | os.PathLike, signatures: Optional[Mapping[str, Any]] = None,
         options: Optional[tf.saved_model.SaveOptions] = None) -> None:
    """`tf.saved_model.save(obj, path, signatures, options)` without Keras layer traces."""
    with _keras_traces_off():
        tf.saved_model.save(obj, str(path), signatures=signatures, options=options)
