"""LeNet-300-100 on Fashion-MNIST, random pruning at initialization with ERK densities.

Method: Liu et al., "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive
Baseline for Sparse Training", ICLR 2022: a random mask drawn once at initialization and kept
fixed, with per-layer densities from ERK (Evci et al., "Rigging the Lottery", ICML 2020; for dense
layers ERK reduces to ER, density_l proportional to (n_in + n_out) / (n_in * n_out)), scaled so
that 90% of the prunable weights are removed (``final_sparsity=0.9``).

Training follows OpenLTH's ``mnist_lenet_300_100`` (facebookresearch/open_lth,
``models/mnist_lenet.py``): ``optimizer_name='sgd'``, ``lr=0.1`` constant, ``batch_size=128``,
``training_steps='40ep'``.
"""

from configs import lenet300_dense


def get_config():
  config = lenet300_dense.get_config()
  config.sparsifier = "random"
  config.final_sparsity = 0.9
  config.distribution = "erk"
  return config
