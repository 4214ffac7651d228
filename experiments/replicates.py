"""Replicates: ``replicates = N`` trainings of one config, replicate i being the run with seed
``seed + i`` (its own initialization, data order, random masks), optionally vectorized.

With ``vectorize = False`` the replicates train one after another; with ``vectorize = True`` they
train as one program: their states are stacked along a leading axis and every step is the
single-run step under ``jax.vmap`` (:func:`experiments.trainer.make_train_steps`). Either way
replicate i writes, in ``<workdir>/replicate_<i>/``, the files the separate run with seed
``seed + i`` writes (``config.json`` being that run's config, ``metrics.jsonl``, ``masks.npz``,
``sparsity_report.*``, ``summary.json``), and its results equal that run's up to float rounding;
the vectorized run keeps one stacked checkpoint in ``<workdir>/checkpoints/`` and resumes from it.

Shared leaves. A stacked state would make every leaf batched, the step counters included; a
``lax.cond`` on a batched predicate (a pruning step, PDP's end of warm-up) then computes both
branches for every replicate at every step. :func:`stack` keeps the integer scalars that all
replicates hold equal at the start (the counters) as one shared, unbatched leaf, so those
branches stay branches; a counter that came to differ between replicates would make ``vmap``
fail at compilation, not give wrong results.

One program needs one sparsifier: the update and forward functions of replicate 0's sparsifier
run every replicate, each on its own state. :func:`check_shared` refuses a sparsifier whose
functions close over data of one replicate (their jaxprs' constants differ between replicates):
that data would silently be replicate 0's for all of them. Data a sparsifier derives from a
replicate (random masks, SNIP scores, targets) belongs in the state its ``init`` returns.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import trainer
from experiments.parsing import ConfigError
from experiments.sparsifiers import Sparsifier

PyTree = Any


def replicate_dir(workdir: str, i: int) -> str:
  return os.path.join(workdir, f"replicate_{i}")


def replicate_config(config: ml_collections.ConfigDict, i: int) -> ml_collections.ConfigDict:
  """The config of the separate run replicate ``i`` equals: seed ``seed + i``, no replicates."""
  single = ml_collections.ConfigDict(config.to_dict())
  single.seed = config.seed + i
  single.replicates = 1
  single.vectorize = False
  single.lock()
  return single


def initial(setup, n: int) -> tuple[list[Sparsifier], list[dict]]:
  """The sparsifier and step-0 state of each of the ``n`` replicates of ``setup`` (replicate i
  from ``setup.key(i)``), as the separate runs build them."""
  sparsifiers, states = [], []
  for i in range(n):
    key = setup.key(i)
    params, model_state = setup.init(key)
    sparsifiers.append(setup.sparsifier(params, model_state, key))
    states.append(trainer.init_state(params, model_state, sparsifiers[-1].tx, key))
  return sparsifiers, states


def _shared(leaves: list) -> bool:
  first = leaves[0]
  if jnp.ndim(first) != 0 or not jnp.issubdtype(jnp.result_type(first), jnp.integer):
    return False  # keys (a PRNG dtype) and floats are always per replicate
  return all(int(first) == int(x) for x in leaves[1:])


def stack(states: list[PyTree]) -> tuple[PyTree, PyTree]:
  """``(stacked, axes)``: the states stacked along a new leading axis, except the integer
  scalars equal in all of them (step counters), kept once; ``axes`` says which (0 or None)."""
  leaves = [jax.tree.leaves(s) for s in states]
  treedef = jax.tree.structure(states[0])
  stacked, axes = [], []
  for column in zip(*leaves):
    if _shared(list(column)):
      stacked.append(column[0])
      axes.append(None)
    else:
      stacked.append(jnp.stack(column))
      axes.append(0)
  return jax.tree.unflatten(treedef, stacked), jax.tree.unflatten(treedef, axes)


def _closed(fn, *args):
  closed = jax.make_jaxpr(fn)(*args)
  return str(closed.jaxpr), closed.consts


def check_shared(name: str, sparsifiers: list[Sparsifier], states: list[dict]) -> None:
  """Raises :class:`ConfigError` if replicates' sparsifiers differ in what their update or
  forward functions compute (other constants closed over): they cannot share one program."""
  def probes(sparsifier, state):
    params, opt_state, step = state["params"], state["opt_state"], state["step"]
    grads = jax.tree.map(jnp.zeros_like, params)
    yield "update", _closed(lambda g, o, p: sparsifier.tx.update(g, o, p), grads, opt_state,
                            params)
    yield "forward", _closed(sparsifier.forward, params, opt_state, step)

  reference = dict(probes(sparsifiers[0], states[0]))
  for i, (sparsifier, state) in enumerate(zip(sparsifiers[1:], states[1:]), start=1):
    for what, (text, consts) in probes(sparsifier, state):
      ref_text, ref_consts = reference[what]
      same = text == ref_text and len(consts) == len(ref_consts) and all(
          np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a), np.asarray(b))
          for a, b in zip(consts, ref_consts))
      if not same:
        raise ConfigError(
            f"vectorize=True: the sparsifier {name!r} builds a different {what} function for "
            f"replicate {i} than for replicate 0 (it closes over data of one replicate), so the "
            "replicates cannot train as one program; use vectorize=False, or keep that data in "
            "the state its transformation's init returns.")
