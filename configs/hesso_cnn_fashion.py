"""HESSO on a VGG-style CNN with BatchNorm and Fashion-MNIST, compressed afterwards.

The network (``model='cnn_bn'``, :mod:`experiments.models`): Conv(1->32, 3x3, pad 1) + BN + ReLU,
Conv(32->64) + BN + ReLU, MaxPool 2, Conv(64->128) + BN + ReLU, MaxPool 2, Flatten,
Dense(6272->10). The recipe of the structured-sparsity benchmark (``benchmarks/structured.py``):
SGD ``momentum=0.9``, ``weight_decay=1e-4``, ``lr=0.05``, ``batch_size=128``, 3 epochs, the
learning rate x0.1 for the last quarter (``lr_milestones=('2.25ep',)``); HESSO (Chen et al.,
arXiv 2409.09085) warms up for ``start_pruning_step='10%'`` of the steps and removes
floor(224 * ``target_group_sparsity``) of the 224 channel groups over ``pruning_periods=10``
periods of ``pruning_steps='25%'`` of the steps. The Flatten spreads each channel of the last
convolution over the 49 positions its consumer, the output layer, reads.
"""

from configs import hesso_mlp_fashion


def get_config():
  config = hesso_mlp_fashion.get_config()
  config.model = "cnn_bn"
  config.learning_rate = 0.05
  config.lr_milestones = ("2.25ep",)
  config.steps = "3ep"
  return config
