"""Conv-4 on Fashion-MNIST, SET at 90% sparsity.

Training as ``configs/rigl_conv4_fashion.py`` (the LTH paper's Conv-4 recipe), with SET (Mocanu et
al. 2018): the same random ERK start and update steps (every 100 steps until 75% of training), a
constant fraction 0.3 of each layer's connections moved, grown at random.
"""

from configs import rigl_conv4_fashion


def get_config():
  config = rigl_conv4_fashion.get_config()
  config.sparsifier = "set"
  return config
