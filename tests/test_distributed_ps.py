"""Parameter-server training: `pipelines.train_retrieval --strategy parameter_server` on one
coordinator, two workers and two parameter servers, local processes talking gRPC on
127.0.0.1, against the same command on one machine.

Every process runs the pipeline with its own TF_CONFIG (`tests/distributed_worker.py`, forked
from a server that imported TensorFlow once): on the worker and ps tasks `make_strategy` turns
the process into a `tf.distribute.Server` that never returns, the coordinator (`chief`) trains,
evaluates and exports. The one-machine reference runs in the test process meanwhile; the
export is then read back by a plain `python` process with no cluster
(`tests/retrieval_export_check.py`).
"""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401

import distributed_worker
from pipelines.run_all import RunAllConfig
from pipelines.train_ranking import TrainRankingConfig
from pipelines.train_retrieval import main, parse_args
from recommenders_tf.config import ConfigError
from recommenders_tf.features.vocab import load_vocabularies
from recommenders_tf.models.distribute import (local_ports, make_strategy,
                                               read_parameter_server_config,
                                               run_server_if_needed)

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "retrieval_synthetic_tiny.yaml"
# As in test_distributed_training: two epochs of selection, then the refit.
FLAGS = ["--config", str(TINY_YAML), "--set", "retrieval.epochs=2",
         "--set", "recall_curve_max_k=10"]
# synthetic-tiny's tables are about 150 rows x 16 floats (9.6 KB): shards of at least 4 KiB
# split each of them in two, while the next largest variable (16 x 16 floats, 1 KiB) stays
# whole. At the default 256 KiB nothing this small would be split.
SHARD_BYTES = 4096
PS_TASKS = 2
# Asynchronous steps (each applies gradients computed on slightly older variables) and each
# worker's own random batch order make the run one draw among many: fourteen parameter-server
# runs of these two epochs gave P1 NDCG@10 0.19-0.30 against 0.29-0.30 on one machine (whose
# own seeds 0-4 span 0.214-0.302). One draw cannot be held to the one-machine figure without
# failing now and then, so the test asks for learning: random scores 0.057 (0.073 at most over
# five draws) and the untrained towers 0.066 on this split (most-popular 0.179).
NDCG_FLOOR = 0.12
K = 10
# A hung cluster (a server that never came up) fails the test instead of blocking it; the run
# itself takes under a minute.
TIMEOUT_SECONDS = 180



@pytest.fixture(scope="module")
def fork_server():
    """The preloading server of `distributed_worker.start_worker`, stopped after the module."""
    yield
    distributed_worker.stop_fork_server()


def _cluster(ports):
    addresses = [f"127.0.0.1:{p}" for p in ports]
    return {"chief": addresses[:1], "worker": addresses[1:3], "ps": addresses[3:5]}


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _start(tmp_path: Path, name: str, flags, cluster: dict, job: str, index: int,
           form: str = "--"):
    """One task running `distributed_worker` in `form` ("--" train_retrieval, "--ranking",
    "--run-all") with `flags`."""
    return distributed_worker.start_worker(
        tmp_path / f"{name}.npz", [form, *flags],
        {"cluster": cluster, "task": {"type": job, "index": index}}, tmp_path / f"{name}.log")


def _start_cluster(tmp_path: Path, flags, cluster: dict, procs: dict,
                   form: str = "--") -> None:
    """Starts ps, workers and the coordinator (in that order) into `procs`, name -> Process;
    the coordinator is "chief0"."""
    for job in ("ps", "worker", "chief"):
        for index in range(len(cluster[job])):
            procs[f"{job}{index}"] = _start(tmp_path, f"{job}{index}", flags, cluster, job,
                                            index, form)


def _wait_for_coordinator(tmp_path: Path, procs: dict, name: str, timeout: float) -> dict:
    """The results of coordinator `name` once it exits 0; fails on its error, on a server
    that exits (they serve until killed) or on the timeout."""
    deadline = time.monotonic() + timeout
    coordinator = procs[name]
    while coordinator.exitcode is None and time.monotonic() < deadline:
        dead = {n: p.exitcode for n, p in procs.items()
                if not n.startswith("chief") and p.exitcode is not None}
        if dead:
            pytest.fail(f"servers exited {dead}\n" + "\n".join(
                f"--- {n} ---\n{_log(tmp_path / f'{n}.log')}" for n in dead))
        coordinator.join(0.5)
    code = coordinator.exitcode
    assert code == 0, (f"coordinator {'timed out' if code is None else f'exited {code}'}\n"
                       f"{_log(tmp_path / f'{name}.log')}")
    return json.loads(str(np.load(tmp_path / f"{name}.npz")["results"]))


def _stop(procs: dict) -> None:
    for process in procs.values():
        if process.exitcode is None:
            process.kill()
    for process in procs.values():
        process.join()


@pytest.mark.slow
def test_parameter_servers_shard_the_tables_and_export_what_one_machine_does(tmp_path,
                                                                            fork_server):
    run_dir = tmp_path / "ps_run"
    flags = FLAGS + ["--strategy", "parameter_server",
                     "--set", f"ps_min_shard_bytes={SHARD_BYTES}", "--run-dir", str(run_dir)]
    cluster = _cluster(local_ports(5))
    procs, errors = {}, []

    def start():
        try:
            _start_cluster(tmp_path, flags, cluster, procs)
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    # The first start waits for the fork server's imports; the reference trains meanwhile.
    starter = threading.Thread(target=start)
    starter.start()
    try:
        single = main(parse_args(FLAGS + ["--run-dir", str(tmp_path / "single")]))
        starter.join()
        if errors:
            raise errors[0]
        chief = _wait_for_coordinator(tmp_path, procs, "chief0", TIMEOUT_SECONDS)
        # A restarted coordinator (same servers, same run folder) resumes from the
        # checkpoints it wrote: here every epoch is done, so it trains nothing and restores
        # the same model into freshly sharded variables.
        procs["chief0-again"] = _start(tmp_path, "chief0-again", flags, cluster, "chief", 0)
        again = _wait_for_coordinator(tmp_path, procs, "chief0-again", TIMEOUT_SECONDS)
    finally:
        starter.join()
        _stop(procs)
    assert not [name for name in procs if not name.startswith("chief")
                and (tmp_path / f"{name}.npz").exists()], "a worker or ps ran the pipeline"
    assert again["training"]["epochs_trained_this_run"] == {"selection": 0, "final": 0}
    for metric, value in chief["test"].items():
        assert again["test"][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), metric

    training = chief["training"]
    assert training["strategy"] == "parameter_server" and training["workers"] == 2
    # Both embedding tables, and nothing else, split in two: one shard on each ps task (the
    # strategy places variables round-robin, so which task holds the first shard varies).
    shards = training["sharded_variables"]
    assert sorted(name.rsplit("/", 2)[-2] for name in shards) == [
        "item_id_embedding", "user_id_embedding"], shards
    for name, devices in shards.items():
        assert sorted(d.split("/device:")[0] for d in devices) == [
            f"/job:ps/replica:0/task:{i}" for i in range(PS_TASKS)], (name, devices)

    # Only the coordinator wrote the run: records, checkpoints, the export.
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == chief["test"]
    assert (run_dir / "final" / "checkpoints" / "checkpoint").exists()
    assert (run_dir / "selection" / "selection.json").exists()
    assert not list(run_dir.rglob("workertemp_*"))

    # Learning on the same P1 split as one machine (printed beside it), well above random and
    # untrained towers.
    popular = single["most_popular_test"]["ndcg@10"]
    print(f"P1 NDCG@10: one machine {single['test']['ndcg@10']:.4f}, parameter servers "
          f"{chief['test']['ndcg@10']:.4f}, most-popular {popular:.4f}; recall@50 "
          f"{single['test']['recall@50']:.4f} vs {chief['test']['recall@50']:.4f}")
    assert chief["most_popular_test"] == single["most_popular_test"]
    assert single["test"]["ndcg@10"] > popular  # the reference itself learned
    assert chief["test"]["ndcg@10"] > NDCG_FLOOR

    # The export, read by a plain process with no cluster, answers as the coordinator's model
    # did: the candidate tower reproduces the stored embeddings, the P1 metrics are the run's,
    # and every user gets K distinct unseen ids of the catalogue.
    check_out = tmp_path / "export_check.json"
    done = subprocess.run([sys.executable, str(REPO / "tests" / "retrieval_export_check.py"),
                           str(run_dir), str(K), str(check_out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    check = json.loads(check_out.read_text())
    assert check["candidate_max_abs_diff"] < 1e-5
    for metric in ("ndcg@10", "recall@10", "recall@50"):
        assert check["test"][metric] == pytest.approx(chief["test"][metric], abs=1e-6), metric
    catalogue = set(check["catalogue"])
    assert len(check["top"]) == 20
    for user, ids in check["top"].items():
        assert len(ids) == len(set(ids)) == K and set(ids) <= catalogue, user


_CASCADE_EXPORT_CHECK = """
import json, sys
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
users = json.loads(sys.argv[2])
out = loaded.signatures["serving_default"](
    user_id=tf.constant(users), history=tf.constant([[""]] * len(users)))
print(json.dumps([[v.decode() for v in row] for row in out["item_ids"].numpy()]))
"""


@pytest.mark.slow
def test_run_all_on_parameter_servers_exports_a_cascade_one_machine_serves(tmp_path,
                                                                          fork_server):
    """The whole cascade under `run_all --strategy parameter_server`: the retrieval fits on two
    workers with the tables split over two ps tasks, the rest on the coordinator."""
    out, models = tmp_path / "run", tmp_path / "models"
    flags = ["--dataset", "synthetic-tiny", "--strategy", "parameter_server",
             "--out", str(out), "--export-dir", str(models),
             "--set", f"ps_min_shard_bytes={SHARD_BYTES}", "--set", "use_text=false",
             "--set", "exports=[bruteforce]", "--set", "export_retrieval=false",
             "--set", "diversity_lambdas=[1.0]"]
    cluster = _cluster(local_ports(5))
    procs = {}
    try:
        _start_cluster(tmp_path, flags, cluster, procs, form="--run-all")
        # The whole cascade: about 3 minutes on 2 idle cores (the ranker's ALS peer choice and
        # cross-fitted start verdict included), and the suite runs two test files at once.
        metrics = _wait_for_coordinator(tmp_path, procs, "chief0", 4 * TIMEOUT_SECONDS)
    finally:
        _stop(procs)
    assert not [name for name in procs if not name.startswith("chief")
                and (tmp_path / f"{name}.npz").exists()], "a worker or ps ran the pipeline"
    training = metrics["training"]
    assert training["strategy"] == "parameter_server" and training["workers"] == 2
    shards = training["sharded_variables"]
    # The cascade's towers are wider than the pipeline test's: at 4 KiB some dense kernels are
    # split too, beside both tables.
    assert {"item_id_embedding", "user_id_embedding"} <= {
        name.rsplit("/", 2)[-2] for name in shards}, shards
    for name, devices in shards.items():
        assert sorted(d.split("/device:")[0] for d in devices) == [
            f"/job:ps/replica:0/task:{i}" for i in range(PS_TASKS)], (name, devices)
    # The coordinator evaluated a cascade that learned (see NDCG_FLOOR) and wrote the run.
    assert metrics["stages"]["retrieval"]["ndcg@10"] > NDCG_FLOOR
    assert metrics["stages"]["final"]["ndcg@10"] > NDCG_FLOOR
    assert json.loads((out / "metrics.json").read_text())["stages"] == metrics["stages"]

    # A plain process with no cluster serves the export as the coordinator's reload did.
    export = metrics["exports"]["cascade_bruteforce"]
    assert export["path"] == str(models / "recommender_bruteforce" / "1")
    users = (out / "vocabularies" / "users.txt").read_text().split()[:1]
    done = subprocess.run([sys.executable, "-c", _CASCADE_EXPORT_CHECK, export["path"],
                           json.dumps(users)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    top = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(top) == 1 and len(top[0]) == len(set(top[0])) == 10 and all(top[0])


_RANKING_EXPORT_CHECK = """
import json, sys
sys.modules["keras"] = sys.modules["tf_keras"] = None  # as TF Serving: no Keras
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
req = json.loads(sys.argv[2])
out = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in req.items()})
print(json.dumps(out["scores"].numpy().astype(float).tolist()))
"""


@pytest.mark.slow
def test_ranking_on_parameter_servers_selects_on_held_out_lists_and_exports(tmp_path,
                                                                           fork_server):
    """`train_ranking --strategy parameter_server`: the id tables split over two ps tasks,
    the held-out lists scored on the coordinator after every epoch (Keras does not evaluate
    there), the best epoch restored and exported from a local copy."""
    from test_distributed_training import RANKING_FLAGS

    flags = [*RANKING_FLAGS, "--set", "ranking.epochs=2", "--strategy", "parameter_server",
             "--set", f"ps_min_shard_bytes={SHARD_BYTES}",
             "--set", f"run_dir={tmp_path / 'runs'}", "--set", f"export_dir={tmp_path / 'saved'}"]
    cluster = _cluster(local_ports(5))
    procs = {}
    try:
        _start_cluster(tmp_path, flags, cluster, procs, form="--ranking")
        chief = _wait_for_coordinator(tmp_path, procs, "chief0", TIMEOUT_SECONDS)
    finally:
        _stop(procs)
    assert chief["strategy"] == "parameter_server" and chief["workers"] == 2
    shards = chief["sharded_variables"]
    assert {"item_id_embedding", "user_id_embedding"} <= {
        name.rsplit("/", 2)[-2] for name in shards}, shards
    # Both epochs were scored on the held-out lists, and the reported values are the chosen
    # epoch's.
    history = json.loads((tmp_path / "runs" / "synthetic-tiny-softmax" / "training"
                          / "history.json").read_text())
    assert len(history["val_ndcg_10"]) == 2 and chief["best_epoch"] in (1, 2)
    assert chief["validation"]["ndcg_10"] == pytest.approx(
        max(history["val_ndcg_10"]), rel=1e-6)
    assert 0 < chief["validation"]["ndcg_10"] <= 1

    export = Path(chief["export"])
    assert export == tmp_path / "saved" / "ranking" / "1"
    vocabs = load_vocabularies(tmp_path / "runs" / "synthetic-tiny-softmax" / "vocab")
    items = [str(i) for i in vocabs["item_id"].tokens[:4]]
    users = [str(vocabs["user_id"].tokens[0])]
    request = {"user_id": users, "history": [items[:2]], "item_ids": [items[2:] + [""]]}
    done = subprocess.run([sys.executable, "-c", _RANKING_EXPORT_CHECK, str(export),
                           json.dumps(request)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(scores[0]) == 3 and all(abs(v) < 1e6 for v in scores[0][:2])
    assert scores[0][2] < -1e30  # "" padding


def test_parameter_server_config_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG environment variable"):
        make_strategy("parameter_server")
    # Outside a parameter-server cluster a process is not a server: it returns at once.
    run_server_if_needed()
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    run_server_if_needed()  # a multi-worker cluster: every worker runs the program
    with pytest.raises(ConfigError, match=r"one 'chief' .* it has \{'chief': 0, 'worker': 2, "
                                          r"'ps': 0\}"):
        read_parameter_server_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:2"], "ps": ["c:3"], "evaluator": ["d:4"]},
        "task": {"type": "chief", "index": 0}}))
    with pytest.raises(ConfigError, match=r"and \['evaluator'\]"):
        make_strategy("parameter_server")
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["a:1"], "worker": ["b:2"], "ps": ["c:3"]},
        "task": {"type": "chief", "index": 0}}))
    with pytest.raises(ConfigError, match="min_shard_bytes must be >= 1"):
        make_strategy("parameter_server", min_shard_bytes=0)


def test_every_pipeline_takes_parameter_servers(tmp_path):
    assert TrainRankingConfig(strategy="parameter_server").strategy == "parameter_server"
    with pytest.raises(ConfigError, match="ps_min_shard_bytes must be a positive integer"):
        TrainRankingConfig(ps_min_shard_bytes=0)
    assert RunAllConfig(strategy="parameter_server").strategy == "parameter_server"
    with pytest.raises(ValueError, match="ps_min_shard_bytes must be a positive integer"):
        RunAllConfig(strategy="parameter_server", ps_min_shard_bytes=0)
    assert parse_args(["--strategy", "parameter_server"]).strategy == "parameter_server"
    with pytest.raises(ConfigError, match="ps_min_shard_bytes must be a positive integer"):
        main(parse_args(["--strategy", "parameter_server", "--set", "ps_min_shard_bytes=0",
                         "--run-dir", str(tmp_path)]))
