"""HESSO and HESSO-CRIC: Only-Train-Once's hybrid efficient structured sparse optimizer.

Chen et al., "HESSO: Towards Automatic Efficient and User Friendly Any Neural Network Training
and Pruning" (arXiv 2409.09085): Algorithm 1 (HESSO) and the Corrective Redundant Identification
Cycle (CRIC). Both train the params x on the zero-invariant groups of
:mod:`sparsejax.structured.groups` and end with exactly ``K = floor(G * target_group_sparsity)``
groups at exactly ``0.0``, so they can be removed from the network.

**Direction.** Each step starts from the update ``u`` of an inner optax optimizer; its direction
is ``d = -u`` (``u = -a d`` for SGD, momentum, Adam's bias-corrected ratio, ..., with the
learning rate ``a``). The saliency below is invariant to a positive scale of ``d``, so ``a`` is
not needed.

**Saliency.** With ``n_g`` the number of entries of group g, five proxies::

  p1 = ||x_g||,  p2 = ||x_g|| / n_g,  p3 = cos(x_g, d_g) + 1,  p4 = |x_g . d_g|,
  p5 = 0.5 (x_g . d_g)^2                                                              (1)

are each L2-normalized over all G groups and summed with weight 0.2::

  s_g = sum_i 0.2 p_i(g) / ||p_i||                                                    (2)

A low score marks a redundant group. Scaling ``d`` by ``c > 0`` leaves p3 alone and scales p4 by
``c`` and p5 by ``c^2``, so every normalized term of (2) is unchanged.

**Forgetting.** The redundant groups R of a period of D steps decay linearly to zero while
taking the inner optimizer's step; at step ``t = 0 .. D-1`` of the period::

  x_g <- (x_g - a d_g) (D - t - 1) / (D - t)     for g in R                           (3)

so ``x_g = 0`` exactly after the period's last step (with ``a = 0``, ``x_g`` falls on the line
from its value to zero). Groups forgotten in a finished period are *pruned*: held at exactly
0.0. All other groups take the inner optimizer's step unchanged.

* :func:`hesso`: a warm-up of S steps, then P periods of ``D = pruning_steps // P`` steps;
  each period starts by scoring the unpruned groups with (2) and picks the lowest ``K // P`` (the
  last period the remainder, so the counts sum to K) as R.
* :func:`hesso_cric`: a warm-up, then CRIC's layer probes and corrective cycles pick the K groups
  from averaged saliency snapshots and the layers' loss sensitivity; the params are restored and
  one forgetting period (3) removes the K groups.

Each set keeps at least one group (the reference implementation never empties a layer either):
its highest-scoring unpruned group is never redundant, so K may not exceed ``G - len(sets)``.

Both are ``optax.GradientTransformationExtraArgs`` that wrap the inner optimizer and run entirely
under ``jit`` (the phases switch on the step counter in the state: no recompiles, no host round
trip; selections count instead of sorting, :mod:`sparsejax.selection`, ties to the lowest group
index), with two invariants:

1. after ``optax.apply_updates`` every pruned group is exactly ``0.0`` (its update is ``-x``);
2. its gradients are zeroed before the inner optimizer sees them and its slices of the inner
   optimizer's state (momenta, Adam moments, found by ``optax.tree_utils.tree_map_params``) are
   zeroed when it is pruned, so they stay exactly zero.

Put the wrapper outermost, so nothing after it rescales the updates of pruned groups. Leaves of
the params outside the groups take the inner optimizer's step.

Differences from the reference implementation (microsoft/only_train_once, ``optimizer/hesso.py``
and ``hesso_cric.py``):

* every update of a period decays (3) with ``t = 0 .. D-1``; the reference's first period starts
  one update after the warm-up and its groups reach zero one update before the period ends;
* (2) normalizes exactly (each proxy is divided by its maximum first) where the reference adds
  absolute 1e-8 safeguards, which would dominate at the scale of ``-u``; ``cos = 0`` where
  ``x_g = 0`` or ``d_g = 0``;
* sparing each set's best group keeps K exact (the next-lowest group is taken); the reference
  lowers K instead;
* CRIC's violating set decays by (3) over its cycle (the reference zeroes it on the cycle's first
  update), the leaves outside the groups keep training during the cycles (the reference freezes
  them), and the cycles are capped so that everything fits in ``pruning_steps``.
"""

from __future__ import annotations

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

# The weight of each proxy of (2).
_PROXY_WEIGHT = 0.2
# The reference implementation's safeguard in the mean magnitude p2.
_MAGNITUDE_EPS = 1e-6
# CRIC's layer probes: the fractions of a set's groups zeroed, and the weight of the loss term.
_TRIAL_SPARSITIES = (0.25, 0.5, 0.75)
_LOSS_WEIGHT = 1.0
# forget_start of a HESSO-CRIC state while CRIC runs.
_NOT_YET = np.iinfo(np.int32).max


class HessoState(NamedTuple):
  """State of :func:`hesso`."""

  count: jax.Array  # int32: the number of updates applied so far
  pruned: jax.Array  # (G,) bool: groups forgotten in a finished period, held at exactly 0
  active: jax.Array  # (G,) bool: the current period's redundant groups, decaying by (3)
  inner_state: optax.OptState


class HessoCricState(NamedTuple):
  """State of :func:`hesso_cric`."""

  count: jax.Array  # int32: the number of updates applied so far
  pruned: jax.Array  # (G,) bool: the K groups once forgotten, held at exactly 0
  active: jax.Array  # (G,) bool: decaying by (3): the violating set in a cycle, then the K groups
  trial: jax.Array  # (G,) bool: groups that fell into the bottom K in this cycle, never violating
  historical: jax.Array  # (G,) bool: every group that was violating in some cycle
  cycle: jax.Array  # int32: the cycles started so far
  forget_start: jax.Array  # int32: the update that starts forgetting (int32 max while CRIC runs)
  ref_loss: jax.Array  # float32: the loss at the first probe
  probe_loss: jax.Array  # (len(sets),) float32: per set, the sum of its probes' loss ratios
  score_sum: jax.Array  # (G,) float32: the sum of the saliency snapshots (2)
  num_scores: jax.Array  # int32: the number of snapshots
  cache: PyTree  # the params at the first probe, which probes and cycles restart from
  inner_state: optax.OptState


_STATES = (HessoState, HessoCricState)






def _check_int(name: str, arg: str, value: Any, minimum: int, meaning: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}: {arg}={value!r} must be an int >= {minimum}: {meaning}.")


def _num_redundant(groups: groups_lib.Groups, target: Any, name: str) -> int:
  """K = floor(G * target), checked against the groups the sets must keep."""
  ok = not isinstance(target, bool) and isinstance(target, (int, float, np.floating))
  if not (ok and 0 <= target < 1):
    raise ValueError(f"{name}: target_group_sparsity={target!r} must be a number in [0, 1): the "
                     "fraction of groups to remove.")
  k = int(groups.num_groups * target)
  limit = groups.num_groups - len(groups.sets)
  if k > limit:
    raise ValueError(
        f"{name}: target_group_sparsity={target!r} asks for {k} of {groups.num_groups} groups, "
        f"but each of the {len(groups.sets)} group sets keeps at least one group, so at most "
        f"{limit} can be removed.")
  return k




def _set_ids(groups: groups_lib.Groups) -> np.ndarray:
  """``(G,)`` int32: the set of each group."""
  return np.repeat(np.arange(len(groups.sets), dtype=np.int32), groups.sizes)


def _unit(v: jax.Array) -> jax.Array:
  """``v / ||v||`` for a non-negative ``v``, exactly scale-invariant: ``v`` is first divided by
  its maximum, so no square underflows (0 where ``v`` is all zero)."""
  top = jnp.max(v)
  r = jnp.where(top > 0, v / jnp.where(top > 0, top, 1.0), 0.0)
  norm = jnp.linalg.norm(r)
  return jnp.where(norm > 0, r / jnp.where(norm > 0, norm, 1.0), 0.0)


def saliency(groups: groups_lib.Groups, params: PyTree, direction: PyTree) -> jax.Array:
  """``(G,)``: the saliency (2) of the groups of ``params`` along ``direction`` (d); low =
  redundant.

  The five proxies (1), each L2-normalized over all G groups, weighted 0.2. A group with
  ``x_g = 0`` or ``d_g = 0`` has ``cos = 0``.
  """
  x_norm = groups_lib.norms(groups, params)
  d_norm = groups_lib.norms(groups, direction)
  xd = groups_lib.dots(groups, params, direction)
  n = jnp.asarray(groups_lib.group_sizes(groups, params), jnp.float32)
  both = (x_norm > 0) & (d_norm > 0)
  cos = jnp.where(both, xd / jnp.where(both, x_norm, 1.0) / jnp.where(both, d_norm, 1.0), 0.0)
  first_order = _unit(jnp.abs(xd))
  # p5 / ||p5|| = q^2 / ||q^2|| for q = p4 / max(p4): the same term without squaring tiny dots.
  terms = (_unit(x_norm), _unit(x_norm / (n + _MAGNITUDE_EPS)), _unit(cos + 1.0), first_order,
           _unit(jnp.square(first_order)))
  return _PROXY_WEIGHT * sum(terms)


def _lowest(score: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """``(G,)`` bool: the ``k`` lowest scores among the ``eligible`` groups (ties: lowest index)."""
  return selection.top_k_masks([selection.order_keys(-score, eligible)], k)[0]


def _redundant(score: jax.Array, pruned: jax.Array, k: jax.Array, set_ids: np.ndarray,
               num_sets: int) -> jax.Array:
  """The ``k`` lowest-scoring unpruned groups, sparing each set's highest-scoring unpruned group."""
  alive = ~pruned
  keys = selection.order_keys(score, alive)
  ids = jnp.asarray(set_ids)
  best = jax.ops.segment_max(keys, ids, num_segments=num_sets)
  index = jnp.arange(score.shape[0], dtype=jnp.int32)
  first = jax.ops.segment_min(jnp.where(keys == best[ids], index, score.shape[0]), ids,
                              num_segments=num_sets)
  return _lowest(score, alive & (index != first[ids]), k)


def _decay(t: jax.Array, duration: int) -> jax.Array:
  """The factor ``(D - t - 1) / (D - t)`` of (3) at step ``t`` of a period of ``D`` steps."""
  t = t.astype(jnp.float32)
  return (duration - t - 1.0) / (duration - t)


def _negated(params: PyTree, like: PyTree) -> PyTree:
  """``-x`` in the dtypes of the updates ``like``: the update that sends ``x`` to exactly 0."""
  return jax.tree.map(lambda x, u: -x.astype(u.dtype), params, like)


def _forget(groups: groups_lib.Groups, params: PyTree, u: PyTree, active: jax.Array,
            factor: jax.Array, pruned: jax.Array) -> PyTree:
  """Updates for (3): ``active`` groups go to ``(x + u) * factor``, ``pruned`` ones to exactly 0,
  the rest take ``u``."""
  decayed = jax.tree.map(lambda x, v: ((x + v) * factor - x).astype(v.dtype), params, u)
  return groups_lib.select(groups, _negated(params, u),
                           groups_lib.select(groups, decayed, u, active), pruned)




def _period_counts(k: int, periods: int) -> np.ndarray:
  """Groups forgotten per period: ``k // periods`` each, the last the remainder (sum: k)."""
  counts = np.full(periods, k // periods, np.int32)
  counts[-1] = k - (periods - 1) * (k // periods)
  return counts


def _check_schedule(name: str, warmup_steps: Any, pruning_periods: Any,
                    pruning_steps: Any) -> None:
  _check_int(name, "warmup_steps", warmup_steps, 0, "the updates before pruning starts")
  _check_int(name, "pruning_periods", pruning_periods, 1, "the number of forgetting periods")
  _check_int(name, "pruning_steps", pruning_steps, pruning_periods,
             f"the updates of all {pruning_periods} periods (pruning_periods), at least one each")


def hesso(inner: optax.GradientTransformation, groups: groups_lib.Groups,
          target_group_sparsity: float, *, warmup_steps: int, pruning_periods: int,
          pruning_steps: int) -> optax.GradientTransformationExtraArgs:
  """HESSO, Algorithm 1 of arXiv 2409.09085.

  Updates ``0 .. warmup_steps - 1`` take the inner optimizer's step. Then ``pruning_periods``
  periods of ``D = pruning_steps // pruning_periods`` updates each: period p starts at update
  ``warmup_steps + p * D`` by scoring the unpruned groups with :func:`saliency` (the params
  before the update, the direction ``-u`` of that update) and taking the ``k_p`` lowest as the
  redundant set (``k_p = K // P``, the last period the remainder, ``K = floor(G *
  target_group_sparsity)``); they decay by (3) and are exactly 0.0 after the period's last update,
  when they become pruned. After ``warmup_steps + pruning_steps`` updates exactly K groups are
  exactly zero.

  Example::

    opt = hesso(optax.sgd(0.1, momentum=0.9), groups, 0.7, warmup_steps=1000,
                pruning_periods=10, pruning_steps=2000)

  Args:
    inner: any optax optimizer; its update gives the direction.
    groups: the zero-invariant groups (:mod:`sparsejax.structured.groups`).
    target_group_sparsity: the fraction of groups to remove, in [0, 1).
    warmup_steps: the updates before the first period.
    pruning_periods: the number of periods P >= 1.
    pruning_steps: the updates of all periods together (>= P); a remainder of the division by P
      is spent on plain steps after the last period.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`HessoState`; ``update`` needs the
    params and passes extra arguments on to ``inner``.

  Raises:
    TypeError: if ``inner`` is not an optax optimizer or ``groups`` not a ``Groups``.
    ValueError: on an argument out of range, if K exceeds ``G - len(groups.sets)``; at ``init``
      and ``update``, if the groups do not fit the params (``groups.check_sizes``).
  """
  name = "hesso"
  wrapping.check_inner(inner, name, "0.5, ...")
  wrapping.check_groups(groups, name)
  k = _num_redundant(groups, target_group_sparsity, name)
  _check_schedule(name, warmup_steps, pruning_periods, pruning_steps)
  inner = optax.with_extra_args_support(inner)
  duration = pruning_steps // pruning_periods
  counts = _period_counts(k, pruning_periods)
  set_ids = _set_ids(groups)
  num_groups, num_sets = groups.num_groups, len(groups.sets)

  def init_fn(params):
    groups_lib.check_sizes(groups, params)
    none = jnp.zeros((num_groups,), bool)
    return HessoState(jnp.zeros((), jnp.int32), none, none, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    wrapping.require_params(groups, params, name)
    u, inner_state = inner.update(groups_lib.zero_out(groups, updates, state.pruned),
                                  state.inner_state, params, **extra_args)
    elapsed = state.count - warmup_steps
    period, t = elapsed // duration, elapsed % duration
    pruning = (elapsed >= 0) & (period < pruning_periods)

    def pick():
      score = saliency(groups, params, optax.tree.scale(-1.0, u))
      k_p = jnp.asarray(counts)[jnp.clip(period, 0, pruning_periods - 1)]
      return _redundant(score, state.pruned, k_p, set_ids, num_sets)

    active = lax.cond(pruning & (t == 0), pick, lambda: state.active)
    u = _forget(groups, params, u, active, _decay(t, duration), state.pruned)
    ends = pruning & (t == duration - 1)
    pruned = state.pruned | (active & ends)
    inner_state = lax.cond(ends, lambda s: wrapping.zero_state(inner, groups, s, pruned),
                           lambda s: s, inner_state)
    return u, HessoState(optax.safe_increment(state.count), pruned, active & ~ends, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def hesso_cric(inner: optax.GradientTransformation, groups: groups_lib.Groups,
               target_group_sparsity: float, *, warmup_steps: int, pruning_periods: int,
               pruning_steps: int, max_cycle_period: int = 10, tolerance: int = 0,
               sampling_steps: int | None = None,
               hybrid_training_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
  """HESSO with the Corrective Redundant Identification Cycle (CRIC), arXiv 2409.09085.

  Needs the loss of each step as optax's extra argument: ``tx.update(grads, state, params,
  value=loss)``, with ``loss`` computed at ``params``. With ``D = pruning_steps //
  pruning_periods``, ``T = sampling_steps`` and ``H = hybrid_training_steps`` (both D by
  default), and L the sets with more than one group, the updates are:

  1. warm-up, ``warmup_steps`` updates: the inner optimizer's step.
  2. layer probes, ``2 * 3 * L`` updates, which keep the params (the direction still feeds the
     inner state and the snapshots). The first caches the params and the reference loss; for
     each set and trial sparsity ``s`` in (0.25, 0.5, 0.75), one update zeroes the set's
     ``max(floor(s * n), 1)`` lowest-saliency groups, the next reads the loss there as a ratio to
     the reference loss and restores the params.
  3. cycles of T updates, at most ``max_cycle_period`` and as many as fit before the forgetting
     period must start. Each starts from the cached params; the first cycle's violating set is
     the bottom K of that update's saliency, a later cycle's the groups that fell into the bottom
     K during the previous cycle and were never violating. The violating set decays by (3) over
     the cycle while everything trains. CRIC stops at the start of the cycle that reaches
     ``max_cycle_period`` or whose violating set has at most ``tolerance`` groups: the final
     score of a group is the mean of every saliency snapshot (2) since the first probe, plus its
     set's mean loss ratio divided by the set's size (sets with one group: nothing); its K lowest
     (each set keeping its best group) are picked and the params restored from the cache.
  4. one forgetting period of H updates: the K groups decay by (3), exactly 0.0 at its end, then
     stay pruned.

  Everything ends within ``warmup_steps + pruning_steps`` updates, with exactly ``K = floor(G *
  target_group_sparsity)`` groups exactly zero. Restoring goes through the update ``cache - x``:
  after a probe it gives the cache exactly (only zeroed groups differ from it), after a cycle to
  within one rounding of ``x + (cache - x)``.

  Example::

    opt = hesso_cric(optax.sgd(0.1, momentum=0.9), groups, 0.7, warmup_steps=1000,
                     pruning_periods=10, pruning_steps=2000)
    updates, state = opt.update(grads, state, params, value=loss)

  Args:
    inner: any optax optimizer; its update gives the direction.
    groups: the zero-invariant groups (:mod:`sparsejax.structured.groups`).
    target_group_sparsity: the fraction of groups to remove, in [0, 1).
    warmup_steps: the updates before the first probe.
    pruning_periods: sets the period ``D = pruning_steps // pruning_periods``.
    pruning_steps: the updates of probes, cycles and forgetting together.
    max_cycle_period: the most cycles started (>= 1).
    tolerance: CRIC stops once a violating set has at most this many groups (>= 0).
    sampling_steps: the updates of a cycle T (default D).
    hybrid_training_steps: the updates of the forgetting period H (default D).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with :class:`HessoCricState`; ``update`` needs
    the params and ``value``, and passes extra arguments on to ``inner``.

  Raises:
    TypeError: if ``inner`` is not an optax optimizer or ``groups`` not a ``Groups``.
    ValueError: on an argument out of range, if K exceeds ``G - len(groups.sets)``, if the
      probes and the forgetting period do not fit in ``pruning_steps``; at ``init`` and
      ``update``, if the groups do not fit the params; at ``update``, without ``value``.
  """
  name = "hesso_cric"
  wrapping.check_inner(inner, name, "0.5, ...")
  wrapping.check_groups(groups, name)
  k = _num_redundant(groups, target_group_sparsity, name)
  _check_schedule(name, warmup_steps, pruning_periods, pruning_steps)
  _check_int(name, "max_cycle_period", max_cycle_period, 1, "the most CRIC cycles")
  _check_int(name, "tolerance", tolerance, 0, "the violating groups at which CRIC stops")
  duration = pruning_steps // pruning_periods
  cycle_steps = duration if sampling_steps is None else sampling_steps
  forget_steps = duration if hybrid_training_steps is None else hybrid_training_steps
  _check_int(name, "sampling_steps", cycle_steps, 1, "the updates of a CRIC cycle")
  _check_int(name, "hybrid_training_steps", forget_steps, 1, "the updates of forgetting")
  probed = [i for i, s in enumerate(groups.sets) if s.size > 1]
  per_set = 2 * len(_TRIAL_SPARSITIES)
  probe_steps = per_set * len(probed)
  # The update that ends CRIC restores the params: it is spent on neither cycles nor forgetting.
  spare = pruning_steps - probe_steps - 1 - forget_steps
  if spare < 0:
    raise ValueError(
        f"{name}: pruning_steps={pruning_steps!r} cannot hold the {probe_steps} updates of the "
        f"layer probes ({per_set} for each of the {len(probed)} sets with more than one group), "
        f"the one that ends CRIC and the {forget_steps} of forgetting (hybrid_training_steps, "
        f"default pruning_steps // pruning_periods): give at least "
        f"{probe_steps + 1 + forget_steps}.")
  cycles = min(max_cycle_period, 1 + spare // cycle_steps)
  inner = optax.with_extra_args_support(inner)
  first_cycle = warmup_steps + probe_steps
  set_ids = _set_ids(groups)
  num_groups, num_sets = groups.num_groups, len(groups.sets)
  # Tables by probe: the set probed, and the groups each trial zeroes. With no set to probe the
  # phase is empty and the one row is never read.
  order = np.asarray(probed or [0], np.int32)
  trial_counts = np.asarray([[max(min(int(groups.sets[i].size * s), groups.sets[i].size), 1)
                              for s in _TRIAL_SPARSITIES] for i in order], np.int32)
  sizes = np.asarray(groups.sizes, np.float32)[set_ids]
  loss_scale = np.where(np.isin(set_ids, probed), _LOSS_WEIGHT / len(_TRIAL_SPARSITIES) / sizes,
                        0.0).astype(np.float32)

  def init_fn(params):
    groups_lib.check_sizes(groups, params)
    none = jnp.zeros((num_groups,), bool)
    zero = jnp.zeros((), jnp.int32)
    return HessoCricState(zero, none, none, none, none, zero, jnp.int32(_NOT_YET),
                          jnp.float32(1.0), jnp.zeros((num_sets,), jnp.float32),
                          jnp.zeros((num_groups,), jnp.float32), zero, params,
                          inner.init(params))

  def restore(state, params, u):
    return jax.tree.map(lambda c, x, v: (c - x).astype(v.dtype), state.cache, params, u)

  def forget_step(params, u, value, state):
    """Warm-up, forgetting, and plain steps after it."""
    forgetting = state.count >= state.forget_start
    t = jnp.where(forgetting, state.count - state.forget_start, 0)
    updates = _forget(groups, params, u, state.active, _decay(t, forget_steps), state.pruned)
    ends = forgetting & (t == forget_steps - 1)
    pruned = state.pruned | (state.active & ends)
    inner_state = lax.cond(ends, lambda s: wrapping.zero_state(inner, groups, s, pruned),
                           lambda s: s,
                           state.inner_state)
    return updates, state._replace(pruned=pruned, active=state.active & ~ends,
                                   inner_state=inner_state)

  def probe_step(params, u, value, state):
    i = state.count - warmup_steps
    probe, trial = i // per_set, (i // 2) % len(_TRIAL_SPARSITIES)
    first = i == 0
    ref_loss = jnp.where(first, value, state.ref_loss)
    state = state._replace(ref_loss=ref_loss,
                           cache=lax.cond(first, lambda: params, lambda: state.cache))
    score = saliency(groups, params, optax.tree.scale(-1.0, u))
    probed_set = jnp.asarray(order)[probe]

    def project():
      zero = _lowest(score, jnp.asarray(set_ids) == probed_set,
                     jnp.asarray(trial_counts)[probe, trial])
      return (groups_lib.select(groups, _negated(params, u), optax.tree.zeros_like(u), zero),
              state.probe_loss)

    def measure():
      return restore(state, params, u), state.probe_loss.at[probed_set].add(value / ref_loss)

    updates, probe_loss = lax.cond(i % 2 == 0, project, measure)
    return updates, state._replace(probe_loss=probe_loss, score_sum=state.score_sum + score,
                                   num_scores=state.num_scores + 1)

  def cycle_step(params, u, value, state):
    t = (state.count - first_cycle) % cycle_steps
    starting = t == 0
    score = saliency(groups, params, optax.tree.scale(-1.0, u))
    score_sum, num_scores = state.score_sum + score, state.num_scores + 1
    bottom = _lowest(score, jnp.ones((num_groups,), bool), k)
    cycle = state.cycle + starting.astype(jnp.int32)
    violating = jnp.where(starting, jnp.where(cycle == 1, bottom, state.trial & ~state.historical),
                          state.active)
    historical = state.historical | violating
    factor = _decay(t, cycle_steps)

    def restart():
      from_cache = jax.tree.map(lambda c, v: c + v, state.cache, u)
      target = groups_lib.scale(groups, from_cache, jnp.where(violating, factor, 1.0))
      return jax.tree.map(lambda y, x, v: (y - x).astype(v.dtype), target, params, u)

    def proceed():
      updates = lax.cond(starting, restart,
                         lambda: _forget(groups, params, u, violating, factor, state.pruned))
      return updates, violating, jnp.int32(_NOT_YET)

    def finish():
      final = (score_sum / num_scores.astype(jnp.float32)
               + state.probe_loss[jnp.asarray(set_ids)] * jnp.asarray(loss_scale))
      picked = _redundant(final, state.pruned, k, set_ids, num_sets)
      return restore(state, params, u), picked, state.count + 1

    done = (cycle >= cycles) | (jnp.sum(violating) <= tolerance)
    updates, active, forget_start = lax.cond(done, finish, proceed)
    return updates, state._replace(active=active, trial=(state.trial | bottom) & ~historical,
                                   historical=historical, cycle=cycle, forget_start=forget_start,
                                   score_sum=score_sum, num_scores=num_scores)

  def update_fn(updates, state, params=None, **extra_args):
    wrapping.require_params(groups, params, name)
    if extra_args.get("value") is None:
      raise ValueError(f"{name} needs the loss at the params for its layer probes: call "
                       "update(grads, state, params, value=loss).")
    value = jnp.asarray(extra_args["value"], jnp.float32)
    u, inner_state = inner.update(groups_lib.zero_out(groups, updates, state.pruned),
                                  state.inner_state, params, **extra_args)
    c = state.count
    phase = jnp.where((c >= warmup_steps) & (c < first_cycle), 1,
                      jnp.where((c >= first_cycle) & (c < state.forget_start), 2, 0))
    updates, state = lax.switch(phase, (forget_step, probe_step, cycle_step), params, u, value,
                                state._replace(inner_state=inner_state))
    return updates, state._replace(count=optax.safe_increment(c))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pruned_groups(opt_state: optax.OptState) -> jax.Array:
  """``(G,)`` bool: the pruned groups of the :func:`hesso` or :func:`hesso_cric` state held
  anywhere in ``opt_state`` (alone, or inside ``optax.chain``, ``optax.named_chain``, a tuple,
  ``optax.inject_hyperparams``).

  Raises:
    ValueError: unless ``opt_state`` holds exactly one such state.
  """
  return wrapping.find_state(opt_state, _STATES, "hesso or hesso_cric").pruned
