"""Tests for sparsejax.pdp: PDP soft/hard masks and schedule, straight-through and N:M masks."""

import re

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import distributions
from sparsejax import masks as masks_lib
from sparsejax import pdp
from sparsejax import pruning

SETTINGS = settings(max_examples=25, deadline=None)

# Fixed shapes, so that every jitted function below compiles once; values and sparsities vary.
# Axis -2 (the input axis) of both kernels is a multiple of 2 and 4, for N:M.
SHAPES = {"conv": (3, 3, 4, 5), "dense": (8, 6)}
NAMES = list(SHAPES)  # tree order (sorted dict keys).
N_TOTAL = sum(int(np.prod(s)) for s in SHAPES.values())

# Many ties: small integers, both zeros.
TIED = st.one_of(st.integers(-3, 3).map(float), st.sampled_from([0.0, -0.0, 0.5, -2.5]))


def make_params(kernels):
  return {name: {"kernel": jnp.asarray(k, jnp.float32),
                 "bias": jnp.arange(SHAPES[name][-1], dtype=jnp.float32)}
          for name, k in zip(NAMES, kernels)}


def distinct_params(seed=0):
  """Kernels whose magnitudes are all distinct multiples of 1/64 (exact squares in float32)."""
  rng = np.random.default_rng(seed)
  mags = np.split(rng.permutation(N_TOTAL) + 1.0,
                  np.cumsum([int(np.prod(s)) for s in SHAPES.values()])[:-1])
  return make_params([m.reshape(s) * rng.choice([-1.0, 1.0], size=s) / 64
                      for m, s in zip(mags, SHAPES.values())])


@st.composite
def tied_params(draw):
  return make_params([draw(hnp.arrays(np.float32, s, elements=TIED)) for s in SHAPES.values()])


def kernel(tree, name):
  return np.asarray(tree[name]["kernel"])


def f32_kept(sparsity, n):
  """round((1 - sparsity) * n) as the library computes it, in float32."""
  return int(np.round((np.float32(1.0) - np.float32(sparsity)) * np.float32(n)))


def reference_top_k(scores, k):
  """The k largest of a flat array, ties to the lowest index."""
  order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
  keep = np.zeros(scores.size, bool)
  keep[order[:k]] = True
  return keep


def reference_nm(w, n, m):
  """Per block of m consecutive entries along axis -2: the n largest |w|, lowest index first."""
  w = np.abs(np.asarray(w, np.float64))
  moved = np.moveaxis(w, -2, -1)
  blocks = moved.reshape(-1, m)
  keep = np.stack([reference_top_k(b, n) for b in blocks]).reshape(moved.shape)
  return np.moveaxis(keep, -1, -2)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# --- one array: the threshold and the soft mask ------------------------------------------------

W = jnp.array([0.1, -0.4, 0.3, -0.2, 0.05, 0.6], jnp.float32)


@pytest.mark.parametrize("sparsity,t", [
    (0.5, 0.25),        # keeps 0.6, 0.4, 0.3; the largest pruned is 0.2.
    (1 / 3, 0.15),      # keeps 4: the smallest kept is 0.2, the largest pruned 0.1.
    (0.8, 0.5),         # keeps round(1.2) = 1: 0.6; the largest pruned is 0.4.
])
def test_soft_mask_is_the_formula_with_a_hand_computed_threshold(sparsity, t):
  tau = 1e-2
  np.testing.assert_allclose(pdp.threshold(W, sparsity), t, rtol=1e-6)
  expected = sigmoid((np.asarray(W, np.float64) ** 2 - t ** 2) / tau)
  np.testing.assert_allclose(pdp.soft_mask(W, sparsity, tau), expected, rtol=1e-5, atol=1e-7)
  # The paper's form: exp(w^2/tau) / (exp(w^2/tau) + exp(t^2/tau)).
  w2 = np.asarray(W, np.float64) ** 2
  paper = np.exp(w2 / tau) / (np.exp(w2 / tau) + np.exp(t ** 2 / tau))
  np.testing.assert_allclose(pdp.soft_mask(W, sparsity, tau), paper, rtol=1e-5, atol=1e-7)


def test_soft_mask_gradient_is_the_formula_gradient_with_t_held_constant():
  tau = 5e-2
  c = jnp.array([1.0, -2.0, 0.5, 3.0, -1.0, 0.25])
  t = pdp.threshold(W, 0.5)
  ours = jax.grad(lambda w: jnp.sum(c * w * pdp.soft_mask(w, 0.5, tau)))(W)
  written = jax.grad(lambda w: jnp.sum(c * w * jax.nn.sigmoid((w ** 2 - t ** 2) / tau)))(W)
  chex.assert_trees_all_close(ours, written, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(ours - c)).max() > 1e-2  # the mask's own term is there.
  chex.assert_trees_all_equal(jax.grad(lambda w: pdp.threshold(w, 0.5))(W), jnp.zeros(6))


def test_nothing_pruned_is_the_identity_and_nothing_kept_is_zero():
  assert float(pdp.threshold(W, 0.0)) == 0.0
  chex.assert_trees_all_equal(pdp.soft_mask(W, 0.0), jnp.ones(6))
  chex.assert_trees_all_equal(pdp.soft_mask(W, 0.05), jnp.ones(6))  # round(5.7) = 6 kept.
  params = {"k": W.reshape(2, 3)}
  assert bool(np.all(pdp.hard_masks(params, 0.0)["k"]))
  chex.assert_trees_all_equal(pdp.apply(params, 0.0), params)
  one = jnp.array([[0.7]])  # round(0.4 * 1) = 0: the only weight is pruned.
  assert float(pdp.threshold(one, 0.6)) == np.inf
  chex.assert_trees_all_equal(pdp.soft_mask(one, 0.6), jnp.zeros((1, 1)))
  assert not bool(np.any(pdp.hard_masks({"k": one}, 0.6)["k"]))
  chex.assert_tree_all_finite(jax.grad(lambda w: jnp.sum(w * pdp.soft_mask(w, 0.6)))(one))


def test_soft_mask_keeps_the_weights_dtype():
  w = W.astype(jnp.bfloat16)
  assert pdp.soft_mask(w, 0.5).dtype == jnp.bfloat16
  assert pdp.apply({"k": w.reshape(2, 3)}, 0.5)["k"].dtype == jnp.bfloat16


def test_channel_soft_mask_by_hand():
  # Column (output channel) norms 1, 2, 3; sparsity 1/3 keeps 2 channels: t = (1 + 2) / 2.
  w = jnp.array([[0.6, 0.0, 3.0], [0.8, 2.0, 0.0]])
  tau = 0.5
  mask = pdp.soft_masks({"k": w}, 1 / 3, tau, scope="channel")["k"]
  expected = sigmoid((np.array([1.0, 4.0, 9.0]) - 1.5 ** 2) / tau)
  np.testing.assert_allclose(mask, np.broadcast_to(expected, (2, 3)), rtol=1e-5)
  np.testing.assert_array_equal(pdp.hard_masks({"k": w}, 1 / 3, scope="channel")["k"],
                                [[False, True, True]] * 2)


def test_nm_soft_mask_by_hand():
  # One block of 4 along the input axis per output; 2:4 keeps the 2 largest: t between them.
  w = jnp.array([[0.1, 1.0], [-0.4, -3.0], [0.3, 2.0], [-0.2, 0.5]])
  tau = 1e-1
  mask = pdp.soft_masks({"k": w}, tau=tau, scope="nm", n=2, m=4)["k"]
  t = np.array([0.25, 1.5])
  expected = sigmoid((np.asarray(w, np.float64) ** 2 - t ** 2) / tau)
  np.testing.assert_allclose(mask, expected, rtol=1e-5, atol=1e-7)


# --- whole params: exact hard masks ------------------------------------------------------------

_hard = {scope: jax.jit(lambda p, s, scope=scope: pdp.hard_masks(p, s, scope=scope))
         for scope in ("unstructured", "channel")}
_nm = {(n, m): jax.jit(lambda p, n=n, m=m: pdp.nm_masks(p, n, m))
       for n, m in [(1, 2), (1, 4), (2, 4), (3, 4)]}


@SETTINGS
@given(tied_params(), st.floats(0.0, 0.99))
def test_unstructured_hard_masks_keep_exactly_the_target_per_layer(params, sparsity):
  hard = _hard["unstructured"](params, sparsity)
  same = pruning.magnitude(params, sparsity, masks_lib.ones_like(params))
  for name in NAMES:
    keep, w = kernel(hard, name), np.abs(kernel(params, name))
    assert keep.dtype == bool and keep.sum() == f32_kept(sparsity, w.size)
    np.testing.assert_array_equal(keep.ravel(), reference_top_k(w.ravel(), keep.sum()))
    np.testing.assert_array_equal(keep, kernel(same, name))  # pruning's count convention.
    assert hard[name]["bias"].shape == () and bool(hard[name]["bias"])
  masks_lib.validate(params, hard)


@SETTINGS
@given(tied_params(), st.floats(0.0, 0.99))
def test_channel_hard_masks_keep_exactly_the_target_channels(params, sparsity):
  hard = _hard["channel"](params, sparsity)
  for name in NAMES:
    keep, w = kernel(hard, name), kernel(params, name)
    channels = keep.reshape(-1, w.shape[-1])
    assert (channels == channels[:1]).all()  # one value per output channel.
    norms = np.sqrt(np.sum(np.square(w.astype(np.float64)).reshape(-1, w.shape[-1]), axis=0))
    assert channels[0].sum() == f32_kept(sparsity, w.shape[-1])
    np.testing.assert_array_equal(channels[0], reference_top_k(norms.astype(np.float32),
                                                               channels[0].sum()))


@SETTINGS
@given(tied_params(), st.sampled_from(sorted(_nm)))
def test_nm_masks_keep_exactly_n_of_every_m(params, nm):
  n, m = nm
  hard = _nm[nm](params)
  for name in NAMES:
    keep, w = kernel(hard, name), kernel(params, name)
    blocks = np.moveaxis(keep, -2, -1).reshape(-1, m)
    assert (blocks.sum(axis=1) == n).all()
    np.testing.assert_array_equal(keep, reference_nm(w, n, m))
  applied = masks_lib.apply(params, hard)
  assert int(masks_lib.violations(applied, hard)) == 0


@pytest.mark.parametrize("scope", pdp.SCOPES)
def test_soft_mask_at_one_half_is_the_hard_mask_without_ties(scope):
  params = distinct_params()
  soft = pdp.soft_masks(params, 0.6, 1e-4, scope=scope)
  hard = pdp.hard_masks(params, 0.6, scope=scope)
  for name in NAMES:
    np.testing.assert_array_equal(kernel(soft, name) >= 0.5, kernel(hard, name))


def test_hard_masks_are_exact_under_ties_where_one_half_is_not():
  w = jnp.array([[1.0, 2.0, 2.0, 2.0]])
  hard = pdp.hard_masks({"k": w}, 0.5)["k"]
  np.testing.assert_array_equal(hard, [[False, True, True, False]])  # lowest index wins.
  # The soft mask sees the tie at t: 0.5 for all three, so m >= 0.5 would keep 3.
  assert int(np.sum(pdp.soft_masks({"k": w}, 0.5)["k"] >= 0.5)) == 3


def test_per_layer_sparsities_as_tree_and_path_dict():
  params = distinct_params()
  tree = {"conv": {"kernel": 0.9, "bias": 0.0}, "dense": {"kernel": 0.25, "bias": 0.0}}
  paths = {"['conv']['kernel']": 0.9, "['dense']['kernel']": 0.25}
  for sparsities in (tree, paths):
    hard = pdp.hard_masks(params, sparsities)
    assert kernel(hard, "conv").sum() == f32_kept(0.9, 180)
    assert kernel(hard, "dense").sum() == f32_kept(0.25, 48)
  # A global ranking may prune a whole layer: a per-layer sparsity of 1 is allowed.
  whole = {"conv": {"kernel": 0.5, "bias": 0.0}, "dense": {"kernel": 1.0, "bias": 0.0}}
  assert not kernel(pdp.hard_masks(params, whole), "dense").any()
  chex.assert_trees_all_equal(pdp.apply(params, whole)["dense"]["kernel"], jnp.zeros((8, 6)))
  assert float(pdp.threshold(W, 1.0)) == np.inf
  with pytest.raises(ValueError, match=re.escape("no entry for the prunable leaf ['dense']")):
    pdp.hard_masks(params, {"['conv']['kernel']": 0.9})
  with pytest.raises(ValueError, match=re.escape("names ['dense']['kernal'], which is not a leaf")):
    pdp.hard_masks(params, {"['conv']['kernel']": 0.9, "['dense']['kernal']": 0.5})


def test_apply_masks_prunable_leaves_only():
  params = distinct_params()
  for scope in pdp.SCOPES:
    out = pdp.apply(params, 0.5, 1e-3, scope=scope)
    soft = pdp.soft_masks(params, 0.5, 1e-3, scope=scope)
    for name in NAMES:
      np.testing.assert_array_equal(kernel(out, name),
                                    kernel(params, name) * kernel(soft, name))
      assert out[name]["bias"] is params[name]["bias"]
  prunable = masks_lib.rule(exclude="conv")
  out = pdp.apply(params, 0.5, prunable=prunable)
  assert out["conv"]["kernel"] is params["conv"]["kernel"]


@jax.jit
def _with_and_without_thresholds(params, sparsity):
  out = {}
  for scope in pdp.SCOPES:
    t = pdp.thresholds(params, sparsity, scope=scope)
    out[scope] = [(pdp.apply(params, sparsity, 1e-2, scope=scope, thresholds=t),
                   pdp.soft_masks(params, sparsity, 1e-2, scope=scope, thresholds=t)),
                  (pdp.apply(params, sparsity, 1e-2, scope=scope),
                   pdp.soft_masks(params, sparsity, 1e-2, scope=scope))]
  return out


@SETTINGS
@given(tied_params(), st.floats(0.0, 0.99))
def test_precomputed_thresholds_give_the_same_bits(params, sparsity):
  """apply / soft_masks with thresholds(params) are exactly the ones that search themselves."""
  for scope, (given_t, searched) in _with_and_without_thresholds(params, sparsity).items():
    chex.assert_trees_all_equal(given_t, searched, custom_message=scope)


_jitted_thresholds = jax.jit(pdp.thresholds, static_argnames=("scope",))


@SETTINGS
@given(tied_params(), tied_params(), st.floats(0.0, 0.99))
def test_thresholds_searched_from_previous_ones_are_the_same(params, other, sparsity):
  """Starting each layer's search from earlier thresholds (those of the params before a step,
  or of unrelated params) changes nothing: the thresholds are exact."""
  stepped = jax.tree.map(lambda p, q: p + q / 8, params, other)
  for scope in ("unstructured", "channel"):
    for start in (params, other, stepped):
      previous = _jitted_thresholds(start, sparsity, scope=scope)
      chex.assert_trees_all_equal(
          _jitted_thresholds(stepped, sparsity, scope=scope, previous=previous),
          _jitted_thresholds(stepped, sparsity, scope=scope), custom_message=scope)


def test_previous_thresholds_that_do_not_fit_are_refused():
  params = distinct_params()
  with pytest.raises(ValueError, match=re.escape(
      "previous thresholds hold shape (3, 3, 1, 1, 5) for ['conv']['kernel']")):
    pdp.thresholds(params, 0.5, previous=pdp.thresholds(params, None, scope="nm"))


def test_thresholds_by_hand_and_their_shapes():
  params = distinct_params()
  t = pdp.thresholds(params, 0.5)
  for name in NAMES:
    mags = np.sort(np.abs(kernel(params, name)).ravel())[::-1]
    k = f32_kept(0.5, mags.size)
    assert float(t[name]["kernel"]) == np.float32(mags[k - 1] / 2 + mags[k] / 2)
    assert float(t[name]["bias"]) == 0.0  # never pruned
  assert pdp.thresholds(params, 0.0)["dense"]["kernel"] == 0.0  # nothing pruned: no search
  assert pdp.thresholds(params, 1.0 - 1e-9)["dense"]["kernel"] == np.inf
  nm = pdp.thresholds(params, None, scope="nm", n=1, m=2)
  assert nm["conv"]["kernel"].shape == (3, 3, 2, 1, 5)
  assert nm["dense"]["kernel"].shape == (4, 1, 6)
  pair = np.abs(kernel(params, "dense")).reshape(4, 2, 6)
  np.testing.assert_array_equal(nm["dense"]["kernel"][:, 0], pair.max(1) / 2 + pair.min(1) / 2)


def test_thresholds_that_do_not_fit_are_refused():
  params = distinct_params()
  t = pdp.thresholds(params, 0.5)
  with pytest.raises(ValueError, match=re.escape(
      "thresholds hold shape (3, 3, 1, 1, 5) for ['conv']['kernel'] (shape (3, 3, 4, 5)), but the "
      "'unstructured' scope has one scalar per leaf: shape ()")):
    pdp.apply(params, 0.5, thresholds=pdp.thresholds(params, None, scope="nm"))
  with pytest.raises(ValueError, match=re.escape("one per block of 4: shape (3, 3, 1, 1, 5)")):
    pdp.apply(params, None, scope="nm", thresholds=t)
  with pytest.raises(ValueError, match=re.escape("['dense']")):
    pdp.apply(params, 0.5, thresholds={"conv": t["conv"]})


# --- jit, vmap, no sort ------------------------------------------------------------------------

class TracedTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_traced_sparsity(self):
    fn = self.variant(lambda w, s: (pdp.threshold(w, s), pdp.soft_mask(w, s, 1e-2)))
    for sparsity, t in [(0.5, 0.25), (1 / 3, 0.15), (0.0, 0.0)]:
      got_t, mask = fn(W, jnp.float32(sparsity))
      np.testing.assert_allclose(got_t, t, rtol=1e-6)
      chex.assert_trees_all_close(mask, pdp.soft_mask(W, sparsity, 1e-2), rtol=1e-6)

  @chex.variants(with_jit=True)  # against the eager pdp.apply below
  def test_ramp_and_apply_traced_step(self):
    params = distinct_params()
    targets = pdp.layer_targets(params, 0.8)

    @self.variant
    def effective(p, step):
      return pdp.apply(p, pdp.ramp(step, targets, warmup=2, rate=0.25), 1e-3)

    chex.assert_trees_all_equal(effective(params, jnp.int32(1)), params)  # dense warm-up.
    for step in (2, 4, 9):
      current = pdp.ramp(step, targets, warmup=2, rate=0.25)
      chex.assert_trees_all_close(effective(params, jnp.int32(step)),
                                  pdp.apply(params, current, 1e-3), rtol=1e-6)


def test_jit_compiles_once_for_every_sparsity():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(p, s):
    return pdp.apply(p, s, 1e-3, scope="channel"), pdp.hard_masks(p, s)

  params = distinct_params()
  for s in (0.1, 0.5, 0.9):
    _, hard = fn(params, s)
    assert kernel(hard, "dense").sum() == f32_kept(s, 48)


@pytest.mark.parametrize("scope", pdp.SCOPES)
def test_vmap_over_stacked_params(scope):
  replicates = [distinct_params(seed) for seed in range(3)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *replicates)
  both = jax.jit(lambda p: (pdp.apply(p, 0.7, 1e-3, scope=scope),
                             pdp.hard_masks(p, 0.7, scope=scope)))
  soft, hard = jax.jit(jax.vmap(both))(stacked)
  for i, p in enumerate(replicates):
    one_soft, one_hard = both(p)
    chex.assert_trees_all_close(masks_lib.replicate(soft, i), one_soft, rtol=1e-6)
    for name in NAMES:
      np.testing.assert_array_equal(kernel(hard, name)[i], kernel(one_hard, name))


def _sorts(jaxpr):
  """(primitive name, operand sizes) of every sort-like equation, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("sort", "top_k", "approx_top_k", "argsort"):
      found.append((eqn.primitive.name, [int(np.prod(v.aval.shape)) for v in eqn.invars]))
    for value in eqn.params.values():
      for v in value if isinstance(value, (tuple, list)) else [value]:
        inner = getattr(v, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          found += _sorts(inner)
        elif hasattr(v, "eqns"):
          found += _sorts(v)
  return found


def test_no_sort_of_the_weights():
  """The threshold is found by counting. sparsejax.selection sorts a strided sample of at most
  ~2 * 256 keys to start its bracket, never the layer: no sort may see as many keys as the layer
  has weights, and there is no top_k."""
  w = jnp.ones((64, 64))
  params = {"k": w}
  fns = {
      "threshold": lambda w: pdp.threshold(w, 0.5),
      "soft_mask": lambda w: pdp.soft_mask(w, 0.5),
      "channel": lambda w: pdp.apply({"k": w.reshape(4, 1024)}, 0.5, scope="channel"),
      "hard": lambda w: pdp.hard_masks({"k": w}, 0.5),
      "grad": jax.grad(lambda w: jnp.sum(pdp.apply({"k": w}, 0.5)["k"])),
  }
  for name, fn in fns.items():
    sorts = _sorts(jax.make_jaxpr(fn)(w).jaxpr)
    assert all(prim == "sort" for prim, _ in sorts), (name, sorts)
    assert all(max(sizes) <= 512 for _, sizes in sorts), (name, sorts)
  for fn in (lambda p: pdp.apply(p, scope="nm"), lambda p: pdp.nm_masks(p)):
    assert _sorts(jax.make_jaxpr(fn)(params).jaxpr) == []  # N:M ranks by counting in blocks.


# --- schedule ----------------------------------------------------------------------------------

def test_ramp_values():
  targets = {"a": 0.8, "b": jnp.float32(0.5)}
  expected = {0: 0.0, 14: 0.0, 15: 0.0, 16: 0.015, 20: 0.075, 50: 0.525, 82: 1.0, 200: 1.0}
  for step, factor in expected.items():
    got = pdp.ramp(step, targets, warmup=16)
    np.testing.assert_allclose(got["a"], factor * 0.8, rtol=1e-5)
    np.testing.assert_allclose(got["b"], factor * 0.5, rtol=1e-5)
  np.testing.assert_allclose(pdp.ramp(6, 0.9, warmup=0, rate=0.1), 0.63, rtol=1e-5)
  assert pdp.DEFAULT_RATE == 0.015 and pdp.DEFAULT_TAU == 1e-4


@SETTINGS
@given(st.integers(0, 3), st.floats(0.0, 0.99))
def test_layer_targets_add_up_to_the_global_count(seed, sparsity):
  params = distinct_params(seed)
  targets = pdp.layer_targets(params, sparsity)
  kept = sum(f32_kept(targets[name]["kernel"], kernel(params, name).size) for name in NAMES)
  assert kept == f32_kept(sparsity, N_TOTAL)
  densities = distributions.global_magnitude(params, sparsity)
  for name in NAMES:
    np.testing.assert_allclose(targets[name]["kernel"], 1.0 - densities[name]["kernel"],
                               atol=1e-7)
    assert float(targets[name]["bias"]) == 0.0
  # At the end of the ramp the per-layer hard masks are the global magnitude masks.
  hard = pdp.hard_masks(params, pdp.ramp(10**6, targets, warmup=0))
  glob = pruning.magnitude(params, sparsity, masks_lib.ones_like(params), "global")
  for name in NAMES:
    np.testing.assert_array_equal(kernel(hard, name), kernel(glob, name))


# --- straight-through masks --------------------------------------------------------------------

def test_ste_forward_is_masked_and_gradient_is_dense():
  params = distinct_params()
  params["dense"]["kernel"] = params["dense"]["kernel"].at[0, 0].set(jnp.nan)
  for scope in ("unstructured", "nm"):
    masks = pdp.ste_masks(params, 0.75, scope=scope)
    out = pdp.ste_apply(params, masks)
    for name in NAMES:
      keep, value = kernel(masks, name), kernel(out, name)
      assert (value[~keep] == 0.0).all() and not np.signbit(value[~keep]).any()
      np.testing.assert_array_equal(value[keep], kernel(params, name)[keep])
      assert out[name]["bias"] is params[name]["bias"]

  clean = distinct_params()
  masks = pdp.ste_masks(clean, 0.75)
  c = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape),
                   clean)
  loss = lambda p: sum(jnp.sum(jnp.sin(x) * y) for x, y in zip(jax.tree.leaves(p),
                                                               jax.tree.leaves(c)))
  ste_grad = jax.grad(lambda p: loss(pdp.ste_apply(p, masks)))(clean)
  dense_grad = jax.grad(loss)(masks_lib.apply(clean, masks))
  chex.assert_trees_all_close(ste_grad, dense_grad, rtol=1e-6)
  pruned = ~kernel(masks, "dense")
  assert (kernel(ste_grad, "dense")[pruned] != 0.0).all()  # pruned weights get gradients.
  jit_grad = jax.jit(jax.grad(lambda p, mk: loss(pdp.ste_apply(p, mk))))(clean, masks)
  chex.assert_trees_all_close(jit_grad, dense_grad, rtol=1e-6)


def test_ste_rejects_masks_that_do_not_fit():
  params = distinct_params()
  with pytest.raises(ValueError, match="do not match the params"):
    pdp.ste_apply(params, {"dense": masks_lib.ones_like(params)["dense"]})


# --- errors ------------------------------------------------------------------------------------

def test_nm_divisibility_error_names_the_leaf_and_shape():
  params = {"a": {"kernel": jnp.ones((6, 4))}}
  for fn in (lambda: pdp.nm_masks(params, 2, 4),
             lambda: pdp.apply(params, scope="nm", n=2, m=4),
             lambda: pdp.ste_masks(params, scope="nm")):
    with pytest.raises(ValueError, match=re.escape("['a']['kernel'] has shape (6, 4)")):
      fn()
  with pytest.raises(ValueError, match=re.escape("['v'] has shape (8,)")):
    pdp.nm_masks({"v": jnp.ones(8)}, prunable="v")
  assert kernel(pdp.nm_masks({"dense": {"kernel": jnp.ones((6, 4))}}, 1, 2),
                "dense").sum() == 12


def test_parse_nm():
  assert pdp.parse_nm("2:4") == (2, 4)
  assert pdp.parse_nm(" 1 : 8 ") == (1, 8)
  for bad in ("4:2", "0:4", "2:2", "2-4", "2:4:8", "a:4", "-1:4", "", "2.0:4"):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
      pdp.parse_nm(bad)


@pytest.mark.parametrize("kwargs,message", [
    ({"tau": 0.0}, "tau=0.0 must be a positive"),
    ({"tau": -1e-4}, "tau=-0.0001 must be a positive"),
    ({"tau": float("nan")}, "tau=nan must be a positive"),
    ({"sparsities": 1.0}, "sparsities=1.0 is outside [0, 1)"),
    ({"sparsities": {"['conv']['kernel']": 0.5, "['dense']['kernel']": 1.5}},
     "the sparsity for ['dense']['kernel']=1.5 is outside [0, 1]"),
    ({"sparsities": -0.1}, "is outside [0, 1)"),
    ({"sparsities": None}, "sparsities=None"),
    ({"scope": "row"}, "scope='row' is unknown"),
    ({"scope": "nm", "n": 4, "m": 4}, "n=4, m=4: N:M sparsity needs 0 < n < m"),
    ({"scope": "nm", "n": 0}, "n=0, m=4"),
    ({"scope": "nm", "n": 2.0}, "n=2.0 must be an integer"),
])
def test_bad_arguments(kwargs, message):
  params = distinct_params()
  kwargs = {"sparsities": 0.5, **kwargs}
  with pytest.raises(ValueError, match=re.escape(message)):
    pdp.apply(params, **kwargs)


def test_bad_single_array_and_schedule_arguments():
  with pytest.raises(ValueError, match=re.escape("sparsity=1.5 is outside [0, 1]")):
    pdp.threshold(W, 1.5)
  with pytest.raises(ValueError, match=re.escape("sparsity=-0.5 is outside [0, 1]")):
    pdp.soft_mask(W, -0.5)
  with pytest.raises(ValueError, match=re.escape("tau=0.0 must be a positive")):
    pdp.soft_mask(W, 0.5, 0.0)
  with pytest.raises(ValueError, match=re.escape("warmup=-1 must be a non-negative integer")):
    pdp.ramp(3, 0.5, warmup=-1)
  with pytest.raises(ValueError, match=re.escape("rate=0.0 must be a positive")):
    pdp.ramp(3, 0.5, warmup=1, rate=0.0)
  with pytest.raises(ValueError, match=re.escape("sparsity=1.0 is outside [0, 1)")):
    pdp.layer_targets(distinct_params(), 1.0)
  with pytest.raises(ValueError, match=re.escape("['conv']['kernel'] has shape (2,); a sparsity is "
                                                "one scalar per leaf")):
    pdp.hard_masks(distinct_params(), {"conv": {"kernel": jnp.ones(2), "bias": 0.0},
                                       "dense": {"kernel": 0.5, "bias": 0.0}})


# --- channel hard masks -> structured compression ------------------------------------------------

def _mlp_apply(p, x):
  h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
  h = jax.nn.relu(h @ p["l2"]["kernel"] + p["l2"]["bias"])
  return h @ p["out"]["kernel"] + p["out"]["bias"]


def test_channel_hard_masks_fine_tune_and_compress():
  """A channel-scope PDP model is deployed with the structured tools: its hard masks name the
  kept groups, static_masks fine-tunes the group-sparse network (pruned groups stay exactly 0.0)
  and compress removes them, with the same outputs."""
  from sparsejax import transforms
  from sparsejax.structured import compress, discover
  from sparsejax.structured import groups as groups_lib
  import optax

  keys = jax.random.split(jax.random.key(0), 4)
  sizes = [(8, 6), (6, 5), (5, 3)]
  params = {name: {"kernel": jax.random.normal(k, s), "bias": jax.random.normal(k, s[1:]) * 0.1}
            for name, k, s in zip(["l1", "l2", "out"], keys, sizes)}
  x = jax.random.normal(keys[3], (16, 8))
  hidden = masks_lib.rule(exclude="out")  # the output's channels are the logits
  hard = pdp.hard_masks(params, 0.5, scope="channel", prunable=hidden)
  groups = discover.discover(_mlp_apply, params, x)
  # A group is kept where its prunable entries are; biases and consumers follow their group.
  kept_entries = jax.tree.map(lambda p, m: jnp.broadcast_to(m, p.shape).astype(p.dtype)
                              if m.ndim else jnp.zeros_like(p), params, hard)
  keep = ~groups_lib.is_zero(groups, kept_entries)
  np.testing.assert_array_equal(keep, np.concatenate(
      [np.asarray(hard[name]["kernel"]).all(axis=0) for name in ("l1", "l2")]))
  group_masks = groups_lib.masks(groups, params, keep)

  opt = transforms.static_masks(optax.sgd(0.1), group_masks)
  p = masks_lib.apply(params, group_masks)
  state = opt.init(p)
  loss = lambda p: jnp.mean(jnp.square(_mlp_apply(p, x)))
  for _ in range(3):
    updates, state = opt.update(jax.grad(loss)(p), state, p)
    p = transforms.apply_updates(p, updates, state)
    for name in ("l1", "l2"):
      pruned = ~np.asarray(hard[name]["kernel"]).all(axis=0)
      assert np.all(np.asarray(p[name]["kernel"])[:, pruned] == 0.0)
      assert np.all(np.asarray(p[name]["bias"])[pruned] == 0.0)

  small = compress.compress(groups, p)
  assert sorted(small.widths.values()) == sorted([f32_kept(0.5, 6), f32_kept(0.5, 5)])  # 3, 2
  np.testing.assert_allclose(_mlp_apply(small.params, x), _mlp_apply(p, x), rtol=1e-5, atol=1e-6)
