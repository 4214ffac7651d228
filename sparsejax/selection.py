"""Exact top-k selection by counting, without sorting.

Every pruning decision in sparsejax reduces to "keep the k highest-scoring entries" of one array
(layerwise) or of a list of arrays sharing one budget (global). Sorting does that in
O(n log n) and, on sharded params, gathers the whole model onto one device. Here each score is
mapped to an order-preserving ``uint32`` key, and a bracket around the k-th largest key is
narrowed by interpolation safeguarded by bisection: each step is one compare-and-count pass (a
reduction, which shards), about ten passes for real weights. Ties at the threshold are broken
deterministically: the lowest flat index wins, leaves in tree order. Nothing here reshapes or
scans across a key's last axis, so keys sharded over it (a ``model`` mesh axis) are never
gathered: ``tests/test_sharding.py`` checks the compiled HLO.

:func:`magnitude_threshold` is the same search for one number only, the threshold halfway between
the k-th and (k+1)-th largest magnitude (PDP's), on the magnitudes' own float bits, optionally
started from a guess such as the previous training step's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SIGN = np.uint32(0x80000000)
# NaN scores rank just above the reserved key 0, which marks entries that may not be kept.
_NAN_KEY = np.uint32(1)
_EXCLUDED_KEY = np.uint32(0)


def order_keys(scores: jax.Array, eligible: jax.Array | None = None) -> jax.Array:
  """Maps float scores to uint32 keys with the same order; ineligible entries get key 0."""
  x = jnp.asarray(scores).astype(jnp.float32)
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  # -0.0 == 0.0: one key, so their ties go by index (on the bits: a float compare may flush
  # subnormals to zero).
  bits = jnp.where(bits == _SIGN, jnp.uint32(0), bits)
  keys = jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)
  keys = jnp.where(jnp.isnan(x), _NAN_KEY, jnp.maximum(keys, jnp.uint32(2)))
  if eligible is not None:
    keys = jnp.where(eligible, keys, _EXCLUDED_KEY)
  return keys


# float32 sums of 0/1 are exact below 2**24 and vectorize better than int32 sums on CPU.
_EXACT_FLOAT_COUNT = 2**24


def _count(bools: jax.Array, axis=None) -> jax.Array:
  n = bools.size if axis is None else math.prod(bools.shape[a] for a in np.atleast_1d(axis))
  if n < _EXACT_FLOAT_COUNT:
    return jnp.sum(bools, axis=axis, dtype=jnp.float32).astype(jnp.int32)
  return jnp.sum(bools, axis=axis, dtype=jnp.int32)


def _count_at_least(keys: Sequence[jax.Array], t: jax.Array) -> jax.Array:
  return sum((_count(k >= t) for k in keys), jnp.int32(0))


def _count_at_least_each(keys: Sequence[jax.Array], ts: jax.Array) -> jax.Array:
  """count(keys >= t) for each t of a short vector, in one pass per array."""
  def each(k):
    above = k[None] >= ts.reshape((-1,) + (1,) * k.ndim)
    return _count(above, axis=tuple(range(1, above.ndim))) if k.ndim else above.astype(jnp.int32)

  return sum((each(k) for k in keys), jnp.zeros(ts.shape, jnp.int32))


class _Bracket(NamedTuple):
  lo: jax.Array    # at least k keys are >= lo
  c_lo: jax.Array  # count(keys >= lo)
  hi: jax.Array    # fewer than k keys are >= hi
  c_hi: jax.Array  # count(keys >= hi)


_SAMPLE = 256
_NO_KEY = np.uint32(0xFFFFFFFF)


def _sample(key: jax.Array, m: int) -> jax.Array:
  """About ``m`` entries of ``key``: every few rows of its ``(-1, last axis)`` view, and of
  those rows the first columns. Only the leading axes are strided and the last one is cut
  contiguously, so a key sharded over its last axis (output units over a ``model`` mesh axis)
  is sampled without gathering it."""
  view = key.reshape(-1, key.shape[-1]) if key.ndim else key.reshape(1, 1)
  rows, cols = view.shape
  take_cols = min(cols, max(1, m))
  row_stride = max(1, rows // max(1, m // take_cols))
  return view[::row_stride][:, :take_cols].ravel()  # rows first: the column cut moves little


def _sample_bracket(keys: Sequence[jax.Array], k: jax.Array, n: int, b: _Bracket) -> _Bracket:
  """Tightens ``b`` with quantiles of a sample (:func:`_sample`), checked by exact counts (one
  pass).

  The sample's k/n quantile, widened by four binomial standard deviations, brackets the k-th
  largest key with high probability; an end the counts refute falls back to ``b``'s.
  """
  sample = jnp.concatenate([_sample(key, -(-_SAMPLE * key.size // n)) for key in keys])
  m = sample.size
  # Float32 is precise enough for an estimate; the counts below decide exactly.
  desc = -jnp.sort(-sample.astype(jnp.float32))
  q = k.astype(jnp.float32) / n
  j = q * m
  margin = 4.0 * jnp.sqrt(m * q * (1.0 - q)) + 2.0
  as_key = lambda i: jnp.clip(desc[jnp.clip(i, 0, m - 1).astype(jnp.int32)], 0.0,
                              4294967040.0).astype(jnp.uint32)
  lo = as_key(jnp.ceil(j + margin))
  hi = as_key(jnp.floor(j - margin)) + jnp.uint32(1)
  c_lo, c_hi = _count_at_least_each(keys, jnp.stack([lo, hi]))
  lo_ok = (c_lo >= k) & (lo > b.lo) & (lo < b.hi)
  hi_ok = (c_hi < k) & (hi < b.hi) & (hi > b.lo)
  return _Bracket(jnp.where(lo_ok, lo, b.lo), jnp.where(lo_ok, c_lo, b.c_lo),
                  jnp.where(hi_ok, hi, b.hi), jnp.where(hi_ok, c_hi, b.c_hi))


def _bracket(keys: Sequence[jax.Array], k: jax.Array) -> _Bracket:
  """Narrows [lo, hi) around the k-th largest key by counting passes over ``keys``.

  Starts from a sample's bracket (:func:`_sample_bracket`), then :func:`_narrow`.
  """
  n = sum(key.size for key in keys)
  # Every key is >= 0, and none reaches 2**32 - 1 (+inf maps to 0xFF800000).
  b = _sample_bracket(keys, k, n, _Bracket(jnp.uint32(0), jnp.int32(n), _NO_KEY, jnp.int32(0)))
  return _narrow(lambda t: _count_at_least(keys, t), k, b)


def _probed(b: _Bracket, probe: jax.Array, count: jax.Array, k: jax.Array) -> _Bracket:
  """``b`` with the end on ``probe``'s side of the k-th largest key moved to it."""
  up = count >= k
  return _Bracket(jnp.where(up, probe, b.lo), jnp.where(up, count, b.c_lo),
                  jnp.where(up, b.hi, probe), jnp.where(up, b.c_hi, count))


def _narrow(count_at_least, k: jax.Array, b: _Bracket) -> _Bracket:
  """Narrows the bracket ``b`` (``b.c_lo >= k > b.c_hi``) by counting passes.

  Regula falsi on the counts with the Illinois correction (keys of nearby floats are nearly evenly
  spaced, so a few interpolated passes get close); every fourth step bisects, which bounds the
  worst case by 128 passes. Stops when exactly k keys are >= lo, or when the bracket is one key
  wide (the k-th largest key is lo and ties at it straddle the budget).
  """
  f_lo, f_hi = (b.c_lo - k).astype(jnp.float32), (b.c_hi - k).astype(jnp.float32)
  init = (jnp.int32(0), b, f_lo, f_hi, jnp.int32(0))

  def searching(state):
    _, b, *_ = state
    return (b.c_lo != k) & (b.hi - b.lo > 1)

  def step(state):
    i, b, f_lo, f_hi, last = state
    width = b.hi - b.lo
    guess = (width.astype(jnp.float32) * (f_lo / (f_lo - f_hi))).astype(jnp.uint32)
    mid = b.lo + jnp.where(i % 4 == 3, width // 2, jnp.clip(guess, 1, width - 1))
    c_mid = count_at_least(mid)
    f_mid = (c_mid - k).astype(jnp.float32)
    up = c_mid >= k
    # Illinois: when the same end moves twice in a row, halve the other end's weight.
    f_lo = jnp.where(up, f_mid, jnp.where(last == -1, f_lo / 2, f_lo))
    f_hi = jnp.where(up, jnp.where(last == 1, f_hi / 2, f_hi), f_mid)
    return i + 1, _probed(b, mid, c_mid, k), f_lo, f_hi, jnp.where(up, 1, -1)

  return lax.while_loop(searching, step, init)[1]


# Magnitudes are searched on their float32 bit patterns, which order non-negative floats as
# integers, from _ZERO to one past +inf (0x7F800000). The patterns below the smallest normal float
# (subnormals, which XLA:CPU flushes to zero in comparisons) all stand for 0.0: probes are normal.
_ZERO = np.uint32(0x007FFFFF)
_PAST_INF = np.uint32(0x7F800001)
_GALLOP_STEPS = 16


def _as_float(bits: jax.Array) -> jax.Array:
  return jnp.where(bits <= _ZERO, jnp.zeros((), jnp.float32),
                   lax.bitcast_convert_type(bits, jnp.float32))


def _bits_per_entry(a: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(bit pattern near the k-th largest of ``a``, bit patterns per entry there): from a sample
  (:func:`_sample`) of about 256 entries, sorted; no pass over ``a``."""
  n = a.size
  sample = _sample(a, _SAMPLE)
  m = sample.size
  desc = -jnp.sort(-jnp.where(jnp.isnan(sample), -1.0, sample))
  bits = lax.bitcast_convert_type(jnp.maximum(desc, 0.0), jnp.int32).astype(jnp.float32)
  j = jnp.clip((k.astype(jnp.float32) * m / n).astype(jnp.int32), 0, m - 1)
  h = min(4, max(1, m // 4))
  span = bits[jnp.clip(j - h, 0, m - 1)] - bits[jnp.clip(j + h, 0, m - 1)]
  return bits[j].astype(jnp.uint32), jnp.maximum(span / (2 * h) * m / n, 1.0)


@jax.jit
def magnitude_threshold(a: jax.Array, k: jax.Array, start: jax.Array | None = None) -> jax.Array:
  """Halfway between the k-th and the (k+1)-th largest of non-negative magnitudes ``a``.

  The threshold of :func:`top_k_masks` for ``order_keys(a)``: halfway between the smallest kept
  and the largest pruned magnitude when exactly ``k`` are kept (ties to the lowest index, NaN
  ranked lowest and ignored as a value), 0.0 where no magnitude other than NaN is pruned; for
  ``0 < k < a.size``. It works on the floats themselves, whose bit patterns order them, and
  never builds the keep mask: each step is one compare-and-count pass over ``a``.

  ``start``: a guess of the threshold, e.g. the one of the previous training step. From it the
  search gallops outwards (steps sized by a sample's density of magnitudes, doubling) until it
  brackets the k-th largest, then narrows the bracket as :func:`top_k_masks` does. Weights move
  little per step, so a few passes do instead of about a dozen from the sample's bracket. A
  guess that is not a positive finite float starts from the sample's estimate.
  """
  a = jnp.asarray(a, jnp.float32)
  n = a.size
  k = jnp.asarray(k, jnp.int32)
  count = lambda bits: _count(a >= _as_float(bits))
  estimate, per_entry = _bits_per_entry(a, k)
  if start is not None:
    start = jnp.asarray(start, jnp.float32)
    estimate = jnp.where(jnp.isfinite(start) & (start > 0),
                         lax.bitcast_convert_type(jnp.abs(start), jnp.uint32), estimate)
  estimate = jnp.clip(estimate, _ZERO + 1, _PAST_INF - 1)
  c = count(estimate)
  # 0.0 and one past +inf bound every magnitude; NaN, counted by neither, only ever lands on lo.
  up = c >= k
  b = _probed(_Bracket(_ZERO, jnp.int32(n), _PAST_INF, jnp.int32(0)), estimate, c, k)
  first = (jnp.abs(c - k).astype(jnp.float32) + 1.0) * per_entry * 2.0
  first = jnp.clip(first, 1.0, 2.0**30).astype(jnp.uint32)

  def galloping(state):  # until the far end is a probe's, or the answer is found
    b, _, i = state
    return (b.c_lo != k) & (b.hi - b.lo > 1) & ((b.hi == _PAST_INF) | (b.lo == _ZERO)) & (
        i < _GALLOP_STEPS)

  def gallop(state):
    b, step, i = state
    width = b.hi - b.lo
    probe = jnp.where(up, b.lo + jnp.minimum(step, width - 1),
                      b.hi - jnp.minimum(step, width - 1))
    step = jnp.minimum(step, np.uint32(2**30)) * 2  # no uint32 overflow
    return _probed(b, probe, count(probe), k), step, i + 1

  b, _, _ = lax.while_loop(galloping, gallop, (b, first, jnp.int32(0)))
  b = _narrow(count, k, b)
  value = _as_float(b.lo)
  smallest_kept = jnp.min(jnp.where(a >= value, a, jnp.inf), initial=jnp.inf)
  largest_pruned = jnp.max(jnp.where(a < value, a, -jnp.inf), initial=-jnp.inf)
  t = smallest_kept / 2 + largest_pruned / 2
  t = jnp.where(largest_pruned == -jnp.inf, jnp.zeros((), jnp.float32), t)
  # Ties at lo straddling k (or fewer than k magnitudes that are not NaN): lo's value on both sides.
  return jnp.where(b.c_lo == k, t, value)


def _flat_index(shape: tuple[int, ...], offset: int) -> jax.Array:
  """``offset`` + the row-major flat index of every entry, built from iotas (so it shards)."""
  index, stride = jnp.full(shape, offset, jnp.int32), 1
  for axis in reversed(range(len(shape))):
    index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index


def _first_ties(keys: Sequence[jax.Array], b: _Bracket, r: jax.Array) -> list[jax.Array]:
  """The first r entries (leaf order, then flat index) equal to lo: for heavy ties only.

  The cut-off index is found by bisection on counts (about log2(n) passes, each a reduction)
  rather than by a cumulative sum over the flattened keys, which on sharded keys would gather
  them onto every device.
  """
  ties = [key == b.lo for key in keys]
  offsets = np.cumsum([0] + [key.size for key in keys[:-1]])
  index = [_flat_index(key.shape, int(o)) for key, o in zip(keys, offsets)]
  below = lambda cut: sum((_count(t & (i < cut)) for t, i in zip(ties, index)), jnp.int32(0))

  def halve(bounds):  # the smallest cut with at least r ties below it lies in [lo, hi]
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = below(mid) >= r
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  n = sum(key.size for key in keys)
  cut, _ = lax.while_loop(lambda bounds: bounds[0] < bounds[1], halve,
                          (jnp.int32(0), jnp.int32(n)))
  return [t & (i < cut) for t, i in zip(ties, index)]


@jax.jit
def top_k_masks(keys: Sequence[jax.Array], k: jax.Array) -> list[jax.Array]:
  """One budget over several arrays (global selection): exactly ``min(k, eligible)`` kept in total.

  Keeps every key above the k-th largest and breaks ties at it by lowest flat index, leaves in
  tree order.
  """
  n = sum(key.size for key in keys)
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, n)
  b = _bracket(keys, k)
  r = k - b.c_hi  # how many to take from [lo, hi)
  taken = _taken(list(keys), b, k, r)
  # Excluded entries (key 0) are taken only when k exceeds the eligible count: drop them.
  return [((key >= b.hi) | t) & (key != _EXCLUDED_KEY) for key, t in zip(keys, taken)]


def _all_of_bracket(keys: Sequence[jax.Array], b: _Bracket) -> list[jax.Array]:
  return [(key >= b.lo) & (key < b.hi) for key in keys]


@jax.custom_batching.custom_vmap
def _taken(keys: list[jax.Array], b: _Bracket, k: jax.Array, r: jax.Array) -> list[jax.Array]:
  """The entries of [lo, hi) to keep: all of them, unless ties at lo straddle k (then the first
  r of them, :func:`_first_ties`, a bisection on the flat index)."""
  return lax.cond(b.c_lo == k, lambda: _all_of_bracket(keys, b), lambda: _first_ties(keys, b, r))


@_taken.def_vmap
def _taken_batched(axis_size, in_batched, keys, b, k, r):
  """Under ``vmap`` (replicates) ``lax.cond`` would compute both branches for every replicate:
  the tie branch's bisection runs only when some replicate has ties."""
  def batched(x, is_batched):
    return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

  keys, b, k, r = jax.tree.map(batched, (keys, b, k, r), tuple(in_batched))
  ties = b.c_lo != k
  plain = jax.vmap(_all_of_bracket)(keys, b)

  def with_ties():
    first = jax.vmap(_first_ties)(keys, b, r)
    return [jnp.where(ties.reshape((-1,) + (1,) * (p.ndim - 1)), f, p)
            for f, p in zip(first, plain)]

  out = lax.cond(jnp.any(ties), with_ties, lambda: plain)
  return out, [True] * len(out)


@jax.jit
def top_k_masks_each(keys: Sequence[jax.Array], ks: Sequence[jax.Array]) -> list[jax.Array]:
  """A budget per array (layerwise selection): exactly ``min(ks[i], eligible)`` of ``keys[i]``."""
  return [top_k_masks([key], k)[0] for key, k in zip(keys, ks)]
