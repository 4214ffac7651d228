"""Tests for sparsejax.pruning: exact counts, magnitude/random/SNIP selection, revival, jit."""

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
from sparsejax import masks as masks_lib
from sparsejax import pruning
from sparsejax import scores as scores_lib

# Three prunable layers keep the compile times of the jitted selections short.
SHAPES = {"conv1": (3, 3, 3, 16), "dense1": (256, 64), "dense2": (64, 10)}
NAMES = list(SHAPES)  # tree order (sorted dict keys).
N = {name: int(np.prod(s)) for name, s in SHAPES.items()}
N_TOTAL = sum(N.values())
SETTINGS = settings(max_examples=30, deadline=None)


def net(seed=0):
  """Conv + dense params with all kernel magnitudes distinct."""
  rng = np.random.default_rng(seed)
  mags = np.split(rng.permutation(N_TOTAL) + 1.0, np.cumsum(list(N.values()))[:-1])
  params = {}
  for (name, shape), m in zip(SHAPES.items(), mags):
    w = m.reshape(shape) * rng.choice([-1.0, 1.0], size=shape) / N_TOTAL
    params[name] = {"kernel": jnp.asarray(w, jnp.float32),
                    "bias": jnp.asarray(rng.normal(size=shape[-1]), jnp.float32)}
  return params


PARAMS = net()
MASKS = masks_lib.ones_like(PARAMS)


def kernels(tree):
  return {name: np.asarray(tree[name]["kernel"]) for name in NAMES}


def f32_count(density, n):
  """round(density * n) as the library computes it, in float32."""
  return int(np.round(np.float32(density) * np.float32(n)))


def reference_top_k(scores, k):
  """Keeps the k largest of a flat array, ties by lowest index."""
  order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
  keep = np.zeros(scores.size, bool)
  keep[order[:k]] = True
  return keep


def reference_layerwise(scores, counts):
  return {n: reference_top_k(scores[n].ravel(), counts[n]).reshape(scores[n].shape)
          for n in NAMES}


def reference_global(scores, k):
  flat = reference_top_k(np.concatenate([scores[n].ravel() for n in NAMES]), k)
  parts = np.split(flat, np.cumsum([N[n] for n in NAMES])[:-1])
  return {n: p.reshape(SHAPES[n]) for n, p in zip(NAMES, parts)}


def assert_masks_equal(got, expected):
  got = kernels(got)
  for n in NAMES:
    np.testing.assert_array_equal(got[n], expected[n], err_msg=n)


def assert_non_prunable_untouched(m):
  for n in NAMES:
    assert np.ndim(m[n]["bias"]) == 0 and bool(m[n]["bias"])


# Jitted once per static configuration (sparsity stays a traced argument); the JitTest class
# below checks that the un-jitted functions give the same masks.
_magnitude = jax.jit(pruning.magnitude, static_argnames=("distribution", "revive"))
_random = jax.jit(pruning.random, static_argnames=("distribution", "prunable"))
_snip = jax.jit(pruning.snip, static_argnames=("distribution", "prunable"))


# ---------------------------------------------------------------- exact counts (traced sparsity)


@SETTINGS
@given(st.floats(0.0, 0.999))
def test_layerwise_uniform_exact_counts_and_largest_magnitudes(s):
  m = kernels(_magnitude(PARAMS, s, MASKS))
  w = {n: np.abs(v) for n, v in kernels(PARAMS).items()}
  for n in NAMES:
    kept = int(m[n].sum())
    assert kept == f32_count(np.float32(1) - np.float32(s), N[n])
    assert abs(kept - (1 - s) * N[n]) <= 1
    if 0 < kept < N[n]:
      assert w[n][m[n]].min() > w[n][~m[n]].max()


@SETTINGS
@given(st.floats(0.0, 0.999))
def test_global_exact_count_and_one_threshold(s):
  m = kernels(_magnitude(PARAMS, s, MASKS, "global"))
  kept = sum(int(v.sum()) for v in m.values())
  assert kept == f32_count(np.float32(1) - np.float32(s), N_TOTAL)
  assert abs(kept - (1 - s) * N_TOTAL) <= 1
  w = {n: np.abs(v) for n, v in kernels(PARAMS).items()}
  kept_w = np.concatenate([w[n][m[n]] for n in NAMES])
  dropped_w = np.concatenate([w[n][~m[n]] for n in NAMES])
  if kept_w.size and dropped_w.size:
    assert kept_w.min() > dropped_w.max()


@pytest.mark.parametrize("distribution", ["er", "erk"])
@pytest.mark.parametrize("s", [0.8, 0.95])
def test_layerwise_erk_counts(distribution, s):
  m = _magnitude(PARAMS, s, MASKS, distribution)
  # The densities as they are computed under jit (float32), where the sparsity is traced.
  dens = jax.jit(distributions.get(distribution))(PARAMS, s)
  counts = {n: f32_count(dens[n]["kernel"], N[n]) for n in NAMES}
  assert_masks_equal(m, reference_layerwise({n: np.abs(v) for n, v in kernels(PARAMS).items()},
                                            counts))
  assert_non_prunable_untouched(m)
  assert abs(sum(counts.values()) - (1 - s) * N_TOTAL) <= len(NAMES)


# ---------------------------------------------------------------- revival


def test_never_revives_unless_asked():
  m1 = _magnitude(PARAMS, 0.5, MASKS)
  k1 = kernels(m1)
  # Make every pruned weight the largest in its layer: magnitude alone would revive them all.
  boosted = jax.tree.map(lambda w: w, PARAMS)
  for n in NAMES:
    boosted[n]["kernel"] = jnp.where(k1[n], PARAMS[n]["kernel"], 100.0)

  m2 = kernels(_magnitude(boosted, 0.7, m1))
  for n in NAMES:
    assert not (m2[n] & ~k1[n]).any()
    assert m2[n].sum() == f32_count(np.float32(1) - np.float32(0.7), N[n])
    assert np.abs(np.asarray(boosted[n]["kernel"]))[m2[n]].min() > np.abs(
        np.asarray(boosted[n]["kernel"]))[k1[n] & ~m2[n]].max()

  m_glob = kernels(_magnitude(boosted, 0.7, m1, "global"))
  assert not any((m_glob[n] & ~k1[n]).any() for n in NAMES)
  assert sum(v.sum() for v in m_glob.values()) == f32_count(np.float32(0.3), N_TOTAL)

  # Asking for more than is alive keeps exactly the alive weights.
  assert_masks_equal(_magnitude(boosted, 0.2, m1), k1)
  assert_masks_equal(_magnitude(boosted, 0.2, m1, "global"), k1)

  m3 = kernels(_magnitude(boosted, 0.7, m1, revive=True))
  for n in NAMES:
    k = f32_count(np.float32(1) - np.float32(0.7), N[n])
    assert m3[n].sum() == k
    revived = m3[n] & ~k1[n]
    assert revived.sum() == min(k, (~k1[n]).sum())  # the 100.0 weights come back first.

  m4 = kernels(_magnitude(boosted, 0.2, m1, "global", revive=True))
  assert sum(v.sum() for v in m4.values()) == f32_count(np.float32(0.8), N_TOTAL)
  assert all(m4[n][~k1[n]].all() for n in NAMES)


def test_layerwise_direct_with_densities():
  scores = {"a": jnp.arange(12.0).reshape(3, 4), "b": jnp.arange(6.0).reshape(2, 3),
            "c": jnp.ones(3)}
  m = masks_lib.ones_like(scores)
  dens = {"a": jnp.float32(0.25), "b": jnp.float32(0.0), "c": jnp.float32(0.5)}
  out = pruning.layerwise(scores, dens, m)
  np.testing.assert_array_equal(out["a"], np.arange(12).reshape(3, 4) >= 9)
  np.testing.assert_array_equal(out["b"], np.zeros((2, 3), bool))
  assert np.ndim(out["c"]) == 0 and bool(out["c"])  # never pruned: its density is ignored.


# ---------------------------------------------------------------- counts given directly


def _counts(values):
  """Counts shaped like MASKS: ``values[name]`` for the kernels, 0 for the biases."""
  return {n: {"kernel": values[n], "bias": 0} for n in NAMES}


def test_layerwise_counts_keep_exactly_the_counts():
  scores = {n: np.abs(v) for n, v in kernels(PARAMS).items()}
  counts = {"conv1": 5, "dense1": 0, "dense2": N["dense2"]}
  out = pruning.layerwise_counts(scores_lib.magnitude(PARAMS), _counts(counts), MASKS)
  assert_masks_equal(out, reference_layerwise(scores, counts))
  assert_non_prunable_untouched(out)
  # Traced counts (under jit) select the same; layerwise() is layerwise_counts of its rounding.
  traced = jax.jit(pruning.layerwise_counts)(scores_lib.magnitude(PARAMS), _counts(counts), MASKS)
  chex.assert_trees_all_equal(traced, out)
  dens = distributions.erk(PARAMS, 0.9)
  chex.assert_trees_all_equal(
      pruning.layerwise(scores_lib.magnitude(PARAMS), dens, MASKS),
      pruning.layerwise_counts(scores_lib.magnitude(PARAMS),
                               _counts({n: f32_count(dens[n]["kernel"], N[n]) for n in NAMES}),
                               MASKS))


def test_counts_never_revive_unless_asked():
  half = _magnitude(PARAMS, 0.5, MASKS)
  alive = kernels(half)
  boosted = {n: {"kernel": jnp.where(alive[n], PARAMS[n]["kernel"], 100.0),
                 "bias": PARAMS[n]["bias"]} for n in NAMES}
  scores = scores_lib.magnitude(boosted)
  counts = {"conv1": 100, "dense1": 5000, "dense2": 640}  # dense2: more than alive
  out = kernels(pruning.layerwise_counts(scores, _counts(counts), half))
  for n in NAMES:
    assert out[n].sum() == min(counts[n], alive[n].sum()) and not (out[n] & ~alive[n]).any()
  revived = kernels(pruning.layerwise_counts(scores, _counts(counts), half, revive=True))
  for n in NAMES:  # the 100.0 weights come back first
    assert revived[n].sum() == counts[n]
    assert (revived[n] & ~alive[n]).sum() == min(counts[n], (~alive[n]).sum())
  out = kernels(pruning.global_count(scores, 3000, half))
  assert sum(v.sum() for v in out.values()) == 3000
  assert not any((out[n] & ~alive[n]).any() for n in NAMES)
  out = kernels(pruning.global_count(scores, 3000, half, revive=True))
  assert sum((out[n] & ~alive[n]).sum() for n in NAMES) == 3000  # only the 100.0 weights


@pytest.mark.parametrize("k", [0, 1, 4321, N_TOTAL])
def test_global_count_keeps_the_top_k_over_all_leaves(k):
  scores = {n: np.abs(v) for n, v in kernels(PARAMS).items()}
  out = pruning.global_count(scores_lib.magnitude(PARAMS), k, MASKS)
  assert_masks_equal(out, reference_global(scores, k))
  assert_non_prunable_untouched(out)
  chex.assert_trees_all_equal(
      jax.jit(pruning.global_count)(scores_lib.magnitude(PARAMS), k, MASKS), out)


def test_global_is_global_count_of_its_rounding():
  s = 0.83
  chex.assert_trees_all_equal(
      pruning.global_(scores_lib.magnitude(PARAMS), s, MASKS),
      pruning.global_count(scores_lib.magnitude(PARAMS),
                           f32_count(np.float32(1) - np.float32(s), N_TOTAL), MASKS))


def test_bad_counts_name_the_path():
  scores = scores_lib.magnitude(PARAMS)
  good = {"conv1": 5, "dense1": 0, "dense2": 3}
  for n, bad, shown in [("dense1", -1, "=-1 is outside [0, 16384]"),
                        ("dense2", 641, "=641 is outside [0, 640]"),
                        ("conv1", 2.0, "must be one integer"),
                        ("conv1", jnp.ones(2, jnp.int32), "must be one integer")]:
    with pytest.raises(ValueError, match=re.escape(f"the count for ['{n}']['kernel']") + ".*"
                       + re.escape(shown)):
      pruning.layerwise_counts(scores, _counts({**good, n: bad}), MASKS)
  counts = _counts(good)
  del counts["dense2"]
  with pytest.raises(ValueError, match=re.escape("['dense2']['bias'] is in the masks but not in "
                                                 "the counts")):
    pruning.layerwise_counts(scores, counts, MASKS)
  for k in (-1, N_TOTAL + 1):
    with pytest.raises(ValueError, match=re.escape(f"k={k} is outside [0, {N_TOTAL}]")):
      pruning.global_count(scores, k, MASKS)
  with pytest.raises(ValueError, match="k must be one integer"):
    pruning.global_count(scores, 0.5, MASKS)


# ---------------------------------------------------------------- ties


def test_all_equal_weights_keep_first_k_by_flat_index():
  ones = jax.tree.map(jnp.ones_like, PARAMS)
  m = kernels(_magnitude(ones, 0.75, MASKS))
  for n in NAMES:
    k = f32_count(np.float32(0.25), N[n])
    np.testing.assert_array_equal(m[n].ravel(), np.arange(N[n]) < k, err_msg=n)
  g = kernels(_magnitude(ones, 0.75, MASKS, "global"))
  flat = np.concatenate([g[n].ravel() for n in NAMES])  # leaves in tree order.
  np.testing.assert_array_equal(flat, np.arange(N_TOTAL) < f32_count(np.float32(0.25), N_TOTAL))


# ---------------------------------------------------------------- random and SNIP


def test_random_erk_counts_and_keys():
  s = 0.9
  dens = distributions.erk(PARAMS, s)
  m_a = _random(jax.random.key(0), PARAMS, s)
  a = kernels(m_a)
  for n in NAMES:
    assert a[n].sum() == f32_count(dens[n]["kernel"], N[n])
  assert_non_prunable_untouched(m_a)
  b = kernels(_random(jax.random.key(1), PARAMS, s))
  again = kernels(_random(jax.random.key(0), PARAMS, s))
  for n in NAMES:
    np.testing.assert_array_equal(again[n], a[n])
    assert b[n].sum() == a[n].sum()
    assert (b[n] != a[n]).any()
  # Random pruning does not follow magnitude: it is not the magnitude mask.
  mag = kernels(_magnitude(PARAMS, s, MASKS, "erk"))
  assert (mag["dense1"] != a["dense1"]).any()


def test_random_uniform_and_prunable_rule():
  m = kernels(_random(jax.random.key(2), PARAMS, 0.5, "uniform",
                     prunable=masks_lib.rule(exclude="conv")))
  assert m["conv1"].shape == ()
  assert m["dense1"].sum() == N["dense1"] // 2 and m["dense2"].sum() == N["dense2"] // 2


def _grads(seed=1):
  rng = np.random.default_rng(seed)
  return {n: {"kernel": jnp.asarray(rng.normal(size=SHAPES[n]), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=SHAPES[n][-1]), jnp.float32)} for n in NAMES}


@pytest.mark.parametrize("s", [0.5, 0.9, 0.99])
def test_snip_keeps_top_abs_grad_times_weight(s):
  grads = _grads()
  m = _snip(PARAMS, grads, s)
  saliency = {n: np.abs(np.asarray(PARAMS[n]["kernel"]) * np.asarray(grads[n]["kernel"]))
              for n in NAMES}
  k = f32_count(np.float32(1) - np.float32(s), N_TOTAL)
  assert_masks_equal(m, reference_global(saliency, k))
  assert_non_prunable_untouched(m)
  # Not the magnitude mask: the gradient matters.
  assert any((kernels(m)[n] != kernels(_magnitude(PARAMS, s, MASKS, "global"))[n]).any()
             for n in NAMES)


# ---------------------------------------------------------------- jit / no jit


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("uniform", 0.5, False), ("erk", 0.9, False),
                            ("global", 0.7, True))
  def test_magnitude(self, distribution, s, pre_pruned):
    params, masks = PARAMS, MASKS
    if pre_pruned:  # from 0.5 to 0.7, with the pruned weights boosted: none may come back.
      masks = _magnitude(PARAMS, 0.5, MASKS)
      params = {n: {"kernel": jnp.where(masks[n]["kernel"], PARAMS[n]["kernel"], 100.0),
                    "bias": PARAMS[n]["bias"]} for n in NAMES}
    got = self.variant(lambda p, sp, m: pruning.magnitude(p, sp, m, distribution))(
        params, s, masks)
    alive = kernels(masks) if pre_pruned else {n: np.ones(SHAPES[n], bool) for n in NAMES}
    # Pruned weights score below every alive one (|w| >= 0 > -1).
    mags = {n: np.where(alive[n], np.abs(v), -1.0) for n, v in kernels(params).items()}
    if distribution == "global":
      expected = reference_global(mags, f32_count(np.float32(1) - np.float32(s), N_TOTAL))
    else:
      dens = distributions.get(distribution)(PARAMS, s)
      expected = reference_layerwise(mags, {n: f32_count(dens[n]["kernel"], N[n])
                                            for n in NAMES})
    assert_masks_equal(got, expected)
    for n in NAMES:
      assert not (kernels(got)[n] & ~alive[n]).any()
    chex.assert_trees_all_equal_structs(got, MASKS)

  @chex.variants(with_jit=True, without_jit=True)
  def test_random_and_snip(self):
    key = jax.random.key(7)
    grads = _grads()
    got_random = self.variant(pruning.random)(key, PARAMS, 0.9)
    got_snip = self.variant(pruning.snip)(PARAMS, grads, 0.9)
    random_scores = kernels(scores_lib.random(key, PARAMS))
    dens = distributions.erk(PARAMS, 0.9)
    assert_masks_equal(got_random, reference_layerwise(
        random_scores, {n: f32_count(dens[n]["kernel"], N[n]) for n in NAMES}))
    saliency = {n: np.abs(np.asarray(PARAMS[n]["kernel"]) * np.asarray(grads[n]["kernel"]))
                for n in NAMES}
    assert_masks_equal(got_snip, reference_global(
        saliency, f32_count(np.float32(1) - np.float32(0.9), N_TOTAL)))
    chex.assert_trees_all_equal_structs(got_random, MASKS)
    chex.assert_trees_all_equal_structs(got_snip, MASKS)


# ---------------------------------------------------------------- bad inputs


def test_mismatched_masks_name_path():
  m = masks_lib.ones_like(PARAMS)
  del m["dense2"]
  with pytest.raises(ValueError, match=re.escape("['dense2']")):
    pruning.magnitude(PARAMS, 0.5, m)
  m = masks_lib.ones_like(PARAMS)
  m["dense1"]["kernel"] = jnp.ones((64, 256), bool)
  with pytest.raises(ValueError, match=re.escape("['dense1']['kernel']")):
    pruning.magnitude(PARAMS, 0.5, m, "global")


def test_mismatched_densities_name_path():
  dens = distributions.uniform(PARAMS, 0.5)
  del dens["dense1"]
  with pytest.raises(ValueError, match=re.escape("['dense1']['bias']")):
    pruning.layerwise(jax.tree.map(jnp.abs, PARAMS), dens, MASKS)


def test_unknown_distribution():
  with pytest.raises(ValueError, match="bogus") as err:
    pruning.magnitude(PARAMS, 0.5, MASKS, "bogus")
  assert "'erk'" in str(err.value)
  with pytest.raises(ValueError, match="bogus"):
    pruning.random(jax.random.key(0), PARAMS, 0.5, "bogus")


@pytest.mark.parametrize("s", [-0.1, 1.0])
def test_bad_sparsity(s):
  for distribution in ("uniform", "global"):
    with pytest.raises(ValueError, match=re.escape(f"sparsity={s}")):
      pruning.magnitude(PARAMS, s, MASKS, distribution)
