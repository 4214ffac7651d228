"""Wall time of one IMP level: LeNet-300-100 on Fashion-MNIST, OpenLTH's mnist_lenet_300_100.

SGD lr 0.1, batch 128, 40 epochs (18,720 iterations: full batches only), test accuracy every
epoch, checkpoints every 5 epochs, 20% global pruning. Runs level 0 (dense) and level 1 through
the runner and reports the wall time of level 1 from the finished level 0 to the finished level 1:
pruning, rewinding, saving masks and weights, training, evaluation and checkpoints included.

  python benchmarks/imp_level.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import json
import os
import tempfile

import jax

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments import experiment
from experiments.config import defaults


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--dataset", default="fashion_mnist")
  args = parser.parse_args()
  c = defaults()
  c.protocol, c.dataset, c.steps = "imp", args.dataset, f"{args.epochs}ep"
  c.optimizer, c.learning_rate, c.batch_size = "sgd", 0.1, 128
  c.eval_every, c.log_every, c.checkpoint_every = "1ep", "5ep", "5ep"
  c.levels, c.prune_fraction, c.distribution = 1, 0.2, "global"
  with tempfile.TemporaryDirectory() as workdir:
    summary = experiment.run(c, workdir)
    done = [os.path.join(workdir, "replicate_0", f"level_{i}", "level.json") for i in (0, 1)]
    level_seconds = os.path.getmtime(done[1]) - os.path.getmtime(done[0])
    with open(os.path.join(workdir, "replicate_0", "level_1", "main", "summary.json")) as f:
      loop = json.load(f)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; LeNet-300-100, {args.dataset}, "
        f"{loop['steps']} iterations of batch 128, evaluation every epoch")
  print(f"one IMP level (prune + rewind + train + evaluate + checkpoint): {level_seconds:.1f} s")
  print(f"  of which the training loop: {loop['wall_seconds']:.1f} s "
        f"({loop['steps'] / loop['wall_seconds']:.0f} it/s)")
  levels = summary["levels"]
  print(f"  test accuracy: dense {levels[0]['test_accuracy']:.4f}, level 1 "
        f"(density {levels[1]['density']:.3f}) {levels[1]['test_accuracy']:.4f}")


if __name__ == "__main__":
  main()
