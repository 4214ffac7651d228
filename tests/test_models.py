"""Tests for experiments/models.py: shapes, exact parameter counts, purity under jit/grad/vmap,
BatchNorm state handling, models built from keys (vmap over keys), initializers and
determinism."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from experiments import models

SMALL = (8, 8, 1)  # scikit-learn digits: small enough to keep every model fast on CPU.
BATCH = 3
NUM_CLASSES = 10
BN_MODELS = ("vgg11", "vgg16", "resnet20")
PLAIN_MODELS = ("lenet300", "conv2", "conv4", "conv6")
# One model of every kind of layer: dense, conv with bias, conv + BatchNorm, residual blocks.
INIT_MODELS = ("lenet300", "conv2", "vgg11", "resnet20")


@functools.cache
def _create(name, seed=0, input_shape=SMALL, **inits):
  return models.create(
      name, num_classes=NUM_CLASSES, input_shape=input_shape, key=jax.random.key(seed), **inits
  )


def _inputs(input_shape=SMALL, batch=BATCH, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, *input_shape), jnp.float32)


def _paths(tree):
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _leaves(tree):
  return dict(zip(_paths(tree), jax.tree.leaves(tree)))


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
  assert models.MODELS == ("lenet300", "conv2", "conv4", "conv6", "vgg11", "vgg16", "resnet20",
                           "cnn_bn")


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
  model = models.build(name, num_classes=10, input_shape=input_shape)
  params, state = jax.eval_shape(model.init, jax.random.key(0))
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
  model = models.build(name, num_classes=10, input_shape=input_shape)
  params, _ = jax.eval_shape(model.init, jax.random.key(0))
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


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_bn_evaluation_folds_the_batchnorm_into_the_convolution(use_bias):
  layer = models.ConvBN(3, 5, models._Init("kaiming_normal", "pytorch"), nnx.Rngs(0))
  if not use_bias:
    layer.conv = models._conv(3, 5, models._Init("kaiming_normal", "zeros"), nnx.Rngs(1),
                              use_bias=False)
  keys = jax.random.split(jax.random.key(2), 4)
  layer.bn.mean[...] = jax.random.normal(keys[0], (5,))
  layer.bn.var[...] = jax.random.uniform(keys[1], (5,), minval=0.1, maxval=3.0)
  layer.bn.scale[...] = jax.random.normal(keys[2], (5,))
  layer.bn.bias[...] = jax.random.normal(keys[3], (5,))
  x = _inputs((8, 8, 3))
  unfolded = nnx.relu(layer.bn(layer.conv(x), use_running_average=True))
  chex.assert_trees_all_close(layer(x, train=False), unfolded, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(unfolded).max()) > 0


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


@pytest.mark.parametrize(
    "kwargs, bad, valid",
    [
        ({"name": "resnet21"}, "resnet21", models.MODELS),
        ({"name": "lenet300", "model_init": "he_normal"}, "he_normal", models.MODEL_INITS),
        ({"name": "lenet300", "bias_init": "uniform"}, "uniform", models.BIAS_INITS),
    ],
)
def test_unknown_name_raises(kwargs, bad, valid):
  for make in (models.build, functools.partial(models.create, key=jax.random.key(0))):
    with pytest.raises(ValueError, match=bad) as error:
      make(num_classes=10, input_shape=(32, 32, 3), **kwargs)
    assert all(name in str(error.value) for name in valid)


def test_conv_model_needs_image_shape():
  with pytest.raises(ValueError, match="height, width, channels"):
    models.build("conv2", num_classes=10, input_shape=(64,))
  with pytest.raises(ValueError, match="height, width, channels"):
    models.create("conv2", num_classes=10, input_shape=(64,), key=jax.random.key(0))


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_determinism(name):
  model, params, state = _create(name, seed=0)
  _, same_params, same_state = models.create(
      name, num_classes=NUM_CLASSES, input_shape=SMALL, key=jax.random.key(0)
  )
  chex.assert_trees_all_equal((params, state), (same_params, same_state))
  chex.assert_trees_all_equal(model.init(jax.random.key(0)), (params, state))
  # A raw uint32 key is the same key.
  chex.assert_trees_all_equal(model.init(jax.random.PRNGKey(0)), (params, state))
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


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_models_with_the_same_arguments_are_equal(name):
  model, _, _ = _create(name, seed=0)
  other_key, _, _ = _create(name, seed=1)
  built = models.build(name, num_classes=NUM_CLASSES, input_shape=list(SMALL))
  assert model == other_key == built and hash(model) == hash(other_key) == hash(built)
  assert (model.name, model.num_classes, model.input_shape) == (name, NUM_CLASSES, SMALL)
  assert model.model_init != "default" and model.bias_init == "zeros"
  explicit = models.build(
      name, num_classes=NUM_CLASSES, input_shape=SMALL, model_init=model.model_init
  )
  assert explicit == model
  for changed in (
      {"num_classes": 7},
      {"input_shape": (16, 16, 1)},
      {"model_init": "kaiming_uniform"},
      {"bias_init": "pytorch"},
  ):
    kwargs = {"num_classes": NUM_CLASSES, "input_shape": SMALL, **changed}
    assert models.build(name, **kwargs) != model, changed

  traces = []

  @functools.partial(jax.jit, static_argnums=0)
  def logits(model, params, state, x):
    traces.append(model)
    return model.apply(params, state, x, train=False)[0]

  for seed in (0, 1):
    _, params, state = _create(name, seed=seed)
    logits(models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL), params, state, _inputs())
  assert len(traces) == 1  # Equal models share the compiled function.


def test_init_under_jit():
  model, params, state = _create("lenet300")
  jitted = jax.jit(model.init)(jax.random.key(0))
  chex.assert_trees_all_equal(jitted, jax.jit(model.init)(jax.random.key(0)))
  # XLA may fuse the scaling of normal draws differently from eager execution.
  chex.assert_trees_all_close(jitted, (params, state), rtol=1e-6, atol=1e-7)


def test_vmap_over_keys_builds_one_model_per_key():
  model, _, _ = _create("lenet300")
  keys = jax.random.split(jax.random.key(0), 4)
  params, state = jax.vmap(model.init)(keys)
  single = [model.init(key) for key in keys]
  for index, expected in enumerate(single):
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[index], (params, state)), expected)
  kernels = [p["output"]["kernel"] for p, _ in single]
  for i in range(4):
    for j in range(i):
      assert not np.array_equal(kernels[i], kernels[j]), (i, j)
  logits, _ = jax.vmap(functools.partial(model.apply, train=False), in_axes=(0, 0, None))(
      params, state, _inputs()
  )
  chex.assert_shape(logits, (4, BATCH, NUM_CLASSES))
  chex.assert_trees_all_close(
      logits[2], model.apply(*single[2], _inputs(), train=False)[0], rtol=1e-5, atol=1e-5
  )


def test_vmap_over_keys_stacks_batchnorm_state():
  model, params, state = _create("resnet20")
  stacked = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.key(0), 4))
  chex.assert_trees_all_equal_shapes_and_dtypes(
      stacked, jax.tree.map(lambda a: jax.ShapeDtypeStruct((4, *a.shape), a.dtype), (params, state))
  )


def _fans(kernel):
  """(fan_in, fan_out) of a dense (in, out) or HWIO convolution kernel."""
  receptive_field = math.prod(kernel.shape[:-2])
  return kernel.shape[-2] * receptive_field, kernel.shape[-1] * receptive_field


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_default_init_is_the_paper_default(name):
  paper_default = "glorot_normal" if name == "lenet300" else "kaiming_normal"
  model, params, state = _create(name)
  assert model.model_init == paper_default
  named = _create(name, model_init=paper_default)
  assert named[0] == model
  chex.assert_trees_all_equal(named[1:], (params, state))


@pytest.mark.parametrize("model_init", models.MODEL_INITS[1:])
def test_model_init_statistics(model_init):
  _, lenet, _ = _create("lenet300", input_shape=(28, 28, 1), model_init=model_init)
  _, resnet, _ = _create("resnet20", model_init=model_init)
  large = {
      "dense 784x300": lenet["dense1"]["kernel"],
      "conv 3x3x64x64": resnet["stage3_block2"]["conv2"]["kernel"],
  }
  for what, kernel in large.items():
    fan_in, fan_out = _fans(kernel)
    fan = fan_in if model_init.startswith("kaiming") else (fan_in + fan_out) / 2
    std = math.sqrt(1 / fan)
    if model_init.startswith("kaiming"):
      std *= math.sqrt(2)  # He et al.'s gain for ReLU.
    np.testing.assert_allclose(np.std(kernel), std, rtol=0.03, err_msg=what)
    assert abs(np.mean(kernel)) < 0.03 * std, what
    largest = np.abs(kernel).max()
    if model_init.endswith("uniform"):
      bound = math.sqrt(3) * std
      assert bound * 0.99 < largest <= bound, what
    elif model_init == "glorot_normal":
      # Truncated at two standard deviations of the normal before truncation.
      assert 2.2 * std < largest <= 2 * std / 0.87962566103423978, what
    else:
      assert largest > 3.5 * std, what  # A plain normal, not a truncated one.


@pytest.mark.parametrize("name", INIT_MODELS)
@pytest.mark.parametrize("model_init", ["kaiming_uniform", "glorot_uniform"])
def test_model_init_applies_to_every_kernel(name, model_init):
  _, params, _ = _create(name, model_init=model_init)
  kernels = {p: leaf for p, leaf in _leaves(params).items() if p.endswith("['kernel']")}
  assert kernels
  for path, kernel in kernels.items():
    fan_in, fan_out = _fans(kernel)
    fan = fan_in / 2 if model_init == "kaiming_uniform" else (fan_in + fan_out) / 2
    bound = math.sqrt(3 / fan)
    largest = np.abs(kernel).max()
    assert 0.9 * bound < largest <= bound, path


def _bias_fan_ins(params):
  """{bias path: fan_in of the kernel next to it} for every dense and convolution bias."""
  leaves = _leaves(params)
  return {
      path: _fans(leaves[path.replace("['bias']", "['kernel']")])[0]
      for path in leaves
      if path.endswith("['bias']") and "bn" not in path
  }


@pytest.mark.parametrize("name", INIT_MODELS)
def test_pytorch_bias_init(name):
  _, params, state = _create(name, bias_init="pytorch")
  leaves = _leaves(params)
  fan_ins = _bias_fan_ins(params)
  assert "['output']['bias']" in fan_ins
  for path, fan_in in fan_ins.items():
    bias, bound = leaves[path], 1 / math.sqrt(fan_in)
    assert np.abs(bias).max() <= bound, path
    if bias.size >= 100:
      assert bias.max() > 0.75 * bound and bias.min() < -0.75 * bound, path
  for path, leaf in leaves.items():
    if "bn" in path and path.endswith("['bias']"):
      assert not np.any(leaf), path  # BatchNorm shifts are no layer biases.
  # The biases draw from their own keys: kernels are the same whatever bias_init.
  _, zero_bias_params, zero_bias_state = _create(name)
  for path, leaf in _leaves(zero_bias_params).items():
    if path not in fan_ins:
      np.testing.assert_array_equal(leaves[path], leaf, err_msg=path)
  chex.assert_trees_all_equal(state, zero_bias_state)


def test_pytorch_bias_fan_in_for_dense_and_conv():
  _, lenet, _ = _create("lenet300", input_shape=(28, 28, 1), bias_init="pytorch")
  assert _bias_fan_ins(lenet) == {
      "['dense1']['bias']": 784,
      "['dense2']['bias']": 300,
      "['output']['bias']": 100,
  }
  _, conv, _ = _create("conv2", bias_init="pytorch")
  # 3x3 convolutions over 1 then 64 channels; 8x8 input pooled once to 4x4x64.
  assert _bias_fan_ins(conv) == {
      "['conv1']['bias']": 9,
      "['conv2']['bias']": 576,
      "['dense1']['bias']": 1024,
      "['dense2']['bias']": 256,
      "['output']['bias']": 256,
  }
  assert np.abs(conv["conv1"]["bias"]).max() > 0.75 / 3  # Spans U(-1/3, 1/3).


@pytest.mark.parametrize("name", INIT_MODELS)
def test_zeros_bias_init(name):
  _, params, _ = _create(name)
  leaves = _leaves(params)
  assert _bias_fan_ins(params)
  for path in _bias_fan_ins(params):
    np.testing.assert_array_equal(leaves[path], 0.0, err_msg=path)


def _shapes(tree):
  return jax.tree.map(lambda a: a.shape, tree)


@pytest.mark.parametrize("name", models.MODELS)
def test_widths_round_trip(name):
  model = models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL)
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  assert model.widths_of(params) == model.widths
  narrow = {key: max(1, width // 3 - index % 3) for index, (key, width) in
            enumerate(model.widths.items())}
  small = models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL, widths=narrow)
  assert small.widths == narrow and small != model
  small_params, small_state = jax.eval_shape(small.init, jax.random.key(0))
  assert small.widths_of(small_params) == model.widths_of(small_params) == narrow
  # The same layers, narrower: no layer (no ResNet shortcut) appears or disappears.
  assert jax.tree.structure((small_params, small_state)) == jax.tree.structure((params, state))
  rebuilt = models.build(
      name, num_classes=NUM_CLASSES, input_shape=SMALL, widths=model.widths_of(small_params)
  )
  assert rebuilt == small and hash(rebuilt) == hash(small)
  assert _shapes(jax.eval_shape(rebuilt.init, jax.random.key(0))) == _shapes(
      (small_params, small_state)
  )
  logits, new_state = jax.eval_shape(
      functools.partial(small.apply, train=True), small_params, small_state, _inputs()
  )
  assert logits.shape == (BATCH, NUM_CLASSES) and _shapes(new_state) == _shapes(small_state)


def test_lenet300_widths_set_the_hidden_layers():
  params = jax.eval_shape(
      lambda key: models.create(
          "lenet300",
          num_classes=NUM_CLASSES,
          input_shape=SMALL,
          key=key,
          widths={"dense2": np.int64(7)},
      )[1],
      jax.random.key(0),
  )
  assert _shapes(params) == {
      "dense1": {"kernel": (64, 300), "bias": (300,)},
      "dense2": {"kernel": (300, 7), "bias": (7,)},
      "output": {"kernel": (7, NUM_CLASSES), "bias": (NUM_CLASSES,)},
  }


def test_resnet20_widths_tie_the_residual_stream_and_keep_the_shortcuts():
  model = models.build(
      "resnet20",
      num_classes=NUM_CLASSES,
      input_shape=SMALL,
      widths={"stage1": 5, "stage2_block1": 7, "stage2": 9, "stage3": 16},
  )
  params, state = _shapes(jax.eval_shape(model.init, jax.random.key(0)))
  assert params["conv"]["kernel"] == (3, 3, 1, 5) and state["bn"]["mean"] == (5,)
  assert params["stage1_block1"]["conv1"]["kernel"] == (3, 3, 5, 16)
  assert params["stage1_block3"]["conv2"]["kernel"] == (3, 3, 16, 5)
  assert params["stage2_block1"]["conv1"]["kernel"] == (3, 3, 5, 7)
  assert params["stage2_block1"]["conv2"]["kernel"] == (3, 3, 7, 9)
  assert params["stage2_block1"]["shortcut_conv"]["kernel"] == (1, 1, 5, 9)
  assert params["stage2_block2"]["conv1"]["kernel"] == (3, 3, 9, 32)
  assert params["stage3_block1"]["shortcut_conv"]["kernel"] == (1, 1, 9, 16)
  assert params["output"]["kernel"] == (16, NUM_CLASSES)
  # The shortcut convolutions are the architecture's, whatever the widths: with every stage
  # 16 wide the first blocks of stages 2 and 3 still project, those of stage 1 do not.
  same = models.build(
      "resnet20",
      num_classes=NUM_CLASSES,
      input_shape=SMALL,
      widths={key: 16 for key in model.widths},
  )
  blocks = jax.eval_shape(same.init, jax.random.key(0))[0]
  assert [name for name in blocks if "shortcut_conv" in blocks[name]] == [
      "stage2_block1",
      "stage3_block1",
  ]


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_default_widths_are_the_architecture(name):
  model = models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL)
  explicit = models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL, widths=model.widths)
  assert explicit == model and hash(explicit) == hash(model)
  assert models.build(name, num_classes=NUM_CLASSES, input_shape=SMALL, widths={}) == model
  key = next(iter(model.widths))
  changed = models.build(
      name, num_classes=NUM_CLASSES, input_shape=SMALL, widths={key: model.widths[key] - 1}
  )
  assert changed != model
  model.widths[key] = 1  # A copy: the model does not change.
  assert model.widths == explicit.widths


@pytest.mark.parametrize(
    "widths, bad",
    [
        ({"dense3": 5}, "dense3"),
        ({"conv1": 5, "dense1": 4}, "conv1"),
        ({"dense1": 0}, "dense1"),
        ({"dense1": -3}, "dense1"),
        ({"dense2": 2.5}, "dense2"),
        ({"dense2": True}, "dense2"),
        ({"dense2": "8"}, "dense2"),
    ],
)
def test_bad_widths_raise(widths, bad):
  for make in (models.build, functools.partial(models.create, key=jax.random.key(0))):
    with pytest.raises(ValueError, match=bad) as error:
      make("lenet300", num_classes=NUM_CLASSES, input_shape=SMALL, widths=widths)
    assert "dense1" in str(error.value) and "dense2" in str(error.value)
