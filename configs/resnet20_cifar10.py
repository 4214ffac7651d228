"""ResNet-20 on CIFAR-10, gradual magnitude pruning to 90% sparsity, with OpenLTH's training.

Training follows OpenLTH's ``cifar_resnet_20`` (facebookresearch/open_lth,
``models/cifar_resnet.py``, ``default_hparams``; the ResNet-20 of Frankle et al., "Linear Mode
Connectivity and the Lottery Ticket Hypothesis", ICML 2020, itself He et al. 2016, Sec. 4.2):
``optimizer_name='sgd'`` with ``momentum=0.9``, ``lr=0.1``, ``weight_decay=1e-4``,
``batch_size=128``, ``training_steps='160ep'``, and the step schedule
``milestone_steps='80ep,120ep'``, ``gamma=0.1``. CIFAR-10 from TFDS (``tfds:cifar10``) with
random crop + flip (``augment=True``), as OpenLTH's CIFAR-10 dataset.

Sparsity: OpenLTH finds tickets by IMP (``pruning_fraction=0.2`` per level, ``sparse_global``,
every layer prunable); that belongs to ``sparsejax.lottery``. This config, as the other CIFAR-10
configs, defaults to gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017,
eq. 1: cubic schedule from ``pruning_begin='0it'`` to ``pruning_end='75%'`` = epoch 120, every
100 iterations) to ``final_sparsity=0.9`` with uniform per-layer densities, so the last 40 epochs
(lr 0.001) train the final sparse network. ``--config.sparsifier=dense`` gives the dense baseline.
"""

from configs import vgg16_cifar10


def get_config():
  config = vgg16_cifar10.get_config()  # the same OpenLTH CIFAR-10 training
  config.model = "resnet20"
  return config
