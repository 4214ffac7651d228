"""Scores + densities (+ current masks) -> new masks that keep exactly the requested counts.

Layerwise pruning keeps ``round(density_l * n_l)`` weights of each prunable leaf; global pruning
keeps ``round((1 - s) N)`` weights over all of them. Callers that count for themselves (IMP
counts from the original sizes, :mod:`sparsejax.lottery`) give the counts directly:
:func:`layerwise_counts` (one per leaf) and :func:`global_count` (one budget). Already-pruned
weights are never revived unless ``revive=True`` (if a layer is asked to keep more than it has
alive, it keeps all of them).
Ties are broken deterministically (lowest flat index first, leaves in tree order). Everything
works inside ``jit`` with traced densities or sparsities; the selection counts instead of
sorting (:mod:`sparsejax.selection`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import distributions
from sparsejax import masks as masks_lib
from sparsejax import scores as scores_lib
from sparsejax import selection

PyTree = Any


def _split(tree: PyTree, masks: PyTree):
  leaves = jax.tree.leaves(tree)
  mask_leaves, treedef = jax.tree.flatten(masks)
  idx = [i for i, m in enumerate(mask_leaves) if masks_lib.is_prunable_mask(m)]
  return leaves, mask_leaves, treedef, idx


def _keys(score_leaves, mask_leaves, idx, revive):
  return [selection.order_keys(score_leaves[i], None if revive else mask_leaves[i]) for i in idx]


def _merge(mask_leaves, idx, kept, treedef) -> PyTree:
  out = list(mask_leaves)
  for i, m in zip(idx, kept):
    out[i] = m
  return jax.tree.unflatten(treedef, out)


def _check_count(name: str, count: Any, size: int) -> None:
  """Raises unless ``count`` is an integer scalar, within [0, size] when concrete."""
  if jnp.ndim(count) != 0 or not jnp.issubdtype(jnp.result_type(count), jnp.integer):
    raise ValueError(f"{name} must be one integer, got {count!r}.")
  if not isinstance(count, jax.core.Tracer) and not 0 <= int(count) <= size:
    raise ValueError(f"{name}={int(count)} is outside [0, {size}] (the number of weights).")


def layerwise_counts(scores: PyTree, counts: PyTree, masks: PyTree, *,
                     revive: bool = False) -> PyTree:
  """Keeps the top ``count`` scores of every prunable leaf of ``masks``.

  ``counts`` is shaped like ``masks``: an integer scalar per leaf (ignored where the mask is a
  scalar ``True``, a leaf never pruned), concrete or traced.
  """
  masks = masks_lib.conform(scores, masks)
  leaves = masks_lib.check_structure(masks, counts, "masks", "counts",
                                     "Give one integer per leaf of the masks.")
  for path, m, c in leaves:
    if masks_lib.is_prunable_mask(m):
      _check_count(f"the count for {path}", c, m.size)
  score_leaves, mask_leaves, treedef, idx = _split(scores, masks)
  count_leaves = [c for _, _, c in leaves]
  kept = selection.top_k_masks_each(_keys(score_leaves, mask_leaves, idx, revive),
                                    [count_leaves[i] for i in idx])
  return _merge(mask_leaves, idx, kept, treedef)


def global_count(scores: PyTree, k: Any, masks: PyTree, *, revive: bool = False) -> PyTree:
  """Keeps the top ``k`` scores over all prunable leaves of ``masks`` together."""
  masks = masks_lib.conform(scores, masks)
  score_leaves, mask_leaves, treedef, idx = _split(scores, masks)
  _check_count("k", k, sum(mask_leaves[i].size for i in idx))
  kept = selection.top_k_masks(_keys(score_leaves, mask_leaves, idx, revive), k)
  return _merge(mask_leaves, idx, kept, treedef)


def layerwise(scores: PyTree, densities: PyTree, masks: PyTree, *, revive: bool = False) -> PyTree:
  """Keeps the top ``round(density * size)`` scores of every prunable leaf of ``masks``."""
  masks = masks_lib.conform(scores, masks)
  distributions.validate_densities(scores, densities)
  counts = jax.tree.map(
      lambda d, m: jnp.round(jnp.asarray(d, jnp.float32) * np.size(m)).astype(jnp.int32),
      densities, masks)
  return layerwise_counts(scores, counts, masks, revive=revive)


def global_(scores: PyTree, sparsity: Any, masks: PyTree, *, revive: bool = False) -> PyTree:
  """Keeps the top ``round((1 - sparsity) * N)`` scores over all prunable leaves together."""
  masks_lib.check_sparsity(sparsity)
  total = sum(np.size(m) for m in jax.tree.leaves(masks) if masks_lib.is_prunable_mask(m))
  k = jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * total).astype(jnp.int32)
  return global_count(scores, k, masks, revive=revive)


def prune(scores: PyTree, sparsity: Any, masks: PyTree, distribution: str = "uniform", *,
          revive: bool = False, params: PyTree | None = None) -> PyTree:
  """Masks at ``sparsity`` with ``distribution`` in {'uniform', 'er', 'erk', 'global'}.

  The layerwise densities are computed from the shapes of ``params`` (default: of ``scores``)
  over the prunable leaves of ``masks``. ``masks`` may come in other containers than the params
  (an NNX optimizer's, a pure dict): the new masks come in those of ``scores``.
  """
  masks = masks_lib.conform(scores, masks)
  if distribution == "global":
    return global_(scores, sparsity, masks, revive=revive)
  shapes = scores if params is None else params
  selected = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(masks)
              if masks_lib.is_prunable_mask(m)}
  densities = distributions.get(distribution)(shapes, sparsity, lambda path, _: path in selected)
  return layerwise(scores, densities, masks, revive=revive)


def magnitude(params: PyTree, sparsity: Any, masks: PyTree, distribution: str = "uniform", *,
              revive: bool = False) -> PyTree:
  """Magnitude pruning of ``params`` to ``sparsity`` (pruned weights stay pruned)."""
  return prune(scores_lib.magnitude(params), sparsity, masks, distribution, revive=revive)


def random(key: jax.Array, params: PyTree, sparsity: Any, distribution: str = "erk",
           prunable: masks_lib.Prunable = None) -> PyTree:
  """Random pruning at initialization with layerwise densities (Liu et al. 2022)."""
  masks = masks_lib.ones_like(params, prunable)
  return prune(scores_lib.random(key, params), sparsity, masks, distribution, params=params)


def snip(params: PyTree, grads: PyTree, sparsity: Any, distribution: str = "global",
         prunable: masks_lib.Prunable = None) -> PyTree:
  """SNIP: one-shot pruning at initialization by |g * w| (Lee et al. 2019)."""
  masks = masks_lib.ones_like(params, prunable)
  return prune(scores_lib.snip(params, grads), sparsity, masks, distribution, params=params)


def grasp(params: PyTree, loss_fn: Callable[[PyTree], jax.Array], sparsity: Any,
          distribution: str = "global", prunable: masks_lib.Prunable = None) -> PyTree:
  """GraSP: one-shot pruning at initialization by w * Hg (Wang, Zhang & Grosse 2020).

  ``loss_fn(params) -> loss`` on a batch of training data; GraSP's code divides the logits by a
  temperature T = 200 first (the runner's ``grasp`` sparsifier does). The paper prunes globally.
  """
  masks = masks_lib.ones_like(params, prunable)
  hg = scores_lib.hessian_gradient_product(loss_fn, params, masks)
  return prune(scores_lib.grasp(params, hg), sparsity, masks, distribution, params=params)


def synflow(forward: Callable[[PyTree], jax.Array], params: PyTree, sparsity: Any,
            iterations: int = 100, distribution: str = "global",
            prunable: masks_lib.Prunable = None) -> PyTree:
  """Iterative Synaptic Flow Pruning (Tanaka et al. 2020, Algorithm 1), data-free.

  ``iterations`` rounds k = 1..n each score the masked network (:func:`scores.synflow`, with
  ``forward`` running it on an input of ones) and prune to the density (1 - sparsity)^(k/n), the
  paper's exponential schedule (n = 100 by default), globally as in the paper. Pruned weights
  score 0 and stay pruned. The last round prunes to ``sparsity`` itself, so the count is exactly
  that of one-shot pruning at ``sparsity``. The rounds run in one ``lax.fori_loop``; under
  ``jit`` the whole algorithm is one program.
  """
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations={iterations!r} must be a positive int (the paper uses 100).")
  masks_lib.check_sparsity(sparsity)
  masks = masks_lib.conform(params, masks_lib.ones_like(params, prunable))
  sparsity = jnp.asarray(sparsity, jnp.float32)

  def round_(k, masks):
    density = (1.0 - sparsity) ** ((k + 1) / iterations)
    s = jnp.where(k == iterations - 1, sparsity, 1.0 - density)
    return prune(scores_lib.synflow(forward, params, masks), s, masks, distribution,
                 params=params)

  return jax.lax.fori_loop(0, iterations, round_, masks)
