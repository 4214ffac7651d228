"""The PQ Index (PQI) of weights, and the SAP pruning count it gives.

Diao, Wang, Zhang, Yang, Ding & Tarokh, "Pruning Deep Neural Networks from a Sparsity
Perspective", ICLR 2023 (arXiv 2302.05601).

* :func:`pq_index`: the paper's PQ Index (its definition of PQI) of one array, for 0 < p < q,

      I_{p,q}(w) = 1 - d^{1/q - 1/p} ||w||_p / ||w||_q,

  over the d retained entries of ``w`` when a mask is given (the paper's d_t: the weights that
  survive after t pruning iterations). It is 0 for a constant vector (the least sparse) and
  1 - d^{1/q - 1/p} for a one-hot vector (the sparsest); it does not change when ``w`` is scaled.
  Higher means sparser, i.e. more compressible.
* :func:`layer_pq_index` / :func:`global_pq_index`: the PQI of every prunable leaf of a params
  pytree, and of all of them concatenated (from per-leaf sums: nothing is concatenated).
* :func:`retained_lower_bound` / :func:`prune_count`: the two counts of the paper's Algorithm 1
  (Sparsity-informed Adaptive Pruning, SAP): the lower bound of the number of parameters to
  retain,

      r_t = d_t (1 + eta_r)^{-q/(q-p)} [1 - I(w_t)]^{qp/(q-p)},

  and the number to prune, c_t = floor(d_t min(gamma (1 - r_t / d_t), beta)).

:mod:`sparsejax.sap` trains with SAP as an optax transformation.

Numerics. Everything is a pure ``jnp`` function (``jit``/``vmap``-safe) computed in float32 (or
the input's wider float type). The norms are computed from |w| / max|w|, so no power of a tiny or
huge weight underflows or overflows, and the index is scale-invariant to rounding: with the
power means M_r(w) = (sum_i |w_i|^r / d)^{1/r}, d^{1/q-1/p} ||w||_p / ||w||_q = M_p(w) / M_q(w),
which is exactly 1 for a constant vector. A vector with no nonzero retained entry (all zeros, or
nothing retained, d = 0) has no defined PQI (0/0); we define it as 0, the value of a constant
vector, so that SAP prunes nothing more there (with eta_r = 0).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparsejax import masks as masks_lib

PyTree = Any

P_DEFAULT, Q_DEFAULT = 0.5, 1.0  # the paper's SAP experiments (the authors' code: si-0.5-1-0-1)


def check_pq(p: Any, q: Any) -> tuple[float, float]:
  """(p, q) as floats; raises a ValueError unless they are real numbers with 0 < p < q."""
  for name, value in (("p", p), ("q", q)):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
        or not math.isfinite(value)):
      raise ValueError(f"{name}={value!r} must be a finite real number: the PQ Index compares "
                       "the l_p and l_q norms with 0 < p < q (the paper's p=0.5, q=1.0).")
  if not 0 < p < q:
    raise ValueError(f"p={p!r}, q={q!r}: the PQ Index needs 0 < p < q (the paper's p=0.5, "
                     "q=1.0); with p >= q or p <= 0 it is no measure of sparsity.")
  return float(p), float(q)


class _Sums(NamedTuple):
  """The sufficient statistics of the PQI of some retained entries."""
  scale: jax.Array  # max |w| over them (0.0 if none is nonzero)
  sum_p: jax.Array  # sum of (|w| / scale)^p
  sum_q: jax.Array  # sum of (|w| / scale)^q
  count: jax.Array  # d: how many are retained (int32)


def _float(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(jnp.result_type(x), jnp.float32))


def _sums(w: Any, mask: Any, p: float, q: float) -> _Sums:
  a = _float(jnp.abs(jnp.asarray(w)))
  if mask is None:
    count = jnp.int32(a.size)
  else:
    a = jnp.where(mask, a, jnp.zeros((), a.dtype))
    count = jnp.sum(jnp.broadcast_to(mask, a.shape), dtype=jnp.int32)
  scale = jnp.max(a, initial=jnp.zeros((), a.dtype))
  x = a / jnp.where(scale > 0, scale, jnp.ones((), a.dtype))
  return _Sums(scale, jnp.sum(x ** p), jnp.sum(x ** q), count)


def _combine(parts: list[_Sums], p: float, q: float) -> _Sums:
  """The statistics of the union of disjoint parts: each part's sums rescaled to the largest."""
  scale = jnp.max(jnp.stack([s.scale for s in parts]))
  safe = jnp.where(scale > 0, scale, jnp.ones((), scale.dtype))
  ratios = [s.scale / safe for s in parts]
  return _Sums(scale, sum(s.sum_p * r ** p for s, r in zip(parts, ratios)),
               sum(s.sum_q * r ** q for s, r in zip(parts, ratios)),
               sum((s.count for s in parts), jnp.int32(0)))


def _index(s: _Sums, p: float, q: float) -> jax.Array:
  """1 - M_p / M_q from the statistics; 0 where no retained entry is nonzero."""
  defined = s.scale > 0  # then some entry is retained and sum_q >= 1 (the largest is 1.0)
  d = jnp.maximum(s.count, 1).astype(s.sum_p.dtype)
  ratio = (s.sum_p / d) ** (1.0 / p) / (jnp.where(defined, s.sum_q, 1.0) / d) ** (1.0 / q)
  # M_p <= M_q (power means); rounding must not make the index negative.
  return jnp.where(defined, jnp.maximum(1.0 - ratio, 0.0), 0.0)


def pq_index(w: Any, p: float = P_DEFAULT, q: float = Q_DEFAULT, mask: Any = None) -> jax.Array:
  """The PQ Index I_{p,q}(w) = 1 - d^{1/q - 1/p} ||w||_p / ||w||_q (Diao et al. 2023).

  Args:
    w: an array of any shape (flattened: the index of its entries as one vector).
    p, q: the norms compared, 0 < p < q (the paper's SAP uses p = 0.5, q = 1.0).
    mask: optional bool array of ``w``'s shape (or a scalar): the index of the retained entries
      only, with d their number (the paper's d_t); entries outside it count for nothing, whatever
      their value.

  Returns:
    A float32 scalar in [0, 1 - d^{1/q - 1/p}]: 0 for a constant vector, 1 - d^{1/q - 1/p} for
    a one-hot one; defined as 0 when no retained entry is nonzero (see the module docstring).

  Raises:
    ValueError: unless 0 < p < q; if ``mask`` is not bool or does not have ``w``'s shape.
  """
  p, q = check_pq(p, q)
  if mask is not None:
    if jnp.result_type(mask) != jnp.bool_:
      raise ValueError(f"mask has dtype {jnp.result_type(mask)}; a mask must be bool (True = "
                       "retained).")
    if jnp.shape(mask) not in ((), jnp.shape(w)):
      raise ValueError(f"mask has shape {jnp.shape(mask)}, but w has shape {jnp.shape(w)}: "
                       "give a mask of w's shape (or a scalar).")
  return _index(_sums(w, mask, p, q), p, q)


def _leaf_sums(params: PyTree, masks: PyTree, p: float, q: float) -> list[tuple[str, _Sums]]:
  """(params path, statistics) of every prunable leaf (a bool-array mask) of ``masks``."""
  out = [(path, _sums(w, m, p, q)) for path, w, m in masks_lib._fitted(params, masks)
         if masks_lib.is_prunable_mask(m)]
  if not out:
    raise ValueError("the masks have no prunable leaf (every mask leaf is a scalar True): the "
                     "PQ Index is over prunable weights; build the masks with "
                     "sparsejax.masks.ones_like(params) or read them from the optimizer state.")
  return out


def layer_pq_index(params: PyTree, masks: PyTree, *, p: float = P_DEFAULT,
                   q: float = Q_DEFAULT) -> dict[str, jax.Array]:
  """The PQ Index of the retained weights of every prunable leaf, keyed by its params path
  (``jax.tree_util.keystr``, as :func:`sparsejax.masks.summary` names them): the paper's
  layer-wise PQI.

  ``masks`` is a mask pytree (:mod:`sparsejax.masks`); leaves with a scalar ``True`` mask are
  never pruned and have no entry. A dense model's: ``layer_pq_index(params,
  sparsejax.masks.ones_like(params))``.
  """
  p, q = check_pq(p, q)
  return {path: _index(s, p, q) for path, s in _leaf_sums(params, masks, p, q)}


def global_pq_index(params: PyTree, masks: PyTree, *, p: float = P_DEFAULT,
                    q: float = Q_DEFAULT) -> jax.Array:
  """The PQ Index of all retained prunable weights as one vector (the paper's global PQI), from
  per-leaf sums rescaled to the largest weight (nothing is concatenated)."""
  p, q = check_pq(p, q)
  return _index(_combine([s for _, s in _leaf_sums(params, masks, p, q)], p, q), p, q)


def _check_number(name: str, value: Any, ok, requirement: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or not ok(value)):
    raise ValueError(f"{name}={value!r} must be {requirement}.")
  return float(value)


def _check_eta(eta_r: Any) -> float:
  return _check_number("eta_r", eta_r, lambda v: v >= 0, ">= 0 (the compression hyperparameter "
                       "eta_r; the paper's experiments use 0)")


def check_sap(eta_r: Any, gamma: Any, beta: Any) -> tuple[float, float, float]:
  """(eta_r, gamma, beta) as floats; raises a ValueError naming a value out of its range."""
  return (_check_eta(eta_r),
          _check_number("gamma", gamma, lambda v: v > 0, "> 0 (the scaling factor of the "
                        "pruning ratio; the paper's experiments use 1)"),
          _check_number("beta", beta, lambda v: 0 < v <= 1, "in (0, 1] (the largest fraction "
                        "of the retained weights pruned at once; the authors' code uses 0.9)"))


def retained_lower_bound(index: Any, d: Any, *, p: float = P_DEFAULT, q: float = Q_DEFAULT,
                         eta_r: float = 0.0) -> jax.Array:
  """SAP's lower bound of the parameters to retain (Diao et al. 2023, Algorithm 1):

      r_t = d_t (1 + eta_r)^{-q/(q-p)} [1 - I(w_t)]^{qp/(q-p)}

  for PQI ``index`` = I(w_t) of the ``d`` = d_t retained weights; a float32, not rounded (the
  authors' code rounds it up: the same c_t when gamma = 1, since floor(d - r) = d - ceil(r), and
  at most about gamma weights fewer otherwise).
  """
  p, q = check_pq(p, q)
  return jnp.asarray(d, jnp.float32) * _retained_fraction(index, p, q, _check_eta(eta_r))


def _retained_fraction(index, p: float, q: float, eta_r: float) -> jax.Array:
  """r_t / d_t."""
  kept = 1.0 - jnp.clip(jnp.asarray(index, jnp.float32), 0.0, 1.0)
  return (1.0 + eta_r) ** (-q / (q - p)) * kept ** (q * p / (q - p))


def prune_count(index: Any, d: Any, *, p: float = P_DEFAULT, q: float = Q_DEFAULT,
                eta_r: float = 0.0, gamma: float = 1.0, beta: float = 0.9) -> jax.Array:
  """SAP's number of parameters to prune (Diao et al. 2023, Algorithm 1):

      c_t = floor(d_t min(gamma (1 - r_t / d_t), beta))

  with r_t from :func:`retained_lower_bound`; an int32 in [0, floor(beta d_t)] (traced under
  ``jit``). Defaults: the paper's p = 0.5, q = 1, eta_r = 0, gamma = 1 (its experiments) and
  beta = 0.9 (the authors' code).
  """
  p, q = check_pq(p, q)
  eta_r, gamma, beta = check_sap(eta_r, gamma, beta)
  d = jnp.asarray(d, jnp.float32)
  ratio = jnp.clip(gamma * (1.0 - _retained_fraction(index, p, q, eta_r)), 0.0, beta)
  return jnp.floor(d * ratio).astype(jnp.int32)
