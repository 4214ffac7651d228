"""Half-space projected gradient methods for group sparsity: HSPG (OTOv1) and DHSPG (OTOv2).

Chen et al., "Only Train Once" (OTOv1, NeurIPS 2021), Sec. 3.2, Algorithm 1, and "OTOv2:
Automatic, Generic, User-Friendly" (ICLR 2023), Sec. 4. Both train the params x on the
zero-invariant groups of :mod:`sparsejax.structured.groups` (the zero groups of the result can be
removed from the network) by minimizing the group-lasso objective::

  psi(x) = f(x) + sum_g lambda_g ||x_g||                                          (1)

Each step starts from the direction ``d`` of an inner optax optimizer (its update is ``u = -a d``
for the learning rate ``a``: SGD, momentum, Adam, AdamW, ...) and forms the trial point of one
(sub)gradient step on (1), group by group::

  x'_g = x_g - a (d_g + lambda_g x_g / ||x_g||)        (x'_g = x_g + u_g where x_g = 0)    (2)

The half-space projection then sends to zero every nonzero group whose trial point leaves the
half-space around its current value::

  x'_g . x_g < epsilon ||x_g||^2   =>   x'_g = 0,   0 <= epsilon < 1                  (3)

and a group projected to zero is held there. A proximal step zeroes a group only when its
gradient step lands in the ball of radius ``a lambda_g`` around the origin; (3) zeroes it whenever
the step crosses a hyperplane, a much larger region, hence more zero groups at the same lambda.

* :func:`hspg` (OTOv1): one lambda for every group; (sub)gradient steps (2) before
  ``start_step``, then (2) + (3) on every group.
* :func:`dhspg` (OTOv2): at ``start_step`` the groups are split once into a penalized set G_p of
  ``floor(G * (target + tolerance))`` groups (the most redundant by a saliency score) and the rest;
  G_p gets (2) + (3) with an adaptive lambda_g that makes the step shrink the group, the rest take
  the inner optimizer's plain step and are never zeroed. The target is reached only implicitly:
  nothing guarantees that the penalized groups reach zero in a given number of steps.

Both are ``optax.GradientTransformationExtraArgs`` that wrap the inner optimizer, run entirely
under ``jit`` (the stages and the partition switch on the step counter in the state: no recompiles,
no host round trip), and keep two invariants:

1. after ``optax.apply_updates`` every group projected to zero is exactly ``0.0`` (its update is
   ``-x``), at that step and every later one;
2. its gradients are zeroed before the inner optimizer sees them and its slices of the inner
   optimizer's state (momenta, Adam moments, found by ``optax.tree_utils.tree_map_params``) are
   exactly zero, so nothing it accumulated can push it off zero or leak into later steps.

Pass the learning rate to both the inner optimizer and the wrapper (``learning_rate``, a float or
the same optax schedule): the regularization term and the partition need ``a`` explicitly. Put
the wrapper outermost, so nothing after it rescales the updates of zero groups. Leaves of the
params outside the groups take the inner optimizer's step unchanged.

Differences from the reference implementation (microsoft/only_train_once), all from wrapping an
arbitrary optax optimizer: the term ``a lambda_g x_g / ||x_g||`` is added to the inner update, not
fed through the optimizer's momentum or Adam scaling (as OTO's DHSPG does; its HSPG feeds it
through SGD momentum); ``d`` includes all the inner optimizer does, AdamW's decoupled weight decay
too; only the groups projected here are held at zero, not every group that happens to be exactly
zero; and OTO's optional per-layer cap on projections, which drops random groups, is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import selection
from sparsejax.structured import groups as groups_lib
from sparsejax.structured import wrapping

PyTree = Any

# Safeguards of the reference implementation: cosine similarity and L2 normalization in the
# saliency score, and the mean group magnitude in its denominator.
_COS_EPS = 1e-8
_NORMALIZE_EPS = 1e-12
_MAGNITUDE_EPS = 1e-6
# The penalized fraction is capped below 1, as in the reference implementation.
_MAX_PENALIZED_FRACTION = 0.999


class HSPGState(NamedTuple):
  """State of :func:`hspg`."""

  count: jax.Array  # int32: the number of updates applied so far
  zero: jax.Array  # (G,) bool: the groups projected to zero, held at zero
  inner_state: optax.OptState


class DHSPGState(NamedTuple):
  """State of :func:`dhspg`."""

  count: jax.Array  # int32: the number of updates applied so far
  zero: jax.Array  # (G,) bool: the groups projected to zero, held at zero (a subset of penalized)
  penalized: jax.Array  # (G,) bool: G_p, chosen at start_step; all False before
  inner_state: optax.OptState


_STATES = (HSPGState, DHSPGState)






def _check_number(name: str, arg: str, value: Any, ok: Callable[[float], bool], rule: str,
                  schedule: bool) -> None:
  """Raises ``ValueError`` unless ``value`` is a finite number satisfying ``ok`` (or a schedule,
  when ``schedule``)."""
  if schedule and callable(value):
    return
  kind = "a number or a schedule step -> value" if schedule else "a number"
  if isinstance(value, bool):
    raise ValueError(f"{name}: {arg}={value!r} must be {kind} {rule}")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: {arg}={value!r} must be {kind} {rule}") from None
  if not (np.isfinite(number) and ok(number)):
    raise ValueError(f"{name}: {arg}={value!r} must be {rule}")


def _check_start_step(start_step: Any, name: str) -> None:
  is_int = isinstance(start_step, (int, np.integer)) and not isinstance(start_step, bool)
  if not is_int or start_step < 0:
    raise ValueError(f"{name}: start_step={start_step!r} must be a non-negative int: the number "
                     "of updates before the half-space projection starts.")


def _value(hyperparameter: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """A hyperparameter at step ``count``: a schedule's value, or the constant."""
  value = hyperparameter(count) if callable(hyperparameter) else hyperparameter
  return jnp.asarray(value, jnp.float32)




def _safe_divide(numerator: jax.Array, denominator: jax.Array, where: jax.Array) -> jax.Array:
  """``numerator / denominator`` where ``where``, else 0 (no division by zero is evaluated)."""
  return jnp.where(where, numerator / jnp.where(where, denominator, 1.0), 0.0)




def _half_space_step(inner: optax.GradientTransformation, groups: groups_lib.Groups,
                     updates: PyTree, params: PyTree, inner_state: optax.OptState,
                     zero: jax.Array, coefficients: jax.Array, projectable: jax.Array,
                     epsilon: float) -> tuple[PyTree, jax.Array, optax.OptState]:
  """From the inner optimizer's ``updates`` u: the trial point (2) ``x' = x + u - c x`` with
  ``c = coefficients`` (a lambda_g / ||x_g||; 0 for unregularized groups), the projection (3) on
  the ``projectable`` groups, and the zero groups (held and new) sent to exactly 0.

  Returns the updates, the new ``zero`` and the inner state with the zero groups' slices zeroed.
  """
  shrunk = optax.tree.add(updates, groups_lib.scale(groups, params, -coefficients))
  trial = groups_lib.select(groups, shrunk, updates, coefficients != 0)
  trial_point = optax.apply_updates(params, trial)
  sq = groups_lib.sq_norms(groups, params)
  crosses = groups_lib.dots(groups, trial_point, params) < epsilon * sq
  zero = zero | (projectable & (sq > 0) & crosses)
  # -x in the updates' dtypes: x + (-x) is exactly 0.0.
  negated = jax.tree.map(lambda x, v: -x.astype(v.dtype), params, trial)
  updates = groups_lib.select(groups, negated, trial, zero)
  return updates, zero, wrapping.zero_state(inner, groups, inner_state, zero)


def hspg(inner: optax.GradientTransformation, groups: groups_lib.Groups, *,
         learning_rate: optax.ScalarOrSchedule, lmbda: optax.ScalarOrSchedule, epsilon: float,
         start_step: int) -> optax.GradientTransformationExtraArgs:
  """Half-Space Stochastic Projected Gradient (HSPG), OTOv1 Sec. 3.2, Algorithm 1.

  Minimizes (1) with ``lambda_g = lmbda`` for every group. Stage 1 (updates ``0 ..
  start_step - 1``): the (sub)gradient step (2) on every group. Stage 2 (from ``start_step``):
  (2) followed by the half-space projection (3) on every nonzero group; groups projected to zero
  stay exactly zero.

  Example::

    opt = hspg(optax.sgd(0.1, momentum=0.9), groups, learning_rate=0.1, lmbda=1e-3,
               epsilon=0.0, start_step=10_000)

  Args:
    inner: any optax optimizer, whose update is ``-learning_rate * d``.
    groups: the zero-invariant groups (:mod:`sparsejax.structured.groups`).
    learning_rate: the inner optimizer's learning rate ``a``: a float > 0 or the same schedule.
    lmbda: the group-lasso weight lambda >= 0 (or a schedule).
    epsilon: the half-space parameter of (3), in [0, 1): larger zeroes more groups.
    start_step: the number of updates of stage 1.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`HSPGState`; ``update`` needs the
    params.

  Raises:
    TypeError: if ``inner`` is not an optax optimizer or ``groups`` not a ``Groups``.
    ValueError: on an argument out of range; at the first update, if the groups do not fit the
      params (``groups.check_sizes``).
  """
  name = "hspg"
  wrapping.check_inner(inner, name, "learning_rate=0.1, ...")
  wrapping.check_groups(groups, name)
  _check_number(name, "learning_rate", learning_rate, lambda v: v > 0, "> 0", schedule=True)
  _check_number(name, "lmbda", lmbda, lambda v: v >= 0, ">= 0", schedule=True)
  _check_number(name, "epsilon", epsilon, lambda v: 0 <= v < 1, "in [0, 1)", schedule=False)
  _check_start_step(start_step, name)
  inner = optax.with_extra_args_support(inner)
  num_groups = groups.num_groups

  def init_fn(params):
    groups_lib.check_sizes(groups, params)
    return HSPGState(jnp.zeros((), jnp.int32), jnp.zeros((num_groups,), bool), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    wrapping.require_params(groups, params, name)
    u, inner_state = inner.update(groups_lib.zero_out(groups, updates, state.zero),
                                  state.inner_state, params, **extra_args)
    norm = groups_lib.norms(groups, params)
    step = _value(learning_rate, state.count) * _value(lmbda, state.count)
    coefficients = _safe_divide(step, norm, norm > 0)
    projectable = jnp.broadcast_to(state.count >= start_step, (num_groups,))
    u, zero, inner_state = _half_space_step(inner, groups, u, params, inner_state, state.zero,
                                            coefficients, projectable, epsilon)
    return u, HSPGState(optax.safe_increment(state.count), zero, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def saliency_scores(groups: groups_lib.Groups, params: PyTree, direction: PyTree) -> jax.Array:
  """``(G,)``: the redundancy score by which DHSPG picks G_p (OTOv2 Sec. 4), higher = penalized.

  ``0.5 * cos(x_g, d_g) / ||cos|| + 0.5 * s_g / ||s||`` with ``s_g = 1 / (||x_g|| / n_g + 1e-6)``:
  a group whose descent direction ``-d_g`` points toward the origin and whose mean magnitude is
  small is the most redundant. Both terms are L2-normalized over all G groups.
  """
  x_norm = groups_lib.norms(groups, params)
  d_norm = groups_lib.norms(groups, direction)
  cos = groups_lib.dots(groups, params, direction) / jnp.maximum(x_norm * d_norm, _COS_EPS)
  n = jnp.asarray(groups_lib.group_sizes(groups, params), jnp.float32)
  small = 1.0 / (x_norm / n + _MAGNITUDE_EPS)
  unit = lambda v: v / jnp.maximum(jnp.linalg.norm(v), _NORMALIZE_EPS)
  return 0.5 * unit(cos) + 0.5 * unit(small)


def adaptive_lmbda(x_dot_d: jax.Array, x_norm: jax.Array, d_sq_norm: jax.Array,
                   lmbda: jax.Array | float, lmbda_amplify: float,
                   hat_lmbda_coeff: float) -> jax.Array:
  """``(G,)``: DHSPG's lambda_g for the penalized groups (OTOv2 Sec. 4).

  Where ``x_g . d_g < 0`` the plain step would grow ``||x_g||``; a lambda_g above
  ``lower = -x_g.d_g / ||x_g||`` makes the step (2) shrink it, and one below
  ``upper = -||d_g||^2 ||x_g|| / (x_g . d_g)`` keeps ``-(d_g + lambda_g x_g/||x_g||)`` a descent
  direction of f::

    lambda_g = clip(lmbda_amplify * lower, lmbda, lmbda * hat_lmbda_coeff)
    lambda_g = (lower + upper) / 2   if lambda_g >= upper

  Elsewhere (``x_g . d_g >= 0``, zero groups) ``lambda_g = lmbda``.
  """
  grows = (x_dot_d < 0) & (x_norm > 0)
  lower = _safe_divide(-x_dot_d, x_norm, grows)
  upper = _safe_divide(-d_sq_norm * x_norm, x_dot_d, grows)
  lam = jnp.clip(lmbda_amplify * lower, lmbda, lmbda * hat_lmbda_coeff)
  lam = jnp.where(lam >= upper, 0.5 * (lower + upper), lam)
  return jnp.where(grows, lam, lmbda)


def dhspg(inner: optax.GradientTransformation, groups: groups_lib.Groups,
          target_group_sparsity: float, *, learning_rate: optax.ScalarOrSchedule,
          start_step: int, lmbda: optax.ScalarOrSchedule = 1e-3, lmbda_amplify: float = 1.1,
          hat_lmbda_coeff: float = 10.0, epsilon: float = 0.0,
          tolerance: float = 0.05) -> optax.GradientTransformationExtraArgs:
  """Dual Half-Space Projected Gradient (DHSPG), OTOv2 Sec. 4.

  Before ``start_step`` every group takes the inner optimizer's plain step. At update
  ``start_step`` the groups are partitioned once: the ``K = floor(G * min(target_group_sparsity +
  tolerance, 0.999))`` groups of highest :func:`saliency_scores` (from the params and the inner
  optimizer's direction ``d = -u / a`` of that step; ties to the lowest index) form the penalized
  set G_p, held in the state. From then on, while fewer than ``target_group_sparsity * G`` groups
  are zero, each penalized nonzero group takes the step (2) with lambda_g from
  :func:`adaptive_lmbda` and the projection (3); every other group takes the plain step and is
  never zeroed. Once the target is reached, every group takes the plain step; zero groups stay
  exactly zero.

  Example::

    opt = dhspg(optax.adamw(1e-3), groups, 0.5, learning_rate=1e-3, start_step=1000,
                lmbda=1e-2, lmbda_amplify=20.0, hat_lmbda_coeff=1e3)

  Args:
    inner: any optax optimizer, whose update is ``-learning_rate * d``.
    groups: the zero-invariant groups (:mod:`sparsejax.structured.groups`).
    target_group_sparsity: the fraction of groups to zero, in [0, 1).
    learning_rate: the inner optimizer's learning rate ``a``: a float > 0 or the same schedule.
    start_step: the update at which the groups are partitioned and the penalty starts.
    lmbda: the base lambda >= 0 (or a schedule); the adaptive lambda_g lies in
      ``[lmbda, lmbda * hat_lmbda_coeff]`` unless that range reaches the upper bound.
    lmbda_amplify: the factor >= 1 on the lower bound of lambda_g.
    hat_lmbda_coeff: the cap of lambda_g as a multiple >= 1 of ``lmbda``.
    epsilon: the half-space parameter of (3), in [0, 1).
    tolerance: the extra fraction >= 0 of groups penalized beyond the target.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`DHSPGState`; ``update`` needs the
    params.

  Raises:
    TypeError: if ``inner`` is not an optax optimizer or ``groups`` not a ``Groups``.
    ValueError: on an argument out of range; at the first update, if the groups do not fit the
      params (``groups.check_sizes``).
  """
  name = "dhspg"
  wrapping.check_inner(inner, name, "learning_rate=0.1, ...")
  wrapping.check_groups(groups, name)
  _check_number(name, "target_group_sparsity", target_group_sparsity, lambda v: 0 <= v < 1,
                "in [0, 1)", schedule=False)
  _check_number(name, "learning_rate", learning_rate, lambda v: v > 0, "> 0", schedule=True)
  _check_start_step(start_step, name)
  _check_number(name, "lmbda", lmbda, lambda v: v >= 0, ">= 0", schedule=True)
  _check_number(name, "lmbda_amplify", lmbda_amplify, lambda v: v >= 1, ">= 1", schedule=False)
  _check_number(name, "hat_lmbda_coeff", hat_lmbda_coeff, lambda v: v >= 1, ">= 1",
                schedule=False)
  _check_number(name, "epsilon", epsilon, lambda v: 0 <= v < 1, "in [0, 1)", schedule=False)
  _check_number(name, "tolerance", tolerance, lambda v: v >= 0, ">= 0", schedule=False)
  inner = optax.with_extra_args_support(inner)
  num_groups = groups.num_groups
  num_penalized = int(num_groups * min(target_group_sparsity + tolerance, _MAX_PENALIZED_FRACTION))
  target_zero = target_group_sparsity * num_groups

  def init_fn(params):
    groups_lib.check_sizes(groups, params)
    none = jnp.zeros((num_groups,), bool)
    return DHSPGState(jnp.zeros((), jnp.int32), none, none, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    wrapping.require_params(groups, params, name)
    u, inner_state = inner.update(groups_lib.zero_out(groups, updates, state.zero),
                                  state.inner_state, params, **extra_args)
    a = _value(learning_rate, state.count)
    direction = optax.tree.scale(-1.0 / jnp.where(a > 0, a, 1.0), u)

    def partition():
      keys = selection.order_keys(saliency_scores(groups, params, direction))
      return selection.top_k_masks([keys], num_penalized)[0]

    penalized = lax.cond(state.count == start_step, partition, lambda: state.penalized)
    x_norm = groups_lib.norms(groups, params)
    lam = adaptive_lmbda(groups_lib.dots(groups, params, direction), x_norm,
                         groups_lib.sq_norms(groups, direction), _value(lmbda, state.count),
                         lmbda_amplify, hat_lmbda_coeff)
    reached = jnp.sum(state.zero) >= target_zero
    active = penalized & ~reached & (x_norm > 0)
    coefficients = _safe_divide(a * lam, x_norm, active)
    u, zero, inner_state = _half_space_step(inner, groups, u, params, inner_state, state.zero,
                                            coefficients, active, epsilon)
    return u, DHSPGState(optax.safe_increment(state.count), zero, penalized, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def zero_groups(opt_state: optax.OptState) -> jax.Array:
  """``(G,)`` bool: the groups projected to zero by the :func:`hspg` or :func:`dhspg` state held
  anywhere in ``opt_state`` (e.g. inside ``optax.chain``).

  Raises:
    ValueError: unless ``opt_state`` holds exactly one such state.
  """
  return wrapping.find_state(opt_state, _STATES, "hspg or dhspg").zero
