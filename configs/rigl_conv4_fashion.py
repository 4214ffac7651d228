"""Conv-4 on Fashion-MNIST, RigL at 90% sparsity.

Training: ``configs/conv4_fashion.py`` (the LTH paper's Conv-4 recipe: Adam, lr 3e-4 constant,
batch 60, 25K iterations). RigL as Evci et al. 2020 (Sec. 4): random ERK masks at the start,
connections moved every delta = 100 steps with the drop fraction alpha = 0.3 decaying by a cosine
to 0 at T_end = 75% of training, grown where the dense gradient is largest, starting at 0.0.
"""

from configs import conv4_fashion, rigl_lenet300_fashion


def get_config():
  config = conv4_fashion.get_config()
  rigl_lenet300_fashion.set_method(config)
  return config
