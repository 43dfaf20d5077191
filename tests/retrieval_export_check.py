"""Reads back a `pipelines.train_retrieval` export in a process of its own, as a server would.

    python tests/retrieval_export_check.py RUN_DIR K OUT.json

Loads `RUN_DIR/candidate_store` (`CandidateStore.load`) and its two tower SavedModels
(`load_tower`: plain `tf.saved_model.load`, no Keras model and no cluster), then writes to
OUT.json what the tests compare with the run that wrote them:

  candidate_max_abs_diff   largest |candidate tower(store ids) - stored embeddings|
  catalogue                the store's ids
  top                      {user: K best ids}, for the first P1 test users, train items excluded
  test                     P1 test metrics of the exported towers (`TopKEvaluator`, the train
                           histories the pipeline scores with), to match the run's metrics.json

It reads the dataset and split seed from the run's config.yaml, so it needs nothing else.
"""
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recommenders_tf.data import load_dataset, temporal_split  # noqa: E402
from recommenders_tf.data.datasets import PAD, user_history  # noqa: E402
from recommenders_tf.evaluation.protocol import TopKEvaluator  # noqa: E402
from recommenders_tf.index.candidate_store import CandidateStore, load_tower  # noqa: E402
from recommenders_tf.runs import read_run_config  # noqa: E402

USERS_SHOWN = 20


def check(run_dir: str, k: int) -> dict:
    config = read_run_config(run_dir)
    towers = json.loads(open(os.path.join(run_dir, "towers.json")).read())
    store_dir = os.path.join(run_dir, towers["candidate_store"])
    store = CandidateStore.load(store_dir)
    query = load_tower(os.path.join(store_dir, "query_tower"))
    candidate = load_tower(os.path.join(store_dir, "candidate_tower"))

    data = load_dataset(config["dataset"])
    split = temporal_split(data.interactions, seed=config["seed"], dataset=data.name)
    ids = store.ids.tolist()
    features = {"item_id": ids}
    if "item_genres" in towers["candidate_features"]:
        features["item_genres"] = data.items.set_index("item_id").genres.loc[ids].tolist()
    embedded = np.asarray(candidate(features))

    history_len = int(towers["history_len"])
    known = user_history(split.train, history_len)
    rows = pd.Index(known["user_id"])

    def queries(users) -> np.ndarray:
        history = np.full((len(users), history_len), PAD, dtype=object)
        pos = rows.get_indexer(users)
        history[pos >= 0] = known["history"][pos[pos >= 0]]
        return np.asarray(query({"user_id": list(users), "history": history.tolist()}))

    evaluator = TopKEvaluator(split.train, split.test, ks=(10, 50))
    columns = pd.Index(ids).get_indexer(evaluator.item_ids)
    if (columns < 0).any():
        raise ValueError(f"{store_dir} lacks train items {evaluator.item_ids[columns < 0][:5]}")
    candidates = store.embeddings[columns].astype(np.float64)
    test = evaluator.evaluate(
        lambda users: queries(users).astype(np.float64) @ candidates.T).metrics

    users = evaluator.user_ids[:USERS_SHOWN]
    scores = queries(users).astype(np.float64) @ store.embeddings.astype(np.float64).T
    seen = split.train.groupby("user_id").item_id.agg(set)
    top = {}
    for user, row in zip(users, scores):
        order = [ids[j] for j in np.argsort(-row, kind="stable")]
        top[str(user)] = [i for i in order if i not in seen.get(user, set())][:k]
    return {"candidate_max_abs_diff": float(np.abs(embedded - store.embeddings).max()),
            "catalogue": ids, "top": top, "test": {m: float(v) for m, v in test.items()}}


if __name__ == "__main__":
    run_dir, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(out, "w") as f:
        json.dump(check(run_dir, k), f)
