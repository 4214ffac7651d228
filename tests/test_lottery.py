"""Tests for sparsejax.lottery: IMP pruning levels, rewinding, controls and the resumable driver."""

import json
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from flax import nnx
from hypothesis import strategies as st

from imp_counts import HALF, off_by
from sparsejax import files
from sparsejax import lottery
from sparsejax import masks as masks_lib
from sparsejax import schedules

SETTINGS = settings(max_examples=25, deadline=None)

SHAPES = {"dense1": {"kernel": (64, 32), "bias": (32,)},
          "output": {"kernel": (32, 10), "bias": (10,)}}
SHAPES3 = {"dense1": {"kernel": (64, 32), "bias": (32,)},
           "dense2": {"kernel": (32, 32), "bias": (32,)},
           "output": {"kernel": (32, 10), "bias": (10,)}}
PRUNABLE = ("dense1", "output")  # kernels of SHAPES (the default rule leaves biases dense)


def make_params(seed, kind="normal", shapes=SHAPES):
  """Random params; ``kind="ties"`` draws few distinct magnitudes (heavy ties)."""
  rng = np.random.default_rng(seed)

  def leaf(shape):
    if kind == "ties":
      return jnp.asarray(rng.integers(-3, 4, size=shape).astype(np.float32))
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))

  return {layer: {name: leaf(shape) for name, shape in leaves.items()}
          for layer, leaves in shapes.items()}


def random_masks(seed, density, shapes=SHAPES):
  """Masks with random survivors (kernels) and scalar True for biases."""
  rng = np.random.default_rng(seed)
  return {layer: {"kernel": jnp.asarray(rng.random(leaves["kernel"]) < density),
                  "bias": jnp.array(True)}
          for layer, leaves in shapes.items()}


def _order(w, m):
  """Surviving flat indices, largest |w| first, ties by lowest index."""
  a = np.abs(np.asarray(w, np.float64)).ravel()
  idx = np.arange(a.size)
  order = np.lexsort((idx, -a))
  return order[np.asarray(m).ravel()[order]]


def ref_layerwise(w, m, frac=None, k=None):
  """The largest survivors: ``round((1 - frac) * surviving)`` of them, or ``k``."""
  m = np.asarray(m)
  if k is None:
    k = round((1.0 - frac) * int(m.sum()))
  keep = np.zeros(m.size, bool)
  keep[_order(w, m)[:k]] = True
  return keep.reshape(m.shape)


def ref_global(ws, ms, frac):
  """One ranking over the concatenation (leaves in tree order, then index)."""
  flat_w = np.concatenate([np.ravel(w) for w in ws])
  flat_m = np.concatenate([np.ravel(m) for m in ms])
  keep = ref_layerwise(flat_w, flat_m, frac)
  out, start = [], 0
  for m in ms:
    out.append(keep[start:start + np.size(m)].reshape(np.shape(m)))
    start += np.size(m)
  return out


def kept(m):
  return int(np.sum(np.asarray(m)))


def assert_biases_untouched(new_masks):
  for layer in new_masks:
    b = new_masks[layer]["bias"]
    assert np.ndim(b) == 0 and bool(b)


# ---------------------------------------------------------------------------------------------
# prune_level


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["normal", "ties"]),
       p=st.floats(0.05, 0.5), prior=st.floats(0.0, 1.0))
def test_layerwise_keeps_largest_survivors_per_leaf(seed, kind, p, prior):
  params = make_params(seed, kind)
  old = random_masks(seed + 1, prior)
  new = lottery.prune_level(params, old, p, mode="layerwise")
  assert_biases_untouched(new)
  for layer in PRUNABLE:
    w, m_old, m_new = params[layer]["kernel"], old[layer]["kernel"], new[layer]["kernel"]
    m_new = np.asarray(m_new)
    assert m_new.dtype == bool and m_new.shape == w.shape
    assert kept(m_new) == round((1 - p) * kept(m_old))
    assert not (m_new & ~np.asarray(m_old)).any()  # pruned weights never come back
    np.testing.assert_array_equal(m_new, ref_layerwise(w, m_old, p), err_msg=layer)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["normal", "ties"]),
       p=st.floats(0.05, 0.5), prior=st.floats(0.0, 1.0))
@example(seed=215008, kind="normal", p=0.3, prior=0.02)  # 0.7 * 45 is 31.5 in float32
def test_global_keeps_largest_survivors_of_pool(seed, kind, p, prior):
  params = make_params(seed, kind)
  old = random_masks(seed + 1, prior)
  new = lottery.prune_level(params, old, p, mode="global")
  assert_biases_untouched(new)
  ws = [params[layer]["kernel"] for layer in PRUNABLE]
  olds = [old[layer]["kernel"] for layer in PRUNABLE]
  news = [np.asarray(new[layer]["kernel"]) for layer in PRUNABLE]
  assert sum(map(kept, news)) == round((1 - p) * sum(map(kept, olds)))
  for m_new, m_old in zip(news, olds):
    assert not (m_new & ~np.asarray(m_old)).any()
  for layer, got, want in zip(PRUNABLE, news, ref_global(ws, olds, p)):
    np.testing.assert_array_equal(got, want, err_msg=layer)


def test_survivor_count_rounds_in_float64():
  # 45 survivors at p = 0.3: (1 - p) * 45 is 31.499... in float64 but 31.5 in float32.
  params = make_params(0)
  old = jax.tree.map(lambda m: m, masks_lib.ones_like(params))
  flat = np.zeros(64 * 32, bool)
  flat[:45] = True
  old["dense1"]["kernel"] = jnp.asarray(flat.reshape(64, 32))
  new = lottery.prune_level(params, old, 0.3, mode="layerwise")
  assert kept(np.asarray(new["dense1"]["kernel"])) == round(0.7 * 45) == 31


def test_prune_level_under_trace_needs_level():
  params = make_params(0)
  with pytest.raises(ValueError, match="pass level=L"):
    jax.jit(lambda m: lottery.prune_level(params, m, 0.2))(masks_lib.ones_like(params))
  jitted = jax.jit(lambda m: lottery.prune_level(params, m, 0.2, level=1))
  chex.assert_trees_all_equal(jitted(masks_lib.ones_like(params)),
                              lottery.prune_level(params, masks_lib.ones_like(params), 0.2,
                                                  level=1))


def test_pruned_large_weights_never_return():
  params = make_params(0)
  old = random_masks(1, 0.5)
  # The previously pruned weights are the largest of all: still they stay pruned.
  params = jax.tree.map(lambda w, m: jnp.where(m, w, 1e6) if np.ndim(m) else w, params, old)
  for mode in ("global", "layerwise"):
    new = lottery.prune_level(params, old, 0.2, mode=mode)
    for layer in PRUNABLE:
      assert not (np.asarray(new[layer]["kernel"]) & ~np.asarray(old[layer]["kernel"])).any()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), p=st.floats(0.05, 0.5), levels=st.integers(1, 6),
       mode=st.sampled_from(["global", "layerwise"]))
def test_iterated_levels_reach_densities(seed, p, levels, mode):
  masks = masks_lib.ones_like(make_params(seed))
  expected = [schedules.imp_density(level, p) for level in range(levels + 1)]
  assert expected[0] == 1.0
  sizes = {layer: int(np.prod(SHAPES[layer]["kernel"])) for layer in PRUNABLE}
  total = sum(sizes.values())
  for level in range(1, levels + 1):
    before = masks
    masks = lottery.prune_level(make_params(seed + level), masks, p, mode=mode,  # "trained"
                                level=level)
    after = {layer: kept(masks[layer]["kernel"]) for layer in PRUNABLE}
    np.testing.assert_allclose(expected[level], (1 - p) ** level)
    for layer in PRUNABLE:  # pruned weights never come back
      assert not (np.asarray(masks[layer]["kernel"]) & ~np.asarray(before[layer]["kernel"])).any()
    if mode == "layerwise":
      for layer in PRUNABLE:
        assert off_by(after[layer], sizes[layer], p, level) <= HALF, (layer, level)
    else:
      assert off_by(sum(after.values()), total, p, level) <= HALF, level
    kept_all, n = masks_lib.count(masks)
    assert n == total and int(kept_all) == sum(after.values())


def _train_perturbing(params, masks, *, level, start_step):
  """A stand-in for training: new magnitudes every level, pruned weights kept at 0."""
  rng = np.random.default_rng(level)
  moved = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), params)
  return masks_lib.apply(moved, masks), {}, params


# A few layer sizes (p and L vary freely): every new shape compiles the selection anew (seconds).
LAYER_SIZES = (7, 148, 397)


@settings(max_examples=25, deadline=None)
@example(n=148, p=0.2, output_p=0.1, levels=7, mode="layerwise")  # kept 30, not 31, before
@example(n=148, p=0.2, output_p=0.1, levels=7, mode="global")
@given(n=st.sampled_from(LAYER_SIZES), p=st.floats(0.05, 0.6),
       output_p=st.sampled_from([0.0, 0.1, 0.25]), levels=st.integers(1, 12),
       mode=st.sampled_from(["global", "layerwise"]))
def test_density_after_level_L_within_half_a_weight(n, p, output_p, levels, mode):
  """The issue's invariant: after level L a layer of n weights keeps n (1 - p)^L within one weight.

  Through the driver: layerwise every leaf is within half a weight of n (1 - p)^L (the output
  layer at its own fraction), globally the pool of the hidden layers is (the output layer,
  overridden, is pruned on its own).
  """
  rng = np.random.default_rng(n * 100 + levels)
  sizes = {"dense0": n, "dense1": 50, "output": 60}
  params = {"dense0": {"kernel": jnp.asarray(rng.normal(size=(n, 1)), jnp.float32)},
            "dense1": {"kernel": jnp.asarray(rng.normal(size=(10, 5)), jnp.float32)},
            "output": {"kernel": jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)}}
  with tempfile.TemporaryDirectory() as directory:
    results = lottery.run(_train_perturbing, params, directory, levels=levels, prune_fraction=p,
                          mode=mode, overrides={"output": output_p})
  assert [r.level for r in results] == list(range(levels + 1))
  for previous, r in zip(results, results[1:]):
    counts = {layer: kept(r.masks[layer]["kernel"]) for layer in params}
    for layer in params:
      assert not (np.asarray(r.masks[layer]["kernel"])
                  & ~np.asarray(previous.masks[layer]["kernel"])).any()
    assert off_by(counts["output"], 60, output_p, r.level) <= HALF, r.level
    if mode == "layerwise":
      for layer in ("dense0", "dense1"):
        assert off_by(counts[layer], sizes[layer], p, r.level) <= HALF, (layer, r.level)
    else:
      assert off_by(counts["dense0"] + counts["dense1"], n + 50, p, r.level) <= HALF, r.level


def test_level_below_one_raises():
  params = make_params(0)
  with pytest.raises(ValueError, match="level=0"):
    lottery.prune_level(params, masks_lib.ones_like(params), 0.2, level=0)


def test_override_layerwise_output_at_10_percent():
  params = make_params(3, "ties")
  masks = masks_lib.ones_like(params)
  for level in range(1, 4):
    old = masks
    masks = lottery.prune_level(params, old, 0.2, mode="layerwise", overrides={"output": 0.1},
                                level=level)
    got_d = np.asarray(masks["dense1"]["kernel"])
    got_o = np.asarray(masks["output"]["kernel"])
    np.testing.assert_array_equal(got_d, ref_layerwise(params["dense1"]["kernel"],
                                                       old["dense1"]["kernel"], k=kept(got_d)))
    np.testing.assert_array_equal(got_o, ref_layerwise(params["output"]["kernel"],
                                                       old["output"]["kernel"], k=kept(got_o)))
    # 2048 * 0.8^L = 1638.4, 1310.72, 1048.576 and 320 * 0.9^L = 288, 259.2, 233.28 (rounding
    # the survivors at every level would give 2048 -> 1638 -> 1310 -> 1048).
    assert (kept(got_d), kept(got_o)) == [(1638, 288), (1311, 259), (1049, 233)][level - 1]


def test_override_global_excludes_leaf_from_ranking():
  params = make_params(4, shapes=SHAPES3)
  # Output weights dwarf the others: a global ranking including them would keep them all.
  params["output"]["kernel"] = params["output"]["kernel"] * 1000.0
  old = random_masks(5, 0.7, SHAPES3)
  new = lottery.prune_level(params, old, 0.2, mode="global", overrides={"output": 0.1})
  assert_biases_untouched(new)
  pool = ["dense1", "dense2"]
  want = ref_global([params[l]["kernel"] for l in pool], [old[l]["kernel"] for l in pool], 0.2)
  for layer, w in zip(pool, want):
    np.testing.assert_array_equal(new[layer]["kernel"], w, err_msg=layer)
  assert sum(kept(new[l]["kernel"]) for l in pool) == round(
      0.8 * sum(kept(old[l]["kernel"]) for l in pool))
  np.testing.assert_array_equal(
      new["output"]["kernel"],
      ref_layerwise(params["output"]["kernel"], old["output"]["kernel"], 0.1))
  assert kept(new["output"]["kernel"]) == round(0.9 * kept(old["output"]["kernel"]))
  # Without the override the huge output layer is kept whole by the global ranking.
  plain = lottery.prune_level(params, old, 0.2, mode="global")
  np.testing.assert_array_equal(plain["output"]["kernel"], old["output"]["kernel"])
  want = ref_global([params[l]["kernel"] for l in SHAPES3], [old[l]["kernel"] for l in SHAPES3],
                    0.2)
  for layer, w in zip(SHAPES3, want):
    np.testing.assert_array_equal(plain[layer]["kernel"], w, err_msg=layer)


@pytest.mark.parametrize("mode", ["global", "layerwise"])
def test_override_zero_never_prunes_output(mode):
  masks = masks_lib.ones_like(make_params(0))
  history = []
  for level in range(1, 5):
    masks = lottery.prune_level(make_params(level), masks, 0.2, mode=mode,
                                overrides={"output": 0.0}, level=level)
    assert np.asarray(masks["output"]["kernel"]).all()
    history.append(kept(masks["dense1"]["kernel"]))
  # In global mode the pool is dense1 alone: the same counts as layerwise,
  # 2048 * 0.8^L = 1638.4, 1310.72, 1048.576, 838.8608.
  assert history == [1638, 1311, 1049, 839]


def test_layer_fractions_paths():
  masks = masks_lib.ones_like(make_params(0))
  assert lottery.layer_fractions(masks, 0.2, {"output": 0.1}) == {
      "['dense1']['kernel']": 0.2, "['output']['kernel']": 0.1}


@pytest.mark.parametrize("mode", ["global", "layerwise"])
def test_override_matching_nothing_raises_naming_it(mode):
  params = make_params(0)
  masks = masks_lib.ones_like(params)
  with pytest.raises(ValueError, match="nomatch"):
    lottery.prune_level(params, masks, 0.2, mode=mode, overrides={"nomatch": 0.1})
  with pytest.raises(ValueError, match="bias"):  # matches only non-prunable leaves
    lottery.prune_level(params, masks, 0.2, mode=mode, overrides={"bias": 0.1})


@pytest.mark.parametrize("value, shown", [(1.0, r"1\.0"), (-0.1, r"-0\.1"), (1.5, r"1\.5")])
def test_bad_prune_fraction_raises_naming_value(value, shown):
  params = make_params(0)
  masks = masks_lib.ones_like(params)
  with pytest.raises(ValueError, match=shown):
    lottery.prune_level(params, masks, value)
  with pytest.raises(ValueError, match=shown):
    lottery.prune_level(params, masks, 0.2, overrides={"output": value})


def test_bad_mode_raises():
  params = make_params(0)
  with pytest.raises(ValueError, match="bogus"):
    lottery.prune_level(params, masks_lib.ones_like(params), 0.2, mode="bogus")


def test_mismatched_masks_raise():
  params = make_params(0)
  with pytest.raises(ValueError, match="dense2"):
    lottery.prune_level(params, masks_lib.ones_like(make_params(0, shapes=SHAPES3)), 0.2)


# ---------------------------------------------------------------------------------------------
# rewind and controls


class RewindTest(chex.TestCase):

  def test_rewind_is_theta_times_mask_exactly(self):
    theta = make_params(7)
    masks = random_masks(8, 0.3)
    # Finite weights: theta * mask (with == : the product gives -0.0 for negative pruned weights).
    chex.assert_trees_all_equal(
        lottery.rewind(theta, masks),
        jax.tree.map(lambda t, m: np.asarray(t) * np.asarray(m, np.float32), theta, masks))
    # Pruned NaN / inf / negative weights still become exactly +0.0.
    k = np.asarray(theta["dense1"]["kernel"]).copy()
    m = np.asarray(masks["dense1"]["kernel"])
    pruned = np.argwhere(~m)
    k[tuple(pruned[0])], k[tuple(pruned[1])], k[tuple(pruned[2])] = np.nan, np.inf, -5.0
    theta["dense1"]["kernel"] = jnp.asarray(k)
    out = lottery.rewind(theta, masks)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, theta)
    for layer in PRUNABLE:
      got = np.asarray(out[layer]["kernel"])
      w = np.asarray(theta[layer]["kernel"])
      m = np.asarray(masks[layer]["kernel"])
      assert (got[~m] == 0.0).all() and not np.signbit(got[~m]).any()
      np.testing.assert_array_equal(got[m].view(np.uint32), w[m].view(np.uint32))
      # The biases (not prunable) are passed through bitwise.
      np.testing.assert_array_equal(np.asarray(out[layer]["bias"]).view(np.uint32),
                                    np.asarray(theta[layer]["bias"]).view(np.uint32))


def _per_leaf(masks):
  return {layer: kept(masks[layer]["kernel"]) for layer in PRUNABLE}


@pytest.mark.parametrize("shuffle", [lottery.shuffle_layerwise, lottery.shuffle_global])
def test_shuffles_deterministic_per_key_and_vary_across_keys(shuffle):
  masks = lottery.prune_level(make_params(0), masks_lib.ones_like(make_params(0)), 0.5,
                              mode="layerwise")
  a = shuffle(jax.random.key(0), masks)
  b = shuffle(jax.random.key(0), masks)
  c = shuffle(jax.random.key(1), masks)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a["dense1"]["kernel"], c["dense1"]["kernel"])
  for out in (a, c):
    chex.assert_trees_all_equal_shapes_and_dtypes(out, masks)
    assert_biases_untouched(out)
    assert not np.array_equal(out["dense1"]["kernel"], masks["dense1"]["kernel"])
    assert int(masks_lib.count(out)[0]) == int(masks_lib.count(masks)[0])


def test_shuffle_layerwise_keeps_each_leaf_count():
  masks = lottery.prune_level(make_params(1), masks_lib.ones_like(make_params(1)), 0.4,
                              mode="global")
  for seed in range(3):
    out = lottery.shuffle_layerwise(jax.random.key(seed), masks)
    assert _per_leaf(out) == _per_leaf(masks)
    for layer in PRUNABLE:
      assert not np.array_equal(out[layer]["kernel"], masks[layer]["kernel"])


def test_shuffle_global_keeps_total_and_mixes_leaves():
  # All of dense1 kept, all of output pruned: a global shuffle moves weights between leaves.
  masks = {"dense1": {"kernel": jnp.ones((64, 32), bool), "bias": jnp.array(True)},
           "output": {"kernel": jnp.zeros((32, 10), bool), "bias": jnp.array(True)}}
  out = lottery.shuffle_global(jax.random.key(3), masks)
  assert int(masks_lib.count(out)[0]) == 2048
  assert kept(out["output"]["kernel"]) > 0
  assert_biases_untouched(out)


# ---------------------------------------------------------------------------------------------
# The resumable driver, with a toy training run: gradient descent on a fixed least-squares problem.

STEPS = 6
REWIND = 2
_rng = np.random.default_rng(123)
_X = jnp.asarray(_rng.normal(size=(128, 64)).astype(np.float32))
_Y = jnp.asarray(_rng.normal(size=(128, 10)).astype(np.float32))


def _loss(params):
  h = jnp.tanh(_X @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  out = h @ params["output"]["kernel"] + params["output"]["bias"]
  return jnp.mean((out - _Y) ** 2)


@jax.jit
def _step(params, masks):
  grads = jax.grad(_loss)(params)
  params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
  return masks_lib.apply(params, masks)


class Trainer:
  """``train`` for lottery.run: records its calls and the weights at the rewind step."""

  def __init__(self, fail_at_level=None, metric_type=float):
    self.calls = []
    self.theta_k = None
    self.fail_at_level = fail_at_level
    self.metric_type = metric_type

  def __call__(self, params, masks, *, level, start_step):
    self.calls.append((level, start_step))
    if level == self.fail_at_level:
      self.fail_at_level = None  # only the first attempt
      raise RuntimeError(f"killed at level {level}")
    theta_k = None
    for step in range(start_step, STEPS):
      if step == REWIND and start_step == 0:
        theta_k = params
        self.theta_k = params
      params = _step(params, masks)
    return params, {"loss": self.metric_type(_loss(params))}, theta_k


def init_params():
  return jax.tree.map(lambda x: x * 0.2, make_params(11))


def run(trainer, directory, **kwargs):
  kwargs = {"levels": 3, "prune_fraction": 0.2, "rewind_step": REWIND, **kwargs}
  return lottery.run(trainer, init_params(), str(directory), **kwargs)


def assert_levels_equal(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert a.level == b.level
    chex.assert_trees_all_equal(a.masks, b.masks)
    chex.assert_trees_all_equal(a.start_params, b.start_params)
    chex.assert_trees_all_equal(a.final_params, b.final_params)
    assert a.metrics == b.metrics


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  trainer = Trainer()
  return trainer, run(trainer, tmp_path_factory.mktemp("reference"))


def test_run_rewinds_every_level_to_theta_k(reference_run):
  trainer, results = reference_run
  assert [r.level for r in results] == [0, 1, 2, 3]
  assert trainer.calls == [(0, 0), (1, REWIND), (2, REWIND), (3, REWIND)]
  chex.assert_trees_all_equal(results[0].start_params, init_params())
  assert all(np.asarray(m).all() for m in jax.tree.leaves(results[0].masks))
  theta_k = trainer.theta_k
  for r in results[1:]:
    want = jax.tree.map(lambda t, m: np.where(np.asarray(m), np.asarray(t), np.float32(0.0)),
                        theta_k, r.masks)
    chex.assert_trees_all_equal(r.start_params, want)
    assert_biases_untouched(r.masks)
    # Pruned weights stay pruned after training (the train fn applies the masks).
    for layer in PRUNABLE:
      m = np.asarray(r.masks[layer]["kernel"])
      assert (np.asarray(r.final_params[layer]["kernel"])[~m] == 0.0).all()


def test_run_masks_follow_prune_level_and_densities(reference_run):
  _, results = reference_run
  expected = [schedules.imp_density(level, 0.2) for level in range(4)]
  for prev, r in zip(results, results[1:]):
    chex.assert_trees_all_equal(
        r.masks, lottery.prune_level(prev.final_params, prev.masks, 0.2, mode="global",
                                     level=r.level))
  for r in results:
    kept_all, total = masks_lib.count(r.masks)
    assert total == 2048 + 320
    assert r.metrics["density"] == int(kept_all) / total
    assert abs(int(kept_all) - expected[r.level] * total) <= HALF
    assert isinstance(r.metrics["loss"], float)
  # 2368 * 0.8^L = 1894.4, 1515.52, 1212.416.
  assert [int(masks_lib.count(r.masks)[0]) for r in results] == [2368, 1894, 1516, 1212]


def test_run_writes_levels(reference_run, tmp_path):
  trainer = Trainer()
  results = run(trainer, tmp_path, levels=1)
  chex.assert_trees_all_equal(files.load_arrays(tmp_path / "rewind_params.npz", init_params()),
                              trainer.theta_k)
  for r in results:
    d = tmp_path / f"level_{r.level}"
    for name in ("masks", "start_params", "final_params"):
      # Path-keyed arrays, every leaf (the biases' scalar True masks too).
      with np.load(d / f"{name}.npz") as f:
        assert sorted(f.files) == sorted(
            jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(r.masks))
        np.testing.assert_array_equal(f["['dense1']['kernel']"],
                                      getattr(r, name)["dense1"]["kernel"])
    assert np.load(d / "masks.npz")["['output']['kernel']"].dtype == bool
    with open(d / "level.json") as f:
      assert json.load(f) == {"level": r.level, "metrics": r.metrics}
  assert files.read_json(tmp_path / "imp_settings.json") == {
      "mode": "global", "overrides": {}, "prune_fraction": 0.2, "rewind_step": REWIND}
  assert sorted(os.listdir(tmp_path)) == ["imp_settings.json", "level_0", "level_1",
                                          "rewind_params.npz"]  # no temp files left


def test_run_on_a_process_that_does_not_write(reference_run, tmp_path, monkeypatch):
  """Every process of a multi-host run trains; only process 0 writes, the others need no file."""
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  got = run(Trainer(), tmp_path)
  assert_levels_equal(got, reference_run[1])
  assert not [f for _, _, names in os.walk(tmp_path) for f in names]


def test_resume_after_crash_matches_uninterrupted_run(reference_run, tmp_path):
  _, want = reference_run
  crashing = Trainer(fail_at_level=2)
  with pytest.raises(RuntimeError, match="level 2"):
    run(crashing, tmp_path)
  assert crashing.calls == [(0, 0), (1, REWIND), (2, REWIND)]
  assert not os.path.exists(tmp_path / "level_2" / "level.json")

  resumed = Trainer()
  seen = []
  got = run(resumed, tmp_path, on_level=seen.append)
  assert resumed.calls == [(2, REWIND), (3, REWIND)]  # levels 0-1 are loaded, not retrained
  assert [lvl.level for lvl in seen] == [0, 1, 2, 3]
  assert_levels_equal(seen, got)
  assert_levels_equal(got, want)

  # A finished directory is only loaded.
  again = Trainer()
  seen = []
  assert_levels_equal(run(again, tmp_path, on_level=seen.append), want)
  assert again.calls == [] and [lvl.level for lvl in seen] == [0, 1, 2, 3]


def test_on_level_called_once_per_level(tmp_path):
  seen = []
  results = run(Trainer(), tmp_path, on_level=lambda lvl: seen.append(lvl.level))
  assert seen == [0, 1, 2, 3] == [r.level for r in results]


def test_run_layerwise_with_override(tmp_path):
  results = run(Trainer(), tmp_path, levels=2, mode="layerwise", overrides={"output": 0.1})
  assert [kept(r.masks["dense1"]["kernel"]) for r in results] == [2048, 1638, 1311]
  assert [kept(r.masks["output"]["kernel"]) for r in results] == [320, 288, 259]


def test_run_jax_scalar_metrics_are_stored(tmp_path):
  first = run(Trainer(fail_at_level=2, metric_type=jnp.float32), tmp_path / "a", levels=1)
  again = run(Trainer(metric_type=jnp.float32), tmp_path / "a", levels=1)
  assert_levels_equal(again, first)
  for r in first:
    assert isinstance(r.metrics["loss"], float)


def test_none_rewind_params_at_level_zero_raises(tmp_path):
  def train(params, masks, *, level, start_step):
    return params, {}, None

  with pytest.raises(ValueError, match="rewind"):
    lottery.run(train, init_params(), str(tmp_path), levels=2)
  assert not os.path.exists(tmp_path / "level_0" / "level.json")


def test_bad_arguments_raise_before_training(tmp_path):
  trainer = Trainer()
  with pytest.raises(ValueError, match="bogus"):
    run(trainer, tmp_path, mode="bogus")
  with pytest.raises(ValueError, match="nomatch"):
    run(trainer, tmp_path, overrides={"nomatch": 0.1})
  with pytest.raises(ValueError, match=r"1\.0"):
    run(trainer, tmp_path, prune_fraction=1.0)
  with pytest.raises(ValueError, match="levels"):
    run(trainer, tmp_path, levels=-1)
  with pytest.raises(ValueError, match="rewind_step"):
    run(trainer, tmp_path, rewind_step=-1)
  assert trainer.calls == []


def _train_any(params, masks, *, level, start_step):
  return params, {"level": level}, params


@pytest.mark.parametrize("other", [
    SHAPES3,  # more leaves
    {"dense1": {"kernel": (64, 16), "bias": (16,)},  # same leaves, other shapes
     "output": {"kernel": (16, 10), "bias": (10,)}},
])
def test_directory_of_another_model_raises(tmp_path, other):
  lottery.run(_train_any, make_params(0), str(tmp_path), levels=1)
  with pytest.raises(ValueError, match="another model"):
    lottery.run(_train_any, make_params(0, shapes=other), str(tmp_path), levels=1)


def test_resuming_with_other_settings_is_refused(tmp_path):
  params = {"dense": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4)}}

  def train(p, m, *, level, start_step):
    return p, {}, p

  lottery.run(train, params, str(tmp_path), levels=1, prune_fraction=0.2)
  with pytest.raises(ValueError, match="prune_fraction"):
    lottery.run(train, params, str(tmp_path), levels=1, prune_fraction=0.5)


# ---------------------------------------------------------------------------------------------
# Flax NNX models train in place: views of their state.


class _BNNet(nnx.Module):

  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.output = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.output(jax.nn.relu(self.bn(self.dense(x))))


def _nnx_setup():
  model = _BNNet(nnx.Rngs(0))
  kx, ky = jax.random.split(jax.random.key(1))
  x, y = jax.random.normal(kx, (32, 6)), jax.random.randint(ky, (32,), 0, 3)
  loss = lambda m: -jnp.mean(jax.nn.log_softmax(m(x))[jnp.arange(32), y])
  return model, loss


def _nnx_train(model, loss, *, copy_rewind: bool, end: int = 6, rewind_at: int = 2):
  """A user's NNX loop; takes the weights at ``rewind_at`` as a copy or (the trap) as a view."""

  def train(state, masks, *, level, start_step):
    nnx.update(model, state)
    rewind = None
    for step in range(start_step, end):
      if step == rewind_at:
        view = nnx.state(model)
        rewind = jax.tree.map(jnp.copy, view) if copy_rewind else view
      grads = nnx.grad(loss)(model)
      params = nnx.state(model, nnx.Param)
      nnx.update(model, masks_lib.apply(jax.tree.map(lambda p, g: p - 0.1 * g, params, grads),
                                        masks.filter(nnx.Param)))
    return nnx.state(model), {"loss": float(loss(model))}, rewind

  return train


def test_a_live_view_as_rewind_weights_is_refused(tmp_path):
  model, loss = _nnx_setup()
  with pytest.raises(ValueError, match=r"live view .* jax.tree.map\(jnp.copy"):
    lottery.run(_nnx_train(model, loss, copy_rewind=False), nnx.state(model), str(tmp_path),
                levels=1, rewind_step=2)
  assert not os.path.exists(tmp_path / "level_0" / "level.json")


def test_views_given_to_run_are_copied_and_batchnorm_statistics_rewind(tmp_path):
  """theta_0 passed as nnx.state(model) stays theta_0 although the model trains in place; the
  BatchNorm running statistics travel with the weights (rewound, never pruned)."""
  model, loss = _nnx_setup()
  theta_0 = jax.tree.map(np.array, nnx.state(model))
  levels = lottery.run(_nnx_train(model, loss, copy_rewind=True), nnx.state(model),
                       str(tmp_path), levels=2, rewind_step=2, prune_fraction=0.5)
  for a, b in zip(jax.tree.leaves(levels[0].start_params), jax.tree.leaves(theta_0)):
    np.testing.assert_array_equal(a, b)
  theta_k = files.load_arrays(str(tmp_path / "rewind_params.npz"), nnx.state(model))
  stats = lambda tree: jax.tree.leaves(tree.filter(nnx.BatchStat))
  assert any(not np.array_equal(a, b) for a, b in zip(stats(theta_k), stats(theta_0)))
  for level in levels[1:]:
    for a, b in zip(stats(level.start_params), stats(theta_k)):
      np.testing.assert_array_equal(a, b)  # rewound to theta_k's statistics
    assert all(np.ndim(m) == 0 for m in stats(level.masks))  # never pruned
    assert int(masks_lib.violations(level.final_params, level.masks)) == 0
  # Each level's final weights are its own, not the model's latest.
  assert not np.array_equal(levels[0].final_params["dense"]["kernel"][...],
                            levels[2].final_params["dense"]["kernel"][...])


@pytest.mark.parametrize("damaged", ["level.json", "final_params.npz", "masks.npz"])
def test_a_damaged_finished_level_is_trained_again(tmp_path, damaged):
  """A bad disk or a copy cut short in a finished level: a warning, the level trains again, and
  the run ends as an undamaged one."""
  params = {"dense": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4)}}
  calls = []

  def train(p, m, *, level, start_step):
    calls.append(level)
    return jax.tree.map(lambda x: x * 1.5, p), {"level": level}, p

  first = lottery.run(train, params, str(tmp_path), levels=2)
  path = tmp_path / "level_1" / damaged
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  calls.clear()
  with pytest.warns(UserWarning, match="level 1 .* is damaged"):
    again = lottery.run(train, params, str(tmp_path), levels=2)
  assert calls == [1]  # level 1 again; level 2 (from the same level 1) is kept
  for a, b in zip(first, again):
    chex.assert_trees_all_equal(a.masks, b.masks)
    chex.assert_trees_all_equal(a.final_params, b.final_params)
