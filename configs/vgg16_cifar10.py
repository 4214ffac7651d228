"""VGG-16 on CIFAR-10, gradual magnitude pruning to 90% sparsity, with OpenLTH's training.

Training follows OpenLTH's ``cifar_vgg_16`` (facebookresearch/open_lth, ``models/cifar_vgg.py``,
``default_hparams``; the VGG-16 of Frankle et al., "Linear Mode Connectivity and the Lottery
Ticket Hypothesis", ICML 2020): ``optimizer_name='sgd'`` with ``momentum=0.9``, ``lr=0.1``,
``weight_decay=1e-4``, ``batch_size=128``, ``training_steps='160ep'``, and the step schedule
``milestone_steps='80ep,120ep'``, ``gamma=0.1``. CIFAR-10 from TFDS (``tfds:cifar10``) with
random crop + flip (``augment=True``), as OpenLTH's CIFAR-10 dataset.

Sparsity: OpenLTH finds tickets by IMP (``pruning_fraction=0.2`` per level, ``sparse_global``,
output layer ``fc.weight`` never pruned); that belongs to ``sparsejax.lottery``. This config, as
the other CIFAR-10 configs, defaults to gradual magnitude pruning (Zhu & Gupta, "To prune, or
not to prune", 2017, eq. 1: cubic schedule from ``pruning_begin='0it'`` to ``pruning_end='75%'``
= epoch 120, every 100 iterations) to ``final_sparsity=0.9`` with uniform per-layer densities,
so the last 40 epochs (lr 0.001) train the final sparse network. ``--config.sparsifier=dense`` gives
the dense baseline; ``--config.prune_exclude=output`` keeps the output layer dense as OpenLTH.
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.sparsifier = "magnitude"
  config.model = "vgg16"
  config.dataset = "tfds:cifar10"
  config.augment = True
  config.optimizer = "momentum"
  config.momentum = 0.9
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.lr_schedule = "step"
  config.lr_milestones = ("80ep", "120ep")
  config.lr_gamma = 0.1
  config.batch_size = 128
  config.steps = "160ep"
  config.final_sparsity = 0.9
  config.distribution = "uniform"
  return config
