"""Conv-4 on Fashion-MNIST, dense: the LTH paper's Conv-4 training on another dataset.

Training: ``configs/conv4_cifar10.py`` (Frankle & Carbin, ICLR 2019, Fig. 2, Conv-4: Adam,
``lr=3e-4`` constant, batch 60, 25K iterations) on Fashion-MNIST instead of CIFAR-10, without
CIFAR's crop + flip augmentation (``augment=False``). No published Conv-4 numbers exist on
Fashion-MNIST: compare methods relatively, at this budget. The sparse Conv-4 configs
(``*_conv4_fashion.py``) start from this one.
"""

from configs import conv4_cifar10


def get_config():
  config = conv4_cifar10.get_config()
  config.dataset = "fashion_mnist"
  config.augment = False
  config.sparsifier = "dense"  # conv4_cifar10.py's is magnitude pruning
  return config
