"""Tests for sparsejax/structured/discover.py and experiments/model_groups.py: the groups traced
from every zoo model equal the hand-declared ones and are numerically zero-invariant (OTOv2,
Sec. 3); plain-dict, Flax NNX and linen containers; layouts after concatenation, depthwise
convolution and NCHW flattening; refusals that name the primitive and the parameters."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from experiments import model_groups, models
from sparsejax.structured import discover as discover_lib
from sparsejax.structured import groups as groups_lib
from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member

IMAGE = (8, 8, 3)
BATCH = 2
# Sets per model: every hidden layer, BatchNorm layer or residual stream, never the output.
NUM_SETS = {"lenet300": 2, "conv2": 4, "conv4": 6, "conv6": 8, "vgg11": 8, "vgg16": 13,
            "resnet20": 12, "cnn_bn": 3}


@functools.cache
def _zoo(name: str) -> tuple[models.Model, dict, dict, jax.Array]:
  """(model, params, state, inputs). The arrays are drawn with numpy in the shapes of
  ``model.init`` (cheaper than running it): He-scaled kernels, and biases, scales and running
  statistics away from 0 and 1, so that a bias or a buffer the groups get wrong changes the
  output."""
  model = models.build(name, num_classes=10, input_shape=IMAGE)
  rng = np.random.default_rng(0)

  def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    last, shape = jax.tree_util.keystr(path[-1:]), leaf.shape
    if last == "['kernel']":
      x = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif last in ("['var']", "['scale']"):
      x = 0.5 + rng.uniform(size=shape)
    else:
      x = 0.5 * rng.normal(size=shape)
    return jnp.asarray(x, leaf.dtype)

  params, state = jax.tree_util.tree_map_with_path(
      draw, jax.eval_shape(model.init, jax.random.key(0)))
  inputs = jnp.asarray(rng.normal(size=(BATCH, *IMAGE)), jnp.float32)
  return model, params, state, inputs


def _normal(*shape: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(shape).normal(size=shape), jnp.float32)


def _differ(a: Groups, b: Groups) -> str:
  return f"\n{groups_lib.table(a)}\n---\n{groups_lib.table(b)}"


@pytest.mark.parametrize("name", models.MODELS)
def test_discovered_groups_equal_declared(name):
  model, params, state, inputs = _zoo(name)
  declared = model_groups.declared(model, params, state)
  assert len(declared.sets) == NUM_SETS[name]
  assert not any(m.path.startswith("['output']") for s in declared.sets for m in s.members)
  for train in (False, True):
    found = discover_lib.discover(
        lambda p, s, x, train=train: model.apply(p, s, x, train=train), params, inputs,
        state=state)
    assert found == declared, _differ(found, declared)


@pytest.mark.parametrize("name", models.MODELS)
def test_zoo_groups_are_zero_invariant(name):
  model, params, state, inputs = _zoo(name)
  apply = jax.jit(lambda p, x: model.apply(p, state, x, train=False)[0])
  found = discover_lib.discover(
      lambda p, s, x: model.apply(p, s, x, train=False), params, inputs, state=state)
  groups_lib.validate(found, params, apply, inputs)
  groups_lib.validate(model_groups.declared(model, params, state), params, apply, inputs)


def test_zoo_buffers_are_the_batchnorm_statistics():
  model, params, state, _ = _zoo("vgg11")
  groups = model_groups.declared(model, params, state)
  buffers = {b.path for s in groups.sets for b in s.buffers}
  expected = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
  assert buffers == expected
  assert groups.sets[0].buffers == (Member("['layer1']['bn']['mean']", 0),
                                    Member("['layer1']['bn']['var']", 0))


def test_declared_groups_follow_the_widths():
  """Sizes come from the shapes: a narrower ResNet-20 (one block's inner width, one stream) and
  VGG-11 are still discovered and declared alike."""
  for name, widths in (("resnet20", {"stage1_block1": 8, "stage2": 24}), ("vgg11", {"layer3": 7})):
    model = models.build(name, num_classes=10, input_shape=IMAGE, widths=widths)
    params, state = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, a.dtype),
                                           jax.eval_shape(model.init, jax.random.key(0)))
    found = discover_lib.discover(lambda p, s, x: model.apply(p, s, x, train=False), params,
                                  jnp.ones((BATCH, *IMAGE)), state=state)
    declared = model_groups.declared(model, params, state)
    assert found == declared, _differ(found, declared)
    assert set(widths.values()) <= set(declared.sizes)


def test_declared_needs_a_known_model():
  model, params, state, _ = _zoo("lenet300")
  with pytest.raises(ValueError, match="no declared groups for model 'mlp'"):
    model_groups.declared(dataclasses.replace(model, name="mlp"), params, state)


# ---------------------------------------------------------------------------------------------
# One MLP in three containers.


class NnxMLP(nnx.Module):
  """dense1 (4 -> 6) -> act -> dense2 (6 -> 5) -> relu -> output (5 -> 3)."""

  def __init__(self, rngs: nnx.Rngs, act: Callable[[jax.Array], jax.Array] = jax.nn.relu):
    self.dense1 = nnx.Linear(4, 6, rngs=rngs)
    self.dense2 = nnx.Linear(6, 5, rngs=rngs)
    self.output = nnx.Linear(5, 3, rngs=rngs)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.output(jax.nn.relu(self.dense2(self.act(self.dense1(x)))))


class LinenMLP(nn.Module):
  """The same MLP as :class:`NnxMLP`, in linen."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(nn.Dense(6, name="dense1")(x))
    x = jax.nn.relu(nn.Dense(5, name="dense2")(x))
    return nn.Dense(3, name="output")(x)


def _mlp(params: dict, x: jax.Array,
         act: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  for name, f in (("dense1", act), ("dense2", jax.nn.relu)):
    x = f(x @ params[name]["kernel"] + params[name]["bias"])
  return x @ params["output"]["kernel"] + params["output"]["bias"]


def _mlp_groups(params, prefix: str = "", suffix: str = "", size1: int = 6) -> Groups:
  """The MLP's two hidden sets, declared by hand for paths ``prefix['layer']['leaf']suffix``."""

  def path(layer: str, leaf: str) -> str:
    return f"{prefix}['{layer}']['{leaf}']{suffix}"

  return discover_lib.canonical(groups_lib.declare([
      ("dense1", size1, [(path("dense1", "kernel"), 1), (path("dense1", "bias"), 0)],
       [(path("dense2", "kernel"), 0)]),
      ("dense2", 5, [(path("dense2", "kernel"), 1), (path("dense2", "bias"), 0)],
       [(path("output", "kernel"), 0)]),
  ]), params)


@pytest.fixture(scope="module")
def mlp():
  """(graphdef, NNX state, the same weights as a plain dict, inputs)."""
  graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0)))
  state = jax.tree_util.tree_map(lambda x: x + 0.3, state)  # nonzero biases
  return graphdef, state, nnx.to_pure_dict(state), _normal(3, 4)


def test_mlp_as_plain_dict(mlp):
  _, _, params, x = mlp
  groups = discover_lib.discover(_mlp, params, x)
  assert groups == _mlp_groups(params)
  assert [s.name for s in groups.sets] == ["['dense1']", "['dense2']"]
  groups_lib.validate(groups, params, _mlp, x)


def test_mlp_as_nnx_state(mlp):
  graphdef, state, params, x = mlp

  def apply(s, x):
    return nnx.merge(graphdef, s)(x)

  chex.assert_trees_all_close(apply(state, x), _mlp(params, x))
  groups = discover_lib.discover(apply, state, x)
  assert groups == _mlp_groups(state, suffix=".value"), _differ(groups, _mlp_groups(state))
  assert [s.name for s in groups.sets] == ["['dense1']", "['dense2']"]
  groups_lib.validate(groups, state, apply, x)
  # The pure-dict form of the same state gives the plain paths.
  assert discover_lib.discover(apply, nnx.to_pure_dict(state), x) == _mlp_groups(params)


def test_mlp_as_linen_variables(mlp):
  _, _, params, x = mlp
  module = LinenMLP()
  variables = {"params": params}
  chex.assert_trees_all_close(module.apply(variables, x), _mlp(params, x))
  groups = discover_lib.discover(module.apply, variables, x)
  assert groups == _mlp_groups(variables, prefix="['params']")
  assert [s.name for s in groups.sets] == ["['params']['dense1']", "['params']['dense2']"]
  groups_lib.validate(groups, variables, module.apply, x)


# ---------------------------------------------------------------------------------------------
# Refusals.


def test_sigmoid_hidden_layer_is_refused(mlp):
  _, _, params, x = mlp

  def apply(p, x):
    return _mlp(p, x, act=jax.nn.sigmoid)

  with pytest.raises(ValueError, match=re.escape(
      "logistic on the output of ['dense1']['kernel'] maps 0 to 0.5")):
    discover_lib.discover(apply, params, x)
  loose = discover_lib.discover(apply, params, x, strict=False)
  assert [s.name for s in loose.sets] == ["['dense2']"]
  groups_lib.validate(loose, params, apply, x)


def test_sigmoid_in_nnx_module_is_refused():
  graphdef, state = nnx.split(NnxMLP(nnx.Rngs(0), act=jax.nn.sigmoid))
  with pytest.raises(ValueError, match=re.escape(
      "logistic on the output of ['dense1']['kernel'].value maps 0 to 0.5")):
    discover_lib.discover(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((2, 4)))


@pytest.mark.parametrize("act, message", [
    (jnp.exp, "exp on the output of ['dense1']['kernel'] maps 0 to 1"),
    (lambda h: h - 1.0, "sub on the output of ['dense1']['kernel'] maps 0 to -1"),
    (lambda h: jnp.cumsum(h, axis=-1),
     "cumsum (a primitive discover does not know) reads the output of ['dense1']['kernel']"),
    (lambda h: h / jnp.sum(h, axis=-1, keepdims=True),
     "reduce_sum sums or compares across the channels of the output of ['dense1']['kernel']"),
])
def test_activations_that_break_zero_invariance_are_refused(mlp, act, message):
  _, _, params, x = mlp
  with pytest.raises(ValueError, match=re.escape(message)):
    discover_lib.discover(lambda p, x: _mlp(p, x, act=act), params, x)


def test_adding_the_input_is_refused(mlp):
  _, _, params, x = mlp
  with pytest.raises(ValueError, match=re.escape(
      "add on the output of ['dense1']['kernel'] mixes in a value that is not indexed by the "
      "channel")):
    discover_lib.discover(lambda p, x: _mlp(p, x, act=lambda h: h + x[:, :1]), params, x)


def _normalized(p: dict, s: dict, x: jax.Array, *, scale: bool) -> jax.Array:
  """dense1 -> (h - running mean) [* bn scale] + bn bias -> relu -> output."""
  h = x @ p["dense1"]["kernel"] - s["bn"]["mean"]
  if scale:
    h = h * p["bn"]["scale"]
  return jax.nn.relu(h + p["bn"]["bias"]) @ p["output"]["kernel"]


def test_a_scale_member_makes_a_shifted_channel_zero_again():
  params = {"dense1": {"kernel": _normal(4, 6)}, "bn": {"scale": _normal(6), "bias": _normal(6)},
            "output": {"kernel": _normal(6, 2)}}
  state = {"bn": {"mean": jnp.linspace(-1.0, 1.0, 6)}}
  x = jnp.ones((2, 4))
  groups = discover_lib.discover(functools.partial(_normalized, scale=True), params, x,
                                 state=state)
  assert groups == Groups((GroupSet(
      "['bn']", 6,
      (Member("['bn']['bias']", 0), Member("['bn']['scale']", 0),
       Member("['dense1']['kernel']", 1)),
      (Consumer("['output']['kernel']", 0),), (Member("['bn']['mean']", 0),)),))
  groups_lib.validate(groups, params,
                      lambda p, x: _normalized(p, state, x, scale=True), x)
  with pytest.raises(ValueError, match=re.escape(
      "sub of the buffer ['bn']['mean'] on the output of ['dense1']['kernel']")):
    discover_lib.discover(functools.partial(_normalized, scale=False), params, x, state=state)


def test_validate_rejects_wrong_declarations(mlp):
  _, _, params, x = mlp
  with pytest.raises(ValueError, match=re.escape(
      "group set \"['dense1']\": member ['dense1']['bias'] axis 0 has length 6, but the set has 5 "
      "groups")):
    groups_lib.validate(_mlp_groups(params, size1=5), params, _mlp, x)

  def sigmoid_net(p, x):
    return _mlp(p, x, act=jax.nn.sigmoid)

  with pytest.raises(ValueError, match=re.escape(
      "group set \"['dense1']\" is not zero-invariant")):
    groups_lib.validate(_mlp_groups(params), params, sigmoid_net, x)
  groups_lib.validate(_mlp_groups(params), params, _mlp, x)


# ---------------------------------------------------------------------------------------------
# Layouts, nested calls, canonical form.


def _conv(x: jax.Array, w: jax.Array, stride: int = 1, groups: int = 1) -> jax.Array:
  return lax.conv_general_dilated(x, w, (stride, stride), "SAME", feature_group_count=groups,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_concatenation_depthwise_and_nchw_flatten():
  params = {"a": {"kernel": _normal(3, 3, 3, 4)}, "b": {"kernel": _normal(1, 1, 3, 5)},
            "c": {"kernel": _normal(3, 3, 9, 6)}, "dw": {"kernel": _normal(3, 3, 1, 6)},
            "out": {"kernel": _normal(6 * 4 * 4, 2)}}

  def apply(p, x):
    h = jnp.concatenate([_conv(x, p["a"]["kernel"]), _conv(x, p["b"]["kernel"])], axis=-1)
    h = jax.nn.relu(_conv(jax.nn.relu(h), p["c"]["kernel"]))
    h = _conv(h, p["dw"]["kernel"], stride=2, groups=6)
    return jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1) @ p["out"]["kernel"]

  x = _normal(2, *IMAGE)
  groups = discover_lib.discover(apply, params, x)
  assert groups == Groups((
      GroupSet("['a']", 4, (Member("['a']['kernel']", 3),), (Consumer("['c']['kernel']", 2),)),
      GroupSet("['b']", 5, (Member("['b']['kernel']", 3),),
               (Consumer("['c']['kernel']", 2, offset=4),)),
      GroupSet("['c']", 6, (Member("['c']['kernel']", 3), Member("['dw']['kernel']", 3)),
               (Consumer("['out']['kernel']", 0, inner=16),)),
  )), groups_lib.table(groups)
  groups_lib.validate(groups, params, jax.jit(apply), x)


@jax.custom_vjp
def _relu_vjp(x):
  return jnp.maximum(x, 0.0)


_relu_vjp.defvjp(lambda x: (_relu_vjp(x), x), lambda x, g: (g * (x > 0),))


def test_nested_jit_checkpoint_and_custom_vjp(mlp):
  _, _, params, x = mlp

  def apply(p, x):
    h = jax.checkpoint(lambda x: jax.nn.relu(x @ p["dense1"]["kernel"] + p["dense1"]["bias"]))(x)
    h = jax.jit(_relu_vjp)(h @ p["dense2"]["kernel"] + p["dense2"]["bias"])
    return h @ p["output"]["kernel"] + p["output"]["bias"]

  assert discover_lib.discover(apply, params, x) == _mlp_groups(params)


def test_canonical_orders_and_names_any_declaration():
  model, params, state, _ = _zoo("resnet20")
  declared = model_groups.declared(model, params, state)
  shuffled = Groups(tuple(
      GroupSet(f"set{i}", s.size, s.members[::-1], s.consumers[::-1], s.buffers[::-1])
      for i, s in enumerate(declared.sets[::-1])))
  assert shuffled != declared
  assert discover_lib.canonical(shuffled, params) == declared
  assert [s.name for s in declared.sets[:2]] == ["['bn']", "['stage1_block1']['bn1']"]
  wrong = Groups((GroupSet("mine", 16, (Member("['nope']['kernel']", 3),)),))
  with pytest.raises(ValueError, match=re.escape(
      "group set 'mine': member ['nope']['kernel'] is not a leaf of the params")):
    discover_lib.canonical(wrong, params)

