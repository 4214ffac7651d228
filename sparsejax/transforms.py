"""Sparse optimizers as optax gradient transformations that wrap any optax optimizer.

The wrapper carries the masks in its state, so they are arrays passed into the jitted step
(changing them never recompiles), and enforces two invariants under any inner optimizer
(momentum, Nesterov, Adam, decoupled weight decay, clipping):

1. gradients of pruned weights are zeroed before the inner optimizer sees them, so they never
   reach its state (and on a mask update the inner state of newly pruned weights is zeroed, in
   the parts that ``optax.tree_utils.tree_map_params`` finds: optax.masked and
   optax.multi_transform inner optimizers are not supported);
2. after ``optax.apply_updates`` every pruned weight is exactly ``0.0``: the update of a pruned
   weight is ``-w`` and ``w + (-w) == 0.0`` in IEEE arithmetic.

Put the sparse wrapper outermost (wrap the whole ``optax.chain``), so nothing after it touches the
updates of pruned weights, and apply the updates with :func:`apply_updates`: it re-applies the
masks, so a transformation placed after the wrapper anyway (``optax.chain(wrapper,
optax.clip_by_global_norm(1.0))``, ``optax.lookahead`` around it) cannot bring a pruned weight
back.

* :func:`static_masks`: fixed masks (random pruning at init, SNIP, lottery tickets).
* :func:`scheduled_pruning`: masks recomputed inside ``jit`` on a schedule's steps (``lax.cond``;
  no recompilation, no host round trip): *when* (a schedule), *what* (a scorer) and *where* (a
  distribution) are its three arguments.
* :func:`magnitude_pruning`: gradual magnitude pruning (Zhu & Gupta 2017) = scheduled_pruning with
  magnitude scores on the polynomial schedule.
* :func:`nm_pruning`: gradual magnitude N:M pruning (our reading of Zhu & Gupta 2017 for N:M):
  every block of m consecutive inputs goes from m to n kept weights on the schedule's steps.
* :func:`one_shot_pruning`: one mask update at one step, e.g. SNIP (Lee et al. 2019) at step 0.
* :func:`apply_updates`: ``optax.apply_updates`` followed by the masks held in the state.
* :func:`get_masks` / :func:`set_masks`: read or replace the masks in any optimizer state that
  holds them, also inside ``optax.chain`` or ``optax.inject_hyperparams``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import distributions
from sparsejax import masks as masks_lib
from sparsejax import nm as nm_lib
from sparsejax import pruning
from sparsejax import schedules as schedules_lib
from sparsejax import scores as scores_lib

PyTree = Any
ScoreFn = Callable[[PyTree, PyTree], PyTree]
MasksOrFn = Union[PyTree, Callable[[PyTree], PyTree]]


class StaticMasksState(NamedTuple):
  masks: PyTree
  inner_state: optax.OptState


class ScheduledPruningState(NamedTuple):
  count: jax.Array  # the number of updates applied so far (int32; accumulation_steps batches each)
  masks: PyTree
  inner_state: optax.OptState


class DynamicSparseState(NamedTuple):
  """The state of :mod:`sparsejax.dynamic`'s SET and RigL."""
  count: jax.Array  # updates applied so far
  masks: PyTree
  inner_state: optax.OptState
  key: jax.Array    # random growth: the key of update t is fold_in(key, t)


_MASK_STATES = (StaticMasksState, ScheduledPruningState, DynamicSparseState)

# The optax extra argument by which a caller promises that a step changes no mask (see
# UpdateSteps): ``tx.update(grads, state, params, mask_update=False)``.
MASK_UPDATE = "mask_update"


@dataclasses.dataclass(frozen=True)
class UpdateSteps:
  """The steps where a transformation may change its masks: every ``every`` steps from ``first``
  (inclusive) until ``end`` (exclusive); the step of an update is its count of earlier updates.

  A training loop that knows a transformation's update steps can run the steps in between
  without its per-step ``lax.cond``: it passes the optax extra argument ``mask_update=False`` (a
  Python bool, :data:`MASK_UPDATE`) on those steps, and the transformation skips the cond
  statically. Inside a loop the cond's untaken branch is not free: XLA:CPU copies the masks and
  the inner optimizer's state through it at every step. The runner's fused loop does this
  (``experiments.trainer.make_train_steps``) with any object that has ``next_update_step(step)``:
  this class (:func:`sparsejax.dynamic.update_steps` for SET and RigL) or a pruning schedule of
  :mod:`sparsejax.schedules` (for :func:`scheduled_pruning` and the wrappers built on it, with
  ``accumulation_steps=1``).
  """
  every: int
  first: int
  end: int

  def __post_init__(self):
    for name, minimum in (("every", 1), ("first", 0), ("end", 0)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"UpdateSteps {name}={value!r} must be an int >= {minimum}.")

  def next_update_step(self, step: Any) -> jax.Array:
    """The first update step at or after ``step`` (int32), or int32's maximum where none is
    left."""
    due = schedules_lib.next_on_grid(step, self.first, self.every)
    return jnp.where(due < self.end, due, schedules_lib.NEVER)

  def is_update_step(self, step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.int32)
    return (step >= self.first) & ((step - self.first) % self.every == 0) & (step < self.end)


def promised_no_mask_update(extra_args: dict) -> bool:
  """Pops :data:`MASK_UPDATE` from a transformation's extra arguments: True where the caller
  promised that this step changes no mask. The promise must be a Python bool (it picks the
  program, not a branch of it)."""
  promise = extra_args.pop(MASK_UPDATE, None)
  if promise is not None and not isinstance(promise, bool):
    raise TypeError(f"{MASK_UPDATE}={promise!r} must be a Python bool (or absent): it selects the "
                    "update's program at trace time, so it cannot be an array.")
  return promise is False


def _init_inner(inner, params, masks, name: str):
  """The inner optimizer's state for the masked params; refuses a sparse wrapper inside."""
  inner_state = inner.init(masks_lib.apply(params, masks))
  if _mask_states(inner_state):
    raise ValueError(
        f"{name} wraps an optimizer that holds masks already (a sparse wrapper inside another): "
        "the two would keep different masks. Use one sparse wrapper, outermost.")
  return inner_state


def _check_inner(inner: Any, name: str) -> None:
  if not (hasattr(inner, "init") and hasattr(inner, "update")):
    raise TypeError(f"{name}: inner (a {type(inner).__name__}) is not an optax optimizer (an "
                    "object with init and update); the first argument is the optimizer to wrap, "
                    f"e.g. {name}(optax.adam(1e-3), ...).")


def _check_schedule(schedule: Any, name: str) -> None:
  if not (callable(schedule) and hasattr(schedule, "is_update_step")):
    raise TypeError(f"{name}: schedule={schedule!r} is not a schedule (sparsity(step) with "
                    "is_update_step(step)): pass sparsejax.schedules.polynomial(...) or "
                    "sparsejax.schedules.one_shot(sparsity, step).")


def _require_params(params, name: str):
  if params is None:
    raise ValueError(f"{name} needs the params: call update(updates, state, params).")


def _masked_update(inner: optax.GradientTransformationExtraArgs, updates, inner_state, params,
                   masks, extra_args):
  """The inner step on masked gradients, with pruned weights sent to exactly 0.0."""
  updates, inner_state = inner.update(
      masks_lib.apply(updates, masks), inner_state, masks_lib.apply(params, masks), **extra_args)
  updates = jax.tree.map(
      lambda u, p, m: jnp.where(m, u, -p.astype(u.dtype)) if masks_lib.is_prunable_mask(m) else u,
      updates, params, masks)
  return updates, inner_state


def _zero_pruned_state(inner: optax.GradientTransformation, inner_state: optax.OptState,
                       masks: PyTree) -> optax.OptState:
  """Zeros the entries of pruned weights in every params-shaped part of ``inner_state``.

  The parts are those where ``inner.init`` puts a tree derived from the params (momenta, Adam's
  mu and nu, in any chain), as ``optax.tree_utils.tree_map_params`` finds them.
  """
  try:
    # is_leaf: each params-shaped part is passed whole, so masks.apply validates it.
    return optax.tree_utils.tree_map_params(inner, masks_lib.apply, inner_state, masks,
                                            is_leaf=lambda _: True)
  except (TypeError, ValueError) as e:
    raise ValueError(
        "cannot find the params-shaped parts of the inner optimizer state with the inner "
        "optimizer's init (optax.tree_utils.tree_map_params): pass the optimizer that the sparse "
        "transformation wraps. Inner optimizers built with optax.masked or optax.multi_transform "
        "are not supported.") from e


def static_masks(inner: optax.GradientTransformation,
                 masks: MasksOrFn) -> optax.GradientTransformationExtraArgs:
  """Trains with fixed masks.

  Args:
    inner: any optax optimizer.
    masks: a mask pytree (:mod:`sparsejax.masks`), or a function ``params -> masks`` called at
      ``init`` (handy under ``jax.vmap``, where each model gets its own masks).
  """
  _check_inner(inner, "static_masks")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    m = masks_lib.conform(params, masks(params) if callable(masks) else masks)
    return StaticMasksState(m, _init_inner(inner, params, m, "static_masks"))

  def update_fn(updates, state, params=None, **extra_args):
    _require_params(params, "static_masks")
    updates, inner_state = _masked_update(inner, updates, state.inner_state, params, state.masks,
                                          extra_args)
    return updates, StaticMasksState(state.masks, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scheduled_pruning(inner: optax.GradientTransformation, schedule, score_fn: ScoreFn,
                      distribution: str = "uniform", prunable: masks_lib.Prunable = None,
                      initial_masks: PyTree | None = None, revive: bool = False,
                      accumulation_steps: int = 1) -> optax.GradientTransformationExtraArgs:
  """Recomputes masks inside ``jit`` on the steps where ``schedule.is_update_step(step)``.

  At such a step t, the masks become the top scores of ``score_fn(params, grads)`` at sparsity
  ``schedule(t)`` split over layers by ``distribution`` ('uniform', 'er', 'erk' or 'global'),
  computed from the params *before* the step's update; the step's update then already uses the
  new masks.

  The schedule counts the steps of the training loop: the mini-batches, one per call of
  ``update`` of the outermost optimizer. With gradient accumulation, either placement works:

  * ``magnitude_pruning(optax.MultiSteps(adam, k), schedule)``: the wrapper sees every
    mini-batch;
  * ``optax.MultiSteps(magnitude_pruning(adam, schedule, accumulation_steps=k), k)``: the wrapper
    sees every k-th; ``accumulation_steps=k`` tells it so, and an update that ends the mini-batches
    t..t+k-1 prunes if any of them is a schedule step, to the sparsity at t+k-1.

  Args:
    inner: any optax optimizer.
    schedule: an object with ``__call__(step) -> sparsity`` and ``is_update_step(step) -> bool``
      (:mod:`sparsejax.schedules`).
    score_fn: ``(params, grads) -> scores`` pytree; higher is kept.
    distribution: how the sparsity is split over layers.
    prunable: the rule for prunable leaves (:mod:`sparsejax.masks`); only without
      ``initial_masks``, which say by themselves which leaves are prunable.
    initial_masks: masks to start from (default: keep everything).
    revive: whether an update may bring back weights pruned earlier.
    accumulation_steps: mini-batches per call of ``update`` (k inside ``optax.MultiSteps``).

  Under ``jax.vmap`` with a batched step counter (e.g. ``jax.vmap(opt.init)`` then a vmapped
  step) ``lax.cond`` becomes a select that computes the mask update at every step: the result is
  the same but slower; vmap the whole training loop, ``init`` included, so the counter stays
  unbatched and the update runs only on the schedule's steps.

  Raises:
    ValueError: if both ``prunable`` and ``initial_masks`` are given.
  """
  if prunable is not None and initial_masks is not None:
    raise ValueError(
        "scheduled_pruning got both prunable and initial_masks: the masks already say which "
        "leaves are prunable (a bool array) and which are not (a scalar True); pass one of them.")
  _check_inner(inner, "scheduled_pruning")
  _check_schedule(schedule, "scheduled_pruning")
  if not callable(score_fn):
    raise TypeError(f"scheduled_pruning: score_fn={score_fn!r} must be a function "
                    "(params, grads) -> scores.")
  _check_accumulation_steps(accumulation_steps)
  if distribution != "global":
    distributions.get(distribution)  # fails early on an unknown name

  def initial(params):
    return masks_lib.ones_like(params, prunable) if initial_masks is None else initial_masks

  def remask(params, grads, masks, sparsity):
    return pruning.prune(score_fn(params, grads), sparsity, masks, distribution, revive=revive,
                         params=params)

  return _scheduled(inner, schedule, initial, remask, accumulation_steps, "scheduled_pruning")


def _check_accumulation_steps(accumulation_steps: Any) -> None:
  if (isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int)
      or accumulation_steps < 1):
    raise ValueError(f"accumulation_steps={accumulation_steps!r} must be a positive int: the "
                     "mini-batches per update (every_k_schedule of optax.MultiSteps).")


def _scheduled(inner: optax.GradientTransformation, schedule, initial: Callable[[PyTree], PyTree],
               remask: Callable[[PyTree, PyTree, PyTree, jax.Array], PyTree],
               accumulation_steps: int, name: str) -> optax.GradientTransformationExtraArgs:
  """The wrapper of :func:`scheduled_pruning`: masks ``initial(params)`` at ``init``, and
  ``remask(params, grads, masks, sparsity)`` inside ``lax.cond`` on the schedule's steps."""
  inner = optax.with_extra_args_support(inner)
  window = jnp.arange(accumulation_steps, dtype=jnp.int32)

  def init_fn(params):
    m = masks_lib.conform(params, initial(params))  # the params' containers, e.g. NNX's
    return ScheduledPruningState(jnp.zeros((), jnp.int32), m, _init_inner(inner, params, m, name))

  def update_fn(updates, state, params=None, **extra_args):
    _require_params(params, name)

    steps = state.count * accumulation_steps + window  # the mini-batches of this update

    def prune(operands):
      m, inner_state = operands
      new = remask(params, updates, m, schedule(steps[-1]))
      return new, _zero_pruned_state(inner, inner_state, new)

    if promised_no_mask_update(extra_args):
      m, inner_state = state.masks, state.inner_state
    else:
      due = jnp.any(jax.vmap(schedule.is_update_step)(steps))
      m, inner_state = lax.cond(due, prune, lambda ops: ops, (state.masks, state.inner_state))
    updates, inner_state = _masked_update(inner, updates, inner_state, params, m, extra_args)
    return updates, ScheduledPruningState(optax.safe_increment(state.count), m, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def magnitude_pruning(inner: optax.GradientTransformation, schedule,
                      distribution: str = "uniform", prunable: masks_lib.Prunable = None,
                      initial_masks: PyTree | None = None,
                      accumulation_steps: int = 1) -> optax.GradientTransformationExtraArgs:
  """Gradual magnitude pruning (Zhu & Gupta 2017): |w| scores on ``schedule``; pruned stay pruned.

  Example::

    schedule = sparsejax.schedules.polynomial(0.9, begin_step=1000, end_step=9000, frequency=100)
    opt = sparsejax.transforms.magnitude_pruning(optax.sgd(0.1, momentum=0.9), schedule, "erk")
  """
  return scheduled_pruning(inner, schedule, lambda params, _: scores_lib.magnitude(params),
                           distribution, prunable, initial_masks,
                           accumulation_steps=accumulation_steps)


def _final_sparsity(schedule) -> tuple[str, float] | None:
  """(attribute, value) of the sparsity a schedule ends at, when it exposes one."""
  for attribute in ("final_sparsity", "sparsity"):  # schedules.Polynomial, schedules.OneShot
    value = getattr(schedule, attribute, None)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
      return attribute, float(value)
  return None


def nm_pruning(inner: optax.GradientTransformation, n: int, m: int, schedule,
               prunable: masks_lib.Prunable = None, *,
               accumulation_steps: int = 1) -> optax.GradientTransformationExtraArgs:
  """Gradual magnitude N:M pruning: every block of m consecutive inputs ends keeping exactly n.

  Our reading of Zhu & Gupta 2017's gradual schedule (eq. 1), generalized to N:M patterns: at
  an update step t of ``schedule`` with sparsity s_t, every block of m consecutive weights along
  axis -2 (``in`` of a dense kernel, ``I`` of an HWIO conv kernel) of every prunable leaf keeps

      k_t = clip(round((1 - s_t) m), n, m)

  weights (:func:`sparsejax.nm.kept_per_block`): the k_t largest magnitudes among those it still
  keeps (pruned weights stay pruned), ties to the lowest index (:func:`sparsejax.nm.prune`). With
  ``schedules.polynomial(1 - n / m, begin, end, frequency)`` the pattern goes m:m -> ... -> n:m
  and, from ``end`` on, exactly n of every m weights are kept (the pattern of
  :func:`sparsejax.pdp.nm_masks`). Everything else is :func:`scheduled_pruning`'s: the masks live
  in the state (:func:`get_masks`), they change only on the schedule's steps (``lax.cond`` inside
  ``jit``, no recompilation), from the params before the step's update, the updates are masked
  and every pruned weight is exactly 0.0 after every step. Fixed N:M masks need no schedule:
  ``static_masks(inner, sparsejax.pdp.nm_masks(params, n, m))``.

  Example::

    schedule = sparsejax.schedules.polynomial(1 - 2 / 4, begin_step=1000, end_step=9000,
                                              frequency=100)
    opt = sparsejax.transforms.nm_pruning(optax.sgd(0.1, momentum=0.9), 2, 4, schedule)

  Args:
    inner: any optax optimizer.
    n: weights kept of every m at the end (0 < n < m).
    m: the block length.
    schedule: a schedule (:mod:`sparsejax.schedules`) ending at sparsity 1 - n/m.
    prunable: the rule for prunable leaves (:mod:`sparsejax.masks`); axis -2 of each must be a
      multiple of m.
    accumulation_steps: mini-batches per call of ``update``, as in :func:`scheduled_pruning`.

  Raises:
    ValueError: for n, m not integers with 0 < n < m; a schedule that says it ends at a sparsity
      other than 1 - n/m (its ``final_sparsity``, or a one-shot schedule's ``sparsity``); at
      ``init``, a prunable leaf of rank < 2 or whose axis -2 is not a multiple of m (naming the
      leaf and its shape).
  """
  n, m = nm_lib.check_nm(n, m)
  _check_inner(inner, "nm_pruning")
  _check_schedule(schedule, "nm_pruning")
  _check_accumulation_steps(accumulation_steps)
  final = _final_sparsity(schedule)
  if final is not None and not math.isclose(final[1], 1 - n / m, rel_tol=0.0, abs_tol=1e-6):
    raise ValueError(
        f"nm_pruning: the schedule ends at {final[0]}={final[1]!r}, but an {n}:{m} pattern has "
        f"sparsity 1 - n/m = {1 - n / m!r}: pass a schedule ending there, e.g. "
        f"sparsejax.schedules.polynomial(1 - {n} / {m}, begin_step, end_step, frequency).")

  def initial(params):
    nm_lib.check_params(params, m, prunable)
    return masks_lib.ones_like(params, prunable)

  def remask(params, grads, masks, sparsity):
    del grads
    return nm_lib.prune(scores_lib.magnitude(params), nm_lib.kept_per_block(sparsity, n, m), m,
                        masks)

  return _scheduled(inner, schedule, initial, remask, accumulation_steps, "nm_pruning")


def one_shot_pruning(inner: optax.GradientTransformation, sparsity: float, score_fn: ScoreFn,
                     distribution: str = "uniform", step: int = 0,
                     prunable: masks_lib.Prunable = None) -> optax.GradientTransformationExtraArgs:
  """Prunes once at ``step`` by ``score_fn`` (SNIP at step 0: ``lambda p, g: |p * g|``)."""
  return scheduled_pruning(inner, schedules_lib.one_shot(sparsity, step), score_fn, distribution,
                           prunable)


def _mask_states(state) -> list:
  is_mask_state = lambda x: isinstance(x, _MASK_STATES)
  return [x for x in jax.tree.leaves(state, is_leaf=is_mask_state) if is_mask_state(x)]


_is_masked_node = lambda x: isinstance(x, optax.MaskedNode)


def _merge_partitions(trees: list) -> PyTree:
  """Params-shaped masks from the masks of wrappers on ``optax.multi_transform`` partitions.

  Each wrapper holds masks only for its partition (``optax.MaskedNode`` elsewhere); a leaf no
  wrapper holds is never pruned (scalar True).
  """
  flat = [jax.tree.flatten(t, is_leaf=_is_masked_node) for t in trees]
  treedef = flat[0][1]
  if any(d != treedef for _, d in flat[1:]):
    raise ValueError("the optimizer state holds several sparse wrappers whose masks have "
                     "different structures; use one sparse wrapper, outermost.")
  merged = []
  for leaves in zip(*(f[0] for f in flat)):
    held = [m for m in leaves if not _is_masked_node(m)]
    if len(held) > 1:
      raise ValueError("two sparse wrappers hold masks for the same params; use one sparse "
                       "wrapper, outermost.")
    merged.append(held[0] if held else jnp.array(True))
  return jax.tree.unflatten(treedef, merged)


def get_masks(opt_state: optax.OptState) -> PyTree:
  """The masks held by the sparsejax transformation(s) in ``opt_state``, shaped like the params.

  One sparse wrapper anywhere in the state (inside ``optax.chain``, ``inject_hyperparams``,
  ``MultiSteps``, ``lookahead``), or one per partition of ``optax.multi_transform``: leaves of
  the other partitions are never pruned (scalar True).
  """
  found = _mask_states(opt_state)
  if not found:
    raise ValueError(
        "expected one sparsejax mask state in the optimizer state, found 0: build the optimizer "
        "with static_masks / scheduled_pruning / magnitude_pruning / nm_pruning, or "
        "sparsejax.dynamic's rigl / set_.")
  return _merge_partitions([x.masks for x in found])


def set_masks(opt_state: optax.OptState, masks: PyTree, *,
              inner: optax.GradientTransformation) -> optax.OptState:
  """``opt_state`` with its masks replaced (same structure, so a jitted step is reused).

  The inner optimizer's entries of the weights the new masks prune (momentum, Adam moments) are
  zeroed, so pruned weights leave nothing in the state, as after a mask update during training.

  Args:
    opt_state: an optimizer state holding one sparsejax mask state, anywhere (e.g. inside
      ``optax.chain``).
    masks: the new masks.
    inner: the optimizer the sparse transformation wraps; its ``init`` says which parts of the
      inner state are shaped like the params (``optax.tree_utils.tree_map_params``).

  Raises:
    ValueError: naming the first path where ``masks`` differ from the masks held in
      ``opt_state`` in tree structure, shape or dtype; or if ``inner`` did not make the inner state.
  """
  masks_lib.validate_replacement(get_masks(opt_state), masks)
  if len(_mask_states(opt_state)) > 1:
    raise ValueError("set_masks replaces the masks of one sparse wrapper; this optimizer state "
                     "holds one per optax.multi_transform partition: set each partition's "
                     "wrapper state instead.")
  is_mask_state = lambda x: isinstance(x, _MASK_STATES)

  def replace(x):
    new = masks_lib.conform(x.masks, masks)  # the containers the state holds (e.g. NNX's)
    return x._replace(masks=new, inner_state=_zero_pruned_state(inner, x.inner_state, new))

  return jax.tree.map(lambda x: replace(x) if is_mask_state(x) else x, opt_state,
                      is_leaf=is_mask_state)


def apply_updates(params: PyTree, updates: PyTree, opt_state: optax.OptState) -> PyTree:
  """``optax.apply_updates(params, updates)`` with the masks in ``opt_state`` applied after.

  Every pruned weight is exactly 0.0 afterwards whatever transformations follow the sparse
  wrapper. Params that hold the masked tree more than once (``optax.lookahead``'s
  ``LookaheadParams(fast, slow)``) have the masks applied to each copy.

  Raises:
    ValueError: if ``opt_state`` holds no sparse wrapper's masks, or if no part of ``params`` has
      the masks' tree structure.
  """
  masks = get_masks(opt_state)
  new = optax.apply_updates(params, updates)
  treedef = jax.tree.structure(masks)
  like_masks = lambda x: jax.tree.structure(x) == treedef
  found = []

  def mask(x):
    found.append(x)
    return masks_lib.apply(x, masks)

  out = jax.tree.map(lambda x: mask(x) if like_masks(x) else x, new, is_leaf=like_masks)
  if not found:
    masks_lib.validate(new, masks)  # names the first path where they differ
  return out
