"""Sparsifiers ``grasp`` and ``synflow``: pruning at initialization beside ``snip``.

Both compute masks once, from the initial params, and train with them fixed
(:func:`sparsejax.transforms.static_masks`), pruned weights exactly 0.0.

- ``grasp`` (Wang, Zhang & Grosse 2020): keeps the highest w * Hg (:func:`sparsejax.pruning.grasp`)
  on a class-balanced batch of ``grasp_samples_per_class`` training examples per class (GraSP's
  code: 10), the logits divided by ``grasp_temperature`` (200) in the loss, the network in
  training mode as SNIP's.
- ``synflow`` (Tanaka et al. 2020): data-free, ``synflow_iterations`` rounds (100) of scoring the
  linearized network on an input of ones, in evaluation mode (SynFlow's code), its absolute params
  and absolute normalization statistics (:func:`sparsejax.pruning.synflow`).

Keys (defaults: the papers')::

  final_sparsity            0.9
  distribution              "uniform"  uniform | er | erk | global; both papers prune globally,
                                       as configs/grasp_*.py and synflow_*.py set
  grasp_samples_per_class   10
  grasp_temperature         200.0
  synflow_iterations        100
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data as data_lib
from experiments import parsing, trainer
from experiments.sparsifiers import (SPARSITY_KEYS, Context, Sparsifier, register,
                                     validate_sparsity, with_masks)
from sparsejax import masks as masks_lib
from sparsejax import pruning, transforms


def _positive(config, name: str, kind: tuple[type, ...], what: str) -> None:
  value = config[name]
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    raise parsing.ConfigError(f"{name}={value!r} must be a positive {what}.")


def _validate_grasp(config) -> None:
  validate_sparsity(config)
  _positive(config, "grasp_samples_per_class", (int,), "int (GraSP uses 10)")
  _positive(config, "grasp_temperature", (int, float), "number (GraSP uses 200)")


def _validate_synflow(config) -> None:
  validate_sparsity(config)
  _positive(config, "synflow_iterations", (int,), "int (SynFlow uses 100)")


def balanced_batch(key: jax.Array, data: data_lib.Dataset, per_class: int):
  """``per_class`` training examples of every class (fewer where a class has fewer), drawn in
  the order of a permutation by ``key``: GraSP's class-balanced batch, on the host."""
  labels = np.asarray(jax.device_get(data.train_y))
  order = np.asarray(jax.device_get(data_lib.epoch_permutation(key, 0, data.num_train)))
  picked = np.concatenate([order[labels[order] == c][:per_class]
                           for c in range(data.num_classes)])
  x = np.asarray(jax.device_get(data.train_x))[np.sort(picked)]
  return x, labels[np.sort(picked)]


@register("grasp", validate=_validate_grasp,
          keys={**SPARSITY_KEYS, "grasp_samples_per_class": 10, "grasp_temperature": 200.0})
def grasp(ctx: Context) -> Sparsifier:
  """GraSP (Wang et al. 2020): one-shot w * Hg on a class-balanced batch at initialization."""
  c = ctx.config
  x, y = balanced_batch(ctx.key, ctx.task.data, c.grasp_samples_per_class)
  model, model_state, t = ctx.task.model, ctx.model_state, float(c.grasp_temperature)

  def loss(params):
    logits, _ = model.apply(params, model_state, x, train=True)
    return trainer.cross_entropy(logits / t, y)

  masks = jax.jit(lambda p: pruning.grasp(p, loss, c.final_sparsity, c.distribution,
                                          ctx.prunable))(ctx.params)
  return with_masks(transforms.static_masks(ctx.inner, masks))


@register("synflow", validate=_validate_synflow, keys={**SPARSITY_KEYS, "synflow_iterations": 100})
def synflow(ctx: Context) -> Sparsifier:
  """Iterative Synaptic Flow Pruning (Tanaka et al. 2020): data-free, at initialization."""
  c = ctx.config
  model = ctx.task.model
  ones = jnp.ones((1, *ctx.task.data.train_x.shape[1:]), jnp.float32)
  model_state = jax.tree.map(lambda v: jnp.abs(v) if masks_lib.is_floating(v) else v,
                             jax.device_get(ctx.model_state))

  def forward(params):
    return model.apply(params, model_state, ones, train=False)[0]

  masks = jax.jit(lambda p: pruning.synflow(forward, p, c.final_sparsity,
                                            c.synflow_iterations, c.distribution,
                                            ctx.prunable))(ctx.params)
  return with_masks(transforms.static_masks(ctx.inner, masks))
