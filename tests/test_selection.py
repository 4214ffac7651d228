"""Tests for sparsejax.selection: exact top-k by counting, with deterministic tie-breaking."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import selection

SETTINGS = settings(max_examples=40, deadline=None)

# Many duplicates, negatives, both zeros and infinities.
VALUES = st.one_of(
    st.integers(-3, 3).map(float),
    st.sampled_from([0.0, -0.0, np.inf, -np.inf, 0.5, -2.5]),
)
# Fixed shapes, so that the jitted selections below compile once; contents and k vary.
SHAPES = [(2, 3, 2), (7,), (1,)]
ELIGIBLE_SHAPE = (3, 4)

# Jitted once per shape combination; k is a traced argument.
_each = jax.jit(lambda scores, ks: selection.top_k_masks_each(
    [selection.order_keys(s) for s in scores], ks))
_global = jax.jit(lambda scores, k: selection.top_k_masks(
    [selection.order_keys(s) for s in scores], k))
_eligible = jax.jit(lambda scores, eligible, k: (
    selection.top_k_masks_each([selection.order_keys(scores, eligible)], [k])[0],
    selection.top_k_masks([selection.order_keys(scores, eligible)], k)[0]))


def score_arrays(shape):
  return hnp.arrays(np.float32, shape, elements=VALUES)


def reference_top_k(scores, k, eligible=None):
  """Numpy reference: the min(k, eligible) largest eligible scores, ties by lowest flat index."""
  s = np.asarray(scores, np.float64).ravel()
  idx = np.arange(s.size)
  if eligible is None:
    eligible = np.ones(s.size, bool)
  eligible = np.asarray(eligible, bool).ravel()
  order = np.lexsort((idx, -s))  # last key is primary; lexsort is stable.
  order = order[eligible[order]]  # ineligible entries are never kept.
  keep = np.zeros(s.size, bool)
  keep[order[:k]] = True
  return keep.reshape(np.shape(scores))


def assert_kept_dominate(scores, keep):
  s = np.asarray(scores, np.float64)
  if keep.any() and (~keep).any():
    assert s[keep].min() >= s[~keep].max()


@st.composite
def arrays_and_ks(draw):
  arrays = [draw(score_arrays(shape)) for shape in SHAPES]
  ks = [draw(st.integers(0, a.size)) for a in arrays]
  return arrays, ks


@SETTINGS
@given(arrays_and_ks())
def test_top_k_each_exact_and_tie_broken_by_index(data):
  arrays, ks = data
  out = _each([jnp.asarray(a) for a in arrays], ks)
  for a, k, m in zip(arrays, ks, out):
    m = np.asarray(m)
    assert m.shape == a.shape and m.dtype == bool
    assert m.sum() == k
    assert_kept_dominate(a, m)
    np.testing.assert_array_equal(m, reference_top_k(a, k))


@SETTINGS
@given(arrays_and_ks(), st.data())
def test_top_k_global_exact_over_concatenation(data, draw):
  arrays, _ = data
  total = sum(a.size for a in arrays)
  k = draw.draw(st.integers(0, total))
  out = [np.asarray(m) for m in _global([jnp.asarray(a) for a in arrays], k)]
  assert [m.shape for m in out] == [a.shape for a in arrays]
  flat = np.concatenate([m.ravel() for m in out])
  assert flat.sum() == k
  scores = np.concatenate([a.ravel() for a in arrays])
  assert_kept_dominate(scores, flat)
  np.testing.assert_array_equal(flat, reference_top_k(scores, k))


@SETTINGS
@given(score_arrays(ELIGIBLE_SHAPE), hnp.arrays(bool, ELIGIBLE_SHAPE), st.data())
def test_ineligible_never_kept(scores, eligible, draw):
  k = draw.draw(st.integers(0, scores.size))
  for m in _eligible(jnp.asarray(scores), jnp.asarray(eligible), k):
    m = np.asarray(m)
    assert m.sum() == min(k, eligible.sum())  # k beyond the eligible count keeps them all.
    assert not (m & ~eligible).any()
    np.testing.assert_array_equal(m, reference_top_k(scores, k, eligible))


@SETTINGS
@given(hnp.arrays(np.float32, (12,),
                  elements=st.one_of(VALUES, st.floats(width=32, allow_nan=False))))
def test_order_keys_preserve_float_order(x):
  keys = np.asarray(selection.order_keys(jnp.asarray(x))).astype(np.int64)
  assert (keys >= 2).all()  # 0 and 1 are reserved for ineligible entries and NaN.
  a, b = x[:, None], x[None, :]
  np.testing.assert_array_equal(keys[:, None] < keys[None, :], a < b)
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], a == b)  # -0.0 == 0.0 too.


def test_order_keys_eligibility_and_nan():
  keys = np.asarray(selection.order_keys(jnp.array([jnp.nan, -jnp.inf, 5.0, 1.0]),
                                         jnp.array([True, True, True, False])))
  assert keys[3] < keys[0] < keys[1] < keys[2]


def test_signed_zeros_tie_by_index():
  scores = jnp.array([-0.0, 0.0, 1.0, 0.0, -0.0])
  (m,) = selection.top_k_masks_each([selection.order_keys(scores)], [3])
  np.testing.assert_array_equal(m, [True, True, True, False, False])


def test_subnormals_are_not_zero():
  tiny = np.float32(1e-40)  # subnormal: a flushing float compare would call it 0.
  scores = jnp.array([0.0, tiny, -0.0, -tiny])
  everything = jnp.ones(4, bool)
  for k, expected in [(1, [0, 1, 0, 0]), (2, [1, 1, 0, 0]), (3, [1, 1, 1, 0])]:
    for m in _eligible(scores, everything, k):
      np.testing.assert_array_equal(m, np.array(expected, bool))


def test_nan_ranks_below_numbers_and_above_ineligible():
  scores = jnp.array([jnp.nan, -jnp.inf, 1.0, 7.0])
  eligible = jnp.array([True, True, True, False])
  for k, expected in [(1, [0, 0, 1, 0]), (2, [0, 1, 1, 0]), (3, [1, 1, 1, 0]),
                      (4, [1, 1, 1, 0])]:
    for m in _eligible(scores, eligible, k):
      np.testing.assert_array_equal(m, np.array(expected, bool))


def test_k_zero_and_k_size():
  a = jnp.array([[np.inf, -np.inf, 0.0], [1.0, 1.0, -0.0]])
  b = jnp.full((4,), -np.inf)
  for m in _each([a, b], [0, 0]) + _global([a, b], 0):
    assert not np.asarray(m).any()
  for m in _each([a, b], [6, 4]) + _global([a, b], 10):
    assert np.asarray(m).all()


def _large_scores(kind, rng):
  if kind == "normal":
    return rng.normal(size=3000).astype(np.float32)
  if kind == "ties":  # few distinct values: the threshold sits inside a huge tie.
    return rng.integers(-3, 4, size=3000).astype(np.float32)
  if kind == "wide":  # magnitudes over 60 decades, both signs, some zeros and infinities.
    x = (10.0 ** rng.uniform(-30, 30, size=3000) * rng.choice([-1, 1], size=3000))
    x[rng.choice(3000, 40, replace=False)] = rng.choice([0.0, -0.0, np.inf, -np.inf], size=40)
    return x.astype(np.float32)
  x = rng.normal(size=3000).astype(np.float32)  # "clustered": near-equal keys plus outliers.
  x[:2900] = np.float32(1.0) + np.float32(1e-7) * rng.integers(0, 5, size=2900)
  return x


@pytest.mark.parametrize("kind", ["normal", "ties", "wide", "clustered"])
def test_large_arrays_match_reference(kind):
  rng = np.random.default_rng(["normal", "ties", "wide", "clustered"].index(kind))
  a = _large_scores(kind, rng)
  b = _large_scores(kind, rng)[:1000].reshape(10, 100)
  eligible = rng.random(3000) < 0.8
  for k in (0, 1, 2, 63, 64, 65, 500, 1499, 2399, 2400, 2999, 3000):
    ma, = _eligible(jnp.asarray(a), jnp.asarray(eligible), k)[:1]
    np.testing.assert_array_equal(ma, reference_top_k(a, k, eligible), err_msg=f"k={k}")
    each = _each([jnp.asarray(a), jnp.asarray(b)], [k, min(k, 1000)])
    np.testing.assert_array_equal(each[0], reference_top_k(a, k), err_msg=f"k={k}")
    np.testing.assert_array_equal(each[1], reference_top_k(b, min(k, 1000)), err_msg=f"k={k}")
    glob = _global([jnp.asarray(a), jnp.asarray(b)], k)
    flat = np.concatenate([np.ravel(glob[0]), np.ravel(glob[1])])
    np.testing.assert_array_equal(flat, reference_top_k(np.concatenate([a, b.ravel()]), k),
                                  err_msg=f"k={k}")


class JitTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(1)
    self.a = rng.integers(-3, 4, size=(6, 7)).astype(np.float32)
    self.b = rng.integers(-2, 3, size=(11,)).astype(np.float32)
    self.b[[0, 3]] = [np.inf, -0.0]
    self.eligible = rng.random((6, 7)) < 0.7

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0, 17, 42)
  def test_each_same_under_jit(self, k):
    fn = self.variant(lambda a, b, e, k1, k2: selection.top_k_masks_each(
        [selection.order_keys(a, e), selection.order_keys(b)], [k1, k2]))
    ka = min(k, int(self.eligible.sum()))
    kb = min(k, 11)
    ma, mb = fn(self.a, self.b, self.eligible, ka, kb)
    np.testing.assert_array_equal(ma, reference_top_k(self.a, ka, self.eligible))
    np.testing.assert_array_equal(mb, reference_top_k(self.b, kb))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 30, 53)
  def test_global_same_under_jit(self, k):
    fn = self.variant(lambda a, b, k: selection.top_k_masks(
        [selection.order_keys(a), selection.order_keys(b)], k))
    ma, mb = fn(self.a, self.b, k)
    flat = np.concatenate([np.ravel(ma), np.ravel(mb)])
    expected = reference_top_k(np.concatenate([self.a.ravel(), self.b.ravel()]), k)
    np.testing.assert_array_equal(flat, expected)


_vmapped = jax.jit(jax.vmap(lambda scores, k: selection.top_k_masks(
    [selection.order_keys(scores)], k)[0]))


@SETTINGS
@given(hnp.arrays(np.float32, (3, 7), elements=VALUES), st.lists(st.integers(0, 7), min_size=3,
                                                                  max_size=3))
def test_vmap_over_replicates_is_exact_with_and_without_ties(scores, ks):
  """Under vmap (replicates: one array and one k each) the selection is the per-replicate one,
  whether some replicates, all or none have ties at their k-th score (its batching rule runs the
  tie branch only when some replicate needs it)."""
  got = np.asarray(_vmapped(jnp.asarray(scores), jnp.asarray(ks, jnp.int32)))
  for row, k, keep in zip(scores, ks, got):
    np.testing.assert_array_equal(keep, reference_top_k(row, k))


def test_vmap_without_ties_runs_no_tie_search():
  """The tie branch (a bisection on the flat index) sits behind one unbatched cond under vmap:
  the only loop outside it is the search for the threshold."""
  jaxpr = jax.make_jaxpr(jax.vmap(lambda s, k: selection.top_k_masks(
      [selection.order_keys(s)], k)[0]))(jnp.ones((3, 7)), jnp.ones(3, jnp.int32))
  loops = []

  def walk(j, inside_cond=False):
    for eqn in j.eqns:
      if eqn.primitive.name == "while":
        loops.append(inside_cond)
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub, inside_cond or eqn.primitive.name == "cond")

  walk(jaxpr.jaxpr)
  assert loops.count(False) == 1 and loops.count(True) >= 1, loops


# --- the threshold between the k-th and (k+1)-th largest magnitude ------------------------------

# Magnitudes with ties, zeros, infinities and NaN; subnormals are left out (XLA:CPU flushes them
# to zero in comparisons, and magnitude_threshold counts them as 0.0).
MAGNITUDES = st.one_of(
    st.integers(0, 4).map(float),
    st.sampled_from([0.0, np.inf, np.nan, 0.25, 1e-30, 3e38]),
    st.floats(0.125, 10.0, width=32),
)
MAGNITUDE_SHAPE = (6, 7)
STARTS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.floats(0.0, 10.0, width=32))
_threshold = jax.jit(selection.magnitude_threshold)


def reference_threshold(a, k):
  """Halfway (in float32) between the smallest kept and the largest pruned magnitude when the k
  largest are kept, NaN ranked lowest and ignored as a value; 0.0 where nothing but NaN is
  pruned."""
  flat = np.asarray(a, np.float32).ravel()
  keep = reference_top_k(np.where(np.isnan(flat), -1.0, flat), k)
  kept, pruned = flat[keep & ~np.isnan(flat)], flat[~keep & ~np.isnan(flat)]
  smallest = kept.min() if kept.size else np.float32(np.inf)
  if not pruned.size:
    return np.float32(0.0)
  return np.float32(smallest) / np.float32(2) + pruned.max() / np.float32(2)


@SETTINGS
@given(hnp.arrays(np.float32, MAGNITUDE_SHAPE, elements=MAGNITUDES),
       st.integers(1, int(np.prod(MAGNITUDE_SHAPE)) - 1), STARTS)
def test_magnitude_threshold_is_the_midpoint_from_any_start(a, k, start):
  """The threshold of the counting selection, whatever the start: none, the answer, far off,
  zero, negative, infinite or NaN."""
  expected = reference_threshold(a, k)
  got = _threshold(jnp.asarray(a), k, None if start is None else jnp.float32(start))
  np.testing.assert_array_equal(np.float32(got), expected)
  np.testing.assert_array_equal(np.float32(_threshold(jnp.asarray(a), k, expected)), expected)


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_magnitude_threshold_from_the_previous_step(kind):
  """A training-like sequence on 100k magnitudes: each step perturbs them and starts the search
  from the last step's threshold; every threshold equals the selection's (top_k_masks)."""
  rng = np.random.default_rng(3)
  a = np.abs(rng.normal(size=(400, 250))).astype(np.float32)
  if kind == "ties":
    a = np.round(a * 64) / 64
  k = a.size // 10
  t = _threshold(jnp.asarray(a), k)
  for _ in range(5):
    a = np.abs(a + rng.normal(scale=1e-3, size=a.shape).astype(np.float32))
    t = _threshold(jnp.asarray(a), k, t)
    keep = np.asarray(selection.top_k_masks([selection.order_keys(jnp.asarray(a))], k)[0])
    assert int(keep.sum()) == k
    np.testing.assert_array_equal(np.float32(t), a[keep].min() / np.float32(2)
                                  + a[~keep].max() / np.float32(2))
