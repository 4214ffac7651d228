"""PDP with 2:4 (N:M) sparsity on Conv-4 and Fashion-MNIST; otherwise ``pdp_conv4_fashion.py``.

PDP's soft mask per block (``pdp_scope='nm'``, ``nm='2:4'``): every 4 consecutive weights along
a kernel's input axis keep 2, thresholded halfway between each block's 2nd and 3rd largest
magnitudes (our reading of the paper's N:M variant, see ``sparsejax/pdp.py``). The pattern fixes
the sparsity at 50% from the end of the ``pdp_warmup='4ep'`` warm-up (``final_sparsity`` and
``pdp_rate`` are unused in this scope). The first convolution reads one input channel, which 4
does not divide, so it stays dense (``prune_exclude='conv1'``; 576 of its weights).
"""

from configs import pdp_conv4_fashion


def get_config():
  config = pdp_conv4_fashion.get_config()
  config.pdp_scope = "nm"
  config.nm = "2:4"
  config.prune_exclude = "conv1"
  return config
