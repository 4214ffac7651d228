"""Accuracy of PDP against the baselines at the same training budget, over seeds.

For LeNet-300-100 and Conv-4 on Fashion-MNIST, at each sparsity (``--sparsities``, default 90%
and 95%) and seed, it trains through the runner's ``train`` protocol:

  dense             the recipe without pruning (once per seed);
  magnitude         gradual magnitude pruning (Zhu & Gupta 2017), uniform per layer;
  magnitude_global  the same with one global ranking of the magnitudes, which splits the
                    sparsity over layers as PDP's targets are split (a global ranking at the end
                    of PDP's warm-up);
  random_erk        random pruning at initialization with ERK densities (Liu et al. 2022);
  pdp               PDP soft masks (Cho et al. 2023), unstructured;
  ste               straight-through magnitude masks on PDP's schedule;

and at 2:4 (``--nm``; '' for none): ``pdp_nm``, ``ste_nm`` and ``magnitude_nm`` (gradual
magnitude N:M; Conv-4's first convolution, with one input channel, stays dense). The number
compared is the test accuracy of the network with its hard masks, pruned weights exactly 0.0:
``test_accuracy_hard`` for pdp and ste (whose training evaluates the soft or straight-through
network), ``test_accuracy`` for the others (their masks are hard).

Recipes:

- LeNet-300-100: OpenLTH's (SGD, lr 0.1, batch 128, 40 epochs: ``configs/lenet300_dense.py``);
  magnitude prunes from epoch 2 to 30 every 100 iterations (``configs/lenet300_magnitude.py``),
  pdp and ste warm up for 5 epochs and ramp by 0.04 per epoch to epoch 29
  (``configs/pdp_lenet300_fashion.py``).
- Conv-4: the LTH paper's (Adam 3e-4, batch 60: ``configs/pdp_conv4_fashion.py``). Its 25K
  iterations take about 2.3 h per run on 2 CPU cores, so ``--conv4_recipe=short`` (the default)
  trains on the first 12,000 training images for 5 epochs (1,000 iterations): pdp and ste warm up
  for 1 epoch and ramp by 0.34 per epoch (the targets in force from epoch 3), magnitude prunes
  from epoch 1 to 4 every 50 iterations; ``--conv4_recipe=full`` runs the configs as they are.

  python benchmarks/pdp_accuracy.py [--models lenet300,conv4] [--seeds 0,1,2]
      [--sparsities 0.9,0.95] [--nm 2:4]
      [--methods dense,magnitude,magnitude_global,random_erk,pdp,ste]
      [--workdir runs/pdp_accuracy] [--conv4_recipe short] [--collect]
      [--steps 40it --dataset digits]  (a smoke run)

Finished runs in ``--workdir`` are reused (the runner resumes them), so an interrupted benchmark
picks up where it stopped (a Conv-4 run from its last epoch's checkpoint); ``--collect`` reports
the finished runs without training. Results: ``results.json`` in the workdir and a Markdown
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import lenet300_dense, lenet300_magnitude, pdp_conv4_fashion, pdp_lenet300_fashion
from experiments import experiment

METHODS = ("dense", "magnitude", "magnitude_global", "random_erk", "pdp", "ste")
NM_METHODS = ("pdp_nm", "ste_nm", "magnitude_nm")
HARD = {"pdp", "ste", "pdp_nm", "ste_nm"}


def _magnitude_distribution(method: str) -> str:
  return "global" if method == "magnitude_global" else "uniform"


def _lenet300(method: str):
  if method == "dense":
    return lenet300_dense.get_config()
  if method.startswith("magnitude"):
    config = lenet300_magnitude.get_config()
    config.distribution = _magnitude_distribution(method)
    return config
  config = pdp_lenet300_fashion.get_config()
  if method == "random_erk":
    config.sparsifier, config.distribution = "random", "erk"
  return config


def _conv4(method: str, recipe: str):
  config = pdp_conv4_fashion.get_config()
  if recipe == "short":
    config.train_subset = 12000
    config.steps = "5ep"
    config.pdp_warmup = "1ep"
    config.pdp_rate = 0.34
  if method == "dense":
    config.sparsifier = "dense"
  elif method.startswith("magnitude"):
    config.sparsifier = "magnitude"
    config.distribution = _magnitude_distribution(method)
    config.pruning_power = 3.0
    if recipe == "short":
      config.pruning_begin, config.pruning_end, config.pruning_frequency = "1ep", "4ep", "50it"
    else:
      config.pruning_begin, config.pruning_end, config.pruning_frequency = "4ep", "20ep", "100it"
  elif method == "random_erk":
    config.sparsifier, config.distribution = "random", "erk"
  return config


def config_for(model: str, method: str, sparsity: float, seed: int, args):
  config = _lenet300(method) if model == "lenet300" else _conv4(method, args.conv4_recipe)
  base = method.removesuffix("_nm")
  if base in ("pdp", "ste"):
    config.sparsifier = base
  if method != "dense":
    config.final_sparsity = sparsity
  if method.endswith("_nm"):
    config.nm = args.nm
    if base in ("pdp", "ste"):
      config.pdp_scope = "nm"
    else:
      config.pruning_scope = "nm"
    if model == "conv4":
      config.prune_exclude = "conv1"  # one input channel: no blocks of 4
  elif base in ("pdp", "ste"):
    config.pdp_scope = "unstructured"
  config.seed = seed
  # A LeNet-300-100 run takes under a minute: a checkpoint at its end. A Conv-4 run several: one
  # per epoch, so that an interrupted benchmark loses at most an epoch of the run it was in.
  config.checkpoint_every = "1ep" if model == "conv4" else "100ep"
  if args.steps:
    config.steps = args.steps
  if args.dataset:
    config.dataset = args.dataset
    config.train_subset = config.test_subset = 0
  return config


def points(args):
  """(model, method, sparsity or nm, seed) of every run asked for."""
  for model in args.models:
    for seed in args.seeds:
      for method in args.methods:
        if method == "dense":
          yield model, method, 0.0, seed
        else:
          for sparsity in args.sparsities:
            yield model, method, sparsity, seed
      if args.nm:
        for method in NM_METHODS:
          yield model, method, args.nm, seed


def run_all(args) -> list[dict]:
  rows = []
  for model, method, level, seed in points(args):
    name = f"{model}_{method}_{level if isinstance(level, str) else f'{level:g}'}_s{seed}"
    directory = os.path.join(args.workdir, name.replace(":", "of"))
    summary_path = os.path.join(directory, "summary.json")
    if args.collect:
      if not os.path.exists(summary_path):
        continue
      with open(summary_path) as f:
        summary = json.load(f)
    else:
      sparsity = 0.5 if isinstance(level, str) else level
      t0 = time.time()
      summary = experiment.run(config_for(model, method, sparsity, seed, args), directory)
      print(f"{name}: {time.time() - t0:.0f} s, hard-masked test accuracy "
            f"{summary.get('test_accuracy_hard', summary['test_accuracy']):.4f}", flush=True)
    accuracy = summary["test_accuracy_hard"] if method in HARD else summary["test_accuracy"]
    density = summary.get("density_hard", summary.get("density", 1.0))
    rows.append({"model": model, "method": method, "level": level, "seed": seed,
                 "accuracy": accuracy, "density": density, "workdir": directory})
  return rows


def _mean_spread(values) -> str:
  values = [100 * v for v in values]
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def table(rows: list[dict]) -> str:
  lines = ["| model | sparsity | method | hard-masked test accuracy % (mean +- sd) | seeds | "
           "density |", "|---|---|---|---|---|---|"]
  keys = []
  for r in rows:
    key = (r["model"], str(r["level"]), r["method"])
    if key not in keys:
      keys.append(key)
  order = {m: i for i, m in enumerate(METHODS + NM_METHODS)}
  keys.sort(key=lambda k: (k[0], k[1], order.get(k[2], 99)))
  for model, level, method in keys:
    group = [r for r in rows if (r["model"], str(r["level"]), r["method"]) == (model, level,
                                                                                 method)]
    label = "dense" if method == "dense" else (level if ":" in level else f"{float(level):.0%}")
    lines.append(f"| {model} | {label} | {method} | {_mean_spread([r['accuracy'] for r in group])}"
                 f" | {len(group)} | {statistics.mean(r['density'] for r in group):.4f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="lenet300,conv4")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--sparsities", default="0.9,0.95")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--nm", default="2:4", help="the N:M pattern; '' for none")
  parser.add_argument("--workdir", default="runs/pdp_accuracy")
  parser.add_argument("--conv4_recipe", default="short", choices=("short", "full"))
  parser.add_argument("--steps", default="", help="override every run's length (smoke tests)")
  parser.add_argument("--dataset", default="", help="override the dataset, e.g. digits (smoke "
                      "tests; the recipes' warm-ups and schedules are in epochs)")
  parser.add_argument("--collect", action="store_true",
                      help="report the finished runs in --workdir without training")
  args = parser.parse_args()
  args.models = [m for m in args.models.split(",") if m]
  for model in args.models:
    if model not in ("lenet300", "conv4"):
      parser.error(f"--models: {model!r} is not one of lenet300, conv4")
  args.seeds = [int(s) for s in args.seeds.split(",") if s]
  args.sparsities = [float(s) for s in args.sparsities.split(",") if s]
  args.methods = [m for m in args.methods.split(",") if m]
  for method in args.methods:
    if method not in METHODS:
      parser.error(f"--methods: {method!r} is not one of {', '.join(METHODS)}")
  rows = run_all(args)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(table(rows))


if __name__ == "__main__":
  main()
