"""LeNet-300-100 on Fashion-MNIST, dense: OpenLTH's ``mnist_lenet_300_100`` training recipe.

OpenLTH (facebookresearch/open_lth, ``models/mnist_lenet.py``, ``default_hparams``; used by Frankle
et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020):
``optimizer_name='sgd'``, ``lr=0.1`` (constant, no momentum, no weight decay),
``batch_size=128``, ``training_steps='40ep'``. OpenLTH trains on MNIST; here the dataset is
Fashion-MNIST (same 28x28x1 shape, 60k/10k split), for which no published numbers exist, so
results are compared relatively (dense vs sparse vs controls).

This is the dense baseline the sparse LeNet configs are measured against.
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.sparsifier = "dense"
  config.model = "lenet300"
  config.dataset = "fashion_mnist"
  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.lr_schedule = "constant"
  config.batch_size = 128
  config.steps = "40ep"
  return config
