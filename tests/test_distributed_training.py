"""Multi-worker training: `pipelines.train_retrieval --strategy multi_worker` on two local
worker processes (MultiWorkerMirroredStrategy over gRPC on 127.0.0.1) against one worker, and
`pipelines.train_ranking --strategy multi_worker` on two workers.

Each worker is a process of `tests/distributed_worker.py` with a TF_CONFIG naming both free
ports and its own index, forked from a server that imported TensorFlow once for all of them
(`distributed_worker.start_worker`); the one-worker reference runs in the test process
meanwhile.
"""
import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import recommenders_tf  # noqa: F401
import tensorflow as tf

import distributed_worker
from pipelines.train_retrieval import main, parse_args
from recommenders_tf.config import ConfigError
from recommenders_tf.models.distribute import (is_chief, local_ports, make_strategy,
                                               num_workers, read_tf_config, writable_dir)

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "retrieval_synthetic_tiny.yaml"
# Two epochs of epoch selection on synthetic-tiny, then the refit: enough to learn the
# structure, short enough for two workers and a reference on two cores.
FLAGS = ["--config", str(TINY_YAML), "--set", "retrieval.epochs=2",
         "--set", "recall_curve_max_k=10"]
# Two workers split each global batch of 128 into two in-batch softmaxes of 64, so they do not
# retrace the single worker's steps; the test asks for the same quality, not the same numbers.
NDCG_TOLERANCE = 0.03
TIMEOUT_SECONDS = 240



@pytest.fixture(scope="module")
def fork_server():
    """The preloading server of `distributed_worker.start_worker`, stopped after the module
    (an idle TensorFlow import is no use to the rest of the session)."""
    yield
    distributed_worker.stop_fork_server()


class _Worker:
    """A started worker process and the file holding its output."""

    def __init__(self, out, flags, tf_config):
        """`flags` are train_retrieval's, ["--ranking", <train_ranking flags>] or
        ["--fit", ...] for the fit mode."""
        args = flags if flags[:1] in (["--fit"], ["--ranking"]) else ["--", *flags]
        self.log = Path(f"{out}.log")
        self.process = distributed_worker.start_worker(out, args, tf_config, self.log)

    @property
    def returncode(self):
        return self.process.exitcode

    def poll(self):
        return self.process.exitcode

    def wait(self, timeout):
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self):
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()

    def output(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _finish(procs, timeout=TIMEOUT_SECONDS):
    """Waits for every process; on a timeout or a failure kills the rest and shows the logs."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs.values():
            if proc.wait(max(1, deadline - time.monotonic())) not in (None, 0):
                # The others would wait for it until their collectives time out; a few
                # seconds let one that fails the same way say so itself.
                deadline = min(deadline, time.monotonic() + 5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    failed = {name: proc.returncode for name, proc in procs.items() if proc.returncode != 0}
    assert not failed, f"exit codes {failed}\n" + "\n".join(
        f"--- {name} ---\n{procs[name].output()[-3000:]}" for name in failed)


def _cluster(ports):
    return {"worker": [f"127.0.0.1:{p}" for p in ports]}


def _load(path):
    saved = np.load(path)
    weights = [saved[f"weight_{i}"] for i in range(len(saved.files) - 1)]
    return json.loads(str(saved["results"])), weights


@pytest.mark.slow
def test_two_workers_train_the_same_model_as_one(tmp_path, fork_server):
    ports = local_ports(2)
    procs, started = {}, []

    def start_workers():
        try:
            for index in range(2):
                tf_config = {"cluster": _cluster(ports),
                             "task": {"type": "worker", "index": index}}
                procs[f"worker{index}"] = _Worker(
                    tmp_path / f"worker{index}.npz",
                    FLAGS + ["--strategy", "multi_worker", "--run-dir", str(tmp_path / "multi")],
                    tf_config)
        except BaseException as err:  # re-raised in the test's thread
            started.append(err)

    # The first start waits for the fork server's imports; the reference trains meanwhile.
    starter = threading.Thread(target=start_workers)
    starter.start()
    try:
        single = main(parse_args(FLAGS + ["--run-dir", str(tmp_path / "single")]))
    finally:
        starter.join()
        if started:
            for proc in procs.values():
                proc.kill()
            raise started[0]
        _finish(procs)

    chief, chief_weights = _load(tmp_path / "worker0.npz")
    other, other_weights = _load(tmp_path / "worker1.npz")
    assert chief["training"]["workers"] == other["training"]["workers"] == 2
    assert chief["training"]["replicas"] == 2
    assert single["training"]["workers"] == 1

    # Synchronous training: the same weights on both workers, hence the same evaluation.
    assert len(chief_weights) == len(other_weights) > 0
    for mine, theirs in zip(chief_weights, other_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert other["test"]["ndcg@10"] == pytest.approx(chief["test"]["ndcg@10"], abs=1e-6)
    assert other["validation"]["best_epoch"] == chief["validation"]["best_epoch"]

    # As good as one worker on the same P1 split, and clearly better than most-popular.
    print(f"P1 NDCG@10: single worker {single['test']['ndcg@10']:.4f}, "
          f"two workers {chief['test']['ndcg@10']:.4f}, "
          f"most-popular {single['most_popular_test']['ndcg@10']:.4f}")
    assert chief["most_popular_test"] == single["most_popular_test"]
    assert chief["test"]["ndcg@10"] == pytest.approx(single["test"]["ndcg@10"],
                                                     abs=NDCG_TOLERANCE)
    assert chief["test"]["ndcg@10"] > chief["most_popular_test"]["ndcg@10"] + 0.03

    # Only the chief wrote the run: its metrics, its export; no worker temp folders left.
    run_dir = tmp_path / "multi"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test"] == chief["test"]
    assert (run_dir / "candidate_store" / "query_tower").is_dir()
    assert not list(run_dir.rglob("workertemp_*"))
    # BackupAndRestore removes its state once a fit call has finished.
    assert not [p for p in run_dir.glob("*/backup/**/*") if p.is_file()]


def _file_examples(path):
    """The examples of one TFRecord file as "user_id|item_id|history" strings, parsed here
    with `tf.train.Example` (independently of `read_example_shards`)."""
    out = set()
    for record in tf.data.TFRecordDataset(str(path)):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        values = [feature[name].bytes_list.value for name in ("user_id", "item_id", "history")]
        out.add("|".join(v.decode() for v in (values[0][0], values[1][0], *values[2])))
    return out


@pytest.mark.slow
def test_two_workers_read_only_their_own_example_files(tmp_path, fork_server):
    ports = local_ports(2)
    run_dir = tmp_path / "multi"
    flags = FLAGS + ["--set", "retrieval.input_shards=2", "--strategy", "multi_worker",
                     "--run-dir", str(run_dir)]
    procs = {f"worker{i}": _Worker(tmp_path / f"worker{i}.npz", flags,
                                  {"cluster": _cluster(ports),
                                   "task": {"type": "worker", "index": i}})
             for i in range(2)}
    _finish(procs)

    results = [_load(tmp_path / f"worker{i}.npz") for i in range(2)]
    (chief, chief_weights), (other, other_weights) = results
    for mine, theirs in zip(chief_weights, other_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert chief["training"]["input_shards"] == 2
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["training"]["examples_per_shard"] == chief["training"]["examples_per_shard"]
    assert set(saved["training"]["examples_per_shard"]) == {"selection", "final"}

    for phase, counts in saved["training"]["examples_per_shard"].items():
        folder = run_dir / phase / "examples"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["examples_per_shard"] == counts
        files = [_file_examples(folder / entry["name"]) for entry in manifest["files"]]
        assert [len(f) for f in files] == counts and not files[0] & files[1]
        for index, (result, _) in enumerate(results):
            read = result["read"][phase]
            assert (read["pipeline"], read["pipelines"]) == (index, 2)
            mine = set(read["examples"])
            # Everything this worker parsed came from its own file, none from the other's;
            # over the epochs (a shuffled, repeated stream) it read nearly all of its file.
            assert mine <= files[index]
            assert len(mine) >= 0.9 * len(files[index])
    print(f"P1 NDCG@10, two workers reading two files: {chief['test']['ndcg@10']:.4f} "
          f"(most-popular {chief['most_popular_test']['ndcg@10']:.4f})")
    assert chief["test"]["ndcg@10"] > chief["most_popular_test"]["ndcg@10"] + 0.03
    assert not list(run_dir.rglob("workertemp_*"))


def test_strategy_names_and_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = make_strategy("default")
    assert default is tf.distribute.get_strategy()
    assert is_chief(default) and num_workers(default) == 1
    assert read_tf_config() == {}
    mirrored = make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert is_chief(mirrored) and num_workers(mirrored) == 1
    with pytest.raises(ConfigError, match="multi_worker', 'parameter_server'"):
        make_strategy("one_per_gpu")

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 2}}))
    with pytest.raises(ConfigError, match="not one of the cluster's 'worker' tasks"):
        read_tf_config()


class _FakeResolver:
    def __init__(self, cluster, task_type, task_id):
        self._cluster, self.task_type, self.task_id = cluster, task_type, task_id

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


class _FakeStrategy:
    def __init__(self, cluster, task_type, task_id):
        self.cluster_resolver = _FakeResolver(cluster, task_type, task_id)


def test_only_the_chief_writes_into_the_run_dir(tmp_path):
    two = {"worker": ["h0:1", "h1:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["h0:1"]}
    assert is_chief(_FakeStrategy(two, "worker", 0))
    assert not is_chief(_FakeStrategy(two, "worker", 1))
    assert is_chief(_FakeStrategy(with_chief, "chief", 0))
    assert not is_chief(_FakeStrategy(with_chief, "worker", 0))
    assert num_workers(_FakeStrategy(two, "worker", 1)) == 2
    assert num_workers(_FakeStrategy(with_chief, "worker", 0)) == 2

    run_dir = tmp_path / "run"
    with writable_dir(str(run_dir), _FakeStrategy(two, "worker", 0)) as out:
        assert out == str(run_dir) and run_dir.is_dir()
    with writable_dir(str(tmp_path / "other"), _FakeStrategy(two, "worker", 1)) as out:
        assert Path(out).is_dir() and not Path(out).is_relative_to(tmp_path)
        (Path(out) / "f").write_text("x")
    assert not Path(out).exists() and not (tmp_path / "other").exists()


def _wait_for(paths, procs, timeout):
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        dead = {name: p.returncode for name, p in procs.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            _finish(procs, timeout=1)  # shows the logs of whoever stopped
            pytest.fail(f"waited {timeout}s for {[str(p) for p in paths]}; exited: {dead}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("input_shards", [0, 2], ids=["in-memory", "two-files"])
def test_a_killed_worker_restarts_and_the_cluster_resumes_from_the_backup(tmp_path,
                                                                          fork_server,
                                                                          input_shards):
    ports = local_ports(2)
    work, marker, epochs = tmp_path / "work", tmp_path / "epoch1", 2

    def start(index, *extra):
        tf_config = {"cluster": _cluster(ports), "task": {"type": "worker", "index": index}}
        return _Worker(tmp_path / f"worker{index}.npz",
                      ["--fit", str(work), str(epochs), *extra,
                       "--shards", str(input_shards)], tf_config)

    procs = {f"worker{i}": start(i, str(marker)) for i in range(2)}
    backup = work / "final" / "backup" / "chief" / "checkpoint"
    _wait_for([backup] + [Path(f"{marker}.{i}") for i in range(2)], procs, TIMEOUT_SECONDS)
    # Worker 1 dies. The chief's collectives would fail on the next step (after its health
    # check notices), and a cluster manager restarts every failed worker; do both at once.
    examples = work / "final" / "examples"
    written = {f.name: f.stat().st_mtime_ns for f in examples.iterdir()} if input_shards else {}
    for name in ("worker1", "worker0"):
        procs[name].kill()
    assert backup.exists() and not (tmp_path / "worker0.npz").exists()

    procs = {f"worker{i}": start(i) for i in range(2)}
    _finish(procs)
    chief, chief_weights = _load(tmp_path / "worker0.npz")
    other, other_weights = _load(tmp_path / "worker1.npz")
    for result in (chief, other):
        assert result["initial_epoch"] == 1 and result["epochs_done"] == epochs
        assert len(result["history"]["example_loss"]) == epochs
    for mine, theirs in zip(chief_weights, other_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    assert not backup.exists()
    if input_shards:
        # The restarted chief found its files complete (the manifest matched) and the workers
        # read them again: the same two files, untouched since before the kill.
        manifest = json.loads((examples / "manifest.json").read_text())
        assert manifest["num_shards"] == 2 and sum(manifest["examples_per_shard"]) > 0
        assert sorted(written) == sorted([e["name"] for e in manifest["files"]]
                                         + ["manifest.json"])
        assert {f.name: f.stat().st_mtime_ns for f in examples.iterdir()} == written


def test_strategy_flag_and_config_field(tmp_path):
    assert parse_args(["--dataset", "synthetic-tiny"]).strategy == "default"
    assert parse_args(["--strategy", "multi_worker"]).strategy == "multi_worker"
    config = parse_args(["--set", "strategy=one_per_gpu", "--run-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="strategy must be one of"):
        main(config)


# One epoch on synthetic-tiny with small towers and most-popular hard negatives: about 45 s for
# both workers on two busy cores.
RANKING_FLAGS = ["--loss", "softmax", "--dataset", "synthetic-tiny",
                 *[a for s in ("ranking.epochs=1", "ranking.patience=0", "ranking.verbose=0",
                               "ranking.embedding_dim=8", "ranking.id_embedding_dim=8",
                               "ranking.feature_embedding_dim=4", "ranking.deep_dims=[8]",
                               "ranking.din_units=4", "ranking.history_len=5",
                               "data.list_size=10", "data.max_positives=3",
                               "data.candidate_source=most-popular")
                   for a in ("--set", s)]]


@pytest.mark.slow
def test_two_workers_train_one_ranking_model(tmp_path, fork_server):
    ports = local_ports(2)
    flags = ["--ranking", *RANKING_FLAGS, "--strategy", "multi_worker",
             "--set", f"run_dir={tmp_path / 'runs'}", "--set", f"export_dir={tmp_path / 'saved'}"]
    procs = {f"worker{i}": _Worker(tmp_path / f"worker{i}.npz", flags,
                                  {"cluster": _cluster(ports),
                                   "task": {"type": "worker", "index": i}})
             for i in range(2)}
    _finish(procs)

    chief, chief_weights = _load(tmp_path / "worker0.npz")
    other, other_weights = _load(tmp_path / "worker1.npz")
    assert chief["workers"] == other["workers"] == 2 and chief["replicas"] == 2
    assert len(chief_weights) == len(other_weights) > 0
    for mine, theirs in zip(chief_weights, other_weights):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    # Metric results are aggregated over the replicas once, not summed again per replica.
    for key in ("ndcg_10", "mrr_10", "example_loss"):
        assert other["validation"][key] == pytest.approx(chief["validation"][key], rel=1e-5)
    assert 0 < chief["validation"]["ndcg_10"] <= 1

    run_dir = tmp_path / "runs" / "synthetic-tiny-softmax"
    assert json.loads((run_dir / "metrics.json").read_text())["validation"] == \
        chief["validation"]
    assert (run_dir / "training" / "checkpoints" / "checkpoint").exists()
    assert chief["export"] == str(tmp_path / "saved" / "ranking" / "1")
    assert sorted(p.name for p in (tmp_path / "saved" / "ranking").iterdir()) == ["1"]
    assert not [p for p in run_dir.glob("training/backup/**/*") if p.is_file()]


def test_run_all_strategy_field_and_flag():
    from pipelines.run_all import RunAllConfig
    from pipelines.run_all import parse_args as run_all_args

    assert RunAllConfig().strategy == "default"
    with pytest.raises(ConfigError, match=r"strategy must be one of \['default', 'mirrored', "
                                          r"'multi_worker', 'parameter_server'\], got 'bogus'"):
        RunAllConfig(strategy="bogus")
    assert run_all_args(["--strategy", "mirrored"]).strategy == "mirrored"
    assert run_all_args(["--set", "strategy=multi_worker"]).strategy == "multi_worker"
    with pytest.raises(ConfigError, match="strategy must be one of"):
        run_all_args(["--set", "strategy=bogus"])
    with pytest.raises(SystemExit):
        run_all_args(["--strategy", "bogus"])


def test_run_all_strategy_cascade_folder_of_a_worker_reads_the_chiefs_retrieval(tmp_path):
    import pandas as pd

    from pipelines.run_all import _cascade_dir
    from recommenders_tf.cascade.config import CascadeConfig
    from recommenders_tf.data.splits import frame_sha256
    from recommenders_tf.runs import claim_run_dir

    run_dir, private = tmp_path / "run", tmp_path / "worker1"
    train = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "rating": [4.0], "timestamp": [1]})
    config = CascadeConfig()
    assert _cascade_dir(run_dir, run_dir, config, train) == run_dir / "cascade"  # the chief

    cascade = _cascade_dir(run_dir, private, config, train)
    assert cascade == private / "cascade"
    for name in ("retrieval", "retrieval_early"):
        assert (cascade / name).is_symlink()
        assert (cascade / name).resolve() == (run_dir / "cascade" / name).resolve()
    assert (cascade / "claim.json").exists()
    # Nothing but the two (empty) retrieval folders appears in the chief's folder.
    assert sorted(p.name for p in (run_dir / "cascade").iterdir()) == [
        "retrieval", "retrieval_early"]

    # A chief's folder claimed by another cascade stops this worker too.
    claim_run_dir(run_dir / "cascade", dataclasses.replace(config, seed=1),
                  data={"train": frame_sha256(train)}, what="cascade")
    with pytest.raises(ConfigError, match="holds a cascade with another config"):
        _cascade_dir(run_dir, tmp_path / "worker2", config, train)
