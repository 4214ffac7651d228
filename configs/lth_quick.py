"""Quick start: a short lottery-ticket run, LeNet-300-100 on Fashion-MNIST (a few minutes on 2 cores).

A shortened ``configs/lth_lenet300_fashion.py`` (the LTH paper's settings: Adam 1.2e-3, batch 60,
20% per level and 10% for the output layer, rewinding to initialization): 3,000 iterations per
level instead of 50,000, 6 levels (down to 26% of the hidden layers' weights), one replicate, and
the random re-initialization control.
"""

from configs import lth_lenet300_fashion


def get_config():
  config = lth_lenet300_fashion.get_config()
  config.steps = "3000it"
  config.levels = 6
  config.replicates = 1
  config.controls = ("reinit",)
  config.log_every = "1ep"
  config.checkpoint_every = "1ep"
  return config
