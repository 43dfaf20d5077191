"""One process of the multi-worker tests: runs `pipelines.train_retrieval` (or
`pipelines.train_ranking`) as a worker would.

    TF_CONFIG=... python tests/distributed_worker.py OUT.npz -- <train_retrieval flags>
    TF_CONFIG=... python tests/distributed_worker.py OUT.npz --ranking <train_ranking flags>
    TF_CONFIG=... python tests/distributed_worker.py OUT.npz --run-all <run_all flags>
    TF_CONFIG=... python tests/distributed_worker.py OUT.npz --fit WORK_DIR EPOCHS [MARKER] [--shards N]

The first three forms pass the flags through the pipeline's own `parse_args` (so
`--strategy multi_worker` is read as a user would give it). The third trains one small
`TwoTowerRecommender` on synthetic-tiny without validation (a single `fit` of EPOCHS epochs,
checkpoints in WORK_DIR); with MARKER it writes `MARKER.<task index>` after the first epoch's
backup and checkpoint are saved and then waits to be killed.

With `retrieval.input_shards` > 0 the first form also records what this worker's input
pipeline read from the example files (`results["read"]`: per phase, its input pipeline and
the examples it parsed as "user_id|item_id|history" strings), so a test can check that each
worker read only its own files.

Afterwards the worker saves what the test compares in OUT.npz: the final query tower's weights
(the whole ranking model's with `--ranking`, the cascade's retrieval query tower with
`--run-all`; `weight_<i>` arrays) and a JSON `results` (what `main` returned, run_all's
metrics, or the fit's epochs). Each process keeps to one intra-op thread, so two
workers and a reference run share two cores without starving the collective ops of each other.

With `--strategy parameter_server` the same first form runs every task of a parameter-server
cluster: the coordinator (`chief`) trains and saves OUT.npz, a `worker` or `ps` task serves it
inside `main` until it is killed (it writes nothing).

The tests start the workers with `start_worker`: a fork of a server process that has imported
TensorFlow and the pipelines once (`PRELOAD`) but never started the TensorFlow runtime, so
every worker begins with a runtime of its own, as a fresh `python` would, without paying the
import again (several seconds a process). Importing this module has no other side effect.
"""
import json
import os
import sys
import threading
import time
from typing import Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

import recommenders_tf  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

import pipelines.train_retrieval as train_retrieval  # noqa: E402

# What the fork server imports before it forks workers: everything a worker imports anyway.
# None of them may run a TensorFlow op at import: a runtime started in the server would be
# shared, half-dead, by every fork (the workers' first call below would then fail).
PRELOAD = ["distributed_worker", "pipelines.train_ranking", "pipelines.run_all",
           "recommenders_tf.cascade.fit", "recommenders_tf.models.ranking",
           "recommenders_tf.serving.ranking_export", "recommenders_tf.data",
           "matplotlib.pyplot"]
# gRPC honours proxy variables even for 127.0.0.1; the workers must talk directly.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")

_fitted = []


class _KeptRecommender(train_retrieval.TwoTowerRecommender):
    """The pipeline's recommender, kept so its trained towers can be read after `main`."""

    def fit(self, *args, **kwargs):
        _fitted.append(self)
        return super().fit(*args, **kwargs)


_read = {}


def _record_reads(read_example_shards):
    """`read_example_shards` whose per-worker datasets note every example they parse."""
    def reading(folder, *args, input_context=None, **kwargs):
        ds = read_example_shards(folder, *args, input_context=input_context, **kwargs)
        if input_context is None:
            return ds
        phase = os.path.basename(os.path.dirname(os.fspath(folder)))
        entry = _read.setdefault(phase, {"pipeline": input_context.input_pipeline_id,
                                         "pipelines": input_context.num_input_pipelines,
                                         "examples": set()})

        def note(users, items, histories):
            for user, item, history in zip(users.numpy(), items.numpy(), histories.numpy()):
                entry["examples"].add("|".join(v.decode() for v in (user, item, *history)))
            return True

        def with_note(batch):
            done = tf.py_function(note, [batch["user_id"], batch["item_id"],
                                         batch["history"]], tf.bool)
            with tf.control_dependencies([done]):
                return {k: tf.identity(v) for k, v in batch.items()}

        return ds.map(with_note)

    return reading


def run(out: str, argv) -> None:
    from recommenders_tf.models import recommender as recommender_module

    config = train_retrieval.parse_args(argv)
    train_retrieval.TwoTowerRecommender = _KeptRecommender
    recommender_module.read_example_shards = _record_reads(
        recommender_module.read_example_shards)
    results = train_retrieval.main(config)
    if _read:
        results["read"] = {phase: {**entry, "examples": sorted(entry["examples"])}
                           for phase, entry in _read.items()}
    _save(out, results, _fitted[-1].query_tower.get_weights())


def run_ranking(out: str, argv) -> None:
    import pipelines.train_ranking as train_ranking
    from recommenders_tf.models import ranking

    fitted = []
    plain_fit = ranking.fit_ranking_model

    def keep_model(*args, **kwargs):
        fitted.append(plain_fit(*args, **kwargs))
        return fitted[-1]

    # train_ranking imports it from the module when it runs, so it finds this one.
    ranking.fit_ranking_model = keep_model
    results = train_ranking.main(train_ranking.parse_args(argv))
    _save(out, results, fitted[-1][0].get_weights())


def run_all(out: str, argv) -> None:
    import pipelines.run_all as run_all_step

    result = run_all_step.main(run_all_step.parse_args(argv))
    metrics = json.loads(json.dumps(result["metrics"], default=str))
    _save(out, metrics, result["cascade"].retrieval.query_tower.get_weights())


class _StopAfterFirstEpoch(tf.keras.callbacks.Callback):
    """Signals that epoch 1 is saved (it runs after fit_model's own callbacks), then hangs."""

    def __init__(self, marker: str, task_id: int):
        super().__init__()
        self.marker, self.task_id = marker, task_id

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            with open(f"{self.marker}.{self.task_id}", "w") as f:
                f.write("saved epoch 1\n")
            time.sleep(600)


def fit(out: str, work_dir: str, epochs: int, marker=None, input_shards: int = 0) -> None:
    from recommenders_tf.data import load_dataset
    from recommenders_tf.models import recommender as recommender_module
    from recommenders_tf.models.distribute import make_strategy, task_of

    strategy = make_strategy("multi_worker")
    if marker:
        plain_fit_model = recommender_module.fit_model

        def fit_model(*args, **kwargs):
            kwargs["callbacks"] = [*kwargs.get("callbacks", ()),
                                   _StopAfterFirstEpoch(marker, task_of(strategy)[1])]
            return plain_fit_model(*args, **kwargs)

        recommender_module.fit_model = fit_model
    data = load_dataset("synthetic-tiny")
    # What is tested is the resumption, not the model: mean-pooled short histories and no
    # genre branch trace and save in a fraction of the time of the pipeline's towers.
    config = recommender_module.TwoTowerConfig(
        embedding_dim=8, id_embedding_dim=8, history_len=3, history_pooling="mean",
        use_genres=False, learning_rate=0.01, batch_size=128, epochs=epochs, seed=0,
        verbose=0, input_shards=input_shards)
    rec = recommender_module.TwoTowerRecommender(config, items=data.items, work_dir=work_dir,
                                                 strategy=strategy)
    rec.fit(data.interactions)
    result = rec.phase_results[recommender_module.FINAL_DIR]
    _save(out, {"initial_epoch": result.initial_epoch, "epochs_done": result.epochs_done,
                "history": result.history}, rec.query_tower.get_weights())


def _save(out: str, results: dict, weights) -> None:
    tmp = out + ".tmp.npz"
    np.savez(tmp, results=json.dumps(results),
             **{f"weight_{i}": w for i, w in enumerate(weights)})
    os.replace(tmp, out)


def _one_intra_op_thread() -> None:
    # Before anything runs an op: the runtime reads it once, when it starts (and refuses it
    # afterwards, so a runtime already started here fails loudly).
    tf.config.threading.set_intra_op_parallelism_threads(1)


def dispatch(out: str, args) -> None:
    """Runs one of the three forms of the module docstring; `args` follow OUT.npz there."""
    if len(args) >= 3 and args[0] == "--fit":
        shards = 0
        if "--shards" in args:
            at = args.index("--shards")
            shards, args = int(args[at + 1]), args[:at] + args[at + 2:]
        fit(out, args[1], int(args[2]), *args[3:4], input_shards=shards)
    elif args[:1] == ["--"]:
        run(out, args[1:])
    elif args[:1] == ["--ranking"]:
        run_ranking(out, args[1:])
    elif args[:1] == ["--run-all"]:
        run_all(out, args[1:])
    else:
        sys.exit(f"usage: {sys.argv[0]} OUT.npz -- <pipelines.train_retrieval flags>\n"
                 f"       {sys.argv[0]} OUT.npz --ranking <pipelines.train_ranking flags>\n"
                 f"       {sys.argv[0]} OUT.npz --run-all <pipelines.run_all flags>\n"
                 f"       {sys.argv[0]} OUT.npz --fit WORK_DIR EPOCHS [MARKER] [--shards N]")


def _exit_with(owner: int) -> None:
    """Ends this process once process `owner` (the test that started it) is gone, from a
    daemon thread.

    A parameter-server task serves until it is killed, so a test killed before its cleanup
    would leave it running; the fork server does not end it either (every fork holds the
    pipe whose closing would stop the server).
    """
    def watch():
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(1)
            time.sleep(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-owner").start()


def forked_worker(out: str, args, tf_config: dict, log_path: str,
                  owner: Optional[int] = None) -> None:
    """A worker in a fork of the preloading server: `dispatch` with this TF_CONFIG, both
    output streams (Python's and TensorFlow's C++ logs) in `log_path`; it ends with process
    `owner` when one is given."""
    if owner is not None:
        _exit_with(owner)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(REPO)
    for name in PROXY_VARIABLES:
        os.environ.pop(name, None)
        os.environ.pop(name.upper(), None)
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    sys.argv = [__file__, out, *args]
    _one_intra_op_thread()
    dispatch(out, list(args))


def start_worker(out, args, tf_config: dict, log_path):
    """Starts `forked_worker` as a fork of the preloading server (started on first use);
    returns its `multiprocessing` Process, which ends by itself if this process dies."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    # Only read when the server starts; one already running keeps its own list.
    context.set_forkserver_preload(PRELOAD)
    process = context.Process(target=forked_worker, name=f"worker:{log_path}",
                              args=(str(out), [str(a) for a in args], tf_config,
                                    str(log_path), os.getpid()))
    process.start()
    return process


def stop_fork_server() -> None:
    """Stops the preloading server (it holds an idle TensorFlow import) if one is running."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None and forkserver._forkserver._forkserver_pid is not None:
        stop()


if __name__ == "__main__":
    _one_intra_op_thread()
    dispatch(sys.argv[1], sys.argv[2:])
