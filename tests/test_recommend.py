"""pipelines.recommend run as a command (both runs in one fresh process) against tiny exports:
the user's history read from a dataset's train part, seen items excluded through the exclusion
signature, the answer equal to the exact top k of the towers, and the printed REST body and curl
line."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

from pipelines import recommend
from recommenders_tf.data import load_dataset, split_for_protocol
from recommenders_tf.index import ScannParams, build_index
from recommenders_tf.serving.client import build_rest_request
from recommenders_tf.serving.export import export_retrieval
from tiny_retrieval import (ITEM_GENRES, ITEM_TITLES, ITEMS, GenreCandidateTower,
                            GenreQueryTower, item_features, write_interactions)

REPO = Path(__file__).resolve().parents[1]
K, W = 5, 12
SCANN_HISTORY = ["i000", "i003", "i006"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    query, candidate = GenreQueryTower(), GenreCandidateTower()
    embeddings = candidate(item_features(ITEMS, ITEM_TITLES, ITEM_GENRES)).numpy()
    bf = build_index("bruteforce", query, ITEMS, embeddings, k=K)
    sc = build_index("scann", query, ITEMS, embeddings, k=K, scann_params=ScannParams(
        num_leaves=10, num_leaves_to_search=10, num_reordering_candidates=60))
    paths = {kind: export_retrieval(query, index, base_dir=root / "saved_models", k=K,
                                    exclusion_width=W) for kind, index in
             (("bruteforce", bf), ("scann", sc))}
    interactions = write_interactions(root / "interactions.csv")
    return dict(root=root, paths=paths, query=query, embeddings=embeddings,
                dataset=f"file:{interactions}")


def exact_top_k(exports, user, history, exclude, k=K):
    query = exports["query"]({"user_id": tf.constant([user]),
                              "history": tf.constant([history or [""]])}).numpy()[0]
    scores = exports["embeddings"] @ query
    order = [i for i in np.argsort(-scores, kind="stable") if ITEMS[i] not in set(exclude)]
    return [ITEMS[i] for i in order[:k]]


# Runs `python -m pipelines.recommend` once per argument list, one after the other, in ONE
# fresh interpreter (TensorFlow's start-up is most of a run's cost): runpy executes the module
# as __main__ exactly as `-m` does, with sys.argv set and stdout captured per run.
CLI_RUNS = textwrap.dedent("""
    import contextlib, io, json, runpy, sys
    runs_file, stdouts_file = sys.argv[1:]
    runs = json.load(open(runs_file))
    stdouts = []
    for args in runs:
        sys.argv = ["pipelines.recommend", *args]
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            runpy.run_module("pipelines.recommend", run_name="__main__", alter_sys=True)
        stdouts.append(captured.getvalue())
    json.dump(stdouts, open(stdouts_file, "w"))
""")


@pytest.fixture(scope="module")
def cli(exports, tmp_path_factory):
    """{run: (stdout, output_json)} of the command-line runs the CLI tests check. The
    BruteForce run goes first, so its `scann_imported` is read before anything imported scann.
    """
    work = tmp_path_factory.mktemp("recommend_cli")
    runs = {
        "dataset": ["--export", str(exports["paths"]["bruteforce"].parent),  # model dir
                    "--user-id", "u3", "--dataset", exports["dataset"],
                    "--set", "history_len=4"],
        "scann": ["--export", str(exports["paths"]["scann"]), "--user-id", "u0",
                  "--history", ",".join(SCANN_HISTORY)],
    }
    argv = [args + ["--set", f"output_json={work / name}.json"] for name, args in runs.items()]
    (work / "runs.json").write_text(json.dumps(argv))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", CLI_RUNS, str(work / "runs.json"),
                           str(work / "stdout.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdouts = json.loads((work / "stdout.json").read_text())
    return {name: (stdout, json.loads((work / f"{name}.json").read_text()))
            for name, stdout in zip(runs, stdouts)}


@pytest.mark.slow
def test_cli_reads_history_from_dataset_and_excludes_seen(exports, cli):
    stdout, got = cli["dataset"]
    train = split_for_protocol("P1", load_dataset(exports["dataset"])).train
    seen = train[train.user_id == "u3"].sort_values("timestamp").item_id.tolist()
    assert len(seen) == 7  # 8 interactions, the last one is the P1 test item
    assert got["history"] == seen[-4:] and got["excluded"] == seen
    assert got["signature"] == "recommend_with_exclusions" and got["scann_imported"] is False
    ids = [r["item_id"] for r in got["recommendations"]]
    # u3's favourite genre is Action (3 % 3 == 0): the exact top 5 among unseen items.
    assert ids == exact_top_k(exports, "u3", seen[-4:], seen)
    assert all("Action" in ITEM_GENRES[ITEMS.index(i)] for i in ids)
    assert not set(ids) & set(seen)
    assert got["rest_body"] == build_rest_request("u3", seen[-4:], exclude_item_ids=seen)
    assert got["rest_body"]["instances"][0]["exclude_item_ids"] == seen  # no padding needed
    assert got["rest_url"] == "http://localhost:8501/v1/models/retrieval_bruteforce:predict"
    assert "curl -s -X POST -H 'Content-Type: application/json' -d '{\"signature_name\": " \
           "\"recommend_with_exclusions\"" in stdout
    assert stdout.rstrip().endswith(got["rest_url"])
    assert f"   1  {ids[0]}" in stdout


@pytest.mark.slow
def test_cli_scann_export_with_history_on_the_command_line(exports, cli):
    history = SCANN_HISTORY
    _, got = cli["scann"]
    assert got["index_type"] == "scann" and got["scann_imported"] is True
    assert got["excluded"] == history
    ids = [r["item_id"] for r in got["recommendations"]]
    assert len(ids) == K and not set(ids) & set(history)
    # All 10 leaves are searched with exact reordering: ScaNN returns the exact answer here.
    assert ids == exact_top_k(exports, "u0", history, history)


def test_in_process_without_exclusions_and_window_note(exports):
    # 13 distinct seen ids (i000 seen again last), more than the export's warmup width of 12:
    # exports take any exclusion width, so every distinct seen id is excluded, oldest first.
    seen = [f"i{i:03d}" for i in range(0, 39, 3)] + ["i000"]
    got = recommend.main(recommend.RecommendConfig(
        export=str(exports["paths"]["bruteforce"]), user_id="u0", history=tuple(seen)))
    assert got["excluded"] == [f"i{i:03d}" for i in range(3, 39, 3)] + ["i000"]
    assert len(got["notes"]) == 1
    ids = [r["item_id"] for r in got["recommendations"]]
    assert ids == exact_top_k(exports, "u0", seen[-20:], got["excluded"])
    plain = recommend.main(recommend.RecommendConfig(
        export=str(exports["paths"]["bruteforce"]), user_id="u0", history=tuple(seen),
        exclude_seen=False, history_len=3))
    assert plain["signature"] == "serving_default" and plain["excluded"] is None
    assert plain["history"] == seen[-3:]
    assert [r["item_id"] for r in plain["recommendations"]] == exact_top_k(
        exports, "u0", seen[-3:], [])
    assert [r["seen"] for r in plain["recommendations"]] == [
        r["item_id"] in seen for r in plain["recommendations"]]
    with pytest.raises(ValueError, match="Pass --user-id"):
        recommend.main(recommend.RecommendConfig(export=str(exports["paths"]["bruteforce"])))
