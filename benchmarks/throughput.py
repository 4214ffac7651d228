"""End-to-end training throughput of the runner: LeNet-300-100, batch 128, Fashion-MNIST.

Runs the runner's own loop (``experiments.experiment.run``) for a few epochs with evaluation on
the full test set every epoch and checkpoints every 5 epochs, for the dense, gradual-magnitude and
random-ERK methods, and prints iterations per second over the whole run (compilation, evaluation,
logging and checkpointing included), next to the jitted step alone, measured in the same process.

  python benchmarks/throughput.py [--epochs 40] [--dataset fashion_mnist]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import config as config_lib
from experiments import experiment, trainer
from experiments import setup as setup_lib
from experiments.config import defaults


def config_for(method: str, epochs: int, dataset: str):
  c = defaults()
  c.method = method
  c.dataset = dataset
  c.steps = f"{epochs}ep"
  c.eval_every = "1ep"
  c.log_every = "1ep"
  c.checkpoint_every = "5ep"
  c.distribution = "erk" if method == "random" else "uniform"
  c.pruning_begin, c.pruning_end, c.pruning_frequency = "0ep", f"{max(1, epochs - 1)}ep", "100it"
  return c


def step_alone(config, n=300) -> float:
  """Seconds per jitted step of the same training function, without the loop's events."""
  setup = setup_lib.build(config_lib.finalize(config), "")
  key = setup.key()
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  train_steps = trainer.make_train_steps(setup.task, sparsifier)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  state, _ = jax.block_until_ready(train_steps(state, 10))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(train_steps(state, n))
    times.append((time.perf_counter() - t0) / n)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--dataset", default="fashion_mnist")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; LeNet-300-100, batch 128, "
        f"{args.dataset}, {args.epochs} epochs, test-set evaluation every epoch")
  alone = step_alone(config_for("dense", args.epochs, args.dataset))
  print(f"jitted step alone (dense): {alone * 1e3:.3f} ms = {1 / alone:.0f} it/s")
  for method in ("dense", "magnitude", "random"):
    with tempfile.TemporaryDirectory() as workdir:
      summary = experiment.run(config_for(method, args.epochs, args.dataset), workdir)
    rate = summary["steps"] / summary["wall_seconds"]
    print(f"{method:9s} end to end: {rate:6.0f} it/s  ({summary['steps']} steps in "
          f"{summary['wall_seconds']:.1f} s, test accuracy {summary['test_accuracy']:.4f}, "
          f"density {summary['density']:.3f})")


if __name__ == "__main__":
  main()
