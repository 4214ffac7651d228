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
