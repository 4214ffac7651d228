"""HESSO on VGG-16 with BatchNorm and CIFAR-10 with the recipe of Only-Train-Once's tutorial, compressed afterwards.

OTO's tutorial (microsoft/only_train_once, ``tutorials/01.resnet18_cifar10.ipynb``): HESSO
(Chen et al., arXiv 2409.09085) around SGD with ``lr=0.1``, ``weight_decay=1e-4``,
``target_group_sparsity=0.7``, ``start_pruning_step`` = 10 epochs, ``pruning_periods=10``
over ``pruning_steps`` = 10 epochs, 100 epochs with the learning rate x0.1 every 50 epochs,
batch size 64, random crop + flip. The tutorial reaches 92.8% top-1 with about 92% fewer
parameters on ResNet-18; the same recipe is applied here to VGG-16 with BatchNorm. Momentum 0.9 as OTO's
CIFAR baselines. CIFAR-10 comes from TFDS (``tfds:cifar10``).
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.protocol = "structured"
  config.sparsifier = "hesso"
  config.model = "vgg16"
  config.dataset = "tfds:cifar10"
  config.augment = True
  config.optimizer = "momentum"
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.learning_rate = 0.1
  config.lr_schedule = "step"
  config.lr_milestones = ("50ep",)
  config.lr_gamma = 0.1
  config.batch_size = 64
  config.steps = "100ep"
  config.target_group_sparsity = 0.7
  config.start_pruning_step = "10ep"
  config.pruning_periods = 10
  config.pruning_steps = "10ep"
  return config
