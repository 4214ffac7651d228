"""Saliency scores: pytrees shaped like the params, higher = more worth keeping.

* :func:`magnitude`: |w| (Han et al. 2015; Zhu & Gupta 2017).
* :func:`random`: i.i.d. uniform scores from a ``jax.random`` key (random pruning; Liu et al. 2022).
* :func:`snip`: |g * w|, connection sensitivity at initialization (Lee et al. 2019, SNIP, eq. 6;
  the normalization by the sum does not change the ranking and is left out).
* :func:`grasp`: w * Hg, Gradient Signal Preservation at initialization (Wang, Zhang & Grosse
  2020, GraSP, eq. 8), with Hg from :func:`hessian_gradient_product`.
* :func:`synflow`: |w * dR/dw| of the linearized network, Iterative Synaptic Flow Pruning's score
  (Tanaka et al. 2020, SynFlow, eq. 2 and Algorithm 1); data-free.

Normalizations of a score by one positive number (SNIP's and GraSP's by the sum) do not change the
ranking and are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import masks as masks_lib

PyTree = Any


def magnitude(params: PyTree) -> PyTree:
  return jax.tree.map(jnp.abs, params)


def check_key(key: Any, name: str = "key") -> None:
  """Raises TypeError unless ``key`` is a ``jax.random`` key (typed, or raw uint32 of shape (2,))."""
  if isinstance(key, jax.core.Tracer) and not hasattr(key, "dtype"):
    return
  dtype = getattr(key, "dtype", None)
  typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
  raw = dtype == jnp.uint32 and jnp.shape(key) == (2,)
  if not (typed or raw):
    raise TypeError(f"{name}={key!r} is not a jax.random key: pass jax.random.key(seed) "
                    f"(e.g. jax.random.key({key!r}) for an int seed)." if isinstance(key, int)
                    else f"{name} must be a jax.random key (jax.random.key(seed)), got {key!r}.")


def random(key: jax.Array, params: PyTree) -> PyTree:
  check_key(key)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def snip(params: PyTree, grads: PyTree) -> PyTree:
  return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def hessian_gradient_product(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                             masks: PyTree | None = None) -> PyTree:
  """Hg: the Hessian of ``loss_fn`` at ``params`` times its gradient g, held constant.

  GraSP (Wang et al. 2020, Sec. 4) takes g over the prunable weights only (its code collects the
  kernels of the convolutions and dense layers): with ``masks`` (a mask pytree; bool leaves are
  prunable), g is zero on every other leaf and on pruned weights. Forward-over-reverse
  (``jax.jvp`` of ``jax.grad``): one gradient and one Jacobian-vector product, never the Hessian.
  """
  grad_fn = jax.grad(loss_fn)
  g = jax.lax.stop_gradient(grad_fn(params))
  if masks is not None:
    leaves = masks_lib.check_structure(params, masks_lib.conform(params, masks), "params", "masks")
    g = jax.tree.unflatten(jax.tree.structure(params), [
        jnp.where(m, x, jnp.zeros((), x.dtype)) if masks_lib.is_prunable_mask(m)
        else jnp.zeros_like(x) for (_, _, m), x in zip(leaves, jax.tree.leaves(g))])
  return jax.jvp(grad_fn, (params,), (g,))[1]


def grasp(params: PyTree, hessian_gradient: PyTree) -> PyTree:
  """GraSP's scores, higher kept: w * Hg.

  GraSP (eq. 8) scores S(-w) = -w * Hg and removes the weights with the highest S(-w): those
  whose removal reduces the gradient norm the least, or increases it. Keeping the highest w * Hg
  is the same selection.
  """
  return jax.tree.map(lambda w, hg: w * hg, params, hessian_gradient)


def synflow(forward: Callable[[PyTree], jax.Array], params: PyTree,
            masks: PyTree | None = None) -> PyTree:
  """SynFlow's scores (Tanaka et al. 2020): |w| * dR/d|w| with R = sum(forward(|w * m|)).

  ``forward(params) -> outputs`` runs the network on an input of ones (the caller fixes it, with
  the data's shape, and evaluation-mode normalization). The params enter as absolute values, the
  paper's linearization: with positive weights and a positive input every ReLU passes its input,
  so R = 1^T (prod_l |W_l|) 1 (eq. 2) without biases, and the score of a weight is its synaptic
  flow. Pruned weights (``masks``) are 0.0 in the network and score 0.
  """
  linear = jax.tree.map(jnp.abs, params if masks is None else masks_lib.apply(params, masks))
  flow = jax.grad(lambda p: jnp.sum(forward(p)))(linear)
  return jax.tree.map(lambda w, g: jnp.abs(w * g), linear, flow)
