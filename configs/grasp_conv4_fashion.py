"""Conv-4 on Fashion-MNIST, GraSP at initialization to 90% sparsity.

Pruning: GraSP (Wang, Zhang & Grosse, ICLR 2020, eq. 8): the weights with the highest w * Hg are
kept, one-shot at initialization, globally; Hg on a class-balanced batch of 10 examples per class
with the logits divided by T = 200, as the authors' code. Training as
``configs/conv4_fashion.py`` (the LTH paper's Conv-4 recipe: Adam, lr 3e-4, batch 60,
25K iterations) with the masks fixed.
"""

from configs import conv4_fashion, grasp_lenet300_fashion


def get_config():
  config = conv4_fashion.get_config()
  grasp_lenet300_fashion.set_method(config)
  return config
