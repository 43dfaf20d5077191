"""Exports called in a fresh process: single-user request latency, and the reload check a
pipeline runs after exporting.

Loading a SavedModel registers its functions (and their constant tables) in the process's
TensorFlow runtime for good; loaded in the exporting process, a 200,000-item cascade stayed
resident beside the fitted one. The process imports TensorFlow (and ScaNN's ops when the
export needs them) and loads the SavedModel the way a server would; the first call, which
builds the graph's caches, is reported apart from the p50/p99 of the others.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from recommenders_tf.data.schema import ITEM_ID, USER_ID
from recommenders_tf.serving.contract import (METADATA_FILE, PAD, SERVING_DEFAULT,
                                              WITH_EXCLUSIONS)

_LATENCY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import recommenders_tf
    import tensorflow as tf
    args = json.loads(sys.stdin.read())
    meta = json.load(open(args["metadata"]))
    start = time.perf_counter()
    if meta["requires_scann_ops"]:
        import scann
    loaded = tf.saved_model.load(args["path"])
    fn = loaded.signatures[args["signature"]]
    load_s = time.perf_counter() - start
    times = []
    for i, (user, hist, excl) in enumerate(zip(args["users"], args["history"], args["exclude"])):
        feed = dict(user_id=tf.constant([user]), history=tf.constant([hist]),
                    exclude_item_ids=tf.constant([excl]))
        t = time.perf_counter()
        out = fn(**feed)
        out["item_ids"].numpy()
        if i:  # the first call builds the graph's caches: report it apart
            times.append(time.perf_counter() - t)
        else:
            first = time.perf_counter() - t
    ms = np.array(times) * 1000
    print(json.dumps({"load_seconds": load_s, "first_call_ms": first * 1000,
                      "latency_p50_ms": float(np.percentile(ms, 50)),
                      "latency_p99_ms": float(np.percentile(ms, 99)),
                      "latency_mean_ms": float(ms.mean()), "requests": len(ms)}))
""")


def measure_latency(path: Path, users: List[str], histories: List[List[str]],
                    exclude: List[List[str]]) -> Dict[str, float]:
    """Single-user request latency of an exported cascade, loaded in a fresh process."""
    payload = json.dumps({"path": str(path), "metadata": str(Path(path) / METADATA_FILE),
                          "signature": WITH_EXCLUSIONS, "users": users, "history": histories,
                          "exclude": exclude})
    return _run_script(_LATENCY_SCRIPT, payload, f"latency run on {path}")


def _run_script(script: str, payload: str, what: str) -> Dict[str, Any]:
    """Runs `script` in a new Python process with `payload` on stdin; its last stdout line,
    parsed as JSON. Raises with the child's error output if it fails."""
    proc = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_CALL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import recommenders_tf
    import tensorflow as tf
    from recommenders_tf.serving.client import load_savedmodel
    args = json.loads(sys.stdin.read())
    start = time.perf_counter()
    loaded, _, _ = load_savedmodel(args["path"])
    fn = loaded.signatures[args["signature"]]
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    out = fn(user_id=tf.constant(args["users"]), history=tf.constant(args["history"]))
    ids = out["item_ids"].numpy()
    print(json.dumps({"load_seconds": round(load_s, 3),
                      "call_seconds": round(time.perf_counter() - start, 3),
                      "top": [[v.decode() for v in row] for row in ids]}))
""")


def call_in_fresh_process(path: Path, users: Sequence[str], histories: np.ndarray,
                          signature: str = SERVING_DEFAULT) -> Dict[str, Any]:
    """Loads an export in a new process as a server would and calls `signature` on `users`
    with their `histories` ([users, width] ids); returns load and call seconds and each
    user's top ids (`top`). Raises with the child's error if the export does not load or
    answer."""
    histories = np.asarray(histories).astype(str).reshape(len(users), -1)
    payload = json.dumps({"path": str(path), "signature": signature,
                          "users": [str(u) for u in users], "history": histories.tolist()})
    return _run_script(_CALL_SCRIPT, payload, f"reloading and calling {path}")


def recommend_requests(train: pd.DataFrame, test: pd.DataFrame,
                       histories_for: Callable[[np.ndarray], np.ndarray], users: int, seed: int
                       ) -> Tuple[List[str], List[List[str]], List[List[str]]]:
    """The requests `pipelines.recommend` sends for a seeded sample of `users` test users:
    (user ids, their histories from `histories_for`, every train item of theirs excluded,
    padded to one width)."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(sorted(test[USER_ID].astype(str).unique()), dtype=object)
    ids = ids[np.sort(rng.permutation(len(ids))[:users])]
    seen = train.groupby(train[USER_ID].astype(str))[ITEM_ID].agg(
        lambda s: list(dict.fromkeys(s.astype(str))))
    width = max(len(seen.get(u, [])) for u in ids)
    exclude = [(seen.get(u, []) + [PAD] * width)[:width] for u in ids]
    return list(ids), histories_for(ids).astype(str).tolist(), exclude
