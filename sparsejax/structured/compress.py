"""Compression: remove the zero groups, giving a smaller network with the same outputs.

Chen et al., "Only Train Once: A One-Shot Neural Network Training and Pruning Framework" (OTOv1,
NeurIPS 2021), Sec. 3.1, and "OTOv2: Automatic, Generic, User-Friendly" (ICLR 2023), Sec. 3:
once training has driven groups of a zero-invariant group partition to exactly zero, the channels
they produce are zero for every input, so removing them (the members' indices along their axes)
and the consumer slices that read them (the next layers' input indices) yields a narrower network
whose outputs equal the group-sparse network's. BatchNorm running statistics (the sets'
``buffers``, in the model state) are sliced with the channels they normalize.

Compression is a one-off host-side operation: it reads the arrays (numpy indexing), not a traced
function. The authors' implementation (``only_train_once``: ``set_pruning_redundant_idxes`` and
``automated_pruning_compression``) removes exactly the groups of zero norm and sets no floor on
what a layer keeps, so a set whose groups are all zero becomes a zero-width layer. :func:`compress`
removes exactly the zero groups too, but refuses a set that would keep none, naming it: a
zero-width layer means the network's output no longer depends on its input through that layer,
and it cannot be rebuilt by model constructors that want positive widths. Passing ``keep``
explicitly chooses the groups by hand and allows it (zero-length axes).

``multiple`` rounds every kept width up to a multiple (capped at the set's size) by keeping some
of the removed groups too, smallest norm first. In the default mode those are all-zero groups, so
the outputs stay equal; the point is speed: matrix and convolution kernels vectorize over the
output channels, and XLA:CPU runs a layer of 49 or 31 channels markedly slower than one of 64 or
32 (``benchmarks/structured.py`` measures it side by side).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.structured import groups as groups_lib
from sparsejax.structured.groups import Groups, PyTree, check_sizes, is_zero, leaves_by_path


class Compressed(NamedTuple):
  """The result of :func:`compress`: the smaller ``params`` and ``state`` (``None`` when none was
  given), the ``(G,)`` bool numpy ``keep`` it used, and ``widths``, each set's kept count."""

  params: PyTree
  state: PyTree | None
  keep: np.ndarray
  widths: dict[str, int]


def _check_keep(groups: Groups, keep: Any) -> np.ndarray:
  keep = np.asarray(keep)
  if keep.shape != (groups.num_groups,) or keep.dtype != bool:
    raise ValueError(f"keep must be a bool vector of shape ({groups.num_groups},), one entry per "
                     f"group; got {keep.dtype} of shape {keep.shape}")
  return keep


def _check_buffers(groups: Groups, state: PyTree | None) -> None:
  buffers = [(s, b) for s in groups.sets for b in s.buffers]
  if not buffers:
    return
  if state is None:
    raise ValueError(f"group set {buffers[0][0].name!r} has buffers ({buffers[0][1].path}) in the "
                     f"model state: pass state to compress them")
  shapes = {p: np.shape(x) for p, x in leaves_by_path(state).items()}
  for s, b in buffers:
    shape = shapes.get(b.path)
    if shape is None:
      raise ValueError(f"group set {s.name!r}: buffer {b.path} is not a leaf of the state")
    if not -len(shape) <= b.axis < len(shape) or shape[b.axis] != s.size:
      raise ValueError(f"group set {s.name!r}: buffer {b.path} of shape {shape} has no axis "
                       f"{b.axis} of length {s.size}, one index per group")


def _kept_indices(groups: Groups, keep: np.ndarray, tree: PyTree,
                  roles: tuple[str, ...]) -> dict[str, dict[int, np.ndarray]]:
  """``{path: {axis: bool mask of the indices kept}}`` for the leaves of ``tree`` that the sets'
  ``roles`` ("members" and "consumers" of the params, "buffers" of the state) name."""
  shapes = {p: np.shape(x) for p, x in leaves_by_path(tree).items()}
  kept: dict[str, dict[int, np.ndarray]] = {}
  for s, piece in zip(groups.sets, groups.split(keep)):
    for role in roles:
      for entry in getattr(s, role):
        shape = shapes[entry.path]
        axis = entry.axis % len(shape)
        mask = kept.setdefault(entry.path, {}).setdefault(axis, np.ones(shape[axis], bool))
        if role == "consumers":
          mask[entry.indices(shape[axis], s.size)[~piece].reshape(-1)] = False
        else:
          mask &= piece
  return kept


def _slice(tree: PyTree, kept: dict[str, dict[int, np.ndarray]]) -> PyTree:
  """``tree`` with each leaf of ``kept`` cut to the kept indices of each of its axes."""

  def visit(path, x):
    axes = kept.get(jax.tree_util.keystr(path))
    if axes is None:
      return x
    out = np.asarray(x)
    for axis, mask in axes.items():
      out = np.compress(mask, out, axis=axis)
    return jnp.asarray(out)

  return jax.tree_util.tree_map_with_path(visit, tree)


def round_up(width: int, multiple: int, size: int) -> int:
  """``width`` rounded up to a multiple of ``multiple``, at most ``size``."""
  return min(size, -(-width // multiple) * multiple)


def _pad(groups: Groups, params: PyTree, keep: np.ndarray, multiple: int) -> np.ndarray:
  """``keep`` plus, per set, the fewest removed groups (smallest norm first) that bring its kept
  count to a multiple of ``multiple`` (or to the set's size)."""
  norms = np.asarray(groups_lib.sq_norms(groups, params))
  keep = keep.copy()
  for s, start in zip(groups.sets, groups.offsets):
    piece = keep[start:start + s.size]
    missing = round_up(int(piece.sum()), multiple, s.size) - int(piece.sum())
    removed = np.flatnonzero(~piece)
    extra = removed[np.argsort(norms[start + removed], kind="stable")[:missing]]
    keep[start + extra] = True
  return keep


def compress(groups: Groups, params: PyTree, state: PyTree | None = None,
             keep: Any = None, multiple: int = 1) -> Compressed:
  """``params`` (and the model ``state``) with only the kept groups (OTOv1 Sec. 3.1, OTOv2 Sec. 3).

  Every member's axis and every buffer's axis is sliced to the kept groups, every consumer's axis
  to the indices (:meth:`~sparsejax.structured.groups.Consumer.indices`) that read kept channels;
  leaves outside the groups are returned as they are. A leaf can be a member of one set and a
  consumer of others (a convolution's output and input axes), and a consumer of several sets on
  one axis (a concatenation). ``keep`` (``(G,)`` bool) defaults to the groups that are not all
  zero (:func:`~sparsejax.structured.groups.is_zero`); then the compressed network's outputs
  equal the group-sparse network's (BatchNorm in eval mode included, its running statistics being
  buffers), and a set with no group kept raises ``ValueError`` naming it. An explicit ``keep``
  is taken as given, all-False sets included (zero-length axes); removing groups that are not
  zero changes the outputs. ``multiple`` > 1 then keeps the fewest further groups (zero ones in
  the default mode, so outputs are unchanged; smallest norm first) that make every set's width a
  multiple of it or the set's size: faster kernels for a few more parameters.
  """
  check_sizes(groups, params)
  _check_buffers(groups, state)
  explicit = keep is not None
  if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
    raise ValueError(f"multiple must be a positive int (1 keeps the exact widths), got "
                     f"{multiple!r}")
  keep = _check_keep(groups, keep) if explicit else ~np.asarray(is_zero(groups, params))
  widths = {s.name: int(piece.sum()) for s, piece in zip(groups.sets, groups.split(keep))}
  empty = [name for name, width in widths.items() if width == 0]
  if empty and not explicit:
    raise ValueError(
        f"group sets {empty} have every group zero: compression would leave them no channel. "
        f"Pass keep explicitly to remove them anyway, or keep some of their groups.")
  if multiple > 1:
    keep = _pad(groups, params, keep, multiple)
    widths = {s.name: int(piece.sum()) for s, piece in zip(groups.sets, groups.split(keep))}
  small_params = _slice(params, _kept_indices(groups, keep, params, ("members", "consumers")))
  small_state = None if state is None else _slice(
      state, _kept_indices(groups, keep, state, ("buffers",)))
  return Compressed(small_params, small_state, keep, widths)
