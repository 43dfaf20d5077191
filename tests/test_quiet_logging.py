"""Importing recommenders_tf sets quiet TensorFlow logging defaults and respects the user's.

Each case runs in a fresh interpreter, because TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when
it loads.
"""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's C++ log line: "2024-01-01 12:00:00.000000: I tensorflow/core/...".
CPP_INFO_OR_WARNING = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+: [IW] ", re.M)

SAVE_A_SUBCLASSED_MODEL = textwrap.dedent("""
    import logging, os, sys, tempfile
    import recommenders_tf
    import tensorflow as tf

    class Scale(tf.keras.Model):
        def __init__(self, settings):  # not serializable: tf-keras warns when saving
            super().__init__()
            self.settings = settings
            self.dense = tf.keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, x):
            return {"y": self(x)}

    model = Scale(settings=object())
    model(tf.zeros([1, 2]))
    tf.saved_model.save(model, tempfile.mkdtemp(), signatures={"serving_default": model.serve})
    logging.getLogger("tensorflow").warning("a warning that must still show")
    print("level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
    print("sum", float(tf.reduce_sum(tf.constant([1.0, 2.0]))))
""")


def _run(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_default_hides_cpp_startup_lines_and_the_keras_config_warning_only():
    proc = _run(SAVE_A_SUBCLASSED_MODEL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["level 2", "sum 3.0"]
    assert not CPP_INFO_OR_WARNING.search(proc.stderr), proc.stderr[-3000:]
    assert "non-serializable" not in proc.stderr
    assert "a warning that must still show" in proc.stderr


def test_the_users_own_level_is_kept():
    proc = _run("import os, recommenders_tf, tensorflow as tf\n"
                "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), float(tf.constant(1.0) + 1))",
                TF_CPP_MIN_LOG_LEVEL="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "2.0"]
    # Level 0 lets TensorFlow's start-up INFO lines through (CUDA stub or devices, CPU features).
    assert CPP_INFO_OR_WARNING.search(proc.stderr), proc.stderr[-3000:]
