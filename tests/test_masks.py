"""Tests for sparsejax.masks: structure, rules, apply, counts, validation, summaries."""

import re
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import masks


def small_params():
  rng = np.random.default_rng(0)
  f32 = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {
      "conv1": {"kernel": f32(3, 3, 3, 8), "bias": f32(8)},
      "bn": {"scale": f32(8), "bias": f32(8)},
      "dense": {"kernel": f32(32, 10), "bias": f32(10)},
  }


def partial_masks(params):
  """conv1 keeps its first 50 weights (of 216), dense its first 30 (of 320)."""
  m = masks.ones_like(params)
  m["conv1"]["kernel"] = (jnp.arange(216) < 50).reshape(3, 3, 3, 8)
  m["dense"]["kernel"] = (jnp.arange(320) < 30).reshape(32, 10)
  return m


def assert_scalar_true(leaf):
  assert jnp.shape(leaf) == ()
  assert jnp.result_type(leaf) == jnp.bool_
  assert bool(leaf)


def assert_full_bool(leaf, shape):
  assert jnp.shape(leaf) == shape
  assert jnp.result_type(leaf) == jnp.bool_
  assert bool(jnp.all(leaf))


# ---------------------------------------------------------------- ones_like and rules


def test_ones_like_default_structure():
  params = small_params()
  m = masks.ones_like(params)
  assert jax.tree.structure(m) == jax.tree.structure(params)
  assert_full_bool(m["conv1"]["kernel"], (3, 3, 3, 8))
  assert_full_bool(m["dense"]["kernel"], (32, 10))
  for leaf in (m["conv1"]["bias"], m["dense"]["bias"], m["bn"]["scale"], m["bn"]["bias"]):
    assert_scalar_true(leaf)
  assert [masks.is_prunable_mask(x) for x in jax.tree.leaves(m)] == [
      False, False, False, True, False, True]


def test_default_never_prunes_rank2_norm_leaves():
  params = {"LayerNorm_0": {"weight": jnp.ones((4, 4))}, "bn": {"w": jnp.ones((4, 4))},
            "batch_stats": {"x": jnp.ones((4, 4))}, "fc": {"kernel": jnp.ones((4, 4))}}
  assert masks.prunable_paths(params) == ["['fc']['kernel']"]


def test_default_prunable_is_the_default_rule():
  w, b = jnp.ones((4, 4)), jnp.ones(4)
  assert masks.default_prunable("['upscale_conv']['kernel']", w)
  assert masks.default_prunable("['conv']['kernel'].value", jnp.ones((3, 3, 2, 4)))
  assert not masks.default_prunable("['fc']['bias']", b)  # rank 1
  assert not masks.default_prunable("['fc']['w']", b)
  assert not masks.default_prunable("['LayerNorm_0']['scale']", w)
  assert not masks.default_prunable("['batch_stats']['mean']", w)
  params = {"fc": {"kernel": w, "bias": b}, "ln": {"scale": w}}
  assert masks.prunable_paths(params) == masks.prunable_paths(params, masks.default_prunable)


def test_default_matches_whole_words_of_the_path():
  w = jnp.ones((4, 4))
  excluded = {
      "LayerNorm_0": {"weight": w}, "BatchNorm_1": {"kernel": w}, "GroupNorm_0": {"w": w},
      "RMSNorm_0": {"w": w}, "norm1": {"w": w}, "batch_norm": {"w": w}, "bn": {"w": w},
      "bn1": {"w": w}, "ln_f": {"w": w}, "batch_stats": {"x": w}, "fc_bias": {"w": w},
      "mlp/~/layer_norm": {"w": w}, "conv": {"bias": w, "scale": w},
  }
  kept = {"upscale_conv": {"kernel": w}, "enormous": {"kernel": w}, "biased": {"kernel": w},
          "denormalize": {"kernel": w}, "fc": {"kernel": w}}
  assert set(masks.prunable_paths({**excluded, **kept})) == {
      "['upscale_conv']['kernel']", "['enormous']['kernel']", "['biased']['kernel']",
      "['denormalize']['kernel']", "['fc']['kernel']"}


class _Named(nnx.Module):
  """Layers named with words that contain excluded names; norm layers, one with a 2-D param."""

  def __init__(self, rngs):
    self.upscale_conv = nnx.Linear(4, 4, rngs=rngs)
    self.enormous = nnx.Linear(4, 4, rngs=rngs)
    self.rms_norm = nnx.Dict(w=nnx.Param(jnp.ones((4, 4))))
    self.norm1 = nnx.LayerNorm(4, rngs=rngs)


def test_default_matches_whole_words_of_nnx_paths():
  state = nnx.state(_Named(nnx.Rngs(0)), nnx.Param)
  assert set(masks.prunable_paths(state)) == {
      "['upscale_conv']['kernel'].value", "['enormous']['kernel'].value"}


def test_regex_override_selects_rank_ge1_leaves_matching_path():
  params = small_params()
  m = masks.ones_like(params, r"dense")
  assert_full_bool(m["dense"]["kernel"], (32, 10))
  assert_full_bool(m["dense"]["bias"], (10,))  # a regex may select rank-1 leaves.
  assert_scalar_true(m["conv1"]["kernel"])
  assert_scalar_true(m["bn"]["scale"])


def test_callable_override():
  params = small_params()
  seen = []

  def only_conv(path, leaf):
    seen.append(path)
    return "conv" in path and np.ndim(leaf) == 4

  m = masks.ones_like(params, only_conv)
  assert_full_bool(m["conv1"]["kernel"], (3, 3, 3, 8))
  assert_scalar_true(m["dense"]["kernel"])
  assert "['dense']['kernel']" in seen and "['conv1']['kernel']" in seen


def test_rule_include_exclude():
  params = small_params()
  assert masks.prunable_paths(params, masks.rule(exclude="dense")) == ["['conv1']['kernel']"]
  assert masks.prunable_paths(params, masks.rule(include="dense")) == ["['dense']['kernel']"]
  # rule() keeps the default's protections: an include matching a bias does not select it.
  assert masks.prunable_paths(params, masks.rule(include="bias|kernel")) == [
      "['conv1']['kernel']", "['dense']['kernel']"]


@pytest.mark.parametrize("prunable, named", [
    ("no_such_layer", "no_such_layer"),
    (masks.rule(include="nowhere"), "include='nowhere'"),
    (masks.rule(exclude="conv|dense"), "exclude='conv|dense'"),
])
def test_rule_selecting_nothing_raises_naming_rule(prunable, named):
  params = small_params()
  with pytest.raises(ValueError, match=re.escape(named)) as err:
    masks.ones_like(params, prunable)
  assert "['conv1']['kernel']" in str(err.value)  # lists the available paths.


def test_callable_selecting_nothing_names_function():
  def never(path, leaf):
    return False

  with pytest.raises(ValueError, match="never"):
    masks.ones_like(small_params(), never)


def test_bad_rule_type():
  with pytest.raises(TypeError, match="42"):
    masks.ones_like(small_params(), 42)


# ---------------------------------------------------------------- apply


class ApplyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_zeroes_pruned_even_nan_inf_and_keeps_rest_bitwise(self):
    params = small_params()
    k = params["dense"]["kernel"]
    k = k.at[0, 0].set(jnp.nan).at[0, 1].set(jnp.inf).at[0, 2].set(-jnp.inf).at[0, 3].set(-0.0)
    k = k.at[5, 5].set(jnp.nan)  # kept NaN stays NaN.
    params["dense"]["kernel"] = k
    m = masks.ones_like(params)
    keep = np.ones((32, 10), bool)
    keep[0, :4] = False
    keep[1, :] = False
    m["dense"]["kernel"] = jnp.asarray(keep)
    out = self.variant(masks.apply)(params, m)

    chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
    o = np.asarray(out["dense"]["kernel"])
    bits_out = o.view(np.uint32)
    bits_in = np.asarray(k).view(np.uint32)
    np.testing.assert_array_equal(bits_out[~keep], 0)  # exactly +0.0.
    np.testing.assert_array_equal(bits_out[keep], bits_in[keep])
    assert np.isnan(o[5, 5])
    for name in ("conv1", "bn"):
      chex.assert_trees_all_equal(out[name], params[name])
    chex.assert_trees_all_equal(out["dense"]["bias"], params["dense"]["bias"])

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_rejects_masks_that_do_not_fit(self):
    params = small_params()
    m = masks.ones_like(params)
    m["dense"]["kernel"] = jnp.ones((1, 10), bool)  # would broadcast over the (32, 10) kernel.
    with pytest.raises(ValueError, match=re.escape("['dense']['kernel']")) as err:
      self.variant(masks.apply)(params, m)
    assert "(1, 10)" in str(err.value) and "(32, 10)" in str(err.value)
    m = masks.ones_like(params)
    del m["bn"]
    with pytest.raises(ValueError, match=re.escape("['bn']")):
      self.variant(masks.apply)(params, m)

  @chex.variants(with_jit=True, without_jit=True)
  def test_count_density_sparsity_exact(self):
    params = small_params()
    m = partial_masks(params)

    def stats(p, mm):
      kept, total = masks.count(mm)
      return kept, total, masks.density(mm), masks.sparsity(p, mm)

    kept, total, dens, spars = self.variant(stats)(params, m)
    assert int(kept) == 80
    assert int(total) == 216 + 320
    assert jnp.result_type(kept) == jnp.int32
    np.testing.assert_allclose(dens, 80 / 536, rtol=1e-6)
    np.testing.assert_allclose(spars, 1 - 80 / 536, rtol=1e-6)

  def test_count_all_kept_and_all_pruned(self):
    params = small_params()
    m = masks.ones_like(params)
    assert masks.count(m)[0] == 536 and float(masks.sparsity(params, m)) == 0.0
    m = jax.tree.map(lambda x: jnp.zeros_like(x) if x.ndim else x, m)
    assert masks.count(m)[0] == 0 and float(masks.sparsity(params, m)) == 1.0


# ---------------------------------------------------------------- validate


def test_validate_accepts_ones_like():
  params = small_params()
  masks.validate(params, masks.ones_like(params))
  masks.validate(params, partial_masks(params))


def test_validate_missing_key_names_path():
  params = small_params()
  m = masks.ones_like(params)
  del m["bn"]
  with pytest.raises(ValueError, match=re.escape("['bn']")):
    masks.validate(params, m)


def test_validate_extra_leaf_names_path():
  params = small_params()
  m = masks.ones_like(params)
  m["zz_extra"] = jnp.array(True)  # sorts last: only the length differs.
  with pytest.raises(ValueError, match=re.escape("['zz_extra']")) as err:
    masks.validate(params, m)
  assert "masks" in str(err.value)
  m = masks.ones_like(params)
  params["zz_extra"] = jnp.ones((2, 2))
  with pytest.raises(ValueError, match=re.escape("['zz_extra']")) as err:
    masks.validate(params, m)
  assert "params" in str(err.value)


def test_validate_same_paths_different_containers():
  x = jnp.ones((2, 2))
  with pytest.raises(ValueError, match="containers"):
    masks.validate([x, x], (jnp.ones((2, 2), bool), jnp.ones((2, 2), bool)))


def test_validate_wrong_shape_names_first_path():
  params = small_params()
  m = masks.ones_like(params)
  m["conv1"]["kernel"] = jnp.ones((3, 3, 8, 3), bool)
  m["dense"]["kernel"] = jnp.ones((10, 32), bool)
  with pytest.raises(ValueError, match=re.escape("['conv1']['kernel']")) as err:
    masks.validate(params, m)
  assert "(3, 3, 8, 3)" in str(err.value) and "(3, 3, 3, 8)" in str(err.value)
  assert "dense" not in str(err.value)


def test_validate_non_bool_names_path():
  params = small_params()
  m = masks.ones_like(params)
  m["dense"]["kernel"] = jnp.ones((32, 10), jnp.float32)
  with pytest.raises(ValueError, match=re.escape("['dense']['kernel']")) as err:
    masks.validate(params, m)
  assert "float32" in str(err.value)
  with pytest.raises(ValueError, match="dense"):
    masks.sparsity(params, m)


def test_validate_renamed_leaf_names_both_paths():
  params = small_params()
  m = masks.ones_like(params)
  m["dense"]["weights"] = m["dense"].pop("kernel")
  with pytest.raises(ValueError) as err:
    masks.validate(params, m)
  assert str(err.value).startswith(
      "The masks do not match the params: ['dense']['kernel'] is in the params but not in the "
      "masks and ['dense']['weights'] is in the masks but not in the params (6 leaves in the "
      "params, 6 in the masks).")


def test_check_structure_returns_the_leaves_by_path():
  params = small_params()
  m = partial_masks(params)
  leaves = masks.check_structure(params, m, "params", "masks")
  assert [path for path, _, _ in leaves] == [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for (_, p, t), p_want, t_want in zip(leaves, jax.tree.leaves(params), jax.tree.leaves(m)):
    assert p is p_want and t is t_want
  with pytest.raises(ValueError, match="Use the same tree.$"):
    masks.check_structure(params, {"conv1": params["conv1"]}, "params", "copy",
                          "Use the same tree.")


def test_check_paths():
  masks.check_paths(["['a']", "['b']"], ["['b']", "['a']"], "x", "y")  # same set: no error
  with pytest.raises(ValueError, match=re.escape(
      "The arrays in f.npz do not match the params: ['b'] is in the params but not in the arrays "
      "in f.npz (2 leaves in the params, 1 in the arrays in f.npz). Hint.")):
    masks.check_paths(["['a']", "['b']"], ["['a']"], "params", "arrays in f.npz", "Hint.")
  with pytest.raises(ValueError, match=re.escape("['c'] is in the y but not in the x")):
    masks.check_paths(["['a']"], ["['a']", "['c']"], "x", "y")


def test_validate_replacement_requires_same_structure_and_shapes():
  params = small_params()
  masks.validate_replacement(masks.ones_like(params), partial_masks(params))
  for path, leaf in [("conv1", "bias"), ("dense", "kernel")]:
    new = masks.ones_like(params)
    # A scalar True fits the params, but cannot replace a prunable mask (and vice versa).
    new[path][leaf] = (jnp.array(True) if leaf == "kernel"
                       else jnp.ones(params[path][leaf].shape, bool))
    with pytest.raises(ValueError, match=re.escape(f"['{path}']['{leaf}']")):
      masks.validate_replacement(masks.ones_like(params), new)
  new = masks.ones_like(params)
  del new["dense"]
  with pytest.raises(ValueError, match=re.escape("['dense']['bias']")):
    masks.validate_replacement(masks.ones_like(params), new)


# ---------------------------------------------------------------- summaries


def test_summary_rows():
  params = small_params()
  rows = masks.summary(params, partial_masks(params))
  assert [(r.path, r.shape, r.kept, r.total) for r in rows] == [
      ("['conv1']['kernel']", (3, 3, 3, 8), 50, 216),
      ("['dense']['kernel']", (32, 10), 30, 320),
  ]
  assert rows[0].density == pytest.approx(50 / 216)
  assert rows[1].density == pytest.approx(30 / 320)


def test_summary_table_rows_and_total():
  params = small_params()
  table = masks.summary_table(params, partial_masks(params)).splitlines()
  assert len(table) == 2 + 2 + 1  # header, rule, two layers, total.
  assert table[0].split() == ["path", "shape", "kept", "total", "density"]
  assert set(table[1].replace(" ", "")) == {"-"}
  assert table[2].split() == ["['conv1']['kernel']", "3x3x3x8", "50", "216", f"{50 / 216:.4f}"]
  assert table[3].split() == ["['dense']['kernel']", "32x10", "30", "320", f"{30 / 320:.4f}"]
  assert table[4].split() == ["total", "80", "536", f"{80 / 536:.4f}"]
  assert len({len(line) for line in table}) == 1  # aligned columns.


# ---------------------------------------------------------------- check_fraction / check_sparsity


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("inf"), np.float32(2.0)])
def test_check_fraction_names_value_range_and_hint(value):
  with pytest.raises(ValueError) as err:
    masks.check_fraction(value, "p", "It is what it is.")
  assert str(err.value) == f"p={float(value)!r} is outside [0, 1). It is what it is."


def test_check_fraction_accepts_and_passes_traced_values():
  for value in (0, 0.0, 0.999, np.float64(0.5), jnp.float32(0.25)):
    masks.check_fraction(value, "p")
  assert float(jax.jit(lambda v: masks.check_fraction(v, "p") or v)(7.0)) == 7.0
  with pytest.raises(ValueError, match=re.escape("p must be a scalar, got an array of shape (2,)")):
    masks.check_fraction(np.array([0.1, 0.2]), "p")
  for value in ("0.5", True, None, 0.5j):
    with pytest.raises(TypeError, match=re.escape(f"p={value!r} is not a number")):
      masks.check_fraction(value, "p")



@pytest.mark.parametrize("value, shown", [(-0.1, "-0.1"), (1.0, "1.0"), (1.5, "1.5")])
def test_check_sparsity_rejects(value, shown):
  with pytest.raises(ValueError, match=re.escape(f"sparsity={shown}")):
    masks.check_sparsity(value)
  with pytest.raises(ValueError, match=re.escape(f"target={shown}")):
    masks.check_sparsity(jnp.float32(value) if value != -0.1 else value, "target")


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 0.99, np.float32(0.99), jnp.float32(0.3)])
def test_check_sparsity_accepts(value):
  masks.check_sparsity(value)


def test_check_sparsity_nan_rejected():
  with pytest.raises(ValueError, match="nan"):
    masks.check_sparsity(float("nan"))


def test_check_sparsity_traced_passes():
  def f(s):
    masks.check_sparsity(s)
    return s * 2

  assert float(jax.jit(f)(1.5)) == 3.0  # a traced value cannot be checked, so it passes.
  np.testing.assert_array_equal(jax.vmap(f)(jnp.array([0.5, 1.5])), [1.0, 3.0])


@pytest.mark.parametrize("value", [np.array([0.5, 0.9]), jnp.full((3,), 0.5), [0.5],
                                   np.array([0.5])])
def test_check_sparsity_rejects_non_scalar(value):
  with pytest.raises(ValueError, match="target must be a scalar") as err:
    masks.check_sparsity(value, "target")
  assert str(np.shape(value)) in str(err.value)


def test_check_sparsity_rejects_non_number():
  with pytest.raises(TypeError, match="sparsity=None"):
    masks.check_sparsity(None)


# ---------------------------------------------------------------- Flax linen and NNX


class _LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(3)(x)


def test_linen_variables():
  model = _LinenNet()
  variables = model.init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
  assert set(variables) == {"params", "batch_stats"}
  assert masks.prunable_paths(variables) == [
      "['params']['Conv_0']['kernel']", "['params']['Dense_0']['kernel']"]
  m = masks.ones_like(variables)
  assert_scalar_true(m["params"]["BatchNorm_0"]["scale"])
  assert_scalar_true(m["batch_stats"]["BatchNorm_0"]["mean"])
  keep = np.zeros((64, 3), bool)
  keep[::2] = True
  m["params"]["Dense_0"]["kernel"] = jnp.asarray(keep)
  out = masks.apply(variables, m)
  dense = np.asarray(out["params"]["Dense_0"]["kernel"])
  np.testing.assert_array_equal(dense[~keep], 0.0)
  np.testing.assert_array_equal(dense[keep],
                                np.asarray(variables["params"]["Dense_0"]["kernel"])[keep])
  assert masks.count(m) == (96 + 36, 64 * 3 + 36)
  y = model.apply(out, jnp.ones((2, 4, 4, 1)))
  assert y.shape == (2, 3)


class _NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.linear = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return self.linear(x.reshape((x.shape[0], -1)))


def test_nnx_state():
  model = _NnxNet(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  # NNX key paths end in the Variable's `.value`.
  assert "['linear']['kernel'].value" in paths and "['bn']['scale'].value" in paths
  assert masks.prunable_paths(state) == [
      "['conv']['kernel'].value", "['linear']['kernel'].value"]
  m = masks.ones_like(state)
  assert type(m) is type(state)
  assert jax.tree.structure(m) == jax.tree.structure(state)
  masks.validate(state, m)
  assert_scalar_true(m["bn"]["scale"].get_value())
  assert_scalar_true(m["linear"]["bias"].get_value())
  assert_full_bool(m["linear"]["kernel"].get_value(), (16, 3))

  keep = np.arange(48).reshape(16, 3) % 3 == 0
  m["linear"]["kernel"].set_value(jnp.asarray(keep))
  pruned = masks.apply(state, m)
  assert masks.count(m) == (16 + 36, 48 + 36)
  original = np.array(state["linear"]["kernel"].get_value())
  assert np.all(original != 0)
  nnx.update(model, pruned)
  kernel = np.asarray(model.linear.kernel.get_value())
  np.testing.assert_array_equal(kernel[~keep], 0.0)
  np.testing.assert_array_equal(kernel[keep], original[keep])
  assert model(jnp.ones((2, 2, 2, 1))).shape == (2, 3)

  only_conv = masks.ones_like(state, masks.rule(exclude="linear"))
  assert [r.path for r in masks.summary(state, only_conv)] == ["['conv']['kernel'].value"]


# ---------------------------------------------------------------------------------------------
# Integer leaves are never weights; violations counts broken zeros.


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_default_rule_skips_non_floating_leaves(dtype):
  params = {"embedding": {"table": jnp.zeros((16, 4), dtype)},
            "dense": {"kernel": jnp.ones((4, 3), jnp.bfloat16)}}
  assert masks.prunable_paths(params) == ["['dense']['kernel']"]
  assert masks.prunable_paths(params, "table|kernel") == ["['dense']['kernel']"]
  m = masks.ones_like(params)
  assert m["embedding"]["table"].shape == ()
  abstract = jax.eval_shape(lambda: params)
  assert masks.prunable_paths(abstract) == ["['dense']['kernel']"]


def test_violations_counts_pruned_weights_that_are_not_zero():
  params = {"w": jnp.array([[0.0, -0.0, 1.0], [jnp.nan, jnp.inf, 2.0]]), "b": jnp.ones(3)}
  m = {"w": jnp.array([[False, False, True], [False, False, True]]), "b": jnp.array(True)}
  assert int(masks.violations(params, m)) == 2  # NaN and inf; -0.0 == 0.0
  assert int(jax.jit(masks.violations)(masks.apply(params, m), m)) == 0
  with pytest.raises(ValueError, match=r"\['w'\]"):
    masks.violations(params, {"w": jnp.ones((3, 2), bool), "b": jnp.array(True)})


# ---------------------------------------------------------------------------------------------
# Masks of replicates made under jax.vmap.


def _replicates(n=3):
  def init(key):
    k1, k2 = jax.random.split(key)
    params = {"w": jax.random.normal(k1, (8, 4)), "b": jnp.zeros(4)}
    m = {"w": jax.random.uniform(k2, (8, 4)) < 0.5, "b": jnp.array(True)}
    return masks.apply(params, m), m
  return jax.vmap(init)(jax.random.split(jax.random.key(0), n))


def test_batch_dims_gives_per_replicate_results():
  params, m = _replicates()
  assert m["b"].shape == (3,)  # the never-pruned scalar True, batched
  expected = [float(np.mean(m["w"][i])) for i in range(3)]
  np.testing.assert_allclose(masks.density(m, batch_dims=1), expected, rtol=1e-6)
  np.testing.assert_allclose(masks.sparsity(params, m, batch_dims=1),
                             1.0 - np.asarray(expected), rtol=1e-6)
  kept, total = masks.count(m, batch_dims=1)
  assert total == 32 and [int(k) for k in kept] == [int(m["w"][i].sum()) for i in range(3)]
  np.testing.assert_array_equal(masks.violations(params, m, batch_dims=1), [0, 0, 0])
  np.testing.assert_allclose(jax.vmap(masks.density)(m), expected, rtol=1e-6)  # the same
  rows = masks.summary(params, m, batch_dims=1)
  assert [r[0].kept for r in rows] == [int(m["w"][i].sum()) for i in range(3)]
  table = masks.summary_table(params, m, batch_dims=1)
  assert table.count("replicate ") == 3
  assert len([l for l in table.splitlines() if l.startswith("total ")]) == 3


def test_batched_masks_without_batch_dims_are_refused_with_the_fix():
  params, m = _replicates()
  with pytest.raises(ValueError, match="pass batch_dims=1"):
    masks.sparsity(params, m)
  with pytest.raises(ValueError, match="batch_dims=-1"):
    masks.density(m, batch_dims=-1)


# ---------------------------------------------------------------------------------------------
# Containers: params and masks match by leaf names, whatever NNX / pytree containers hold them.


def _nnx_params_and_masks():
  state = nnx.state(_NnxNet(nnx.Rngs(0)), nnx.Param)
  m = masks.ones_like(state)
  m["linear"]["kernel"].set_value(jnp.arange(48).reshape(16, 3) % 4 == 0)
  return state, m


def _opt_variables(tree):
  """``tree`` as an ``nnx.Optimizer`` stores it: every Variable an ``nnx.OptVariable``."""
  return nnx.training.optimizer.to_opt_state(tree)


def test_nnx_state_and_pure_dicts_match_either_way():
  state, m = _nnx_params_and_masks()
  pure_state, pure_m = nnx.to_pure_dict(state), nnx.to_pure_dict(m)
  opt_m = _opt_variables(m)
  assert isinstance(opt_m["linear"]["kernel"], nnx.OptVariable)
  pruned = masks.apply(state, m)
  for p, mm in [(state, pure_m), (pure_state, m), (state, opt_m), (pure_state, opt_m),
                (nnx.as_pure(state), m)]:
    masks.validate(p, mm)
    assert float(masks.sparsity(p, mm)) == pytest.approx(1 - (12 + 36) / (48 + 36))
    assert int(masks.violations(p, mm)) == 36
    assert [(r.shape, r.kept) for r in masks.summary(p, mm)] == [((3, 3, 1, 4), 36), ((16, 3), 12)]
    out = masks.apply(p, mm)
    assert jax.tree.structure(out) == jax.tree.structure(p)  # the params' own containers
    chex.assert_trees_all_equal(jax.tree.leaves(out), jax.tree.leaves(pruned))
    assert int(masks.violations(out, mm)) == 0
  # Summary rows carry the params' own paths.
  assert [r.path for r in masks.summary(pure_state, m)] == ["['conv']['kernel']",
                                                            "['linear']['kernel']"]
  assert [r.path for r in masks.summary(state, pure_m)] == ["['conv']['kernel'].value",
                                                            "['linear']['kernel'].value"]
  assert masks.summary_table(state, opt_m) == masks.summary_table(state, m)
  masks.validate_replacement(opt_m, pure_m)


def test_conform_gives_masks_the_params_containers():
  state, m = _nnx_params_and_masks()
  for p in (state, nnx.to_pure_dict(state)):
    for mm in (m, nnx.to_pure_dict(m), _opt_variables(m)):
      conformed = masks.conform(p, mm)
      assert jax.tree.structure(conformed) == jax.tree.structure(p)
      chex.assert_trees_all_equal(jax.tree.leaves(conformed), jax.tree.leaves(m))
  with pytest.raises(ValueError, match=re.escape("['bn']['bias'].value is in the params")):
    masks.conform(state, {k: v for k, v in nnx.to_pure_dict(m).items() if k != "bn"})


def test_state_and_pure_dict_of_other_models_name_their_own_paths():
  state, _ = _nnx_params_and_masks()
  other = nnx.to_pure_dict(masks.ones_like(nnx.state(_Named(nnx.Rngs(0)), nnx.Param)))
  with pytest.raises(ValueError) as err:
    masks.validate(state, other)
  assert str(err.value).startswith(
      "The masks do not match the params: ['bn']['bias'].value is in the params but not in the "
      "masks and ['enormous']['bias'] is in the masks but not in the params (6 leaves in the "
      "params, 7 in the masks). Masks must have the params' leaves: build them from these params")
  assert "PyTreeDef" not in str(err.value)


class _Dense(NamedTuple):
  bias: Any
  kernel: Any


class _KernelFirst(NamedTuple):
  kernel: Any
  bias: Any


def test_items_attributes_and_indices_match_by_name():
  w, b = jnp.ones((4, 3)), jnp.zeros(3)
  params = [_Dense(b, w), _Dense(b, w)]  # SequenceKey, then GetAttrKey
  m = {0: {"bias": jnp.array(True), "kernel": jnp.eye(4, 3, dtype=bool)},  # DictKeys
       1: {"bias": jnp.array(True), "kernel": jnp.ones((4, 3), bool)}}
  masks.validate(params, m)
  out = masks.apply(params, m)
  assert type(out) is list and type(out[0]) is _Dense
  np.testing.assert_array_equal(out[0].kernel, np.eye(4, 3))
  assert [r.path for r in masks.summary(params, m)] == ["[0].kernel", "[1].kernel"]
  # The same names in another order would pair leaves wrongly where trees are zipped.
  swapped = {i: {"kernel": w, "bias": b} for i in (0, 1)}
  with pytest.raises(ValueError, match=re.escape(
      "they hold the same leaves in another order (leaf 0 is [0]['bias'] in the params but "
      "[0].kernel in the masks)")):
    masks.validate(swapped, [_KernelFirst(w > 0, jnp.array(True))] * 2)


def test_same_keys_in_containers_of_other_kinds_are_refused_without_a_treedef_dump():
  x, m = jnp.ones((2, 2)), jnp.ones((2, 2), bool)
  with pytest.raises(ValueError) as err:
    masks.validate({"a": [x, x]}, {"a": (m, m)})
  assert "containers differ at ['a']: a list in the params, a tuple in the masks" in str(err.value)
  assert "PyTreeDef" not in str(err.value)


def test_empty_containers_and_none_hold_no_leaves():
  params = {"fc": {"kernel": jnp.ones((4, 3)), "bias": None}, "frozen": optax.MaskedNode(),
            "empty": {}}
  m = masks.ones_like(params)
  masks.validate(params, m)
  masks.validate(params, {"fc": {"kernel": jnp.ones((4, 3), bool)}})
  out = masks.apply(params, m)
  assert out["fc"]["bias"] is None and isinstance(out["frozen"], optax.MaskedNode)
