"""Gradual magnitude N:M pruning: sparsejax.nm (block top-k by counting),
sparsejax.transforms.nm_pruning, and the runner's ``magnitude`` sparsifier with
``pruning_scope='nm'`` (a tiny LeNet-300-100 training on digits)."""

import os
import pathlib
import textwrap

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import config as config_lib
from experiments import experiment
from experiments import setup as setup_lib
from experiments.parsing import ConfigError
from experiments.registry import SPARSIFIERS
from sparsejax import masks as masks_lib
from sparsejax import nm, pdp, schedules, transforms
from test_runner import digits_config

SETTINGS = settings(max_examples=30, deadline=None)

# Fixed shapes, so that each jitted function compiles once; axis -2 is a multiple of 2 and 4.
SCORE_SHAPE = (2, 8, 3)
SHAPES = {"conv": (3, 3, 4, 5), "dense": (8, 6)}
# Many ties: small integers, both zeros.
TIED = st.one_of(st.integers(-3, 3).map(float), st.sampled_from([0.0, -0.0, 0.5, -2.5]))


def reference_block_top_k(scores, k, m, eligible=None):
  """Per block of m along axis -2: the k highest eligible scores, ties to the lowest index."""
  scores = np.moveaxis(np.asarray(scores, np.float64), -2, -1)
  eligible = (np.ones(scores.shape, bool) if eligible is None
              else np.moveaxis(np.asarray(eligible), -2, -1))
  blocks, ok = scores.reshape(-1, m), eligible.reshape(-1, m)
  keep = np.zeros(blocks.shape, bool)
  for b in range(len(blocks)):
    order = [i for i in np.lexsort((np.arange(m), -blocks[b])) if ok[b, i]]
    keep[b, order[:k]] = True
  return np.moveaxis(keep.reshape(scores.shape), -1, -2)


def counts(mask, m):
  return np.asarray(nm.block_counts(mask, m))


# --- sparsejax.nm ------------------------------------------------------------------------------

_block_top_k = {m: jax.jit(lambda s, k, e, m=m: nm.block_top_k(s, k, m, e)) for m in (2, 4)}


@SETTINGS
@given(hnp.arrays(np.float32, SCORE_SHAPE, elements=TIED), st.sampled_from([2, 4]),
       st.integers(0, 5), st.one_of(st.none(), hnp.arrays(bool, SCORE_SHAPE)))
def test_block_top_k_keeps_the_largest_min_k_eligible_per_block(scores, m, k, eligible):
  full = np.ones(SCORE_SHAPE, bool) if eligible is None else eligible
  keep = np.asarray(_block_top_k[m](scores, jnp.int32(k), full))  # k traced
  assert keep.dtype == bool and keep.shape == SCORE_SHAPE
  np.testing.assert_array_equal(counts(keep, m), np.minimum(k, counts(full, m)))
  np.testing.assert_array_equal(keep, reference_block_top_k(scores, k, m, eligible))
  if eligible is None:
    np.testing.assert_array_equal(np.asarray(nm.block_top_k(scores, k, m)), keep)


def test_block_top_k_ties_go_to_the_lowest_index():
  scores = np.zeros((8, 1), np.float32)
  scores[5] = -0.0  # -0.0 ties with 0.0
  np.testing.assert_array_equal(np.asarray(nm.block_top_k(scores, 2, 4))[:, 0],
                                [1, 1, 0, 0, 1, 1, 0, 0])
  eligible = np.array([[0], [1], [0], [1], [1], [0], [1], [1]], bool)
  np.testing.assert_array_equal(np.asarray(nm.block_top_k(scores, 1, 4, eligible))[:, 0],
                                [0, 1, 0, 0, 1, 0, 0, 0])


def test_block_top_k_under_vmap():
  stack = jax.random.normal(jax.random.key(0), (3, 8, 2))
  batched = jax.vmap(lambda s: nm.block_top_k(s, 3, 4))(stack)
  for i in range(3):
    np.testing.assert_array_equal(batched[i], reference_block_top_k(stack[i], 3, 4))


@pytest.mark.parametrize("shape,match", [((8,), r"scores has shape \(8,\)"),
                                         ((3, 6, 2), r"scores has shape \(3, 6, 2\).*length 6")])
def test_block_top_k_names_the_leaf_and_its_shape(shape, match):
  with pytest.raises(ValueError, match=match):
    nm.block_top_k(jnp.zeros(shape), 2, 4)


@pytest.mark.parametrize("k,m", [(-1, 4), (1.5, 4), (jnp.ones(2, jnp.int32), 4), (2, 0),
                                 (2, True)])
def test_block_top_k_refuses_bad_k_and_m(k, m):
  with pytest.raises(ValueError, match="k=" if m == 4 else "m="):
    nm.block_top_k(jnp.zeros((4, 2)), k, m)


def test_kept_per_block_clips_to_n_and_m():
  ks = [int(nm.kept_per_block(s, 2, 4)) for s in (0.0, 0.1, 0.2, 0.3, 0.5, 0.9, 1.0)]
  assert ks == [4, 4, 3, 3, 2, 2, 2]
  assert int(jax.jit(lambda s: nm.kept_per_block(s, 1, 4))(0.75)) == 1


@pytest.mark.parametrize("n,m", [(0, 4), (4, 4), (5, 4), (2.0, 4), (True, 4), (2, "4")])
def test_check_nm_names_the_value(n, m):
  with pytest.raises(ValueError, match=r"n=|m="):
    nm.check_nm(n, m)


def test_misfit_paths_read_shapes_only():
  shapes = {"a": jax.ShapeDtypeStruct((3, 3, 1, 8), jnp.float32),
            "b": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
  assert nm.misfit_paths(shapes, 4) == ["['a']"]
  assert nm.misfit_paths(shapes, 4, masks_lib.rule(exclude="a")) == []
  with pytest.raises(ValueError, match=r"\['a'\] has shape \(3, 3, 1, 8\)"):
    nm.check_params(shapes, 4)


def test_docstring_example_runs():
  code = textwrap.dedent(nm.__doc__.split("::\n", 1)[1])
  exec(compile(code, "sparsejax/nm.py docstring", "exec"), {})


# --- transforms.nm_pruning ---------------------------------------------------------------------

def make_params(seed=0, tied=False):
  keys = jax.random.split(jax.random.key(seed), len(SHAPES))
  out = {}
  for key, (name, shape) in zip(keys, SHAPES.items()):
    w = jax.random.normal(key, shape)
    if tied:
      w = jnp.round(w)  # many ties, zeros included
    out[name] = {"kernel": w, "bias": jnp.full(shape[-1:], 0.1, jnp.float32)}
  return out


def random_grads(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def kernel_masks(masks):
  return {name: np.asarray(masks[name]["kernel"]) for name in SHAPES}


def expected_k(schedule, step, n, m):
  s = np.float32(schedule(step))
  return int(np.clip(np.round((np.float32(1.0) - s) * np.float32(m)), n, m))


class NMPruningTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradual_pattern_follows_k_t_and_ends_n_of_m(self):
    n, m = 1, 4
    schedule = schedules.polynomial(1 - n / m, begin_step=1, end_step=7, frequency=2)
    opt = transforms.nm_pruning(optax.sgd(0.1, momentum=0.9), n, m, schedule)

    @self.variant
    def step(params, state, key):
      updates, state = opt.update(random_grads(key, params), state, params)
      return transforms.apply_updates(params, updates, state), state

    params = make_params()
    state = opt.init(params)
    old = kernel_masks(transforms.get_masks(state))
    seen_k = []
    for t in range(9):
      before = {name: np.abs(np.asarray(params[name]["kernel"])) for name in SHAPES}
      params, state = step(params, state, jax.random.key(t))
      new = kernel_masks(transforms.get_masks(state))
      for name in SHAPES:
        assert new[name].shape == SHAPES[name]
        assert not (new[name] & ~old[name]).any(), (t, name)  # masks only shrink
        np.testing.assert_array_equal(np.asarray(params[name]["kernel"])[~new[name]], 0.0)
        if bool(schedule.is_update_step(t)):
          k = expected_k(schedule, t, n, m)
          np.testing.assert_array_equal(counts(new[name], m), k)
          # The k largest magnitudes, before the step's update, among those still kept.
          np.testing.assert_array_equal(new[name],
                                        reference_block_top_k(before[name], k, m, old[name]))
        else:
          np.testing.assert_array_equal(new[name], old[name])
      if bool(schedule.is_update_step(t)):
        seen_k.append(expected_k(schedule, t, n, m))
      old = new
    assert seen_k[0] > 1 and seen_k[-1] == n and len(set(seen_k)) >= 3  # m:m -> ... -> n:m
    for name in SHAPES:
      np.testing.assert_array_equal(counts(old[name], m), n)
    # Momentum of pruned weights was zeroed: nothing brings them back.
    trace = optax.tree_utils.tree_get(state, "trace")
    for name in SHAPES:
      np.testing.assert_array_equal(np.asarray(trace[name]["kernel"])[~old[name]], 0.0)

  def test_jit_traces_once_for_every_step(self):
    schedule = schedules.polynomial(0.5, begin_step=1, end_step=5, frequency=2)
    opt = transforms.nm_pruning(optax.adamw(1e-2, weight_decay=0.1), 2, 4, schedule)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, key):
      return _apply(opt, params, state, key)

    params = make_params(3)
    state = opt.init(params)
    for t in range(7):  # the step counter lives in the state: traced
      params, state = step(params, state, jax.random.key(t))
    for name, mask in kernel_masks(transforms.get_masks(state)).items():
      np.testing.assert_array_equal(counts(mask, 4), 2)
      np.testing.assert_array_equal(np.asarray(params[name]["kernel"])[~mask], 0.0)

  def test_one_shot_equals_pdp_nm_masks(self):
    params = make_params(1, tied=True)
    opt = transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedules.one_shot(0.5, 0))
    state = opt.init(params)
    _, state = opt.update(random_grads(jax.random.key(0), params), state, params)
    chex.assert_trees_all_equal(transforms.get_masks(state), pdp.nm_masks(params, 2, 4))

  def test_static_masks_with_pdp_nm_masks(self):
    params = make_params(2)
    masks = pdp.nm_masks(params, 2, 4)
    opt = transforms.static_masks(optax.adam(1e-2), masks)
    state = opt.init(params)
    step = jax.jit(lambda p, s, k: _apply(opt, p, s, k))
    for t in range(3):
      params, state = step(params, state, jax.random.key(t))
    held = kernel_masks(transforms.get_masks(state))
    for name in SHAPES:
      np.testing.assert_array_equal(counts(held[name], 4), 2)
      np.testing.assert_array_equal(np.asarray(params[name]["kernel"])[~held[name]], 0.0)
      assert np.count_nonzero(np.asarray(params[name]["kernel"])[held[name]]) > 0

  def test_accumulation_inside_multisteps(self):
    schedule = schedules.polynomial(0.5, begin_step=0, end_step=4, frequency=2)
    opt = optax.MultiSteps(
        transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedule, accumulation_steps=2), 2)
    step = jax.jit(lambda p, s, k: _apply(opt, p, s, k))
    params = {"dense": make_params()["dense"]}
    state = opt.init(params)
    for t in range(6):
      params, state = step(params, state, jax.random.key(t))
    mask = np.asarray(transforms.get_masks(state)["dense"]["kernel"])
    np.testing.assert_array_equal(counts(mask, 4), 2)
    np.testing.assert_array_equal(np.asarray(params["dense"]["kernel"])[~mask], 0.0)

  def test_refuses_a_schedule_not_ending_at_1_minus_n_over_m(self):
    with self.assertRaisesRegex(ValueError, r"final_sparsity=0\.9.*1 - n/m = 0\.5"):
      transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedules.polynomial(0.9, 0, 10, 1))
    with self.assertRaisesRegex(ValueError, r"sparsity=0\.75"):
      transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedules.one_shot(0.75))
    transforms.nm_pruning(optax.sgd(0.1), 1, 3, schedules.polynomial(1 - 1 / 3, 0, 10, 1))

  def test_refuses_bad_n_m_and_misfit_leaves(self):
    schedule = schedules.polynomial(0.5, 0, 10, 1)
    for n, m in [(0, 4), (4, 4), (2.0, 4)]:
      with self.assertRaisesRegex(ValueError, r"n=|m="):
        transforms.nm_pruning(optax.sgd(0.1), n, m, schedule)
    with self.assertRaises(TypeError):
      transforms.nm_pruning(optax.sgd(0.1), 2, 4, lambda step: 0.5)
    opt = transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedule)
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 8))}, "dense": {"kernel": jnp.ones((8, 4))}}
    with self.assertRaisesRegex(ValueError, r"\['conv'\]\['kernel'\] has shape \(3, 3, 1, 8\)"):
      opt.init(params)
    opt = transforms.nm_pruning(optax.sgd(0.1), 2, 4, schedule, prunable="dense")
    self.assertEqual(jnp.shape(transforms.get_masks(opt.init(params))["conv"]["kernel"]), ())


def _apply(opt, params, state, key):
  updates, state = opt.update(random_grads(key, params), state, params)
  return transforms.apply_updates(params, updates, state), state


# --- the runner: magnitude with pruning_scope='nm' ---------------------------------------------

KERNELS = {"['dense1']['kernel']": (64, 300), "['dense2']['kernel']": (300, 100),
           "['output']['kernel']": (100, 10)}


def nm_config(**overrides):
  """40 steps of LeNet-300-100 on digits, 2:4 reached at step 20 (masks updated every 5)."""
  return digits_config(**{
      "steps": "40it", "eval_every": "40it", "log_every": "40it", "checkpoint_every": "40it",
      "sparsifier": "magnitude", "pruning_scope": "nm", "nm": "2:4", "pruning_begin": "0it",
      "pruning_end": "20it", "pruning_frequency": "5it", **overrides})


def test_runner_magnitude_nm_ends_with_2_of_4_and_exact_zeros(tmp_path):
  summary = experiment.run(nm_config(), str(tmp_path))
  with np.load(tmp_path / "masks.npz") as npz:
    masks = {k: npz[k] for k in npz.files if npz[k].ndim > 0}
  assert sorted(masks) == sorted(KERNELS)
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(pathlib.Path(tmp_path) / "checkpoints" / "40" / "state"))
  params = {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state["params"])}
  for path, (n_in, n_out) in KERNELS.items():
    assert masks[path].shape == (n_in, n_out)
    np.testing.assert_array_equal(counts(masks[path], 4), 2)
    np.testing.assert_array_equal(params[path][~masks[path]], 0.0)
    assert np.count_nonzero(params[path][masks[path]]) > 0.99 * masks[path].sum()
  assert summary["density"] == 0.5
  assert summary["test_accuracy"] > 0.2  # chance is 0.1: a few steps of training


def test_nm_key_is_shared_with_the_pdp_sparsifiers():
  assert (SPARSIFIERS.get("magnitude").keys["nm"] == SPARSIFIERS.get("pdp").keys["nm"]
          == config_lib.defaults().nm == "2:4")
  assert config_lib.defaults().pruning_scope == "unstructured"


@pytest.mark.parametrize("key,value", [("pruning_scope", "rows"), ("pruning_scope", "channel"),
                                       ("nm", "4:2"), ("nm", "2-4"), ("nm", "0:4")])
def test_bad_values_name_their_key(key, value):
  with pytest.raises(ConfigError, match=key):
    config_lib.finalize(nm_config(**{key: value}))


@pytest.mark.parametrize("overrides,match", [
    (dict(model="conv4"), "prune_exclude='conv1'"),  # conv1 has 1 input channel (8x8x1 digits)
    (dict(model="conv4", prune_exclude="output"), "prune_exclude='output|conv1'"),
    (dict(nm="2:3"), "nm='2:3'"),                     # 3 divides no input axis of LeNet but 300
    (dict(pruning_end="40it"), "pruning_end"),         # the pattern would never be reached
])
def test_selected_sparsifier_checks_name_their_key(tmp_path, overrides, match):
  with pytest.raises(ConfigError, match=match):
    experiment.run(nm_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "config.json").exists()


def test_checks_pass_where_the_pattern_fits(tmp_path):
  check = SPARSIFIERS.get("magnitude").check
  for overrides in (dict(model="conv4", prune_exclude="conv1"),
                    dict(pruning_scope="unstructured", nm="2:3", pruning_end="40it")):
    config = config_lib.finalize(nm_config(**overrides))
    check(setup_lib.build(config, str(tmp_path)))
