"""Conv-4 on Fashion-MNIST, SynFlow at initialization to 90% sparsity.

Pruning: Iterative Synaptic Flow Pruning (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020,
Algorithm 1): data-free, 100 rounds of scoring |w| * dR/d|w| on the linearized network (absolute
weights, an input of ones) and pruning globally on the exponential schedule to 90%. Training as
``configs/conv4_fashion.py`` (the LTH paper's Conv-4 recipe) with the masks fixed.
"""

from configs import conv4_fashion, synflow_lenet300_fashion


def get_config():
  config = conv4_fashion.get_config()
  synflow_lenet300_fashion.set_method(config)
  return config
