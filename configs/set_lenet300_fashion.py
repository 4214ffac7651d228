"""LeNet-300-100 on Fashion-MNIST, SET at 90% sparsity.

Training as ``configs/rigl_lenet300_fashion.py`` (OpenLTH's LeNet-300-100 recipe), with SET
(Mocanu et al. 2018): the same random ERK start and update steps (every 100 steps until 75% of
training), a constant fraction 0.3 of each layer's connections moved, grown at random.
"""

from configs import rigl_lenet300_fashion


def get_config():
  config = rigl_lenet300_fashion.get_config()
  config.sparsifier = "set"
  return config
