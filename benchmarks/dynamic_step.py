"""RigL and SET training steps against a dense step, measured side by side.

Variants, interleaved round by round in one process (the same models, batches and timing as
``benchmarks/overhead.py``): plain optax SGD with momentum (dense), and ``sparsejax.dynamic.rigl``
and ``set_`` around it at 90% sparsity (random ERK masks) moving connections every 50 steps. The
run is far from ``end_step``, so every update step moves connections.

Printed per model: each method's ordinary step over dense (median), its whole runs over dense's
including the update steps (amortized), and one update step over an ordinary step; each step a
jitted call from Python, synchronized. Then the way the runner trains: chunks of ``--steps``
steps in one jitted ``lax.fori_loop`` (``experiments.trainer.make_train_steps``), timed whole,
interleaved round by round, each chunk holding its update steps (one every 50 steps); the ratio
of the summed chunk times to dense's, beside ``static_masks`` (the masked step alone) and a RigL
that never moves anything (its step's cond without updates).

  python benchmarks/dynamic_step.py [--rounds 7] [--steps 200] [--models lenet,cnn]
"""

from __future__ import annotations

import pathlib
import sys

import time

import jax
import numpy as np
import optax
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from overhead import compiled, main_for, make_step, rotating, time_steps  # noqa: E402
from sparsejax import dynamic, pruning, transforms  # noqa: E402

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
  # Where the fused loop's cost lies: the masked step alone, and RigL's step without updates.
  inner, masks = variants["dense"], pruning.random(jax.random.key(1), params, 0.9, "erk")
  fused({**variants, "static_masks": transforms.static_masks(inner, masks),
         "rigl, never moving": dynamic.rigl(inner, masks, update_every=10**9, end_step=10**9)},
        apply, params, batches, rounds, steps)


def fused(variants, apply, params, batches, rounds, steps):
  """Chunks of ``steps`` steps in one ``lax.fori_loop`` per variant, as the runner trains."""
  xs = jax.numpy.stack([x for x, _ in batches])
  ys = jax.numpy.stack([y for _, y in batches])

  def chunk_fn(opt):
    step = make_step(apply, opt)

    @jax.jit
    def chunk(params, state):
      def body(i, carry):
        return step(*carry, xs[i % len(xs)], ys[i % len(ys)])
      return lax.fori_loop(0, steps, body, (params, state))
    return chunk

  chunks = {v: chunk_fn(opt) for v, opt in variants.items()}
  carries = {v: jax.block_until_ready(chunks[v](params, opt.init(params)))
             for v, opt in variants.items()}  # compile, and the first update lies behind
  totals = {v: 0.0 for v in variants}
  for v in rotating(list(variants), rounds):
    t0 = time.perf_counter()
    carries[v] = jax.block_until_ready(chunks[v](*carries[v]))
    totals[v] += time.perf_counter() - t0
  print(f"  fused chunks of {steps} steps (the runner's fori_loop, connections moved every "
        f"{EVERY} steps): dense {totals['dense'] / (rounds * steps) * 1e3:.3f} ms per step; "
        + "; ".join(f"{v} / dense {totals[v] / totals['dense']:.3f}" for v in variants
                    if v != "dense"))


def main():
  main_for(__doc__.splitlines()[0], "90% sparsity (ERK)", bench)


if __name__ == "__main__":
  main()
