"""Quick start: LeNet-300-100 on Fashion-MNIST, magnitude pruning to 90% in 3 epochs.

A shortened version of ``configs/lenet300_magnitude.py`` that runs in under a minute on 2 CPU
cores (about 20 s measured): the OpenLTH ``mnist_lenet_300_100`` optimizer (SGD, ``lr=0.1``
constant, ``batch_size=128``) for ``steps='3ep'`` instead of 40. Zhu & Gupta (2017) gradual
magnitude pruning (cubic schedule, eq. 1, uniform per-layer densities) from
``pruning_begin='0ep'`` to ``pruning_end='2ep'``, every 100 iterations, leaving the last epoch to
recover with frozen masks.
Evaluated every epoch. Not a reproduction target: accuracy is below the 40-epoch runs.
"""

from configs import lenet300_magnitude


def get_config():
  config = lenet300_magnitude.get_config()
  config.steps = "3ep"
  config.eval_every = "1ep"
  config.pruning_begin = "0ep"
  config.pruning_end = "2ep"
  return config
