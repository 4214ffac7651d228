"""Linear mode connectivity and instability (Frankle et al. 2020, Sec. 2, Definitions 1-2).

Two networks W1, W2 trained from the same weights with different SGD noise (data order) are
*linearly connected* when the error along the path (1 - alpha) W1 + alpha W2 does not rise above
the endpoints. The *error barrier* is the maximum of the error on the path minus the mean of the
two endpoints' errors; a network is *stable* to SGD noise when the barrier is below 2%. The
paper evaluates 30 values of alpha in [0, 1].

A network is any pytree. With BatchNorm, pass ``(params, model_state)``: the running statistics
are then interpolated linearly with the weights, so that each end of the path is exactly one
trained network (evaluating the whole path with one endpoint's statistics would make the other
end a different network).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
STABLE_BARRIER = 0.02


def interpolate(params_a: PyTree, params_b: PyTree, alpha) -> PyTree:
  """(1 - alpha) * params_a + alpha * params_b, leaf by leaf (dtypes kept).

  Any two pytrees of the same structure, e.g. ``(params, model_state)`` pairs; at alpha 0 and 1
  the result equals ``params_a`` and ``params_b`` (finite values).
  """
  return jax.tree.map(lambda a, b: ((1 - alpha) * a + alpha * b).astype(jnp.result_type(a)),
                      params_a, params_b)


class Barrier(NamedTuple):
  alphas: list[float]
  errors: list[float]
  barrier: float  # max error on the path minus the mean of the endpoint errors
  stable: bool    # barrier < 2%


def error_barrier(error_fn: Callable[[PyTree], Any], params_a: PyTree, params_b: PyTree,
                  num_alphas: int = 30) -> Barrier:
  """Evaluates ``error_fn`` (e.g. 1 - test accuracy) at ``num_alphas`` points of the path.

  ``params_a`` and ``params_b`` are whatever ``error_fn`` takes: the params, or e.g.
  ``(params, model_state)`` pairs so that BatchNorm statistics travel along the path too.
  """
  if num_alphas < 2:
    raise ValueError(f"num_alphas={num_alphas!r} must be >= 2 (the two endpoints at least).")
  alphas = np.linspace(0.0, 1.0, num_alphas)
  errors = [float(error_fn(interpolate(params_a, params_b, jnp.float32(a)))) for a in alphas]
  barrier = max(errors) - 0.5 * (errors[0] + errors[-1])
  return Barrier([float(a) for a in alphas], errors, barrier, barrier < STABLE_BARRIER)


def instability(train_fn: Callable[[PyTree, Any], PyTree], start_params: PyTree,
                error_fn: Callable[[PyTree], Any], copies: Sequence[Any] = (1, 2),
                num_alphas: int = 30) -> Barrier:
  """Trains two copies of ``start_params`` with different SGD noise and measures the barrier.

  ``train_fn(params, copy) -> trained params`` trains one copy; ``copies`` are the two labels it
  gets, ints or ``jax.random`` keys (e.g. ``jax.random.split(key)``) that choose each copy's data
  order. As in :func:`error_barrier`, ``start_params`` may hold the BatchNorm statistics too.
  """
  if len(copies) != 2:
    raise ValueError(f"copies={copies!r} must hold two labels, one per copy (e.g. two data-order "
                     "seeds or keys).")
  a, b = (train_fn(start_params, copy) for copy in copies)
  return error_barrier(error_fn, a, b, num_alphas)
