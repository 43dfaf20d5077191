"""Ranking export: versioned atomic layout, metadata, and a fresh-process reload that matches."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from recommenders_tf.models.ranking import RankingConfig, build_ranking_model
from recommenders_tf.serving.ranking_export import export_ranking

USERS = ["u1", "u2", "u3"]
ITEMS = ["i1", "i2", "i3", "i4"]
GENRES = {"i1": "Action|Drama", "i2": "Comedy", "i3": "", "i4": "Drama"}
REQUEST = {
    "user_id": ["u1", "stranger"],
    "history": [["", "i2", "i3"], ["", "", "ghost"]],
    "item_ids": [["i1", "i4", "brand-new", ""], ["i2", "i3", "i1", "i4"]],
}


def _model(loss="mse"):
    config = RankingConfig(loss=loss, embedding_dim=8, id_embedding_dim=8,
                           feature_embedding_dim=4, deep_dims=(8,), din_units=4, history_len=3,
                           seed=3)
    model = build_ranking_model(config, USERS, ITEMS, item_genres=GENRES, label_mean=3.5,
                                user_features={"gender": {"u1": "F", "u2": "M"}})
    return model


def _in_memory(model):
    scores = model({"user_id": tf.constant(REQUEST["user_id"]),
                    "history": tf.constant(REQUEST["history"]),
                    "item_id": tf.constant(REQUEST["item_ids"])}).numpy()
    return np.where(np.array(REQUEST["item_ids"]) == "", -np.inf, scores)


@pytest.mark.slow
def test_export_reloads_in_a_fresh_process_with_matching_scores(tmp_path):
    model = _model()
    expected = _in_memory(model)
    path = export_ranking(model, tmp_path, metadata={"dataset": "tiny"},
                          example_item_ids=ITEMS[:2])
    assert path == tmp_path / "ranking" / "1"
    assert sorted(p.name for p in (tmp_path / "ranking").iterdir()) == ["1"]  # no temp left
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["loss"] == "mse" and meta["loss_mode"] == "pointwise"
    assert meta["score_kind"] == "predicted rating" and meta["history_len"] == 3
    assert meta["dataset"] == "tiny"
    assert set(meta["signatures"]["serving_default"]["inputs"]) == {"user_id", "history",
                                                                    "item_ids"}
    assert (path / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    # A second export is the next version; the first is untouched.
    assert export_ranking(model, tmp_path).name == "2"

    code = textwrap.dedent(f"""
        import json, sys
        # TF Serving has no Keras: the export must load and run without one (and TensorFlow
        # starts 2-3 s sooner when it cannot pre-import Keras).
        sys.modules["keras"] = sys.modules["tf_keras"] = None
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(path)!r})
        fn = loaded.signatures["serving_default"]
        req = json.loads({json.dumps(json.dumps(REQUEST))})
        out = fn(user_id=tf.constant(req["user_id"]), history=tf.constant(req["history"]),
                 item_ids=tf.constant(req["item_ids"]))
        print("INPUTS", sorted(fn.structured_input_signature[1]))
        print("SCORES", json.dumps(out["scores"].numpy().astype(float).tolist()))
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)  # a plain TensorFlow process, as a server would be
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in proc.stdout.splitlines()
             if line.startswith(("INPUTS", "SCORES"))}
    assert lines["INPUTS"] == "['history', 'item_ids', 'user_id']"
    got = np.array(json.loads(lines["SCORES"]), dtype=float)  # json reads -Infinity
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The unknown item ("brand-new") and the unknown user get finite scores; "" is -inf.
    assert np.isfinite(got[0, :3]).all() and np.isfinite(got[1]).all()
    assert np.isneginf(got[0, 3])


def test_export_rejects_bad_names_and_reserved_metadata(tmp_path):
    model = _model("softmax")
    with pytest.raises(ValueError, match="one path component"):
        export_ranking(model, tmp_path, name="../x")
    with pytest.raises(ValueError, match="written by export_ranking"):
        export_ranking(model, tmp_path, metadata={"loss": "other"})
    with pytest.raises(TypeError, match="RankingModel"):
        export_ranking(object(), tmp_path)
    assert not (tmp_path / "ranking").exists() or not any((tmp_path / "ranking").iterdir())
