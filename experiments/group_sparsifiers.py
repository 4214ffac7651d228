"""Group sparsifiers: the Only-Train-Once optimizers, which zero whole channels and neurons.

Registered with the option ``groups=True`` (the ``structured`` protocol accepts exactly these) and
``protocol="structured"`` (``method=hesso`` selects that protocol). The groups are found by
tracing the model (:func:`model_groups`, :func:`sparsejax.structured.discover.discover`); the
optimizers wrap the config's dense optimizer:

- ``hesso``: HESSO (Chen et al., arXiv 2409.09085), K = floor(G * ``target_group_sparsity``)
  groups forgotten over ``pruning_periods`` periods of the ``pruning_steps`` after
  ``start_pruning_step``;
- ``hesso_cric``: HESSO with CRIC's corrective cycles (the same keys);
- ``hspg``: HSPG (OTOv1, Chen et al., NeurIPS 2021), half-space steps from ``start_pruning_step``
  with the group-lasso weight ``hspg_lambda``;
- ``dhspg``: DHSPG (OTOv2, ICLR 2023), a one-time partition at ``start_pruning_step`` into
  ``target_group_sparsity`` (+ ``dhspg_tolerance``) penalized groups with adaptive lambdas.

Durations may be percentages of the training (OTO's tutorials start pruning after 10% of the
steps and finish after a further 10-25%).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from experiments import parsing, trainer
from experiments.models import Model
from experiments.sparsifiers import Context, Sparsifier, register
from sparsejax.structured import discover, groups as groups_lib, hesso, hspg

_HESSO_KEYS = {"target_group_sparsity": 0.7, "start_pruning_step": "10%", "pruning_periods": 10,
               "pruning_steps": "10%"}
_HSPG_KEYS = {"start_pruning_step": "10%", "hspg_lambda": 1e-3, "hspg_epsilon": 0.0}
_DHSPG_KEYS = {**_HSPG_KEYS, "target_group_sparsity": 0.7, "dhspg_tolerance": 0.05,
               "dhspg_lambda_amplify": 1.1, "dhspg_lambda_cap": 10.0}


@functools.lru_cache(maxsize=32)
def model_groups(model: Model) -> groups_lib.Groups:
  """The zero-invariant groups of ``model``, found by tracing its evaluation-mode apply."""
  params, state = jax.eval_shape(model.init, jax.random.key(0))
  x = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
  return discover.discover(lambda p, s, inputs: model.apply(p, s, inputs, train=False)[0],
                           params, x, state=state)


def group_masks(groups: groups_lib.Groups, params) -> object:
  """Masks that drop the groups whose params are exactly zero now."""
  return groups_lib.masks(groups, params, ~groups_lib.is_zero(groups, params))


def _sparsifier(groups: groups_lib.Groups, tx) -> Sparsifier:
  return Sparsifier(tx, lambda opt_state, params: group_masks(groups, params))


def _steps(ctx: Context, key: str) -> int:
  d = ctx.task.durations
  return parsing.parse_duration(ctx.config[key], d.steps_per_epoch, key, total=d.total)


def _validate_target(config) -> None:
  parsing.check_fraction("target_group_sparsity", config.target_group_sparsity)


def _validate_hesso(config) -> None:
  _validate_target(config)
  parsing.check_durations(config, percent=["start_pruning_step", "pruning_steps"])
  if config.pruning_periods < 1:
    raise parsing.ConfigError(f"pruning_periods={config.pruning_periods!r} must be >= 1 "
                              "(OTO's tutorials use 10).")


def _hesso_args(ctx: Context) -> dict:
  c = ctx.config
  steps = max(_steps(ctx, "pruning_steps"), c.pruning_periods)
  return dict(warmup_steps=_steps(ctx, "start_pruning_step"), pruning_periods=c.pruning_periods,
              pruning_steps=steps)


@register("hesso", keys=_HESSO_KEYS, validate=_validate_hesso, groups=True,
          protocol="structured")
def hesso_sparsifier(ctx: Context) -> Sparsifier:
  """HESSO (arXiv 2409.09085) around the config's optimizer."""
  groups = model_groups(ctx.task.model)
  return _sparsifier(groups, hesso.hesso(ctx.inner, groups, ctx.config.target_group_sparsity,
                                         **_hesso_args(ctx)))


@register("hesso_cric", keys=_HESSO_KEYS, validate=_validate_hesso, groups=True,
          protocol="structured")
def hesso_cric_sparsifier(ctx: Context) -> Sparsifier:
  """HESSO with CRIC's layer probes and corrective cycles; the loss reaches it as ``value``."""
  groups = model_groups(ctx.task.model)
  return _sparsifier(groups, hesso.hesso_cric(ctx.inner, groups,
                                              ctx.config.target_group_sparsity,
                                              **_hesso_args(ctx)))


def _validate_hspg(config) -> None:
  parsing.check_durations(config, percent=["start_pruning_step"])
  if config.hspg_lambda < 0:
    raise parsing.ConfigError(f"hspg_lambda={config.hspg_lambda!r} must be >= 0.")
  if config.hspg_epsilon < 0:
    raise parsing.ConfigError(f"hspg_epsilon={config.hspg_epsilon!r} must be >= 0.")


def _schedule(ctx: Context):
  return trainer.learning_rate_schedule(ctx.config, ctx.task.durations)


@register("hspg", keys=_HSPG_KEYS, validate=_validate_hspg, groups=True, protocol="structured")
def hspg_sparsifier(ctx: Context) -> Sparsifier:
  """HSPG (OTOv1) around the config's optimizer, with its learning-rate schedule."""
  c = ctx.config
  groups = model_groups(ctx.task.model)
  return _sparsifier(groups, hspg.hspg(ctx.inner, groups, learning_rate=_schedule(ctx),
                                    lmbda=c.hspg_lambda, epsilon=c.hspg_epsilon,
                                    start_step=_steps(ctx, "start_pruning_step")))


def _validate_dhspg(config) -> None:
  _validate_hspg(config)
  _validate_target(config)
  if not 0 <= config.dhspg_tolerance < 1:
    raise parsing.ConfigError(f"dhspg_tolerance={config.dhspg_tolerance!r} must be in [0, 1).")


@register("dhspg", keys=_DHSPG_KEYS, validate=_validate_dhspg, groups=True,
          protocol="structured")
def dhspg_sparsifier(ctx: Context) -> Sparsifier:
  """DHSPG (OTOv2) around the config's optimizer, with its learning-rate schedule."""
  c = ctx.config
  groups = model_groups(ctx.task.model)
  return _sparsifier(groups, hspg.dhspg(
      ctx.inner, groups, c.target_group_sparsity, learning_rate=_schedule(ctx),
      start_step=_steps(ctx, "start_pruning_step"), lmbda=c.hspg_lambda,
      lmbda_amplify=c.dhspg_lambda_amplify, hat_lmbda_coeff=c.dhspg_lambda_cap,
      epsilon=c.hspg_epsilon, tolerance=c.dhspg_tolerance))
