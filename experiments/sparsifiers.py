"""Sparsifiers: what one training needs from a sparse method, built from the config.

A sparsifier is registered under the name the config's ``sparsifier`` key selects, with the config
keys it owns (:mod:`experiments.registry`). Its builder takes a :class:`Context` and returns a
:class:`Sparsifier`:

- ``tx``: an optax transformation around the dense optimizer (masks in its state);
- ``forward(params, opt_state, step) -> params``: the effective params the loss and the
  evaluation see (the identity for mask-based methods; soft or straight-through masks use it);
- ``masks(opt_state, params) -> masks``: the masks the method holds now (a mask pytree);
- ``hard_masks(opt_state, params) -> masks`` (optional, default None): for methods whose forward
  network is not ``params * masks`` (PDP's soft masks), the hard masks of the network the method
  deploys; the ``train`` protocol then also evaluates ``params * hard_masks`` (pruned weights
  exactly 0.0) at the end and reports ``test_accuracy_hard``, ``test_loss_hard`` and
  ``density_hard`` beside what training evaluated;
- ``update_steps`` (optional, default None): the steps where ``tx`` may change its masks
  (:class:`sparsejax.transforms.UpdateSteps`), for a ``tx`` that honours the optax extra
  argument ``mask_update=False``; the runner's fused loop then runs the steps in between without
  the transformation's per-step ``lax.cond`` (``experiments.trainer.make_train_steps``).

Built in: ``dense``, ``magnitude`` (gradual magnitude pruning, Zhu & Gupta 2017; of weights, or
N:M with ``pruning_scope='nm'``), ``random`` (random pruning at initialization, Liu et al. 2022)
and ``snip`` (Lee et al. 2019). A new one::

  from experiments import sparsifiers

  @sparsifiers.register("half_random", keys={"half_seed": 0})
  def half_random(ctx):
    masks = sparsejax.pruning.random(ctx.key, ctx.params, 0.5, "uniform", ctx.prunable)
    return sparsifiers.with_masks(sparsejax.transforms.static_masks(ctx.inner, masks))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from experiments import data as data_lib
from experiments import parsing
from experiments.registry import SPARSIFIERS
from sparsejax import masks as masks_lib
from sparsejax import nm, pdp, pruning, schedules, transforms

PyTree = Any
DISTRIBUTIONS = ("uniform", "er", "erk", "global")

register = SPARSIFIERS.register


def identity(params, opt_state, step):
  """The forward-time function of mask-based methods: the params themselves."""
  del opt_state, step
  return params


@dataclasses.dataclass(frozen=True, eq=False)
class Sparsifier:
  """What one training needs: see the module docstring."""
  tx: optax.GradientTransformation
  masks: Callable[[optax.OptState, PyTree], PyTree]
  forward: Callable[[PyTree, optax.OptState, Any], PyTree] = identity
  hard_masks: Callable[[optax.OptState, PyTree], PyTree] | None = None
  update_steps: Any = None  # transforms.UpdateSteps or a pruning schedule: next_update_step


def with_masks(tx: optax.GradientTransformation, update_steps: Any = None) -> Sparsifier:
  """A sparsifier whose masks live in a sparsejax transformation's state (``get_masks``), which
  changes them only on ``update_steps`` (if given: its ``next_update_step``)."""
  return Sparsifier(tx, lambda opt_state, params: transforms.get_masks(opt_state),
                    update_steps=update_steps)


@dataclasses.dataclass(frozen=True)
class Context:
  """What a sparsifier is built from."""
  config: ml_collections.ConfigDict
  inner: optax.GradientTransformation  # the dense optimizer
  params: PyTree                       # the initial params
  model_state: PyTree
  task: Any                            # experiments.trainer.Task (model, data, durations)
  key: jax.Array                       # the sparsifier's own random stream
  prunable: masks_lib.Prunable


def build(ctx: Context) -> Sparsifier:
  """The sparsifier the config selects."""
  return SPARSIFIERS.get(ctx.config.sparsifier).build(ctx)


@register("dense")
def dense(ctx: Context) -> Sparsifier:
  """No pruning: the dense optimizer; every prunable weight counts as kept."""
  prunable = ctx.prunable
  return Sparsifier(ctx.inner, lambda opt_state, params: masks_lib.ones_like(params, prunable))


def validate_sparsity(config) -> None:
  parsing.check_fraction("final_sparsity", config.final_sparsity)
  parsing.choice("distribution", config.distribution, DISTRIBUTIONS)


SPARSITY_KEYS = {"final_sparsity": 0.9, "distribution": "uniform"}


PRUNING_SCOPES = ("unstructured", "nm")
NM_DEFAULT = "2:4"  # the pdp / ste sparsifiers own the key nm too, with this default


def _parse_nm(config) -> tuple[int, int]:
  try:
    return pdp.parse_nm(config.nm)
  except ValueError as e:
    raise parsing.ConfigError(f"nm={config.nm!r}: {e}") from None


def _validate_magnitude(config) -> None:
  validate_sparsity(config)
  parsing.check_durations(config, "pruning_begin", "pruning_frequency", percent=["pruning_end"])
  if config.pruning_power <= 0:
    raise parsing.ConfigError(f"pruning_power={config.pruning_power!r} must be positive "
                              "(Zhu & Gupta use 3).")
  parsing.choice("pruning_scope", config.pruning_scope, PRUNING_SCOPES)
  _parse_nm(config)


def window(config, durations, begin: str, end: str, every: str) -> tuple[int, int, int]:
  """(begin, end, every) in steps of a pruning window given by the config keys named: ``begin``
  and ``every`` durations, ``end`` a duration or a percentage of the training; every >= 1."""
  spe = durations.steps_per_epoch
  return (parsing.parse_duration(config[begin], spe, begin),
          parsing.parse_duration(config[end], spe, end, total=durations.total),
          max(1, parsing.parse_duration(config[every], spe, every)))


def _magnitude_steps(config, durations) -> tuple[int, int, int]:
  """(begin, end, frequency) of the pruning schedule, in steps (end > begin)."""
  begin, end, frequency = window(config, durations, "pruning_begin", "pruning_end",
                                 "pruning_frequency")
  return begin, max(end, begin + 1), frequency


def _layer_name(path: tuple) -> str | None:
  """The name of the module holding a leaf (the key above it), e.g. 'conv1'."""
  if len(path) < 2:
    return None
  key = path[-2]
  name = getattr(key, "key", getattr(key, "name", None))
  return name if isinstance(name, str) else None


def _prune_exclude_hint(config, shapes, bad: list[str]) -> str:
  """A prune_exclude that also excludes the leaves in ``bad``, and no other prunable leaf."""
  leaves = jax.tree_util.tree_leaves_with_path(shapes)
  names = sorted({_layer_name(p) for p, _ in leaves if jax.tree_util.keystr(p) in bad} - {None})
  rule = lambda patterns: masks_lib.rule(exclude="|".join(filter(None, patterns)) or None)
  wanted = set(masks_lib.prunable_paths(shapes, rule([config.prune_exclude]))) - set(bad)
  patterns = [config.prune_exclude] + names
  if not names or set(masks_lib.prunable_paths(shapes, rule(patterns))) != wanted:
    patterns = [config.prune_exclude] + [re.escape(p) for p in bad]
  return "|".join(filter(None, patterns))


def _check_magnitude(setup) -> None:
  """Run when ``magnitude`` is selected: with pruning_scope='nm', the N:M shapes and the end."""
  c, d = setup.config, setup.task.durations
  if c.pruning_scope != "nm":
    return
  n, m = _parse_nm(c)
  shapes = setup.param_shapes
  bad = nm.misfit_paths(shapes, m, setup.prunable)
  if bad:
    shape = {jax.tree_util.keystr(p): tuple(x.shape)
             for p, x in jax.tree_util.tree_leaves_with_path(shapes)}[bad[0]]
    problem = (f"pruning_scope='nm', nm={c.nm!r} does not fit {c.model}: N:M blocks need axis -2 "
               f"(the input axis) of every prunable kernel to be a multiple of {m}, but "
               f"{bad[0]} has shape {shape}")
    if len(bad) == len(masks_lib.prunable_paths(shapes, setup.prunable)):
      raise parsing.ConfigError(f"{problem}, and no prunable kernel fits; choose another nm.")
    raise parsing.ConfigError(
        f"{problem}{f' ({len(bad)} kernels do not fit)' if len(bad) > 1 else ''}. Exclude "
        f"{'it' if len(bad) == 1 else 'them'} with prune_exclude="
        f"{_prune_exclude_hint(c, shapes, bad)!r}, or choose another nm.")
  begin, end, _ = _magnitude_steps(c, d)
  if end >= d.total:
    raise parsing.ConfigError(
        f"pruning_end={c.pruning_end!r} (step {end}) with pruning_begin={c.pruning_begin!r} "
        f"does not end before the training does (steps={c.steps!r}: {d.total} steps): the "
        f"{n}:{m} pattern is reached at pruning_end; end pruning earlier.")


@register("magnitude", validate=_validate_magnitude, check=_check_magnitude,
          keys={**SPARSITY_KEYS, "pruning_begin": "0it", "pruning_end": "75%",
                "pruning_frequency": "100it", "pruning_power": 3.0,
                "pruning_scope": "unstructured", "nm": NM_DEFAULT})
def magnitude(ctx: Context) -> Sparsifier:
  """Gradual magnitude pruning on Zhu & Gupta's polynomial schedule (eq. 1).

  ``pruning_end`` may be a percentage of the training steps. ``pruning_scope`` says what is
  pruned:

  - ``"unstructured"`` (default): weights, to ``final_sparsity``, split over layers by
    ``distribution`` (:func:`sparsejax.transforms.magnitude_pruning`);
  - ``"nm"`` (``nm="N:M"``, default ``"2:4"``): N of every M consecutive weights along the input
    axis (axis -2) of every prunable kernel, reached gradually
    (:func:`sparsejax.transforms.nm_pruning`): at each pruning step every block of M keeps
    clip(round((1 - s_t) M), N, M) of its largest magnitudes, on the polynomial schedule from
    ``pruning_begin`` to ``pruning_end`` every ``pruning_frequency`` up to s = 1 - N/M, so it
    ends with exactly N of every M. The pattern fixes the sparsity and every layer gets it:
    ``final_sparsity`` and ``distribution`` are unused. Axis -2 of every prunable kernel must be a
    multiple of M (exclude the others with ``prune_exclude``: Conv-4's first convolution has 1
    or 3 input channels, so ``prune_exclude='conv1'``), and ``pruning_end`` must come before the
    end of training.
  """
  c = ctx.config
  begin, end, frequency = _magnitude_steps(c, ctx.task.durations)
  if c.pruning_scope == "nm":
    n, m = _parse_nm(c)
    schedule = schedules.polynomial(1 - n / m, begin, end, frequency, power=c.pruning_power)
    return with_masks(transforms.nm_pruning(ctx.inner, n, m, schedule, ctx.prunable), schedule)
  schedule = schedules.polynomial(c.final_sparsity, begin, end, frequency, power=c.pruning_power)
  return with_masks(transforms.magnitude_pruning(ctx.inner, schedule, c.distribution,
                                                 ctx.prunable), schedule)


@register("random", validate=validate_sparsity, keys=SPARSITY_KEYS)
def random(ctx: Context) -> Sparsifier:
  """Random pruning at initialization with uniform / ER / ERK densities (Liu et al. 2022)."""
  masks = pruning.random(ctx.key, ctx.params, ctx.config.final_sparsity, ctx.config.distribution,
                         ctx.prunable)
  return with_masks(transforms.static_masks(ctx.inner, masks))


def _validate_snip(config) -> None:
  validate_sparsity(config)
  if config.snip_batch_size <= 0:
    raise parsing.ConfigError(
        f"snip_batch_size={config.snip_batch_size!r} must be a positive integer.")


@register("snip", validate=_validate_snip, keys={**SPARSITY_KEYS, "snip_batch_size": 128})
def snip(ctx: Context) -> Sparsifier:
  """SNIP (Lee et al. 2019): one-shot |g * w| on one training batch at initialization."""
  data = ctx.task.data
  n = min(ctx.config.snip_batch_size, data.num_train)
  perm = data_lib.epoch_permutation(ctx.key, 0, data.num_train)
  x, y = data_lib.batch_at(data.train_x, data.train_y, perm, 0, n)
  x, y = jax.device_get((x, y))  # beside the initial params (the data may lie on a mesh)
  grads, _ = jax.grad(ctx.task.loss, has_aux=True)(ctx.params, ctx.model_state, x, y, True)
  masks = pruning.snip(ctx.params, grads, ctx.config.final_sparsity, ctx.config.distribution,
                       ctx.prunable)
  return with_masks(transforms.static_masks(ctx.inner, masks))
