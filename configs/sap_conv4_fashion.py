"""SAP (PQI-guided adaptive pruning) on Conv-4 and Fashion-MNIST, capped at 90% sparsity, with the
LTH paper's training.

Training: ``configs/conv4_fashion.py`` (the LTH paper's Conv-4 recipe, Frankle & Carbin, ICLR
2019, Fig. 2: Adam, ``lr=3e-4`` constant, batch 60, 25K iterations, on Fashion-MNIST without
augmentation): at batch 60 the 25K iterations are 25 epochs of the 60,000 training images. No published Conv-4
numbers exist on Fashion-MNIST: compare relatively (dense, magnitude, PDP, SAP).

Pruning: SAP as ``configs/sap_lenet300_fashion.py``, Diao et al. 2023, "Pruning Deep Neural Networks from a Sparsity Perspective" (ICLR
2023), Algorithm 1, with the hyperparameters of its experiments (p = 0.5, q = 1, eta_r = 0,
gamma = 1, global pruning; the authors' beta = 0.9). The paper prunes its CNN T = 30 times with
retraining in between; here pruning steps fall once per epoch from epoch 1 to 18 and at 75% of
training (19 steps), and stop at ``final_sparsity`` = 0.9 (a cap of ours, for comparison at 90%).
"""

from configs import conv4_fashion, sap_lenet300_fashion


def get_config():
  config = conv4_fashion.get_config()
  sap_lenet300_fashion.set_method(config)
  return config
