"""Forward-time masks: PDP soft masks, straight-through masks, and magnitude N:M masks.

Every function here is pure: params (and a sparsity) in, masks or *effective params* out, to be
applied inside the user's loss; params are never mutated. All of them work under ``jit`` (with a
traced sparsity or step) and ``vmap`` (over replicates of the params).

**PDP** (Cho, Adya & Naik, "PDP: Parameter-free Differentiable Pruning is All You Need",
NeurIPS 2023). For a layer W at sparsity r, t is the threshold halfway between the smallest kept
and the largest pruned magnitude when the ``k = round((1 - r) n)`` largest magnitudes are kept
(the count convention of :mod:`sparsejax.pruning`); it follows the weights (recomputed whenever
they change: :func:`thresholds` computes it once per training step for every forward pass of that
step) and no gradient flows through it (``lax.stop_gradient``). The soft mask is the paper's

    m(w) = exp(w^2 / tau) / (exp(w^2 / tau) + exp(t^2 / tau)) = sigmoid((w^2 - t^2) / tau),

and the forward pass uses ``W * m(W)`` (:func:`apply`). At the end, the hard mask keeps
``m >= 0.5``, i.e. ``|w| >= t``: :func:`hard_masks` returns it as a regular bool mask pytree of
:mod:`sparsejax.masks`, derived from the counting selection itself so that it keeps exactly k
weights even where magnitudes tie at t (it coincides with ``m >= 0.5`` away from ties and from
float rounding of the midpoint). The threshold is found by counting
(:func:`sparsejax.selection.magnitude_threshold`: compare-and-count passes, started from the last
step's threshold when :func:`thresholds` is given ``previous``, or from a sample of about 256
magnitudes), never by sorting the layer; N:M blocks rank their m entries by counting too.

Scopes (``scope=``) say what a magnitude is and where its threshold applies:

* ``"unstructured"``: each weight, one threshold per layer;
* ``"channel"``: each output channel (the last axis: ``(in, out)`` dense and ``HWIO`` conv
  kernels) by its L2 norm, one threshold per layer and one mask value per channel,
  ``sigmoid((||w_c||^2 - t^2) / tau)`` broadcast over the channel;
* ``"nm"``: blocks of ``m`` consecutive weights along the input axis (axis -2: ``in`` of a dense
  kernel, ``I`` of an HWIO kernel), one threshold per block halfway between its n-th and
  (n+1)-th largest magnitudes, so that the hard mask keeps exactly n of every m.

**Schedule** (:func:`layer_targets`, :func:`ramp`): dense warm-up for ``warmup`` epochs (or
steps); at its end the per-layer targets r_l are fixed once by one global magnitude ranking over
all prunable weights; then r_l(e) = min(1, eps (e - s + 1)) r_l with s = ``warmup`` and
eps = ``rate``. A layer whose current sparsity keeps every weight gets the mask 1 exactly (not
the formula with t = 0, which would scale small weights by about 1/2), so the warm-up trains the
plain weights.

Interpretations, and what we could check: the paper's text beyond its abstract was not available
to us. The schedule, tau = 1e-4 and eps = 0.015 are those of re-implementations that attribute
them to the paper's Appendix D (no pruning during epochs 0 to s - 1, per-layer targets from one
global magnitude sort at epoch s, then the linear ramp; defaults tau = 1e-4, eps = 0.015, s = 16
on CIFAR-10), not verified against the paper itself. The abstract only says that PDP applies to
N:M and channel pruning: the N:M threshold (per block, between the n-th and (n+1)-th largest
magnitudes) and the channel unit (the L2 norm of an output channel) are our reading. In the
``"nm"`` scope the pattern fixes the sparsity at 1 - n/m and ``sparsities`` is ignored; for a
dense warm-up there, use the params themselves until the warm-up ends.

**Straight-through masks** (:func:`ste_apply`, :func:`ste_masks`): the forward value is
``params * mask`` (pruned weights exactly 0.0) and the gradient with respect to the params is the
dense one (the identity through the mask), as in straight-through estimators of sparse training.

**Magnitude N:M masks** (:func:`nm_masks`, :func:`parse_nm`): exactly n of every m consecutive
weights along the input axis, the largest magnitudes, ties to the lowest index.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import distributions
from sparsejax import masks as masks_lib
from sparsejax import nm as nm_lib
from sparsejax import selection

PyTree = Any

# Defaults of re-implementations, attributed there to the paper's Appendix D (see module docstring).
DEFAULT_TAU = 1e-4
DEFAULT_RATE = 0.015
SCOPES = ("unstructured", "channel", "nm")

_F32 = jnp.float32


# --- argument checks ---------------------------------------------------------------------------

def _check_tau(tau: Any) -> None:
  if isinstance(tau, jax.core.Tracer):
    return
  if np.ndim(tau) != 0:
    raise ValueError(f"tau must be one scalar temperature, got an array of shape {np.shape(tau)}.")
  value = float(tau)
  if not (np.isfinite(value) and value > 0.0):
    raise ValueError(
        f"tau={value!r} must be a positive, finite temperature (the paper's default is "
        f"{DEFAULT_TAU}): it sets how sharply the soft mask sigmoid((w^2 - t^2) / tau) switches "
        "at the threshold t.")


def _check_scope(scope: Any) -> None:
  if scope not in SCOPES:
    raise ValueError(
        f"scope={scope!r} is unknown; choose one of {list(SCOPES)}: 'unstructured' (each weight), "
        "'channel' (each output channel by its L2 norm) or 'nm' (n of every m consecutive "
        "weights along the input axis).")


def parse_nm(spec: str) -> tuple[int, int]:
  """``"2:4"`` -> ``(2, 4)``: an N:M pattern keeps N of every M consecutive weights.

  Raises:
    ValueError: naming ``spec`` unless it is ``"N:M"`` with integers 0 < N < M.
  """
  parts = spec.split(":") if isinstance(spec, str) else []
  if len(parts) != 2 or not all(p.strip().isdecimal() for p in parts):
    raise ValueError(
        f"N:M pattern {spec!r} is not of the form 'N:M' with two integers, e.g. '2:4' (keep 2 of "
        "every 4 consecutive weights).")
  n, m = int(parts[0]), int(parts[1])
  if not 0 < n < m:
    raise ValueError(
        f"N:M pattern {spec!r}: N={n} and M={m} must satisfy 0 < N < M (N of every M consecutive "
        "weights are kept), e.g. '2:4'.")
  return n, m


def _check_layer_sparsity(value: Any, name: str = "sparsity") -> None:
  """Raises unless a concrete ``value`` is a scalar in [0, 1]; traced values pass.

  One layer may be pruned entirely (1.0): a global ranking (:func:`layer_targets`) can ask for it.
  A sparsity given once for every layer goes through :func:`sparsejax.masks.check_sparsity`.
  """
  if isinstance(value, jax.core.Tracer):
    return
  if np.ndim(value) != 0:
    raise ValueError(f"{name} has shape {np.shape(value)}; a sparsity is one scalar per leaf.")
  if np.asarray(value).dtype.kind not in "iuf":
    raise TypeError(f"{name}={value!r} is not a number.")
  number = float(value)
  if not 0.0 <= number <= 1.0:
    raise ValueError(
        f"{name}={number!r} is outside [0, 1]: a layer's sparsity is the fraction of its weights "
        "pruned (1 prunes the whole layer).")


def _check_int(name: str, value: Any, minimum: int, requirement: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f"{name}={value!r} must be {requirement}.")
  return int(value)


def _check_rate(rate: Any) -> None:
  if isinstance(rate, jax.core.Tracer):
    return
  value = float(rate)
  if not (np.isfinite(value) and value > 0.0):
    raise ValueError(
        f"rate={value!r} must be a positive, finite ramp rate eps (the fraction of each layer's "
        f"target added per epoch; the paper's default is {DEFAULT_RATE}).")


# --- one array -------------------------------------------------------------------------------

def _kept_count(sparsity: Any, size: int) -> jax.Array:
  """``round((1 - sparsity) * size)``: the count convention of :mod:`sparsejax.pruning`."""
  return jnp.round((1.0 - jnp.asarray(sparsity, _F32)) * size).astype(jnp.int32)


def _midpoint(a: jax.Array, keep: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
  """Halfway between the smallest kept and the largest pruned of magnitudes ``a``.

  0.0 where nothing is pruned, +inf where nothing is kept; NaN magnitudes are ignored.
  """
  valid = ~jnp.isnan(a)
  smallest_kept = jnp.min(jnp.where(keep & valid, a, jnp.inf), axis=axis, keepdims=keepdims,
                          initial=jnp.inf)
  largest_pruned = jnp.max(jnp.where(~keep & valid, a, -jnp.inf), axis=axis, keepdims=keepdims,
                           initial=-jnp.inf)
  # Halves first: no overflow for magnitudes near the float32 maximum.
  t = smallest_kept / 2 + largest_pruned / 2
  return jnp.where(largest_pruned == -jnp.inf, jnp.zeros((), _F32), t)


def _select(a: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(exactly min(k, n) largest of ``a`` kept, ties to the lowest index; their threshold)."""
  (keep,) = selection.top_k_masks([selection.order_keys(a)], k)
  return keep, _midpoint(a, keep)


def _searched_midpoint(a: jax.Array, k: jax.Array, start: jax.Array | None = None) -> jax.Array:
  """:func:`_select`'s threshold (:func:`sparsejax.selection.magnitude_threshold`, which searches
  from ``start`` when given), without the search (``lax.cond``) where nothing is pruned (0.0: the
  dense warm-up) or nothing kept (+inf)."""
  edge = jnp.where(k <= 0, jnp.inf, 0.0).astype(_F32)
  return lax.cond((k >= a.size) | (k <= 0), lambda: edge,
                  lambda: selection.magnitude_threshold(a, k, start))


def _sigmoid_mask(squares: jax.Array, t: jax.Array, tau: Any) -> jax.Array:
  """sigmoid((w^2 - t^2) / tau); t = +inf (nothing kept) gives exactly 0."""
  return jax.nn.sigmoid((squares - jnp.square(t)) / jnp.asarray(tau, _F32))


def _magnitudes(w: jax.Array) -> jax.Array:
  return lax.stop_gradient(jnp.abs(jnp.asarray(w).astype(_F32)))


def threshold(w: jax.Array, sparsity: Any) -> jax.Array:
  """PDP's threshold t of one array at ``sparsity`` (a float32 scalar, no gradient).

  t lies halfway between the smallest kept and the largest pruned magnitude when the
  ``round((1 - sparsity) * w.size)`` largest magnitudes are kept (ties to the lowest flat index),
  found by counting (:func:`sparsejax.selection.magnitude_threshold`), not by sorting ``w``; the
  hard masks keep the same k (:func:`sparsejax.selection.top_k_masks`). With nothing
  pruned t = 0.0 (every ``|w| >= t``); with nothing kept t = +inf. ``sparsity`` is in [0, 1]
  (1 prunes the whole array) and may be traced.
  """
  _check_layer_sparsity(sparsity)
  return _leaf_threshold("w", w, sparsity, "unstructured", 2, 4)


def soft_mask(w: jax.Array, sparsity: Any, tau: Any = DEFAULT_TAU) -> jax.Array:
  """PDP's soft mask of one array, unstructured: ``sigmoid((w^2 - t^2) / tau)``.

  t is :func:`threshold` (no gradient through it): the paper's m(w) = exp(w^2/tau) /
  (exp(w^2/tau) + exp(t^2/tau)), whose gradient with respect to w is its own (the paper's
  boosting of weights near t). Where ``sparsity`` prunes nothing the mask is exactly 1 (the dense
  warm-up trains the plain weights). Returned in ``w``'s dtype; ``sparsity`` and ``tau`` may be
  traced.
  """
  _check_tau(tau)
  _check_layer_sparsity(sparsity)
  return _leaf_soft("w", w, sparsity, tau, "unstructured", 2, 4)


_blocked = nm_lib.blocked


def _channel_squares(x: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)))


def _leaf_threshold(path: str, w: Any, sparsity: Any, scope: str, n: int, m: int,
                    start: jax.Array | None = None) -> jax.Array:
  """t of one prunable leaf: a float32 scalar, or one per N:M block (shape of ``_blocked`` with
  axis -2 of length 1). ``start``: a guess of the scalar t, where the search begins."""
  if scope == "nm":
    a = _magnitudes(w)
    keep = nm_lib.block_top_k(a, n, m, name=path)
    return _midpoint(_blocked(a, m), _blocked(keep, m), axis=-2, keepdims=True)
  w = lax.stop_gradient(jnp.asarray(w))
  a = _magnitudes(w) if scope == "unstructured" else jnp.sqrt(_channel_squares(w.astype(_F32)))
  return _searched_midpoint(a, _kept_count(sparsity, a.size), start)


def _leaf_soft_at(w: Any, t: jax.Array, sparsity: Any, tau: Any, scope: str,
                  m: int) -> jax.Array:
  """The soft mask of one prunable leaf at its threshold t (:func:`_leaf_threshold`)."""
  w = jnp.asarray(w)
  x = w.astype(_F32)
  if scope == "nm":
    return _sigmoid_mask(_blocked(jnp.square(x), m), t, tau).reshape(w.shape).astype(w.dtype)
  if scope == "unstructured":
    size, squares = w.size, jnp.square(x)
  else:
    size, squares = w.shape[-1], _channel_squares(x)
  mask = jnp.where(_kept_count(sparsity, size) >= size, jnp.ones((), _F32),
                   _sigmoid_mask(squares, t, tau))
  return jnp.broadcast_to(mask, w.shape).astype(w.dtype)


def _leaf_soft(path: str, w: Any, sparsity: Any, tau: Any, scope: str, n: int, m: int,
               t: jax.Array | None = None) -> jax.Array:
  if t is None:
    t = _leaf_threshold(path, w, sparsity, scope, n, m)
  return _leaf_soft_at(w, t, sparsity, tau, scope, m)


def _leaf_hard(path: str, w: Any, sparsity: Any, scope: str, n: int, m: int) -> jax.Array:
  a = _magnitudes(w)
  if scope == "unstructured":
    return _select(a, _kept_count(sparsity, a.size))[0]
  if scope == "channel":
    norms = jnp.sqrt(jnp.sum(jnp.square(a), axis=tuple(range(a.ndim - 1))))
    keep, _ = _select(norms, _kept_count(sparsity, norms.size))
    return jnp.broadcast_to(keep, a.shape)
  return nm_lib.block_top_k(a, n, m, name=path)


# --- whole params ------------------------------------------------------------------------------

_SPARSITIES_HINT = (
    "Give one sparsity for every prunable leaf: a scalar, a pytree shaped like the params (e.g. "
    "sparsejax.pdp.layer_targets or ramp), or a dict keyed by the leaves' key paths "
    "(jax.tree_util.keystr).")


def _sparsity_by_path(params: PyTree, sparsities: Any, selected: list[str]) -> dict[str, Any]:
  """The sparsity of every selected leaf, by key path, from a scalar, a tree or a path dict."""
  if sparsities is None:
    raise ValueError(f"sparsities=None: the unstructured and channel scopes need sparsities. "
                     f"{_SPARSITIES_HINT}")
  paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  if (isinstance(sparsities, Mapping) and sparsities
      and all(isinstance(key, str) and key[:1] in "[." for key in sparsities)):
    unknown = [key for key in sparsities if key not in paths]
    if unknown:
      raise ValueError(f"sparsities names {unknown[0]}, which is not a leaf of the params. "
                       f"{_SPARSITIES_HINT}")
    missing = [path for path in selected if path not in sparsities]
    if missing:
      raise ValueError(f"sparsities has no entry for the prunable leaf {missing[0]}. "
                       f"{_SPARSITIES_HINT}")
    by_path = {path: sparsities[path] for path in selected}
  elif jax.tree_util.treedef_is_leaf(jax.tree.structure(sparsities)):
    masks_lib.check_sparsity(sparsities, "sparsities")
    by_path = {path: sparsities for path in selected}
  else:
    leaves = masks_lib.check_structure(params, sparsities, "params", "sparsities",
                                       _SPARSITIES_HINT)
    values = {path: s for path, _, s in leaves}
    by_path = {path: values[path] for path in selected}
  for path, s in by_path.items():
    _check_layer_sparsity(s, f"the sparsity for {path}")
  return by_path


def _map_prunable(params: PyTree, sparsities: Any, scope: str, n: int, m: int,
                  prunable: masks_lib.Prunable, fn, default, per_leaf: PyTree = None,
                  per_leaf_name: str = "") -> PyTree:
  """``fn(path, leaf, sparsity, n, m, extra)`` on prunable leaves, ``default(leaf)`` on the
  others; ``extra`` is the leaf of ``per_leaf`` (a pytree shaped like the params) or None."""
  _check_scope(scope)
  selected = masks_lib.prunable_paths(params, prunable)
  if scope == "nm":
    n, m = nm_lib.check_nm(n, m)
    by_path = dict.fromkeys(selected)
  else:
    by_path = _sparsity_by_path(params, sparsities, selected)
  extra = dict.fromkeys(selected)
  if per_leaf is not None:
    hint = f"Pass the {per_leaf_name} that sparsejax.pdp.thresholds returned for these params."
    leaves = masks_lib.check_structure(params, per_leaf, "params", per_leaf_name, hint)
    for path, leaf, value in leaves:
      if path in extra:
        _check_threshold_leaf(path, leaf, value, scope, m, per_leaf_name, hint)
        extra[path] = value

  def leaf_fn(path, leaf):
    path = jax.tree_util.keystr(path)
    if path not in by_path:
      return default(leaf)
    return fn(path, leaf, by_path[path], n, m, extra[path])

  return jax.tree_util.tree_map_with_path(leaf_fn, params)


def _check_threshold_leaf(path: str, leaf: Any, value: Any, scope: str, m: int, name: str,
                          hint: str) -> None:
  shape = tuple(np.shape(leaf))
  if scope == "nm":
    nm_lib.check_leaf(path, leaf, m)
    expected, unit = (*shape[:-2], shape[-2] // m, 1, shape[-1]), f"one per block of {m}"
  else:
    expected, unit = (), "one scalar per leaf"
  if tuple(np.shape(value)) != expected:
    raise ValueError(
        f"The {name} hold shape {tuple(np.shape(value))} for {path} (shape {shape}), but the "
        f"{scope!r} scope has {unit}: shape {expected}. {hint}")


def thresholds(params: PyTree, sparsities: Any = None, scope: str = "unstructured", n: int = 2,
               m: int = 4, prunable: masks_lib.Prunable = None,
               previous: PyTree = None) -> PyTree:
  """PDP's thresholds t of every prunable leaf, as :func:`soft_masks` computes them.

  A pytree shaped like the params: a float32 scalar per prunable leaf (``"unstructured"``,
  ``"channel"``), one per N:M block (``"nm"``: the leaf blocked along its input axis, that axis
  of length 1), and 0.0 for leaves never pruned; no gradient. Pass it back as ``thresholds=`` to
  :func:`apply` or :func:`soft_masks` to use them without searching again: t depends only on the
  params and the sparsities, so a training step needs it once, after the params change, however
  many forward passes use it (the re-implementations recompute it after every optimizer step).
  Arguments as in :func:`soft_masks`.

  ``previous``: the thresholds of the params one optimizer step earlier (this function's result
  then), where each layer's search starts (:func:`sparsejax.selection.magnitude_threshold`). The
  result is the same with or without them, exactly; they only make it cheaper: in training the
  kept count at the previous t is off by a few weights (LeNet-300-100's ``dense1`` on
  Fashion-MNIST: by 2 to 9 in the median), so a few counting passes find the new t instead of a
  dozen. Ignored in the ``"nm"`` scope.
  """
  return _map_prunable(
      params, sparsities, scope, n, m, prunable,
      lambda path, w, s, n, m, start: _leaf_threshold(path, w, s, scope, n, m, start),
      lambda _: jnp.zeros((), _F32), previous, "previous thresholds")


def soft_masks(params: PyTree, sparsities: Any = None, tau: Any = DEFAULT_TAU,
               scope: str = "unstructured", n: int = 2, m: int = 4,
               prunable: masks_lib.Prunable = None, thresholds: PyTree = None) -> PyTree:
  """PDP soft masks of every prunable leaf (float, the leaf's shape and dtype).

  Leaves that are never pruned carry a scalar ``True`` (as in :mod:`sparsejax.masks`), which
  multiplies as 1. ``sparsities``: one scalar for every prunable leaf (in [0, 1)), or one per
  leaf (in [0, 1]: a global ranking may prune a whole layer) as a pytree shaped like the params
  (its values at leaves that are not prunable are ignored) or a dict keyed by key paths; ignored
  (may be None) in the ``"nm"`` scope. See the module docstring for the scopes.

  ``thresholds``: the result of :func:`thresholds` for these very params, sparsities and scope
  (computed once, e.g. when the params were updated); None searches for them here. Thresholds of
  other params are not detected and give other masks.

  Raises:
    ValueError: for a bad tau, scope, n/m or sparsity, or (``"nm"``) a prunable leaf whose input
      axis is not a multiple of m, naming the leaf and its shape; for ``thresholds`` that do not
      fit the params and scope.
  """
  _check_tau(tau)
  return _map_prunable(
      params, sparsities, scope, n, m, prunable,
      lambda path, w, s, n, m, t: _leaf_soft(path, w, s, tau, scope, n, m, t),
      lambda _: jnp.array(True), thresholds, "thresholds")


def apply(params: PyTree, sparsities: Any = None, tau: Any = DEFAULT_TAU,
          scope: str = "unstructured", n: int = 2, m: int = 4,
          prunable: masks_lib.Prunable = None, thresholds: PyTree = None) -> PyTree:
  """PDP's effective params ``W * m(W)`` for every prunable leaf; the other leaves untouched.

  The forward-time function of PDP: call it inside the loss, on the params being trained, with
  this step's per-layer sparsities (:func:`ramp`). Arguments as in :func:`soft_masks`; with
  ``thresholds`` the forward pass does no search at all (the runner's ``pdp`` sparsifier keeps
  them in its optimizer state, computed once per update from the new params).
  """
  _check_tau(tau)
  return _map_prunable(
      params, sparsities, scope, n, m, prunable,
      lambda path, w, s, n, m, t: (w * _leaf_soft(path, w, s, tau, scope, n, m, t)
                                   ).astype(w.dtype),
      lambda leaf: leaf, thresholds, "thresholds")


def hard_masks(params: PyTree, sparsities: Any = None, scope: str = "unstructured", n: int = 2,
               m: int = 4, prunable: masks_lib.Prunable = None) -> PyTree:
  """PDP's final hard masks (``m >= 0.5``) as a bool mask pytree of :mod:`sparsejax.masks`.

  Exactly ``round((1 - r_l) n_l)`` weights of each prunable leaf (``"unstructured"``), exactly
  ``round((1 - r_l) C_l)`` whole output channels (``"channel"``), exactly n of every m
  consecutive weights along the input axis (``"nm"``); the largest magnitudes, ties to the lowest
  index. They are derived from the counting selection rather than from the soft mask, with which
  they coincide away from ties at t. Usable with :func:`sparsejax.masks.apply` and every mask
  function of the library. Arguments as in :func:`soft_masks`.
  """
  return _map_prunable(
      params, sparsities, scope, n, m, prunable,
      lambda path, w, s, n, m, _: _leaf_hard(path, w, s, scope, n, m),
      lambda _: jnp.array(True))


# --- schedule ----------------------------------------------------------------------------------

def layer_targets(params: PyTree, sparsity: Any, prunable: masks_lib.Prunable = None) -> PyTree:
  """PDP's per-layer targets r_l, fixed once at the end of the warm-up: a pytree like the params.

  One magnitude ranking over all prunable weights keeps the ``round((1 - sparsity) N)`` largest
  (:func:`sparsejax.distributions.global_magnitude`); r_l is the fraction of layer l outside it,
  so the layers' kept counts ``round((1 - r_l) n_l)`` add up to the global count (exactly for
  layers below about 2^21 weights, within one weight per layer beyond: the float32 convention of
  :mod:`sparsejax.distributions`). Leaves that are never pruned get 0.0.
  """
  masks_lib.check_sparsity(sparsity)
  selected = set(masks_lib.prunable_paths(params, prunable))
  densities = distributions.global_magnitude(params, sparsity, prunable)
  return jax.tree_util.tree_map_with_path(
      lambda path, d: (1.0 - d if jax.tree_util.keystr(path) in selected
                       else jnp.zeros((), _F32)), densities)


def ramp(step: Any, targets: Any, warmup: int, rate: Any = DEFAULT_RATE) -> Any:
  """The per-layer sparsities in force at ``step``: r_l(e) = min(1, eps (e - s + 1)) r_l.

  s = ``warmup`` (0 before it: the dense warm-up), eps = ``rate``; ``step`` counts epochs in the
  paper (any unit works, used consistently) and may be traced. ``targets`` is a scalar or a
  pytree of them (:func:`layer_targets`); the result has its structure, in float32.
  """
  warmup = _check_int("warmup", warmup, 0, "a non-negative integer number of epochs (or steps)")
  _check_rate(rate)
  factor = jnp.clip(jnp.asarray(rate, _F32) * (jnp.asarray(step, _F32) - warmup + 1), 0.0, 1.0)
  return jax.tree.map(lambda r: factor * jnp.asarray(r, _F32), targets)


# --- straight-through masks and N:M masks ------------------------------------------------------

@jax.custom_jvp
def _straight_through(w: jax.Array, keep: jax.Array) -> jax.Array:
  return jnp.where(keep, w, jnp.zeros((), w.dtype))


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  w, keep = primals
  w_dot, _ = tangents
  return _straight_through(w, keep), w_dot


def ste_apply(params: PyTree, masks: PyTree) -> PyTree:
  """Effective params that are ``params * masks`` forward, with the dense gradient backward.

  Pruned weights are exactly 0.0 in the forward value (NaN and inf included, as in
  :func:`sparsejax.masks.apply`); the derivative with respect to the params is the identity, so
  pruned weights receive the gradient they would get if they were kept at 0 (straight-through).

  Raises:
    ValueError: naming the first path where ``masks`` does not fit ``params``.
  """
  masks = masks_lib.conform(params, masks)
  return jax.tree.map(
      lambda p, mk: _straight_through(p, mk) if masks_lib.is_prunable_mask(mk) else p,
      params, masks)


def ste_masks(params: PyTree, sparsity: Any = None, scope: str = "unstructured", n: int = 2,
              m: int = 4, prunable: masks_lib.Prunable = None) -> PyTree:
  """Magnitude masks for :func:`ste_apply`: per layer at ``sparsity`` (``"unstructured"``, or
  ``"channel"``), or n of every m (``"nm"``, ``sparsity`` ignored); :func:`hard_masks`."""
  return hard_masks(params, sparsity, scope, n, m, prunable)


def nm_masks(params: PyTree, n: int = 2, m: int = 4,
             prunable: masks_lib.Prunable = None) -> PyTree:
  """Bool masks keeping exactly n of every m consecutive weights along the input axis.

  Axis -2 of every prunable leaf (``in`` of a dense ``(in, out)`` kernel, ``I`` of an HWIO conv
  kernel) is cut into blocks of m; each keeps its n largest magnitudes, ties to the lowest index.

  Raises:
    ValueError: for bad n/m, or a prunable leaf whose axis -2 is not a multiple of m (naming the
      leaf and its shape).
  """
  return hard_masks(params, None, "nm", n, m, prunable)
