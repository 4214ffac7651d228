"""HESSO on ResNet-20 and CIFAR-10 with the recipe of Only-Train-Once's tutorial, compressed afterwards.

OTO's tutorial (microsoft/only_train_once, ``tutorials/01.resnet18_cifar10.ipynb``): HESSO
(Chen et al., arXiv 2409.09085) around SGD with ``lr=0.1``, ``weight_decay=1e-4``,
``target_group_sparsity=0.7``, ``start_pruning_step`` = 10 epochs, ``pruning_periods=10``
over ``pruning_steps`` = 10 epochs, 100 epochs with the learning rate x0.1 every 50 epochs,
batch size 64, random crop + flip. The tutorial reaches 92.8% top-1 with about 92% fewer
parameters on ResNet-18; the same recipe is applied here to ResNet-20. Momentum 0.9 as OTO's
CIFAR baselines. CIFAR-10 comes from TFDS (``tfds:cifar10``).
"""

from configs import hesso_vgg16_cifar10


def get_config():
  config = hesso_vgg16_cifar10.get_config()
  config.model = "resnet20"
  return config
