"""Exact top-k selection by counting, without sorting.

Every pruning decision in sparsejax reduces to "keep the k highest-scoring entries" of one array
(layerwise) or of a list of arrays sharing one budget (global). Sorting does that in
O(n log n) and, on sharded params, gathers the whole model onto one device. Here each score is
mapped to an order-preserving ``uint32`` key and the k-th largest key is found by bisection on
its 32 bits: each step is one compare-and-count pass (a reduction, which shards), so the cost is
32 passes over the scores. Ties at the threshold are broken deterministically: the lowest flat
index wins, leaves in tree order.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_SIGN = jnp.uint32(0x80000000)
# NaN scores rank just above the reserved key 0, which marks entries that may not be kept.
_NAN_KEY = jnp.uint32(1)
_EXCLUDED_KEY = jnp.uint32(0)


def order_keys(scores: jax.Array, eligible: jax.Array | None = None) -> jax.Array:
  """Maps float scores to uint32 keys with the same order; ineligible entries get key 0."""
  x = jnp.asarray(scores).astype(jnp.float32)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  keys = jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)
  keys = jnp.where(jnp.isnan(x), _NAN_KEY, jnp.maximum(keys, jnp.uint32(2)))
  if eligible is not None:
    keys = jnp.where(eligible, keys, _EXCLUDED_KEY)
  return keys


def _count_at_least(keys: Sequence[jax.Array], t: jax.Array) -> jax.Array:
  return sum((jnp.sum(k >= t, dtype=jnp.int32) for k in keys), jnp.int32(0))


def kth_largest_keys(groups: Sequence[Sequence[jax.Array]], ks: Sequence[jax.Array]) -> list[jax.Array]:
  """For each group of key arrays, the largest t with ``count(keys >= t) >= k``.

  All groups are bisected together in one 32-step loop. With k = 0 the result is the maximal
  key, so nothing lies strictly above it.
  """
  ks = [jnp.asarray(k, jnp.int32) for k in ks]

  def step(i, ts):
    bit = jnp.left_shift(jnp.uint32(1), (31 - i).astype(jnp.uint32))
    new = []
    for keys, k, t in zip(groups, ks, ts):
      candidate = t | bit
      new.append(jnp.where(_count_at_least(keys, candidate) >= k, candidate, t))
    return tuple(new)

  return list(lax.fori_loop(0, 32, step, tuple(jnp.uint32(0) for _ in groups)))


def _keep_top_k(keys: Sequence[jax.Array], k: jax.Array, t: jax.Array) -> list[jax.Array]:
  """Masks keeping exactly ``min(k, size)`` entries: all keys above t, then ties by index."""
  above = [key > t for key in keys]
  remaining = jnp.asarray(k, jnp.int32) - sum(
      (jnp.sum(a, dtype=jnp.int32) for a in above), jnp.int32(0))
  out = []
  offset = jnp.int32(0)
  for key, a in zip(keys, above):
    tie = key == t
    rank = jnp.cumsum(tie.ravel(), dtype=jnp.int32).reshape(tie.shape) + offset
    out.append(a | (tie & (rank <= remaining)))
    offset = offset + jnp.sum(tie, dtype=jnp.int32)
  return out


def top_k_masks(keys: Sequence[jax.Array], k: jax.Array) -> list[jax.Array]:
  """One budget over several arrays (global selection): exactly k entries kept in total."""
  (t,) = kth_largest_keys([keys], [k])
  return _keep_top_k(keys, k, t)


def top_k_masks_each(keys: Sequence[jax.Array], ks: Sequence[jax.Array]) -> list[jax.Array]:
  """A budget per array (layerwise selection): exactly ``ks[i]`` entries of ``keys[i]`` kept."""
  ts = kth_largest_keys([[key] for key in keys], ks)
  return [_keep_top_k([key], k, t)[0] for key, k, t in zip(keys, ks, ts)]
