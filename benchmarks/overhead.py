"""Overhead of sparsejax's optax wrappers on a jitted training step, measured side by side.

Variants, interleaved round by round in one process so machine noise hits all of them alike:
  (a) plain optax SGD with momentum,
  (b) ``transforms.static_masks`` (fixed ERK masks at 90% sparsity),
  (c) ``transforms.magnitude_pruning`` (uniform, polynomial schedule) updating masks every 50 steps.

Printed per model: the median ordinary-step ratios b/a and c/a, the mean ratio c/a over whole
runs including the mask-update steps, and one mask-update step relative to an ordinary step.

  python benchmarks/overhead.py [--rounds 7] [--steps 200] [--models lenet,cnn]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np
import optax
from flax import nnx

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import data as data_lib
from experiments import models, trainer
from experiments import setup as setup_lib
from experiments.registry import SPARSIFIERS
from sparsejax import masks as masks_lib
from sparsejax import pruning, schedules, transforms

FREQUENCY = 50


class SmallCNN(nnx.Module):
  """conv 32 -> pool -> conv 64 -> pool -> dense 256 -> dense 10 on 32x32x3."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    self.dense1 = nnx.Linear(8 * 8 * 64, 256, rngs=rngs)
    self.output = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    return self.output(nnx.relu(self.dense1(x.reshape(x.shape[0], -1))))


def lenet():
  model, params, state = models.create(
      "lenet300", num_classes=10, input_shape=(28, 28, 1), key=jax.random.key(0)
  )
  apply = lambda p, x: model.apply(p, state, x, train=True)[0]
  return apply, params, (28, 28, 1)


def small_cnn():
  graphdef, params = nnx.split(SmallCNN(nnx.Rngs(0)), nnx.Param)
  return lambda p, x: nnx.merge(graphdef, p)(x), params, (32, 32, 3)


def make_step(apply, opt):
  def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def rotating(names: list, rounds: int):
  """The variants' names, ``rounds`` times over, the order rotating every round, so that no
  variant always runs first (or right after another). Every benchmark interleaves with it."""
  for r in range(rounds):
    yield from names[r % len(names):] + names[:r % len(names)]


def compiled(apply, params, shape, variants: dict):
  """(batches, jitted step of each variant, its (params, state) after 3 warm-up steps): 16
  random batches of 128 inputs of ``shape``, the same for every variant."""
  k = jax.random.split(jax.random.key(0), 2)
  xs, ys = jax.random.normal(k[0], (16, 128, *shape)), jax.random.randint(k[1], (16, 128), 0, 10)
  batches = jax.block_until_ready([(xs[i], ys[i]) for i in range(len(xs))])
  step_fns = {v: make_step(apply, opt) for v, opt in variants.items()}
  carries = {v: time_steps(step_fns[v], (params, opt.init(params)), batches, 3)[0]
             for v, opt in variants.items()}
  return batches, step_fns, carries


def time_steps(step, carry, batches, n):
  """Runs n steps over the list of (x, y) ``batches`` in turn; the carry and each step's wall time.

  Only the jitted step is timed (synchronized): the batches are sliced beforehand.
  """
  times = np.empty(n)
  for i in range(n):
    x, y = batches[i % len(batches)]
    t0 = time.perf_counter()
    carry = jax.block_until_ready(step(*carry, x, y))
    times[i] = time.perf_counter() - t0
  return carry, times


def bench(name, build, rounds, steps):
  apply, params, shape = build()
  inner = optax.sgd(0.01, momentum=0.9)
  masks = pruning.random(jax.random.key(1), params, 0.9, "erk")
  # A long schedule, so every benchmarked step lies inside the pruning window.
  schedule = schedules.polynomial(0.9, 0, 10 * rounds * steps, FREQUENCY)
  variants = {
      "a": inner,
      "b": transforms.static_masks(inner, masks),
      "c": transforms.magnitude_pruning(inner, schedule),
  }
  batches, steps_fns, carries = compiled(apply, params, shape, variants)
  times = {v: [] for v in variants}
  update_mask = []
  for v in rotating(list(variants), rounds):
    start = int(carries[v][1].count) if v == "c" else None
    carries[v], t = time_steps(steps_fns[v], carries[v], batches, steps)
    times[v].append(t)
    if v == "c":
      update_mask.append(np.array([bool(schedule.is_update_step(start + i)) for i in range(steps)]))
  a, b, c = (np.concatenate(times[v]) for v in "abc")
  upd = np.concatenate(update_mask)
  med_a = np.median(a)
  run_ratio = np.mean([tc.sum() / ta.sum() for tc, ta in zip(times["c"], times["a"])])
  print(f"{name}: ordinary step (a) {med_a * 1e3:.3f} ms median, {len(a)} steps per variant, "
        f"{int(upd.sum())} mask updates")
  print(f"  b/a (static_masks, ordinary step median)          {np.median(b) / med_a:.3f}")
  print(f"  c/a (magnitude_pruning, ordinary step median)     {np.median(c[~upd]) / med_a:.3f}")
  print(f"  c/a (magnitude_pruning, whole runs, amortized)    {run_ratio:.3f}")
  print(f"  mask-update step / ordinary step (c)              "
        f"{np.median(c[upd]) / np.median(c[~upd]):.2f}")
  print(f"  for scale: sorting every layer's |w| once / step    "
        f"{sort_seconds(params) / np.median(c[~upd]):.1f}")


def runner_training(config, num_train: int = 6000, adapt=None):
  """(train_steps, state, sparsifier, setup) of a finalized runner config, built as a run builds
  them (``experiments.setup``: task, prunable rule, sparsifier; ``experiments.trainer``:
  ``init_state``, ``make_train_steps``) on random 28x28x1 images of 10 classes instead of the
  dataset. ``adapt(sparsifier, setup) -> sparsifier`` may swap parts of the sparsifier first.

  ``num_train`` examples: each ``train_steps`` call draws its epoch's example order first, which
  the runner amortizes over chunks of a whole epoch; a tenth of Fashion-MNIST keeps that cost,
  the same for every variant, small next to short chunks.
  """
  data = data_lib.synthetic((28, 28, 1), num_train)
  task = setup_lib.build_task(config, data)
  setup = setup_lib.Setup(config, "", task, masks_lib.rule(exclude=config.prune_exclude or None))
  setup_lib.check_prunable(config, setup.param_shapes, setup.prunable)
  entry = SPARSIFIERS.get(config.sparsifier)
  if entry.check is not None:
    entry.check(setup)
  key = setup.key()
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  if adapt is not None:
    sparsifier = adapt(sparsifier, setup)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  return trainer.make_train_steps(task, sparsifier), state, sparsifier, setup


def sort_seconds(params, repeats=20) -> float:
  """Median time of sorting every prunable layer's magnitudes: a sort-based mask update's core."""
  kernels = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  sort_all = jax.jit(lambda ks: [jax.numpy.sort(jax.numpy.abs(k).ravel()) for k in ks])
  jax.block_until_ready(sort_all(kernels))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(sort_all(kernels))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main_for(description: str, setting: str, bench) -> None:
  """The command line of this benchmark and of ``dynamic_step.py``: ``bench(name, build,
  rounds, steps)`` for each model asked for."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--models", default="lenet,cnn", help="comma-separated: lenet, cnn")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch 128, {setting}")
  chosen = args.models.split(",")
  if "lenet" in chosen:
    bench("LeNet-300-100", lenet, args.rounds, args.steps)
  if "cnn" in chosen:
    bench("small CNN 32x32x3", small_cnn, args.rounds, args.steps)


def main():
  main_for(__doc__.splitlines()[0], f"mask update every {FREQUENCY} steps", bench)


if __name__ == "__main__":
  main()
