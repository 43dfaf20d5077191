"""A reusable Keras training loop: resumable checkpoints, early stopping, logs, curves, speed.

`fit_model` trains any compiled-or-not `tf.keras.Model` whose `fit` understands the given
datasets (the TFRS models here compute their own loss). Per epoch it saves the model, the
optimizer state and the loop state (epoch, best value, patience counter) with a
`tf.train.CheckpointManager` under `run_dir/checkpoints`; calling `fit_model` again on the same
`run_dir` with a freshly built model resumes after the last finished epoch and stops at
`config.epochs` in total.

Distribution: the caller owns the `tf.distribute.Strategy`. Build the model inside
`strategy.scope()` and pass the same strategy here; `fit_model` creates the optimizer inside
that scope (optimizer slots must live with the model variables) and Keras distributes the
datasets. With `strategy=None` the default (single-device) strategy is used. Under a
multi-worker strategy every worker calls `fit_model` with the same `run_dir`: all of them read
it to resume, only the chief writes into it (the others save the same checkpoints into a
private temp folder, see `recommenders_tf.models.distribute`), and a
`tf.keras.callbacks.BackupAndRestore` under `run_dir/backup` lets a cluster whose workers were
restarted mid-`fit` continue from the last finished epoch.

Under a `ParameterServerStrategy` only the coordinator calls `fit_model` (the workers and
parameter servers serve it): it writes `run_dir` itself and resumes from its epoch checkpoints,
with no BackupAndRestore. Keras then needs an endless input and `steps_per_epoch`: each worker
reads its own copy of `train_ds`, repeated and in an order of its own (see
`_parameter_server_input`), and an epoch is one pass of `train_ds` in steps, spread over the
workers as they become free. Keras does not evaluate `val_ds` there (its inexact evaluation
fails on a finite validation set, and its exact one refuses models that track metrics of their
own, as the TFRS models do): validation values come from `metric_callbacks`, which the
coordinator runs; a `monitor` on a Keras validation value is reported missing. The epoch's
train metrics are those the last scheduled step returned (Keras warns that it cannot read them
otherwise), close to the epoch means since the metrics accumulate on the parameter servers.

Per-worker input (`input_fn`): under a multi-worker strategy (not parameter servers) a
function of a `tf.distribute.InputContext` that returns this worker's batched, endless
input (e.g. `read_example_shards(..., input_context=context, repeat=True)`, which reads only
the worker's own files) replaces `train_ds` in Keras `fit`, through a `DatasetCreator`, with
`steps_per_epoch` = ceil(examples_per_epoch / config.batch_size): every worker then runs the
same number of steps whatever the sizes of its files. `train_ds` still builds the variables.

Epoch selection on anything Keras does not compute itself (e.g. a validation ranking metric):
a `ValidationMetrics` callback passed as `metric_callbacks` adds the values to the epoch's logs
before early stopping reads them, so `config.monitor="val_ndcg@10"` with
`monitor_mode="max"` stops on it, `FitResult.best_epoch` is the selected epoch, and the values
are in the history (and resume with it).

Run directory layout:
  checkpoints/        latest epochs (model + optimizer + loop state), best/ (best weights)
  backup/             multi-worker only (not under parameter servers): BackupAndRestore state
                      of an unfinished `fit` call
  tensorboard/        TensorBoard event files
  history.json        per-epoch metrics, including epochs from interrupted sessions
  training_curves.png one panel per metric, train vs validation
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import recommenders_tf  # noqa: F401  (selects tf-keras before TensorFlow loads)
import tensorflow as tf

from recommenders_tf.config import write_json
from recommenders_tf.models.distribute import (barrier, num_workers, uses_parameter_servers,
                                               writable_dir)

BACKUP_DIR = "backup"
# tf.data's ExternalStatePolicy.FAIL: a dataset that reads a resource of the coordinator (a
# lookup table in a map) cannot be rebuilt on a worker, and must say so.
_FAIL_ON_EXTERNAL_STATE = 2

class LazyAdam(tf.keras.optimizers.Adam):
    """Adam whose sparse updates (embedding rows) touch only the rows in the batch.

    tf-keras Adam applies an `IndexedSlices` gradient by decaying both moments and moving
    the variable over the WHOLE table at every step, so a step's cost grows with the
    vocabulary: with 400K users and 200K items (2 x 38M floats of moments) that is most of
    the step. Here the rows a batch touches get the usual Adam update and the others keep
    their moments, as in TF Addons' `LazyAdam` (no longer installable beside TF 2.20).
    Dense gradients get exactly `Adam`'s update. `apply_gradients` has summed duplicate
    indices before `update_step` sees them.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        lr = tf.cast(self.learning_rate, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        beta_1 = tf.cast(self.beta_1, variable.dtype)
        beta_2 = tf.cast(self.beta_2, variable.dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[key], self._velocities[key]
        rows, grad = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(
            alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


_OPTIMIZERS = {
    "adam": tf.keras.optimizers.Adam,
    "lazy_adam": LazyAdam,
    "adagrad": tf.keras.optimizers.Adagrad,
    "sgd": tf.keras.optimizers.SGD,
    "rmsprop": tf.keras.optimizers.RMSprop,
}


@dataclasses.dataclass
class TrainingConfig:
    """How to train.

    Args:
      optimizer: one of "adam", "lazy_adam" (`LazyAdam`: embedding rows updated only when
        a batch uses them, so a step costs the batch, not the vocabulary), "adagrad", "sgd",
        "rmsprop".
      learning_rate: optimizer learning rate.
      epochs: total epochs of the run (a resumed run counts the ones already done).
      batch_size: examples per batch (used by whoever batches the datasets).
      patience: epochs without improvement of `monitor` before stopping; 0 disables early
        stopping.
      monitor: metric watched by early stopping and best-weight restore ("val_" prefix for
        the validation value; falls back to the train value when there is no validation set).
      monitor_mode: "min" or "max".
      min_delta: smallest change that counts as an improvement.
      restore_best: load the best epoch's weights at the end.
      max_checkpoints: recent epoch checkpoints kept.
      seed: global seed set before the model is built.
      verbose: Keras verbosity (0 silent, 1 progress bar, 2 one line per epoch).
      steps_per_execution: training steps run per call into the compiled function; above 1
        the per-step Python and dispatch cost is paid once per group (the same steps, so
        the same weights). Epoch-level callbacks only, as here, see no difference.
    """

    optimizer: str = "adam"
    learning_rate: float = 1e-3
    epochs: int = 10
    batch_size: int = 256
    patience: int = 3
    monitor: str = "val_example_loss"
    monitor_mode: str = "min"
    min_delta: float = 0.0
    restore_best: bool = True
    max_checkpoints: int = 2
    seed: int = 0
    verbose: int = 2
    steps_per_execution: int = 1

    def __post_init__(self):
        self.validate_training()

    def validate_training(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"TrainingConfig.optimizer must be one of {sorted(_OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"TrainingConfig.monitor_mode must be 'min' or 'max', "
                             f"got {self.monitor_mode!r}")
        for name in ("epochs", "batch_size", "max_checkpoints", "steps_per_execution"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainingConfig.{name} must be >= 1, "
                                 f"got {getattr(self, name)!r}")
        if self.patience < 0 or not self.learning_rate > 0:
            raise ValueError("TrainingConfig needs patience >= 0 and learning_rate > 0, got "
                             f"{self.patience!r}, {self.learning_rate!r}")


def make_optimizer(config: TrainingConfig) -> tf.keras.optimizers.Optimizer:
    return _OPTIMIZERS[config.optimizer](learning_rate=config.learning_rate)


@dataclasses.dataclass
class FitResult:
    """What `fit_model` did.

    Args:
      history: metric name -> per-epoch values over the whole run (all sessions).
      epochs_done: epochs finished in total.
      initial_epoch: epochs already done when this session started (> 0 means resumed).
      best_epoch: 1-based epoch with the best `monitor` value (None if never evaluated).
      best_value: that value.
      stopped_early: early stopping ended the run before `config.epochs`.
      examples_per_second: training throughput over this session's epochs after its first
        (the first includes tracing); None if fewer than two epochs ran in this session.
      first_epoch_examples_per_second: throughput of this session's first epoch.
      train_seconds: wall time of this session's training (without validation).
      examples_per_epoch: examples in one pass over the train dataset.
      run_dir: where the artifacts are.
      start: what a fit that started from a fixed scorer found (`fit_ranking_model(start=)`):
        that scorer's and the trained model's held-out NDCG@10 and which one was kept.
    """

    history: Dict[str, List[float]]
    epochs_done: int
    initial_epoch: int
    best_epoch: Optional[int]
    best_value: Optional[float]
    stopped_early: bool
    examples_per_second: Optional[float]
    first_epoch_examples_per_second: Optional[float]
    train_seconds: float
    examples_per_epoch: int
    run_dir: str
    start: Optional[Dict[str, Any]] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_examples(dataset: tf.data.Dataset) -> int:
    """Examples in a batched dataset of (nested) tensors: sum of the leading dimensions."""
    def batch_size(*element):
        return tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)
    return int(dataset.map(batch_size).reduce(tf.constant(0, tf.int64), lambda a, b: a + b))


class _LoopState(tf.Module):
    """Epoch counter and early-stopping state, checkpointed with the model."""

    def __init__(self, mode: str):
        super().__init__(name="loop_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(math.inf if mode == "min" else -math.inf, dtype=tf.float64,
                                trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)


class _CheckpointAndEarlyStop(tf.keras.callbacks.Callback):
    """Saves every epoch, tracks the best monitored value, stops after `patience` epochs."""

    def __init__(self, config: TrainingConfig, state: _LoopState,
                 manager: tf.train.CheckpointManager, best_manager: tf.train.CheckpointManager,
                 has_validation: bool, history: Dict[str, List[float]], history_path: str):
        super().__init__()
        self.config, self.state = config, state
        self.manager, self.best_manager = manager, best_manager
        self.has_validation = has_validation
        self.history, self.history_path = history, history_path
        self.stopped_early = False

    def _monitored(self, logs: dict) -> float:
        key = self.config.monitor
        if key not in logs and not self.has_validation and key.startswith("val_"):
            key = key[len("val_"):]
        if key not in logs:
            raise KeyError(f"early-stopping monitor {self.config.monitor!r} is not among the "
                           f"epoch metrics {sorted(logs)}; set TrainingConfig.monitor")
        return float(logs[key])

    def on_epoch_end(self, epoch: int, logs=None):
        logs = dict(logs or {})
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        value = self._monitored(logs)
        better = (value < self.state.best.numpy() - self.config.min_delta
                  if self.config.monitor_mode == "min"
                  else value > self.state.best.numpy() + self.config.min_delta)
        self.state.epoch.assign(epoch + 1)
        if better and math.isfinite(value):
            self.state.best.assign(value)
            self.state.best_epoch.assign(epoch + 1)
            self.state.wait.assign(0)
            self.best_manager.save(checkpoint_number=epoch + 1)
        else:
            self.state.wait.assign_add(1)
        # History first: a crash between the two leaves a history the checkpoint can trim.
        write_json(Path(self.history_path), self.history)
        self.manager.save(checkpoint_number=epoch + 1)
        if self.config.patience and self.state.wait.numpy() >= self.config.patience:
            self.stopped_early = True
            self.model.stop_training = True


class _Throughput(tf.keras.callbacks.Callback):
    """Per-epoch training seconds, excluding the validation pass."""

    def __init__(self):
        super().__init__()
        self.seconds: List[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        # Validation runs inside the epoch; stop the clock once per epoch when it starts.
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        if self._start is not None:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = None


class ValidationMetrics(tf.keras.callbacks.Callback):
    """Logs metrics computed outside Keras after every epoch, for `fit_model` to select on.

    Pass it to `fit_model(..., metric_callbacks=[...])`: it runs before the checkpointing and
    early-stopping callback, which then sees `prefix + name` among the epoch's metrics.

    Args:
      compute: called after each epoch with no argument; returns {name: value} for the model's
        current weights (e.g. `lambda: evaluator.evaluate(score_fn).metrics`).
      names: which of the returned metrics to log.
      prefix: prepended to each name in the logs ("val_": the Keras mark of a held-out value).
      log: called with a one-line summary after each epoch (e.g. `print`), or None.

    Example:
      >>> ranking = ValidationMetrics(lambda: evaluator.evaluate(score).metrics, ["ndcg@10"])
      >>> config = dataclasses.replace(config, monitor="val_ndcg@10", monitor_mode="max")
      >>> fit_model(model, train_ds, None, config, run_dir, metric_callbacks=[ranking])
    """

    def __init__(self, compute: Callable[[], Mapping[str, float]], names: Sequence[str],
                 prefix: str = "val_", log: Optional[Callable[[str], None]] = None):
        super().__init__()
        self.compute = compute
        self.names = tuple(names)
        self.prefix = prefix
        self.log = log

    def on_epoch_end(self, epoch: int, logs=None):
        values = self.compute()
        missing = [name for name in self.names if name not in values]
        if missing:
            raise KeyError(f"ValidationMetrics: {missing} not among the computed metrics "
                           f"{sorted(values)}")
        # Keras hands every callback the same logs dict, so the later ones see these values.
        if logs is not None:
            for name in self.names:
                logs[self.prefix + name] = float(values[name])
        if self.log is not None:
            shown = " ".join(f"{self.prefix}{n}={float(values[n]):.4f}" for n in self.names)
            self.log(f"  epoch {epoch + 1}: {shown}")


_BOOKKEEPING = ("regularization_loss", "total_loss")


def plot_history(history: Dict[str, List[float]], path: str) -> str:
    """One panel per metric (train and val_ curves together), saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # TFRS logs total_loss = loss + regularization_loss: two more panels a reader rarely wants,
    # and each panel costs a noticeable share of a small fit's time.
    names = sorted(k for k in history if not k.startswith("val_") and k not in _BOOKKEEPING)
    names += sorted(k[4:] for k in history if k.startswith("val_") and k[4:] not in history
                    and k[4:] not in _BOOKKEEPING)
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(6, 2.6 * max(1, len(names))),
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for key, label in ((name, "train"), ("val_" + name, "validation")):
            if key in history:
                values = history[key]
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    # Fixed margins: tight_layout measures every text box and doubled the plot's cost.
    fig.subplots_adjust(left=0.12, right=0.97, top=1 - 0.35 / fig.get_figheight(),
                        bottom=0.5 / fig.get_figheight(), hspace=0.75)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _parameter_server_input(dataset: tf.data.Dataset, verbose: int
                            ) -> Tuple[tf.keras.utils.experimental.DatasetCreator, Dict[str, int]]:
    """(`fit` input, `fit` options) that train on `dataset` under a ParameterServerStrategy.

    There each worker iterates a copy of the input of its own and the coordinator sends steps
    to whichever worker is free, so the input repeats forever and `steps_per_epoch` (one pass
    of `dataset` in batches, as on one machine) marks the epochs. The copies are rebuilt on
    the workers from the dataset's serialized graph: the coordinator's dataset lives in its own
    runtime, which the workers cannot read. Each worker's shuffle holds one pass of batches,
    the size of the in-memory inputs here (a file-based input would shuffle its files instead).
    """
    steps = int(dataset.cardinality())
    if steps < 0:  # unknown (a filter) or infinite: count one pass
        steps = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if steps < 1:
        raise ValueError("fit_model: the training dataset is empty")
    spec = dataset.element_spec
    graph = tf.raw_ops.DatasetToGraphV2(
        input_dataset=tf.data.experimental.to_variant(dataset),
        external_state_policy=_FAIL_ON_EXTERNAL_STATE, strip_device_assignment=True)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        rebuilt = tf.data.experimental.from_variant(
            tf.raw_ops.DatasetFromGraph(graph_def=graph), spec)
        # A no-op under ParameterServerStrategy (one input pipeline per worker), which is why
        # the copies are desynchronised below; kept so a sharding context is never ignored.
        rebuilt = rebuilt.shard(context.num_input_pipelines, context.input_pipeline_id)
        # The coordinator traces this function once and every worker runs that trace. The
        # models set a global seed, which fixes the seed of an "unseeded" shuffle in the trace,
        # so every worker would read the batches in the same order and, with two workers,
        # train each batch twice per epoch and half of them not at all. Without a seed in the
        # traced graph the shuffle draws fresh seeds on each worker (set_seed here changes only
        # the graph being traced, never the process' global seed).
        if not tf.executing_eagerly():
            tf.random.set_seed(None)
        return rebuilt.repeat().shuffle(steps)

    return (tf.keras.utils.experimental.DatasetCreator(dataset_fn),
            # verbose=1 (a progress bar) is refused under parameter servers; 2 is one line.
            {"steps_per_epoch": steps, "verbose": 2 if verbose == 1 else verbose})


def _create_variables(model: tf.keras.Model, train_ds: tf.data.Dataset, strategy) -> None:
    """Creates the model's variables and the optimizer's slots before the first step.

    Keras traces its train function once more when the first trace creates variables (the
    layers' on the first call, the optimizer's slots on the first update) and then again to
    run without creating any; creating them beforehand saves that second trace, the largest
    fixed cost of the many short fits of the cascade (a tiny cascade's fits: about a fifth of
    their time). Restored checkpoints fill these variables as they are created.
    """
    with strategy.scope():
        if not model.built:
            element = next(iter(train_ds.take(1)))
            try:
                model(element[0] if isinstance(element, tuple) else element, training=False)
            except NotImplementedError:
                return  # a training wrapper without a forward pass of its own: Keras builds it
        try:
            model.optimizer.build(model.trainable_variables)
        except ValueError:
            pass  # already built (a second fit of the same model and optimizer)


def fit_model(model: tf.keras.Model, train_ds: tf.data.Dataset,
              val_ds: Optional[tf.data.Dataset], config: TrainingConfig, run_dir: str,
              strategy: Optional[tf.distribute.Strategy] = None,
              callbacks: Sequence[tf.keras.callbacks.Callback] = (),
              examples_per_epoch: Optional[int] = None,
              metric_callbacks: Sequence[tf.keras.callbacks.Callback] = (),
              input_fn: Optional[Callable[[tf.distribute.InputContext], tf.data.Dataset]]
              = None) -> FitResult:
    """Trains `model` for `config.epochs` epochs in total, resuming from `run_dir` if possible.

    Args:
      model: the model, built inside `strategy.scope()` if a strategy is used. If it has no
        optimizer yet it is compiled with `make_optimizer(config)` inside that scope.
      train_ds: batched training dataset (not repeated).
      val_ds: batched validation dataset, or None (early stopping then watches train values).
      config: TrainingConfig (or a subclass such as RetrievalConfig).
      run_dir: artifact folder; reused as-is to resume an interrupted run. Under a
        multi-worker strategy every worker passes the same folder (only the chief writes it).
      strategy: the tf.distribute strategy the model was built under, or None.
      callbacks: extra Keras callbacks, run after the checkpointing ones.
      examples_per_epoch: size of one pass over `train_ds`; counted once if not given.
      metric_callbacks: callbacks that add metrics to the epoch's logs (`ValidationMetrics`);
        they run before checkpointing and early stopping, so `config.monitor` may name what
        they log, and after the throughput clock has stopped.
      input_fn: under a multi-worker strategy, each worker's own endless batched input
        (global `config.batch_size` split per replica by the function); see the module
        docstring. Ignored on one worker and under parameter servers.

    Returns:
      FitResult. The model holds the best epoch's weights if `config.restore_best`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with writable_dir(run_dir, strategy) as out:
        return _fit(model, train_ds, val_ds, config, run_dir, out, strategy, callbacks,
                    examples_per_epoch, metric_callbacks, input_fn)


def _fit(model, train_ds, val_ds, config: TrainingConfig, run_dir: str, out: str, strategy,
         callbacks, examples_per_epoch: Optional[int], metric_callbacks=(),
         input_fn=None) -> FitResult:
    """`fit_model` reading its resume state from `run_dir` and writing into `out` (the same
    folder on the chief, a private temp folder on the other workers)."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    history_path = os.path.join(out, "history.json")
    parameter_servers = uses_parameter_servers(strategy)
    with strategy.scope():
        if getattr(model, "optimizer", None) is None:
            model.compile(optimizer=make_optimizer(config),
                          steps_per_execution=config.steps_per_execution)
        state = _LoopState(config.monitor_mode)
    if strategy.num_replicas_in_sync > 1:
        # Keras' "auto" sums the replicas' step logs, which suits per-replica loss shares but
        # multiplies metric results (already aggregated over the replicas) by their number;
        # the models here log metric results, so take one replica's copy.
        model.distribute_reduction_method = "first"
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, loop=state)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(out, "checkpoints"),
                                         max_to_keep=config.max_checkpoints)
    best_checkpoint = tf.train.Checkpoint(model=model)
    best_manager = tf.train.CheckpointManager(
        best_checkpoint, os.path.join(out, "checkpoints", "best"), max_to_keep=1)
    history: Dict[str, List[float]] = {}
    latest = tf.train.latest_checkpoint(ckpt_dir)
    if latest:
        # Restoring before the first step: deferred restoration fills the optimizer slots
        # when Keras creates them on the first apply_gradients.
        checkpoint.restore(latest).expect_partial()
        saved_history = os.path.join(run_dir, "history.json")
        if os.path.exists(saved_history):
            with open(saved_history) as f:
                history = json.load(f)
        done = int(state.epoch.numpy())
        history = {k: v[:done] for k, v in history.items()}
    initial_epoch = int(state.epoch.numpy())
    if examples_per_epoch is None:
        examples_per_epoch = count_examples(train_ds)

    keeper = _CheckpointAndEarlyStop(config, state, manager, best_manager, val_ds is not None,
                                     history, history_path)
    timer = _Throughput()
    fit_input, fit_val, fit_options = train_ds, val_ds, {"verbose": config.verbose}
    if parameter_servers:
        fit_input, fit_options = _parameter_server_input(train_ds, config.verbose)
        # Keras cannot evaluate it there: each worker reads a whole copy of a finite
        # validation set, the first to run out ends the evaluation with an OutOfRangeError,
        # and exact evaluation (`pss_evaluation_shards`) refuses models that track metrics of
        # their own, as the TFRS models do. Validation values come from `metric_callbacks`,
        # which run on the coordinator.
        fit_val = None
    elif input_fn is not None and num_workers(strategy) > 1:
        fit_input = tf.keras.utils.experimental.DatasetCreator(input_fn)
        fit_options["steps_per_epoch"] = max(1, math.ceil(examples_per_epoch
                                                          / config.batch_size))
    # Saved before the keeper's checkpoint at each epoch end, so after a crash between the two
    # the backup (which Keras restores last, in on_train_begin) is never older than the
    # weights fit_model restored above. Under parameter servers only the coordinator runs the
    # program, the keeper's epoch checkpoints are its backup, and the cluster coordinator
    # reschedules the steps of a worker that fails.
    backup = []
    if num_workers(strategy) > 1 and not parameter_servers:
        backup = [tf.keras.callbacks.BackupAndRestore(os.path.join(run_dir, BACKUP_DIR))]
        if not model.built:
            # BackupAndRestore restores into existing variables only; a subclassed model
            # creates its variables on the first call.
            element = next(iter(train_ds.take(1)))
            with strategy.scope():
                model(element[0] if isinstance(element, tuple) else element, training=False)
    # A resumed run that already exhausted its patience must not train further.
    exhausted = bool(config.patience) and int(state.wait.numpy()) >= config.patience
    if initial_epoch < config.epochs and not exhausted and not parameter_servers:
        _create_variables(model, train_ds, strategy)
    if initial_epoch < config.epochs and not exhausted:
        model.fit(
            fit_input, validation_data=fit_val, epochs=config.epochs, initial_epoch=initial_epoch,
            callbacks=[*backup, timer, *metric_callbacks, keeper,
                       tf.keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"),
                                                      write_graph=False, profile_batch=0),
                       *callbacks],
            **fit_options)
        # The next fit_model on this run_dir restores the chief's newest checkpoint on every
        # worker; none may read it before the chief has finished writing it.
        barrier(strategy)
    write_json(Path(history_path), history)

    best_epoch = int(state.best_epoch.numpy()) or None
    # A worker other than the chief only holds the best checkpoints of this session.
    best = (best_manager.latest_checkpoint
            or tf.train.latest_checkpoint(os.path.join(ckpt_dir, "best")))
    if config.restore_best and best:
        best_checkpoint.restore(best).expect_partial()
    if history:
        plot_history(history, os.path.join(out, "training_curves.png"))

    seconds = timer.seconds
    after_first = seconds[1:]
    return FitResult(
        history=history,
        epochs_done=int(state.epoch.numpy()),
        initial_epoch=initial_epoch,
        best_epoch=best_epoch,
        best_value=float(state.best.numpy()) if best_epoch else None,
        stopped_early=((keeper.stopped_early or exhausted)
                       and int(state.epoch.numpy()) < config.epochs),
        examples_per_second=(examples_per_epoch * len(after_first) / sum(after_first)
                             if after_first else None),
        first_epoch_examples_per_second=(examples_per_epoch / seconds[0] if seconds else None),
        train_seconds=float(sum(seconds)),
        examples_per_epoch=int(examples_per_epoch),
        run_dir=run_dir,
    )
