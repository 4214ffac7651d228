"""LeNet-300-100 on Fashion-MNIST, SynFlow at initialization to 90% sparsity.

Pruning: Iterative Synaptic Flow Pruning (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020,
Algorithm 1): data-free, 100 rounds of scoring |w| * dR/d|w| on the linearized network (absolute
weights, an input of ones) and pruning globally on the exponential schedule to 90%. Training as
``configs/lenet300_dense.py`` (OpenLTH's recipe) with the masks fixed.
"""

from configs import lenet300_dense


def set_method(config) -> None:
  """SynFlow as here, on any training recipe (``configs/synflow_conv4_fashion.py``)."""
  config.sparsifier = "synflow"
  config.final_sparsity = 0.9
  config.distribution = "global"
  config.synflow_iterations = 100


def get_config():
  config = lenet300_dense.get_config()
  set_method(config)
  return config
