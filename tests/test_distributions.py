"""Tests for sparsejax.distributions: uniform, ER, ERK (Evci et al. 2020) and global budgets."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import distributions

SHAPES = {
    "conv1": (3, 3, 3, 16),   # n = 432
    "conv2": (3, 3, 16, 32),  # n = 4608
    "dense1": (512, 128),     # n = 65536
    "dense2": (128, 10),      # n = 1280
}
N = {name: int(np.prod(s)) for name, s in SHAPES.items()}
N_TOTAL = 432 + 4608 + 65536 + 1280  # 71856


def net(seed=0):
  """The conv + dense network; kernel magnitudes are all distinct (a permutation of 1..N)."""
  rng = np.random.default_rng(seed)
  magnitudes = iter(np.split(rng.permutation(N_TOTAL) + 1.0, np.cumsum(list(N.values()))[:-1]))
  params = {}
  for name, shape in SHAPES.items():
    w = next(magnitudes).reshape(shape) * rng.choice([-1.0, 1.0], size=shape) / N_TOTAL
    params[name] = {"kernel": jnp.asarray(w, jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
  params["bn"] = {"scale": jnp.ones(16), "bias": jnp.zeros(16)}
  return params


def kernel_densities(d):
  return {name: float(d[name]["kernel"]) for name in SHAPES}


def assert_non_prunable_dense(d):
  for name in SHAPES:
    assert float(d[name]["bias"]) == 1.0
  assert float(d["bn"]["scale"]) == 1.0 and float(d["bn"]["bias"]) == 1.0


@pytest.mark.parametrize("s", [0.0, 0.3, 0.9, 0.999])
def test_uniform(s):
  d = distributions.uniform(net(), s)
  assert jax.tree.structure(d) == jax.tree.structure(net())
  for name in SHAPES:
    assert d[name]["kernel"].dtype == jnp.float32
    np.testing.assert_allclose(d[name]["kernel"], 1.0 - s, rtol=1e-6, atol=1e-7)
  assert_non_prunable_dense(d)


def test_erk_hand_computed_no_dense_layer():
  # ERK raw ratios sum(shape) / prod(shape):
  #   conv1 (3+3+3+16)/432 = 25/432, conv2 (3+3+16+32)/4608 = 54/4608,
  #   dense1 (512+128)/65536 = 640/65536, dense2 (128+10)/1280 = 138/1280.
  # raw * n = 25, 54, 640, 138 (sum 857).  s = 0.9: budget 0.1 * 71856 = 7185.6.
  eps = 7185.6 / 857  # = 8.3846...; the largest density is dense2: eps * 138/1280 = 0.904 < 1.
  expected = {"conv1": eps * 25 / 432, "conv2": eps * 54 / 4608,
              "dense1": eps * 640 / 65536, "dense2": eps * 138 / 1280}
  assert max(expected.values()) < 1
  got = kernel_densities(distributions.erk(net(), 0.9))
  for name in SHAPES:
    assert got[name] == pytest.approx(expected[name], rel=1e-6)
  assert sum(got[n] * N[n] for n in SHAPES) == pytest.approx(7185.6, rel=1e-6)


def test_erk_hand_computed_iteratively_dense():
  # s = 0.8: budget 0.2 * 71856 = 14371.2.
  # Pass 1: eps = 14371.2 / 857 = 16.769; dense2: 16.769 * 138/1280 = 1.808 > 1 -> dense.
  # Pass 2: budget 14371.2 - 1280 = 13091.2, divisor 857 - 138 = 719, eps = 18.208;
  #         conv1: 18.208 * 25/432 = 1.054 > 1 -> dense.
  # Pass 3: budget 13091.2 - 432 = 12659.2, divisor 719 - 25 = 694, eps = 18.2409;
  #         conv2: 18.2409 * 54/4608 = 0.2138, dense1: 18.2409 * 640/65536 = 0.1781 -> done.
  eps1 = 14371.2 / 857
  assert eps1 * 138 / 1280 > 1
  eps2 = (14371.2 - 1280) / (857 - 138)
  assert eps2 * 25 / 432 > 1 and eps2 * 54 / 4608 < 1
  eps3 = (14371.2 - 1280 - 432) / (857 - 138 - 25)
  assert max(eps3 * 54 / 4608, eps3 * 640 / 65536) < 1
  expected = {"conv1": 1.0, "conv2": eps3 * 54 / 4608, "dense1": eps3 * 640 / 65536,
              "dense2": 1.0}
  got = kernel_densities(distributions.erk(net(), 0.8))
  for name in SHAPES:
    assert got[name] == pytest.approx(expected[name], rel=1e-6)
  assert sum(got[n] * N[n] for n in SHAPES) == pytest.approx(14371.2, rel=1e-6)


def test_er_hand_computed_iteratively_dense():
  # ER raw ratios use only (n_in, n_out), the last two dims (RigL's include_kernel=False):
  #   conv1 (3+16)/(3*16) = 19/48, conv2 (16+32)/(16*32) = 48/512,
  #   dense1 640/65536, dense2 138/1280.  raw * n = 171, 432, 640, 138 (sum 1381).
  # s = 0.9: eps = 7185.6 / 1381 = 5.2032; conv1: 5.2032 * 19/48 = 2.06 > 1 -> dense.
  # Then eps = (7185.6 - 432) / (1381 - 171) = 5.5815; dense2 = 0.602 is the largest -> done.
  raw_n = {"conv1": 19 / 48 * 432, "conv2": 48 / 512 * 4608, "dense1": 640.0, "dense2": 138.0}
  assert [round(v, 9) for v in raw_n.values()] == [171, 432, 640, 138]
  eps1 = 7185.6 / 1381
  assert eps1 * 19 / 48 > 1
  eps2 = (7185.6 - 432) / (1381 - 171)
  expected = {"conv1": 1.0, "conv2": eps2 * 48 / 512, "dense1": eps2 * 640 / 65536,
              "dense2": eps2 * 138 / 1280}
  assert max(v for k, v in expected.items() if k != "conv1") < 1
  got = kernel_densities(distributions.er(net(), 0.9))
  for name in SHAPES:
    assert got[name] == pytest.approx(expected[name], rel=1e-6)


def test_erk_zero_sparsity_is_dense():
  d = distributions.erk(net(), 0.0)
  assert kernel_densities(d) == {name: 1.0 for name in SHAPES}


def test_erk_power_scale_zero_is_uniform():
  d = distributions.erk(net(), 0.7, power_scale=0.0)
  for name in SHAPES:
    np.testing.assert_allclose(d[name]["kernel"], 0.3, rtol=1e-6)


def test_erk_respects_prunable_rule():
  d = distributions.erk(net(), 0.9, prunable=r"dense\d\W+kernel")
  assert float(d["conv1"]["kernel"]) == 1.0 and float(d["conv2"]["kernel"]) == 1.0
  # Only the dense layers share the budget: 0.1 * (65536 + 1280) = 6681.6 over raw*n 640 + 138.
  eps = 6681.6 / 778
  np.testing.assert_allclose(d["dense1"]["kernel"], eps * 640 / 65536, rtol=1e-6)
  np.testing.assert_allclose(d["dense2"]["kernel"], eps * 138 / 1280, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 0.999), st.sampled_from(["er", "erk", "uniform"]))
def test_total_kept_matches_budget(s, name):
  d = distributions.get(name)(net(), s)
  dens = kernel_densities(d)
  assert all(0.0 <= v <= 1.0 for v in dens.values())
  kept = sum(np.round(np.float32(dens[n]) * N[n]) for n in SHAPES)
  assert abs(kept - (1 - s) * N_TOTAL) <= len(SHAPES)
  assert_non_prunable_dense(d)
  if name == "uniform":
    return
  # Layers made dense are those with the largest raw ratios; the others share one eps.
  raw = {n: (sum(sh) / np.prod(sh) if name == "erk" else
             (sh[-2] + sh[-1]) / (sh[-2] * sh[-1])) for n, sh in SHAPES.items()}
  dense = [n for n in SHAPES if dens[n] >= 1.0 - 1e-6]
  sparse = [n for n in SHAPES if n not in dense]
  if dense and sparse:
    assert min(raw[n] for n in dense) >= max(raw[n] for n in sparse)
  eps = [dens[n] / raw[n] for n in sparse]
  np.testing.assert_allclose(eps, eps[0] if eps else [], rtol=1e-5)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=["uniform", "er", "erk"], s=[0.0, 0.5, 0.8, 0.9, 0.95, 0.99])
  def test_traced_sparsity(self, name, s):
    params = net()
    fn = distributions.get(name)
    expected = fn(params, s)
    got = self.variant(lambda p, sp: fn(p, sp))(params, jnp.float32(s))
    chex.assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.0, 0.5, 0.9, 0.99)
  def test_global_magnitude_matches_numpy_threshold(self, s):
    params = net(seed=3)
    got = self.variant(distributions.global_magnitude)(params, s)
    magnitudes = {n: np.abs(np.asarray(params[n]["kernel"])) for n in SHAPES}
    everything = np.sort(np.concatenate([m.ravel() for m in magnitudes.values()]))[::-1]
    k = int(round((1 - s) * N_TOTAL))
    assert len(np.unique(everything)) == N_TOTAL  # no ties: the threshold is unambiguous.
    for n in SHAPES:
      count = np.sum(magnitudes[n] >= everything[k - 1]) if k else 0
      np.testing.assert_allclose(got[n]["kernel"], count / N[n], rtol=1e-6)
    assert_non_prunable_dense(got)
    kept = sum(float(got[n]["kernel"]) * N[n] for n in SHAPES)
    assert round(kept) == k


@pytest.mark.parametrize("fn", [distributions.uniform, distributions.er, distributions.erk,
                                distributions.global_magnitude])
@pytest.mark.parametrize("s, shown", [(-0.1, "-0.1"), (1.0, "1.0"), (1.5, "1.5")])
def test_bad_sparsity_names_value(fn, s, shown):
  with pytest.raises(ValueError, match=re.escape(f"sparsity={shown}")):
    fn(net(), s)


def test_validate_densities_accepts():
  params = net()
  for name in ("uniform", "er", "erk"):
    distributions.validate_densities(params, distributions.get(name)(params, 0.9))


def test_validate_densities_missing_leaf_names_path():
  params = net()
  d = distributions.uniform(params, 0.5)
  del d["dense2"]
  with pytest.raises(ValueError, match=re.escape("['dense2']['bias']")):
    distributions.validate_densities(params, d)


def test_validate_densities_extra_and_renamed_leaf_names_path():
  params = net()
  d = distributions.uniform(params, 0.5)
  d["zz"] = 1.0
  with pytest.raises(ValueError, match=re.escape("['zz']")):
    distributions.validate_densities(params, d)
  d = distributions.uniform(params, 0.5)
  d["conv2"]["weights"] = d["conv2"].pop("kernel")
  with pytest.raises(ValueError, match=re.escape("['conv2']['weights']")):
    distributions.validate_densities(params, d)


def test_validate_densities_bad_values():
  params = net()
  d = distributions.uniform(params, 0.5)
  d["conv1"]["kernel"] = jnp.ones(3)
  with pytest.raises(ValueError, match=re.escape("['conv1']['kernel']")):
    distributions.validate_densities(params, d)
  d = distributions.uniform(params, 0.5)
  d["dense1"]["kernel"] = 1.5
  with pytest.raises(ValueError, match=re.escape("['dense1']['kernel']")):
    distributions.validate_densities(params, d)


def test_get_unknown_lists_valid_names():
  with pytest.raises(ValueError, match="bogus") as err:
    distributions.get("bogus")
  for valid in ("'er'", "'erk'", "'uniform'"):
    assert valid in str(err.value)
  assert distributions.get("erk") is distributions.erk
  assert sorted(distributions.DISTRIBUTIONS) == ["er", "erk", "uniform"]
  for name, fn in distributions.DISTRIBUTIONS.items():
    assert distributions.get(name) is fn
