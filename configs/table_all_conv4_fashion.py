"""Every method of the project in one table: Conv-4 on Fashion-MNIST at 90% and 98% sparsity,
3 seeds each, at one training budget::

  python -m experiments.sweep --config=configs/table_all_conv4_fashion.py --sweep=all \
      --root=runs/table_all_conv4 --parallel=2

That takes about 14 h on 2 CPU cores. On one H200 GPU, 14 points at a time sharing it, the 63
points (147 trainings) took 310 s::

  XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.06 \
  python -m experiments.sweep --config=configs/table_all_conv4_fashion.py --sweep=all \
      --root=runs/table_all_conv4 --parallel=14 --nopin_cores

The methods and their settings are those of ``configs/table_all_lenet300_fashion.py``, on the
Conv-4 recipe of ``configs/conv4_fashion.py`` (the LTH paper's: Adam, ``lr=3e-4`` constant, batch
60) shortened as ``benchmarks/pdp_accuracy.py``'s ``--conv4_recipe=short``: the first 12,000
training images for 5 epochs (1,000 iterations; the paper's 25K iterations take about 2.3 h per
run on 2 CPU cores). The schedules are fitted to that length as there: magnitude pruning from
epoch 1 to 4 every 50 iterations; PDP warms up for 1 epoch and ramps by 0.34 per epoch; SET and
RigL update every 100 iterations until 75%; SAP prunes every 20 iterations from epoch 1 to 75%
(28 times, about the paper's T = 30). Lottery tickets train the same 5 epochs per level. On an
accelerator, the full recipe is the method configs (``configs/*_conv4_fashion.py``) as they are.
"""

from configs import conv4_fashion, table_all_lenet300_fashion
from experiments.sweep_lib import product

SEEDS = table_all_lenet300_fashion.SEEDS
SPARSITIES = table_all_lenet300_fashion.SPARSITIES
SPARSE_METHODS = table_all_lenet300_fashion.SPARSE_METHODS


def get_config():
  config = conv4_fashion.get_config()
  config.train_subset = 12000
  config.steps = "5ep"
  config.checkpoint_every = "1ep"  # a run takes minutes on CPU: an interruption loses an epoch
  # magnitude (uniform per layer, cubic)
  config.pruning_begin, config.pruning_end, config.pruning_frequency = "1ep", "4ep", "50it"
  config.pruning_power = 3.0
  # pdp (ste follows the same schedule)
  config.pdp_scope = "unstructured"
  config.pdp_tau = 1e-4
  config.pdp_warmup = "1ep"
  config.pdp_rate = 0.34
  table_all_lenet300_fashion.set_method_keys(config, sap_every="20it")
  return config


def sweep_all():
  """Seed by seed, as the LeNet-300-100 table, each seed's lottery tickets (19 and 11 trainings)
  first: with ``--parallel``, the single trainings then fill the cores beside them, and no ticket
  is left to run alone at the end."""
  for seed in ({"seed": s} for s in SEEDS):
    yield from product([seed], sorted(table_all_lenet300_fashion.imp_points(),
                                      key=lambda p: -p["levels"]))
    yield from product([seed], sparsifier=["dense"])
    yield from product([seed], SPARSE_METHODS, final_sparsity=SPARSITIES)
