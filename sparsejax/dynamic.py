"""Dynamic sparse training: SET and RigL as optax wrappers around any optax optimizer.

Both keep every layer's number of weights constant and move connections every ``update_every``
steps (delta) until ``end_step``: each update drops the ``k`` active weights of smallest magnitude
and grows ``k`` inactive ones, where ``k = floor(f_t * n_active)`` per layer (the truncation of the
reference implementations) and ``f_t`` is the drop fraction at step t.

* SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications): grows at random, with a
  constant drop fraction.
* RigL (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners", ICML; Algorithm 1,
  Eq. 1): grows where the dense gradient's magnitude is largest, with the cosine-decaying drop
  fraction ``f_t = alpha / 2 * (1 + cos(pi * t / T_end))``.

Grown weights start at exactly 0.0 (RigL's zero initialization) with their optimizer state zeroed
(momenta, Adam's moments), and take their first update at the next step. By default a weight
dropped in an update is not grown back in the same update (``regrow_dropped=False``); RigL's
reference code grows among all zeros after the drop, dropped weights included
(``regrow_dropped=True``).

Masks start from ``initial_masks`` (e.g. random ERK masks, as the RigL paper:
``sparsejax.pruning.random(key, params, sparsity, "erk")``). Selection is by counting
(:mod:`sparsejax.selection`), never by sorting, and runs inside ``lax.cond`` only on update steps;
the wrappers hold their masks in the state like :mod:`sparsejax.transforms`' (so
:func:`sparsejax.transforms.get_masks` and :func:`sparsejax.transforms.apply_updates` work).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import masks as masks_lib
from sparsejax import selection
from sparsejax import transforms

PyTree = Any


DynamicSparseState = transforms.DynamicSparseState


def cosine_drop_fraction(step, alpha: float, end_step: int) -> jax.Array:
  """RigL's drop fraction at ``step``: ``alpha / 2 * (1 + cos(pi * step / end_step))``."""
  t = jnp.minimum(jnp.asarray(step, jnp.float32), end_step)
  return alpha / 2 * (1.0 + jnp.cos(jnp.pi * t / end_step))


def drop_and_grow(params: PyTree, masks: PyTree, grow_scores: PyTree, fraction: jax.Array, *,
                  regrow_dropped: bool = False) -> tuple[PyTree, PyTree]:
  """One connectivity update: ``(new masks, grown)``.

  In every prunable leaf, the ``k = floor(fraction * n_active)`` active weights of smallest
  ``|params|`` are dropped and the ``k`` highest ``grow_scores`` among the inactive weights (the
  just-dropped ones excluded unless ``regrow_dropped``) are grown, so every leaf keeps exactly
  its number of active weights (``k`` is capped at the number of candidates). ``grown`` marks
  the weights that became active.
  """
  def one(w, m, score):
    if not masks_lib.is_prunable_mask(m):
      return m, jnp.zeros((), bool)
    active = jnp.sum(m, dtype=jnp.int32)
    k = jnp.floor(fraction * active.astype(jnp.float32)).astype(jnp.int32)
    if not regrow_dropped:
      k = jnp.minimum(k, m.size - active)  # as many as there are weights to grow
    kept = selection.top_k_masks([selection.order_keys(jnp.abs(w), m)], active - k)[0]
    eligible = ~kept if regrow_dropped else ~m
    grown = selection.top_k_masks([selection.order_keys(score, eligible)], k)[0]
    return kept | grown, grown

  pairs = jax.tree.map(one, params, masks, grow_scores)
  is_pair = lambda x: isinstance(x, tuple)
  return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
          jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


def _both(a: PyTree, b: PyTree) -> PyTree:
  """Masks keeping what both ``a`` and ``b`` keep (never-pruned leaves as they are)."""
  return jax.tree.map(lambda x, y: x & y if masks_lib.is_prunable_mask(x) else x, a, b)


def _check(name: str, value: Any, ok: bool, meaning: str) -> None:
  if not ok:
    raise ValueError(f"{name}={value!r}: {meaning}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def dynamic_sparse(inner: optax.GradientTransformation, initial_masks: PyTree, *, grow: str,
                   update_every: int, end_step: int, drop_fraction: float,
                   schedule: str, key: jax.Array | None = None,
                   regrow_dropped: bool = False) -> optax.GradientTransformationExtraArgs:
  """The wrapper behind :func:`set_` and :func:`rigl`.

  Args:
    inner: any optax optimizer.
    initial_masks: the starting masks (their prunable leaves' counts are kept for good).
    grow: ``"gradient"`` (RigL: the dense gradient's magnitude) or ``"random"`` (SET).
    update_every: delta, the steps between connectivity updates (the first at step delta).
    end_step: no update at or after this step (RigL's T_end).
    drop_fraction: the fraction of each layer's active weights moved per update (alpha).
    schedule: ``"cosine"`` (RigL's decay to 0 at ``end_step``) or ``"constant"``.
    key: the random key of random growth (required with ``grow="random"``).
    regrow_dropped: whether a weight dropped in an update may be grown back in it.
  """
  transforms._check_inner(inner, "dynamic_sparse")
  _check("grow", grow, grow in ("gradient", "random"), "must be 'gradient' (RigL) or 'random' "
         "(SET)")
  _check("update_every", update_every, _is_int(update_every) and update_every >= 1,
         "must be a positive int (delta, the steps between connectivity updates)")
  _check("end_step", end_step, _is_int(end_step) and end_step >= 1,
         "must be a positive int (no connectivity update at or after it)")
  _check("drop_fraction", drop_fraction,
         isinstance(drop_fraction, numbers.Real) and 0.0 < drop_fraction <= 1.0,
         "must be in (0, 1] (the fraction of active weights moved per update)")
  _check("schedule", schedule, schedule in ("cosine", "constant"), "must be 'cosine' or "
         "'constant'")
  if grow == "random" and key is None:
    raise ValueError("grow='random' needs key=jax.random.key(...) for the random growth.")
  inner = optax.with_extra_args_support(inner)
  key = jax.random.key(0) if key is None else key

  def fraction(step):
    if schedule == "cosine":
      return cosine_drop_fraction(step, drop_fraction, end_step)
    return jnp.float32(drop_fraction)

  steps = update_steps(update_every, end_step)

  def init_fn(params):
    m = masks_lib.conform(params, initial_masks)
    masks_lib.validate(params, m)
    return DynamicSparseState(jnp.zeros((), jnp.int32), m,
                              transforms._init_inner(inner, params, m, "dynamic_sparse"), key)

  def update_fn(updates, state, params=None, **extra_args):
    transforms._require_params(params, "dynamic_sparse")
    step = state.count

    def move(masks, inner_state):
      if grow == "gradient":
        scores = jax.tree.map(jnp.abs, updates)
      else:
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(state.key, step), len(leaves))
        scores = treedef.unflatten([jax.random.uniform(k, jnp.shape(x))
                                    for k, x in zip(keys, leaves)])
      new, _ = drop_and_grow(params, masks, scores, fraction(step),
                             regrow_dropped=regrow_dropped)
      # The moved weights (dropped and grown) leave nothing in the optimizer state, and only
      # the weights active before and after take this step: the grown ones sit out their first
      # (exactly 0.0, a zero state).
      stepping = _both(new, masks)
      return new, stepping, transforms._zero_pruned_state(inner, inner_state, stepping)

    if transforms.promised_no_mask_update(extra_args):
      masks, stepping, inner_state = state.masks, state.masks, state.inner_state
    else:
      masks, stepping, inner_state = lax.cond(steps.is_update_step(step), move,
                                              lambda m, s: (m, m, s), state.masks,
                                              state.inner_state)
    updates, inner_state = transforms._masked_update(inner, updates, inner_state, params,
                                                     stepping, extra_args)
    return updates, DynamicSparseState(optax.safe_increment(state.count), masks, inner_state,
                                       state.key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def update_steps(update_every: int, end_step: int) -> transforms.UpdateSteps:
  """The steps where SET and RigL move connections: every ``update_every`` from step
  ``update_every`` until ``end_step``. On the other steps a caller may pass ``mask_update=False``
  (:class:`sparsejax.transforms.UpdateSteps`) to skip the per-step ``lax.cond``."""
  return transforms.UpdateSteps(update_every, update_every, end_step)


def rigl(inner: optax.GradientTransformation, initial_masks: PyTree, *, update_every: int = 100,
         end_step: int, drop_fraction: float = 0.3,
         regrow_dropped: bool = False) -> optax.GradientTransformationExtraArgs:
  """RigL (Evci et al. 2020): drop by magnitude, grow by the dense gradient's magnitude, every
  ``update_every`` steps until ``end_step``, the drop fraction decaying by a cosine from
  ``drop_fraction`` (the paper's defaults: delta 100, alpha 0.3, T_end at 75% of training).

  The gradient RigL grows by is the dense one: the gradient of the loss with respect to every
  weight, pruned ones included, which is what ``jax.grad`` of a loss on the masked params gives
  (the pruned weights are 0.0 in the params, not removed).

  Example::

    masks = sparsejax.pruning.random(jax.random.key(1), params, 0.9, "erk")
    opt = sparsejax.dynamic.rigl(optax.sgd(0.1, momentum=0.9), masks, end_step=7500)
  """
  return dynamic_sparse(inner, initial_masks, grow="gradient", update_every=update_every,
                        end_step=end_step, drop_fraction=drop_fraction, schedule="cosine",
                        regrow_dropped=regrow_dropped)


def set_(inner: optax.GradientTransformation, initial_masks: PyTree, key: jax.Array, *,
         update_every: int = 100, end_step: int, drop_fraction: float = 0.3,
         schedule: str = "constant",
         regrow_dropped: bool = False) -> optax.GradientTransformationExtraArgs:
  """SET (Mocanu et al. 2018): drop by magnitude, grow at random (``key``), every
  ``update_every`` steps until ``end_step`` (``schedule="cosine"`` decays the fraction as RigL's
  comparison of SET does)."""
  return dynamic_sparse(inner, initial_masks, grow="random", update_every=update_every,
                        end_step=end_step, drop_fraction=drop_fraction, schedule=schedule,
                        key=key, regrow_dropped=regrow_dropped)

