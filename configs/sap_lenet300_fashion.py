"""LeNet-300-100 on Fashion-MNIST, SAP (PQI-guided adaptive pruning) capped at 90% sparsity.

Training follows OpenLTH's ``mnist_lenet_300_100`` as ``configs/lenet300_dense.py`` (SGD, lr 0.1
constant, batch 128, 40 epochs), so SAP is compared with dense, magnitude pruning, RigL and the
lottery tickets at the same budget.

SAP follows Diao et al. 2023, "Pruning Deep Neural Networks from a Sparsity Perspective" (ICLR
2023), Algorithm 1, with the hyperparameters of its experiments (the authors' code runs them as
``si-0.5-1-0-1``): p = 0.5, q = 1, eta_r = 0, gamma = 1, global pruning, and the authors'
beta = 0.9. The paper prunes T = 30 times, retraining from the initial weights after each; here
the 30 pruning steps fall during one training, once per epoch from epoch 1 to epoch 30 (75%),
and pruning stops at ``final_sparsity`` = 0.9 (a cap of ours, for comparison at 90%).
"""

from configs import lenet300_dense


def set_method(config) -> None:
  """SAP as here, on any training recipe (``configs/sap_conv4_fashion.py``)."""
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


def get_config():
  config = lenet300_dense.get_config()
  set_method(config)
  return config
