"""Jitted training and evaluation, the training loop, orbax checkpoints and metric writers.

The loop runs whole chunks of steps inside one jitted ``lax.fori_loop`` (between two events:
evaluation, logging, checkpointing), so the host only wakes up at events; on CPU, models with
convolutions instead dispatch one jitted step per call (:func:`host_loop`). Batches are drawn on
the device from device-resident arrays in an order that is a pure function of
``(data_key, epoch, step)``; together with the checkpointed state this makes a resumed run
bitwise identical to an uninterrupted one on CPU.

The trainer knows no method: it trains a state with a :class:`~experiments.sparsifiers.Sparsifier`
(an optax transformation, a forward-time function applied to the params inside the loss, and a
mask readout) and writes what it is told through :mod:`experiments.workdir`.

The state is a plain dict (``step``, ``params``, ``model_state``, ``opt_state``, ``data_key``,
``aug_key``) so orbax can checkpoint it and protocols (IMP) can rewind it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax import lax

from experiments import data as data_lib
from experiments import models, rng
from experiments.parallel import Parallel
from experiments.parsing import ConfigError, parse_duration
from experiments.sparsifiers import Sparsifier
from experiments.workdir import Checkpoints, MetricWriter
from sparsejax import masks as masks_lib
from sparsejax import pqi, transforms

PyTree = Any
EVAL_BATCH = 1000


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. the loss became NaN); the message says at which step."""


class Preempted(RuntimeError):
  """SIGTERM arrived (a preemption); a checkpoint was saved and the same command resumes."""


class _Stop:
  """Whether SIGTERM asked for a stop; the training loop stops at its next chunk boundary.

  A plain attribute, set without a lock: a second SIGTERM can arrive while the handler runs, and
  runs the handler again inside it. ``threading.Event.set`` would then wait forever for the lock
  that its outer call holds, and the process would hang instead of checkpointing.
  """
  requested = False


def request_stop(signum=None, frame=None) -> None:
  """Asks the running (or the next) training to checkpoint and raise :class:`Preempted`; the
  SIGTERM handler (install it with ``signal.signal(signal.SIGTERM, request_stop)``). Reentrant:
  it takes no lock."""
  del signum, frame
  _Stop.requested = True


@contextlib.contextmanager
def _stop_on_sigterm():
  """SIGTERM calls :func:`request_stop` while the block runs (in the main thread)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, request_stop)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass(frozen=True)
class Durations:
  """Step counts of one experiment, resolved from the config's durations."""
  steps_per_epoch: int
  total: int
  eval_every: int
  log_every: int
  checkpoint_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, num_train: int) -> "Durations":
    try:
      spe = data_lib.steps_per_epoch(num_train, config.batch_size)
    except ValueError as e:
      raise ConfigError(f"batch_size={config.batch_size}: {e}") from None
    total = parse_duration(config.steps, spe, "steps")
    if total <= 0:
      raise ConfigError(f"steps={config.steps!r} gives no training step.")
    every = lambda key: max(1, parse_duration(config[key], spe, key))
    return cls(spe, total, every("eval_every"), every("log_every"), every("checkpoint_every"))


def learning_rate_schedule(config: ml_collections.ConfigDict, d: Durations) -> optax.Schedule:
  """Constant, step (milestones x gamma) or cosine decay, after an optional linear warm-up."""
  lr = config.learning_rate
  warmup = parse_duration(config.warmup, d.steps_per_epoch, "warmup")
  if config.lr_schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.lr_schedule == "step":
    boundaries = [parse_duration(m, d.steps_per_epoch, "lr_milestones") - warmup
                  for m in config.lr_milestones]
    main = optax.piecewise_constant_schedule(lr, {b: config.lr_gamma for b in boundaries})
  else:
    main = optax.cosine_decay_schedule(lr, max(1, d.total - warmup))
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def base_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  """The dense optimizer; weight decay is L2 (added to the gradient) except for AdamW."""
  name, wd = config.optimizer, config.weight_decay
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd)
  inner = {
      "sgd": lambda: optax.sgd(schedule),
      "momentum": lambda: optax.sgd(schedule, momentum=config.momentum),
      "nesterov": lambda: optax.sgd(schedule, momentum=config.momentum, nesterov=True),
      "adam": lambda: optax.adam(schedule),
  }[name]()
  return optax.chain(optax.add_decayed_weights(wd), inner) if wd else inner


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """What the jitted functions close over: model, data and sizes (never arrays that change), and
  with ``parallel`` the mesh the data lies on and the batches are split over."""
  model: models.Model
  data: data_lib.Dataset
  durations: Durations
  batch_size: int
  augment: bool
  parallel: Parallel | None = None

  def loss(self, params, model_state, x, y, train: bool):
    logits, new_state = self.model.apply(params, model_state, x, train=train)
    return cross_entropy(logits, y), (logits, new_state)


def make_train_steps(task: Task, sparsifier: Sparsifier, axes: PyTree = None) -> Callable:
  """``train_steps(state, n) -> (state, (loss_sum, correct_sum))``: n steps in one jitted loop
  (or, see :func:`host_loop`, n calls of one jitted step).

  The loss is computed on ``sparsifier.forward(params, opt_state, step)`` (the effective params:
  the params themselves for mask-based methods), and its gradient with respect to the params
  goes to ``sparsifier.tx`` (with the loss as ``value=`` when it takes extra arguments).

  ``axes`` (a pytree like the state of 0 or None, :class:`Replicates`) trains replicates stacked
  along a leading axis under ``jax.vmap``: each step is one program for all of them, the leaves
  marked None (the step counters) shared, so that ``lax.cond`` on them stays a branch instead
  of computing both sides for every replicate. The sums are then one per replicate.

  With ``sparsifier.update_steps`` the fused loop runs the steps between mask updates without
  the transformation's per-step cond (:func:`_segments`), unless replicates count their steps
  each; the host loop keeps one program for every step.
  """
  data, spe, bs = task.data, task.durations.steps_per_epoch, task.batch_size
  optimizer, forward = sparsifier.tx, sparsifier.forward

  def loss(params, opt_state, step, model_state, x, y):
    return task.loss(forward(params, opt_state, step), model_state, x, y, True)

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  # optax's convention: transformations with extra arguments get the loss as ``value`` (CRIC's
  # sensitivity probes read it).
  takes_value = isinstance(optimizer, optax.GradientTransformationExtraArgs)
  extra_args = lambda value: {"value": value} if takes_value else {}
  update_steps = sparsifier.update_steps
  if update_steps is not None and not takes_value:
    raise ValueError("A sparsifier with update_steps needs a tx that takes optax extra arguments "
                     "(mask_update=False on the steps in between), got "
                     f"{type(optimizer).__name__}.")

  def one_step(i, carry, no_mask_update: bool = False):
    state, perm, loss_sum, correct = carry
    step = state["step"]
    epoch, within = step // spe, step % spe
    perm = lax.cond(within == 0,
                    lambda: data_lib.epoch_permutation(state["data_key"], epoch, data.num_train),
                    lambda: perm)
    x, y = data_lib.batch_at(data.train_x, data.train_y, perm, within, bs)
    if task.augment:
      x = data_lib.augment(jax.random.fold_in(state["aug_key"], step), x)
    if task.parallel is not None:  # from here on, each device computes its slice of the batch
      x, y = task.parallel.shard_batch(x), task.parallel.shard_batch(y)
    params = state["params"]
    (loss, (logits, model_state)), grads = grad_fn(params, state["opt_state"], step,
                                                   state["model_state"], x, y)
    promise = {transforms.MASK_UPDATE: False} if no_mask_update else {}
    updates, opt_state = optimizer.update(grads, state["opt_state"], params, **extra_args(loss),
                                          **promise)
    new_state = dict(state, step=step + 1, params=optax.apply_updates(params, updates),
                     model_state=model_state, opt_state=opt_state)
    return (new_state, perm, loss_sum + loss,
            correct + jnp.sum(jnp.argmax(logits, -1) == y, dtype=jnp.int32))

  def start(state):
    perm = data_lib.epoch_permutation(state["data_key"], state["step"] // spe, data.num_train)
    return (state, perm, jnp.float32(0), jnp.int32(0))

  between_updates = functools.partial(one_step, no_mask_update=True)
  # Replicates with a step counter each (batched counters) run every step with its cond.
  segmented = update_steps is not None and (axes is None or axes["step"] is None)
  if axes is not None:
    carry_axes = (axes, 0, 0, 0)
    start = jax.vmap(start, in_axes=(axes,), out_axes=carry_axes)
    if host_loop(task.model):
      one_step = _unrolled(one_step, carry_axes)
    else:
      one_step, between_updates = (jax.vmap(f, in_axes=(None, carry_axes), out_axes=carry_axes)
                                   for f in (one_step, between_updates))

  if host_loop(task.model):
    start_jit, step_jit = jax.jit(start), jax.jit(one_step, donate_argnums=1)

    def train_steps(state, n):
      carry = start_jit(state)
      for i in range(n):  # dispatched asynchronously: the host does not wait for each step
        carry = step_jit(i, carry)
      state, _, loss_sum, correct = carry
      return state, (loss_sum, correct)

    return train_steps

  @functools.partial(jax.jit, donate_argnums=0)
  def train_steps(state, n):
    if segmented:
      carry = _segments(one_step, between_updates, update_steps, start(state), state["step"] + n)
    else:
      carry = lax.fori_loop(0, n, one_step, start(state))
    state, _, loss_sum, correct = carry
    return state, (loss_sum, correct)

  return train_steps


def _segments(one_step: Callable, between_updates: Callable, update_steps, carry, end):
  """The steps of ``carry`` up to step ``end``: each run of steps between two mask updates in a
  ``fori_loop`` of ``between_updates`` (the sparsifier's transformation told ``mask_update=False``,
  so it has no per-step ``lax.cond``), each update step by ``one_step``. One cond per update
  remains, around the update step; XLA:CPU copies the masks and the optimizer state through an
  untaken cond, which at every step cost RigL about 0.1x a dense step."""
  def segment(carry):
    step = carry[0]["step"]
    upto = jnp.minimum(update_steps.next_update_step(step), end)
    carry = lax.fori_loop(step, upto, between_updates, carry)
    return lax.cond(upto < end, lambda c: one_step(upto, c), lambda c: c, carry)

  return lax.while_loop(lambda carry: carry[0]["step"] < end, segment, carry)


def _is_shared(axis) -> bool:
  return axis is None


def take(tree: PyTree, axes: PyTree, i: int) -> PyTree:
  """Replicate ``i`` of ``tree``, stacked along ``axes`` (0, or None for a shared leaf)."""
  return jax.tree.map(lambda a, x: x if a is None else x[i], axes, tree, is_leaf=_is_shared)


def _unrolled(one_step: Callable, carry_axes: PyTree) -> Callable:
  """``one_step`` of stacked replicates as a Python loop over them inside one program: for
  convolutional models on CPU, where ``vmap`` turns each convolution over N kernels into a
  grouped convolution that XLA:CPU runs several times slower than N plain ones. The shared
  leaves (step counters) are the same in every replicate's result; the first one's is kept."""
  def step(i, carry):
    n = carry[1].shape[0]  # the stacked data orders
    outs = [one_step(i, take(carry, carry_axes, r)) for r in range(n)]
    return jax.tree.map(lambda a, *xs: xs[0] if a is None else jnp.stack(xs), carry_axes, *outs,
                        is_leaf=_is_shared)

  return step


def host_loop(model: models.Model) -> bool:
  """Whether steps of ``model`` run one jitted call each from a Python loop rather than inside
  one ``lax.fori_loop``: on CPU, for models with convolutions. XLA:CPU compiles a convolution
  inside a loop body into a far slower kernel than the same convolution outside (jax-ml/jax
  issue 12868: a training step of ``cnn_bn`` at batch 128 costs about 40 times more inside the
  loop on the 2-core CPU machine); everywhere else the loop keeps the host out of the way."""
  if jax.default_backend() != "cpu":
    return False
  params, _ = jax.eval_shape(model.init, jax.random.key(0))
  return any(leaf.ndim > 2 for leaf in jax.tree.leaves(params))


def make_evaluate(task: Task, vectorized: bool = False) -> Callable:
  """``evaluate(params, model_state) -> (mean loss, accuracy)`` on the whole test split; with
  ``vectorized``, of replicates stacked along a leading axis (one loss and accuracy each)."""
  x, y = task.data.test_x, task.data.test_y
  n = x.shape[0]
  parallel = task.parallel
  shards = 1 if parallel is None else parallel.data_size
  batch = -(-min(EVAL_BATCH, n) // shards) * shards  # splits evenly over the data axis
  pad = -n % batch
  xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(-1, batch, *x.shape[1:])
  ys = jnp.pad(y, (0, pad)).reshape(-1, batch)
  weights = (jnp.arange(n + pad) < n).reshape(-1, batch)

  def one(params, model_state, xb, yb, wb):
    if parallel is not None:
      xb, yb, wb = (parallel.shard_batch(a) for a in (xb, yb, wb))
    logits, _ = task.model.apply(params, model_state, xb, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.sum(losses * wb), jnp.sum((jnp.argmax(logits, -1) == yb) & wb)

  if vectorized and host_loop(task.model):  # N plain convolutions, see _unrolled
    single = one

    def one(params, model_state, xb, yb, wb):
      n = jax.tree.leaves(params)[0].shape[0]
      sums = [single(*jax.tree.map(lambda x: x[r], (params, model_state)), xb, yb, wb)
              for r in range(n)]
      return tuple(jnp.stack(column) for column in zip(*sums))
  elif vectorized:
    one = jax.vmap(one, in_axes=(0, 0, None, None, None))

  if host_loop(task.model):
    one_jit = jax.jit(one)

    def evaluate(params, model_state):
      sums = [one_jit(params, model_state, xb, yb, wb) for xb, yb, wb in zip(xs, ys, weights)]
      return sum(l for l, _ in sums) / n, sum(c for _, c in sums) / n

    return evaluate

  @jax.jit
  def evaluate(params, model_state):
    losses, correct = lax.map(lambda args: one(params, model_state, *args), (xs, ys, weights))
    return jnp.sum(losses, axis=0) / n, jnp.sum(correct, axis=0) / n

  return evaluate


def place(task: Task, state: dict) -> dict:
  """A copy of ``state`` on the task's device or mesh, which training may donate.

  jit keys its cache on whether arguments are committed to a device: a restored state is, a
  freshly built one is not. Committing both lets every training share one compiled step. The
  copy keeps the caller's arrays (a rewinding point, say) alive when the steps donate theirs.
  """
  if task.parallel is None:
    placed = jax.device_put(state, jax.devices()[0])
  else:
    placed = task.parallel.place(state)
  return jax.tree.map(jnp.copy, placed)


def init_state(params, model_state, optimizer: optax.GradientTransformation, key: jax.Array,
               data_key: jax.Array | None = None) -> dict:
  """The training state at step 0 of a run with key ``key``.

  The data order comes from ``data_key`` (default: the run's ``"data"`` stream), the
  augmentation from its ``"augment"`` stream.
  """
  return {
      "step": jnp.int32(0),
      "params": params,
      "model_state": model_state,
      "opt_state": optimizer.init(params),
      "data_key": rng.stream(key, "data") if data_key is None else data_key,
      "aug_key": rng.stream(key, "augment"),
  }


def density(masks: PyTree) -> float:
  """Fraction of prunable weights kept, from exact integer counts."""
  kept, total = masks_lib.count(masks)
  return int(kept) / total


@jax.jit
def _pq_indices(params: PyTree, masks: PyTree):
  """The PQ Index of the retained prunable weights, of the model and of each layer."""
  return pqi.global_pq_index(params, masks), pqi.layer_pq_index(params, masks)


_PATH_KEY = re.compile(r"\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]|\.(\w+)")


def metric_name(path: str) -> str:
  """A key path as a metric name: ``['dense1']['kernel']`` -> ``dense1/kernel`` (an NNX
  Variable's ``.value`` adds nothing)."""
  names = [key or index or attribute for key, index, attribute in _PATH_KEY.findall(path)
           if attribute != "value"]
  return "/".join(names) or path


def pq_metrics(params: PyTree, masks: PyTree) -> dict[str, float]:
  """``pqi``: the PQ Index (p = 0.5, q = 1; :mod:`sparsejax.pqi`) of all retained prunable
  weights of ``params * masks``, and ``pqi/<layer>`` that of each prunable layer."""
  model, layers = jax.device_get(_pq_indices(params, masks))
  return {"pqi": float(model), **{f"pqi/{metric_name(path)}": float(value)
                                  for path, value in layers.items()}}


@dataclasses.dataclass(frozen=True)
class Replicates:
  """Independent trainings stacked along a leading axis of one state, trained as one program.

  ``axes`` is a pytree like the state: 0 for a stacked leaf, None for a leaf all replicates share
  (the step counters); ``dirs`` holds each replicate's directory (its metrics and files).
  """
  axes: PyTree
  dirs: tuple[str, ...]

  @property
  def n(self) -> int:
    return len(self.dirs)

  def take(self, state: dict, i: int) -> dict:
    """Replicate ``i`` of the stacked ``state``."""
    return take(state, self.axes, i)


def evaluate_state(evaluate: Callable, sparsifier: Sparsifier, state: dict,
                   replicates: Replicates | None = None):
  """``evaluate`` on the network the state computes: its effective params (of every replicate,
  with ``evaluate`` from ``make_evaluate(task, vectorized=True)``)."""
  forward = sparsifier.forward
  if replicates is not None:
    a = replicates.axes
    forward = jax.vmap(forward, in_axes=(a["params"], a["opt_state"], a["step"]))
  params = forward(state["params"], state["opt_state"], state["step"])
  return evaluate(params, state["model_state"])


def masks_of(sparsifier: Sparsifier, state: dict) -> PyTree:
  """The masks the sparsifier holds in the state."""
  return sparsifier.masks(state["opt_state"], state["params"])


def evaluate_hard(evaluate: Callable, sparsifier: Sparsifier, state: dict) -> dict:
  """For a sparsifier with ``hard_masks``: ``evaluate`` on ``params * hard masks`` (pruned
  weights exactly 0.0) as ``test_accuracy_hard``, ``test_loss_hard`` and ``density_hard``;
  ``{}`` for the others."""
  if sparsifier.hard_masks is None:
    return {}
  masks = sparsifier.hard_masks(state["opt_state"], state["params"])
  loss, accuracy = evaluate(masks_lib.apply(state["params"], masks), state["model_state"])
  return {"test_accuracy_hard": float(accuracy), "test_loss_hard": float(loss),
          "density_hard": density(masks)}


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Record:
  """What a run has measured so far; saved with every checkpoint.

  The train loss and correct predictions summed since the last log are part of it, so that a run
  resumed between two logs logs the same train metrics as an uninterrupted one.
  """
  evals: list = dataclasses.field(default_factory=list)  # [step, test_loss, test_accuracy]
  wall_seconds: float = 0.0
  train_loss_sum: float = 0.0
  train_correct: int = 0
  train_steps: int = 0

  def best(self) -> dict:
    if not self.evals:
      return {"best_test_accuracy": None, "early_stop_step": None}
    # Early-stopping iteration as in the LTH papers: the evaluation with the lowest loss.
    early = min(self.evals, key=lambda e: (e[1], e[0]))
    return {"best_test_accuracy": max(e[2] for e in self.evals), "early_stop_step": early[0]}


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(task: Task, sparsifier: Sparsifier, train_steps: Callable, evaluate: Callable,
          state: dict, workdir: str, *, end_step: int | None = None, label: str = "",
          replicates: Replicates | None = None) -> tuple[dict, Any]:
  """Trains ``state`` up to ``end_step`` (default: the config's total), resuming from ``workdir``.

  ``train_steps`` is :func:`make_train_steps` of ``sparsifier``; ``evaluate`` is
  :func:`make_evaluate`, called on the effective params.

  Returns the final state and a summary dict (test accuracy, best accuracy, early-stop step,
  density, PQ Index, steps, wall seconds). Every log row holds the train loss and accuracy, the
  density and the PQ Index of the retained weights (:func:`pq_metrics`). Everything is written
  under ``workdir``: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``. An unreadable latest
  checkpoint is passed over for the one before it. SIGTERM (a preemption) saves a checkpoint at
  the end of the running chunk of steps and raises :class:`Preempted`.

  With ``replicates`` (``train_steps`` and ``evaluate`` built for them), the state holds them
  all: ``workdir`` gets the checkpoints, each replicate's directory its own ``metrics.jsonl`` and
  ``tensorboard/``, what a separate training would write there, and the summary is a list with
  one dict per replicate.
  """
  d = task.durations
  end = d.total if end_step is None else end_step
  dirs = [workdir] if replicates is None else list(replicates.dirs)
  views = ((lambda st: [st]) if replicates is None else
           (lambda st: [replicates.take(st, i) for i in range(replicates.n)]))
  each = lambda x: [float(v) for v in jnp.atleast_1d(x)]  # one value per replicate
  state = place(task, state)
  for directory in dirs:
    os.makedirs(directory, exist_ok=True)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  latest, state, saved = checkpoints.restore_latest(state, label)
  saved = saved.get("replicates", [saved]) if saved else [{}] * len(dirs)
  records = [Record(**r) for r in saved]
  if latest is not None:
    logging.info("%sresumed from the checkpoint at step %d", label, latest)
  step = int(state["step"])
  writers = [MetricWriter(directory, latest) for directory in dirs]
  start_wall = time.time() - records[0].wall_seconds
  last_log_time, last_log_step = time.time(), step
  labels = [label] if replicates is None else [f"{label}replicate {i}: " for i in range(len(dirs))]

  def next_event(s):
    return min(end, *((s // every + 1) * every for every in (d.eval_every, d.log_every,
                                                             d.checkpoint_every)))

  def evaluate_now():
    losses, accuracies = evaluate_state(evaluate, sparsifier, state, replicates)
    return list(zip(each(losses), each(accuracies)))

  with contextlib.ExitStack() as stack:
    stack.enter_context(_stop_on_sigterm())
    stack.callback(checkpoints.close)
    for writer in writers:
      stack.callback(writer.close)
    if not records[0].evals:
      for record, writer, (test_loss, test_acc) in zip(records, writers, evaluate_now()):
        record.evals.append([step, test_loss, test_acc])
        writer.write(step, test_loss=test_loss, test_accuracy=test_acc)
    while step < end:
      target = next_event(step)
      state, (l, c) = train_steps(state, target - step)
      for record, loss_sum, correct in zip(records, each(l), each(c)):
        record.train_loss_sum += loss_sum
        record.train_correct += int(correct)
        record.train_steps += target - step
      step = target
      for record, prefix in zip(records, labels):
        if not math.isfinite(record.train_loss_sum):
          raise TrainingError(
              f"{prefix}the training loss became {record.train_loss_sum} by step {step}; lower "
              "learning_rate or check the data.")
      rows = [{} for _ in dirs]
      if step % d.log_every == 0 or step == end:
        now = time.time()
        rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
        for row, record, view in zip(rows, records, views(state)):
          masks = masks_of(sparsifier, view)
          row.update(train_loss=record.train_loss_sum / record.train_steps,
                     train_accuracy=record.train_correct / (record.train_steps * task.batch_size),
                     density=density(masks), steps_per_second=rate,
                     **pq_metrics(view["params"], masks))
          record.train_loss_sum, record.train_correct, record.train_steps = 0.0, 0, 0
        last_log_time, last_log_step = now, step
      if step % d.eval_every == 0 or step == end:
        for row, record, (test_loss, test_acc) in zip(rows, records, evaluate_now()):
          record.evals.append([step, test_loss, test_acc])
          row.update(test_loss=test_loss, test_accuracy=test_acc)
      for writer, row, prefix in zip(writers, rows, labels):
        if not row:
          continue
        writer.write(step, **row)
        if "train_loss" in row:
          eta = (end - step) / max(row["steps_per_second"], 1e-9)
          test = f" | test acc {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
          logging.info("%sstep %d/%d (%.0f%%) | loss %.4f acc %.4f%s | density %.4f | "
                       "%.0f it/s | ETA %s", prefix, step, end, 100 * step / end,
                       row["train_loss"], row["train_accuracy"], test, row["density"],
                       row["steps_per_second"], _format_eta(eta))
      stop = _Stop.requested and step < end
      if step % d.checkpoint_every == 0 or step == end or stop:
        for record in records:
          record.wall_seconds = time.time() - start_wall
        saved = [dataclasses.asdict(r) for r in records]
        checkpoints.save(step, state, saved[0] if replicates is None else {"replicates": saved})
      if stop:
        _Stop.requested = False
        raise Preempted(f"{label}stopped by SIGTERM at step {step} of {end}; the checkpoint is "
                        f"saved in {workdir}: run the same command to resume.")

  summaries = []
  for record, view in zip(records, views(state)):
    masks = masks_of(sparsifier, view)
    summaries.append({
        "density": density(masks),
        "pqi": pq_metrics(view["params"], masks)["pqi"],
        "test_accuracy": record.evals[-1][2],
        "test_loss": record.evals[-1][1],
        **record.best(),
        "steps": step,
        "wall_seconds": time.time() - start_wall,
    })
  return state, summaries[0] if replicates is None else summaries
