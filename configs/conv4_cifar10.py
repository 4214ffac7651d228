"""Conv-4 on CIFAR-10 with the LTH paper's training; everything else as ``conv2_cifar10.py``.

Frankle & Carbin 2019, Fig. 2: Conv-4 (2.4M weights), Adam with learning rate 3e-4 (constant),
batch size 60, 25K iterations (about 30 epochs). The paper's IMP rates for this network are
conv 10% / fc 20% per round (output layer at half the fc rate). Gradual magnitude pruning to
90%, data and augmentation as in ``conv2_cifar10.py``.
"""

from configs import conv2_cifar10


def get_config():
  config = conv2_cifar10.get_config()
  config.model = "conv4"
  config.learning_rate = 3e-4
  config.steps = "25000it"
  return config
