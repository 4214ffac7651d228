"""RigL and SET training steps against a dense step, measured side by side.

Variants, interleaved round by round in one process (the same models, batches and timing as
``benchmarks/overhead.py``): plain optax SGD with momentum (dense), and ``sparsejax.dynamic.rigl``
and ``set_`` around it at 90% sparsity (random ERK masks) moving connections every 50 steps. The
run is far from ``end_step``, so every update step moves connections.

Printed per model: each method's ordinary step over dense (median), its whole runs over dense's
including the update steps (amortized), and one update step over an ordinary step; each step a
jitted call from Python, synchronized.

Then (``--models lenet``) the way the runner trains: its own ``train_steps`` (built as a run
builds it, on random 28x28x1 data: ``overhead.runner_training``) in chunks of ``--steps`` steps,
one jitted loop each, timed whole, interleaved round by round, connections moved every 50 steps.
The configs are the runner's LeNet-300-100 ones (``configs/lenet300_dense.py``,
``configs/rigl_lenet300_fashion.py``, ``configs/set_lenet300_fashion.py``, and random ERK
masks for ``static_masks``). RigL and SET there run the steps between updates without their
per-step ``lax.cond`` (the sparsifier's ``update_steps``); ``rigl, cond every step`` is the same
RigL with the cond at every step, as before.

  python benchmarks/dynamic_step.py [--rounds 7] [--steps 200] [--models lenet,cnn]
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from configs import lenet300_dense, rigl_lenet300_fashion  # noqa: E402
from experiments import config as config_lib  # noqa: E402
from overhead import compiled, main_for, rotating, runner_training, time_steps  # noqa: E402
from replicates import interleaved  # noqa: E402
from sparsejax import dynamic, pruning  # noqa: E402

EVERY = 50


def bench(name, build, rounds, steps):
  apply, params, shape = build()
  inner = optax.sgd(0.01, momentum=0.9)
  masks = pruning.random(jax.random.key(1), params, 0.9, "erk")
  end = 10 * rounds * steps
  variants = {
      "dense": inner,
      "rigl": dynamic.rigl(inner, masks, update_every=EVERY, end_step=end),
      "set": dynamic.set_(inner, masks, jax.random.key(2), update_every=EVERY, end_step=end),
  }
  batches, step_fns, carries = compiled(apply, params, shape, variants)
  times = {v: [] for v in variants}
  updates = {v: [] for v in variants}
  for v in rotating(list(variants), rounds):
    start = int(carries[v][1].count) if v != "dense" else 0
    carries[v], t = time_steps(step_fns[v], carries[v], batches, steps)
    times[v].append(t)
    updates[v].append(np.array([(start + i) > 0 and (start + i) % EVERY == 0
                                for i in range(steps)]))
  dense = np.concatenate(times["dense"])
  print(f"{name}: dense step {np.median(dense) * 1e3:.3f} ms median, {len(dense)} steps per "
        f"variant, connections moved every {EVERY} steps")
  for v in ("rigl", "set"):
    t, upd = np.concatenate(times[v]), np.concatenate(updates[v])
    amortized = [a.sum() / d.sum() for a, d in zip(times[v], times["dense"])]
    print(f"  {v}: ordinary step / dense {np.median(t[~upd]) / np.median(dense):.3f}; whole runs "
          f"/ dense {np.mean(amortized):.3f} ({min(amortized):.3f}-{max(amortized):.3f}); "
          f"update step / ordinary step {np.median(t[upd]) / np.median(t[~upd]):.2f} "
          f"({int(upd.sum())} updates)")
  if name == "LeNet-300-100":
    runner(rounds, steps)


def runner(rounds: int, steps: int) -> None:
  """The runner's ``train_steps`` of LeNet-300-100: chunks of ``steps`` steps, interleaved."""
  def config(method):
    c = lenet300_dense.get_config()
    if method == "static_masks":
      c.sparsifier, c.distribution, c.final_sparsity = "random", "erk", 0.9
    elif method != "dense":
      rigl_lenet300_fashion.set_method(c)
      c.sparsifier = "set" if method == "set" else "rigl"
      c.dst_update_every, c.dst_end, c.steps = f"{EVERY}it", "100%", "1000ep"
    return config_lib.finalize(c)

  every_step = lambda sparsifier, setup: dataclasses.replace(sparsifier, update_steps=None)
  variants = ("dense", "rigl", "set", "static_masks", "rigl, cond every step")
  built = {v: list(runner_training(config(v), adapt=every_step if "cond" in v else None)[:2])
           for v in variants}
  totals = {v: sum(ms) for v, ms in interleaved(built, rounds, steps).items()}
  print(f"  the runner's train_steps, chunks of {steps} steps (connections moved every {EVERY} "
        f"steps): dense {totals['dense'] / rounds:.3f} ms per step; "
        + "; ".join(f"{v} / dense {totals[v] / totals['dense']:.3f}" for v in variants
                    if v != "dense"))


def main():
  main_for(__doc__.splitlines()[0], "90% sparsity (ERK)", bench)


if __name__ == "__main__":
  main()
