"""LeNet-300-100 on Fashion-MNIST, SNIP pruning at initialization to 90% sparsity.

Method: Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019: before training, score every weight by |g * w| (the connection
sensitivity, eq. 6, from the gradient of the loss on one batch of ``snip_batch_size`` examples)
and keep the top 10% over all prunable weights at once (``distribution='global'``,
``final_sparsity=0.9``); the mask is then fixed for the whole run. The paper prunes LeNet-300-100
on MNIST at 95-98% sparsity; 0.9 here matches the other LeNet configs.

Training follows OpenLTH's ``mnist_lenet_300_100`` (facebookresearch/open_lth,
``models/mnist_lenet.py``): ``optimizer_name='sgd'``, ``lr=0.1`` constant, ``batch_size=128``,
``training_steps='40ep'``.
"""

from configs import lenet300_dense


def get_config():
  config = lenet300_dense.get_config()
  config.sparsifier = "snip"
  config.final_sparsity = 0.9
  config.distribution = "global"
  return config
