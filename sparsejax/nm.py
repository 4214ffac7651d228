"""N:M block sparsity: k of every m consecutive weights along the input axis, by counting.

A prunable leaf's axis -2 (``in`` of a dense ``(in, out)`` kernel, ``I`` of an HWIO conv kernel)
is cut into blocks of m consecutive entries; a block mask keeps k entries of each block. Every
function here is pure and works under ``jit`` (with a traced k or sparsity) and ``vmap``. The
entries of a block are ranked by counting (m^2 compares per block, about m times the layer's size
in booleans), never by sorting the layer; scores are compared as the order-preserving keys of
:func:`sparsejax.selection.order_keys`, so ties go to the lowest index and NaN ranks lowest.

* :func:`block_top_k`: one array: per block, exactly ``min(k, eligible)`` of the highest scores.
* :func:`prune`: a mask pytree: per block of every prunable leaf, the top k scores among the
  weights the masks still keep.
* :func:`kept_per_block`: k_t = clip(round((1 - s_t) m), n, m), the count a block keeps at
  sparsity s_t in gradual N:M pruning.
* :func:`block_counts`: how many weights each block of a mask keeps.
* :func:`check_nm`, :func:`check_leaf`, :func:`misfit_paths`, :func:`check_params`: argument
  and shape checks; the errors name the leaf and its shape.

**Gradual N:M magnitude pruning** (:func:`sparsejax.transforms.nm_pruning`) is our reading of Zhu
& Gupta's gradual schedule (2017, eq. 1) for N:M patterns: at each update step of a schedule
ending at sparsity 1 - n/m, every block keeps the k_t largest magnitudes among the weights it
still keeps, so the pattern goes m:m -> ... -> n:m and ends with exactly n of every m: the
pattern of :func:`sparsejax.pdp.nm_masks`, whose fixed masks
:func:`sparsejax.transforms.static_masks` trains with. The runner's ``magnitude`` sparsifier
uses it with ``pruning_scope='nm'``::

  import jax
  import jax.numpy as jnp
  import optax
  from sparsejax import nm, schedules, transforms

  params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (8, 3)),
                      "bias": jnp.zeros(3)}}
  schedule = schedules.polynomial(1 - 2 / 4, begin_step=0, end_step=4, frequency=2)
  opt = transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedule)
  state = opt.init(params)
  for step in range(6):
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = opt.update(grads, state, params)
    params = transforms.apply_updates(params, updates, state)
  kernel_mask = transforms.get_masks(state)["dense"]["kernel"]
  assert (nm.block_counts(kernel_mask, 4) == 2).all()  # exactly 2 of every 4 inputs
  assert (params["dense"]["kernel"][~kernel_mask] == 0.0).all()
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax import selection

PyTree = Any


def check_nm(n: Any, m: Any) -> tuple[int, int]:
  """``(n, m)`` as Python ints; raises a ValueError naming the value unless 0 < n < m."""
  for name, value in (("n", n), ("m", m)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
      raise ValueError(f"{name}={value!r} must be an integer: N:M sparsity keeps n of every m "
                       "consecutive weights, e.g. n=2, m=4.")
  if not 0 < n < m:
    raise ValueError(f"n={n}, m={m}: N:M sparsity needs 0 < n < m (n of every m consecutive "
                     "weights are kept), e.g. n=2, m=4.")
  return int(n), int(m)


def _check_m(m: Any) -> int:
  if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
    raise ValueError(f"m={m!r} must be a positive integer: the length of a block of consecutive "
                     "weights along the input axis (axis -2).")
  return int(m)


def check_leaf(path: str, leaf: Any, m: int) -> None:
  """Raises a ValueError naming ``path`` and the shape unless axis -2 of ``leaf`` splits into m's.

  ``leaf`` may be an array or anything with a shape (a ``jax.ShapeDtypeStruct``).
  """
  shape = tuple(np.shape(leaf))
  if len(shape) < 2:
    raise ValueError(
        f"N:M sparsity needs an input axis (axis -2), but the prunable leaf {path} has shape "
        f"{shape}. Exclude it with prunable= (e.g. sparsejax.masks.rule(exclude=...)).")
  if shape[-2] % m:
    raise ValueError(
        f"N:M sparsity with m={m} needs the input axis (axis -2) of every prunable leaf to be a "
        f"multiple of {m}, but {path} has shape {shape} (axis -2 of length {shape[-2]}). Choose "
        f"an m that divides {shape[-2]}, or exclude the leaf with prunable= (e.g. "
        "sparsejax.masks.rule(exclude=...)).")


def _fits(leaf: Any, m: int) -> bool:
  shape = np.shape(leaf)
  return len(shape) >= 2 and shape[-2] % m == 0


def misfit_paths(params: PyTree, m: int, prunable: masks_lib.Prunable = None) -> list[str]:
  """Key paths of the prunable leaves that N:M blocks of ``m`` do not fit, in tree order.

  ``params`` may hold ``jax.ShapeDtypeStruct`` leaves (only shapes are read).
  """
  m = _check_m(m)
  selected = set(masks_lib.prunable_paths(params, prunable))
  return [path for path, leaf in ((jax.tree_util.keystr(p), x)
                                  for p, x in jax.tree_util.tree_leaves_with_path(params))
          if path in selected and not _fits(leaf, m)]


def check_params(params: PyTree, m: int, prunable: masks_lib.Prunable = None) -> None:
  """Raises a ValueError (:func:`check_leaf`) for the first prunable leaf blocks of m do not fit.

  ``params`` may hold ``jax.ShapeDtypeStruct`` leaves (only shapes are read).
  """
  m = _check_m(m)
  selected = set(masks_lib.prunable_paths(params, prunable))
  for p, leaf in jax.tree_util.tree_leaves_with_path(params):
    if jax.tree_util.keystr(p) in selected:
      check_leaf(jax.tree_util.keystr(p), leaf, m)


def blocked(x: jax.Array, m: int) -> jax.Array:
  """(..., I, O) -> (..., I // m, m, O): blocks of m consecutive entries along axis -2."""
  *lead, i, o = x.shape
  return x.reshape(*lead, i // m, m, o)


def _check_k(k: Any) -> None:
  if jnp.ndim(k) != 0 or not jnp.issubdtype(jnp.result_type(k), jnp.integer):
    raise ValueError(f"k={k!r} must be one integer (the entries kept per block).")
  if not isinstance(k, jax.core.Tracer) and int(k) < 0:
    raise ValueError(f"k={int(k)} must be >= 0 (the entries kept per block).")


def block_top_k(scores: jax.Array, k: Any, m: int, eligible: jax.Array | None = None, *,
                name: str = "scores") -> jax.Array:
  """Per block of m consecutive entries along axis -2, the ``min(k, eligible)`` highest scores.

  Args:
    scores: an array of rank >= 2 whose axis -2 is a multiple of ``m``; higher is kept.
    k: entries kept per block (an integer scalar, concrete or traced; k >= m keeps every
      eligible entry).
    m: the block length.
    eligible: an optional bool array of ``scores``' shape; only eligible entries are kept, so a
      block keeps ``min(k, its eligible count)``.
    name: what the errors call ``scores`` (a leaf's key path).

  Returns:
    A bool array of ``scores``' shape. Ties go to the lowest index within the block; an entry is
    kept when fewer than k entries of its block beat it (a higher score, or an equal one earlier).

  Raises:
    ValueError: naming ``name`` and the shape if ``scores`` has rank < 2 or an axis -2 that is
      not a multiple of m; for a bad k or m, or an ``eligible`` of another shape.
  """
  m = _check_m(m)
  scores = jnp.asarray(scores)
  check_leaf(name, scores, m)
  _check_k(k)
  if eligible is not None and jnp.shape(eligible) != scores.shape:
    raise ValueError(f"eligible has shape {jnp.shape(eligible)}, but {name} has shape "
                     f"{scores.shape}; give one bool per score.")
  # Ineligible entries get key 0, below every eligible key: they never beat an eligible one.
  keys = blocked(selection.order_keys(scores, eligible), m)
  mine, other = keys[..., :, None, :], keys[..., None, :, :]
  earlier = (jnp.arange(m)[None, :] < jnp.arange(m)[:, None])[:, :, None]  # [i, j]: j < i
  beaten_by = jnp.sum((other > mine) | ((other == mine) & earlier), axis=-2, dtype=jnp.int32)
  keep = beaten_by < jnp.asarray(k, jnp.int32)
  if eligible is not None:
    keep = keep & blocked(jnp.asarray(eligible, bool), m)
  return keep.reshape(scores.shape)


def block_counts(mask: jax.Array, m: int) -> jax.Array:
  """Kept entries of every block of ``mask``: shape (..., I // m, O) for a mask (..., I, O)."""
  m = _check_m(m)
  mask = jnp.asarray(mask)
  check_leaf("mask", mask, m)
  return jnp.sum(blocked(mask, m), axis=-2, dtype=jnp.int32)


def kept_per_block(sparsity: Any, n: int, m: int) -> jax.Array:
  """k = clip(round((1 - sparsity) m), n, m) as an int32 scalar (``sparsity`` may be traced).

  The rounding is float32 ``jnp.round`` (half to even), the count convention of
  :mod:`sparsejax.pruning`; the clip makes the pattern never sparser than n:m.
  """
  n, m = check_nm(n, m)
  s = jnp.asarray(sparsity, jnp.float32)
  k = jnp.round((jnp.float32(1.0) - s) * jnp.float32(m)).astype(jnp.int32)
  return jnp.clip(k, n, m)


def prune(scores: PyTree, k: Any, m: int, masks: PyTree) -> PyTree:
  """Masks keeping, per block of every prunable leaf, the top ``k`` scores among those kept.

  Pruned weights stay pruned (a block keeps ``min(k, its kept count)``); leaves whose mask is a
  scalar (never pruned) are left alone. ``masks`` may come in other containers than ``scores``
  (an NNX optimizer's, a pure dict): the new masks come in those of ``scores``.

  Raises:
    ValueError: naming the first path where ``masks`` does not fit ``scores``, or a prunable leaf
      that blocks of m do not fit (:func:`check_leaf`).
  """
  m = _check_m(m)
  masks = masks_lib.conform(scores, masks)
  mask_leaves, treedef = jax.tree.flatten(masks)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(masks)]
  out = [block_top_k(s, k, m, mk, name=path) if masks_lib.is_prunable_mask(mk) else mk
         for path, s, mk in zip(paths, jax.tree.leaves(scores), mask_leaves)]
  return jax.tree.unflatten(treedef, out)
