"""GraSP and SynFlow: pruning at initialization (sparsejax.scores, sparsejax.pruning, runner)."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import masks as masks_lib
from sparsejax import pruning, scores


def mlp_params(seed=0, sizes=(6, 5, 4, 3), bias=True):
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"l{i}"] = {"kernel": jax.random.normal(keys[i], (a, b)) / np.sqrt(a)}
    if bias:
      params[f"l{i}"]["bias"] = 0.1 * jax.random.normal(jax.random.fold_in(keys[i], 1), (b,))
  return params


def mlp(params, x):
  n = len(params)
  for i in range(n):
    x = x @ params[f"l{i}"]["kernel"] + params[f"l{i}"].get("bias", 0.0)
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def batch(seed=3, n=16, d=6, classes=3):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
          jnp.asarray(rng.integers(0, classes, n), jnp.int32))


def loss_on(x, y, temperature=1.0):
  return lambda p: optax.softmax_cross_entropy_with_integer_labels(
      mlp(p, x) / temperature, y).mean()


def kernels(tree):
  return {k: np.asarray(v["kernel"]) for k, v in tree.items()}


def top_k_reference(score_leaves: dict, k: int) -> dict:
  """Global top-k with the lowest flat index (leaves in order) winning ties, in numpy."""
  names = sorted(score_leaves)
  flat = np.concatenate([score_leaves[n].ravel() for n in names])
  order = np.lexsort((np.arange(flat.size), -flat))[:k]
  keep = np.zeros(flat.size, bool)
  keep[order] = True
  out, start = {}, 0
  for n in names:
    size = score_leaves[n].size
    out[n] = keep[start:start + size].reshape(score_leaves[n].shape)
    start += size
  return out


# ------------------------------------------------------------------------------------- GraSP


def test_hessian_gradient_product_of_a_quadratic_by_hand():
  """L = 1/2 w'Aw + b'w: g = Aw + b and Hg = A g, g zeroed on leaves that are not prunable."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(5, 5))
  a = jnp.asarray(m @ m.T, jnp.float32)
  b = jnp.asarray(rng.normal(size=5), jnp.float32)
  params = {"w": {"kernel": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}
  flat = lambda p: jnp.concatenate([p["w"]["bias"], p["w"]["kernel"]])  # leaf order

  def loss(p):
    v = flat(p)
    return 0.5 * v @ a @ v + b @ v

  v = np.asarray(flat(params), np.float64)
  g = np.asarray(a, np.float64) @ v + np.asarray(b, np.float64)
  hg = scores.hessian_gradient_product(loss, params)
  np.testing.assert_allclose(np.asarray(flat(hg)), np.asarray(a, np.float64) @ g, rtol=1e-5)

  masks = {"w": {"kernel": jnp.array([True, False, True]), "bias": True}}
  g_masked = g * np.array([0, 0, 1, 0, 1])  # bias never pruned, kernel[1] pruned
  hg = scores.hessian_gradient_product(loss, params, masks)
  np.testing.assert_allclose(np.asarray(flat(hg)), np.asarray(a, np.float64) @ g_masked,
                             rtol=1e-5)


def test_grasp_scores_equal_weights_times_explicit_hessian_times_gradient():
  """On a small MLP: w * (H g), H = jax.hessian of the flat loss, g over the kernels only."""
  params = mlp_params()
  x, y = batch()
  loss = loss_on(x, y, temperature=200.0)
  masks = masks_lib.ones_like(params)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  flat_loss = lambda v: loss(unravel(v))
  h = np.asarray(jax.jit(jax.hessian(flat_loss))(flat), np.float64)
  g = np.asarray(jax.grad(flat_loss)(flat), np.float64)
  is_kernel, _ = jax.flatten_util.ravel_pytree(
      jax.tree.map(lambda m, p: jnp.full(p.shape, masks_lib.is_prunable_mask(m), jnp.float32),
                   masks, params))
  expected = np.asarray(flat, np.float64) * (h @ (g * np.asarray(is_kernel)))
  got, _ = jax.flatten_util.ravel_pytree(
      scores.grasp(params, scores.hessian_gradient_product(loss, params, masks)))
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(got) / scale, expected / scale, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_grasp_keeps_the_highest_w_times_hg(sparsity):
  params = mlp_params(1)
  x, y = batch(4)
  loss = loss_on(x, y, 200.0)
  masks = jax.jit(lambda p: pruning.grasp(p, loss, sparsity))(params)
  hg = scores.hessian_gradient_product(loss, params, masks_lib.ones_like(params))
  score = kernels(scores.grasp(params, hg))
  total = sum(v.size for v in score.values())
  k = int(jnp.round((1.0 - jnp.float32(sparsity)) * total))
  expected = top_k_reference(score, k)
  for name, m in kernels(masks).items():
    np.testing.assert_array_equal(m, expected[name], err_msg=name)
  assert all(bool(v["bias"]) for v in masks.values())  # biases are never pruned


def test_grasp_is_not_snip():
  """The Hessian term matters: GraSP's and SNIP's masks differ on the same batch."""
  params = mlp_params(2)
  x, y = batch(5)
  loss = loss_on(x, y)
  grasp_masks = kernels(pruning.grasp(params, loss, 0.5))
  snip_masks = kernels(pruning.snip(params, jax.grad(loss)(params), 0.5))
  assert any((grasp_masks[n] != snip_masks[n]).any() for n in grasp_masks)


# ----------------------------------------------------------------------------------- SynFlow


def test_synflow_scores_of_a_two_layer_network_by_hand():
  """R = 1'|W0||W1|1: the score of W0_ij is |W0_ij| sum_k |W1_jk|, of W1_jk |W1_jk| sum_i |W0_ij|."""
  params = mlp_params(3, sizes=(4, 3, 2), bias=False)
  s = kernels(scores.synflow(lambda p: mlp(p, jnp.ones((1, 4))), params))
  w0, w1 = (np.abs(np.asarray(params[f"l{i}"]["kernel"], np.float64)) for i in (0, 1))
  np.testing.assert_allclose(s["l0"], w0 * w1.sum(1)[None, :], rtol=1e-6)
  np.testing.assert_allclose(s["l1"], w1 * w0.sum(0)[:, None], rtol=1e-6)


@given(st.integers(0, 2**16), st.floats(0.0, 0.9))
@settings(max_examples=20, deadline=None)
def test_synflow_conserves_flow_in_every_layer(seed, pruned):
  """Tanaka et al., Theorem 1: without biases, every layer's scores sum to R, masked or not."""
  params = mlp_params(seed, bias=False)
  forward = lambda p: mlp(p, jnp.ones((1, 6)))
  masks = pruning.random(jax.random.key(seed), params, pruned, "uniform")
  s = kernels(scores.synflow(forward, params, masks))
  r = float(jnp.sum(forward(jax.tree.map(jnp.abs, masks_lib.apply(params, masks)))))
  for name, layer in s.items():
    assert layer.sum() == pytest.approx(r, rel=1e-4), name
  for name, m in kernels(masks).items():
    assert (s[name][~m] == 0.0).all(), name  # pruned weights carry no flow


def test_synflow_one_iteration_is_one_shot_pruning_by_its_scores():
  params = mlp_params(4)
  forward = lambda p: mlp(p, jnp.ones((1, 6)))
  got = kernels(pruning.synflow(forward, params, 0.7, iterations=1))
  s = kernels(scores.synflow(forward, params))
  k = int(jnp.round((1.0 - jnp.float32(0.7)) * sum(v.size for v in s.values())))
  expected = top_k_reference(s, k)
  for name in got:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_iterative_synflow_keeps_the_exact_count_and_never_disconnects(sparsity):
  """100 rounds reach exactly the one-shot count; every layer keeps a path (R > 0), which is
  what iterating buys: the paper's avoidance of layer collapse."""
  sizes = (64, 300, 100, 10)
  params = mlp_params(5, sizes=sizes)
  forward = lambda p: mlp(p, jnp.ones((1, 64)))
  masks = jax.jit(lambda p: pruning.synflow(forward, p, sparsity))(params)
  total = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  kept = {n: int(m.sum()) for n, m in kernels(masks).items()}
  assert sum(kept.values()) == int(jnp.round((1.0 - jnp.float32(sparsity)) * total))
  assert min(kept.values()) > 0
  no_bias = jax.tree.map(lambda p: p, params)
  for layer in no_bias.values():
    layer["bias"] = jnp.zeros_like(layer["bias"])
  flow = jnp.sum(forward(jax.tree.map(jnp.abs, masks_lib.apply(no_bias, masks))))
  assert float(flow) > 0.0


class SynflowJitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_masks_inside_and_outside_jit(self):
    params = mlp_params(6)
    forward = lambda p: mlp(p, jnp.ones((1, 6)))
    got = self.variant(lambda p: pruning.synflow(forward, p, 0.8, iterations=10, distribution="erk"))(
        params)
    ref = jax.jit(lambda p: pruning.synflow(forward, p, 0.8, iterations=10,
                                            distribution="erk"))(params)
    chex.assert_trees_all_equal(got, ref)


@pytest.mark.parametrize("kwargs,match", [
    ({"iterations": 0}, "iterations=0 must be a positive int"),
    ({"iterations": 2.5}, "iterations=2.5"),
    ({"sparsity": 1.5}, "1.5"),
])
def test_synflow_bad_arguments_name_the_value(kwargs, match):
  args = {"sparsity": 0.5, **kwargs}
  with pytest.raises(ValueError, match=match):
    pruning.synflow(lambda p: mlp(p, jnp.ones((1, 6))), mlp_params(), **args)


# ------------------------------------------------------------------------------------ runner


@pytest.mark.parametrize("method", ["grasp", "synflow"])
def test_runner_prunes_at_init_and_keeps_the_global_count(tmp_path, method):
  """The masks keep exactly round(0.1 N) kernels' weights, fixed through training, pruned
  weights exactly 0.0 in the final params."""
  from test_runner import LENET_DIGITS_KERNELS, digits_config, read_masks, restore_params
  from experiments import experiment
  extra = {"synflow_iterations": 20} if method == "synflow" else {}
  config = digits_config(sparsifier=method, steps="60it", eval_every="60it", log_every="30it",
                         checkpoint_every="60it", distribution="global", **extra)
  summary = experiment.run(config, str(tmp_path))
  assert summary["sparsifier"] == method
  masks = read_masks(tmp_path)
  total = sum(a * b for _, a, b in LENET_DIGITS_KERNELS)
  assert sum(int(m.sum()) for m in masks.values()) == int(jnp.round(jnp.float32(0.1) * total))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert len({r["density"] for r in rows if "density" in r}) == 1
  state = restore_params(tmp_path, 60)
  params = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(state["params"])}
  for path, m in masks.items():
    assert (params[path][~m] == 0.0).all(), path


@pytest.mark.parametrize("overrides,match", [
    ({"sparsifier": "grasp", "grasp_temperature": 0.0}, "grasp_temperature=0.0 must be a positive"),
    ({"sparsifier": "grasp", "grasp_samples_per_class": -3}, "grasp_samples_per_class=-3 must be a positive int"),
    ({"sparsifier": "synflow", "synflow_iterations": 0}, "synflow_iterations=0"),
    ({"sparsifier": "synflow", "distribution": "dense"}, "distribution"),
])
def test_runner_config_errors_name_the_key(tmp_path, overrides, match):
  from experiments import experiment
  from experiments.config import ConfigError
  from test_runner import digits_config
  with pytest.raises(ConfigError, match=match):
    experiment.run(digits_config(**overrides), str(tmp_path))
