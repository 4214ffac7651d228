"""HESSO and HESSO-CRIC: exact counts of zero groups, pruned groups and their optimizer state
exactly zero, forgetting reaching exactly 0.0, the saliency against numpy, argument errors."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparsejax.structured import groups as groups_lib
from sparsejax.structured import hesso

INNER = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
}
# The params-shaped parts of each inner optimizer's state: none, the trace, Adam's mu and nu.
STATE_PARTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}

# A 6-8-5-3 MLP: the hidden neurons of dense1 (8) and dense2 (5) are the groups, G = 13.
GROUPS = groups_lib.declare([
    ("dense1", 8, [("['dense1']['kernel']", 1), ("['dense1']['bias']", 0)],
     [("['dense2']['kernel']", 0)]),
    ("dense2", 5, [("['dense2']['kernel']", 1), ("['dense2']['bias']", 0)],
     [("['out']['kernel']", 0)]),
])
X = jax.random.normal(jax.random.key(1), (32, 6))
Y = jnp.arange(32) % 3


def mlp_params():
  k = jax.random.split(jax.random.key(0), 3)
  bias = lambda n: jnp.full((n,), 0.1, jnp.float32)
  return {
      "dense1": {"kernel": jax.random.normal(k[0], (6, 8)), "bias": bias(8)},
      "dense2": {"kernel": jax.random.normal(k[1], (8, 5)), "bias": bias(5)},
      "out": {"kernel": jax.random.normal(k[2], (5, 3)), "bias": jnp.zeros((3,))},
  }


def mlp_loss(params):
  h = jax.nn.relu(X @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  h = jax.nn.relu(h @ params["dense2"]["kernel"] + params["dense2"]["bias"])
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def train_step(opt, with_value=False):
  def step(params, state):
    loss, grads = jax.value_and_grad(mlp_loss)(params)
    updates, state = opt.update(grads, state, params, **({"value": loss} if with_value else {}))
    return optax.apply_updates(params, updates), state
  return step


def synthetic(sizes):
  """Params with one leaf per set (axis 1 holds the set's groups) and their Groups."""
  params = {f"s{i}": jnp.ones((3, n)) for i, n in enumerate(sizes)}
  groups = groups_lib.declare([(f"s{i}", n, [(f"['s{i}']", 1)], []) for i, n in enumerate(sizes)])
  return params, groups


def random_grads_step(opt):
  @jax.jit
  def step(params, state, key):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    grads = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape)
                                         for k, x in zip(keys, leaves)])
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def expected_pruned(count, k, warmup, periods, duration):
  """The pruned groups after ``count`` updates: k // periods per finished period, the last the
  remainder."""
  done = min(max((count - warmup) // duration, 0), periods)
  per = [k // periods] * (periods - 1) + [k - (periods - 1) * (k // periods)]
  return sum(per[:done])


def state_zero_groups(inner, state, groups):
  """(G,) bool per params-shaped part of the inner optimizer's state: all its entries are 0."""
  parts = optax.tree_utils.tree_map_params(
      inner, lambda tree: groups_lib.is_zero(groups, tree), state.inner_state,
      is_leaf=lambda _: True, transform_non_params=lambda _: None)
  return [np.asarray(x) for x in jax.tree.leaves(parts)]


def numpy_saliency(params, direction):
  """The five proxies (1) per group of the MLP from slices of its members, each normalized over
  the groups and weighted 0.2; a group with x_g = 0 or d_g = 0 (a dead neuron) has cos = 0."""
  rows = []
  for name, size in (("dense1", 8), ("dense2", 5)):
    for j in range(size):
      x, d = (np.concatenate([np.asarray(t[name]["kernel"], np.float64)[:, j],
                              [np.float64(t[name]["bias"][j])]]) for t in (params, direction))
      xd = x @ d
      norms = np.linalg.norm(x) * np.linalg.norm(d)
      cos = xd / norms if norms > 0 else 0.0
      rows.append([np.linalg.norm(x), np.linalg.norm(x) / x.size, cos + 1, abs(xd),
                   0.5 * xd ** 2])
  proxies = np.array(rows)
  return 0.2 * (proxies / np.linalg.norm(proxies, axis=0)).sum(axis=1)


def numpy_redundant(score, pruned, k, set_ids):
  """The k lowest-scoring unpruned groups (ties: lowest index), each set's best unpruned spared."""
  eligible = ~pruned
  for s in np.unique(set_ids):
    members = np.flatnonzero((set_ids == s) & ~pruned)
    eligible[members[np.argmax(score[members])]] = False
  order = [g for g in np.argsort(score, kind="stable") if eligible[g]]
  out = np.zeros(score.shape, bool)
  out[order[:k]] = True
  return out


def test_224_groups_at_0_7_leave_exactly_156_zero():
  params, groups = synthetic((64, 96, 64))
  opt = hesso.hesso(optax.sgd(0.1, momentum=0.9), groups, 0.7, warmup_steps=2,
                    pruning_periods=3, pruning_steps=10)
  step, state = random_grads_step(opt), opt.init(params)
  for i in range(14):
    params, state = step(params, state, jax.random.key(i))
    pruned = np.asarray(hesso.pruned_groups(state))
    assert pruned.sum() == expected_pruned(i + 1, 156, 2, 3, 3)
    assert np.asarray(groups_lib.is_zero(groups, params))[pruned].all()
  np.testing.assert_array_equal(groups_lib.is_zero(groups, params), pruned)
  assert pruned.sum() == 156  # floor(224 * 0.7)
  assert all(p.sum() >= 1 for p in groups.split(~pruned))  # every set keeps a group
  assert step._cache_size() == 1  # the periods switch on the count: one compilation


@settings(max_examples=3, deadline=None)
@given(sizes=st.lists(st.integers(2, 9), min_size=1, max_size=3),
       target=st.floats(0.0, 0.9), periods=st.integers(1, 4), extra=st.integers(0, 3),
       warmup=st.integers(0, 2))
def test_counts_per_period_sum_to_floor_of_target(sizes, target, periods, extra, warmup):
  params, groups = synthetic(sizes)
  k = int(groups.num_groups * target)
  assume(k <= groups.num_groups - len(sizes))
  steps = periods * 2 + extra
  opt = hesso.hesso(optax.sgd(0.1), groups, target, warmup_steps=warmup,
                    pruning_periods=periods, pruning_steps=steps)
  step, state = random_grads_step(opt), opt.init(params)
  for i in range(warmup + steps):
    params, state = step(params, state, jax.random.key(i))
    assert int(hesso.pruned_groups(state).sum()) == expected_pruned(
        i + 1, k, warmup, periods, steps // periods)
  assert int(groups_lib.is_zero(groups, params).sum()) == k


@functools.lru_cache(maxsize=None)
def mlp_run(name):
  """12 updates of the MLP under HESSO around ``INNER[name]``: K = floor(13 * 0.7) = 9 groups
  over 3 periods of 3 updates after 1 of warm-up. Returns the inner optimizer and the (params,
  state) before each update and after the last."""
  inner = INNER[name]()
  opt = hesso.hesso(inner, GROUPS, 0.7, warmup_steps=1, pruning_periods=3, pruning_steps=9)
  step = jax.jit(train_step(opt))
  history = [(mlp_params(), opt.init(mlp_params()))]
  for _ in range(12):
    history.append(step(*history[-1]))
  assert step._cache_size() == 1  # the periods switch on the count: one compilation
  return inner, history


def inner_update(inner, params, state):
  """The inner optimizer's update u at ``params`` (pruned groups' gradients zeroed)."""
  grads = groups_lib.zero_out(GROUPS, jax.grad(mlp_loss)(params), state.pruned)
  return inner.update(grads, state.inner_state, params)[0]


@pytest.mark.parametrize("name", list(INNER))
def test_pruned_params_and_inner_state_exactly_zero_after_every_step(name):
  inner, history = mlp_run(name)
  for (_, before), (params, state) in zip(history, history[1:]):
    pruned = np.asarray(state.pruned)
    assert np.asarray(groups_lib.is_zero(GROUPS, params))[pruned].all()
    parts, parts_before = (state_zero_groups(inner, s, GROUPS) for s in (state, before))
    assert len(parts) == STATE_PARTS[name]
    for part in parts:
      assert part[pruned].all()
    newly = pruned & ~np.asarray(before.pruned)
    if newly.any() and parts:  # they had state (momenta, moments) until the pruning update
      assert any((~part[newly]).any() for part in parts_before)
  assert pruned.sum() == 9
  assert [int(p.sum()) for p in GROUPS.split(~pruned)] >= [1, 1]  # each set keeps a group


@pytest.mark.parametrize("name", list(INNER))
def test_forgetting_follows_3_and_is_exactly_zero_at_each_period_end(name):
  inner, history = mlp_run(name)
  duration, warmup = 3, 1
  for count, ((params, state), (after, new)) in enumerate(zip(history, history[1:])):
    t = (count - warmup) % duration
    active = np.asarray(new.active if t < duration - 1 else state.active)
    if count < warmup or count >= warmup + 9:
      assert not active.any()
    factor = np.where(active, (duration - t - 1) / (duration - t), 1.0)
    stepped = optax.apply_updates(params, inner_update(inner, params, state))
    want = groups_lib.zero_out(GROUPS, groups_lib.scale(GROUPS, stepped, jnp.asarray(factor)),
                               state.pruned)
    chex.assert_trees_all_close(after, want, rtol=1e-5, atol=1e-6)
    norms = np.asarray(groups_lib.norms(GROUPS, after))[active]
    if t == duration - 1 and warmup <= count < warmup + 9:
      assert (norms == 0.0).all() and np.asarray(new.pruned)[active].all()  # exactly zero
      assert active.sum() == 3 and not np.asarray(new.active).any()
    else:
      assert (norms > 0).all()


def random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


class SaliencyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_proxies_and_ignores_the_direction_scale(self):
    params = mlp_params()
    params["dense1"]["kernel"] = params["dense1"]["kernel"].at[:, 3].set(0.0)  # a zero group
    params["dense1"]["bias"] = params["dense1"]["bias"].at[3].set(0.0)
    direction = random_like(params, 7)
    score = self.variant(functools.partial(hesso.saliency, GROUPS))
    got = np.asarray(score(params, direction))
    want = numpy_saliency(params, direction)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(np.argsort(got, kind="stable"),
                                  np.argsort(want, kind="stable"))
    # The lr-scaled update -u stands for d: a tiny scale changes nothing.
    tiny = jax.tree.map(lambda d: 1e-6 * d, direction)
    np.testing.assert_allclose(score(params, tiny), got, rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_each_period_picks_the_lowest_saliency_sparing_each_sets_best(name):
  inner, history = mlp_run(name)
  set_ids = np.repeat([0, 1], [8, 5])
  for start in (1, 4, 7):  # the periods' first updates
    params, state = history[start]
    direction = jax.tree.map(lambda v: -v, inner_update(inner, params, state))
    want = numpy_redundant(numpy_saliency(params, direction), np.asarray(state.pruned), 3,
                           set_ids)
    np.testing.assert_array_equal(history[start + 1][1].active, want, err_msg=f"update {start}")


def test_cric_runs_with_value_and_ends_with_exactly_k_zero_groups():
  # 2 sets probed in 12 updates; D = 25 // 4 = 6; 25 - 12 - 1 - 6 = 6 spare: two cycles.
  opt = hesso.hesso_cric(optax.sgd(0.1, momentum=0.9), GROUPS, 0.5, warmup_steps=2,
                         pruning_periods=4, pruning_steps=25)
  step = jax.jit(train_step(opt, with_value=True))
  params, state = mlp_params(), opt.init(mlp_params())
  history = []
  for _ in range(2 + 25):
    params, state = step(params, state)
    history.append((params, state))
    assert np.asarray(groups_lib.is_zero(GROUPS, params))[np.asarray(state.pruned)].all()
  cached, _ = history[1]
  # The probes zero groups and restore them exactly: the params after them are the cached ones.
  chex.assert_trees_all_equal(history[13][0], cached)
  chex.assert_trees_all_equal(history[13][1].cache, cached)
  assert int(history[8][1].num_scores) == 7 and int(history[13][1].cycle) == 0
  # CRIC ends at update 20 (the second cycle's start), restores, then forgets for 6 updates.
  ended_params, ended = history[20]
  assert int(ended.cycle) == 2 and int(ended.forget_start) == 21
  # After a cycle of training, x + (cache - x) is the cache to within one rounding.
  chex.assert_trees_all_close(ended_params, cached, rtol=1e-6, atol=1e-7)
  assert int(ended.active.sum()) == 6 and not ended.pruned.any()
  np.testing.assert_array_equal(state.pruned, ended.active)
  np.testing.assert_array_equal(groups_lib.is_zero(GROUPS, params), state.pruned)
  assert int(state.pruned.sum()) == 6  # floor(13 * 0.5), after warmup_steps + pruning_steps
  assert step._cache_size() == 1
  for part in state_zero_groups(optax.sgd(0.1, momentum=0.9), state, GROUPS):
    assert part[np.asarray(state.pruned)].all()


def test_cric_needs_the_loss():
  opt = hesso.hesso_cric(optax.adam(1e-2), GROUPS, 0.5, warmup_steps=0, pruning_periods=4,
                         pruning_steps=20)
  with pytest.raises(ValueError, match="value=loss"):
    train_step(opt)(mlp_params(), opt.init(mlp_params()))


@pytest.mark.parametrize("make, error, message", [
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, 1.0, warmup_steps=0, pruning_periods=1,
                         pruning_steps=1), ValueError, r"target_group_sparsity=1\.0"),
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, -0.1, warmup_steps=0, pruning_periods=1,
                         pruning_steps=1), ValueError, r"target_group_sparsity=-0\.1"),
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=0,
                         pruning_steps=1), ValueError, "pruning_periods=0"),
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=4,
                         pruning_steps=3), ValueError, "pruning_steps=3"),
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=-1, pruning_periods=1,
                         pruning_steps=1), ValueError, "warmup_steps=-1"),
    (lambda: hesso.hesso(optax.sgd(0.1), GROUPS, 0.95, warmup_steps=0, pruning_periods=1,
                         pruning_steps=1), ValueError, "at most 11"),
    (lambda: hesso.hesso("sgd", GROUPS, 0.5, warmup_steps=0, pruning_periods=1,
                         pruning_steps=1), TypeError, "not an optax optimizer"),
    (lambda: hesso.hesso(optax.sgd(0.1), [("a", 2)], 0.5, warmup_steps=0, pruning_periods=1,
                         pruning_steps=1), TypeError, "Groups"),
    (lambda: hesso.hesso_cric(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=1,
                              pruning_steps=30, max_cycle_period=0), ValueError,
     "max_cycle_period=0"),
    (lambda: hesso.hesso_cric(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=2,
                              pruning_steps=24), ValueError, "at least 25"),
])
def test_argument_errors_name_the_value(make, error, message):
  with pytest.raises(error, match=message):
    make()


def test_groups_not_matching_the_params_are_refused():
  opt = hesso.hesso(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=1,
                    pruning_steps=2)
  wrong = mlp_params()
  wrong["dense1"]["bias"] = jnp.zeros((7,))
  with pytest.raises(ValueError, match="dense1"):
    opt.init(wrong)
  state = opt.init(mlp_params())
  with pytest.raises(ValueError, match="has length 7"):
    opt.update(mlp_params(), state, wrong)


def test_pruned_groups_is_found_inside_chains():
  params = mlp_params()
  tx = hesso.hesso(optax.sgd(0.1), GROUPS, 0.5, warmup_steps=0, pruning_periods=1,
                   pruning_steps=1)
  alone = tx.init(params)
  chained = optax.chain(optax.clip(1.0), tx).init(params)
  named = optax.named_chain(("clip", optax.clip(1.0)), ("hesso", tx)).init(params)
  for state, held in ((alone, alone), (chained, chained[1]), ((chained, ()), chained[1]),
                      (named, named["hesso"])):
    assert hesso.pruned_groups(state) is held.pruned and held.pruned.shape == (13,)
  with pytest.raises(ValueError, match="found 0"):
    hesso.pruned_groups(optax.sgd(0.1).init(params))
  with pytest.raises(ValueError, match="found 2"):
    hesso.pruned_groups((alone, alone))
