"""Vectorized replicates against the same replicates trained one after another, side by side.

For each model, N replicates of gradual magnitude pruning (the runner's ``magnitude``
sparsifier, masks recomputed every 10 steps so that the pruning ``lax.cond`` matters) are built
exactly as ``replicates=N`` builds them (``experiments.setup``, ``experiments.replicates``,
``experiments.trainer``), on random data shaped like the real dataset (nothing to load), and
three ways of training them are timed, interleaved round by round in one process:

  sequential   N single-run states, each trained for the chunk by the single-run step
               (the same compiled function for all), one after another;
  vectorized   the N states stacked, one vmapped step (``vectorize=True``), the step counters
               shared (unbatched), so the pruning step's ``lax.cond`` stays a branch;
  all batched  the same, with every leaf batched, counters included: under ``vmap`` the cond's
               predicate is batched and both branches (the mask update) run at every step.

It reports milliseconds per step (of all N replicates together) and the ratios vectorized /
sequential and all batched / vectorized.

  python benchmarks/replicates.py [--replicates 8] [--rounds 5] [--steps 50]
      [--models lenet300,digits,conv2]

Models: ``lenet300`` (LeNet-300-100, 28x28 inputs, batch 128: compute-bound on CPU),
``digits`` (LeNet-300-100 on 8x8 inputs, batch 64: small), ``conv2`` (Conv-2 on 28x28 inputs,
batch 16; on CPU one jitted step per call, as the runner dispatches convolutional models).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import replicates, trainer
from experiments import setup as setup_lib
from overhead import rotating  # this script's directory

MODELS = {
    # name: (model, input shape, batch size)
    "lenet300": ("lenet300", (28, 28, 1), 128),
    "digits": ("lenet300", (8, 8, 1), 64),
    "conv2": ("conv2", (28, 28, 1), 16),
}


def build(name: str, n: int, sparsifier: str = "magnitude"):
  model, shape, batch = MODELS[name]
  config = config_lib.defaults()
  config.model, config.batch_size, config.steps = model, batch, "1000it"
  config.sparsifier, config.final_sparsity = sparsifier, 0.9
  config.pruning_begin, config.pruning_end, config.pruning_frequency = "0it", "900it", "10it"
  config.optimizer = "momentum"
  config = config_lib.finalize(config)
  task = setup_lib.build_task(config, data_lib.synthetic(shape, 6000))
  setup = setup_lib.Setup(config, "", task, setup_lib.masks_lib.rule())
  sparsifiers, states = replicates.initial(setup, n)
  stacked, axes = replicates.stack(states)
  all_batched = jax.tree.map(lambda _: 0, axes, is_leaf=lambda a: a is None)
  batched_state = jax.tree.map(lambda a, x: x if a == 0 else jax.numpy.stack([x] * n),
                               axes, stacked, is_leaf=lambda a: a is None)
  sparsifier = sparsifiers[0]
  place = lambda state: trainer.place(task, state)
  return {
      "sequential": [trainer.make_train_steps(task, sparsifier), [place(s) for s in states]],
      "vectorized": [trainer.make_train_steps(task, sparsifier, axes), place(stacked)],
      "all batched": [trainer.make_train_steps(task, sparsifier, all_batched),
                      place(batched_state)],
  }


def run(variant, steps: int) -> float:
  fn, state = variant
  start = time.perf_counter()
  # The steps donate the states they are given: keep the ones they return.
  if isinstance(state, list):
    out = [fn(s, steps) for s in state]
    variant[1] = [s for s, _ in out]
  else:
    out = fn(state, steps)
    variant[1] = out[0]
  jax.block_until_ready(out)
  return time.perf_counter() - start


def interleaved(variants: dict, rounds: int, steps: int) -> dict[str, list[float]]:
  """Milliseconds per step of each variant (``[train_steps, state or states]``), ``rounds``
  chunks of ``steps`` each after a compiling one; the order rotates every round, so no variant
  always runs first (or right after another). ``data_parallel.py`` times with it too."""
  for variant in variants.values():
    run(variant, steps)  # compile
  times = {v: [] for v in variants}
  for v in rotating(list(variants), rounds):
    times[v].append(run(variants[v], steps) / steps * 1e3)
  return times


def bench(name: str, n: int, rounds: int, steps: int, sparsifier: str) -> list[str]:
  times = interleaved(build(name, n, sparsifier), rounds, steps)
  median = {v: statistics.median(t) for v, t in times.items()}
  ratio = lambda a, b: [x / y for x, y in zip(times[a], times[b])]
  vs, ab = ratio("vectorized", "sequential"), ratio("all batched", "vectorized")
  model, shape, batch = MODELS[name]
  return [f"| {name} ({model}, {'x'.join(map(str, shape[:2]))}, batch {batch}) | {n} | "
          f"{median['sequential']:.2f} | {median['vectorized']:.2f} | "
          f"{median['all batched']:.2f} | {statistics.median(vs):.2f} ({min(vs):.2f}-{max(vs):.2f})"
          f" | {statistics.median(ab):.2f} ({min(ab):.2f}-{max(ab):.2f}) |"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--replicates", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=50, help="steps per variant per round")
  parser.add_argument("--models", default="lenet300,digits,conv2")
  parser.add_argument("--sparsifier", default="magnitude", help="e.g. dense: no pruning step")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.default_backend()}; {args.replicates} replicates, "
        f"{args.rounds} rounds x {args.steps} steps, gradual magnitude pruning every 10 steps")
  print("| model | N | sequential ms/step | vectorized ms/step | all batched ms/step | "
        "vectorized / sequential | all batched / vectorized |")
  print("|---|---|---|---|---|---|---|")
  for name in args.models.split(","):
    for line in bench(name, args.replicates, args.rounds, args.steps, args.sparsifier):
      print(line, flush=True)


if __name__ == "__main__":
  main()
