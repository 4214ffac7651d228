"""Tests for sparsejax.connectivity: linear interpolation, error barriers and instability."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import connectivity

SETTINGS = settings(max_examples=25, deadline=None)


def make_params(seed, dtypes=(jnp.float32, jnp.float32)):
  rng = np.random.default_rng(seed)
  k_dtype, b_dtype = dtypes
  return {"dense1": {"kernel": jnp.asarray(rng.normal(size=(64, 32)), k_dtype),
                     "bias": jnp.asarray(rng.normal(size=(32,)), b_dtype)},
          "output": {"kernel": jnp.asarray(rng.normal(size=(32, 10)), k_dtype),
                     "bias": jnp.asarray(rng.normal(size=(10,)), b_dtype)}}


# A fixed classification problem: the error of the params is 1 - accuracy.
_rng = np.random.default_rng(0)
_X = jnp.asarray(_rng.normal(size=(256, 64)).astype(np.float32))
_LABELS = jnp.asarray(_rng.integers(0, 10, size=256))


def classification_error(params):
  h = jnp.tanh(_X @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  logits = h @ params["output"]["kernel"] + params["output"]["bias"]
  return 1.0 - jnp.mean(jnp.argmax(logits, -1) == _LABELS)


def squared_norm(params):
  return sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(params)) * 1e-4


# ---------------------------------------------------------------------------------------------
# interpolate


@pytest.mark.parametrize("dtypes", [(jnp.float32, jnp.float32), (jnp.bfloat16, jnp.float32),
                                    (jnp.float16, jnp.bfloat16)])
def test_interpolate_endpoints_and_midpoint(dtypes):
  a, b = make_params(1, dtypes), make_params(2, dtypes)
  for alpha in (0.0, jnp.float32(0.0)):
    out = connectivity.interpolate(a, b, alpha)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, a)
    chex.assert_trees_all_close(out, a)
  for alpha in (1.0, jnp.float32(1.0)):
    out = connectivity.interpolate(a, b, alpha)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, a)
    chex.assert_trees_all_close(out, b)
  mid = connectivity.interpolate(a, b, 0.5)
  chex.assert_trees_all_equal_shapes_and_dtypes(mid, a)
  want = jax.tree.map(lambda x, y: (np.asarray(x, np.float64) + np.asarray(y, np.float64)) / 2,
                      a, b)
  tol = 1e-6 if dtypes == (jnp.float32, jnp.float32) else 1e-2
  chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float64), mid), want,
                              rtol=tol, atol=tol)


@SETTINGS
@given(alpha=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_interpolate_is_convex_combination(alpha, seed):
  a, b = make_params(seed), make_params(seed + 1)
  out = connectivity.interpolate(a, b, jnp.float32(alpha))
  want = jax.tree.map(lambda x, y: (1 - alpha) * np.asarray(x, np.float64)
                      + alpha * np.asarray(y, np.float64), a, b)
  chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x, np.float64), out), want,
                              rtol=1e-5, atol=1e-5)


def test_interpolate_mismatched_structures_raise():
  a = make_params(0)
  b = {"dense1": a["dense1"]}
  with pytest.raises(ValueError):
    connectivity.interpolate(a, b, 0.5)


# ---------------------------------------------------------------------------------------------
# error_barrier


def test_identical_endpoints_have_no_barrier():
  p = make_params(3)
  out = connectivity.error_barrier(classification_error, p, p)
  assert out.barrier == 0.0 and out.stable
  assert len(set(out.errors)) == 1
  smooth = connectivity.error_barrier(squared_norm, p, p)
  assert smooth.barrier == pytest.approx(0.0, abs=1e-6) and smooth.stable
  np.testing.assert_allclose(smooth.errors, smooth.errors[0], rtol=1e-6)


def _alpha_of(params):
  """The path's position, read back from params interpolated between zeros and ones."""
  return float(jnp.mean(params["w"]))


def peaked_error(params):
  # 0.1 at alpha=0, 0.2 at alpha=1, a tent rising by 0.3 at the midpoint.
  alpha = _alpha_of(params)
  return 0.1 + 0.1 * alpha + 0.3 * (1.0 - abs(2.0 * alpha - 1.0))


ZEROS, ONES = {"w": jnp.zeros((8,))}, {"w": jnp.ones((8,))}


def test_barrier_of_a_peak_on_the_grid():
  out = connectivity.error_barrier(peaked_error, ZEROS, ONES, num_alphas=31)  # 0.5 on the grid
  # max = 0.1 + 0.05 + 0.3 = 0.45; endpoint mean = (0.1 + 0.2) / 2 = 0.15.
  assert out.barrier == pytest.approx(0.3, abs=1e-6)
  assert not out.stable
  assert out.errors[0] == pytest.approx(0.1) and out.errors[-1] == pytest.approx(0.2)


def test_barrier_with_30_alphas_evaluates_the_grid():
  seen = []

  def error_fn(params):
    seen.append(_alpha_of(params))
    return peaked_error(params)

  out = connectivity.error_barrier(error_fn, ZEROS, ONES, num_alphas=30)
  grid = np.linspace(0.0, 1.0, 30)
  assert len(seen) == 30 and len(out.alphas) == 30 and len(out.errors) == 30
  assert out.alphas[0] == 0.0 and out.alphas[-1] == 1.0
  np.testing.assert_allclose(out.alphas, grid)
  np.testing.assert_allclose(seen, grid, atol=1e-6)
  expected = [0.1 + 0.1 * a + 0.3 * (1 - abs(2 * a - 1)) for a in grid]
  np.testing.assert_allclose(out.errors, expected, atol=1e-6)
  assert out.barrier == pytest.approx(max(expected) - 0.15, abs=1e-6)
  assert out.barrier < 0.3  # the tent's tip lies between two of the 30 points
  assert not out.stable
  assert connectivity.error_barrier(peaked_error, ZEROS, ONES).alphas == out.alphas  # default 30


@pytest.mark.parametrize("height, stable", [(0.0, True), (0.015, True), (0.025, False),
                                            (-0.05, True)])
def test_stability_threshold_is_two_percent(height, stable):
  error_fn = lambda p: 0.3 + height * (1.0 - abs(2.0 * _alpha_of(p) - 1.0))
  out = connectivity.error_barrier(error_fn, ZEROS, ONES, num_alphas=31)
  assert out.barrier == pytest.approx(max(height, 0.0), abs=1e-6)
  assert out.stable == stable
  assert connectivity.STABLE_BARRIER == 0.02


def test_monotone_path_has_no_barrier():
  out = connectivity.error_barrier(lambda p: 0.1 + 0.2 * _alpha_of(p), ZEROS, ONES)
  # The max is the endpoint 0.3; the mean is 0.2: a linear path still "barriers" by half the gap.
  assert out.barrier == pytest.approx(0.1, abs=1e-6)


def _normalized_error(network):
  """The error of a network with BatchNorm-like statistics: a (params, state) pair."""
  params, state = network
  pre = _X @ params["dense1"]["kernel"]
  h = jnp.tanh((pre - state["mean"]) / jnp.sqrt(state["var"]) + params["dense1"]["bias"])
  logits = h @ params["output"]["kernel"] + params["output"]["bias"]
  return 1.0 - jnp.mean(jnp.argmax(logits, -1) == _LABELS)


def test_barrier_over_params_and_state_pairs():
  """Statistics travel with the params: each end is exactly one network, the middle their mean."""
  a = (make_params(1), {"mean": jnp.zeros(32), "var": jnp.ones(32)})
  b = (make_params(2), {"mean": jnp.full(32, 3.0), "var": jnp.full(32, 25.0)})
  chex.assert_trees_all_equal(connectivity.interpolate(a, b, jnp.float32(0.0)), a)
  chex.assert_trees_all_equal(connectivity.interpolate(a, b, jnp.float32(1.0)), b)
  middle = connectivity.interpolate(a, b, jnp.float32(0.5))
  chex.assert_trees_all_equal(middle[1], {"mean": jnp.full(32, 1.5), "var": jnp.full(32, 13.0)})
  out = connectivity.error_barrier(_normalized_error, a, b, num_alphas=3)
  assert out.errors == [float(_normalized_error(n)) for n in (a, middle, b)]
  # With a's statistics at the far end the network would be another one.
  assert float(_normalized_error((b[0], a[1]))) != out.errors[-1]


@pytest.mark.parametrize("n", [1, 0, -3])
def test_too_few_alphas_raise(n):
  with pytest.raises(ValueError, match="num_alphas"):
    connectivity.error_barrier(peaked_error, ZEROS, ONES, num_alphas=n)


# ---------------------------------------------------------------------------------------------
# instability


def test_instability_of_identical_copies_is_zero():
  start = make_params(5)
  copies = []

  def train_fn(params, copy):
    copies.append(copy)
    return jax.tree.map(lambda x: x * 0.9 + 0.01, params)  # ignores the data order

  out = connectivity.instability(train_fn, start, classification_error)
  assert copies == [1, 2]
  assert out.barrier == 0.0 and out.stable
  assert len(out.errors) == 30


def test_instability_trains_with_both_copies():
  start = make_params(6)
  copies = []

  def train_fn(params, copy):
    copies.append(copy)
    noise = make_params(100 + copy)
    return jax.tree.map(lambda x, n: x + 2.0 * n, params, noise)

  out = connectivity.instability(train_fn, start, classification_error, copies=(7, 9),
                                 num_alphas=11)
  assert copies == [7, 9]
  direct = connectivity.error_barrier(classification_error, train_fn(start, 7),
                                      train_fn(start, 9), num_alphas=11)
  assert out == direct
  assert len(out.alphas) == 11
  assert out.errors[0] == pytest.approx(float(classification_error(train_fn(start, 7))))
  assert out.errors[-1] == pytest.approx(float(classification_error(train_fn(start, 9))))


def test_instability_copies_may_be_data_order_keys():
  """The runner labels the copies with two data-order keys: each copy gets its own key."""
  start = make_params(6)
  keys = jax.random.split(jax.random.key(3))
  seen = []

  def train_fn(params, key):
    seen.append(key)
    return jax.tree.map(lambda x: x + jax.random.normal(key, x.shape), params)

  out = connectivity.instability(train_fn, start, classification_error, copies=keys,
                                 num_alphas=5)
  assert len(seen) == 2
  for got, want in zip(seen, keys):
    np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
  direct = connectivity.error_barrier(classification_error, train_fn(start, keys[0]),
                                      train_fn(start, keys[1]), num_alphas=5)
  assert out == direct and out.barrier > 0.0


@pytest.mark.parametrize("copies", [(1, 2, 3), (1,), ()])
def test_instability_needs_two_copies(copies):
  called = []
  with pytest.raises(ValueError, match="copies") as err:
    connectivity.instability(lambda p, s: called.append(s) or p, make_params(0),
                             classification_error, copies=copies)
  assert repr(copies) in str(err.value)
  assert called == []
