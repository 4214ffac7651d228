"""HESSO on the MLP 784-300-100-10 (LeNet-300-100) and Fashion-MNIST, compressed afterwards.

The recipe of the structured-sparsity benchmark (``benchmarks/structured.py``), which measures
Only-Train-Once's own HESSO (Chen et al., "HESSO: Towards Automatic Efficiently Training and
Structured Pruning of Deep Neural Networks", arXiv 2409.09085) on the same data: SGD with
``momentum=0.9``, ``weight_decay=1e-4`` (L2), ``lr=0.1``, ``batch_size=128``, 10 epochs, the
learning rate x0.1 for the last quarter of the epochs (``lr_milestones=('7.5ep',)``); HESSO's
warm-up ``start_pruning_step='10%'`` of the steps and ``pruning_periods=10`` periods over
``pruning_steps='25%'`` of the steps, as OTO's tutorial suggests (warm-up 1/10, pruning until
1/4 of the training).

``target_group_sparsity`` is the fraction of the 400 hidden neurons (groups) removed: exactly
floor(400 * target) of them are zero at the end, and compression rebuilds the MLP without them.
"""

from experiments.config import defaults


def get_config():
  config = defaults()
  config.protocol = "structured"
  config.sparsifier = "hesso"
  config.model = "lenet300"
  config.dataset = "fashion_mnist"
  config.optimizer = "momentum"
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.learning_rate = 0.1
  config.lr_schedule = "step"
  config.lr_milestones = ("7.5ep",)
  config.lr_gamma = 0.1
  config.batch_size = 128
  config.steps = "10ep"
  config.target_group_sparsity = 0.7
  config.start_pruning_step = "10%"
  config.pruning_periods = 10
  config.pruning_steps = "25%"
  return config
