"""Tests for sparsejax.dynamic: SET and RigL."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import dynamic, pruning, transforms
from sparsejax import masks as masks_lib


def reference(w, m, score, fraction, regrow_dropped=False):
  """numpy drop-and-grow of one leaf: ties by lowest flat index."""
  w, m, score = (np.asarray(x).ravel() for x in (w, m, score))
  active = int(m.sum())
  k = int(np.floor(np.float32(fraction) * np.float32(active)))
  if not regrow_dropped:
    k = min(k, m.size - active)
  idx = np.arange(m.size)
  by_magnitude = [i for i in np.lexsort((idx, -np.abs(w))) if m[i]]
  kept = np.zeros_like(m)
  kept[by_magnitude[:active - k]] = True
  eligible = ~kept if regrow_dropped else ~m
  by_score = [i for i in np.lexsort((idx, -score)) if eligible[i]]
  grown = np.zeros_like(m)
  grown[by_score[:k]] = True
  return kept | grown, grown


def test_drop_and_grow_by_hand():
  w = jnp.array([[0.1, -0.5, 0.0, 0.3], [0.2, 0.0, -0.4, 0.0]])
  m = jnp.array([[True, True, False, True], [True, False, True, False]])
  g = jnp.array([[9.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 2.0]])
  # 5 active, fraction 0.5: k = 2; drop 0.1 and 0.2, grow the inactive with |g| 3 and 2.
  new, grown = dynamic.drop_and_grow({"k": w}, {"k": m}, {"k": g}, 0.5)
  np.testing.assert_array_equal(new["k"], [[False, True, False, True], [False, True, True, True]])
  np.testing.assert_array_equal(grown["k"], [[False] * 4, [False, True, False, True]])
  # Position (0, 0) has the largest gradient but was just dropped: not regrown by default.
  again, _ = dynamic.drop_and_grow({"k": w}, {"k": m}, {"k": g}, 0.5, regrow_dropped=True)
  assert bool(again["k"][0, 0]) and int(again["k"].sum()) == 5


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), density=st.floats(0.05, 0.95),
       fraction=st.floats(0.0, 1.0), regrow=st.booleans(), ties=st.booleans())
def test_drop_and_grow_matches_reference(seed, density, fraction, regrow, ties):
  rng = np.random.default_rng(seed)
  shape = (13, 7)
  w = rng.normal(size=shape).astype(np.float32)
  score = rng.normal(size=shape).astype(np.float32)
  if ties:
    w, score = np.round(w), np.round(score)
  m = rng.random(shape) < density
  new, grown = dynamic.drop_and_grow({"a": w, "b": np.zeros(3, np.float32)},
                                     {"a": m, "b": jnp.array(True)},
                                     {"a": score, "b": np.zeros(3, np.float32)},
                                     jnp.float32(fraction), regrow_dropped=regrow)
  want_new, want_grown = reference(w, m, score, fraction, regrow)
  np.testing.assert_array_equal(np.asarray(new["a"]).ravel(), want_new)
  np.testing.assert_array_equal(np.asarray(grown["a"]).ravel(), want_grown)
  assert int(new["a"].sum()) == int(m.sum())  # the count never changes
  assert bool(new["b"]) and not bool(grown["b"])


def test_cosine_drop_fraction():
  f = lambda t: float(dynamic.cosine_drop_fraction(t, 0.3, 100))
  assert f(0) == pytest.approx(0.3)
  assert f(50) == pytest.approx(0.15)
  assert f(100) == pytest.approx(0.0, abs=1e-7)
  assert f(150) == pytest.approx(0.0, abs=1e-7)  # held at 0 after T_end


def mlp_params(seed=0):
  k = jax.random.split(jax.random.key(seed), 2)
  return {"dense": {"kernel": jax.random.normal(k[0], (20, 16)), "bias": jnp.zeros(16)},
          "out": {"kernel": jax.random.normal(k[1], (16, 4)), "bias": jnp.zeros(4)}}


X = jax.random.normal(jax.random.key(5), (32, 20))
Y = jnp.arange(32) % 4


def loss_fn(params):
  h = jnp.tanh(X @ params["dense"]["kernel"] + params["dense"]["bias"])
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def train(opt, steps, params=None):
  """Runs ``steps`` jitted steps; per step: (params, state, grads) after it."""
  params = mlp_params() if params is None else params
  state = opt.init(params)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return transforms.apply_updates(params, updates, state), state, grads

  history = []
  for _ in range(steps):
    params, state, grads = step(params, state)
    history.append((params, state, grads))
  assert len(traces) == 1  # masks are arrays: moving connections never recompiles
  return history


def kernels(tree):
  return {k: np.asarray(tree[k]["kernel"]) for k in ("dense", "out")}


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_counts_exact_and_moved_weights_start_at_zero(method):
  params = mlp_params()
  masks = pruning.random(jax.random.key(1), params, 0.8, "erk")
  inner = optax.sgd(0.1, momentum=0.9)
  if method == "rigl":
    opt = dynamic.rigl(inner, masks, update_every=3, end_step=25, drop_fraction=0.5)
  else:
    opt = dynamic.set_(inner, masks, jax.random.key(2), update_every=3, end_step=25,
                       drop_fraction=0.5)
  counts = {k: int(v.sum()) for k, v in kernels(masks).items()}
  history = train(opt, 30)
  previous = kernels(masks)
  moved_any = 0
  for t, (params, state, grads) in enumerate(history):
    m = kernels(transforms.get_masks(state))
    assert {k: int(v.sum()) for k, v in m.items()} == counts, t
    momentum = kernels(state.inner_state[0].trace)
    for name in m:
      w = kernels(params)[name]
      assert (w[~m[name]] == 0.0).all(), (t, name)      # pruned weights exactly 0.0
      assert (momentum[name][~m[name]] == 0.0).all(), (t, name)
      grown = m[name] & ~previous[name]
      moved_any += int(grown.sum())
      if grown.any():
        assert t % 3 == 0 and 0 < t < 25, t                # only on update steps
        assert (w[grown] == 0.0).all() and (momentum[name][grown] == 0.0).all()
    previous = m
  assert moved_any > 0
  # After end_step the connectivity is frozen.
  frozen = [kernels(transforms.get_masks(s)) for _, s, _ in history[25:]]
  for a in frozen[1:]:
    for name in a:
      np.testing.assert_array_equal(a[name], frozen[0][name])


def test_rigl_grows_where_the_dense_gradient_is_largest():
  params = mlp_params()
  masks = pruning.random(jax.random.key(1), params, 0.8, "erk")
  opt = dynamic.rigl(optax.sgd(0.1), masks, update_every=2, end_step=10, drop_fraction=0.3)
  state = opt.init(params)
  grads = jax.grad(loss_fn)(masks_lib.apply(params, masks))  # dense: pruned weights included
  update = jax.jit(opt.update)
  _, state = update(grads, state, params)  # step 0: no update
  _, state = update(grads, state, params)  # step 1: no update
  old = kernels(transforms.get_masks(state))
  _, state = update(grads, state, params)  # step 2: drop and grow
  new = kernels(transforms.get_masks(state))
  fraction = float(dynamic.cosine_drop_fraction(2, 0.3, 10))
  for name in new:
    g = np.abs(kernels(grads)[name])
    grown = new[name] & ~old[name]
    k = int(np.floor(np.float32(fraction) * np.float32(old[name].sum())))
    assert grown.sum() == k > 0
    # Every grown weight's gradient is at least every inactive, ungrown one's.
    assert g[grown].min() >= g[~old[name] & ~grown].max()


def test_set_growth_is_random_but_reproducible():
  params = mlp_params()
  masks = pruning.random(jax.random.key(1), params, 0.8, "erk")
  run = lambda key: kernels(transforms.get_masks(train(dynamic.set_(
      optax.sgd(0.1), masks, key, update_every=2, end_step=10), 5)[-1][1]))
  a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
  chex.assert_trees_all_equal(a, b)
  assert any((a[k] != c[k]).any() for k in a)


def test_adam_state_of_moved_weights_is_zeroed():
  params = mlp_params()
  masks = pruning.random(jax.random.key(1), params, 0.7, "erk")
  opt = dynamic.rigl(optax.adam(1e-2), masks, update_every=2, end_step=20, drop_fraction=0.4)
  history = train(opt, 12)
  for _, state, _ in history:
    m = kernels(transforms.get_masks(state))
    adam = state.inner_state[0]
    for moment in (kernels(adam.mu), kernels(adam.nu)):
      for name in m:
        assert (moment[name][~m[name]] == 0.0).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(update_every=0), "update_every=0"),
    (dict(end_step=0), "end_step=0"),
    (dict(drop_fraction=0.0), "drop_fraction=0.0"),
    (dict(drop_fraction=1.5), "drop_fraction=1.5"),
])
def test_bad_arguments_name_the_value(kwargs, match):
  masks = masks_lib.ones_like(mlp_params())
  with pytest.raises(ValueError, match=match):
    dynamic.rigl(optax.sgd(0.1), masks, **{"end_step": 10, **kwargs})


def test_random_growth_needs_a_key():
  with pytest.raises(ValueError, match="needs key="):
    dynamic.dynamic_sparse(optax.sgd(0.1), masks_lib.ones_like(mlp_params()), grow="random",
                           update_every=1, end_step=5, drop_fraction=0.3, schedule="constant")


# The runner's sparsifiers rigl and set.


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_runner_keeps_each_layers_count(tmp_path, method):
  """Each layer keeps its ERK count from the first step to the last, moved every 20 steps."""
  from experiments import config as config_lib, experiment, setup as setup_lib
  from sparsejax import distributions
  from test_runner import digits_config, read_masks
  config = digits_config(sparsifier=method, steps="120it", dst_update_every="20it",
                         dst_end="100it", eval_every="60it", log_every="60it",
                         checkpoint_every="60it")
  setup = setup_lib.build(config_lib.finalize(config.copy_and_resolve_references()), "")
  densities = {jax.tree_util.keystr(p): float(d) for p, d in jax.tree_util.tree_leaves_with_path(
      distributions.erk(setup.param_shapes, 0.9, setup.prunable))}
  summary = experiment.run(config, str(tmp_path))
  assert summary["sparsifier"] == method
  for path, m in read_masks(tmp_path).items():
    assert int(m.sum()) == round(densities[path] * m.size), path
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert len({r["density"] for r in rows if "density" in r}) == 1  # constant over training


@pytest.mark.parametrize("overrides,match", [
    ({"dst_drop_fraction": 0.0}, "dst_drop_fraction=0.0 must be in"),
    ({"dst_distribution": "global"}, "dst_distribution"),
    ({"dst_end": "x"}, "dst_end"),
])
def test_runner_config_errors_name_the_key(tmp_path, overrides, match):
  from experiments import experiment
  from experiments.config import ConfigError
  from test_runner import digits_config
  with pytest.raises(ConfigError, match=match):
    experiment.run(digits_config(sparsifier="rigl", **overrides), str(tmp_path))


def test_update_steps_next_and_the_promise():
  steps = dynamic.update_steps(7, 60)
  due = [s for s in range(80) if bool(steps.is_update_step(s))]
  assert due == list(range(7, 60, 7))
  for s in range(80):
    later = [d for d in due if d >= s]
    assert int(steps.next_update_step(s)) == (later[0] if later else np.iinfo(np.int32).max), s
  with pytest.raises(ValueError, match="every=0"):
    transforms.UpdateSteps(0, 1, 5)
  tx = dynamic.rigl(optax.sgd(0.1), pruning.random(jax.random.key(0), mlp_params(), 0.5),
                    update_every=2, end_step=10)
  params = mlp_params()
  with pytest.raises(TypeError, match="mask_update=.* must be a Python bool"):
    tx.update(params, tx.init(params), params, mask_update=jnp.array(False))
