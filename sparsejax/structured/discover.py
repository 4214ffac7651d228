"""Zero-invariant groups found by tracing the network: OTOv2's dependency graph on a jaxpr.

Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023, Sec. 3: the zero-invariant
groups of a network (:mod:`sparsejax.structured.groups`) follow from its trace. An operator that
*produces* channels (a dense or convolution kernel's output axis) starts a group set; every
operator that acts channel by channel (a bias, a normalization's scale and shift, an activation,
pooling, a residual addition) ties the parameters it touches to the set of the channel axis they
line up with; the operators that *read* the channels (the next layer's input axis) are its
consumers. A set is zero-invariant when, with group ``j``'s parameters at zero, channel ``j`` is
zero wherever a consumer reads it, so that zeroing the consumers' slices too changes nothing.

:func:`discover` builds this dependency graph by abstract interpretation of
``jax.make_jaxpr(apply_fn)``. Every axis of every intermediate carries the channel sets it is
indexed by (a union-find over the axes of the parameter and buffer leaves) and, per set, whether
its values are provably zero when the group's parameters are: a kernel's output slice and a bias
are; ``max(x, 0)``, pooling, a sum of zero channels, or a product with one keep zero; a product
with a zero member (a BatchNorm scale) makes zero again what subtracting a running mean had made
nonzero; a sigmoid, an exponential, or adding a value outside the group (a constant, the input, a
buffer) break it. Sets that are read when not provably zero, read by anything but a parameter, or
pass a primitive the interpreter does not know, cannot be grouped; the set whose channels reach the
function's output (the output layer) never is. :func:`canonical` puts any :class:`Groups` in the
order :func:`discover` returns, so hand-declared and discovered groups compare with ``==``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member

PyTree = Any

# Primitives applied entry by entry (operands of equal shape, or scalars, or size-1 broadcasts).
_ELEMENTWISE = frozenset({
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh",
    "cbrt", "ceil", "clamp", "convert_element_type", "copy", "copy_p", "cos", "cosh",
    "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt",
    "imag", "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max",
    "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow", "real", "reduce_precision", "rem",
    "round", "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square", "stop_gradient", "sub",
    "tan", "tanh", "xor",
})
# A zero operand makes the result zero, whatever the (finite) others.
_PRODUCTS = frozenset({"mul", "and"})
# Primitives whose body is a jaxpr called once on the operands.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2"})
_IDENTITIES = frozenset({"device_put", "optimization_barrier"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                         "reduce_or"})
_WINDOWS = frozenset({"reduce_window_max", "reduce_window_min", "reduce_window_sum"})


@dataclasses.dataclass(frozen=True)
class _Seg:
  """Channels ``c = 0 .. size-1`` of the set of union-find ``node`` along an axis, at indices
  ``o * block + (offset + c) * inner + i`` as in :class:`Consumer`. ``why`` is ``None`` when
  channel ``c`` is provably zero while group ``c`` is, else the reason it may not be; ``finite``
  is False when it may be inf or nan. ``buffer`` names the buffer whose value it is."""

  node: int
  size: int
  offset: int = 0
  outer: int = 1
  inner: int = 1
  why: str | None = None
  finite: bool = True
  buffer: str | None = None

  def layout(self) -> tuple[int, int, int, int]:
    return self.offset, self.size, self.outer, self.inner


_Label = tuple[_Seg, ...]  # an axis's channel segments; () when no set indexes the axis
_Status = tuple[str | None, bool]
_ZERO: _Status = (None, True)


@dataclasses.dataclass(frozen=True)
class _Val:
  """The abstract value of an array: one label per axis, and ``value`` when every entry is
  known to equal that scalar (literals, constants)."""

  labels: tuple[_Label, ...]
  value: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """Axis ``axis`` (of length ``size``) of the params (``kind="param"``) or state
  (``"buffer"``) leaf ``path``."""

  kind: str
  path: str
  axis: int
  size: int


class _Graph:
  """Union-find over leaf axes, with the contractions and refusals seen while tracing."""

  def __init__(self):
    self.parent: list[int] = []
    self.leaves: list[_Leaf] = []
    self.producers: set[int] = set()
    self.refused: list[tuple[int, Callable[[str], str]]] = []
    self.reads: list[tuple[_Seg, _Label, str]] = []

  def add(self, leaf: _Leaf) -> int:
    self.parent.append(len(self.parent))
    self.leaves.append(leaf)
    return len(self.parent) - 1

  def find(self, node: int) -> int:
    root = node
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[node] != root:
      self.parent[node], node = root, self.parent[node]
    return root

  def union(self, nodes: Sequence[int]) -> int:
    roots = sorted({self.find(n) for n in nodes})
    for r in roots[1:]:
      self.parent[r] = roots[0]
    return roots[0]

  def describe(self, node: int) -> str:
    """``"the output of <producer kernels>"``, or the leaves of ``node``'s set."""
    root = self.find(node)
    made = sorted({self.leaves[n].path for n in self.producers if self.find(n) == root})
    if made:
      return "the output of " + ", ".join(made)
    return ", ".join(sorted({leaf.path for n, leaf in enumerate(self.leaves)
                             if self.find(n) == root}))


def _uniform(x: Any) -> np.ndarray | None:
  """``x`` as a 0-d array if all its entries are equal, else None."""
  dtype = getattr(x, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
    return None  # PRNG keys.
  a = np.asarray(x)
  if a.size == 0 or a.dtype == object:
    return None
  first = a.reshape(-1)[0]
  return np.asarray(first) if a.size == 1 or bool(np.all(a == first)) else None


def _blank(ndim: int) -> tuple[_Label, ...]:
  return ((),) * ndim


def _reshape_groups(old: Sequence[int], new: Sequence[int]) -> list[tuple[list[int], list[int]]]:
  """Axes of ``old`` and ``new`` in runs of equal product: a reshape maps each run to its run."""
  i = j = 0
  runs = []
  while i < len(old) or j < len(new):
    ins, outs, a, b = [], [], 1, 1
    if i < len(old):
      a, i = a * old[i], i + 1
      ins.append(i - 1)
    if j < len(new):
      b, j = b * new[j], j + 1
      outs.append(j - 1)
    while a != b and (i < len(old) or j < len(new)):
      if (a < b and i < len(old)) or j >= len(new):
        a, i = a * old[i], i + 1
        ins.append(i - 1)
      else:
        b, j = b * new[j], j + 1
        outs.append(j - 1)
    runs.append((ins, outs))
  return runs


def _format(v: np.ndarray) -> str:
  return f"{v.item():g}" if v.dtype.kind in "fc" else str(v.item())


class _Interpreter:
  """Runs a jaxpr on :class:`_Val` s, recording in the :class:`_Graph`."""

  def __init__(self, graph: _Graph):
    self.g = graph
    self._at_zero_cache: dict[Any, np.ndarray] = {}

  # -- running -----------------------------------------------------------------------------

  def run(self, jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[_Val]) -> list[_Val]:
    env: dict[Any, _Val] = {}
    for var, c in zip(jaxpr.constvars, consts):
      env[var] = _Val(_blank(np.ndim(c)), _uniform(c))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      ins = [self._read(env, atom) for atom in eqn.invars]
      env.update(zip(eqn.outvars, self._eqn(eqn, ins)))
    return [self._read(env, atom) for atom in jaxpr.outvars]

  @staticmethod
  def _read(env: dict[Any, _Val], atom: Any) -> _Val:
    if isinstance(atom, jcore.Literal):
      return _Val(_blank(len(atom.aval.shape)), _uniform(atom.val))
    return env[atom]

  def _eqn(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    name = eqn.primitive.name
    if name in _ELEMENTWISE:
      return [self._elementwise(eqn, ins)]
    if name in _CALLS:
      for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr) and len(sub.jaxpr.invars) == len(ins):
          return self.run(sub.jaxpr, sub.consts, ins)
        if isinstance(sub, jcore.Jaxpr) and len(sub.invars) == len(ins):
          return self.run(sub, (), ins)
    if name in _IDENTITIES and len(ins) == len(eqn.outvars):
      return ins
    if name in _REDUCTIONS:
      return self._reduce(eqn, ins)
    if name in _WINDOWS:
      return self._window(eqn, ins)
    handler = getattr(self, "_p_" + name, None)
    return self._unknown(eqn, ins) if handler is None else handler(eqn, ins)

  def _refuse(self, label: _Label, why: Callable[[str], str]) -> None:
    """Marks the sets of ``label`` as not groupable; ``why`` words the reason around the
    description of the set."""
    self.g.refused.extend((seg.node, why) for seg in label)

  def _unknown(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    name = eqn.primitive.name
    for val in ins:
      for label in val.labels:
        self._refuse(label, lambda on: f"{name} (a primitive discover does not know) reads {on}")
    return [_Val(_blank(len(v.aval.shape))) for v in eqn.outvars]

  # -- channel bookkeeping -----------------------------------------------------------------

  def _produce(self, label: _Label) -> _Label:
    self.g.producers.update(s.node for s in label if self.g.leaves[s.node].kind == "param")
    return label

  def _contract(self, a: _Label, b: _Label, name: str) -> None:
    """Axes ``a`` and ``b`` are summed over together: each side's channels are read by the
    other side's leaves."""
    for seg in a:
      self.g.reads.append((seg, b, name))
    for seg in b:
      self.g.reads.append((seg, a, name))

  def _merge(self, name: str, entries: Sequence[tuple[_Label, Any, Any]],
             eqn: jcore.JaxprEqn | None = None) -> _Label:
    """The label of an output axis that ``name`` computes index by index from the entries'
    aligned axes; each entry is ``(label, uniform value, dtype)``. Channel sets lined up on the
    axis are joined; a member lined up with them joins the set."""
    labeled = [lab for lab, _, _ in entries if lab]
    if not labeled:
      return ()
    layout = [s.layout() for s in labeled[0]]
    if any([s.layout() for s in lab] != layout for lab in labeled[1:]):
      for lab in labeled:
        self._refuse(lab, lambda on: f"{name} lines up {on} with channels laid out differently "
                     f"(a concatenation or flatten on one side only)")
      return ()
    out = []
    for k in range(len(layout)):
      root = self.g.union([lab[k].node for lab in labeled])
      ops = [(lab[k] if lab else value, dtype) for lab, value, dtype in entries]
      why, finite = self._status(name, ops, root, eqn)
      out.append(dataclasses.replace(labeled[0][k], node=root, why=why, finite=finite,
                                     buffer=None))
    return tuple(out)

  def _status(self, name: str, ops: list[tuple[Any, Any]], root: int,
              eqn: jcore.JaxprEqn | None) -> _Status:
    """Whether ``name`` keeps a channel zero when its group is; ``ops`` are the operands and
    their dtypes: a :class:`_Seg` (a channel of the set), a uniform value, or None (anything
    else). With ``eqn``, channels and uniform values alone are decided by evaluating it at 0."""
    def on() -> str:
      return self.g.describe(root)

    if name == "select_n":
      ops = ops[1:]  # The predicate only picks among cases.
    chans = [op for op, _ in ops if isinstance(op, _Seg)]
    for c in chans:
      if not c.finite:
        return c.why, False
    zeros = [c for c in chans if c.why is None]
    broken = [c for c in chans if c.why is not None]
    if name in _PRODUCTS and zeros:
      return _ZERO
    if name == "div":
      (num, _), (den, _) = ops
      if isinstance(den, _Seg) and den.why is None:
        return f"div on {on()} divides by a zeroed channel", False
      if isinstance(num, _Seg) and num.why is None and not isinstance(den, np.ndarray):
        return _ZERO
    if broken:
      b = broken[0]
      if b.buffer is None:
        return b.why, True
      return (f"{name} of the buffer {b.buffer} on {on()} leaves a zeroed channel nonzero (the "
              f"buffer is not zeroed with the group)"), True
    if (eqn is not None and name != "select_n" and
        all(isinstance(op, (_Seg, np.ndarray)) for op, _ in ops)):
      v = self._at_zero(eqn, ops)
      if np.all(v == 0):
        return _ZERO
      finite = bool(np.all(np.isfinite(v))) if v.dtype.kind in "fc" else True
      return f"{name} on {on()} maps 0 to {_format(v)}", finite
    if all(isinstance(op, _Seg) or (isinstance(op, np.ndarray) and not np.any(op))
           for op, _ in ops):
      return _ZERO
    return (f"{name} on {on()} mixes in a value that is not indexed by the channel (a constant, "
            f"the input or a parameter outside the group), so a zeroed channel is not zero"), True

  def _at_zero(self, eqn: jcore.JaxprEqn, ops: list[tuple[Any, Any]]) -> np.ndarray:
    """``eqn``'s primitive on zero for every channel operand and the uniform values for the
    rest."""
    args = [np.zeros((), dtype) if isinstance(op, _Seg) else np.asarray(op, dtype)
            for op, dtype in ops]
    key = (eqn.primitive.name, repr(sorted(eqn.params.items())),
           tuple((a.dtype.str, a.item()) for a in args))
    if key not in self._at_zero_cache:
      self._at_zero_cache[key] = np.asarray(eqn.primitive.bind(*args, **eqn.params))
    return self._at_zero_cache[key]

  # -- primitives --------------------------------------------------------------------------

  def _elementwise(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> _Val:
    name = eqn.primitive.name
    shape = eqn.outvars[0].aval.shape
    in_shapes = [atom.aval.shape for atom in eqn.invars]
    if any(len(s) not in (0, len(shape)) for s in in_shapes):
      return self._unknown(eqn, ins)[0]
    labels = []
    for axis, length in enumerate(shape):
      entries = []
      for val, s, atom in zip(ins, in_shapes, eqn.invars):
        label = val.labels[axis] if s else ()
        if label and s[axis] != length:
          self._refuse(label, lambda on: f"{name} broadcasts a single channel of {on}")
          label = ()
        entries.append((label, val.value, atom.aval.dtype))
      labels.append(self._merge(name, entries, eqn))
    value = None
    if all(v.value is not None for v in ins):
      value = np.asarray(eqn.primitive.bind(*[np.asarray(v.value, a.aval.dtype)
                                              for v, a in zip(ins, eqn.invars)], **eqn.params))
    return _Val(tuple(labels), value)

  def _p_dot_general(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    for i, j in zip(lc, rc):
      self._contract(lhs.labels[i], rhs.labels[j], "dot_general")
    labels = [self._merge("mul", [(lhs.labels[i], None, None), (rhs.labels[j], None, None)])
              for i, j in zip(lb, rb)]
    for val, skip in ((lhs, set(lc) | set(lb)), (rhs, set(rc) | set(rb))):
      labels += [self._produce(lab) for i, lab in enumerate(val.labels) if i not in skip]
    return [_Val(tuple(labels))]

  def _p_conv_general_dilated(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    p = eqn.params
    if p["batch_group_count"] != 1:
      return self._unknown(eqn, ins)
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    lhs, rhs = ins
    lhs_shape, rhs_shape = (a.aval.shape for a in eqn.invars)
    labels: list[_Label] = list(_blank(len(out_spec)))
    labels[out_spec[0]] = lhs.labels[lhs_spec[0]]
    for i, j in zip(lhs_spec[2:], rhs_spec[2:]):  # The window slides over spatial axes.
      self._contract(lhs.labels[i], (), "conv_general_dilated")
      self._contract(rhs.labels[j], (), "conv_general_dilated")
    x, w_in, w_out = lhs.labels[lhs_spec[1]], rhs.labels[rhs_spec[1]], rhs.labels[rhs_spec[0]]
    groups, c_in, c_out = p["feature_group_count"], lhs_shape[lhs_spec[1]], rhs_shape[rhs_spec[0]]
    if groups == 1:
      self._contract(x, w_in, "conv_general_dilated")
      labels[out_spec[1]] = self._produce(w_out)
    elif groups == c_in == c_out:  # Depthwise: output channel j reads input channel j only.
      labels[out_spec[1]] = self._merge("mul", [(x, None, None),
                                                (self._produce(w_out), None, None)])
    else:
      self._refuse(x, lambda on: f"a grouped convolution (feature_group_count={groups}) "
                   f"reads {on}")
      labels[out_spec[1]] = self._produce(w_out)
    return [_Val(tuple(labels))]

  def _p_reshape(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    if eqn.params.get("dimensions") is not None:
      return self._unknown(eqn, ins)
    (val,) = ins
    old, new = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    labels: list[_Label] = list(_blank(len(new)))
    for run_in, run_out in _reshape_groups(old, new):
      if not any(val.labels[i] for i in run_in):
        continue
      for i in run_in:
        if val.labels[i] and old[i] == 1:
          self._refuse(val.labels[i], lambda on: f"reshape drops the single channel of {on}")
      ins_ = [i for i in run_in if old[i] != 1]
      outs_ = [j for j in run_out if new[j] != 1]
      labeled = [i for i in ins_ if val.labels[i]]
      if not labeled:
        continue
      if len(ins_) == 1 and len(outs_) == 1:
        labels[outs_[0]] = val.labels[ins_[0]]
      elif len(outs_) == 1 and len(labeled) == 1:  # A flatten: the channels spread out.
        i = labeled[0]
        before = math.prod(old[k] for k in ins_ if k < i)
        after = math.prod(old[k] for k in ins_ if k > i)
        labels[outs_[0]] = tuple(dataclasses.replace(s, outer=s.outer * before,
                                                     inner=s.inner * after)
                                 for s in val.labels[i])
      elif len(ins_) == 1:
        target = self._split(val.labels[ins_[0]], old[ins_[0]], [new[j] for j in outs_])
        if target is None:
          self._refuse(val.labels[ins_[0]], lambda on: f"reshape splits the channel axis of {on}")
        else:
          t, label = target
          labels[outs_[t]] = label
      else:
        for i in labeled:
          self._refuse(val.labels[i], lambda on: f"reshape mixes the channel axis of {on} with "
                       f"another axis")
    return [_Val(tuple(labels), val.value)]

  @staticmethod
  def _split(label: _Label, length: int, sizes: list[int]) -> tuple[int, _Label] | None:
    """The axis among ``sizes`` that an unflatten puts every channel of ``label`` on."""
    for t, size in enumerate(sizes):
      before, after = math.prod(sizes[:t]), math.prod(sizes[t + 1:])
      fits = all(s.outer % before == 0 and s.inner % after == 0 and
                 (length // s.outer) % after == 0 and
                 size == (s.outer // before) * (length // s.outer) // after for s in label)
      if fits:
        return t, tuple(dataclasses.replace(s, outer=s.outer // before, inner=s.inner // after)
                        for s in label)
    return None

  def _p_squeeze(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    dims = {d % len(val.labels) for d in eqn.params["dimensions"]}
    for d in dims:
      self._refuse(val.labels[d], lambda on: f"squeeze drops the single channel of {on}")
    return [_Val(tuple(lab for d, lab in enumerate(val.labels) if d not in dims), val.value)]

  def _p_broadcast_in_dim(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    val = ins[0]
    shape, dims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    labels: list[_Label] = list(_blank(len(shape)))
    for i, d in enumerate(dims):
      if eqn.invars[0].aval.shape[i] == shape[d]:
        labels[d] = val.labels[i]
      else:
        self._refuse(val.labels[i], lambda on: f"broadcast_in_dim copies a single channel of {on}")
    return [_Val(tuple(labels), val.value)]

  def _p_transpose(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    return [_Val(tuple(val.labels[i] for i in eqn.params["permutation"]), val.value)]

  def _reduce(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    name, axes = eqn.primitive.name, set(eqn.params["axes"])
    for a in axes:
      self._refuse(val.labels[a], lambda on: f"{name} sums or compares across the channels of {on}")
    return [_Val(tuple(lab for a, lab in enumerate(val.labels) if a not in axes))]

  def _window(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    p = eqn.params
    labels = []
    for a, label in enumerate(val.labels):
      if (p["window_dimensions"][a], p["window_strides"][a], tuple(p["padding"][a]),
          p["base_dilation"][a], p["window_dilation"][a]) == (1, 1, (0, 0), 1, 1):
        labels.append(label)
      else:
        self._refuse(label, lambda on: f"{eqn.primitive.name} pools across the channels of {on}")
        labels.append(())
    return [_Val(tuple(labels))]

  def _p_concatenate(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    dim = eqn.params["dimension"]
    shape = eqn.outvars[0].aval.shape
    labels: list[_Label] = []
    for axis in range(len(shape)):
      if axis != dim:
        labels.append(self._merge("concatenate", [(v.labels[axis], v.value, None)
                                                   for v in ins]))
        continue
      segs, start = [], 0
      for val, atom in zip(ins, eqn.invars):
        for s in val.labels[axis]:
          if s.outer != 1 or start % s.inner:
            self._refuse((s,), lambda on: f"concatenate joins the flattened channels of {on}")
          else:
            segs.append(dataclasses.replace(s, offset=s.offset + start // s.inner))
        start += atom.aval.shape[axis]
      inner = {s.inner for s in segs}
      if len(inner) > 1:
        self._refuse(tuple(segs), lambda on: f"concatenate joins the flattened channels of {on}")
        segs = []
      labels.append(tuple(segs))
    return [_Val(tuple(labels))]

  def _p_pad(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    val, fill = ins
    labels = []
    for a, (label, config) in enumerate(zip(val.labels, eqn.params["padding_config"])):
      if tuple(config) != (0, 0, 0):
        self._refuse(label, lambda on: f"pad pads the channel axis of {on}")
        labels.append(())
      elif label:
        labels.append(self._merge("pad", [(label, None, None), ((), fill.value, None)]))
      else:
        labels.append(())
    return [_Val(tuple(labels))]

  def _p_slice(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    old, new = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    labels = []
    for a, label in enumerate(val.labels):
      if old[a] == new[a]:
        labels.append(label)
      else:
        self._refuse(label, lambda on: f"slice takes part of the channels of {on}")
        labels.append(())
    return [_Val(tuple(labels), val.value)]

  def _p_rev(self, eqn: jcore.JaxprEqn, ins: list[_Val]) -> list[_Val]:
    (val,) = ins
    for a in eqn.params["dimensions"]:
      self._refuse(val.labels[a], lambda on: f"rev reverses the channels of {on}")
    return [_Val(tuple(() if a in eqn.params["dimensions"] else lab
                       for a, lab in enumerate(val.labels)), val.value)]


def _parent_name(keypath: tuple[Any, ...]) -> str:
  """``keystr`` of the container holding the leaf at ``keypath`` (a Flax NNX ``Variable``'s
  ``.value`` counts as part of its leaf)."""
  keys = list(keypath)
  while keys and isinstance(keys[-1], jax.tree_util.GetAttrKey):
    keys.pop()
  return jax.tree_util.keystr(tuple(keys[:-1]))


def canonical(groups: Groups, params: PyTree) -> Groups:
  """``groups`` in :func:`discover`'s order: members in the params' flatten order, each set
  named by the container of its first member (``"['dense1']"``; its first member's path where
  two sets would share a name), sets ordered by their first member, consumers sorted by
  ``(path, axis, offset)`` and buffers by path, repeated consumers and buffers dropped. Raises
  ``ValueError`` naming the set if a member is not a leaf of ``params``."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  where = {jax.tree_util.keystr(p): (i, p) for i, (p, _) in enumerate(flat)}
  ordered = []
  for s in groups.sets:
    missing = [m.path for m in s.members if m.path not in where]
    if missing:
      raise ValueError(f"group set {s.name!r}: member {missing[0]} is not a leaf of the params")
    members = tuple(sorted(s.members, key=lambda m: (where[m.path][0], m.axis)))
    ordered.append((members, s))
  ordered.sort(key=lambda ms: (where[ms[0][0].path][0], ms[0][0].axis))
  names = [_parent_name(where[members[0].path][1]) for members, _ in ordered]
  sets = []
  for (members, s), name in zip(ordered, names):
    sets.append(GroupSet(
        name if names.count(name) == 1 else members[0].path, s.size, members,
        tuple(sorted(set(s.consumers), key=lambda c: (c.path, c.axis, c.offset, c.outer,
                                                      c.inner))),
        tuple(sorted(set(s.buffers), key=lambda b: (b.path, b.axis)))))
  return Groups(tuple(sets))


def discover(apply_fn: Callable[..., Any], params: PyTree, inputs: PyTree,
             state: PyTree | None = None, *, strict: bool = True) -> Groups:
  """The zero-invariant groups of ``apply_fn`` (OTOv2, Sec. 3), found by tracing it.

  ``apply_fn(params, inputs)``, or ``apply_fn(params, state, inputs)`` when ``state`` is given,
  is traced once with ``jax.make_jaxpr`` (``inputs`` only fix shapes: a tiny batch will do).
  Paths are ``jax.tree_util.keystr`` of the leaves of ``params`` (a plain dict, a Flax NNX
  ``State``, linen variables); buffers are paths into ``state``, whose leaves join the set of the
  channel axis they line up with (BatchNorm running statistics). When ``state`` is given and
  ``apply_fn`` returns ``(outputs, new_state)`` with ``new_state`` shaped like ``state``, only
  ``outputs`` counts as the function's output.

  Grouped: the output axis of every parameter contracted by ``dot_general`` or
  ``conv_general_dilated`` (plain or depthwise), with the parameters that line up with it
  channel by channel, whose channels stay zero up to every consumer: the next parameter
  contraction, directly, after flattening (``outer``/``inner``), concatenation (``offset``),
  pooling, global average pooling, transposes, and residual additions, which tie the sets they
  add. Nested ``jit``, ``custom_jvp``/``custom_vjp`` and ``checkpoint`` bodies are followed.

  Not grouped: the sets whose channels reach the output, and the sets discover cannot prove
  zero-invariant: an activation with f(0) != 0 (``logistic``, ``exp``), a constant, input or
  buffer added and not multiplied away by a member, a reduction or normalization across the
  channels, a grouped convolution, a contraction with something other than a parameter, or any
  other primitive touching the channels. With ``strict`` (the default) these raise
  ``ValueError`` naming the primitive and the parameters involved; with ``strict=False`` they
  are left out. Denominators that are not channels of the set are assumed nonzero. The result is
  in :func:`canonical` form.
  """
  g = _Graph()
  trees = [("param", params)] + ([] if state is None else [("buffer", state)])
  args: list[_Val] = []
  for kind, tree in trees:
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      key, labels = jax.tree_util.keystr(path), []
      for axis, size in enumerate(np.shape(leaf)):
        node = g.add(_Leaf(kind, key, axis, size))
        if kind == "param":
          labels.append((_Seg(node, size),))
        else:
          labels.append((_Seg(node, size, why=f"the buffer {key} is not zeroed with the group",
                              buffer=key),))
      args.append(_Val(tuple(labels)))
  for leaf in jax.tree_util.tree_leaves(inputs):
    args.append(_Val(_blank(np.ndim(leaf))))
  if state is None:
    closed, shapes = jax.make_jaxpr(apply_fn, return_shape=True)(params, inputs)
  else:
    closed, shapes = jax.make_jaxpr(apply_fn, return_shape=True)(params, state, inputs)
  outs = _Interpreter(g).run(closed.jaxpr, closed.consts, args)
  if (state is not None and isinstance(shapes, tuple) and len(shapes) == 2 and
      jax.tree_util.tree_structure(shapes[1]) == jax.tree_util.tree_structure(state)):
    outs = outs[:len(jax.tree_util.tree_leaves(shapes[0]))]
  return _assemble(g, outs, params, strict)


def _assemble(g: _Graph, outs: list[_Val], params: PyTree, strict: bool) -> Groups:
  """The group sets of the traced graph: every set with a producer, not reaching ``outs``,
  read only by parameters and only while provably zero."""
  leaves_of: dict[int, list[_Leaf]] = {}
  for n, leaf in enumerate(g.leaves):
    leaves_of.setdefault(g.find(n), []).append(leaf)
  roots = sorted({g.find(n) for n in g.producers})
  reasons: dict[int, list[str]] = {r: [] for r in roots}
  for node, why in g.refused:
    if g.find(node) in reasons:
      reasons[g.find(node)].append(why(g.describe(node)))
  consumers: dict[int, set[Consumer]] = {r: set() for r in roots}
  for seg, other, name in g.reads:
    root = g.find(seg.node)
    if root not in reasons:
      continue
    if seg.why is not None:
      reasons[root].append(seg.why)
      continue
    readers = leaves_of[g.find(other[0].node)] if len(other) == 1 else []
    if (not readers or other[0].layout() != (0, other[0].size, 1, 1) or
        g.find(other[0].node) in reasons or any(leaf.kind != "param" for leaf in readers)):
      reasons[root].append(f"{name} reads {g.describe(root)} against an operand that is not a "
                           f"parameter's input axis, so there is no consumer to slice")
      continue
    consumers[root].update(Consumer(leaf.path, leaf.axis, seg.offset, seg.outer, seg.inner)
                           for leaf in readers)
  members = {r: [leaf.path for leaf in leaves_of[r] if leaf.kind == "param"] for r in roots}
  owners: dict[str, int] = {}
  for r in roots:
    for path in members[r]:
      owners[path] = owners.get(path, 0) + 1
  for r in roots:
    shared = sorted({path for path in members[r] if owners[path] > 1})
    if shared:
      reasons[r].append(f"{', '.join(shared)} lines up with channels along two axes")
  outputs = {g.find(s.node) for val in outs for label in val.labels for s in label}
  refused = [r for r in roots if reasons[r] and r not in outputs]
  if strict and refused:
    lines = list(dict.fromkeys(why for r in refused for why in reasons[r]))
    raise ValueError(
        f"discover: cannot prove {len(refused)} channel set(s) zero-invariant (pass "
        f"strict=False to leave them ungrouped): " + "; ".join(lines))
  sets = []
  for r in roots:
    if r in outputs or reasons[r] or not consumers[r]:
      continue
    sets.append(GroupSet(
        str(r), leaves_of[r][0].size,
        tuple(Member(leaf.path, leaf.axis) for leaf in leaves_of[r] if leaf.kind == "param"),
        tuple(consumers[r]),
        tuple(Member(leaf.path, leaf.axis) for leaf in leaves_of[r] if leaf.kind == "buffer")))
  return canonical(Groups(tuple(sets)), params)
