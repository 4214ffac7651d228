"""What the group optimizers (:mod:`~sparsejax.structured.hesso`, :mod:`~sparsejax.structured.hspg`)
share as wrappers of an inner optax optimizer: argument checks, zeroing the inner state's slices
of zero groups, and finding their state inside a composed optimizer state."""

from __future__ import annotations

from typing import Any

import jax
import optax

from sparsejax.structured import groups as groups_lib

PyTree = Any


def check_inner(inner: Any, name: str, example_args: str) -> None:
  """Raises ``TypeError`` unless ``inner`` looks like an optax optimizer."""
  if not (hasattr(inner, "init") and hasattr(inner, "update")):
    raise TypeError(f"{name}: inner (a {type(inner).__name__}) is not an optax optimizer (an "
                    "object with init and update); the first argument is the optimizer to wrap, "
                    f"e.g. {name}(optax.sgd(0.1, momentum=0.9), groups, {example_args}).")


def check_groups(groups: Any, name: str) -> None:
  if not isinstance(groups, groups_lib.Groups):
    raise TypeError(f"{name}: groups (a {type(groups).__name__}) must be a "
                    "sparsejax.structured.Groups, e.g. from groups.declare(...).")


def require_params(groups: groups_lib.Groups, params: PyTree, name: str) -> None:
  """Raises ``ValueError`` if ``params`` is missing or does not fit ``groups``."""
  if params is None:
    raise ValueError(f"{name} needs the params: call update(updates, state, params).")
  groups_lib.check_sizes(groups, params)


def zero_state(inner: optax.GradientTransformation, groups: groups_lib.Groups,
               inner_state: optax.OptState, zero: jax.Array) -> optax.OptState:
  """``inner_state`` with the slices of the ``zero`` groups set to 0 in every params-shaped part
  (as ``optax.tree_utils.tree_map_params`` finds them with the inner optimizer's init)."""
  try:
    # is_leaf: each params-shaped part is passed whole, so zero_out can find the members' paths.
    return optax.tree_utils.tree_map_params(
        inner, lambda tree: groups_lib.zero_out(groups, tree, zero), inner_state,
        is_leaf=lambda _: True)
  except (TypeError, ValueError, KeyError) as e:
    raise ValueError(
        "cannot find the params-shaped parts of the inner optimizer state with the inner "
        "optimizer's init (optax.tree_utils.tree_map_params): inner optimizers built with "
        "optax.masked or optax.multi_transform are not supported.") from e


def find_state(opt_state: optax.OptState, types: tuple[type, ...], what: str) -> Any:
  """The one state of one of ``types`` anywhere in ``opt_state`` (alone, in ``optax.chain``, a
  tuple, ...); ``ValueError`` naming ``what`` unless there is exactly one."""
  is_state = lambda x: isinstance(x, types)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]
  if len(found) != 1:
    raise ValueError(f"expected one {what} state in the optimizer state, found {len(found)}: "
                     f"build the optimizer with {what}, once.")
  return found[0]
