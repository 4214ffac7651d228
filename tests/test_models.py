"""Tests for experiments/models.py: shapes, exact parameter counts, purity under jit/grad/vmap,
BatchNorm state handling, initializers and determinism."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models

SMALL = (8, 8, 1)  # scikit-learn digits: small enough to keep every model fast on CPU.
BATCH = 3
NUM_CLASSES = 10
BN_MODELS = ("vgg11", "vgg16", "resnet20")
PLAIN_MODELS = ("lenet300", "conv2", "conv4", "conv6")


@functools.cache
def _create(name, seed=0, input_shape=SMALL):
  return models.create(name, num_classes=NUM_CLASSES, input_shape=input_shape, seed=seed)


def _inputs(input_shape=SMALL, batch=BATCH, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *input_shape), jnp.float32)


def _paths(tree):
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _assert_plain_dict(tree):
  assert type(tree) is dict
  for key, value in tree.items():
    assert isinstance(key, str)
    if isinstance(value, dict):
      _assert_plain_dict(value)
    else:
      assert isinstance(value, jax.Array) and value.dtype == jnp.float32


def test_model_names():
  assert models.MODELS == ("lenet300", "conv2", "conv4", "conv6", "vgg11", "vgg16", "resnet20")


@pytest.mark.parametrize("name", models.MODELS)
def test_output_shape_and_plain_dicts(name):
  model, params, state = _create(name)
  assert model.name == name
  _assert_plain_dict(params)
  _assert_plain_dict(state)
  for train in (False, True):
    logits, new_state = model.apply(params, state, _inputs(), train=train)
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_type(logits, jnp.float32)
    _assert_plain_dict(new_state)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


@pytest.mark.parametrize(
    "name, input_shape, expected",
    [
        # 784*300+300 + 300*100+100 + 100*10+10.
        ("lenet300", (28, 28, 1), 266_610),
        # convs 3*9*64+64 + 64*9*64+64; dense (16*16*64)*256+256 + 256*256+256 + 256*10+10.
        ("conv2", (32, 32, 3), 4_301_642),
        # + convs 64*9*128+128 + 128*9*128+128; first dense (8*8*128)*256+256.
        ("conv4", (32, 32, 3), 2_425_930),
        # + convs 128*9*256+256 + 256*9*256+256; first dense (4*4*256)*256+256. Frankle & Carbin's
        # Fig. 2 lists 1.1M conv weights (we have 1,144,512) but 1.7M in all for this architecture.
        ("conv6", (32, 32, 3), 2_262_602),
        # convs with biases 9,220,480 + BatchNorm 2*2,752 + dense 512*10+10.
        ("vgg11", (32, 32, 3), 9_231_114),
        # convs with biases 14,714,688 + BatchNorm 2*4,224 + dense 512*10+10.
        ("vgg16", (32, 32, 3), 14_728_266),
        # convs (no biases) 270,256 + BatchNorm 2*784 + dense 64*10+10: He et al.'s 0.27M.
        ("resnet20", (32, 32, 3), 272_474),
    ],
)
def test_parameter_counts(name, input_shape, expected):
  params, state = jax.eval_shape(
      lambda: models.create(name, num_classes=10, input_shape=input_shape, seed=0)[1:]
  )
  assert _count(params) == expected
  # BatchNorm keeps a running mean and variance per scale.
  assert (
      _count(state)
      == sum(
          math.prod(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
          if "bn" in jax.tree_util.keystr(path) and path[-1].key == "scale"
      )
      * 2
  )


@pytest.mark.parametrize(
    "name, input_shape, dense1_in",
    [
        ("lenet300", (8, 8, 1), 64),
        ("conv2", (8, 8, 1), 4 * 4 * 64),
        ("conv6", (28, 28, 1), 4 * 4 * 256),  # 28 -> 14 -> 7 -> 4: odd sizes round up.
        ("conv6", (8, 8, 1), 1 * 1 * 256),
    ],
)
def test_first_dense_input_is_inferred(name, input_shape, dense1_in):
  params = jax.eval_shape(
      lambda: models.create(name, num_classes=10, input_shape=input_shape, seed=0)[1]
  )
  assert params["dense1"]["kernel"].shape == (dense1_in, 300 if name == "lenet300" else 256)


def test_param_paths():
  _, params, state = _create("lenet300")
  assert _paths(params) == [
      "['dense1']['bias']",
      "['dense1']['kernel']",
      "['dense2']['bias']",
      "['dense2']['kernel']",
      "['output']['bias']",
      "['output']['kernel']",
  ]
  assert state == {}


@pytest.mark.parametrize("name", models.MODELS)
def test_layer_names(name):
  _, params, state = _create(name)
  paths = dict(zip(_paths(params), jax.tree.leaves(params)))
  assert sorted(p for p in paths if re.search("output", p)) == [
      "['output']['bias']",
      "['output']['kernel']",
  ]
  for path, leaf in paths.items():
    if path.endswith("['scale']"):
      assert "bn" in path
    assert (leaf.ndim >= 2) == path.endswith("['kernel']")
  assert all("bn" in path for path in _paths(state))


@pytest.mark.parametrize("name", models.MODELS)
def test_jit_grad_is_finite(name):
  model, params, state = _create(name)
  x, labels = _inputs(), jnp.arange(BATCH) % NUM_CLASSES

  def loss(params, state):
    logits, new_state = model.apply(params, state, x, train=True)
    one_hot = jax.nn.one_hot(labels, NUM_CLASSES)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1)), new_state

  grads, new_state = jax.jit(jax.grad(loss, has_aux=True))(params, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_equal_structs(new_state, state)
  assert float(jnp.abs(grads["output"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("name", BN_MODELS)
def test_batchnorm_running_stats(name):
  model, params, state = _create(name)
  x = _inputs() + 1.0
  apply = jax.jit(model.apply, static_argnames="train")

  _, trained_state = apply(params, state, x, train=True)
  for path, old, new in zip(_paths(state), jax.tree.leaves(state), jax.tree.leaves(trained_state)):
    assert not np.array_equal(old, new), path

  logits, eval_state = apply(params, state, x, train=False)
  chex.assert_trees_all_equal(eval_state, state)
  # With running statistics every example is computed on its own.
  single, _ = apply(params, state, x[:1], train=False)
  chex.assert_trees_all_close(single, logits[:1], rtol=1e-5, atol=1e-5)


def test_train_does_not_mutate_inputs():
  model, params, state = _create("resnet20")
  before = jax.tree.map(np.asarray, (params, state))
  model.apply(params, state, _inputs(), train=True)
  chex.assert_trees_all_equal((params, state), before)


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_models_without_batchnorm_have_empty_state(name):
  model, params, state = _create(name)
  assert state == {}
  _, new_state = model.apply(params, state, _inputs(), train=True)
  assert new_state == {}


class LeNetApplyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_formula(self):
    model, params, state = _create("lenet300")
    x = _inputs()
    apply = self.variant(functools.partial(model.apply, train=False))
    logits, _ = apply(params, state, x)
    h = x.reshape(BATCH, -1)
    for layer in ("dense1", "dense2"):
      h = jax.nn.relu(h @ params[layer]["kernel"] + params[layer]["bias"])
    expected = h @ params["output"]["kernel"] + params["output"]["bias"]
    chex.assert_trees_all_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_vmap_over_two_parameter_sets():
  model, params0, state = _create("lenet300", seed=0)
  _, params1, _ = _create("lenet300", seed=1)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params0, params1)
  x = _inputs()
  logits, _ = jax.jit(
      jax.vmap(functools.partial(model.apply, train=False), in_axes=(0, None, None))
  )(stacked, state, x)
  chex.assert_shape(logits, (2, BATCH, NUM_CLASSES))
  chex.assert_trees_all_close(
      logits[0], model.apply(params0, state, x, train=False)[0], rtol=1e-5, atol=1e-5
  )
  chex.assert_trees_all_close(
      logits[1], model.apply(params1, state, x, train=False)[0], rtol=1e-5, atol=1e-5
  )


def test_unknown_name_raises():
  with pytest.raises(ValueError, match="resnet21") as error:
    models.create("resnet21", num_classes=10, input_shape=(32, 32, 3), seed=0)
  assert all(name in str(error.value) for name in models.MODELS)


def test_conv_model_needs_image_shape():
  with pytest.raises(ValueError, match="height, width, channels"):
    models.create("conv2", num_classes=10, input_shape=(64,), seed=0)


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_determinism(name):
  _, params, state = _create(name, seed=0)
  _, same_params, same_state = models.create(
      name, num_classes=NUM_CLASSES, input_shape=SMALL, seed=0
  )
  chex.assert_trees_all_equal((params, state), (same_params, same_state))
  _, other_params, _ = _create(name, seed=1)
  for path, a, b in zip(_paths(params), jax.tree.leaves(params), jax.tree.leaves(other_params)):
    if path.endswith("['kernel']") or path.endswith("['scale']"):
      assert not np.array_equal(a, b), path


def test_glorot_normal_for_lth_networks():
  _, params, _ = _create("lenet300", input_shape=(28, 28, 1))
  kernel = params["dense1"]["kernel"]  # fan_in 784, fan_out 300.
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (784 + 300)), rtol=0.03)
  assert not np.any(params["dense1"]["bias"])


def test_kaiming_normal_and_uniform_batchnorm_for_openlth_networks():
  _, params, state = _create("resnet20")
  kernel = params["stage3_block2"]["conv2"]["kernel"]  # 3x3x64x64, fan_in 576.
  std = math.sqrt(2 / 576)
  np.testing.assert_allclose(np.std(kernel), std, rtol=0.03)
  assert np.abs(kernel).max() > 2.5 * std  # A plain normal, not a truncated one.
  scale = params["stage3_block2"]["bn2"]["scale"]
  assert np.all((scale >= 0) & (scale < 1)) and np.std(scale) > 0
  assert not np.any(params["stage3_block2"]["bn2"]["bias"])
  chex.assert_trees_all_equal(state["bn"], {"mean": jnp.zeros(16), "var": jnp.ones(16)})
