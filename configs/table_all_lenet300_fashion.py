"""Every method of the project in one table: LeNet-300-100 on Fashion-MNIST at 90% and 98%
sparsity, 3 seeds each, at one training budget (OpenLTH's 40-epoch recipe)::

  python -m experiments.sweep --config=configs/table_all_lenet300_fashion.py --sweep=all \
      --root=runs/table_all_lenet300

(``--launcher=ray`` or ``--launcher=index`` run the same points elsewhere.) Training:
``configs/lenet300_dense.py`` (OpenLTH's ``mnist_lenet_300_100``: SGD, ``lr=0.1`` constant,
``batch_size=128``, 40 epochs), the same for every method. The methods, each as its config in
``configs/`` at the sweep's ``final_sparsity`` and ``seed``:

- ``dense``;
- ``magnitude``: gradual magnitude pruning (Zhu & Gupta 2017), uniform per layer, epochs 2 to 30;
- ``random`` with ERK densities (Liu et al. 2022), fixed from initialization;
- ``snip``, ``grasp``, ``synflow``: pruning at initialization, global (Lee et al. 2019; Wang et
  al. 2020; Tanaka et al. 2020), masks fixed;
- ``set``, ``rigl``: dynamic sparse training from random ERK masks (Mocanu et al. 2018; Evci et
  al. 2020), updates every 100 steps until 75% of training;
- ``sap``: PQI-guided adaptive pruning (Diao et al. 2023), once per epoch from epoch 1 to 75%,
  capped at the sparsity, with gamma = 5 (one of the paper's ablation values): with its main
  gamma = 1, SAP stops by itself near 75% sparsity here and would not reach 90% or 98%;
- ``pdp``: PDP soft masks (Cho et al. 2023); its entry is the hard-masked network
  (``test_accuracy_hard``);
- lottery tickets (``protocol=imp``): iterative magnitude pruning, global, rewound to
  initialization (Frankle & Carbin 2019), with the fraction per level that ends exactly at the
  sparsity: 10 levels of 20.6% for 90%, 18 levels of 19.6% for 98%. Each level trains the
  40-epoch recipe, so a ticket costs 11 or 19 trainings; its entry is the last level's.
"""

from configs import (grasp_lenet300_fashion, rigl_lenet300_fashion, sap_lenet300_fashion,
                     synflow_lenet300_fashion, table_lenet300_fashion)
from experiments.sweep_lib import product

SEEDS = (0, 1, 2)
SPARSITIES = (0.9, 0.98)
IMP_LEVELS = {0.9: 10, 0.98: 18}
SPARSE_METHODS = (
    {"sparsifier": "magnitude", "distribution": "uniform"},
    {"sparsifier": "random", "distribution": "erk"},
    {"sparsifier": "snip", "distribution": "global"},
    {"sparsifier": "grasp", "distribution": "global"},
    {"sparsifier": "synflow", "distribution": "global"},
    {"sparsifier": "set"},
    {"sparsifier": "rigl"},
    {"sparsifier": "sap"},
    {"sparsifier": "pdp"},
)


def imp_points(sparsities=SPARSITIES, levels=IMP_LEVELS):
  """Lottery-ticket points ending exactly at each sparsity: (1 - f)^levels = 1 - s."""
  return [{"protocol": "imp", "distribution": "global", "final_sparsity": s,
           "levels": levels[s], "prune_fraction": round(1 - (1 - s) ** (1 / levels[s]), 6)}
          for s in sparsities]


def set_method_keys(config, sap_every: str) -> None:
  """The keys of set / rigl, grasp, synflow and sap as their configs set them (``configs/rigl_*``,
  ``grasp_*``, ``synflow_*``, ``sap_*``), with SAP pruning every ``sap_every`` from epoch 1 to
  75% and gamma = 5 (see the module docstring); the points choose the sparsifier."""
  sparsifier, distribution = config.sparsifier, config.distribution
  for method in (rigl_lenet300_fashion, grasp_lenet300_fashion, synflow_lenet300_fashion,
                 sap_lenet300_fashion):
    method.set_method(config)
  config.sparsifier, config.distribution = sparsifier, distribution
  config.sap_every = sap_every
  config.sap_gamma = 5.0


def get_config():
  config = table_lenet300_fashion.get_config()  # dense recipe, magnitude and PDP schedules
  set_method_keys(config, sap_every="1ep")
  return config


def sweep_all():
  """Seed by seed: every method of a seed is done before the next seed starts."""
  seeds = [{"seed": s} for s in SEEDS]
  for seed in seeds:
    yield from product([seed], sparsifier=["dense"])
    yield from product([seed], SPARSE_METHODS, final_sparsity=SPARSITIES)
    yield from product([seed], imp_points())
