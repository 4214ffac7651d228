"""Forward-time sparsifiers: PDP soft masks and straight-through (STE) hard masks.

Both train dense params and prune them only in the forward pass the loss sees
(:attr:`~experiments.sparsifiers.Sparsifier.forward`), with :mod:`sparsejax.pdp`:

- ``pdp``: PDP (Cho, Adya & Naik, NeurIPS 2023): the loss sees ``W * m(W)`` with the soft mask
  ``m(w) = sigmoid((w^2 - t^2) / pdp_tau)`` (:func:`sparsejax.pdp.apply`);
- ``ste``: the loss sees ``W * M`` with magnitude hard masks M recomputed at every step from the
  params of that step, and the gradient is the dense one (straight-through,
  :func:`sparsejax.pdp.ste_apply`): the same schedule as ``pdp``, hard masks instead of soft.

The schedule (shared, :func:`sparsejax.pdp.ramp`): dense training for ``pdp_warmup`` (a duration:
``"16ep"``, ``"500it"`` or a percentage of the training); at its end the per-layer targets r_l are
fixed once by one global magnitude ranking of all prunable weights at ``final_sparsity``
(:func:`sparsejax.pdp.layer_targets`); then the sparsity of layer l in the e-th epoch after the
warm-up (e = 0, 1, ...: whole epochs, ``(step - warmup) // steps_per_epoch``, as the paper's
per-epoch schedule) is ``min(1, pdp_rate * (e + 1)) * r_l``. The targets live in the
transformation's state (:class:`ScheduleState`), set inside the jitted update by ``lax.cond`` at
the last warm-up step from the params the warm-up ends with: no recompilation and no host round
trip. With ``pdp_warmup=0`` they are fixed from the initial params.

``pdp_scope`` says what is pruned: ``"unstructured"`` (weights), ``"channel"`` (``pdp`` only:
whole output channels by L2 norm; r_l, from the weight-level ranking, is used as the fraction of
layer l's channels) or ``"nm"`` (``nm="N:M"``: N of every M consecutive weights along the input
axis). The N:M pattern fixes the sparsity at 1 - N/M: there the targets and ``pdp_rate`` are
unused, and the pattern applies in full from the end of the warm-up (dense before).

The masks readout (``masks.npz``, the logged ``density``) is the hard masks of the current
sparsities (:func:`sparsejax.pdp.hard_masks`: exact counts, the paper's ``m >= 0.5``). Both
sparsifiers set ``hard_masks``, so the ``train`` protocol also reports the test accuracy of the
hard-masked network (``test_accuracy_hard``: pruned weights exactly 0.0) beside the one training
evaluated (``test_accuracy``: the soft network for ``pdp``, the same network for ``ste``).

Defaults: ``pdp_tau=1e-4`` and ``pdp_rate=0.015`` (per epoch), ``pdp_warmup="16ep"``, the values
re-implementations attribute to the paper's Appendix D (see :mod:`sparsejax.pdp`); at 0.015 per
epoch the ramp takes 67 epochs after the warm-up, so shorter trainings raise ``pdp_rate``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from experiments import parsing
from experiments.parsing import ConfigError
from experiments.sparsifiers import Context, Sparsifier, register
from sparsejax import masks as masks_lib
from sparsejax import pdp

PyTree = Any

PDP_KEYS = {"final_sparsity": 0.9, "pdp_scope": "unstructured", "nm": "2:4",
            "pdp_tau": pdp.DEFAULT_TAU, "pdp_rate": pdp.DEFAULT_RATE, "pdp_warmup": "16ep"}
STE_SCOPES = ("unstructured", "nm")


class ScheduleState(NamedTuple):
  """The state of the schedule transformation."""
  count: jax.Array      # updates done so far: the training step
  targets: PyTree       # per-layer r_l (float32 scalars); 0.0 until the warm-up ends
  inner: optax.OptState  # the dense optimizer's state
  thresholds: PyTree    # pdp: t of the current params at step ``count``; ste: None


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """PDP's schedule in steps: warm-up, global targets, per-epoch ramp."""
  sparsity: float
  warmup: int           # steps
  steps_per_epoch: int
  rate: float           # per epoch
  scope: str
  n: int
  m: int
  prunable: masks_lib.Prunable

  def targets(self, params: PyTree) -> PyTree:
    if self.scope == "nm":  # the pattern fixes the sparsity
      return self.zeros(params)
    return pdp.layer_targets(params, self.sparsity, self.prunable)

  @staticmethod
  def zeros(params: PyTree) -> PyTree:
    return jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params)

  def sparsities(self, targets: PyTree, step: Any) -> PyTree:
    """Per-layer sparsities at ``step``: 0 in the warm-up, then the ramp by whole epochs."""
    epochs = jnp.floor_divide(jnp.asarray(step, jnp.int32) - self.warmup, self.steps_per_epoch)
    return pdp.ramp(epochs, targets, 0, self.rate)  # epochs < 0: factor 0

  def warm(self, step: Any) -> jax.Array:
    """Whether ``step`` lies in the dense warm-up."""
    return jnp.asarray(step) < self.warmup

  def hard_masks(self, params: PyTree, targets: PyTree, step: Any) -> PyTree:
    """The hard masks in force at ``step`` (every weight kept in the warm-up)."""
    params = lax.stop_gradient(params)
    if self.scope == "nm":
      masks = pdp.hard_masks(params, None, "nm", self.n, self.m, self.prunable)
      warm = self.warm(step)
      return jax.tree.map(lambda k: jnp.logical_or(k, warm), masks)
    return pdp.hard_masks(params, self.sparsities(targets, step), self.scope, self.n, self.m,
                          self.prunable)

  def thresholds(self, params: PyTree, targets: PyTree, step: Any,
                 previous: PyTree = None) -> PyTree:
    """PDP's thresholds of ``params`` at ``step`` (:func:`sparsejax.pdp.thresholds`), searched
    from the ``previous`` step's."""
    return pdp.thresholds(lax.stop_gradient(params), self.sparsities(targets, step), self.scope,
                          self.n, self.m, self.prunable, previous)

  def transformation(self, inner: optax.GradientTransformation,
                     with_thresholds: bool = False) -> optax.GradientTransformation:
    """``inner`` plus the targets, fixed inside ``update`` when the warm-up ends, and (with
    ``with_thresholds``, for PDP) the thresholds of the params the update produces.

    The thresholds are computed once per step, here, from the new params, so that the forward
    passes of the next step (and evaluations) only apply them. They are those of the params the
    runner trains, ``optax.apply_updates(params, updates)``; each layer's search starts from the
    layer's threshold one step earlier, which is close (``previous`` of
    :func:`sparsejax.pdp.thresholds`).
    """

    def init(params):
      targets = self.targets(params) if self.warmup == 0 else self.zeros(params)
      count = jnp.zeros((), jnp.int32)
      return ScheduleState(count, targets, inner.init(params),
                           self.thresholds(params, targets, count) if with_thresholds else None)

    def update(updates, state, params=None):
      if params is None:
        raise ValueError("the PDP schedule needs params in update() to fix its layer targets.")
      updates, inner_state = inner.update(updates, state.inner, params)
      count = state.count + 1
      new_params = optax.apply_updates(params, updates)
      # The targets come from the params the warm-up ends with (after its last update), so the
      # first step after the warm-up already prunes.
      targets = lax.cond(count == self.warmup, lambda: self.targets(new_params),
                         lambda: state.targets)
      thresholds = (self.thresholds(new_params, targets, count, state.thresholds)
                    if with_thresholds else None)
      return updates, ScheduleState(count, targets, inner_state, thresholds)

    return optax.GradientTransformation(init, update)


def _validate(config) -> None:
  parsing.check_fraction("final_sparsity", config.final_sparsity)
  parsing.choice("pdp_scope", config.pdp_scope, pdp.SCOPES)
  try:
    pdp.parse_nm(config.nm)
  except ValueError as e:
    raise ConfigError(f"nm={config.nm!r}: {e}") from None
  for key, hint in (("pdp_tau", "the soft mask's temperature, the paper's 1e-4"),
                    ("pdp_rate", "the fraction of each layer's target added per epoch, the "
                                 "paper's 0.015")):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0):
      raise ConfigError(f"{key}={value!r} must be a positive number ({hint}).")
  parsing.check_durations(config, percent=["pdp_warmup"])


def _check(setup, scopes) -> None:
  """Run only when pdp / ste is selected: the scope, the warm-up length, the N:M shapes."""
  c, d = setup.config, setup.task.durations
  parsing.choice("pdp_scope", c.pdp_scope, scopes)
  warmup = parsing.parse_duration(c.pdp_warmup, d.steps_per_epoch, "pdp_warmup", total=d.total)
  if warmup >= d.total:
    raise ConfigError(f"pdp_warmup={c.pdp_warmup!r} ({warmup} steps) leaves nothing to prune in "
                      f"a training of {d.total} steps (steps={c.steps!r}); shorten the warm-up.")
  if c.pdp_scope == "nm":
    n, m = pdp.parse_nm(c.nm)
    try:
      jax.eval_shape(lambda p: pdp.nm_masks(p, n, m, setup.prunable), setup.param_shapes)
    except ValueError as e:
      raise ConfigError(f"pdp_scope='nm', nm={c.nm!r} does not fit {c.model}: {e} (the runner "
                        "key is prune_exclude)") from None


def _schedule(ctx: Context) -> Schedule:
  c, d = ctx.config, ctx.task.durations
  n, m = pdp.parse_nm(c.nm)
  warmup = parsing.parse_duration(c.pdp_warmup, d.steps_per_epoch, "pdp_warmup", total=d.total)
  return Schedule(c.final_sparsity, warmup, d.steps_per_epoch, c.pdp_rate, c.pdp_scope, n, m,
                  ctx.prunable)


def _sparsifier(schedule: Schedule, inner, forward, with_thresholds: bool) -> Sparsifier:
  masks = lambda opt_state, params: schedule.hard_masks(params, opt_state.targets, opt_state.count)
  return Sparsifier(schedule.transformation(inner, with_thresholds), masks, forward,
                    hard_masks=masks)


@register("pdp", keys=PDP_KEYS, validate=_validate, check=lambda setup: _check(setup, pdp.SCOPES))
def pdp_sparsifier(ctx: Context) -> Sparsifier:
  """PDP: soft masks ``W * sigmoid((W^2 - t^2) / tau)`` in the forward pass, hard at the end."""
  s, tau = _schedule(ctx), ctx.config.pdp_tau

  def forward(params, opt_state, step):
    soft = pdp.apply(params, s.sparsities(opt_state.targets, step), tau, s.scope, s.n, s.m,
                     s.prunable, opt_state.thresholds)
    if s.scope == "nm":
      warm = s.warm(step)
      return jax.tree.map(lambda p, q: jnp.where(warm, p, q), params, soft)
    return soft

  return _sparsifier(s, ctx.inner, forward, with_thresholds=True)


@register("ste", keys=PDP_KEYS, validate=_validate, check=lambda setup: _check(setup, STE_SCOPES))
def ste_sparsifier(ctx: Context) -> Sparsifier:
  """Straight-through magnitude masks, recomputed at every step from that step's params."""
  s = _schedule(ctx)

  def forward(params, opt_state, step):
    return pdp.ste_apply(params, s.hard_masks(params, opt_state.targets, step))

  return _sparsifier(s, ctx.inner, forward, with_thresholds=False)
