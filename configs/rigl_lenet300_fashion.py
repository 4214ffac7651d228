"""LeNet-300-100 on Fashion-MNIST, RigL at 90% sparsity.

Training follows OpenLTH's ``mnist_lenet_300_100`` as ``configs/lenet300_dense.py`` (SGD, lr 0.1
constant, batch 128, 40 epochs), so RigL is compared with dense, magnitude pruning and the lottery
tickets at the same budget.

RigL follows Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners" (Sec. 4): random
ERK masks at the start, connections moved every delta = 100 steps with the drop fraction alpha =
0.3 decaying by a cosine to 0 at T_end = 75% of training; grown weights start at 0.0.
"""

from configs import lenet300_dense


def set_method(config) -> None:
  """RigL as here, on any training recipe (``configs/rigl_conv4_fashion.py``)."""
  config.sparsifier = "rigl"
  config.final_sparsity = 0.9
  config.dst_distribution = "erk"
  config.dst_update_every = "100it"
  config.dst_end = "75%"
  config.dst_drop_fraction = 0.3


def get_config():
  config = lenet300_dense.get_config()
  set_method(config)
  return config
