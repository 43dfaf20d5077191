"""tf.distribute strategies from a name, and which worker of a cluster writes the artifacts.

`make_strategy(name)` resolves the `--strategy` flag of the pipelines:
  default       the current (single-device) strategy.
  mirrored      `MirroredStrategy`: every local GPU (or the CPU) of this machine.
  multi_worker  `MultiWorkerMirroredStrategy`: synchronous data-parallel training over the
                machines listed in the standard `TF_CONFIG` environment variable, one process
                per machine, all running the same command (without TF_CONFIG it is one worker).

Every worker runs the whole program: the variables are created (and the first values broadcast
from worker 0) in the same order everywhere, and every step is an all-reduce, so all workers
must build the same models, call `fit` the same number of times and save the same checkpoints.
Only the chief (task `chief`, else `worker` 0, else the only process) keeps what it writes;
the others write to a private temporary folder (`writable_dir`), as in TensorFlow's
multi-worker Keras tutorial: saving a checkpoint reads the metrics' sync-on-read variables,
which is an all-reduce, so a worker that skipped the save would leave the others waiting.

Two workers on one machine (run the same command in two shells, changing only the index):
  TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
              "task": {"type": "worker", "index": 0}}' \
    python -m pipelines.train_retrieval --dataset synthetic --strategy multi_worker
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional, Tuple

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.config import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"


def read_tf_config() -> dict:
    """The parsed `TF_CONFIG` ({} when unset); a malformed value raises ConfigError."""
    raw = os.environ.get(TF_CONFIG, "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({err}); expected e.g. "
                         '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
                         '"task": {"type": "worker", "index": 0}}') from err
    cluster, task = parsed.get("cluster"), parsed.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"{TF_CONFIG} needs a 'cluster' and a 'task' object, got keys "
                         f"{sorted(parsed)}")
    members = cluster.get(task.get("type"), [])
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise ConfigError(f"{TF_CONFIG}: task {task} is not one of the cluster's "
                         f"{task.get('type')!r} tasks {members}")
    return parsed


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called `name` (one of STRATEGIES).

    Create it before anything else runs TensorFlow ops: MultiWorkerMirroredStrategy configures
    the collective ops of the process and refuses once the runtime has started.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        read_tf_config()  # a bad TF_CONFIG fails here with a readable message
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown strategy {name!r}; choose one of {list(STRATEGIES)}")


def task_of(strategy: Optional[tf.distribute.Strategy] = None) -> Tuple[Optional[str], int]:
    """(task type, task index) of this process; (None, 0) outside a cluster."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process keeps the run's artifacts (see the module docstring)."""
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id = task_of(strategy)
    if task_type in (None, "chief"):
        return True
    resolver = strategy.cluster_resolver
    return (task_type == "worker" and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy: Optional[tf.distribute.Strategy] = None) -> int:
    """Processes training together (1 for the default and mirrored strategies)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, sum(len(jobs.get(job, [])) for job in ("chief", "worker")))


def barrier(strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """Returns once every worker has called it (a one-number all-reduce); free on one worker.

    Call it after the chief wrote files the other workers read next, so they never read a
    half-updated folder.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if num_workers(strategy) > 1:
        strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(1.0)))


@contextlib.contextmanager
def writable_dir(path: str, strategy: Optional[tf.distribute.Strategy] = None
                 ) -> Iterator[str]:
    """`path` (created) on the chief; on other workers a private temp folder, removed on exit.

    Readers keep reading `path` (the chief's copy), so a restarted worker resumes from the
    same state as the chief.
    """
    if is_chief(strategy):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    task_type, task_id = task_of(strategy)
    tmp = tempfile.mkdtemp(prefix=f"{task_type}{task_id}_")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
