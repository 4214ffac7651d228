"""Sparsity-informed Adaptive Pruning (SAP) as an optax transformation.

Diao, Wang, Zhang, Yang, Ding & Tarokh, "Pruning Deep Neural Networks from a Sparsity
Perspective", ICLR 2023 (arXiv 2302.05601), Algorithm 1. At each pruning step t, SAP measures the
PQ Index I(w_t) of the retained weights (:mod:`sparsejax.pqi`), turns it into a lower bound r_t of
the weights to retain and prunes

    c_t = floor(d_t min(gamma (1 - r_t / d_t), beta)),  r_t = d_t (1 + eta_r)^{-q/(q-p)}
                                                              [1 - I(w_t)]^{qp/(q-p)}

of the d_t retained weights, those of smallest magnitude. The sparser the weights already are
(the higher their PQI), the more it prunes: the amount is the algorithm's, not a schedule's.

* :func:`prune_counts`: c_t per prunable leaf (``scope='layer'``: d_t and I(w_t) of each layer)
  or over the model (``scope='global'``: of all prunable weights as one vector, ranked together),
  as traced int32 counts.
* :func:`sap_pruning`: the transformation; the masks change inside ``jit`` on the steps a
  schedule names (``lax.cond``, no recompilation, no host round trip), the rest is
  :func:`sparsejax.transforms.scheduled_pruning`'s (pruned weights exactly 0.0 after every step,
  their optimizer state zeroed, masks read back with :func:`sparsejax.transforms.get_masks`).

Our reading of the paper, where it had to be interpreted:

* *When.* Algorithm 1 prunes after training to convergence, T times, retraining from the initial
  weights in between (the authors' code rewinds to them; T = 30 for MLPs and CNNs). Here the
  pruning steps are a schedule's update steps during one training, as in gradual magnitude
  pruning; the prune-retrain-rewind loop itself is not implemented.
* *Scopes.* The paper has neuron-wise, layer-wise and global variants; the layer-wise ("layer")
  and global ("global", the one of the paper's main results) are here; neuron-wise is not.
* *Rounding.* r_t is not rounded (the authors' code rounds it up: the same c_t when gamma = 1,
  at most about gamma weights fewer otherwise); exactly c_t weights are pruned, ties broken by
  the lowest index (the authors' code prunes those strictly below a threshold, fewer under
  ties).
* *Cap.* ``max_sparsity`` (not in the paper) stops pruning at a density of 1 - max_sparsity, per
  layer with scope "layer" and over the model with "global", so that a run can be compared with
  others at a given sparsity: a step never leaves fewer than ``round((1 - max_sparsity) n)`` of
  the n weights.
* *Defaults.* p = 0.5, q = 1, eta_r = 0, gamma = 1 (the paper's experiments: the authors' code
  runs them as ``si-0.5-1-0-1``) and beta = 0.9 (the authors' code).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparsejax import masks as masks_lib
from sparsejax import pqi, pruning
from sparsejax import scores as scores_lib
from sparsejax import transforms

PyTree = Any
SCOPES = ("layer", "global")


def check_scope(scope: Any) -> str:
  if scope not in SCOPES:
    raise ValueError(f"scope={scope!r} is not one of {list(SCOPES)}: 'layer' counts and ranks "
                     "each layer's weights by themselves, 'global' all prunable weights together "
                     "(the paper's main setting).")
  return scope


def _capped(count: jax.Array, kept: jax.Array, size: int, max_sparsity: float | None):
  """``count`` lowered so that at least round((1 - max_sparsity) size) of ``size`` stay."""
  if max_sparsity is None:
    return count
  floor = round((1.0 - max_sparsity) * size)
  return jnp.minimum(count, jnp.maximum(kept - floor, 0)).astype(jnp.int32)


def prune_counts(params: PyTree, masks: PyTree, *, p: float = pqi.P_DEFAULT,
                 q: float = pqi.Q_DEFAULT, eta_r: float = 0.0, gamma: float = 1.0,
                 beta: float = 0.9, scope: str = "global",
                 max_sparsity: float | None = None) -> PyTree:
  """SAP's c_t (Diao et al. 2023, Algorithm 1): how many retained weights to prune now.

  Args:
    params: the weights w_t (pruned ones are ignored, whatever their value).
    masks: their mask pytree (:mod:`sparsejax.masks`): d_t is the number of retained weights.
    p, q, eta_r, gamma, beta: the paper's hyperparameters (:func:`sparsejax.pqi.prune_count`).
    scope: "layer": c_t of each prunable leaf from its own PQI and d_t; "global": one c_t from
      the PQI and d_t of all prunable weights together.
    max_sparsity: optional cap: never leave fewer than round((1 - max_sparsity) n) of the n
      weights (of each layer, or of the model).

  Returns:
    scope "layer": a pytree shaped like ``masks`` of int32 counts (0 for leaves never pruned);
    scope "global": one int32.

  Raises:
    ValueError: naming a hyperparameter outside its range, or the first path where ``masks``
      does not fit ``params``.
  """
  p, q = pqi.check_pq(p, q)
  eta_r, gamma, beta = pqi.check_sap(eta_r, gamma, beta)
  check_scope(scope)
  if max_sparsity is not None:
    masks_lib.check_sparsity(max_sparsity, "max_sparsity")
  masks = masks_lib.conform(params, masks)
  formula = dict(p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta)
  if scope == "global":
    kept, total = masks_lib.count(masks)
    count = pqi.prune_count(pqi.global_pq_index(params, masks, p=p, q=q), kept, **formula)
    return _capped(count, kept, total, max_sparsity)
  indices = iter(pqi.layer_pq_index(params, masks, p=p, q=q).values())  # prunable, tree order

  def layer(m):
    if not masks_lib.is_prunable_mask(m):
      return jnp.int32(0)
    kept = jnp.sum(m, dtype=jnp.int32)
    return _capped(pqi.prune_count(next(indices), kept, **formula), kept, m.size, max_sparsity)

  return jax.tree.map(layer, masks)


def sap_pruning(inner: optax.GradientTransformation, schedule, *, p: float = pqi.P_DEFAULT,
                q: float = pqi.Q_DEFAULT, eta_r: float = 0.0, gamma: float = 1.0,
                beta: float = 0.9, scope: str = "global", max_sparsity: float | None = None,
                prunable: masks_lib.Prunable = None, initial_masks: PyTree | None = None,
                accumulation_steps: int = 1) -> optax.GradientTransformationExtraArgs:
  """SAP (Diao et al. 2023, Algorithm 1): PQI-guided magnitude pruning on a schedule's steps.

  At every step t where ``schedule.is_update_step(t)``, from the params before the step's update,
  :func:`prune_counts` says how many retained weights to prune (per layer or over the model) and
  the smallest magnitudes among them are pruned (:func:`sparsejax.pruning.layerwise_counts` /
  :func:`sparsejax.pruning.global_count`: exact counts, selected by counting, not sorting).
  Pruned weights stay pruned. The schedule's sparsity values are not used, only its steps.

  Example::

    steps = sparsejax.schedules.polynomial(0.9, begin_step=1000, end_step=9000, frequency=300)
    opt = sparsejax.sap.sap_pruning(optax.sgd(0.1, momentum=0.9), steps, max_sparsity=0.9)

  Args:
    inner: any optax optimizer.
    schedule: when to prune: an object with ``is_update_step(step)`` (:mod:`sparsejax.schedules`).
    p, q, eta_r, gamma, beta: the paper's hyperparameters (:func:`sparsejax.pqi.prune_count`).
    scope: "layer" or "global" (:func:`prune_counts`).
    max_sparsity: optional cap on the sparsity (per layer or of the model, with ``scope``).
    prunable: the rule for prunable leaves (:mod:`sparsejax.masks`); only without
      ``initial_masks``.
    initial_masks: masks to start from (default: keep everything).
    accumulation_steps: mini-batches per call of ``update``, as in
      :func:`sparsejax.transforms.scheduled_pruning`.

  Raises:
    ValueError: for a hyperparameter outside its range (naming it), both ``prunable`` and
      ``initial_masks``; TypeError for an inner optimizer or schedule that is none.
  """
  p, q = pqi.check_pq(p, q)
  eta_r, gamma, beta = pqi.check_sap(eta_r, gamma, beta)
  check_scope(scope)
  if max_sparsity is not None:
    masks_lib.check_sparsity(max_sparsity, "max_sparsity")
  if prunable is not None and initial_masks is not None:
    raise ValueError("sap_pruning got both prunable and initial_masks: the masks already say "
                     "which leaves are prunable; pass one of them.")
  transforms._check_inner(inner, "sap_pruning")
  transforms._check_schedule(schedule, "sap_pruning")
  transforms._check_accumulation_steps(accumulation_steps)
  hyper = dict(p=p, q=q, eta_r=eta_r, gamma=gamma, beta=beta, scope=scope,
               max_sparsity=max_sparsity)

  def initial(params):
    return masks_lib.ones_like(params, prunable) if initial_masks is None else initial_masks

  def remask(params, grads, masks, sparsity):
    del grads, sparsity  # SAP says how many; the schedule only when
    counts = prune_counts(params, masks, **hyper)
    scores = scores_lib.magnitude(params)
    if scope == "global":
      return pruning.global_count(scores, masks_lib.count(masks)[0] - counts, masks)
    kept = jax.tree.map(
        lambda m, c: jnp.sum(m, dtype=jnp.int32) - c if masks_lib.is_prunable_mask(m) else c,
        masks, counts)
    return pruning.layerwise_counts(scores, kept, masks)

  return transforms._scheduled(inner, schedule, initial, remask, accumulation_steps,
                               "sap_pruning")
