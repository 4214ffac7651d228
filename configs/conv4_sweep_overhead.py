"""Conv-4 on Fashion-MNIST, 4 seeds of 200 iterations each: the compute-bound workload of
``benchmarks/sweep_overhead.py --workload conv4`` (batch 60, the training set's first 12,000
images, one evaluation on the 10,000 test images at the end), for comparing how a CPU's cores are
best shared between points. Not a published recipe: ``configs/conv4_fashion.py`` is the LTH
paper's Conv-4."""

from configs import conv4_fashion


def get_config():
  config = conv4_fashion.get_config()
  config.train_subset = 12000
  config.steps = "200it"
  config.eval_every = config.log_every = config.checkpoint_every = "200it"
  return config


def sweep_seeds():
  return [{"seed": seed} for seed in range(4)]
