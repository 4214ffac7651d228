"""Conv-2 on CIFAR-10, gradual magnitude pruning to 90% sparsity, with the LTH paper's training.

Training follows Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
Neural Networks", ICLR 2019, Fig. 2 (table of architectures), Conv-2 (4.3M weights): Adam,
learning rate 2e-4 (constant), batch size 60, 20K iterations (``steps='20000it'``; about 24 epochs
of the 50,000 training images; the paper holds 5,000 of them out for validation).

Sparsity: the paper finds tickets by iterative magnitude pruning, with per-round rates for this
network of conv 10% / fc 20% and half the fc rate for the output layer; those belong to IMP
(``sparsejax.lottery``). This config, like the other CIFAR-10 configs, instead defaults to gradual
magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017, eq. 1: cubic schedule from
``pruning_begin='0it'`` to ``pruning_end='75%'`` of training, every 100 iterations) to
``final_sparsity=0.9`` with uniform per-layer densities. ``--config.sparsifier=dense`` gives the
dense baseline.

Data: CIFAR-10 from TFDS (``tfds:cifar10``) with random crop + flip (``augment=True``), as the
other CIFAR-10 configs. Frankle & Carbin describe augmentation for their VGG-19 / ResNet-18
experiments (Sec. 4), apparently not for Conv-2/4/6 *(unverified)*; if so,
``--config.augment=False`` is the closer match.
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.sparsifier = "magnitude"
  config.model = "conv2"
  config.dataset = "tfds:cifar10"
  config.augment = True
  config.optimizer = "adam"
  config.learning_rate = 2e-4
  config.lr_schedule = "constant"
  config.batch_size = 60
  config.steps = "20000it"
  config.final_sparsity = 0.9
  config.distribution = "uniform"
  return config
