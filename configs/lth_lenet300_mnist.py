"""Lottery tickets for LeNet-300-100 on MNIST (``tfds:mnist``), the LTH paper's own experiment.

Frankle & Carbin 2019, Figs. 3-4: the settings of ``configs/lth_lenet300_fashion.py`` (Adam 1.2e-3,
batch 60, 50,000 iterations, 20% per level and 10% for the output layer, rewinding to
initialization, random re-initialization and random-mask controls) on MNIST. The paper's tickets
reach about 98.3-98.5% test accuracy at 51.3% and 21.1% of weights remaining against about 98.0%
dense (readings of the plots), and stay at or above dense down to about 3.6%.

Needs MNIST prepared for TFDS in the array_record format (``tfds build mnist
--file_format=array_record``, or a machine that can download it); any MNIST-format IDX copy works
too: ``--config.dataset=idx:/path/to/mnist``.
"""

from configs import lth_lenet300_fashion


def get_config():
  config = lth_lenet300_fashion.get_config()
  config.dataset = "tfds:mnist"
  config.levels = 15  # 0.8^15 = 3.5% of the hidden layers' weights
  return config
