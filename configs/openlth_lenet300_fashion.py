"""OpenLTH's ``mnist_lenet_300_100`` lottery-ticket preset, exactly, on Fashion-MNIST.

OpenLTH (facebookresearch/open_lth, ``models/mnist_lenet.py``, ``default_hparams``; used by Frankle
et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020):

- model: LeNet-300-100 with ``model_init='kaiming_normal'`` (weights N(0, 2 / fan_in)) and
  PyTorch's default biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (OpenLTH leaves them as
  ``nn.Linear`` makes them);
- training: ``optimizer_name='sgd'``, ``lr=0.1`` (constant, no momentum, no weight decay),
  ``batch_size=128``, ``training_steps='40ep'``;
- pruning: ``pruning_strategy='sparse_global'`` at ``pruning_fraction=0.2`` per level,
  ``pruning_layers_to_ignore='fc.weight'`` (the output layer is never pruned), rewinding to
  initialization.

OpenLTH trains on MNIST (``--config.dataset=idx:DIR`` with MNIST's IDX files reproduces that);
Fashion-MNIST has the same shape and split. 10 levels end at 0.8^10 = 10.7% of the hidden
layers' weights.
"""

from configs import lenet300_dense


def get_config():
  config = lenet300_dense.get_config()  # OpenLTH's mnist_lenet_300_100 training
  config.protocol = "imp"
  config.model_init, config.bias_init = "kaiming_normal", "pytorch"
  config.distribution = "global"
  config.prune_fraction = 0.2
  config.prune_exclude = "output"
  config.rewind = "0it"
  config.levels = 10
  return config
