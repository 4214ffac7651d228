"""Tests for sparsejax.structured.compress and sparsejax.metrics: removing zero groups (Chen et al.,
Only-Train-Once, OTOv1 NeurIPS 2021 / OTOv2 ICLR 2023) leaves the outputs unchanged, on hand-built
networks (an MLP, a CNN with BatchNorm and a Flatten, a residual network) and on zoo models rebuilt
at the compressed widths; MAC and parameter counts."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from experiments import models
from sparsejax import metrics
from sparsejax.structured import groups as groups_lib
from sparsejax.structured.compress import Compressed, compress, round_up

IMAGE = (8, 8, 3)
BATCH = 2
TOL = {"rtol": 1e-4, "atol": 1e-5}


def _random_params(seed: int, shapes: dict) -> dict:
  """Arrays shaped like the nested dict of shapes ``shapes``: kernels N(0, 1 / fan_in), vectors
  N(0, 1), BatchNorm variances (``var``) in [0.5, 2)."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes, is_leaf=lambda s: isinstance(s, tuple))


def _zero_some(groups: groups_lib.Groups, params, seed: int):
  """``params`` with a random subset of every set's groups zeroed (at least one kept and, in sets
  of two or more, at least one zeroed), and the ``(G,)`` bool vector zeroed."""
  rng = np.random.default_rng(seed)
  pieces = []
  for s in groups.sets:
    zero = rng.random(s.size) < 0.5
    if s.size > 1:
      zero[rng.integers(s.size)] = True
    zero[rng.integers(s.size)] = False
    pieces.append(zero)
  zero = np.concatenate(pieces)
  return groups_lib.zero_out(groups, params, jnp.asarray(zero)), zero


def _conv(x, kernel, stride=1):
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(x, params, state):
  """BatchNorm in eval mode: the running statistics."""
  return (x - state["mean"]) / jnp.sqrt(state["var"] + 1e-5) * params["scale"] + params["bias"]


def _images(seed=1, shape=IMAGE):
  return jax.random.normal(jax.random.key(seed), (BATCH, *shape))


def _bn_paths(prefix: str) -> tuple[list, list]:
  """(members, buffers) of a BatchNorm at ``prefix`` (a keystr)."""
  return ([(f"{prefix}['scale']", 0), (f"{prefix}['bias']", 0)],
          [(f"{prefix}['mean']", 0), (f"{prefix}['var']", 0)])


# ---------------------------------------------------------------------------------------------
# (a) A plain-dict MLP.

MLP_GROUPS = groups_lib.declare([
    ("hidden1", 6, [("['l1']['w']", 1), ("['l1']['b']", 0)], [("['l2']['w']", 0)]),
    ("hidden2", 5, [("['l2']['w']", 1), ("['l2']['b']", 0)], [("['l3']['w']", 0)]),
])


def _mlp(params, x):
  for layer in ("l1", "l2"):
    x = jax.nn.relu(x @ params[layer]["w"] + params[layer]["b"])
  return x @ params["l3"]["w"] + params["l3"]["b"]


def _mlp_params(seed=0):
  return _random_params(seed, {"l1": {"w": (4, 6), "b": (6,)}, "l2": {"w": (6, 5), "b": (5,)},
                               "l3": {"w": (5, 3), "b": (3,)}})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_outputs_unchanged(seed):
  x = jax.random.normal(jax.random.key(7), (BATCH, 4))
  sparse, zero = _zero_some(MLP_GROUPS, _mlp_params(seed), seed)
  out = compress(MLP_GROUPS, sparse)
  assert isinstance(out, Compressed) and out.state is None
  np.testing.assert_array_equal(out.keep, ~zero)
  kept1, kept2 = MLP_GROUPS.split(~zero)
  assert out.widths == {"hidden1": kept1.sum(), "hidden2": kept2.sum()}
  np.testing.assert_array_equal(out.params["l1"]["w"], sparse["l1"]["w"][:, kept1])
  np.testing.assert_array_equal(out.params["l2"]["w"], sparse["l2"]["w"][kept1][:, kept2])
  np.testing.assert_array_equal(out.params["l3"]["w"], sparse["l3"]["w"][kept2])
  assert out.params["l3"]["b"] is sparse["l3"]["b"]  # Outside the groups: untouched.
  chex.assert_trees_all_close(_mlp(out.params, x), _mlp(sparse, x), **TOL)


def test_set_with_nothing_kept_is_refused_unless_keep_is_explicit():
  params = _mlp_params()
  zero = np.zeros(MLP_GROUPS.num_groups, bool)
  zero[6:] = True  # All of hidden2.
  sparse = groups_lib.zero_out(MLP_GROUPS, params, jnp.asarray(zero))
  with pytest.raises(ValueError, match="hidden2") as error:
    compress(MLP_GROUPS, sparse)
  assert "hidden1" not in str(error.value)
  out = compress(MLP_GROUPS, sparse, keep=~zero)
  assert out.widths == {"hidden1": 6, "hidden2": 0}
  assert out.params["l3"]["w"].shape == (0, 3)
  x = jax.random.normal(jax.random.key(7), (BATCH, 4))
  chex.assert_trees_all_close(_mlp(out.params, x), _mlp(sparse, x), **TOL)


def test_explicit_keep_removes_nonzero_groups_too():
  params = _mlp_params()
  keep = np.ones(MLP_GROUPS.num_groups, bool)
  keep[[0, 7]] = False
  out = compress(MLP_GROUPS, params, keep=jnp.asarray(keep))
  assert out.widths == {"hidden1": 5, "hidden2": 4}
  np.testing.assert_array_equal(out.params["l1"]["b"], params["l1"]["b"][1:])


@pytest.mark.parametrize("keep, match", [
    (np.ones(10, bool), "shape \\(11,\\)"),
    (np.ones(11, np.int32), "bool"),
    (np.ones((11, 1), bool), "shape"),
])
def test_bad_keep_raises(keep, match):
  with pytest.raises(ValueError, match=match):
    compress(MLP_GROUPS, _mlp_params(), keep=keep)


def test_groups_that_do_not_fit_the_params_raise():
  bad = groups_lib.declare([("hidden1", 7, [("['l1']['w']", 1)], [])])
  with pytest.raises(ValueError, match="hidden1"):
    compress(bad, _mlp_params())


# ---------------------------------------------------------------------------------------------
# (b) A CNN with BatchNorm (eval mode) and a Flatten into a dense layer.

CNN_GROUPS = groups_lib.declare([
    ("conv1", 4,
     [("['conv1']['kernel']", -1), ("['conv1']['bias']", 0)] + _bn_paths("['bn1']")[0],
     [("['conv2']['kernel']", 2)], _bn_paths("['bn1']")[1]),
    # Stride 2: 8x8 -> 4x4, flattened NHWC, so channel c reads c, c + 6, c + 12, ...
    ("conv2", 6, [("['conv2']['kernel']", -1), ("['conv2']['bias']", 0)],
     [("['dense']['kernel']", 0, 0, 16, 1)]),
])


def _cnn(params, state, x):
  x = jax.nn.relu(_bn(_conv(x, params["conv1"]["kernel"]) + params["conv1"]["bias"],
                      params["bn1"], state["bn1"]))
  x = jax.nn.relu(_conv(x, params["conv2"]["kernel"], stride=2) + params["conv2"]["bias"])
  return x.reshape(x.shape[0], -1) @ params["dense"]["kernel"] + params["dense"]["bias"]


def _cnn_params(seed=0):
  params = _random_params(seed, {
      "conv1": {"kernel": (3, 3, 3, 4), "bias": (4,)}, "bn1": {"scale": (4,), "bias": (4,)},
      "conv2": {"kernel": (3, 3, 4, 6), "bias": (6,)}, "dense": {"kernel": (96, 5), "bias": (5,)}})
  state = _random_params(seed + 100, {"bn1": {"mean": (4,), "var": (4,)}})
  return params, state


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_with_batchnorm_and_flatten_outputs_unchanged(seed):
  params, state = _cnn_params(seed)
  x = _images()
  groups_lib.validate(CNN_GROUPS, params, lambda p, x: _cnn(p, state, x), x)
  sparse, zero = _zero_some(CNN_GROUPS, params, seed)
  out = compress(CNN_GROUPS, sparse, state)
  kept1, kept2 = CNN_GROUPS.split(~zero)
  np.testing.assert_array_equal(out.state["bn1"]["var"], state["bn1"]["var"][kept1])
  assert out.params["conv2"]["kernel"].shape == (3, 3, kept1.sum(), kept2.sum())
  assert out.params["dense"]["kernel"].shape == (16 * kept2.sum(), 5)
  chex.assert_trees_all_close(_cnn(out.params, out.state, x), _cnn(sparse, state, x), **TOL)


def test_buffers_need_the_state():
  params, _ = _cnn_params()
  with pytest.raises(ValueError, match="conv1.*state"):
    compress(CNN_GROUPS, params)
  with pytest.raises(ValueError, match="\\['bn1'\\]\\['mean'\\]"):
    compress(CNN_GROUPS, params, {"bn1": {"var": jnp.ones(4)}})


# ---------------------------------------------------------------------------------------------
# (c) A residual network: the residual stream is one set tied by the additions.

RESNET_GROUPS = groups_lib.declare([
    ("stream1", 4,
     [("['stem']['kernel']", -1), ("['b']['kernel']", -1)] + _bn_paths("['stem_bn']")[0]
     + _bn_paths("['b_bn']")[0],
     [("['a']['kernel']", 2), ("['c']['kernel']", 2), ("['shortcut']['kernel']", 2)],
     _bn_paths("['stem_bn']")[1] + _bn_paths("['b_bn']")[1]),
    ("inner1", 3, [("['a']['kernel']", -1), ("['a']['bias']", 0)], [("['b']['kernel']", 2)]),
    ("stream2", 5,
     [("['shortcut']['kernel']", -1), ("['d']['kernel']", -1), ("['d']['bias']", 0)],
     [("['dense']['kernel']", 0)]),
    ("inner2", 2, [("['c']['kernel']", -1), ("['c']['bias']", 0)], [("['d']['kernel']", 2)]),
])


def _resnet(params, state, x):
  x = jax.nn.relu(_bn(_conv(x, params["stem"]["kernel"]), params["stem_bn"], state["stem_bn"]))
  h = jax.nn.relu(_conv(x, params["a"]["kernel"]) + params["a"]["bias"])
  x = jax.nn.relu(x + _bn(_conv(h, params["b"]["kernel"]), params["b_bn"], state["b_bn"]))
  h = jax.nn.relu(_conv(x, params["c"]["kernel"], stride=2) + params["c"]["bias"])
  h = _conv(h, params["d"]["kernel"]) + params["d"]["bias"]
  x = jax.nn.relu(h + _conv(x, params["shortcut"]["kernel"], stride=2))
  return x.mean(axis=(1, 2)) @ params["dense"]["kernel"] + params["dense"]["bias"]


def _resnet_params(seed: int):
  """Random params and BatchNorm state of :func:`_resnet`."""
  params = _random_params(seed, {
      "stem": {"kernel": (3, 3, 3, 4)}, "stem_bn": {"scale": (4,), "bias": (4,)},
      "a": {"kernel": (3, 3, 4, 3), "bias": (3,)}, "b": {"kernel": (3, 3, 3, 4)},
      "b_bn": {"scale": (4,), "bias": (4,)}, "c": {"kernel": (3, 3, 4, 2), "bias": (2,)},
      "d": {"kernel": (3, 3, 2, 5), "bias": (5,)}, "shortcut": {"kernel": (1, 1, 4, 5)},
      "dense": {"kernel": (5, 3), "bias": (3,)}})
  state = _random_params(seed + 100, {"stem_bn": {"mean": (4,), "var": (4,)},
                                      "b_bn": {"mean": (4,), "var": (4,)}})
  return params, state


@pytest.mark.parametrize("seed", [0, 1])
def test_residual_network_outputs_unchanged(seed):
  params, state = _resnet_params(seed)
  x = _images()
  groups_lib.validate(RESNET_GROUPS, params, lambda p, x: _resnet(p, state, x), x)
  sparse, zero = _zero_some(RESNET_GROUPS, params, seed)
  out = compress(RESNET_GROUPS, sparse, state)
  widths = dict(zip(("stream1", "inner1", "stream2", "inner2"),
                    (int(p.sum()) for p in RESNET_GROUPS.split(~zero))))
  assert out.widths == widths
  # The shortcut is a member of stream2 and a consumer of stream1.
  assert out.params["shortcut"]["kernel"].shape == (1, 1, widths["stream1"], widths["stream2"])
  chex.assert_trees_all_close(_resnet(out.params, out.state, x), _resnet(sparse, state, x),
                              **TOL)


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**16), multiple=st.integers(1, 7))
def test_rounded_widths_keep_zero_groups_and_outputs(seed, multiple):
  params, state = _resnet_params(seed)
  sparse, zero = _zero_some(RESNET_GROUPS, params, seed)
  exact = compress(RESNET_GROUPS, sparse, state)
  out = compress(RESNET_GROUPS, sparse, state, multiple=multiple)
  for s in RESNET_GROUPS.sets:
    assert out.widths[s.name] == round_up(exact.widths[s.name], multiple, s.size)
    assert out.widths[s.name] % multiple == 0 or out.widths[s.name] == s.size
  # Every nonzero group is kept; the extra ones are zero groups, so the outputs are unchanged.
  assert np.all(out.keep[~zero])
  assert np.all(out.keep >= exact.keep)
  x = _images()
  chex.assert_trees_all_close(_resnet(out.params, out.state, x), _resnet(sparse, state, x),
                              **TOL)


def test_rounded_widths_with_explicit_keep_add_the_smallest_removed_groups():
  params = _mlp_params()
  norms = np.asarray(groups_lib.norms(MLP_GROUPS, params))
  keep = np.zeros(MLP_GROUPS.num_groups, bool)
  keep[[0, 6]] = True
  out = compress(MLP_GROUPS, params, keep=keep, multiple=4)
  assert out.widths == {"hidden1": 4, "hidden2": 4}
  for piece, kept, norm in zip(MLP_GROUPS.split(keep), MLP_GROUPS.split(out.keep),
                               MLP_GROUPS.split(norms)):
    added = kept & ~piece
    assert added.sum() == 3
    assert norm[added].max() <= norm[~kept & ~piece].min()


@pytest.mark.parametrize("multiple", [0, -8, 2.0, True, "8"])
def test_bad_multiple_raises(multiple):
  with pytest.raises(ValueError, match="multiple must be a positive int"):
    compress(MLP_GROUPS, _mlp_params(), multiple=multiple)


# ---------------------------------------------------------------------------------------------
# (d) Zoo models, compressed and rebuilt at the compressed widths. Set names are width keys.


def _lenet300_groups(model: models.Model) -> groups_lib.Groups:
  w = model.widths
  return groups_lib.declare([
      ("dense1", w["dense1"], [("['dense1']['kernel']", 1), ("['dense1']['bias']", 0)],
       [("['dense2']['kernel']", 0)]),
      ("dense2", w["dense2"], [("['dense2']['kernel']", 1), ("['dense2']['bias']", 0)],
       [("['output']['kernel']", 0)]),
  ])


def _vgg_groups(model: models.Model) -> groups_lib.Groups:
  names = list(model.widths)
  sets = []
  for index, name in enumerate(names):
    members, buffers = _bn_paths(f"['{name}']['bn']")
    members += [(f"['{name}']['conv']['kernel']", -1), (f"['{name}']['conv']['bias']", 0)]
    reader = (f"['{names[index + 1]}']['conv']['kernel']", 2) if index + 1 < len(names) else (
        "['output']['kernel']", 0)
    sets.append((name, model.widths[name], members, [reader], buffers))
  return groups_lib.declare(sets)


def _resnet20_groups(model: models.Model) -> groups_lib.Groups:
  w, sets = model.widths, []
  for stage in (1, 2, 3):
    blocks = [f"stage{stage}_block{b}" for b in (1, 2, 3)]
    members, buffers, consumers = [], [], []
    writers = ["['conv']", "['bn']"] if stage == 1 else [
        f"['{blocks[0]}']['shortcut_conv']", f"['{blocks[0]}']['shortcut_bn']"]
    writers += [f"['{block}']{layer}" for block in blocks for layer in ("['conv2']", "['bn2']")]
    for conv, bn in zip(writers[::2], writers[1::2]):
      bn_members, bn_buffers = _bn_paths(bn)
      members += [(f"{conv}['kernel']", -1)] + bn_members
      buffers += bn_buffers
    consumers += [(f"['{block}']['conv1']['kernel']", 2) for block in blocks[stage > 1:]]
    if stage < 3:
      consumers += [(f"['stage{stage + 1}_block1']['{conv}']['kernel']", 2)
                    for conv in ("conv1", "shortcut_conv")]
    else:
      consumers.append(("['output']['kernel']", 0))
    sets.append((f"stage{stage}", w[f"stage{stage}"], members, consumers, buffers))
    for block in blocks:
      bn_members, bn_buffers = _bn_paths(f"['{block}']['bn1']")
      sets.append((block, w[block], [(f"['{block}']['conv1']['kernel']", -1)] + bn_members,
                   [(f"['{block}']['conv2']['kernel']", 2)], bn_buffers))
  return groups_lib.declare(sets)


def _random_model(name: str, input_shape, num_classes: int):
  """``(model, params, state)`` with random arrays of the model's shapes, drawn on the host
  (faster than ``model.init`` on CPU)."""
  model = models.build(name, num_classes=num_classes, input_shape=input_shape)
  params, state = (_random_params(seed, jax.tree.map(lambda a: a.shape, tree))
                   for seed, tree in enumerate(jax.eval_shape(model.init, jax.random.key(0))))
  return model, params, state


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: models.Model, params, state, x):
  """Eval-mode logits; one compiled program is faster on CPU than the model's ops one by one."""
  return model.apply(params, state, x, train=False)[0]


ZOO = {
    "lenet300": _lenet300_groups,
    "vgg11": _vgg_groups,
    "resnet20": _resnet20_groups,
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_compressed_and_rebuilt(name):
  model, params, state = _random_model(name, IMAGE, 3)
  groups = ZOO[name](model)
  sparse, zero = _zero_some(groups, params, seed=3)
  out = compress(groups, sparse, state)
  widths = model.widths_of(out.params)
  assert widths == out.widths
  small = models.build(name, num_classes=3, input_shape=IMAGE, widths=widths)
  assert small.widths == widths
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(small.init, jax.random.key(0)), (out.params, out.state))
  x = _images()
  expected = _logits(model, sparse, state, x)
  chex.assert_trees_all_close(_logits(small, out.params, out.state, x), expected, **TOL)
  assert metrics.count_params(out.params) < metrics.count_params(params)


# ---------------------------------------------------------------------------------------------
# MACs and parameter counts.


def test_macs_of_a_dense_layer():
  x, w, b = jnp.ones((BATCH, 5)), jnp.ones((5, 3)), jnp.ones(3)
  assert metrics.macs(lambda x, w, b: x @ w + b, x, w, b) == BATCH * 5 * 3
  # Batch dimensions of dot_general count: (4, 2, 5) x (4, 5, 3).
  batched = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)
  assert metrics.macs(batched, jnp.ones((4, 2, 5)), jnp.ones((4, 5, 3))) == 4 * 2 * 5 * 3


def test_macs_of_a_strided_padded_conv():
  x, kernel = jax.ShapeDtypeStruct((1, 9, 9, 3), jnp.float32), jnp.ones((3, 3, 3, 4))
  # Padding 1, stride 2: 9x9 -> 5x5 outputs of 4 features, each 3*3*3 MACs.
  assert metrics.macs(lambda x, k: _conv(x, k, stride=2), x, kernel) == 5 * 5 * 4 * 27
  depthwise = lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)
  assert metrics.macs(depthwise, x, jnp.ones((3, 3, 1, 6))) == 9 * 9 * 6 * 9


def test_macs_in_nested_programs():
  w = jnp.ones((3, 3))
  step = jax.jit(lambda c, _: (jax.nn.relu(c @ w), None))
  scanned = lambda x: lax.scan(step, x, None, length=4)[0]
  assert metrics.macs(scanned, jnp.ones((2, 3))) == 4 * 2 * 3 * 3
  branches = lambda p, x: lax.cond(p, lambda x: x @ w @ w, lambda x: x @ w, x)
  assert metrics.macs(branches, True, jnp.ones((2, 3))) == 2 * 2 * 3 * 3
  assert metrics.macs(jax.checkpoint(lambda x: x @ w), jnp.ones((2, 3))) == 2 * 3 * 3


def test_macs_and_params_of_lenet300_before_and_after_compression():
  shape = (8, 8, 1)
  model, params, state = _random_model("lenet300", shape, 10)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)

  def cost(model, params):
    return metrics.macs(lambda p, x: model.apply(p, state, x, train=False)[0], params, x)

  assert cost(model, params) == 64 * 300 + 300 * 100 + 100 * 10
  assert metrics.count_params(params) == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
  groups = _lenet300_groups(model)
  keep = np.zeros(groups.num_groups, bool)
  keep[:120] = keep[300:330] = True
  out = compress(groups, groups_lib.zero_out(groups, params, jnp.asarray(~keep)))
  assert out.widths == {"dense1": 120, "dense2": 30}
  small = models.build("lenet300", num_classes=10, input_shape=shape, widths=out.widths)
  assert cost(small, out.params) == 64 * 120 + 120 * 30 + 30 * 10
  assert metrics.count_params(out.params) == 64 * 120 + 120 + 120 * 30 + 30 + 30 * 10 + 10
  assert metrics.count_params(jax.eval_shape(small.init, jax.random.key(0))[0]) == (
      metrics.count_params(out.params))
