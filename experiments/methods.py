"""Sparse training methods of the runner: config -> optax optimizer wrapping the dense one.

A method is one function of a :class:`MethodContext`, registered in :data:`METHODS` under the name
the config's ``method`` key uses; the config accepts exactly the names of :func:`names`. Adding a
method means adding one function here (and its config keys in ``experiments/config.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from experiments import data as data_lib
from experiments.config import parse_duration
from sparsejax import masks as masks_lib
from sparsejax import pruning, schedules, transforms


@dataclasses.dataclass(frozen=True)
class MethodContext:
  config: ml_collections.ConfigDict
  inner: optax.GradientTransformation  # the dense optimizer
  params: Any                          # the initial params
  model_state: Any
  task: Any                            # experiments.trainer.Task
  key: jax.Array                       # for the method's own randomness
  prunable: masks_lib.Prunable


def dense(ctx: MethodContext) -> optax.GradientTransformation:
  return ctx.inner


def magnitude(ctx: MethodContext) -> optax.GradientTransformation:
  """Gradual magnitude pruning on Zhu & Gupta's polynomial schedule."""
  c, d = ctx.config, ctx.task.durations
  spe = d.steps_per_epoch
  begin = parse_duration(c.pruning_begin, spe, "pruning_begin")
  end = parse_duration(c.pruning_end, spe, "pruning_end", total=d.total)
  frequency = max(1, parse_duration(c.pruning_frequency, spe, "pruning_frequency"))
  schedule = schedules.polynomial(c.final_sparsity, begin, max(end, begin + 1), frequency,
                                  power=c.pruning_power)
  return transforms.magnitude_pruning(ctx.inner, schedule, c.distribution, ctx.prunable)


def random(ctx: MethodContext) -> optax.GradientTransformation:
  """Random pruning at initialization with uniform / ER / ERK densities (Liu et al. 2022)."""
  masks = pruning.random(ctx.key, ctx.params, ctx.config.final_sparsity, ctx.config.distribution,
                         ctx.prunable)
  return transforms.static_masks(ctx.inner, masks)


def snip(ctx: MethodContext) -> optax.GradientTransformation:
  """SNIP (Lee et al. 2019): one-shot |g * w| on one training batch at initialization."""
  data = ctx.task.data
  n = min(ctx.config.snip_batch_size, data.num_train)
  perm = data_lib.epoch_permutation(ctx.key, 0, data.num_train)
  x, y = data_lib.batch_at(data.train_x, data.train_y, perm, 0, n)
  grads, _ = jax.grad(ctx.task.loss, has_aux=True)(ctx.params, ctx.model_state, x, y, True)
  masks = pruning.snip(ctx.params, grads, ctx.config.final_sparsity, ctx.config.distribution,
                       ctx.prunable)
  return transforms.static_masks(ctx.inner, masks)


METHODS: dict[str, Callable[[MethodContext], optax.GradientTransformation]] = {
    "dense": dense,
    "magnitude": magnitude,
    "random": random,
    "snip": snip,
}

# The lottery-ticket experiment is not one optimizer but a sequence of trainings, run by
# experiments/imp.py (which builds on experiments.experiment, so it is not imported here).
LOTTERY_TICKETS = "imp"


def names() -> tuple[str, ...]:
  """Every value the config's ``method`` key accepts."""
  return (*METHODS, LOTTERY_TICKETS)
