"""LeNet-300-100 on Fashion-MNIST, GraSP at initialization to 90% sparsity.

Pruning: GraSP (Wang, Zhang & Grosse, ICLR 2020, eq. 8): the weights with the highest w * Hg are
kept, one-shot at initialization, globally; Hg on a class-balanced batch of 10 examples per class
with the logits divided by T = 200, as the authors' code. Training as
``configs/lenet300_dense.py`` (OpenLTH's ``mnist_lenet_300_100``: SGD, lr 0.1 constant, batch 128,
40 epochs) with the masks fixed.
"""

from configs import lenet300_dense


def set_method(config) -> None:
  """GraSP as here, on any training recipe (``configs/grasp_conv4_fashion.py``)."""
  config.sparsifier = "grasp"
  config.final_sparsity = 0.9
  config.distribution = "global"
  config.grasp_samples_per_class = 10
  config.grasp_temperature = 200.0


def get_config():
  config = lenet300_dense.get_config()
  set_method(config)
  return config
