"""Zero-invariant groups as data: declare, validate, print, and per-group arithmetic.

Chen et al., "Only Train Once: A One-Shot Neural Network Training and Pruning Framework"
(OTOv1, NeurIPS 2021), Sec. 3.1, and "OTOv2: Automatic, Generic, User-Friendly" (ICLR 2023),
Sec. 3: the parameters of a network split into *zero-invariant groups* such that when every
parameter of a group is zero, the channel (or neuron) the group produces is zero for every input,
so the group and the consumers' slices that read the channel can be removed without changing the
network's output.

A :class:`GroupSet` is one layer's channels: ``size`` groups, group ``j`` made of index ``j`` along
``axis`` of every :class:`Member` (the producer kernel's output axis, its bias, the following
normalization's scale and shift; every branch a residual addition sums). Its :class:`Consumer`\\ s
name the axes that read the channels (the next layer's input axis; after a Flatten, channel ``c``
spreads over every spatial position) and are needed only to compress. :class:`Groups` is the
whole network's tuple of sets; its groups are numbered ``0 .. G-1`` set by set, and every
per-group quantity below is a flat ``(G,)`` vector in that order.

Paths are ``jax.tree_util.keystr`` of the leaves of the params tree the groups were made for
(``"['dense1']['kernel']"`` for a plain nested dict). Groups are static, hashable data: close
over them in ``jit``. The arithmetic (:func:`sq_norms`, :func:`dots`, :func:`scale`,
:func:`zero_out`, ...) is pure and works under ``jit``, ``grad`` and ``vmap``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Member:
  """Index ``j`` along ``axis`` of the leaf at ``path`` belongs to group ``j`` of its set."""

  path: str
  axis: int


@dataclasses.dataclass(frozen=True)
class Consumer:
  """An axis that reads a set's channels: the consumer's input axis.

  The axis is laid out as ``outer`` blocks; inside a block, channel ``c`` of the set occupies the
  ``inner`` consecutive indices starting at ``(offset + c) * inner``. A dense layer reading the
  channels directly has ``outer = inner = 1``; after flattening an NHWC feature map of ``H*W``
  positions, ``outer = H*W`` (NCHW: ``inner = H*W``); a concatenation shifts by ``offset``.
  """

  path: str
  axis: int
  offset: int = 0
  outer: int = 1
  inner: int = 1

  def indices(self, length: int, size: int) -> np.ndarray:
    """``(size, outer*inner)`` int array: the indices of the consumer axis (of ``length``) that
    read each of the set's ``size`` channels."""
    block = length // self.outer
    c = np.arange(size)[:, None, None]
    o = np.arange(self.outer)[None, :, None]
    i = np.arange(self.inner)[None, None, :]
    return (o * block + (self.offset + c) * self.inner + i).reshape(size, -1)


@dataclasses.dataclass(frozen=True)
class GroupSet:
  """``size`` groups (one per channel of a layer, or of a residual stream): ``members`` are zeroed
  together, ``consumers`` are sliced by compression. ``buffers`` are non-trainable leaves of the
  model *state* (BatchNorm running mean and variance, paths into the state tree) that compression
  slices with the members; optimizers never see them."""

  name: str
  size: int
  members: tuple[Member, ...]
  consumers: tuple[Consumer, ...] = ()
  buffers: tuple[Member, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "members", tuple(self.members))
    object.__setattr__(self, "consumers", tuple(self.consumers))
    object.__setattr__(self, "buffers", tuple(self.buffers))
    if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or (
        self.size < 1):
      raise ValueError(f"group set {self.name!r}: size must be a positive int, got {self.size!r}")
    object.__setattr__(self, "size", int(self.size))
    if not self.members:
      raise ValueError(f"group set {self.name!r} has no members")


@dataclasses.dataclass(frozen=True)
class Groups:
  """A network's group sets; groups are numbered set by set (``offsets[s]`` is set ``s``'s
  first)."""

  sets: tuple[GroupSet, ...]

  def __post_init__(self):
    object.__setattr__(self, "sets", tuple(self.sets))
    names = [s.name for s in self.sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f"group set names must be unique; repeated: {dupes}")
    if not self.sets:
      raise ValueError("Groups needs at least one group set")
    seen: dict[str, str] = {}
    for s in self.sets:
      paths = [m.path for m in s.members]
      repeated = sorted({p for p in paths if paths.count(p) > 1})
      if repeated:
        raise ValueError(f"group set {s.name!r} lists {repeated} more than once as a member")
      for m in s.members:
        if m.path in seen:
          raise ValueError(
              f"groups overlap: {m.path} is a member of both {seen[m.path]!r} and {s.name!r}; a "
              f"parameter belongs to at most one group set")
        seen[m.path] = s.name

  @property
  def num_groups(self) -> int:
    """G, the number of groups over all sets."""
    return sum(s.size for s in self.sets)

  @property
  def sizes(self) -> tuple[int, ...]:
    return tuple(s.size for s in self.sets)

  @property
  def offsets(self) -> tuple[int, ...]:
    return tuple(int(o) for o in np.cumsum((0,) + self.sizes)[:-1])

  @property
  def member_paths(self) -> frozenset[str]:
    return frozenset(m.path for s in self.sets for m in s.members)

  def set_of(self, index: int) -> tuple[GroupSet, int]:
    """(set, channel) of flat group ``index``."""
    for s, offset in zip(self.sets, self.offsets):
      if offset <= index < offset + s.size:
        return s, index - offset
    raise IndexError(f"group {index} out of range [0, {self.num_groups})")

  def split(self, vector: Any) -> list[Any]:
    """A flat ``(G,)`` vector -> one ``(size,)`` piece per set."""
    return [vector[o:o + n] for o, n in zip(self.offsets, self.sizes)]

  def __str__(self) -> str:
    return table(self)


def leaves_by_path(tree: PyTree) -> dict[str, Any]:
  """``{keystr(path): leaf}`` of ``tree``."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): leaf for p, leaf in flat}


def _map_with_path(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(jax.tree_util.keystr(p), x), tree)


def _other_axes(x: Any, axis: int) -> tuple[int, ...]:
  axis = axis % x.ndim
  return tuple(i for i in range(x.ndim) if i != axis)


def _along(vector: jax.Array, x: Any, axis: int) -> jax.Array:
  """``vector`` (one value per index of ``x``'s ``axis``) shaped to broadcast against ``x``."""
  shape = [1] * x.ndim
  shape[axis % x.ndim] = vector.shape[0]
  return vector.reshape(shape)


def _per_group(groups: Groups, leaf_fn: Callable[[Member, tuple[Any, ...]], jax.Array],
               *trees: PyTree) -> jax.Array:
  """Sum over each set's members of ``leaf_fn(member, leaves)`` (a ``(size,)`` vector), flat."""
  by_path = [leaves_by_path(t) for t in trees]
  pieces = []
  for s in groups.sets:
    total = 0.0
    for m in s.members:
      total = total + leaf_fn(m, tuple(b[m.path] for b in by_path))
    pieces.append(jnp.broadcast_to(jnp.asarray(total, jnp.float32), (s.size,)))
  return jnp.concatenate(pieces)


def sq_norms(groups: Groups, tree: PyTree) -> jax.Array:
  """``(G,)``: ||x_g||^2, the sum of squares of each group's entries of ``tree``."""
  return _per_group(
      groups, lambda m, xs: jnp.sum(jnp.square(xs[0].astype(jnp.float32)),
                                    axis=_other_axes(xs[0], m.axis)), tree)


def norms(groups: Groups, tree: PyTree) -> jax.Array:
  """``(G,)``: ||x_g||."""
  return jnp.sqrt(sq_norms(groups, tree))


def dots(groups: Groups, a: PyTree, b: PyTree) -> jax.Array:
  """``(G,)``: a_g . b_g, the per-group inner product of two trees with the params' structure."""
  return _per_group(
      groups, lambda m, xs: jnp.sum(xs[0].astype(jnp.float32) * xs[1].astype(jnp.float32),
                                    axis=_other_axes(xs[0], m.axis)), a, b)


def group_sizes(groups: Groups, tree: PyTree) -> np.ndarray:
  """``(G,)`` numpy: n_g, the number of entries of each group (shapes only, no arrays read)."""
  by_path = leaves_by_path(tree)
  pieces = []
  for s in groups.sets:
    n = sum(int(np.prod(np.shape(by_path[m.path]))) // s.size for m in s.members)
    pieces.append(np.full(s.size, n, np.int64))
  return np.concatenate(pieces)


def _by_member(groups: Groups, vector: Any) -> dict[str, tuple[Member, Any]]:
  """``{member path: (member, its set's piece of the flat (G,) vector)}``."""
  return {m.path: (m, piece) for s, piece in zip(groups.sets, groups.split(vector))
          for m in s.members}


def _member_map(groups: Groups, tree: PyTree,
                fn: Callable[[Any, Member, jax.Array], Any], vector: jax.Array) -> PyTree:
  where = _by_member(groups, vector)

  def visit(path, x):
    if path not in where:
      return x
    m, piece = where[path]
    return fn(x, m, _along(piece, x, m.axis))

  return _map_with_path(visit, tree)


def scale(groups: Groups, tree: PyTree, factors: jax.Array) -> PyTree:
  """``tree`` with every group's entries multiplied by ``factors[g]`` (``(G,)``); leaves outside
  the groups unchanged."""
  return _member_map(groups, tree, lambda x, m, f: (x * f).astype(x.dtype), factors)


def zero_out(groups: Groups, tree: PyTree, zero: jax.Array) -> PyTree:
  """``tree`` with the groups where ``zero`` (``(G,)`` bool) is True set to exactly ``0.0``."""
  return _member_map(groups, tree, lambda x, m, z: jnp.where(z, jnp.zeros((), x.dtype), x), zero)


def select(groups: Groups, a: PyTree, b: PyTree, which: jax.Array) -> PyTree:
  """Groups where ``which`` (``(G,)`` bool) is True taken from ``a``, all else from ``b``."""
  where = _by_member(groups, which)
  by_path = leaves_by_path(a)

  def visit(path, x):
    if path not in where:
      return x
    m, piece = where[path]
    return jnp.where(_along(piece, x, m.axis), by_path[path], x)

  return _map_with_path(visit, b)


def is_zero(groups: Groups, tree: PyTree) -> jax.Array:
  """``(G,)`` bool: every entry of the group is exactly 0.0."""
  return _per_group(
      groups, lambda m, xs: jnp.sum((xs[0] != 0).astype(jnp.float32),
                                    axis=_other_axes(xs[0], m.axis)), tree) == 0


def masks(groups: Groups, tree: PyTree, keep: jax.Array) -> PyTree:
  """Bool masks shaped like ``tree`` (the library's mask format, :mod:`sparsejax.masks`): a group
  member's mask is ``keep[g]`` along its axis; every other leaf carries a scalar ``True``."""
  where = _by_member(groups, keep)

  def visit(path, x):
    if path not in where:
      return jnp.asarray(True)
    m, piece = where[path]
    return jnp.broadcast_to(_along(piece, x, m.axis), np.shape(x))

  return _map_with_path(visit, tree)


def check_sizes(groups: Groups, params: PyTree) -> None:
  """Raises ``ValueError`` naming the set and path if a member or consumer does not fit the params:
  an unknown path, an axis out of range, a member axis whose length is not the set's size, or a
  consumer axis that cannot hold the set's channels."""
  shapes = {p: np.shape(x) for p, x in leaves_by_path(params).items()}
  for s in groups.sets:
    for m in s.members:
      shape = _shape_of(shapes, s, m.path, "member")
      if not -len(shape) <= m.axis < len(shape):
        raise ValueError(f"group set {s.name!r}: member {m.path} has shape {shape}, no axis "
                         f"{m.axis}")
      if shape[m.axis] != s.size:
        raise ValueError(f"group set {s.name!r}: member {m.path} axis {m.axis} has length "
                         f"{shape[m.axis]}, but the set has {s.size} groups; a member's axis "
                         f"must have one index per group")
    for c in s.consumers:
      shape = _shape_of(shapes, s, c.path, "consumer")
      if not -len(shape) <= c.axis < len(shape):
        raise ValueError(f"group set {s.name!r}: consumer {c.path} has shape {shape}, no axis "
                         f"{c.axis}")
      length = shape[c.axis]
      if c.outer < 1 or c.inner < 1 or c.offset < 0 or length % c.outer or (
          (c.offset + s.size) * c.inner > length // c.outer):
        raise ValueError(
            f"group set {s.name!r}: consumer {c.path} axis {c.axis} of length {length} cannot "
            f"hold {s.size} channels at offset={c.offset}, outer={c.outer}, inner={c.inner} "
            f"(needs length divisible by outer and (offset + size) * inner <= length / outer)")


def _shape_of(shapes: dict, s: GroupSet, path: str, role: str) -> tuple[int, ...]:
  if path not in shapes:
    near = ", ".join(sorted(shapes)[:8])
    raise ValueError(f"group set {s.name!r}: {role} {path} is not a leaf of the params "
                     f"(leaves: {near}{', ...' if len(shapes) > 8 else ''})")
  return shapes[path]


def zero_consumers(groups: Groups, tree: PyTree, zero: Any) -> PyTree:
  """``tree`` with the consumers' slices that read the channels where ``zero`` (a concrete
  ``(G,)`` bool array: host-side, not traced) is True set to 0."""
  shapes = leaves_by_path(tree)
  pieces = [np.asarray(p) for p in groups.split(np.asarray(zero))]
  drop: dict[str, list[tuple[int, np.ndarray]]] = {}
  for s, piece in zip(groups.sets, pieces):
    for c in s.consumers:
      x = shapes[c.path]
      idx = c.indices(np.shape(x)[c.axis], s.size)[piece].reshape(-1)
      drop.setdefault(c.path, []).append((c.axis % np.ndim(x), idx))

  def visit(path, x):
    for axis, idx in drop.get(path, ()):
      keep = np.ones(np.shape(x)[axis], bool)
      keep[idx] = False
      x = jnp.where(_along(jnp.asarray(keep), x, axis), x, jnp.zeros((), x.dtype))
    return x

  return _map_with_path(visit, tree)


def validate(groups: Groups, params: PyTree,
             apply_fn: Callable[[PyTree, jax.Array], jax.Array] | None = None,
             inputs: jax.Array | None = None, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
  """Checks ``groups`` against ``params``; raises ``ValueError`` naming the offending set.

  Always: sizes and axes (:func:`check_sizes`); overlaps are refused when :class:`Groups` is
  built. With ``apply_fn(params, inputs) -> outputs``: zero-invariance, checked numerically set by
  set. Every other group of the set is zeroed; if the channels they produce are exactly zero,
  also zeroing the consumers' slices that read them cannot change the outputs. An activation
  with f(0) != 0 (a sigmoid), a bias or shift left out of the members, or a wrong consumer makes
  the two outputs differ, and the error names the set. Sets without consumers cannot be checked
  this way and are skipped.
  """
  check_sizes(groups, params)
  if apply_fn is None:
    return
  if inputs is None:
    raise ValueError("validate: apply_fn needs inputs to check zero-invariance")
  for s, offset in zip(groups.sets, groups.offsets):
    if not s.consumers:
      continue
    zero = np.zeros(groups.num_groups, bool)
    zero[offset:offset + s.size:2] = True
    zeroed = zero_out(groups, params, jnp.asarray(zero))
    y_members = np.asarray(apply_fn(zeroed, inputs))
    y_both = np.asarray(apply_fn(zero_consumers(groups, zeroed, zero), inputs))
    if not np.allclose(y_members, y_both, rtol=rtol, atol=atol):
      err = float(np.max(np.abs(y_members - y_both)))
      raise ValueError(
          f"group set {s.name!r} is not zero-invariant: with its groups zeroed, the channels "
          f"they produce are not zero (zeroing the consumers' slices too changes the outputs by "
          f"up to {err:.3g}). Check that the activation between {s.members[0].path} and its "
          f"consumers maps 0 to 0 (a sigmoid does not), that every bias and normalization "
          f"shift of the channel is a member, and that the consumers are right.")


def table(groups: Groups, params: PyTree | None = None) -> str:
  """A readable listing: one line per set (groups, params per group when ``params`` is given),
  then its members and consumers."""
  sizes = None if params is None else groups.split(group_sizes(groups, params))
  lines = [f"{groups.num_groups} groups in {len(groups.sets)} sets"]
  for i, s in enumerate(groups.sets):
    per = "" if sizes is None else f", {int(sizes[i][0])} params each"
    lines.append(f"{s.name}: {s.size} groups{per}")
    lines += [f"    member   {m.path} axis {m.axis}" for m in s.members]
    for c in s.consumers:
      layout = "".join(f", {k}={v}" for k, v, default in (
          ("offset", c.offset, 0), ("outer", c.outer, 1), ("inner", c.inner, 1)) if v != default)
      lines.append(f"    consumer {c.path} axis {c.axis}{layout}")
    lines += [f"    buffer   {b.path} axis {b.axis}" for b in s.buffers]
  return "\n".join(lines)


def declare(sets: Iterable[Sequence[Any]]) -> Groups:
  """:class:`Groups` from plain tuples ``(name, size, members, consumers[, buffers])``: members
  and buffers are ``(path, axis)``, a consumer ``(path, axis)`` or ``(path, axis, offset, outer,
  inner)``."""
  out = []
  for name, size, members, consumers, *rest in sets:
    buffers = rest[0] if rest else ()
    out.append(GroupSet(name, size, tuple(Member(*m) for m in members),
                        tuple(Consumer(*c) for c in consumers),
                        tuple(Member(*b) for b in buffers)))
  return Groups(tuple(out))
