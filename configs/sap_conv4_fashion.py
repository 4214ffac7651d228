"""SAP (PQI-guided adaptive pruning) on Conv-4 and Fashion-MNIST, capped at 90% sparsity, with the
LTH paper's training.

Training: ``configs/conv4_cifar10.py`` (Frankle & Carbin, ICLR 2019, Fig. 2, Conv-4: Adam,
``lr=3e-4`` constant, batch 60, 25K iterations) on Fashion-MNIST instead of CIFAR-10, without
CIFAR's crop + flip augmentation (``augment=False``), as ``configs/pdp_conv4_fashion.py``: at
batch 60 the 25K iterations are 25 epochs of the 60,000 training images. No published Conv-4
numbers exist on Fashion-MNIST: compare relatively (dense, magnitude, PDP, SAP).

Pruning: SAP, Diao et al. 2023, "Pruning Deep Neural Networks from a Sparsity Perspective" (ICLR
2023), Algorithm 1, with the hyperparameters of its experiments (p = 0.5, q = 1, eta_r = 0,
gamma = 1, global pruning; the authors' beta = 0.9). The paper prunes its CNN T = 30 times with
retraining in between; here pruning steps fall once per epoch from epoch 1 to 18 and at 75% of
training (19 steps), and stop at ``final_sparsity`` = 0.9 (a cap of ours, for comparison at 90%).
"""

from configs import conv4_cifar10


def get_config():
  config = conv4_cifar10.get_config()
  config.dataset = "fashion_mnist"
  config.augment = False
  config.sparsifier = "sap"
  config.final_sparsity = 0.9
  config.sap_begin = "1ep"
  config.sap_end = "75%"
  config.sap_every = "1ep"
  config.sap_p = 0.5
  config.sap_q = 1.0
  config.sap_eta = 0.0
  config.sap_gamma = 1.0
  config.sap_beta = 0.9
  config.sap_scope = "global"
  return config
