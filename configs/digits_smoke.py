"""Smoke test: LeNet-300-100 on scikit-learn's 8x8 digits, magnitude pruning, 200 iterations.

For tests and CI only, not a published setting: small enough to train, evaluate, checkpoint and
prune in seconds on a CPU. Zhu & Gupta (2017) gradual magnitude pruning (eq. 1) to 90% sparsity
from iteration 0 to 150, every 25 iterations; evaluation and logging every 50 iterations and a
checkpoint every 100, so a run exercises every periodic path of the trainer more than once.

``sweep_smoke``: 2 sparsities x 2 seeds, a 4-point sweep for tests and the docs::

  python -m experiments.sweep --config=configs/digits_smoke.py --sweep=smoke --root=runs/smoke
"""

from experiments.config import defaults
from experiments.sweep_lib import product


def get_config():
  config = defaults()
  config.sparsifier = "magnitude"
  config.model = "lenet300"
  config.dataset = "digits"
  config.batch_size = 64
  config.steps = "200it"
  config.eval_every = "50it"
  config.log_every = "50it"
  config.checkpoint_every = "100it"
  config.final_sparsity = 0.9
  config.pruning_begin = "0it"
  config.pruning_end = "150it"
  config.pruning_frequency = "25it"
  return config


def sweep_smoke():
  return product(final_sparsity=(0.5, 0.9), seed=(0, 1))
