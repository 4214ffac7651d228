"""Hand-declared zero-invariant groups of the model zoo (:mod:`experiments.models`).

Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023, Sec. 3: group ``j`` of a
layer is output slice ``j`` of its kernel (axis 1 of a dense kernel, axis 3 of an HWIO
convolution kernel), its bias, and the following BatchNorm's scale and shift; the BatchNorm's
running mean and variance are sliced with it. Its consumers are the next layers' input axes (axis
0 of a dense kernel, axis 2 of a convolution kernel); after flattening an NHWC map of ``H*W``
positions (Conv-2/4/6, ``cnn_bn``), channel ``c`` is read at every ``p*C + c`` (``outer =
H*W``); after global average pooling (VGG, ResNet-20) directly. A residual addition
ties channel ``j`` of every branch it sums into one set: a ResNet stage's stream is the stem (or
the first block's 1x1 shortcut) plus every block's second convolution. The output layer is never
grouped. Sizes come from the parameters' shapes, so any widths work.

:func:`declared` returns the groups in :func:`sparsejax.structured.discover.canonical` form, so
they compare with ``==`` to what :func:`sparsejax.structured.discover.discover` finds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from experiments import models
from sparsejax.structured import discover as discover_lib
from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member


def _key(*names: str) -> str:
  return "".join(f"[{name!r}]" for name in names)


def _at(tree: dict, name: Sequence[str]) -> dict:
  for key in name:
    tree = tree[key]
  return tree


def _layer(params: dict, name: Sequence[str], consumers: Sequence[Consumer],
           *, state: dict | None = None, bn: Sequence[str] | None = None) -> GroupSet:
  """One layer's set: kernel ``name`` (its output axis is the last), its bias if any, the
  BatchNorm ``bn``'s scale and shift and, as buffers, its running statistics in ``state``."""
  module = _at(params, name)
  kernel = np.shape(module["kernel"])
  members = [Member(_key(*name, "kernel"), len(kernel) - 1)]
  if "bias" in module:
    members.append(Member(_key(*name, "bias"), 0))
  buffers = []
  if bn is not None:
    members += [Member(_key(*bn, "scale"), 0), Member(_key(*bn, "bias"), 0)]
    buffers = [Member(_key(*bn, stat), 0) for stat in _at(state, bn)]
  return GroupSet(_key(*name), kernel[-1], tuple(members), tuple(consumers), tuple(buffers))


def _reads(params: dict, *name: str) -> Consumer:
  """The input axis of kernel ``name``."""
  return Consumer(_key(*name, "kernel"), np.ndim(_at(params, name)["kernel"]) - 2)


def _dense_stack(params: dict, names: Sequence[str]) -> list[GroupSet]:
  """Dense layers ``names``, each read by the next, the last by ``output``."""
  readers = [*names[1:], "output"]
  return [_layer(params, (n,), [_reads(params, r)]) for n, r in zip(names, readers)]


def _numbered(params: dict, prefix: str) -> list[str]:
  names = [k for k in params if re.fullmatch(rf"{prefix}\d+", k)]
  return sorted(names, key=lambda k: int(k[len(prefix):]))


def _lenet(params: dict, state: dict) -> list[GroupSet]:
  del state  # No BatchNorm.
  return _dense_stack(params, _numbered(params, "dense"))


def _flattened(params: dict, name: Sequence[str], reader: str) -> Consumer:
  """Dense ``reader`` reading kernel ``name``'s channels after a flatten of NHWC maps (``outer``
  = H*W positions; 1 after global average pooling)."""
  channels = np.shape(_at(params, name)["kernel"])[-1]
  positions = np.shape(params[reader]["kernel"])[0] // channels
  return Consumer(_key(reader, "kernel"), 0, 0, positions, 1)


def _convnet(params: dict, state: dict) -> list[GroupSet]:
  del state  # No BatchNorm.
  convs, denses = _numbered(params, "conv"), _numbered(params, "dense")
  sets = [_layer(params, (c,), [_reads(params, r)]) for c, r in zip(convs, convs[1:])]
  sets.append(_layer(params, (convs[-1],), [_flattened(params, (convs[-1],), denses[0])]))
  return sets + _dense_stack(params, denses)


def _vgg(params: dict, state: dict) -> list[GroupSet]:
  layers = _numbered(params, "layer")
  readers = [_reads(params, r, "conv") for r in layers[1:]]
  readers.append(_flattened(params, (layers[-1], "conv"), "output"))
  return [_layer(params, (n, "conv"), [r], state=state, bn=(n, "bn"))
          for n, r in zip(layers, readers)]


def _resnet(params: dict, state: dict) -> list[GroupSet]:
  blocks = [k for k in params if re.fullmatch(r"stage\d+_block\d+", k)]
  blocks.sort(key=lambda k: tuple(int(n) for n in re.findall(r"\d+", k)))
  sets = []
  stream = [_layer(params, ("conv",), (), state=state, bn=("bn",))]
  for index, block in enumerate(blocks):
    # The incoming stream is read by conv1 and, where a stage starts, the 1x1 shortcut, whose
    # output starts the next stream.
    readers = [_reads(params, block, "conv1")]
    starts_stage = "shortcut_conv" in params[block]
    if starts_stage:
      readers.append(_reads(params, block, "shortcut_conv"))
    stream[0] = _add_consumers(stream[0], readers)
    if starts_stage:
      sets.append(_merge(stream))
      stream = [_layer(params, (block, "shortcut_conv"), (), state=state,
                       bn=(block, "shortcut_bn"))]
    sets.append(_layer(params, (block, "conv1"), [_reads(params, block, "conv2")], state=state,
                       bn=(block, "bn1")))
    stream.append(_layer(params, (block, "conv2"), (), state=state, bn=(block, "bn2")))
    if index == len(blocks) - 1:
      stream[0] = _add_consumers(stream[0], [_reads(params, "output")])
  return sets + [_merge(stream)]


def _add_consumers(s: GroupSet, consumers: Sequence[Consumer]) -> GroupSet:
  return GroupSet(s.name, s.size, s.members, s.consumers + tuple(consumers), s.buffers)


def _merge(stream: Sequence[GroupSet]) -> GroupSet:
  """One set of the layers a residual stream adds together."""
  return GroupSet(stream[0].name, stream[0].size, sum((s.members for s in stream), ()),
                  sum((s.consumers for s in stream), ()), sum((s.buffers for s in stream), ()))


_DECLARE = {
    "lenet300": _lenet,
    "conv2": _convnet,
    "conv4": _convnet,
    "conv6": _convnet,
    "vgg11": _vgg,
    "vgg16": _vgg,
    "resnet20": _resnet,
    "cnn_bn": _vgg,
}


def declared(model: models.Model, params: dict, state: dict) -> Groups:
  """The zero-invariant groups of zoo model ``model`` for its ``params`` (and BatchNorm
  ``state``, whose running statistics are the buffers), in canonical form."""
  if model.name not in _DECLARE:
    raise ValueError(f"no declared groups for model {model.name!r}; known: {', '.join(_DECLARE)}")
  return discover_lib.canonical(Groups(tuple(_DECLARE[model.name](params, state))), params)
