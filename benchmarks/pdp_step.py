"""Training-step time of PDP, straight-through and N:M masks relative to dense, side by side.

The steps are the runner's own: each variant's config (``configs/pdp_lenet300_fashion.py``,
``configs/pdp_conv4_fashion.py``, ``configs/pdp_nm_conv4_fashion.py`` with the sparsifier and scope
changed) goes through ``experiments.setup`` (task, prunable rule, sparsifier) and
``experiments.trainer`` (``init_state``, ``make_train_steps``), exactly as a run builds them; only
the dataset is replaced by random arrays of the right shape (28x28x1 images, 10 classes), so that
nothing needs loading. Batch sizes are the configs': 128 for LeNet-300-100, 60 for Conv-4. Each
timed call is ``train_steps(state, steps)``, the runner's chunk of steps: one jitted
``lax.fori_loop`` for LeNet-300-100, one jitted call per step from a Python loop for Conv-4 on CPU
(``trainer.host_loop``), synchronized at the end. Every call draws its epoch's example order
first, which the runner amortizes over chunks of a whole epoch; so that this cost, the same for
every variant, stays small next to short chunks, the synthetic training set has 6,000 examples
(``--num_train``; a tenth of Fashion-MNIST: one order of 60,000 takes about as long as a LeNet
step on 2 CPU cores).

Variants, interleaved round by round (the order rotating) in one process, so that machine noise
hits all of them alike:

  dense      the dense optimizer alone (``sparsifier='dense'``);
  pdp        PDP soft masks, unstructured, ``final_sparsity=0.9``; each step's thresholds are
             searched from the last step's (``previous`` of ``sparsejax.pdp.thresholds``);
  pdp cold   the same, with every search started from a sample of the layer instead (what the
             warm start saves);
  pdp 2:4    PDP soft masks, ``pdp_scope='nm'``, ``nm='2:4'`` (Conv-4: ``prune_exclude='conv1'``,
             as ``configs/pdp_nm_conv4_fashion.py``; LeNet-300-100's inputs 784, 300 and 100 are
             all multiples of 4);
  ste        straight-through hard magnitude masks, unstructured, 90%;
  ste 2:4    straight-through hard 2:4 masks (the same exclusions as pdp 2:4);
  pdp sort   the reference for "a full sort per layer per forward pass": the pdp variant with its
             forward function replaced by one written here, the same soft mask
             ``sigmoid((w^2 - t^2) / tau)`` with t halfway between the smallest kept and the
             largest pruned magnitude, but found with ``jnp.sort`` of every layer's ``|w|``.

Every sparse variant is measured after PDP's dense warm-up: ``pdp_warmup='0it'`` fixes the
per-layer targets from the initial params in ``init`` and ``pdp_rate=1.0`` puts the whole target
in force from the first epoch (the ramp's cost does not depend on where it stands). The table
gives the median milliseconds per step over the rounds, its ratio to dense's median, the range
of the per-round ratios, and the density of the hard masks at the end (a check that the masks
are on).

  python benchmarks/pdp_step.py [--rounds 5] [--steps N] [--models lenet300,conv4]

(``--steps``: steps per variant per round, default 100 for LeNet-300-100 and 2 for Conv-4, whose
step takes about half a second on 2 CPU cores.)
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import pdp_conv4_fashion, pdp_lenet300_fashion, pdp_nm_conv4_fashion
from experiments import config as config_lib
from experiments import pdp_sparsifiers, trainer
from overhead import runner_training  # this script's directory
from replicates import interleaved
from sparsejax import masks as masks_lib

MODELS = {
    # name: (title, unstructured config, N:M config, default steps per variant per round)
    "lenet300": ("LeNet-300-100", pdp_lenet300_fashion.get_config,
                 pdp_lenet300_fashion.get_config, 100),
    "conv4": ("Conv-4", pdp_conv4_fashion.get_config, pdp_nm_conv4_fashion.get_config, 2),
}
VARIANTS = ("dense", "pdp", "pdp cold", "pdp 2:4", "ste", "ste 2:4", "pdp sort")


def variant_config(model: str, variant: str):
  _, unstructured, nm, _ = MODELS[model]
  config = (nm if variant.endswith("2:4") else unstructured)()
  config.sparsifier = {"dense": "dense", "ste": "ste", "ste 2:4": "ste"}.get(variant, "pdp")
  config.pdp_scope = "nm" if variant.endswith("2:4") else "unstructured"
  config.nm = "2:4"
  config.pdp_warmup = "0it"  # targets fixed from the initial params: past the warm-up from step 0
  config.pdp_rate = 1.0      # the whole targets in force from the first epoch
  return config_lib.finalize(config)


def sort_forward(schedule: pdp_sparsifiers.Schedule, tau: float, prunable):
  """PDP's unstructured forward function with each layer's threshold from a full ``jnp.sort``."""

  def soft(w, sparsity):
    a = lax.stop_gradient(jnp.abs(w.astype(jnp.float32))).ravel()
    n = a.size
    kept = jnp.round((1.0 - sparsity) * n).astype(jnp.int32)
    ascending = jnp.sort(a)
    largest_pruned = ascending[jnp.clip(n - kept - 1, 0, n - 1)]
    smallest_kept = ascending[jnp.clip(n - kept, 0, n - 1)]
    t = jnp.where(kept >= n, 0.0, jnp.where(kept <= 0, jnp.inf,
                                            smallest_kept / 2 + largest_pruned / 2))
    mask = jax.nn.sigmoid((jnp.square(w.astype(jnp.float32)) - jnp.square(t)) / tau)
    return (w * jnp.where(kept >= n, 1.0, mask)).astype(w.dtype)

  def forward(params, opt_state, step):
    sparsities = schedule.sparsities(opt_state.targets, step)
    selected = set(masks_lib.prunable_paths(params, prunable))
    return jax.tree_util.tree_map_with_path(
        lambda path, w, s: soft(w, s) if jax.tree_util.keystr(path) in selected else w,
        params, sparsities)

  return forward


class ColdSchedule(pdp_sparsifiers.Schedule):
  """PDP's schedule with each step's thresholds searched without the last step's."""

  def thresholds(self, params, targets, step, previous=None):
    return super().thresholds(params, targets, step)


def build(model: str, variant: str, num_train: int):
  """(train_steps, state, sparsifier, task) of ``variant``, as the runner builds them."""
  config = variant_config(model, variant)

  def adapt(sparsifier, setup):
    if variant not in ("pdp sort", "pdp cold"):
      return sparsifier
    schedule = (ColdSchedule if variant == "pdp cold" else pdp_sparsifiers.Schedule)(
        config.final_sparsity, 0, setup.task.durations.steps_per_epoch, config.pdp_rate,
        "unstructured", 2, 4, setup.prunable)
    if variant == "pdp sort":
      return dataclasses.replace(
          sparsifier, forward=sort_forward(schedule, config.pdp_tau, setup.prunable))
    return dataclasses.replace(
        sparsifier, tx=schedule.transformation(setup.inner_optimizer(), with_thresholds=True))

  train_steps, state, sparsifier, setup = runner_training(config, num_train, adapt)
  return train_steps, state, sparsifier, setup.task


def bench(model: str, rounds: int, steps: int, num_train: int) -> list[str]:
  title = MODELS[model][0]
  built = {v: build(model, v, num_train) for v in VARIANTS}
  # The sort reference computes PDP's soft mask: check it against the library's.
  pdp_sparsifier, sort_sparsifier = built["pdp"][2], built["pdp sort"][2]
  state = built["pdp"][1]
  a, b = (s.forward(state["params"], state["opt_state"], state["step"])
          for s in (pdp_sparsifier, sort_sparsifier))
  diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))
  timed = {v: [train_steps, state] for v, (train_steps, state, _, _) in built.items()}
  per_step = interleaved(timed, rounds, steps)  # ms; the states end in ``timed``
  dense = np.median(per_step["dense"])
  rows = []
  for v in VARIANTS:
    times = np.array(per_step[v])
    ratios = times / np.array(per_step["dense"])
    density = trainer.density(trainer.masks_of(built[v][2], timed[v][1]))
    rows.append(f"| {title} | {v} | {np.median(times):.2f} | {np.median(times) / dense:.2f} "
                f"| {ratios.min():.2f}-{ratios.max():.2f} | {density:.3f} |")
  task = built["dense"][3]
  loop = "one jitted call per step" if trainer.host_loop(task.model) else "lax.fori_loop"
  print(f"{title}: batch {task.batch_size}, {rounds} rounds x {steps} steps, {loop}; the sort "
        f"reference's effective params at init differ from pdp's by at most {diff:.2e}",
        flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per variant per round (default: 100 for lenet300, 2 for conv4)")
  parser.add_argument("--models", default="lenet300,conv4", help="comma-separated: "
                      + ", ".join(MODELS))
  parser.add_argument("--num_train", type=int, default=6000,
                      help="synthetic training examples (see the docstring)")
  args = parser.parse_args()
  models = args.models.split(",")
  unknown = [m for m in models if m not in MODELS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.rounds} rounds per "
        "variant, interleaved", flush=True)
  rows = []
  for model in models:
    rows += bench(model, args.rounds, args.steps or MODELS[model][3], args.num_train)
  print()
  print("| model | variant | ms / step (median) | x dense | per-round x dense | density |")
  print("|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
