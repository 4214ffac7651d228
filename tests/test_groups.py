"""Tests for sparsejax.structured.groups: declaration, per-group arithmetic, masks, validation.

Every quantity is compared with a direct numpy computation on small random plain-dict trees: an
MLP, a conv net (HWIO kernels, BatchNorm scale/bias, NHWC flatten into a dense head) and a
residual stream tying two producers on different leaves into one set.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax.structured import groups as gl
from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member

SETTINGS = settings(max_examples=25, deadline=None)


def P(*keys):
  """keystr path of a plain nested dict."""
  return "".join(f"[{k!r}]" for k in keys)


# --- trees and their groups -----------------------------------------------------------------
# Each spec: (name, size, [(member path, axis)], [consumers]); the numpy references below read
# the spec, never the Groups object.

MLP_SHAPES = {"d1": {"kernel": (5, 4), "bias": (4,)},
              "d2": {"kernel": (4, 3), "bias": (3,)},
              "out": {"kernel": (3, 2), "bias": (2,)}}
MLP_SPEC = [
    ("d1", 4, [(P("d1", "kernel"), 1), (P("d1", "bias"), 0)], [(P("d2", "kernel"), 0)]),
    ("d2", 3, [(P("d2", "kernel"), -1), (P("d2", "bias"), 0)], [(P("out", "kernel"), 0)]),
]

# conv1 (3x3, 2->4) -> bn1 -> conv2 (3x3, 4->6) -> bn2 -> NHWC flatten of 2x2 positions -> dense.
CONV_SHAPES = {"conv1": {"kernel": (3, 3, 2, 4)},
               "bn1": {"scale": (4,), "bias": (4,)},
               "conv2": {"kernel": (3, 3, 4, 6)},
               "bn2": {"scale": (6,), "bias": (6,)},
               "dense": {"kernel": (24, 5), "bias": (5,)}}
CONV_SPEC = [
    ("conv1", 4, [(P("conv1", "kernel"), 3), (P("bn1", "scale"), 0), (P("bn1", "bias"), 0)],
     [(P("conv2", "kernel"), 2)]),
    ("conv2", 6, [(P("conv2", "kernel"), -1), (P("bn2", "scale"), 0), (P("bn2", "bias"), 0)],
     [(P("dense", "kernel"), 0, 0, 4, 1)]),
]

# stem -> (+ block(stem)) residual: both producers write the same 4-channel stream.
RES_SHAPES = {"stem": {"kernel": (5, 4), "bias": (4,)},
              "block": {"kernel": (4, 4), "bias": (4,)},
              "head": {"kernel": (4, 2), "bias": (2,)}}
RES_SPEC = [
    ("stream", 4, [(P("stem", "kernel"), 1), (P("stem", "bias"), 0),
                   (P("block", "kernel"), 1), (P("block", "bias"), 0)],
     [(P("block", "kernel"), 0), (P("head", "kernel"), 0)]),
]

TREES = {"mlp": (MLP_SHAPES, MLP_SPEC), "conv": (CONV_SHAPES, CONV_SPEC),
         "res": (RES_SHAPES, RES_SPEC)}


def make_groups(spec):
  return gl.declare(spec)


def make_params(shapes, seed=0, dtype=np.float32):
  """Random params with no exact zeros."""
  rng = np.random.default_rng(seed)

  def leaf(shape):
    x = rng.normal(size=shape).astype(dtype)
    return jnp.asarray(np.where(x == 0, 1, x).astype(dtype))

  return jax.tree.map(leaf, shapes, is_leaf=lambda s: isinstance(s, tuple))


def np_leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def np_rows(spec, tree):
  """One flat numpy array per group: all its entries, set by set."""
  leaves = np_leaves(tree)
  rows = []
  for _, size, members, _ in spec:
    per = [np.moveaxis(leaves[p], a, 0).reshape(size, -1) for p, a in members]
    rows += list(np.concatenate(per, axis=1))
  return rows


def member_axes(spec):
  """{member path: (flat offset of its set, axis)}."""
  out, offset = {}, 0
  for _, size, members, _ in spec:
    for p, a in members:
      out[p] = (offset, a)
    offset += size
  return out


def along(vec, x, axis):
  shape = [1] * x.ndim
  shape[axis % x.ndim] = -1
  return np.asarray(vec).reshape(shape)


def num_groups(spec):
  return sum(s[1] for s in spec)


# --- Consumer.indices ------------------------------------------------------------------------


def test_consumer_indices_plain():
  np.testing.assert_array_equal(Consumer("p", 0).indices(4, 4), [[0], [1], [2], [3]])


def test_consumer_indices_offset_concat():
  # concat([a (3 channels), b (4 channels)]) -> b's channels are 3..6 of the 7.
  np.testing.assert_array_equal(Consumer("p", 0, offset=3).indices(7, 4),
                                [[3], [4], [5], [6]])


def test_consumer_indices_outer_nhwc_flatten():
  # (H, W, C) = (2, 2, 3) flattened: position hw, channel c -> hw * 3 + c.
  np.testing.assert_array_equal(Consumer("p", 0, outer=4).indices(12, 3),
                                [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  labels = np.broadcast_to(np.arange(3), (2, 2, 3)).reshape(-1)
  for c, idx in enumerate(Consumer("p", 0, outer=4).indices(12, 3)):
    np.testing.assert_array_equal(idx, np.flatnonzero(labels == c))


def test_consumer_indices_inner_nchw_flatten():
  # (C, H, W) = (3, 2, 2) flattened: channel c, position hw -> c * 4 + hw.
  np.testing.assert_array_equal(Consumer("p", 0, inner=4).indices(12, 3),
                                [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
  labels = np.broadcast_to(np.arange(3)[:, None, None], (3, 2, 2)).reshape(-1)
  for c, idx in enumerate(Consumer("p", 0, inner=4).indices(12, 3)):
    np.testing.assert_array_equal(idx, np.flatnonzero(labels == c))


def test_consumer_indices_concat_then_nhwc_flatten():
  # concat of 2 + 3 channels, then (H, W) = (1, 2) flattened: second set at offset 2.
  np.testing.assert_array_equal(Consumer("p", 0, offset=2, outer=2).indices(10, 3),
                                [[2, 7], [3, 8], [4, 9]])
  labels = np.broadcast_to(np.arange(5), (1, 2, 5)).reshape(-1)
  for c, idx in enumerate(Consumer("p", 0, offset=2, outer=2).indices(10, 3)):
    np.testing.assert_array_equal(idx, np.flatnonzero(labels == 2 + c))


# --- Groups bookkeeping ----------------------------------------------------------------------


def test_groups_num_offsets_split_set_of():
  g = make_groups(CONV_SPEC + [("extra", 2, [(P("x"), 0)], [])])
  assert g.num_groups == 12
  assert g.sizes == (4, 6, 2)
  assert g.offsets == (0, 4, 10)
  pieces = g.split(np.arange(12))
  assert [list(p) for p in pieces] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]
  expected = [("conv1", c) for c in range(4)] + [("conv2", c) for c in range(6)] + [
      ("extra", 0), ("extra", 1)]
  for i, (name, c) in enumerate(expected):
    s, ch = g.set_of(i)
    assert (s.name, ch) == (name, c)
    assert s is g.sets[[x.name for x in g.sets].index(name)]
  for bad in (12, 13, -1):
    with pytest.raises(IndexError, match="out of range"):
      g.set_of(bad)
  assert g.member_paths == frozenset(p for _, _, ms, _ in CONV_SPEC for p, _ in ms) | {P("x")}


def test_groups_refuse_duplicate_set_names():
  a = GroupSet("blk", 2, (Member("a", 0),))
  b = GroupSet("blk", 3, (Member("b", 0),))
  with pytest.raises(ValueError, match=r"unique.*'blk'"):
    Groups((a, b))


def test_groups_refuse_overlapping_members_naming_both_sets():
  a = GroupSet("first", 2, (Member(P("k"), 0), Member(P("shared"), 0)))
  b = GroupSet("second", 2, (Member(P("shared"), 1),))
  with pytest.raises(ValueError) as e:
    Groups((a, b))
  msg = str(e.value)
  assert "overlap" in msg and P("shared") in msg
  assert "'first'" in msg and "'second'" in msg


def test_groupset_rejects_empty_and_bad_size():
  with pytest.raises(ValueError, match="'s' has no members"):
    GroupSet("s", 2, ())
  for size in (0, -1, 2.5):
    with pytest.raises(ValueError, match="'s': size must be a positive int"):
      GroupSet("s", size, (Member("a", 0),))


def test_leaves_by_path():
  params = make_params(MLP_SHAPES)
  by_path = gl.leaves_by_path(params)
  assert set(by_path) == {P(l, k) for l in MLP_SHAPES for k in MLP_SHAPES[l]}
  for l in MLP_SHAPES:
    for k in MLP_SHAPES[l]:
      assert by_path[P(l, k)] is params[l][k]


# --- per-group arithmetic (chex variants) -------------------------------------------------


class ArithmeticTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mlp_sq_norms_hand_written(self):
    g = make_groups(MLP_SPEC)
    params = make_params(MLP_SHAPES, 1)
    k1, b1 = np.asarray(params["d1"]["kernel"]), np.asarray(params["d1"]["bias"])
    k2, b2 = np.asarray(params["d2"]["kernel"]), np.asarray(params["d2"]["bias"])
    expected = [np.sum(k1[:, j] ** 2) + b1[j] ** 2 for j in range(4)] + [
        np.sum(k2[:, j] ** 2) + b2[j] ** 2 for j in range(3)]
    got = self.variant(lambda p: gl.sq_norms(g, p))(params)
    chex.assert_shape(got, (7,))
    chex.assert_trees_all_close(got, np.asarray(expected, np.float32), rtol=1e-5)
    chex.assert_trees_all_close(self.variant(lambda p: gl.norms(g, p))(params),
                                np.sqrt(np.asarray(expected, np.float32)), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_sq_norms_dots_sizes_all_trees(self):
    for name, (shapes, spec) in TREES.items():
      g = make_groups(spec)
      a, b = make_params(shapes, 2), make_params(shapes, 3)
      ra, rb = np_rows(spec, a), np_rows(spec, b)
      got_sq = self.variant(lambda p: gl.sq_norms(g, p))(a)
      got_dot = self.variant(lambda x, y: gl.dots(g, x, y))(a, b)
      chex.assert_trees_all_close(got_sq, np.array([np.sum(r * r) for r in ra]), rtol=1e-5,
                                  custom_message=name)
      chex.assert_trees_all_close(got_dot, np.array([np.dot(x, y) for x, y in zip(ra, rb)]),
                                  rtol=1e-4, atol=1e-5, custom_message=name)
      sizes = gl.group_sizes(g, a)
      assert isinstance(sizes, np.ndarray)
      np.testing.assert_array_equal(sizes, [r.size for r in ra], err_msg=name)

  def test_group_sizes_hand_written(self):
    np.testing.assert_array_equal(gl.group_sizes(make_groups(MLP_SPEC), make_params(MLP_SHAPES)),
                                  [6] * 4 + [5] * 3)
    # conv1: 3*3*2 + 2 (bn), conv2: 3*3*4 + 2; residual: 5+1 + 4+1.
    np.testing.assert_array_equal(gl.group_sizes(make_groups(CONV_SPEC), make_params(CONV_SHAPES)),
                                  [20] * 4 + [38] * 6)
    np.testing.assert_array_equal(gl.group_sizes(make_groups(RES_SPEC), make_params(RES_SHAPES)),
                                  [11] * 4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scale(self):
    for name, (shapes, spec) in TREES.items():
      g = make_groups(spec)
      params = make_params(shapes, 4)
      factors = np.linspace(-2.0, 3.0, num_groups(spec)).astype(np.float32)
      got = self.variant(lambda p, f: gl.scale(g, p, f))(params, jnp.asarray(factors))
      axes = member_axes(spec)
      sizes = {p: s for _, s, ms, _ in spec for p, _ in ms}
      expected = {}
      for path, x in np_leaves(params).items():
        if path in axes:
          o, a = axes[path]
          expected[path] = x * along(factors[o:o + sizes[path]], x, a)
        else:
          expected[path] = x
      got_leaves = np_leaves(got)
      assert set(got_leaves) == set(expected)
      for path in expected:
        np.testing.assert_allclose(got_leaves[path], expected[path], rtol=1e-6,
                                   err_msg=f"{name} {path}")
        assert got_leaves[path].dtype == np.float32

  def test_scale_leaves_non_members_identical(self):
    g = make_groups(MLP_SPEC)
    params = make_params(MLP_SHAPES)
    out = gl.scale(g, params, jnp.full((7,), 2.0))
    assert out["out"]["kernel"] is params["out"]["kernel"]
    assert out["out"]["bias"] is params["out"]["bias"]
    assert out["d1"]["kernel"] is not params["d1"]["kernel"]

  def test_scale_keeps_dtype(self):
    g = make_groups(MLP_SPEC)
    params = make_params(MLP_SHAPES, 5, dtype=jnp.bfloat16)
    out = gl.scale(g, params, jnp.full((7,), 0.5, jnp.float32))
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
      assert x.dtype == jnp.bfloat16
    # sq_norms accumulates in float32 whatever the leaf dtype.
    assert gl.sq_norms(g, params).dtype == jnp.float32

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_out_and_is_zero(self):
    for name, (shapes, spec) in TREES.items():
      g = make_groups(spec)
      params = make_params(shapes, 6)
      n = num_groups(spec)
      zero = np.arange(n) % 3 == 1
      out = self.variant(lambda p, z: gl.zero_out(g, p, z))(params, jnp.asarray(zero))
      rows_in, rows_out = np_rows(spec, params), np_rows(spec, out)
      for j in range(n):
        if zero[j]:
          assert np.all(rows_out[j] == 0), (name, j)
          assert not np.any(np.signbit(rows_out[j])), (name, j)
        else:
          np.testing.assert_array_equal(rows_out[j], rows_in[j], err_msg=f"{name} {j}")
      axes = member_axes(spec)
      for path, x in np_leaves(out).items():
        if path not in axes:
          np.testing.assert_array_equal(x, np_leaves(params)[path])
      got = self.variant(lambda p: gl.is_zero(g, p))(out)
      assert got.dtype == jnp.bool_
      np.testing.assert_array_equal(np.asarray(got), zero, err_msg=name)
      assert not np.any(np.asarray(self.variant(lambda p: gl.is_zero(g, p))(params)))

  def test_is_zero_negative_zero_and_single_entry(self):
    g = make_groups(MLP_SPEC)
    params = make_params(MLP_SHAPES)
    params["d1"]["kernel"] = params["d1"]["kernel"].at[:, 0].set(-0.0)
    params["d1"]["bias"] = params["d1"]["bias"].at[0].set(-0.0)
    params["d2"]["kernel"] = params["d2"]["kernel"].at[:, 1].set(0.0)  # bias 1 still nonzero
    # group d2/2: all entries negative, none zero -> not zero.
    k2 = params["d2"]["kernel"]
    params["d2"]["kernel"] = k2.at[:, 2].set(-jnp.abs(k2[:, 2]))
    params["d2"]["bias"] = params["d2"]["bias"].at[2].set(-3.0)
    got = np.asarray(gl.is_zero(g, params))
    np.testing.assert_array_equal(got, [True] + [False] * 6)
    negative = jax.tree.map(lambda x: -jnp.abs(x), make_params(MLP_SHAPES, 1))
    assert not np.any(np.asarray(gl.is_zero(g, negative)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_select(self):
    for name, (shapes, spec) in TREES.items():
      g = make_groups(spec)
      a, b = make_params(shapes, 7), make_params(shapes, 8)
      n = num_groups(spec)
      which = np.arange(n) % 2 == 0
      got = self.variant(lambda x, y, w: gl.select(g, x, y, w))(a, b, jnp.asarray(which))
      ra, rb, rg = np_rows(spec, a), np_rows(spec, b), np_rows(spec, got)
      for j in range(n):
        np.testing.assert_array_equal(rg[j], ra[j] if which[j] else rb[j],
                                      err_msg=f"{name} {j}")
      axes = member_axes(spec)
      for path, x in np_leaves(got).items():
        if path not in axes:  # outside the groups: b's leaf
          np.testing.assert_array_equal(x, np_leaves(b)[path])

  @chex.variants(with_jit=True, without_jit=True)
  def test_masks(self):
    for name, (shapes, spec) in TREES.items():
      g = make_groups(spec)
      params = make_params(shapes, 9)
      n = num_groups(spec)
      keep = np.arange(n) % 3 != 0
      got = self.variant(lambda p, k: gl.masks(g, p, k))(params, jnp.asarray(keep))
      chex.assert_trees_all_equal_structs(got, params)
      axes = member_axes(spec)
      sizes = {p: s for _, s, ms, _ in spec for p, _ in ms}
      kept = 0
      for path, m in np_leaves(got).items():
        assert m.dtype == np.bool_, (name, path)
        x = np_leaves(params)[path]
        if path in axes:
          o, a = axes[path]
          assert m.shape == x.shape, (name, path)
          np.testing.assert_array_equal(
              m, np.broadcast_to(along(keep[o:o + sizes[path]], x, a), x.shape))
          kept += int(m.sum())
        else:
          assert m.shape == () and bool(m), (name, path)
      assert kept == int(np.sum(gl.group_sizes(g, params) * keep)), name

  def test_grad_of_sq_norms(self):
    g = make_groups(MLP_SPEC)
    params = make_params(MLP_SHAPES, 10)
    grads = jax.grad(lambda p: jnp.sum(gl.sq_norms(g, p)))(params)
    for l in ("d1", "d2"):
      chex.assert_trees_all_close(grads[l], jax.tree.map(lambda x: 2 * x, params[l]),
                                  rtol=1e-6)
    chex.assert_trees_all_close(grads["out"], jax.tree.map(jnp.zeros_like, params["out"]))

  def test_vmap_of_sq_norms(self):
    g = make_groups(MLP_SPEC)
    batch = [make_params(MLP_SHAPES, s) for s in (11, 12)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
    got = jax.vmap(lambda p: gl.sq_norms(g, p))(stacked)
    chex.assert_trees_all_close(got, jnp.stack([gl.sq_norms(g, p) for p in batch]))


# --- hypothesis properties --------------------------------------------------------------------

tree_names = st.sampled_from(sorted(TREES))


def tree_case(name, seed):
  """(spec, groups, random params) of the tree ``name``."""
  shapes, spec = TREES[name]
  return spec, make_groups(spec), make_params(shapes, seed)


@st.composite
def tree_and_bools(draw):
  name = draw(tree_names)
  n = num_groups(TREES[name][1])
  bools = draw(st.lists(st.booleans(), min_size=n, max_size=n))
  seed = draw(st.integers(0, 2**16))
  return name, np.asarray(bools, bool), seed


@SETTINGS
@given(tree_and_bools())
def test_property_is_zero_reads_back_zero_out(case):
  name, z, seed = case
  spec, g, params = tree_case(name, seed)
  out = gl.zero_out(g, params, jnp.asarray(z))
  np.testing.assert_array_equal(np.asarray(gl.is_zero(g, out)), z)
  sq = np.asarray(gl.sq_norms(g, out))
  assert np.all(sq[z] == 0) and np.all(sq[~z] > 0)


@SETTINGS
@given(tree_and_bools())
def test_property_select_matches_numpy_where(case):
  name, which, seed = case
  spec, g, a = tree_case(name, seed)
  b = make_params(TREES[name][0], seed + 1)
  got = np_leaves(gl.select(g, a, b, jnp.asarray(which)))
  axes = member_axes(spec)
  sizes = {p: s for _, s, ms, _ in spec for p, _ in ms}
  la, lb = np_leaves(a), np_leaves(b)
  for path, x in got.items():
    if path in axes:
      o, ax = axes[path]
      expected = np.where(along(which[o:o + sizes[path]], x, ax), la[path], lb[path])
    else:
      expected = lb[path]
    np.testing.assert_array_equal(x, expected, err_msg=path)


@SETTINGS
@given(tree_names, st.integers(0, 2**16))
def test_property_scale_scales_sq_norms_by_square(name, seed):
  spec, g, params = tree_case(name, seed)
  f = np.random.default_rng(seed).uniform(-2, 2, num_groups(spec)).astype(np.float32)
  chex.assert_trees_all_close(gl.sq_norms(g, gl.scale(g, params, jnp.asarray(f))),
                              f ** 2 * np.asarray(gl.sq_norms(g, params)), rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(gl.dots(g, params, params), gl.sq_norms(g, params), rtol=1e-5)


@SETTINGS
@given(tree_and_bools())
def test_property_masked_count(case):
  name, keep, seed = case
  spec, g, params = tree_case(name, seed)
  m = gl.masks(g, params, jnp.asarray(keep))
  axes = member_axes(spec)
  kept = sum(int(np.sum(x)) for p, x in np_leaves(m).items() if p in axes)
  expected = sum(r.size for r, k in zip(np_rows(spec, params), keep) if k)
  assert kept == expected


# --- zero_consumers ---------------------------------------------------------------------------


def test_zero_consumers_plain_and_nhwc():
  g = make_groups(CONV_SPEC)
  params = make_params(CONV_SHAPES, 13)
  zero = np.zeros(10, bool)
  zero[[1, 3]] = True  # conv1 channels 1, 3
  zero[4 + 2] = True  # conv2 channel 2
  out = np_leaves(gl.zero_consumers(g, params, jnp.asarray(zero)))
  ref = np_leaves(params)
  k2 = ref[P("conv2", "kernel")].copy()
  k2[:, :, [1, 3], :] = 0
  np.testing.assert_array_equal(out[P("conv2", "kernel")], k2)
  dk = ref[P("dense", "kernel")].copy()
  dk[[2, 8, 14, 20], :] = 0  # channel 2 at each of the 4 NHWC positions (6 channels each)
  np.testing.assert_array_equal(out[P("dense", "kernel")], dk)
  for path in ref:
    if path not in (P("conv2", "kernel"), P("dense", "kernel")):
      np.testing.assert_array_equal(out[path], ref[path])


def test_zero_consumers_residual_reader_of_own_stream():
  g = make_groups(RES_SPEC)
  params = make_params(RES_SHAPES, 14)
  zero = np.array([False, True, False, True])
  out = np_leaves(gl.zero_consumers(g, params, zero))
  ref = np_leaves(params)
  bk = ref[P("block", "kernel")].copy()
  bk[[1, 3], :] = 0
  hk = ref[P("head", "kernel")].copy()
  hk[[1, 3], :] = 0
  np.testing.assert_array_equal(out[P("block", "kernel")], bk)
  np.testing.assert_array_equal(out[P("head", "kernel")], hk)


# --- check_sizes ------------------------------------------------------------------------------


def _expect_error(spec, shapes, *fragments):
  g = make_groups(spec)
  with pytest.raises(ValueError) as e:
    gl.check_sizes(g, make_params(shapes))
  for f in fragments:
    assert f in str(e.value), (f, str(e.value))


def test_check_sizes_passes_for_good_specs():
  for shapes, spec in TREES.values():
    gl.check_sizes(make_groups(spec), make_params(shapes))
    gl.validate(make_groups(spec), make_params(shapes))  # no apply_fn: sizes only


def test_check_sizes_unknown_member_path():
  spec = [("d1", 4, [(P("nope", "kernel"), 1)], [])]
  _expect_error(spec, MLP_SHAPES, "'d1'", P("nope", "kernel"), "not a leaf")


def test_check_sizes_unknown_consumer_path():
  spec = [("d1", 4, [(P("d1", "kernel"), 1)], [(P("d9", "kernel"), 0)])]
  _expect_error(spec, MLP_SHAPES, "'d1'", P("d9", "kernel"), "consumer")


def test_check_sizes_member_axis_out_of_range():
  spec = [("layer", 4, [(P("d1", "kernel"), 2)], [])]
  _expect_error(spec, MLP_SHAPES, "'layer'", P("d1", "kernel"), "no axis 2")
  spec = [("layer", 4, [(P("d1", "bias"), -2)], [])]
  _expect_error(spec, MLP_SHAPES, "'layer'", P("d1", "bias"), "no axis -2")


def test_check_sizes_consumer_axis_out_of_range():
  spec = [("d1", 4, [(P("d1", "kernel"), 1)], [(P("d2", "bias"), 1)])]
  _expect_error(spec, MLP_SHAPES, "'d1'", P("d2", "bias"), "no axis 1")


def test_check_sizes_member_length_mismatch():
  spec = [("wide", 5, [(P("d1", "kernel"), 0), (P("d1", "bias"), 0)], [])]
  _expect_error(spec, MLP_SHAPES, "'wide'", P("d1", "bias"), "length 4", "5 groups")


def test_check_sizes_consumer_too_short():
  spec = [("d1", 4, [(P("d1", "kernel"), 1)], [(P("d2", "kernel"), 0, 1, 1, 1)])]
  _expect_error(spec, MLP_SHAPES, "'d1'", P("d2", "kernel"), "cannot hold 4 channels")
  spec = [("d1", 4, [(P("d1", "kernel"), 1)], [(P("d2", "kernel"), 0, 0, 1, 2)])]
  _expect_error(spec, MLP_SHAPES, "'d1'", P("d2", "kernel"), "inner=2")
  spec = [("conv2", 6, [(P("conv2", "kernel"), -1)], [(P("dense", "kernel"), 0, 0, 5, 1)])]
  _expect_error(spec, CONV_SHAPES, "'conv2'", P("dense", "kernel"), "outer=5")


# --- validate ---------------------------------------------------------------------------------


def mlp_apply(act):
  def apply(p, x):
    h = act(x @ p["d1"]["kernel"] + p["d1"]["bias"])
    h = act(h @ p["d2"]["kernel"] + p["d2"]["bias"])
    return h @ p["out"]["kernel"] + p["out"]["bias"]
  return apply


def positive_bias_params(seed):
  params = make_params(MLP_SHAPES, seed)
  for l in params:
    params[l]["bias"] = jnp.abs(params[l]["bias"]) + 0.5
  return params


X = jnp.asarray(np.random.default_rng(99).normal(size=(8, 5)), jnp.float32)


def test_validate_relu_mlp_passes():
  gl.validate(make_groups(MLP_SPEC), positive_bias_params(15), mlp_apply(jax.nn.relu), X)


def test_validate_sigmoid_mlp_fails_naming_set():
  with pytest.raises(ValueError, match=r"group set 'd1' is not zero-invariant"):
    gl.validate(make_groups(MLP_SPEC), positive_bias_params(15), mlp_apply(jax.nn.sigmoid), X)


def test_validate_missing_bias_member_fails_naming_set():
  spec = [MLP_SPEC[0],
          ("d2", 3, [(P("d2", "kernel"), 1)], [(P("out", "kernel"), 0)])]
  with pytest.raises(ValueError) as e:
    gl.validate(make_groups(spec), positive_bias_params(16), mlp_apply(jax.nn.relu), X)
  assert "group set 'd2' is not zero-invariant" in str(e.value)
  assert "'d1'" not in str(e.value)


def test_validate_runs_check_sizes_and_needs_inputs():
  bad = [("d1", 5, [(P("d1", "kernel"), 1)], [])]
  with pytest.raises(ValueError, match="'d1'"):
    gl.validate(make_groups(bad), positive_bias_params(0), mlp_apply(jax.nn.relu), X)
  with pytest.raises(ValueError, match="needs inputs"):
    gl.validate(make_groups(MLP_SPEC), positive_bias_params(0), mlp_apply(jax.nn.relu))


# --- table and declare ------------------------------------------------------------------------


def test_table_lists_every_set():
  g = gl.declare(CONV_SPEC + [("extra", 2, [(P("x"), 0)], [],
                               [(P("state", "mean"), 0)])])
  text = gl.table(g)
  lines = text.splitlines()
  assert lines[0] == "12 groups in 3 sets"
  assert "conv1: 4 groups" in lines
  assert "conv2: 6 groups" in lines
  assert "extra: 2 groups" in lines
  for _, _, members, _ in CONV_SPEC:
    for p, a in members:
      assert f"    member   {p} axis {a}" in lines
  assert f"    consumer {P('conv2', 'kernel')} axis 2" in lines
  assert f"    consumer {P('dense', 'kernel')} axis 0, outer=4" in lines
  assert f"    buffer   {P('state', 'mean')} axis 0" in lines
  assert str(g) == text
  # members appear under their own set
  assert lines.index("conv2: 6 groups") < lines.index(
      f"    member   {P('bn2', 'scale')} axis 0") < lines.index("extra: 2 groups")


def test_table_with_params_gives_group_sizes():
  text = gl.table(make_groups(MLP_SPEC), make_params(MLP_SHAPES))
  assert "d1: 4 groups, 6 params each" in text.splitlines()
  assert "d2: 3 groups, 5 params each" in text.splitlines()


def test_declare_four_and_five_tuples():
  g = gl.declare([
      ("a", 4, [("k1", 1), ("b1", 0)], [("k2", 0)]),
      ("b", 3, [("k2", 1)], [("k3", 0, 2, 4, 5)], [("mean", 0), ("var", -1)]),
  ])
  expected = Groups((
      GroupSet("a", 4, (Member("k1", 1), Member("b1", 0)), (Consumer("k2", 0),)),
      GroupSet("b", 3, (Member("k2", 1),),
               (Consumer("k3", 0, offset=2, outer=4, inner=5),),
               (Member("mean", 0), Member("var", -1))),
  ))
  assert g == expected
  assert g.sets[0].buffers == ()
  assert isinstance(g.sets[1].members, tuple) and isinstance(g.sets[1].buffers, tuple)
  hash(g)  # static, hashable data


def test_declare_refuses_overlap():
  with pytest.raises(ValueError, match=re.escape("member of both 'a' and 'b'")):
    gl.declare([("a", 2, [("k", 0)], []), ("b", 2, [("k", 1)], [])])


@pytest.mark.parametrize("make, message", [
    (lambda: GroupSet("s", 4.0, (Member("['a']", 1),)), "positive int"),
    (lambda: GroupSet("s", True, (Member("['a']", 1),)), "positive int"),
    (lambda: Groups(()), "at least one group set"),
    (lambda: Groups((GroupSet(
        "s", 4, (Member("['a']", 1), Member("['a']", 0))),)),
     "more than once"),
])
def test_malformed_sets_are_refused(make, message):
  with pytest.raises(ValueError, match=message):
    make()
