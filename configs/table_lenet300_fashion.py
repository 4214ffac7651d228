"""One table: LeNet-300-100 on Fashion-MNIST, dense and four sparse methods at 90% and 95%
sparsity, 3 seeds each (27 runs of OpenLTH's 40-epoch recipe)::

  python -m experiments.sweep --config=configs/table_lenet300_fashion.py --sweep=methods \
      --root=runs/table_lenet300

Training: ``configs/lenet300_dense.py`` (OpenLTH's ``mnist_lenet_300_100``: SGD, ``lr=0.1``
constant, ``batch_size=128``, 40 epochs). Each method's point is its published config here, at
the sweep's ``final_sparsity`` and ``seed``:

- ``magnitude``: ``configs/lenet300_magnitude.py``, Zhu & Gupta (2017) gradual magnitude pruning
  (eq. 1, cubic), uniform per layer, from epoch 2 to 30 every 100 iterations;
- ``random`` with ERK densities: ``configs/lenet300_random_erk.py`` (Liu et al., ICLR 2022);
- ``pdp``: ``configs/pdp_lenet300_fashion.py`` (Cho, Adya & Naik, NeurIPS 2023), soft masks with
  ``pdp_tau=1e-4``, 5 dense warm-up epochs and ``pdp_rate=0.04``; its table entry is the
  hard-masked network (``test_accuracy_hard``);
- ``ste``: straight-through magnitude masks on the same schedule as ``pdp``.

``get_config()`` is the dense recipe with the magnitude and PDP/STE schedule keys set (each
sparsifier reads only its own keys), so that a point only names its method, sparsity and seed.
"""

from configs import lenet300_dense
from experiments.sweep_lib import product

SEEDS = (0, 1, 2)
SPARSITIES = (0.9, 0.95)
SPARSE_METHODS = (
    {"sparsifier": "magnitude"},
    {"sparsifier": "random", "distribution": "erk"},
    {"sparsifier": "pdp"},
    {"sparsifier": "ste"},
)


def get_config():
  config = lenet300_dense.get_config()
  # configs/lenet300_magnitude.py
  config.distribution = "uniform"
  config.pruning_begin = "2ep"
  config.pruning_end = "30ep"
  config.pruning_frequency = "100it"
  config.pruning_power = 3.0
  # configs/pdp_lenet300_fashion.py (ste follows the same schedule)
  config.pdp_scope = "unstructured"
  config.pdp_tau = 1e-4
  config.pdp_warmup = "5ep"
  config.pdp_rate = 0.04
  return config


def sweep_methods():
  yield from product(sparsifier=["dense"], seed=SEEDS)
  yield from product(SPARSE_METHODS, final_sparsity=SPARSITIES, seed=SEEDS)
