"""Mask pytrees: create, apply, count, validate, summarize.

A mask has exactly the tree structure of the params it masks. A *prunable* leaf carries a bool
array of the leaf's shape (``True`` = kept); a leaf that is never pruned carries a scalar ``True``,
which broadcasts and costs no memory. The mask therefore says by itself which leaves are
prunable: ``mask.ndim > 0``.

Which leaves are prunable is a rule on the key path (``jax.tree_util.keystr``) and the leaf:

* ``None``: the default, :func:`default_prunable` (kernels of rank >= 2, never biases or
  normalization parameters);
* a regex string: leaves of rank >= 1 whose path matches (``re.search``);
* a callable ``(path: str, leaf) -> bool``;
* :func:`rule` combines the default with include / exclude regexes, e.g.
  ``rule(exclude="output")`` keeps the output layer dense.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Prunable = Union[None, str, Callable[[str, Any], bool]]

_NEVER_PRUNED = re.compile(r"(?i)(bias|scale|norm|\bbn|batch_?stat)")


def check_sparsity(sparsity: Any, name: str = "sparsity") -> None:
  """Raises ValueError if a concrete sparsity lies outside [0, 1); traced values pass."""
  try:
    value = float(sparsity)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return
  if not 0.0 <= value < 1.0:
    raise ValueError(
        f"{name}={value!r} is outside [0, 1): it is the fraction of prunable weights removed, "
        "e.g. 0.9 keeps 10% of them.")


def default_prunable(path: str, leaf: Any) -> bool:
  """Kernels of rank >= 2 whose path names no bias, scale or normalization layer."""
  return np.ndim(leaf) >= 2 and _NEVER_PRUNED.search(path) is None


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
    return lambda path, leaf: np.ndim(leaf) >= 1 and pattern.search(path) is not None
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


def validate(params: PyTree, masks: PyTree) -> None:
  """Raises a ValueError naming the first path where ``masks`` does not fit ``params``."""
  p_leaves, p_def = jax.tree_util.tree_flatten_with_path(params)
  m_leaves, m_def = jax.tree_util.tree_flatten_with_path(masks)
  p_paths = [jax.tree_util.keystr(p) for p, _ in p_leaves]
  m_paths = [jax.tree_util.keystr(p) for p, _ in m_leaves]
  if p_def != m_def:
    for i, (pp, mp) in enumerate(zip(p_paths, m_paths)):
      if pp != mp:
        raise ValueError(
            f"masks do not match params: leaf {i} is at path {mp} in the masks but {pp} in the "
            "params. A mask must have exactly the params' tree structure (masks.ones_like).")
    if len(p_paths) == len(m_paths):
      raise ValueError(
          f"masks do not match params: the leaf paths agree but the containers differ "
          f"(params {p_def}, masks {m_def}). Build masks with masks.ones_like(params).")
    extra = p_paths[len(m_paths):] or m_paths[len(p_paths):]
    where = "params" if len(p_paths) > len(m_paths) else "masks"
    raise ValueError(
        f"masks do not match params: {extra[0]} is only in the {where} "
        f"({len(p_paths)} param leaves, {len(m_paths)} mask leaves).")
  for path, (_, p), (_, m) in zip(p_paths, p_leaves, m_leaves):
    m_shape, p_shape = jnp.shape(m), jnp.shape(p)
    if m_shape not in ((), p_shape):
      raise ValueError(
          f"mask at {path} has shape {m_shape}, but the param has shape {p_shape}: a mask leaf "
          "must have the param's shape, or be a scalar True for a leaf that is never pruned.")
    if jnp.result_type(m) != jnp.bool_:
      raise ValueError(f"mask at {path} has dtype {jnp.result_type(m)}; masks must be bool.")


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """Params with every pruned weight set to exactly 0.0 (NaN and inf included)."""
  return jax.tree.map(
      lambda p, m: jnp.where(m, p, jnp.zeros((), jnp.result_type(p))) if is_prunable_mask(m) else p,
      params, masks)


def count(masks: PyTree) -> tuple[jax.Array, int]:
  """(kept, total) over prunable leaves; ``kept`` is an int32 array (jit-friendly)."""
  leaves = [m for m in jax.tree.leaves(masks) if is_prunable_mask(m)]
  kept = sum((jnp.sum(m, dtype=jnp.int32) for m in leaves), jnp.int32(0))
  return kept, int(sum(np.size(m) for m in leaves))


def density(masks: PyTree) -> jax.Array:
  """Fraction of prunable weights kept."""
  kept, total = count(masks)
  return kept / total


def sparsity(params: PyTree, masks: PyTree) -> jax.Array:
  """Fraction of prunable weights pruned (zero in the mask). Works inside ``jit``."""
  validate(params, masks)
  return 1.0 - density(masks)


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  path: str
  shape: tuple[int, ...]
  kept: int
  total: int

  @property
  def density(self) -> float:
    return self.kept / self.total if self.total else 1.0


def summary(params: PyTree, masks: PyTree) -> list[LayerSummary]:
  """Per-leaf kept / total counts for every prunable leaf (host-side; not for ``jit``)."""
  validate(params, masks)
  rows = []
  for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(masks)):
    if is_prunable_mask(m):
      rows.append(LayerSummary(jax.tree_util.keystr(path), tuple(np.shape(p)),
                               int(np.sum(np.asarray(m))), int(np.size(p))))
  return rows


def summary_table(params: PyTree, masks: PyTree) -> str:
  """The per-layer summary as an aligned text table with a total row."""
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
