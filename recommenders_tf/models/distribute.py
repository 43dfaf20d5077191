"""tf.distribute strategies from a name, and which worker of a cluster writes the artifacts.

`make_strategy(name)` resolves the `--strategy` flag of the pipelines:
  default       the current (single-device) strategy.
  mirrored      `MirroredStrategy`: every local GPU (or the CPU) of this machine.
  multi_worker  `MultiWorkerMirroredStrategy`: synchronous data-parallel training over the
                machines listed in the standard `TF_CONFIG` environment variable, one process
                per machine, all running the same command (without TF_CONFIG it is one worker).
  parameter_server
                `ParameterServerStrategy`: asynchronous training for models whose embedding
                tables outgrow one machine. TF_CONFIG lists a `chief` (the coordinator), one
                or more `worker`s and one or more `ps` (parameter servers); see below.

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

Parameter servers (`parameter_server`): every variable lives on a `ps` task; a variable of at
least 2 x `min_shard_bytes` (the user and item embedding tables) is split row-wise into up to
one shard per `ps` task (`MinSizePartitioner`), so a table needs the memory of all parameter
servers together, not of one machine. Only the coordinator (`chief`) runs the program: it
builds the model, dispatches training steps to the workers through a `ClusterCoordinator`
(Keras `fit` makes one), evaluates, writes the checkpoints, the run records and the exports.
Worker and ps tasks run no program of their own: `make_strategy("parameter_server")` (or
`run_server_if_needed()`) turns such a process into a `tf.distribute.Server` that serves the
coordinator until it is killed, so every task can run the same command. Steps are
asynchronous: each worker applies its gradients to the variables as it finishes a step, with
no all-reduce, so a slow worker does not hold the others back, and a worker that dies and
comes back is given steps again by the coordinator. If the coordinator or a ps task dies,
restart the coordinator: it resumes from its last epoch checkpoint.

One coordinator, two workers and two parameter servers on one machine: five shells, the same
command with that task's TF_CONFIG (the coordinator waits for the servers to come up):
  TF_CONFIG='{"cluster": {"chief": ["127.0.0.1:12340"],
                          "worker": ["127.0.0.1:12341", "127.0.0.1:12342"],
                          "ps": ["127.0.0.1:12343", "127.0.0.1:12344"]},
              "task": {"type": "ps", "index": 0}}' \
    python -m pipelines.train_retrieval --dataset synthetic --strategy parameter_server
  # the same with "ps" 1 and "worker" 0 and 1 (servers: they run until killed), and with
  # "chief" 0, the coordinator, which trains and writes the run; stop the servers after it.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.config import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "parameter_server")
TF_CONFIG = "TF_CONFIG"
PARAMETER_SERVER = "parameter_server"
# TensorFlow's own default for MinSizePartitioner: a variable smaller than twice this stays whole.
PS_MIN_SHARD_BYTES = 256 << 10
_PS_JOBS = ("chief", "worker", "ps")
# How ParameterServerStrategy names the shards of a variable it splits: "<name>/part_<i>".
_SHARD_NAME = re.compile(r"(?P<name>.+)/part_(?P<index>\d+)(?::\d+)?")
_PS_EXAMPLE = ('{"cluster": {"chief": ["host0:port"], "worker": ["host1:port", ...], '
               '"ps": ["host2:port", ...]}, "task": {"type": "chief", "index": 0}}')


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


def check_strategy(name: str, supported: Sequence[str] = STRATEGIES, step: str = "") -> None:
    """Raises ConfigError unless `name` is one of `supported` (the strategies `step` runs)."""
    if name in supported:
        return
    if name in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(supported)} for "
                          f"{step or 'this step'}, got {name!r}, which it does not support yet")
    raise ConfigError(f"strategy must be one of {list(supported)}, got {name!r}")


def make_strategy(name: str, *, min_shard_bytes: int = PS_MIN_SHARD_BYTES
                  ) -> tf.distribute.Strategy:
    """The strategy called `name` (one of STRATEGIES).

    Create it before anything else runs TensorFlow ops: MultiWorkerMirroredStrategy configures
    the collective ops of the process and refuses once the runtime has started, and
    ParameterServerStrategy connects the runtime to the cluster.

    Under "parameter_server", on a `worker` or `ps` task of TF_CONFIG this never returns: the
    process serves the coordinator until it is killed (`run_server_if_needed`).

    Args:
      name: one of STRATEGIES.
      min_shard_bytes: "parameter_server" only: the smallest shard of a variable split over
        the ps tasks (see the module docstring).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        read_tf_config()  # a bad TF_CONFIG fails here with a readable message
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == PARAMETER_SERVER:
        return _parameter_server_strategy(min_shard_bytes)
    raise ConfigError(f"unknown strategy {name!r}; choose one of {list(STRATEGIES)}")


def read_parameter_server_config() -> dict:
    """TF_CONFIG of a parameter-server cluster: one `chief`, at least one `worker` and `ps`."""
    parsed = read_tf_config()
    if not parsed:
        raise ConfigError(f"strategy {PARAMETER_SERVER!r} needs the {TF_CONFIG} environment "
                          f"variable of its cluster, e.g. {_PS_EXAMPLE}")
    cluster = parsed["cluster"]
    counts = {job: len(cluster.get(job) or []) for job in _PS_JOBS}
    unknown = sorted(set(cluster) - set(_PS_JOBS))
    if counts["chief"] != 1 or not counts["worker"] or not counts["ps"] or unknown:
        raise ConfigError(f"strategy {PARAMETER_SERVER!r}: {TF_CONFIG}'s cluster needs exactly "
                          "one 'chief' (the coordinator), at least one 'worker' and at least "
                          f"one 'ps' task and nothing else; it has {counts}"
                          + (f" and {unknown}" if unknown else "") + f", e.g. {_PS_EXAMPLE}")
    return parsed


def run_server_if_needed() -> None:
    """On a `worker` or `ps` task of a parameter-server TF_CONFIG: serves until killed.

    Such a task runs no program of its own; its `tf.distribute.Server` executes what the
    coordinator sends it, so this never returns there. On the chief, or outside a
    parameter-server cluster (no `ps` job), it returns at once.
    """
    parsed = read_tf_config()
    task_type = parsed.get("task", {}).get("type")
    if task_type not in ("worker", "ps") or not parsed["cluster"].get("ps"):
        return
    read_parameter_server_config()
    # As TensorFlow's parameter-server tutorial does on its servers: a call to a task that is
    # down fails at once instead of waiting for it, so a failed worker or ps is reported to
    # the coordinator (which moves a failed worker's steps to the others).
    os.environ["GRPC_FAIL_FAST"] = "use_caller"
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # The server's thread pools follow this process' settings (a shared machine may ask
    # every task to keep to one core); 0 is TensorFlow's "one per core".
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads())
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id,
                                  protocol=resolver.rpc_layer or "grpc", config=config,
                                  start=True)
    server.join()


def _parameter_server_strategy(min_shard_bytes: int) -> tf.distribute.ParameterServerStrategy:
    if int(min_shard_bytes) < 1:
        raise ConfigError(f"min_shard_bytes must be >= 1, got {min_shard_bytes!r}")
    cluster = read_parameter_server_config()["cluster"]
    run_server_if_needed()
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=int(min_shard_bytes), max_shards=len(cluster["ps"]))
    return tf.distribute.ParameterServerStrategy(
        tf.distribute.cluster_resolver.TFConfigClusterResolver(),
        variable_partitioner=partitioner)


def uses_parameter_servers(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether `strategy` is a ParameterServerStrategy (only the coordinator runs the program)."""
    return isinstance(strategy or tf.distribute.get_strategy(),
                      tf.distribute.ParameterServerStrategy)


def variable_shards(module: tf.Module) -> Dict[str, List[str]]:
    """{variable name: device of each shard, in order} for the variables of `module` that a
    ParameterServerStrategy split over its ps tasks ({} when none was split)."""
    shards: Dict[str, Dict[int, str]] = {}
    for variable in module.variables:
        match = _SHARD_NAME.fullmatch(variable.name)
        if match:
            shards.setdefault(match["name"], {})[int(match["index"])] = variable.device
    return {name: [parts[i] for i in sorted(parts)] for name, parts in sorted(shards.items())}


def copy_variables(source: tf.Module, target: tf.Module) -> None:
    """Copies every variable of `target` from the same-structured `source`.

    Goes through a checkpoint, which stores a sharded variable as slices of one whole variable:
    so `source` may be a model trained under parameter servers and `target` the same model
    built on this machine. That is how a model trained there is exported: a SavedModel
    function traced over the shards of a ShardedVariable reloads wrong (its lookups into the
    second shard read the first; TensorFlow 2.20), one over whole variables reloads exactly.

    `target` must have created its variables (a subclassed layer does on its first call): a
    variable created later would wait for a checkpoint that is gone by then.
    """
    # Names repeat (two towers' "output/kernel"), so count: every shard but a first is extra.
    whole = sum(1 for v in source.variables
                if not (m := _SHARD_NAME.fullmatch(v.name)) or m["index"] == "0")
    if len(target.variables) != whole:
        raise ValueError(f"copy_variables: the target has {len(target.variables)} variables, "
                         f"the source {whole}; build both the same way and call the "
                         "target once before copying")
    with tempfile.TemporaryDirectory(prefix="copy_variables_") as tmp:
        path = tf.train.Checkpoint(model=source).write(os.path.join(tmp, "ckpt"))
        status = tf.train.Checkpoint(model=target).read(path)
        status.assert_existing_objects_matched()
        # The source may hold more (its optimizer): only the target's variables are wanted.
        status.expect_partial()


def _cluster_resolver(strategy: tf.distribute.Strategy
                      ) -> Optional[tf.distribute.cluster_resolver.ClusterResolver]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None and uses_parameter_servers(strategy):
        # ParameterServerStrategy does not expose its resolver; `make_strategy` built it from
        # TF_CONFIG, which says the same.
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return resolver


def local_ports(n: int) -> List[int]:
    """`n` TCP ports free on 127.0.0.1 now, for a cluster of local processes (the tests and
    the one-machine benchmarks); all are held open together so no two come out the same."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def task_of(strategy: Optional[tf.distribute.Strategy] = None) -> Tuple[Optional[str], int]:
    """(task type, task index) of this process; (None, 0) outside a cluster."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = _cluster_resolver(strategy)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process keeps the run's artifacts (see the module docstring)."""
    strategy = strategy or tf.distribute.get_strategy()
    task_type, task_id = task_of(strategy)
    if task_type in (None, "chief"):
        return True
    resolver = _cluster_resolver(strategy)
    return (task_type == "worker" and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy: Optional[tf.distribute.Strategy] = None) -> int:
    """Processes training together (1 for the default and mirrored strategies; the `worker`
    tasks under parameter servers, where the chief coordinates and computes no step)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = _cluster_resolver(strategy)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    trainers = ("worker",) if uses_parameter_servers(strategy) else ("chief", "worker")
    return max(1, sum(len(jobs.get(job, [])) for job in trainers))


def barrier(strategy: Optional[tf.distribute.Strategy] = None) -> None:
    """Returns once every worker has called it (a one-number all-reduce); free on one worker.

    Call it after the chief wrote files the other workers read next, so they never read a
    half-updated folder. Free under parameter servers too: only the coordinator runs the
    program.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if num_workers(strategy) > 1 and not uses_parameter_servers(strategy):
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
