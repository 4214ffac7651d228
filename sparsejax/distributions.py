"""How a sparsity budget is split over layers.

Each function maps ``(params, sparsity, prunable=None)`` to a pytree shaped like the params whose
leaves are per-layer densities (fraction of weights kept): a float32 scalar for each prunable
leaf, ``1.0`` for leaves never pruned. ``sparsity`` may be a traced value, so the densities can
change inside ``jit`` (gradual pruning); bounds are checked whenever it is concrete.

* :func:`uniform`: every prunable layer keeps ``1 - s``.
* :func:`er` / :func:`erk`: Erdos-Renyi(-Kernel), Evci et al. 2020 ("Rigging the Lottery",
  Sec. 3 and Appendix) as used by Liu et al. 2022 ("The Unreasonable Effectiveness of Random
  Pruning"): density_l = eps * raw_l with raw_l = (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w)
  for ERK, (n_in + n_out) / (n_in n_out) for ER, and eps chosen so that
  sum_l density_l n_l = (1 - s) N. A layer whose density would exceed 1 is made dense (the largest
  raw ratio first), removed from the budget, and eps is solved again, until every density <= 1.
* :func:`global_magnitude`: one magnitude threshold over all prunable weights; the per-layer
  densities are what falls out of it.

Kept counts are ``round(density * n_l)``, so the total kept equals the budget within one weight
per layer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import selection

PyTree = Any


def _prunable_set(params: PyTree, prunable: masks_lib.Prunable) -> set[str]:
  return set(masks_lib.prunable_paths(params, prunable))


def _fill(params: PyTree, values: dict[str, Any]) -> PyTree:
  """Densities shaped like params: ``values`` by path, 1.0 for every other leaf."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: values.get(jax.tree_util.keystr(path), jnp.float32(1.0)), params)


def uniform(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable = None) -> PyTree:
  """Every prunable layer keeps a fraction ``1 - sparsity`` of its weights."""
  masks_lib.check_sparsity(sparsity)
  selected = _prunable_set(params, prunable)
  d = 1.0 - jnp.asarray(sparsity, jnp.float32)
  return _fill(params, {path: d for path in selected})


def _raw_ratio(shape: tuple[int, ...], kernel_terms: bool) -> float:
  if len(shape) < 2:
    # A rank-1 prunable leaf has no fan-in/fan-out; treat it as a dense layer with n_in = 1.
    shape = (1, *shape)
  if kernel_terms:
    return float(sum(shape)) / float(np.prod(shape))
  n_in, n_out = shape[-2], shape[-1]
  return float(n_in + n_out) / float(n_in * n_out)


def _erdos_renyi(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable,
                 kernel_terms: bool, power_scale: float) -> PyTree:
  masks_lib.check_sparsity(sparsity)
  selected = _prunable_set(params, prunable)
  leaves = [(jax.tree_util.keystr(p), np.shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(params)
            if jax.tree_util.keystr(p) in selected]
  n = np.array([np.prod(s) for _, s in leaves], np.float64)
  raw = np.array([_raw_ratio(s, kernel_terms) for _, s in leaves]) ** power_scale
  # Solved in float64 on the host when the sparsity is concrete, in float32 under jit.
  xp = np if not isinstance(sparsity, jax.core.Tracer) else jnp
  total_kept = (1.0 - xp.asarray(sparsity)) * n.sum()
  dense = xp.zeros(len(leaves), bool)
  # Each pass makes at least one more layer dense while some density exceeds 1; after as many
  # passes as layers the set is final (further passes change nothing).
  for _ in range(len(leaves)):
    budget = total_kept - xp.sum(xp.where(dense, n, 0.0))
    divisor = xp.sum(xp.where(dense, 0.0, raw * n))
    eps = budget / xp.maximum(divisor, 1e-30)
    max_raw = xp.max(xp.where(dense, -1.0, raw))
    overflow = (eps * max_raw > 1.0) & ~xp.all(dense)
    dense = dense | (overflow & (raw == max_raw))
  density = xp.where(dense, 1.0, xp.clip(eps * raw, 0.0, 1.0))
  return _fill(params,
               {path: jnp.asarray(density[i], jnp.float32) for i, (path, _) in enumerate(leaves)})


def er(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable = None,
       power_scale: float = 1.0) -> PyTree:
  """Erdos-Renyi densities: eps * (n_in + n_out) / (n_in n_out) (Mocanu et al. 2018; RigL)."""
  return _erdos_renyi(params, sparsity, prunable, kernel_terms=False, power_scale=power_scale)


def erk(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable = None,
        power_scale: float = 1.0) -> PyTree:
  """Erdos-Renyi-Kernel densities: eps * sum(shape) / prod(shape) (Evci et al. 2020, RigL)."""
  return _erdos_renyi(params, sparsity, prunable, kernel_terms=True, power_scale=power_scale)


def global_magnitude(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable = None) -> PyTree:
  """Per-layer densities implied by one magnitude threshold over all prunable weights."""
  masks_lib.check_sparsity(sparsity)
  selected = _prunable_set(params, prunable)
  pairs = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(params)
           if jax.tree_util.keystr(p) in selected]
  total = sum(np.size(x) for _, x in pairs)
  k = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * total).astype(jnp.int32)
  kept = selection.top_k_masks([selection.order_keys(jnp.abs(x)) for _, x in pairs], k)
  return _fill(params, {path: jnp.mean(m, dtype=jnp.float32)
                                  for (path, _), m in zip(pairs, kept)})


# The layerwise distributions by name: what :func:`get` (and ``pruning.prune``, besides 'global')
# accepts.
DISTRIBUTIONS = {"uniform": uniform, "er": er, "erk": erk}


def get(name: str):
  """A layerwise distribution by name: ``uniform``, ``er`` or ``erk``."""
  try:
    return DISTRIBUTIONS[name]
  except KeyError:
    raise ValueError(
        f"distribution={name!r} is unknown; choose one of {sorted(DISTRIBUTIONS)} "
        "(or 'global' where a single magnitude budget is accepted).") from None


def validate_densities(params: PyTree, densities: PyTree) -> None:
  """Raises ValueError if ``densities`` is not a pytree of scalars shaped like ``params``."""
  leaves = masks_lib.check_structure(
      params, densities, "params", "densities",
      "Build them with distributions.uniform/er/erk(params, ...).")
  for path, _, d in leaves:
    if np.ndim(d) != 0:
      raise ValueError(f"density at {path} has shape {np.shape(d)}; a density is one scalar per "
                       "leaf.")
    try:
      value = float(d)
    except (TypeError, jax.errors.ConcretizationTypeError):
      continue
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"density {value!r} at {path} is outside [0, 1].")
