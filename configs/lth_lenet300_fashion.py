"""Lottery tickets for LeNet-300-100 on Fashion-MNIST with the LTH paper's MNIST settings.

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (Sec. 2, Fig. 2 and Figs. 3-4): LeNet-300-100
with Gaussian Glorot initialization, Adam with learning rate 1.2e-3, batch size 60, 50,000
iterations; iterative magnitude pruning removes 20% of each layer's surviving weights per level and
10% of the output layer's (layerwise pruning, ``distribution="uniform"``); weights rewound to their
initial values (``rewind="0it"``). 12 levels end at 0.8^12 = 6.9% of the hidden layers' weights
(7.5% of all weights). Controls as in the paper: random re-initialization (same masks) and random
masks with the ticket's per-layer densities. Three replicates give the error bars.

No Fashion-MNIST numbers were published; what the run shows is relative: tickets against dense,
against their random re-initialization and against random masks.
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.protocol = "imp"
  config.model = "lenet300"
  config.dataset = "fashion_mnist"
  config.optimizer = "adam"
  config.learning_rate = 1.2e-3
  config.lr_schedule = "constant"
  config.batch_size = 60
  config.steps = "50000it"
  config.eval_every = "1ep"
  config.log_every = "5ep"
  config.checkpoint_every = "10ep"
  config.distribution = "uniform"
  config.prune_fraction = 0.2
  config.prune_fraction_overrides = "output=0.1"
  config.rewind = "0it"
  config.levels = 12
  config.controls = ("reinit", "shuffle_layerwise")
  config.replicates = 3
  return config
