"""Model size and cost: parameter counts and multiply-accumulates.

Chen et al., "Only Train Once" (OTOv1, NeurIPS 2021) and "OTOv2" (ICLR 2023) report a compressed
network by its number of parameters and its FLOPs, which their tables count as multiply-accumulates
(MACs) of the dense and convolution layers (``only_train_once/flops``: in x out per dense layer,
in x out x kernel area x output area / groups per convolution). :func:`macs` counts the same from
the program JAX traces, so it sees exactly the layers a model runs, at whatever widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import Jaxpr, JaxprEqn, jaxprs_in_params

PyTree = Any


def count_params(params: PyTree) -> int:
  """The number of entries of every leaf of ``params`` (arrays or ``jax.ShapeDtypeStruct``)."""
  return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params))


def _dot_general_macs(eqn: JaxprEqn) -> int:
  """Product of the batch, free and contracted dimensions: output size x contracted size."""
  (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contracting)


def _conv_macs(eqn: JaxprEqn) -> int:
  """Output elements x kernel spatial size x input features per feature group (the kernel's
  input-feature dimension)."""
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial).
  kernel = eqn.invars[1].aval.shape
  per_output = kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
  return math.prod(eqn.outvars[0].aval.shape) * per_output


def _jaxpr_macs(jaxpr: Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_macs(eqn)
    elif name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_macs(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      total += max(_jaxpr_macs(branch.jaxpr) for branch in eqn.params["branches"])
    else:  # pjit, closed_call, custom_jvp/vjp calls, remat, while (one iteration), ...
      total += sum(_jaxpr_macs(inner) for inner in jaxprs_in_params(eqn.params))
  return total


def macs(fn: Callable[..., Any], *args: Any) -> int:
  """Multiply-accumulates of one call ``fn(*args)``: the FLOPs (MACs) the OTO papers report.

  Counted from the traced program (``jax.make_jaxpr``; ``args`` may be ``jax.ShapeDtypeStruct``):
  every ``dot_general`` costs the product of its batch, free and contracted dimensions, every
  ``conv_general_dilated`` its output elements x kernel spatial size x input features per feature
  group; elementwise operations, normalization and pooling are free. Nested programs count
  recursively (``jit``, ``custom_jvp``/``custom_vjp``, ``closed_call``, ``remat``): a ``scan``
  body ``length`` times, a ``cond`` its costliest branch, a ``while`` body once (its trip count
  is not known when tracing). The count covers the whole batch of ``args``: call with one example
  for the per-example figure of the papers.
  """
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)
