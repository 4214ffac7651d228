"""Saliency scores: pytrees shaped like the params, higher = more worth keeping.

* :func:`magnitude`: |w| (Han et al. 2015; Zhu & Gupta 2017).
* :func:`random`: i.i.d. uniform scores from a ``jax.random`` key (random pruning; Liu et al. 2022).
* :func:`snip`: |g * w|, connection sensitivity at initialization (Lee et al. 2019, SNIP, eq. 6;
  the normalization by the sum does not change the ranking and is left out).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def magnitude(params: PyTree) -> PyTree:
  return jax.tree.map(jnp.abs, params)


def random(key: jax.Array, params: PyTree) -> PyTree:
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.uniform(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def snip(params: PyTree, grads: PyTree) -> PyTree:
  return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)
