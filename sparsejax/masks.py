"""Mask pytrees: create, apply, count, validate, summarize.

A mask has the tree structure of the params it masks. A *prunable* leaf carries a bool array of
the leaf's shape (``True`` = kept); a leaf that is never pruned carries a scalar ``True``, which
broadcasts and costs no memory. The mask therefore says by itself which leaves are prunable:
``mask.ndim > 0``.

Params and masks are matched leaf by leaf by name, so the containers of the two may differ where
they mean the same thing: a Flax NNX Variable (``nnx.Param``, the ``nnx.OptVariable`` of an
``nnx.Optimizer``'s state) counts as the value it holds, any mapping (``dict``, ``nnx.State``,
``FrozenDict``) as a dict, and a child is named by its key whether it is an item ``['a']``, an
attribute ``.a`` or an index ``[0]``. Masks read from an ``nnx.Optimizer`` thus fit
``nnx.state(model, nnx.Param)``, or its ``nnx.to_pure_dict``, as they are; results shaped like
the params (:func:`apply`) come back in the params' own containers.

Which leaves are prunable is a rule on the key path (``jax.tree_util.keystr``) and the leaf:

* ``None``: the default, :func:`default_prunable` (kernels of rank >= 2, never biases or
  normalization parameters);
* a regex string: leaves of rank >= 1 whose path matches (``re.search``);
* a callable ``(path: str, leaf) -> bool``;
* :func:`rule` combines the default with include / exclude regexes, e.g.
  ``rule(exclude="output")`` keeps the output layer dense.

The library's argument checks live here too: :func:`check_fraction` (a value in [0, 1)) and
:func:`check_structure` / :func:`check_paths` (two trees, or a tree and a file, hold the same key
paths; the error names the first path that differs).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Prunable = Union[None, str, Callable[[str, Any], bool]]

# Whole words of a key path (delimited by anything but a letter, so `['bn1']`, `['LayerNorm_0']`,
# `['ln_f']` and `['batch_stats']` match, `['upscale_conv']` and `['enormous']` do not): biases,
# scales, batch statistics, and normalization layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
# batch_norm, norm1, bn, ln, gn, ...).
_NEVER_PRUNED = re.compile(
    r"(?i)(?<![a-z])(bias(es)?|scales?|batch_?stats?|bn|ln|gn|[a-z]*norm(alization)?)(?![a-z])")


def check_fraction(value: Any, name: str, hint: str = "") -> None:
  """Raises unless a concrete ``value`` is a scalar in [0, 1); traced values pass.

  The library's one range check for fractions (sparsities, IMP prune fractions); the error names
  ``name``, the value and the range, then ``hint`` (what the value means).
  """
  if isinstance(value, jax.core.Tracer):
    return
  hint = f" {hint}" if hint else ""
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}.{hint}")
  if np.asarray(value).dtype.kind not in "iuf":
    raise TypeError(f"{name}={value!r} is not a number.")
  number = float(value)
  if not 0.0 <= number < 1.0:
    raise ValueError(f"{name}={number!r} is outside [0, 1).{hint}")


def check_sparsity(sparsity: Any, name: str = "sparsity") -> None:
  """:func:`check_fraction` for a sparsity: the fraction of prunable weights removed."""
  check_fraction(
      sparsity, name, "A sparsity is one fraction of the prunable weights removed, e.g. 0.9 keeps "
      "10% of them (per-layer densities come from sparsejax.distributions).")


def is_floating(leaf: Any) -> bool:
  """Whether a leaf (an array, a ``jax.ShapeDtypeStruct`` or a number) holds floating point."""
  dtype = getattr(leaf, "dtype", None)
  return jnp.issubdtype(np.result_type(leaf) if dtype is None else dtype, jnp.floating)


def default_prunable(path: str, leaf: Any) -> bool:
  """Floating-point kernels of rank >= 2 whose path names no bias, scale or normalization layer.

  Names are matched as whole words of the path, case-insensitively: ``bias``, ``scale``,
  ``batch_stats``, ``bn``, ``ln``, ``gn`` and any word ending in ``norm`` (``LayerNorm_0``,
  ``batch_norm``, ``norm1``, ``rmsnorm``), so ``['upscale_conv']['kernel']`` is prunable. Integer
  and bool leaves (a lookup table, a step counter) are never weights.
  """
  return np.ndim(leaf) >= 2 and is_floating(leaf) and _NEVER_PRUNED.search(path) is None


def rule(include: str | None = None, exclude: str | None = None) -> Callable[[str, Any], bool]:
  """The default rule, restricted to paths matching ``include`` and not matching ``exclude``."""
  inc = re.compile(include) if include is not None else None
  exc = re.compile(exclude) if exclude is not None else None

  def is_prunable(path: str, leaf: Any) -> bool:
    if not default_prunable(path, leaf):
      return False
    if inc is not None and inc.search(path) is None:
      return False
    return exc is None or exc.search(path) is None

  is_prunable.__qualname__ = f"rule(include={include!r}, exclude={exclude!r})"
  return is_prunable


def _as_predicate(prunable: Prunable) -> Callable[[str, Any], bool]:
  if prunable is None:
    return default_prunable
  if isinstance(prunable, str):
    pattern = re.compile(prunable)
    return lambda path, leaf: (np.ndim(leaf) >= 1 and is_floating(leaf)
                               and pattern.search(path) is not None)
  if callable(prunable):
    return prunable
  raise TypeError(
      f"prunable={prunable!r} is not a rule: pass None (default), a regex string, or a "
      "callable (path: str, leaf) -> bool.")


def prunable_paths(params: PyTree, prunable: Prunable = None) -> list[str]:
  """Key paths of the leaves selected by ``prunable``, in tree order.

  Raises:
    ValueError: if the rule selects no leaf.
  """
  predicate = _as_predicate(prunable)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  selected = [
      jax.tree_util.keystr(path) for path, leaf in leaves
      if np.ndim(leaf) >= 1 and predicate(jax.tree_util.keystr(path), leaf)
  ]
  if not selected:
    paths = [jax.tree_util.keystr(p) for p, _ in leaves][:8]
    raise ValueError(
        f"prunable={prunable!r} selects no leaf of the params; their paths are {paths}"
        f"{' ...' if len(leaves) > 8 else ''}. Pass a rule that matches at least one array "
        "of rank >= 1 (by default: kernels of rank >= 2).")
  return selected


def ones_like(params: PyTree, prunable: Prunable = None) -> PyTree:
  """A mask that keeps every weight: bool ones for prunable leaves, scalar ``True`` elsewhere."""
  selected = set(prunable_paths(params, prunable))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: (jnp.ones(jnp.shape(leaf), bool)
                          if jax.tree_util.keystr(path) in selected else jnp.array(True)),
      params)


def is_prunable_mask(mask_leaf: Any) -> bool:
  """Whether a mask leaf belongs to a prunable param (bool array) or not (scalar ``True``)."""
  return np.ndim(mask_leaf) > 0


def _mismatch(missing: Sequence[str], extra: Sequence[str], n_ref: int, n: int, ref_name: str,
              name: str, hint: str) -> None:
  if not (missing or extra):
    return
  found = ([f"{missing[0]} is in the {ref_name} but not in the {name}"] if missing else []) + (
      [f"{extra[0]} is in the {name} but not in the {ref_name}"] if extra else [])
  raise ValueError(
      f"The {name} do not match the {ref_name}: {' and '.join(found)} ({n_ref} leaves in the "
      f"{ref_name}, {n} in the {name}). {hint}")


def check_paths(ref_paths: Sequence[str], paths: Sequence[str], ref_name: str, name: str,
                hint: str = "") -> None:
  """Raises a ValueError naming the first key path that only one of two lists holds.

  ``ref_paths`` and ``paths`` are ``jax.tree_util.keystr`` paths of the leaves of ``ref_name`` and
  ``name`` (e.g. the params and the masks, or the arrays of a file).
  """
  ref_set, path_set = set(ref_paths), set(paths)
  _mismatch([p for p in ref_paths if p not in path_set], [p for p in paths if p not in ref_set],
            len(ref_paths), len(paths), ref_name, name, hint)


def _is_variable(x: Any) -> bool:
  """Whether ``x`` is a Flax NNX ``Variable`` or ``VariableState`` (found by its interface, so
  sparsejax needs no flax): a box whose pytree child is its ``.value``."""
  cls = type(x)
  return callable(getattr(cls, "get_metadata", None)) and hasattr(cls, "value")


_VALUE = jax.tree_util.GetAttrKey("value")


def _key_name(key: Any) -> Hashable:
  """What a key names, whatever its kind: ``['a']`` and ``.a`` name ``'a'``, ``[0]`` names 0."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


class _Flat(NamedTuple):
  leaves: list  # (names, keystr path, leaf) in tree order
  nodes: dict  # names -> (keystr path, type, child keys) of each container but Variables


def _flatten(tree: PyTree) -> _Flat:
  """The leaves of ``tree`` named by the names of their keys, and its containers.

  A Variable's ``.value`` key adds no name: ``nnx.state(model)['fc']['kernel']``, an
  ``nnx.Param`` whose path is ``['fc']['kernel'].value``, names its array ``('fc', 'kernel')``
  like ``{'fc': {'kernel': array}}`` does.
  """
  leaves, nodes = [], {}

  def visit(x, names, path):
    # One level down: every node below x is a leaf here.
    children, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    if len(children) == 1 and not children[0][0]:  # x is a leaf (None and {} have no children)
      leaves.append((names, jax.tree_util.keystr(path), x))
      return
    variable = _is_variable(x)
    if not variable:
      nodes[names] = (path, type(x), tuple(key for (key,), _ in children))
    for (key,), child in children:
      visit(child, names if variable and key == _VALUE else (*names, _key_name(key)),
            (*path, key))

  visit(tree, (), ())
  return _Flat(leaves, nodes)


def _same_kind(a: type, b: type) -> bool:
  return a is b or (issubclass(a, Mapping) and issubclass(b, Mapping))


def check_structure(reference: PyTree, tree: PyTree, ref_name: str, name: str,
                    hint: str = "") -> list[tuple[str, Any, Any]]:
  """(path, reference leaf, tree leaf) for every leaf, if ``tree`` has ``reference``'s structure.

  The two match when they hold leaves of the same names in the same order (see the module
  docstring: NNX Variables count as their values, mappings as dicts, items, attributes and
  indices by their names), in containers of the same kinds where their keys are the same. The
  paths returned are the reference's (``jax.tree_util.keystr``), its leaves unwrapped from
  any Variable.

  Raises:
    ValueError: naming the first path that only one of them holds, or where their order or
      their containers differ.
  """
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
  leaves, treedef = jax.tree.flatten(tree)
  if treedef == ref_def:  # the same containers: nothing to match by name
    return [(jax.tree_util.keystr(path), r, t) for (path, r), t in zip(ref_leaves, leaves)]
  ref, other = _flatten(reference), _flatten(tree)
  ref_names, names = [n for n, _, _ in ref.leaves], [n for n, _, _ in other.leaves]
  if ref_names != names:
    ref_set, name_set = set(ref_names), set(names)
    _mismatch([p for n, p, _ in ref.leaves if n not in name_set],
              [p for n, p, _ in other.leaves if n not in ref_set], len(ref_names), len(names),
              ref_name, name, hint)
    i = next(i for i, (a, b) in enumerate(zip(ref_names, names)) if a != b)
    raise ValueError(
        f"The {name} do not match the {ref_name}: they hold the same leaves in another order "
        f"(leaf {i} is {ref.leaves[i][1]} in the {ref_name} but {other.leaves[i][1]} in the "
        f"{name}). {hint}")
  for n, (path, ref_type, ref_keys) in ref.nodes.items():
    _, tree_type, keys = other.nodes.get(n, (None, ref_type, None))
    if keys == ref_keys and not _same_kind(ref_type, tree_type):
      where = f"at {jax.tree_util.keystr(path)}" if path else "at the top"
      raise ValueError(
          f"The {name} do not match the {ref_name}: the leaf paths agree but the containers "
          f"differ {where}: a {ref_type.__name__} in the {ref_name}, a {tree_type.__name__} in "
          f"the {name}. {hint}")
  return [(path, r, t) for (_, path, r), (_, _, t) in zip(ref.leaves, other.leaves)]


def _check_bool(path: str, mask_leaf: Any) -> None:
  if jnp.result_type(mask_leaf) != jnp.bool_:
    raise ValueError(f"mask at {path} has dtype {jnp.result_type(mask_leaf)}; masks must be bool.")


def _fitted(params: PyTree, masks: PyTree) -> list[tuple[str, Any, Any]]:
  """(params path, param, mask) for every leaf, once :func:`validate` found that they fit."""
  leaves = check_structure(
      params, masks, "params", "masks",
      "Masks must have the params' leaves: build them from these params (sparsejax.masks."
      "ones_like, sparsejax.pruning) or read them from their optimizer state "
      "(sparsejax.transforms.get_masks).")
  for path, p, m in leaves:
    m_shape, p_shape = jnp.shape(m), jnp.shape(p)
    if m_shape not in ((), p_shape):
      batched = 0 < len(m_shape) < len(p_shape) and p_shape[:len(m_shape)] == m_shape
      raise ValueError(
          f"mask at {path} has shape {m_shape}, but the param has shape {p_shape}: a mask leaf "
          "must have the param's shape, or be a scalar True for a leaf that is never pruned."
          + (f" For masks of {m_shape[0]} replicates made under jax.vmap, pass "
             f"batch_dims={len(m_shape)}." if batched else ""))
    _check_bool(path, m)
  return leaves


def validate(params: PyTree, masks: PyTree) -> None:
  """Raises a ValueError naming the first path where ``masks`` does not fit ``params``.

  They fit when they hold leaves of the same names (:func:`check_structure`: e.g. an
  ``nnx.State`` and a pure dict, or masks from an ``nnx.Optimizer``), each mask a bool array of
  its param's shape or a scalar (never pruned).
  """
  _fitted(params, masks)


def conform(params: PyTree, masks: PyTree) -> PyTree:
  """``masks`` in the containers of ``params``, for code that maps over both with ``jax.tree.map``.

  E.g. masks read from an ``nnx.Optimizer`` (``nnx.OptVariable``s) or given as a pure dict become
  an ``nnx.State`` of ``nnx.Param``s like ``nnx.state(model, nnx.Param)``, and the reverse.

  Raises:
    ValueError: naming the first path where ``masks`` does not fit ``params`` (:func:`validate`).
  """
  leaves = [m for _, _, m in _fitted(params, masks)]
  return jax.tree.unflatten(jax.tree.structure(params), leaves)


def validate_replacement(old: PyTree, new: PyTree) -> None:
  """Raises a ValueError naming the first path where masks ``new`` cannot replace ``old``.

  They must have leaves of the same names (:func:`check_structure`) and shapes (so a jitted step
  compiled for ``old`` is reused), and bool leaves.
  """
  leaves = check_structure(old, new, "old masks", "new masks",
                           "Derive the new masks from the old ones (e.g. sparsejax.pruning).")
  for path, o, n in leaves:
    if jnp.shape(n) != jnp.shape(o):
      raise ValueError(
          f"the new mask at {path} has shape {jnp.shape(n)}, but the mask it replaces has shape "
          f"{jnp.shape(o)}: a leaf cannot change shape, nor between prunable (an array of the "
          "param's shape) and never pruned (a scalar True).")
    _check_bool(path, n)


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """Params with every pruned weight set to exactly 0.0 (NaN and inf included).

  The result has the containers of ``params`` (an ``nnx.State`` of ``nnx.Param``s stays one),
  whatever those of ``masks``.

  Raises:
    ValueError: naming the first path where ``masks`` does not fit ``params`` (:func:`validate`;
      shapes are static, so the check costs nothing inside ``jit``).
  """
  out = [jnp.where(m, p, jnp.zeros((), jnp.result_type(p))) if is_prunable_mask(m) else p
         for _, p, m in _fitted(params, masks)]
  return jax.tree.unflatten(jax.tree.structure(params), out)


def _per_replicate(fn, batch_dims: int, *trees):
  """``fn`` of each replicate of trees whose leaves carry ``batch_dims`` leading batch axes (as
  ``jax.vmap`` over replicates makes them, a never-pruned scalar True included)."""
  if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
    raise ValueError(f"batch_dims={batch_dims!r} must be a non-negative int: the number of "
                     "leading replicate axes of every leaf.")
  for _ in range(batch_dims):
    fn = jax.vmap(fn)
  return fn(*trees)


def count(masks: PyTree, *, batch_dims: int = 0) -> tuple[jax.Array, int]:
  """(kept, total) over prunable leaves; ``kept`` is an int32 array (jit-friendly).

  With ``batch_dims=1`` (masks of N replicates from ``jax.vmap``), ``kept`` has shape (N,) and
  ``total`` is one replicate's.
  """
  if batch_dims:
    kept = _per_replicate(lambda m: count(m)[0], batch_dims, masks)
    total = sum(int(np.prod(np.shape(m)[batch_dims:])) for m in jax.tree.leaves(masks)
                if np.ndim(m) > batch_dims)
    return kept, total
  leaves = [m for m in jax.tree.leaves(masks) if is_prunable_mask(m)]
  kept = sum((jnp.sum(m, dtype=jnp.int32) for m in leaves), jnp.int32(0))
  return kept, int(sum(np.size(m) for m in leaves))


def density(masks: PyTree, *, batch_dims: int = 0) -> jax.Array:
  """Fraction of prunable weights kept (one per replicate with ``batch_dims``)."""
  kept, total = count(masks, batch_dims=batch_dims)
  return kept / total


def sparsity(params: PyTree, masks: PyTree, *, batch_dims: int = 0) -> jax.Array:
  """Fraction of prunable weights pruned (zero in the mask). Works inside ``jit``; one per
  replicate with ``batch_dims``."""
  if batch_dims:
    return _per_replicate(sparsity, batch_dims, params, masks)
  validate(params, masks)
  return 1.0 - density(masks)


def violations(params: PyTree, masks: PyTree, *, batch_dims: int = 0) -> jax.Array:
  """The number of pruned weights that are not exactly 0.0 (NaN and inf count, -0.0 does not).

  0 is the invariant every sparse optimizer of sparsejax keeps after every step. Returns an int32
  array, so it works inside ``jit``; one per replicate with ``batch_dims``.
  """
  if batch_dims:
    return _per_replicate(violations, batch_dims, params, masks)
  counts = [jnp.sum(~m & (p != 0.0), dtype=jnp.int32)
            for _, p, m in _fitted(params, masks) if is_prunable_mask(m)]
  return sum(counts, jnp.int32(0))


def replicate(tree: PyTree, index: int) -> PyTree:
  """Replicate ``index`` of a tree batched over replicates (leading axis of every leaf)."""
  return jax.tree.map(lambda x: x[index], tree)


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  path: str
  shape: tuple[int, ...]
  kept: int
  total: int

  @property
  def density(self) -> float:
    return self.kept / self.total if self.total else 1.0


def summary(params: PyTree, masks: PyTree, *, batch_dims: int = 0):
  """Per-leaf kept / total counts for every prunable leaf (host-side; not for ``jit``).

  With ``batch_dims=1`` (N replicates from ``jax.vmap``): one such list per replicate.
  """
  if batch_dims not in (0, 1):
    raise ValueError(f"batch_dims={batch_dims!r}: summaries take 0 or 1 replicate axis.")
  if batch_dims:
    n = jax.tree.leaves(masks)[0].shape[0]
    return [summary(replicate(params, i), replicate(masks, i)) for i in range(n)]
  return [LayerSummary(path, tuple(np.shape(p)), int(np.sum(np.asarray(m))), int(np.size(p)))
          for path, p, m in _fitted(params, masks) if is_prunable_mask(m)]


def summary_table(params: PyTree, masks: PyTree, *, batch_dims: int = 0) -> str:
  """The per-layer summary as an aligned text table with a total row (one per replicate, each
  under a ``replicate i`` line, with ``batch_dims=1``)."""
  if batch_dims:
    n = len(summary(params, masks, batch_dims=batch_dims))
    return "\n\n".join(f"replicate {i}\n" + summary_table(replicate(params, i),
                                                             replicate(masks, i))
                        for i in range(n))
  rows = summary(params, masks)
  kept, total = sum(r.kept for r in rows), sum(r.total for r in rows)
  body = [(r.path, "x".join(map(str, r.shape)), f"{r.kept:,}", f"{r.total:,}", f"{r.density:.4f}")
          for r in rows]
  body.append(("total", "", f"{kept:,}", f"{total:,}", f"{kept / total:.4f}"))
  header = ("path", "shape", "kept", "total", "density")
  widths = [max(len(row[i]) for row in [header, *body]) for i in range(5)]
  fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths)))
  return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])
