"""The sparse optax wrappers: exact zeros, no gradient leakage, masks on schedule, no recompiles."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import linen as nn
from flax import nnx

from sparsejax import masks as masks_lib
from sparsejax import pruning
from sparsejax import schedules
from sparsejax import transforms

INNER = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "clip_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
}


def small_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  return {
      "conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 8)), "bias": jnp.full((8,), 0.1, jnp.float32)},
      "dense": {"kernel": jax.random.normal(k[1], (32, 16)), "bias": jnp.full((16,), 0.1, jnp.float32)},
      "output": {"kernel": jax.random.normal(k[2], (16, 4)), "bias": jnp.zeros((4,))},
  }


def random_grads(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def pruned_values(params, masks):
  """Every param value at a pruned position, concatenated."""
  return np.concatenate([np.asarray(p)[~np.asarray(m)].ravel()
                         for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks))
                         if masks_lib.is_prunable_mask(m)])


def make_step(opt):
  @jax.jit
  def step(params, state, key):
    updates, state = opt.update(random_grads(key, params), state, params)
    return optax.apply_updates(params, updates), state
  return step


def state_params_like(state, params):
  """The params-shaped trees inside an optimizer state (momenta, Adam moments)."""
  treedef = jax.tree.structure(params)
  is_like = lambda x: jax.tree.structure(x) == treedef
  return [x for x in jax.tree.leaves(state, is_leaf=is_like) if is_like(x)]


class StaticMasksTest(parameterized.TestCase):

  @parameterized.named_parameters(*[(name, name) for name in INNER])
  def test_pruned_weights_exactly_zero_and_no_leak(self, name):
    params = small_params()
    masks = pruning.random(jax.random.key(1), params, 0.8, "erk")
    opt = transforms.static_masks(INNER[name](), masks)
    state = opt.init(params)
    step = make_step(opt)
    for i in range(30):
      params, state = step(params, state, jax.random.key(100 + i))
      np.testing.assert_array_equal(pruned_values(params, masks), 0.0)
    # Gradients of pruned weights never reach the inner state: its moments are 0 there.
    inner_trees = state_params_like(state.inner_state, params)
    if name != "sgd":
      self.assertNotEmpty(inner_trees)
    for tree in inner_trees:
      np.testing.assert_array_equal(pruned_values(tree, masks), 0.0)
    # Kept weights did train.
    kept = np.asarray(params["dense"]["kernel"])[np.asarray(masks["dense"]["kernel"])]
    self.assertTrue(np.all(np.isfinite(kept)))
    self.assertGreater(np.abs(kept - np.asarray(small_params()["dense"]["kernel"])[
        np.asarray(masks["dense"]["kernel"])]).max(), 0.0)

  def test_matches_dense_training_on_kept_weights_when_nothing_pruned(self):
    params = small_params()
    opt = transforms.static_masks(optax.adam(1e-2), masks_lib.ones_like(params))
    ref = optax.adam(1e-2)
    s, r = opt.init(params), ref.init(params)
    p1 = p2 = params
    for i in range(5):
      g = random_grads(jax.random.key(i), params)
      u1, s = opt.update(g, s, p1)
      u2, r = ref.update(g, r, p2)
      p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    chex.assert_trees_all_equal(p1, p2)

  def test_vmap_over_models_with_their_own_masks(self):
    params = jax.vmap(small_params)(jnp.arange(3))
    keys = jax.random.split(jax.random.key(0), 3)
    masks = jax.vmap(lambda k, p: pruning.random(k, p, 0.7, "uniform"))(keys, params)
    inner = optax.sgd(0.1, momentum=0.9)
    state = jax.vmap(lambda p, m: transforms.static_masks(inner, m).init(p))(params, masks)
    opt = transforms.static_masks(inner, masks)  # update reads the masks from the state
    step = jax.vmap(make_step(opt))
    for i in range(5):
      params, state = step(params, state, jax.random.split(jax.random.key(i), 3))
    for b in range(3):
      p_b = jax.tree.map(lambda x: x[b], params)
      m_b = jax.tree.map(lambda x: x[b] if x.ndim else x, masks)
      np.testing.assert_array_equal(pruned_values(p_b, m_b), 0.0)
    self.assertFalse(np.array_equal(masks["dense"]["kernel"][0], masks["dense"]["kernel"][1]))

  def test_set_masks_reuses_the_compiled_step(self):
    params = small_params()
    traces = []
    opt = transforms.static_masks(optax.sgd(0.1), masks_lib.ones_like(params))

    @jax.jit
    def step(params, state, key):
      traces.append(1)
      updates, state = opt.update(random_grads(key, params), state, params)
      return optax.apply_updates(params, updates), state

    state = opt.init(params)
    params, state = step(params, state, jax.random.key(0))
    new_masks = pruning.magnitude(params, 0.5, transforms.get_masks(state))
    state = transforms.set_masks(state, new_masks, inner=optax.sgd(0.1))
    params, state = step(params, state, jax.random.key(1))
    self.assertLen(traces, 1)
    np.testing.assert_array_equal(pruned_values(params, new_masks), 0.0)

  def test_set_masks_zeros_the_inner_state_of_newly_pruned_weights(self):
    params = small_params()
    opt = transforms.static_masks(optax.adam(1e-2), masks_lib.ones_like(params))
    step = make_step(opt)
    state = opt.init(params)
    for i in range(3):
      params, state = step(params, state, jax.random.key(i))
    new_masks = pruning.magnitude(params, 0.5, transforms.get_masks(state))
    replaced = transforms.set_masks(state, new_masks, inner=optax.adam(1e-2))
    adam_before, adam_after = state.inner_state[0], replaced.inner_state[0]
    for before, after in ((adam_before.mu, adam_after.mu), (adam_before.nu, adam_after.nu)):
      self.assertTrue(np.all(pruned_values(before, new_masks) != 0.0))
      np.testing.assert_array_equal(pruned_values(after, new_masks), 0.0)
      for b, a, m in zip(jax.tree.leaves(before), jax.tree.leaves(after),
                         jax.tree.leaves(new_masks)):
        keep = np.broadcast_to(np.asarray(m), np.shape(b))
        np.testing.assert_array_equal(np.asarray(a)[keep], np.asarray(b)[keep])

  @parameterized.named_parameters(*[(name, name) for name in [*INNER, "inject_momentum"]])
  def test_set_masks_zeros_every_params_shaped_part_of_any_inner_state(self, name):
    params = small_params()
    inner = (optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
             if name == "inject_momentum" else INNER[name]())
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      transforms.static_masks(inner, masks_lib.ones_like(params)))
    step = make_step(opt)
    state = opt.init(params)
    for i in range(3):
      params, state = step(params, state, jax.random.key(i))
    new_masks = pruning.magnitude(params, 0.5, transforms.get_masks(state))
    replaced = transforms.set_masks(state, new_masks, inner=inner)
    chex.assert_trees_all_equal_structs(replaced, state)
    inner_state = replaced[1].inner_state
    parts = state_params_like(inner_state, params)
    momenta = {"sgd": 0, "momentum": 1, "nesterov": 1, "inject_momentum": 1}
    self.assertLen(parts, momenta.get(name, 2))  # Adam: mu and nu
    for tree in parts:
      np.testing.assert_array_equal(pruned_values(tree, new_masks), 0.0)
    # Everything else is left as it was (counts, clipping and hyperparameter states).
    before = [x for x in jax.tree.leaves(state[1].inner_state) if np.ndim(x) == 0]
    after = [x for x in jax.tree.leaves(inner_state) if np.ndim(x) == 0]
    chex.assert_trees_all_equal(after, before)

  def test_set_masks_needs_the_inner_optimizer_of_the_state(self):
    params = small_params()
    opt = transforms.static_masks(optax.adam(1e-2), masks_lib.ones_like(params))
    state = opt.init(params)
    for wrong in (optax.sgd(0.1, momentum=0.9), opt):
      with pytest.raises(ValueError, match="pass the optimizer that the sparse transformation"):
        transforms.set_masks(state, masks_lib.ones_like(params), inner=wrong)
    masked = optax.masked(optax.sgd(0.1, momentum=0.9), jax.tree.map(lambda x: x.ndim > 1, params))
    state = transforms.static_masks(masked, masks_lib.ones_like(params)).init(params)
    with pytest.raises(ValueError, match="optax.masked"):
      transforms.set_masks(state, masks_lib.ones_like(params), inner=masked)

  def test_pruned_gradients_do_not_leak_through_global_norm_clipping(self):
    params = small_params()
    masks = pruning.random(jax.random.key(1), params, 0.8, "erk")
    grads = random_grads(jax.random.key(2), params)
    # Huge gradients on pruned weights: if they reached the clipping, kept updates would vanish.
    huge = jax.tree.map(lambda g, m: jnp.where(m, g, 1e6) if m.ndim else g, grads, masks)
    opt = transforms.static_masks(
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)), masks)
    updates, _ = opt.update(huge, opt.init(params), params)

    masked = [np.where(np.asarray(m), np.asarray(g, np.float64), 0.0)
              for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(masks))]
    norm = np.sqrt(sum(np.sum(g ** 2) for g in masked))
    self.assertGreater(norm, 1.0)  # the clipping is active on the masked gradients alone.
    for u, g, p, m in zip(jax.tree.leaves(updates), masked, jax.tree.leaves(params),
                          jax.tree.leaves(masks)):
      keep = np.broadcast_to(np.asarray(m), np.shape(u))
      np.testing.assert_allclose(np.asarray(u)[keep], (-0.1 * g / norm)[keep], rtol=1e-5,
                                 atol=1e-8)
      np.testing.assert_array_equal(np.asarray(u)[~keep], -np.asarray(p)[~keep])

  def test_set_masks_rejects_masks_that_do_not_fit(self):
    params = small_params()
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      transforms.static_masks(optax.sgd(0.1), masks_lib.ones_like(params)))
    state = opt.init(params)
    changes = {
        "['dense']['kernel']": lambda m: m["dense"].update(kernel=jnp.ones((16, 32), bool)),
        "['output']['kernel']": lambda m: m["output"].update(kernel=jnp.array(True)),
        "['conv']['bias']": lambda m: m["conv"].update(bias=jnp.ones((8,), bool)),
        "['conv']['kernel']": lambda m: m["conv"].update(kernel=jnp.ones((3, 3, 2, 8))),
        "['output']": lambda m: m.pop("output"),
    }
    for path, change in changes.items():
      new = masks_lib.ones_like(params)
      change(new)
      with pytest.raises(ValueError, match=re.escape(path)):
        transforms.set_masks(state, new, inner=optax.sgd(0.1))
    chex.assert_trees_all_equal(
        transforms.get_masks(transforms.set_masks(state, masks_lib.ones_like(params),
                                                  inner=optax.sgd(0.1))),
        masks_lib.ones_like(params))

  def test_mismatched_masks_name_the_path(self):
    params = small_params()
    masks = masks_lib.ones_like(params)
    masks["dense"]["kernel"] = jnp.ones((32, 15), bool)
    with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\]"):
      transforms.static_masks(optax.sgd(0.1), masks).init(params)

  def test_update_without_params_is_an_error(self):
    params = small_params()
    opt = transforms.static_masks(optax.sgd(0.1), masks_lib.ones_like(params))
    with pytest.raises(ValueError, match="needs the params"):
      opt.update(params, opt.init(params))


class MagnitudePruningTest(chex.TestCase):

  def _run(self, opt, params, steps):
    state = opt.init(params)
    step = make_step(opt)
    history = []
    for i in range(steps):
      params, state = step(params, state, jax.random.key(100 + i))
      masks = transforms.get_masks(state)
      np.testing.assert_array_equal(pruned_values(params, masks), 0.0)
      history.append(masks_lib.count(masks)[0])
    return params, state, np.array(history)

  @parameterized.named_parameters(*[(name, name) for name in INNER])
  def test_exact_zero_and_schedule_under_every_optimizer(self, name):
    params = small_params()
    schedule = schedules.polynomial(0.9, begin_step=2, end_step=20, frequency=3)
    opt = transforms.magnitude_pruning(INNER[name](), schedule, "uniform")
    params, state, kept = self._run(opt, params, 30)
    total = masks_lib.count(transforms.get_masks(state))[1]
    # Masks change exactly on the pruning steps (the count before step t's update is kept[t]).
    changed = {t for t in range(1, 30) if kept[t] != kept[t - 1]}
    update_steps = {t for t in range(30) if bool(schedule.is_update_step(t))}
    self.assertTrue(changed <= update_steps, (changed, update_steps))
    self.assertGreater(len(changed), 3)
    # Exactly the final count per layer: round(0.1 * n).
    for row in masks_lib.summary(params, transforms.get_masks(state)):
      self.assertEqual(row.kept, round(0.1 * row.total), row.path)
    self.assertEqual(int(kept[-1]), sum(round(0.1 * r.total) for r in masks_lib.summary(
        params, transforms.get_masks(state))))
    self.assertLessEqual(abs(int(kept[-1]) - 0.1 * total), 3)
    for tree in state_params_like(state.inner_state, params):
      np.testing.assert_array_equal(pruned_values(tree, transforms.get_masks(state)), 0.0)

  @parameterized.parameters("uniform", "er", "erk", "global")
  def test_distributions_reach_target_density(self, distribution):
    params = small_params()
    opt = transforms.magnitude_pruning(optax.sgd(0.05, momentum=0.9),
                                       schedules.polynomial(0.8, 0, 10, 2), distribution)
    params, state, kept = self._run(opt, params, 12)
    total = masks_lib.count(transforms.get_masks(state))[1]
    self.assertLessEqual(abs(int(kept[-1]) - 0.2 * total), 3)
    self.assertTrue(np.all(np.diff(kept) <= 0), "a pruned weight was revived")

  def test_pruning_is_by_magnitude_of_the_current_weights(self):
    params = small_params()
    opt = transforms.magnitude_pruning(optax.sgd(0.0), schedules.one_shot(0.5, step=0))
    state = opt.init(params)
    _, state = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
    expected = pruning.magnitude(params, 0.5, masks_lib.ones_like(params))
    chex.assert_trees_all_equal(transforms.get_masks(state), expected)

  @chex.variants(with_jit=True)  # against the eager run below
  def test_same_inside_and_outside_jit(self):
    params = small_params()
    opt = transforms.magnitude_pruning(optax.adam(1e-2), schedules.polynomial(0.7, 0, 4, 2), "erk")

    def run(params):
      state = opt.init(params)
      for i in range(6):
        updates, state = opt.update(random_grads(jax.random.key(i), params), state, params)
        params = optax.apply_updates(params, updates)
      return params, transforms.get_masks(state)

    params_out, masks_out = self.variant(run)(params)
    ref_params, ref_masks = run(params)  # eager, op by op
    chex.assert_trees_all_equal(masks_out, ref_masks)
    chex.assert_trees_all_close(params_out, ref_params, atol=1e-6)

  def test_one_compilation_across_mask_updates(self):
    params = small_params()
    opt = transforms.magnitude_pruning(optax.sgd(0.1), schedules.polynomial(0.9, 0, 20, 5))
    traces = []

    @jax.jit
    def step(params, state, key):
      traces.append(1)
      updates, state = opt.update(random_grads(key, params), state, params)
      return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for i in range(25):
      params, state = step(params, state, jax.random.key(i))
    self.assertLen(traces, 1)

  def test_vmap_over_independent_models(self):
    params = jax.vmap(small_params)(jnp.arange(4))
    opt = transforms.magnitude_pruning(optax.sgd(0.1, momentum=0.9),
                                       schedules.polynomial(0.75, 0, 6, 2), "global")
    state = jax.vmap(opt.init)(params)
    step = jax.vmap(make_step(opt))
    for i in range(8):
      params, state = step(params, state, jax.random.split(jax.random.key(i), 4))
    masks = transforms.get_masks(state)
    for b in range(4):
      p_b = jax.tree.map(lambda x: x[b], params)
      m_b = jax.tree.map(lambda x: x[b], masks)
      np.testing.assert_array_equal(pruned_values(p_b, m_b), 0.0)
      kept, total = masks_lib.count(m_b)
      self.assertEqual(int(kept), round(0.25 * total))

  def test_get_masks_inside_chain_and_inject_hyperparams(self):
    params = small_params()
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      transforms.magnitude_pruning(inner, schedules.one_shot(0.5)))
    state = opt.init(params)
    _, state = opt.update(random_grads(jax.random.key(0), params), state, params)
    kept, total = masks_lib.count(transforms.get_masks(state))
    self.assertEqual(int(kept), sum(round(0.5 * x.size) for x in
                                    (params["conv"]["kernel"], params["dense"]["kernel"],
                                     params["output"]["kernel"])))
    with pytest.raises(ValueError, match="found 0"):
      transforms.get_masks(optax.adam(1e-3).init(params))

  def test_update_count_saturates(self):
    params = small_params()
    opt = transforms.magnitude_pruning(optax.sgd(0.1), schedules.one_shot(0.5, step=3))
    state = opt.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    _, state = opt.update(grads, state, params)
    self.assertEqual(int(state.count), 1)
    last = jnp.iinfo(jnp.int32).max
    _, state = opt.update(grads, state._replace(count=jnp.int32(last)), params)
    self.assertEqual(int(state.count), last)
    self.assertEqual(state.count.dtype, jnp.int32)

  def test_one_shot_pruning_is_snip_at_step_zero(self):
    params = small_params()
    grads = random_grads(jax.random.key(5), params)
    opt = transforms.one_shot_pruning(optax.sgd(0.1, momentum=0.9), 0.8,
                                      lambda p, g: jax.tree.map(lambda w, d: jnp.abs(w * d), p, g),
                                      distribution="global")
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    expected = pruning.snip(params, grads, 0.8, "global")
    chex.assert_trees_all_equal(transforms.get_masks(state), expected)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(pruned_values(params, expected), 0.0)
    # No other step changes the masks.
    step = make_step(opt)
    for i in range(4):
      params, state = step(params, state, jax.random.key(i))
      chex.assert_trees_all_equal(transforms.get_masks(state), expected)
    with pytest.raises(ValueError, match="sparsity=1.0"):
      transforms.one_shot_pruning(optax.sgd(0.1), 1.0, lambda p, g: p)

  def test_prunable_and_initial_masks_together_is_an_error(self):
    params = small_params()
    initial = masks_lib.ones_like(params)
    for make in (transforms.magnitude_pruning,
                 lambda inner, schedule, **kw: transforms.scheduled_pruning(
                     inner, schedule, lambda p, g: jax.tree.map(jnp.abs, p), **kw)):
      with pytest.raises(ValueError, match="both prunable and initial_masks"):
        make(optax.sgd(0.1), schedules.one_shot(0.5), prunable="dense", initial_masks=initial)
      only_dense = make(optax.sgd(0.1), schedules.one_shot(0.5), prunable=r"dense\W+kernel")
      self.assertEqual([r.path for r in masks_lib.summary(
          params, transforms.get_masks(only_dense.init(params)))], ["['dense']['kernel']"])

  def test_unknown_distribution(self):
    with pytest.raises(ValueError, match="'bogus'"):
      transforms.magnitude_pruning(optax.sgd(0.1), schedules.one_shot(0.5), "bogus")

  def test_flax_linen_params(self):
    model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(4)])
    x = jax.random.normal(jax.random.key(0), (16, 8))
    variables = model.init(jax.random.key(1), x)
    opt = transforms.magnitude_pruning(optax.adam(1e-2), schedules.polynomial(0.8, 0, 10, 2))
    state = opt.init(variables)
    loss = lambda v: jnp.mean(model.apply(v, x) ** 2)

    @jax.jit
    def step(v, state):
      updates, state = opt.update(jax.grad(loss)(v), state, v)
      return optax.apply_updates(v, updates), state

    for _ in range(12):
      variables, state = step(variables, state)
      np.testing.assert_array_equal(pruned_values(variables, transforms.get_masks(state)), 0.0)
    rows = masks_lib.summary(variables, transforms.get_masks(state))
    self.assertEqual([r.path for r in rows], ["['params']['layers_0']['kernel']",
                                              "['params']['layers_2']['kernel']"])
    self.assertEqual([r.kept for r in rows], [round(0.2 * r.total) for r in rows])

  def test_flax_nnx_state(self):
    model = nnx.Sequential(nnx.Linear(8, 32, rngs=nnx.Rngs(0)), nnx.relu,
                           nnx.Linear(32, 4, rngs=nnx.Rngs(1)))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.normal(jax.random.key(0), (16, 8))
    masks = pruning.random(jax.random.key(2), params, 0.6, "erk")
    opt = transforms.static_masks(optax.adamw(1e-2, weight_decay=0.1), masks)
    state = opt.init(params)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x) ** 2)

    @jax.jit
    def step(p, state):
      updates, state = opt.update(jax.grad(loss)(p), state, p)
      return optax.apply_updates(p, updates), state

    for _ in range(10):
      params, state = step(params, state)
      np.testing.assert_array_equal(pruned_values(params, masks), 0.0)
    self.assertGreater(float(loss(params)), 0.0)


# ---------------------------------------------------------------------------------------------
# Transformations after the sparse wrapper: transforms.apply_updates keeps the zeros.


def _mlp_problem():
  k1, k2, kx = jax.random.split(jax.random.key(3), 3)
  params = {"hidden": {"kernel": jax.random.normal(k1, (8, 16)), "bias": jnp.zeros(16)},
            "output": {"kernel": jax.random.normal(k2, (16, 2)), "bias": jnp.zeros(2)}}
  x = jax.random.normal(kx, (32, 8))
  loss = lambda p: jnp.mean((jnp.tanh(x @ p["hidden"]["kernel"] + p["hidden"]["bias"])
                             @ p["output"]["kernel"] + p["output"]["bias"]) ** 2)
  masks = pruning.random(jax.random.key(4), params, 0.7, "uniform")
  return params, masks, loss


def _pruning(inner):
  """Dense params pruned to 70% at step 2: the update of a newly pruned weight is -w."""
  return transforms.magnitude_pruning(inner, schedules.one_shot(0.7, step=2))


def _train(opt, params, loss, apply, steps=6, wrap=lambda p: p, trained=lambda p: p):
  @jax.jit
  def step(p, state):
    updates, state = opt.update(jax.grad(loss)(trained(p)), state, p)
    return apply(p, updates, state), state

  p = wrap(params)
  state = opt.init(p)
  for _ in range(steps):
    p, state = step(p, state)
  return p, transforms.get_masks(state)


@pytest.mark.parametrize("after", [
    lambda: optax.clip_by_global_norm(0.1),
    lambda: optax.scale(0.5),
    lambda: optax.add_decayed_weights(0.1),
])
def test_apply_updates_keeps_pruned_weights_zero_after_later_transforms(after):
  params, _, loss = _mlp_problem()
  opt = optax.chain(_pruning(optax.adam(0.1)), after())
  plain, masks = _train(opt, params, loss, lambda p, u, s: optax.apply_updates(p, u))
  assert int(masks_lib.violations(plain, masks)) > 0  # the trap apply_updates closes
  fixed, masks = _train(opt, params, loss, transforms.apply_updates)
  assert int(masks_lib.violations(fixed, masks)) == 0
  assert float(masks_lib.sparsity(fixed, masks)) == pytest.approx(0.7, abs=0.01)
  # The wrapper outermost needs no help: both ways give the same exact zeros.
  outer = _pruning(optax.chain(after(), optax.adam(0.1)))
  a, masks = _train(outer, params, loss, lambda p, u, s: optax.apply_updates(p, u))
  b, _ = _train(outer, params, loss, transforms.apply_updates)
  assert int(masks_lib.violations(a, masks)) == int(masks_lib.violations(b, masks)) == 0
  chex.assert_trees_all_close(a, b, rtol=1e-4, atol=1e-6)  # two compilations: ulps apart


def test_apply_updates_under_lookahead_masks_fast_and_slow_weights():
  params, _, loss = _mlp_problem()
  opt = optax.lookahead(_pruning(optax.sgd(0.1, momentum=0.9)), sync_period=3,
                        slow_step_size=0.5)
  run = lambda apply: _train(opt, params, loss, apply, steps=7,
                             wrap=optax.LookaheadParams.init_synced, trained=lambda q: q.fast)
  plain, masks = run(lambda p, u, s: optax.apply_updates(p, u))
  assert int(masks_lib.violations(plain.slow, masks)) > 0  # the slow weights revive them
  final, masks = run(transforms.apply_updates)
  for copy in (final.fast, final.slow):
    assert int(masks_lib.violations(copy, masks)) == 0
  assert float(masks_lib.sparsity(final.fast, masks)) == pytest.approx(0.7, abs=0.01)


def test_apply_updates_needs_masks_in_the_state():
  params, masks, _ = _mlp_problem()
  opt = optax.sgd(0.1)
  with pytest.raises(ValueError, match="found 0"):
    transforms.apply_updates(params, params, opt.init(params))
  state = transforms.static_masks(optax.sgd(0.1), masks).init(params)
  with pytest.raises(ValueError, match="do not match"):
    transforms.apply_updates({"other": params["hidden"]}, {"other": params["hidden"]}, state)


def test_nested_sparse_wrappers_are_refused():
  params, masks, _ = _mlp_problem()
  inner = transforms.static_masks(optax.sgd(0.1), masks)
  for outer in (transforms.static_masks(inner, masks),
                transforms.magnitude_pruning(optax.chain(inner), schedules.one_shot(0.5))):
    with pytest.raises(ValueError, match="sparse wrapper inside another"):
      outer.init(params)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation (optax.MultiSteps) and partitions (optax.multi_transform).


def _run(opt, params, loss, steps):
  @jax.jit
  def step(p, state):
    updates, state = opt.update(jax.grad(loss)(p), state, p)
    return transforms.apply_updates(p, updates, state), state

  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("k", [1, 4])
def test_multisteps_either_placement_follows_the_loop_schedule(k):
  """A schedule in mini-batches (300-step loop, 80% by step 250) is met whether MultiSteps is
  inside the sparse wrapper or around it (with accumulation_steps=k)."""
  params, _, loss = _mlp_problem()
  schedule = schedules.polynomial(0.8, 10, 250, 10)
  outer = transforms.magnitude_pruning(optax.MultiSteps(optax.adam(1e-2), k), schedule)
  inner = optax.MultiSteps(transforms.magnitude_pruning(optax.adam(1e-2), schedule,
                                                        accumulation_steps=k), k)
  results = {}
  for name, opt in (("outer", outer), ("inner", inner)):
    final, state = _run(opt, params, loss, 300)
    masks = transforms.get_masks(state)
    assert float(masks_lib.sparsity(final, masks)) == pytest.approx(0.8, abs=0.01), name
    assert int(masks_lib.violations(final, masks)) == 0, name
    results[name] = final
  # Without accumulation_steps the wrapper inside counts updates (k times fewer) and falls short.
  short = optax.MultiSteps(transforms.magnitude_pruning(optax.adam(1e-2), schedule), k)
  final, state = _run(short, params, loss, 300)
  reached = float(masks_lib.sparsity(final, transforms.get_masks(state)))
  assert reached == pytest.approx(0.8, abs=0.01) if k == 1 else reached < 0.7


def test_accumulation_steps_must_be_positive():
  with pytest.raises(ValueError, match="accumulation_steps=0"):
    transforms.magnitude_pruning(optax.sgd(0.1), schedules.one_shot(0.5), accumulation_steps=0)


def test_multi_transform_partition_masks_are_params_shaped():
  params, masks, loss = _mlp_problem()
  labels = {"hidden": {"kernel": "sparse", "bias": "dense"},
            "output": {"kernel": "dense", "bias": "dense"}}
  opt = optax.multi_transform(
      {"sparse": transforms.magnitude_pruning(optax.adam(1e-2), schedules.one_shot(0.7, 2)),
       "dense": optax.adam(1e-2)}, labels)
  final, state = _run(opt, params, loss, 6)
  got = transforms.get_masks(state)
  masks_lib.validate(final, got)  # params-shaped: the mask utilities take it
  assert got["output"]["kernel"].shape == () and bool(got["output"]["kernel"])
  assert got["hidden"]["kernel"].shape == (8, 16)
  assert float(masks_lib.sparsity(final, got)) == pytest.approx(0.7, abs=0.01)
  assert int(masks_lib.violations(final, got)) == 0
  # One wrapper per partition: their masks merge.
  both = optax.multi_transform(
      {"a": transforms.magnitude_pruning(optax.adam(1e-2), schedules.one_shot(0.5, 2)),
       "b": transforms.magnitude_pruning(optax.adam(1e-2), schedules.one_shot(0.5, 2))},
      {"hidden": {"kernel": "a", "bias": "a"}, "output": {"kernel": "b", "bias": "b"}})
  final, state = _run(both, params, loss, 4)
  merged = transforms.get_masks(state)
  assert merged["hidden"]["kernel"].shape == (8, 16) and merged["output"]["kernel"].shape == (16, 2)
  assert float(masks_lib.sparsity(final, merged)) == pytest.approx(0.5, abs=0.01)
