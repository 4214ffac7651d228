"""LeNet-300-100 on Fashion-MNIST, gradual magnitude pruning to 90% sparsity.

Training follows OpenLTH's ``mnist_lenet_300_100`` (facebookresearch/open_lth,
``models/mnist_lenet.py``): ``optimizer_name='sgd'``, ``lr=0.1`` constant, ``batch_size=128``,
``training_steps='40ep'``.

Pruning follows Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
model compression" (2017), eq. 1: sparsity rises from s_i = 0 to s_f = ``final_sparsity`` = 0.9
as s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, with masks recomputed by weight magnitude every
dt = ``pruning_frequency`` = 100 iterations; every prunable layer gets the same density
(``distribution='uniform'``, as in the paper's per-layer schedule).

Schedule choice: ``pruning_begin='2ep'`` starts pruning early in training, once the weights have
moved away from their random initialization so their magnitudes carry information, and
``pruning_end='30ep'`` stops it well before the end of the 40 epochs: the last 10 epochs train the
final sparse network with its masks frozen, so it recovers from the last pruning steps (Zhu &
Gupta prune while the learning rate is still high for the same reason). With 469 steps per epoch
this is about 131 pruning steps between iterations 938 and 14070.
"""

from configs import lenet300_dense


def get_config():
  config = lenet300_dense.get_config()
  config.sparsifier = "magnitude"
  config.final_sparsity = 0.9
  config.distribution = "uniform"
  config.pruning_begin = "2ep"
  config.pruning_end = "30ep"
  config.pruning_frequency = "100it"
  config.pruning_power = 3.0
  return config
