"""Flax NNX models for the experiment runner, behind a pure functional API.

Architectures (``MODELS``):

- ``lenet300``: LeNet-300-100 (LeCun et al., "Gradient-based learning applied to document
  recognition", 1998), the MNIST network of Frankle & Carbin, "The Lottery Ticket Hypothesis:
  Finding Sparse, Trainable Neural Networks", ICLR 2019, Fig. 2.
- ``conv2``, ``conv4``, ``conv6``: the Conv-2/4/6 networks of Frankle & Carbin (2019), Fig. 2
  (VGG-like, Simonyan & Zisserman 2015): pairs of 3x3 convolutions with 64, 128, 256 filters, each
  pair followed by 2x2 max-pooling, then dense layers 256, 256, ``num_classes``. No BatchNorm.
- ``vgg11``, ``vgg16``: CIFAR VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for
  Large-Scale Image Recognition", ICLR 2015) with BatchNorm (Ioffe & Szegedy 2015) after every
  convolution, as OpenLTH's ``cifar_vgg_11`` / ``cifar_vgg_16`` (Frankle et al., "Linear Mode
  Connectivity and the Lottery Ticket Hypothesis", ICML 2020): the plans below, global average
  pooling and one dense layer.
- ``resnet20``: CIFAR ResNet-20 (He et al., "Deep Residual Learning for Image Recognition", CVPR
  2016, Sec. 4.2) as OpenLTH's ``cifar_resnet_20``: a 3x3 stem with 16 filters, 3 stages of 3
  basic blocks with 16/32/64 filters, a 1x1 convolution + BatchNorm shortcut where the shape
  changes, global average pooling and one dense layer.
- ``cnn_bn``: the VGG-style CNN of the structured-sparsity benchmark (``benchmarks/structured.py``,
  ``configs/hesso_cnn_fashion.py``): 3x3 convolutions 32, 64 (+ 2x2 max-pool), 128 (+ 2x2
  max-pool), each followed by BatchNorm and ReLU, then Flatten and one dense layer.

Initializers, chosen by name (:func:`build`'s ``model_init``, one of ``MODEL_INITS``) for every
convolution and dense kernel; fans count a convolution's receptive field (fan_in = kh*kw*in):

- ``"default"``: each architecture's paper default. LeNet-300-100 and Conv-2/4/6 use
  ``glorot_normal``, the Gaussian Glorot initialization of Frankle & Carbin (2019), Appendix; VGG,
  ResNet-20 and ``cnn_bn`` use ``kaiming_normal``, OpenLTH's ``model_init='kaiming_normal'``.
- ``"kaiming_normal"``, ``"kaiming_uniform"``: He et al., "Delving Deep into Rectifiers", ICCV 2015:
  N(0, 2 / fan_in) (not truncated) and U(-sqrt(6 / fan_in), sqrt(6 / fan_in)), as
  ``torch.nn.init.kaiming_normal_`` / ``kaiming_uniform_`` with their defaults (fan_in, a=0).
- ``"glorot_normal"``, ``"glorot_uniform"``: Glorot & Bengio, "Understanding the difficulty of
  training deep feedforward neural networks", AISTATS 2010: variance 2 / (fan_in + fan_out); the
  normal one truncated at two standard deviations (and rescaled to keep that variance) as
  TensorFlow's ``glorot_normal``, the uniform one U(-b, b) with b = sqrt(6 / (fan_in + fan_out)).

BatchNorm scales start ~ U[0, 1) and shifts at 0 whatever ``model_init`` (OpenLTH's
``batchnorm_init='uniform'``). Biases (``bias_init``, one of ``BIAS_INITS``) start at ``"zeros"``,
or with ``"pytorch"`` at PyTorch's default for ``nn.Linear`` / ``nn.Conv2d``:
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_features (dense) or in_channels*kh*kw (conv).
OpenLTH keeps PyTorch's default biases, so its ``mnist_lenet_300_100`` preset initializes as
``build("lenet300", ..., model_init="kaiming_normal", bias_init="pytorch")``.

BatchNorm uses PyTorch's defaults, as OpenLTH: running-average momentum 0.1 (Flax ``momentum=0.9``)
and epsilon 1e-5. Images are NHWC and kernels HWIO (Flax's defaults). 3x3 convolutions pad by 1 on
every side (PyTorch's ``padding=1``), also when strided. 2x2 max-pools use ``"SAME"`` padding: on
even sizes this is PyTorch's ``MaxPool2d(2)``, and an odd size rounds up instead of down, so that
any input size (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR) keeps at least one pixel.

Widths (:func:`build`'s ``widths``) override the hidden widths of an architecture, for instance
to rebuild a network compressed by removing zero groups (Chen et al., "Only Train Once", OTOv1
NeurIPS 2021 and OTOv2 ICLR 2023: the compressed network is the same architecture, only
narrower). :attr:`Model.widths` names every width: ``lenet300`` ``{"dense1": 300, "dense2":
100}``; Conv-2/4/6 one per convolution and the two hidden dense layers (``{"conv1": 64, ...,
"dense1": 256, "dense2": 256}``); VGG one per convolution (``{"layer1": 64, ...}``); ResNet-20 the
width of each stage's residual stream (``"stage1"``, ``"stage2"``, ``"stage3"``: the stem, or the
first block's shortcut, and every block's second convolution write it, tied by the residual
additions) and every block's inner width (``"stage1_block1"``, ...: its first convolution).
Which ResNet blocks have a 1x1 shortcut convolution is fixed by the architecture (the first block
of every stage but the first), whatever the widths. :meth:`Model.widths_of` reads the widths back
from a params tree, so ``build(name, ..., widths=model.widths_of(params))`` rebuilds a network for
compressed ``params``.

The library only sees pytrees: :func:`build` returns a :class:`Model` (static: the
``nnx.GraphDef``, no arrays) whose :meth:`Model.init` turns a ``jax.random`` key into two plain
nested dicts of arrays, ``params`` (every ``nnx.Param``) and ``state`` (the BatchNorm running
statistics, ``{}`` without BatchNorm), whose key paths read like ``['dense1']['kernel']``.
``jax.vmap(model.init)`` over a batch of keys builds replicates. :meth:`Model.apply` is a pure
function of them. The output layer is always the attribute ``output`` and every BatchNorm path
contains ``bn``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import linear as nnx_linear

_KERNEL_INITS = {
    "kaiming_normal": nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
    "kaiming_uniform": nnx.initializers.variance_scaling(2.0, "fan_in", "uniform"),
    "glorot_normal": nnx.initializers.glorot_normal(),
    "glorot_uniform": nnx.initializers.glorot_uniform(),
}
MODEL_INITS: tuple[str, ...] = ("default", *_KERNEL_INITS)
BIAS_INITS: tuple[str, ...] = ("zeros", "pytorch")

_POOL = "M"
_VGG_PLANS = {
    "vgg11": (64, _POOL, 128, _POOL, 256, 256, _POOL, 512, 512, _POOL, 512, 512),
    "vgg16": (
        64,
        64,
        _POOL,
        128,
        128,
        _POOL,
        256,
        256,
        256,
        _POOL,
        512,
        512,
        512,
        _POOL,
        512,
        512,
        512,
    ),
}


@dataclasses.dataclass(frozen=True)
class _Init:
  """A model's initializers: ``kernel`` names one of ``_KERNEL_INITS``, ``bias`` one of
  ``BIAS_INITS``."""

  kernel: str
  bias: str

  def kernel_init(self) -> nnx.Initializer:
    return _KERNEL_INITS[self.kernel]

  def bias_init(self, fan_in: int) -> nnx.Initializer:
    if self.bias == "zeros":
      return nnx.initializers.zeros_init()
    bound = 1 / math.sqrt(fan_in)

    def pytorch_bias(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
      return jax.random.uniform(key, shape, dtype, -bound, bound)

    return pytorch_bias


def _dense(in_features: int, out_features: int, init: _Init, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      in_features,
      out_features,
      kernel_init=init.kernel_init(),
      bias_init=init.bias_init(in_features),
      rngs=rngs,
  )


def _conv(
    in_features: int,
    out_features: int,
    init: _Init,
    rngs: nnx.Rngs,
    *,
    kernel_size: int = 3,
    stride: int = 1,
    use_bias: bool = True,
) -> nnx.Conv:
  return nnx.Conv(
      in_features,
      out_features,
      (kernel_size, kernel_size),
      strides=stride,
      padding=kernel_size // 2,
      use_bias=use_bias,
      kernel_init=init.kernel_init(),
      bias_init=init.bias_init(in_features * kernel_size * kernel_size),
      rngs=rngs,
  )


def _batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(
      num_features, momentum=0.9, epsilon=1e-5, scale_init=nnx.initializers.uniform(1.0), rngs=rngs
  )


def _max_pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _pooled_size(size: int, num_pools: int) -> int:
  """Spatial size after ``num_pools`` ``_max_pool``s (each rounds an odd size up)."""
  for _ in range(num_pools):
    size = -(-size // 2)
  return size


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
  if len(input_shape) != 3:
    raise ValueError(
        f"convolutional models need input_shape (height, width, channels), "
        f"got {tuple(input_shape)}"
    )
  height, width, channels = input_shape
  return height, width, channels


class LeNet300(nnx.Module):
  """LeNet-300-100: flatten -> dense 300 -> relu -> dense 100 -> relu -> dense num_classes (the
  hidden widths ``widths["dense1"]``, ``widths["dense2"]``)."""

  def __init__(
      self,
      widths: Mapping[str, int],
      input_shape: Sequence[int],
      num_classes: int,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    self.dense1 = _dense(math.prod(input_shape), widths["dense1"], init, rngs)
    self.dense2 = _dense(widths["dense1"], widths["dense2"], init, rngs)
    self.output = _dense(widths["dense2"], num_classes, init, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No batch statistics.
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dense1(x))
    x = nnx.relu(self.dense2(x))
    return self.output(x)


class ConvNet(nnx.Module):
  """Conv-2/4/6 (Frankle & Carbin 2019, Fig. 2): ``pairs`` pairs of 3x3 convolutions (attributes
  ``conv1``, ``conv2``, ..., of widths ``widths["conv1"]``, ...), each pair followed by a 2x2
  max-pool, then dense ``widths["dense1"]`` -> dense ``widths["dense2"]`` -> dense num_classes,
  ReLU after every layer but the last."""

  def __init__(
      self,
      pairs: int,
      widths: Mapping[str, int],
      input_shape: Sequence[int],
      num_classes: int,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    height, width, channels = _image_shape(input_shape)
    self.num_convs = 2 * pairs
    in_features = channels
    for index in range(1, self.num_convs + 1):
      features = widths[f"conv{index}"]
      setattr(self, f"conv{index}", _conv(in_features, features, init, rngs))
      in_features = features
    flat_features = _pooled_size(height, pairs) * _pooled_size(width, pairs) * in_features
    self.dense1 = _dense(flat_features, widths["dense1"], init, rngs)
    self.dense2 = _dense(widths["dense1"], widths["dense2"], init, rngs)
    self.output = _dense(widths["dense2"], num_classes, init, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No batch statistics.
    for index in range(1, self.num_convs + 1):
      x = nnx.relu(getattr(self, f"conv{index}")(x))
      if index % 2 == 0:
        x = _max_pool(x)
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dense1(x))
    x = nnx.relu(self.dense2(x))
    return self.output(x)


class ConvBN(nnx.Module):
  """3x3 convolution (with bias) -> BatchNorm -> ReLU: one layer of OpenLTH's CIFAR VGG."""

  def __init__(self, in_features: int, out_features: int, init: _Init, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, init, rngs)
    self.bn = _batch_norm(out_features, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if train:
      return nnx.relu(self.bn(self.conv(x), use_running_average=False))
    return nnx.relu(_folded_conv(self.conv, self.bn, x))


def _folded_conv(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
  """``bn(conv(x))`` in evaluation mode with the BatchNorm folded into the convolution (Jacob et
  al., CVPR 2018, Sec. 3.2): with a = scale / sqrt(var + eps), the kernel is scaled by a per output
  channel and the bias becomes a (b - mean) + shift, so no per-element normalization pass runs
  after the convolution (XLA:CPU recomputes the normalization per element, a large share of a
  narrow compressed layer's time). Equal to the unfolded layer up to float rounding."""
  a = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
  bias = bn.bias[...] - bn.mean[...] * a
  if conv.bias is not None:
    bias = bias + conv.bias[...] * a
  strides = (conv.strides,) * 2 if isinstance(conv.strides, int) else tuple(conv.strides)
  y = jax.lax.conv_general_dilated(x, conv.kernel[...] * a, strides,
                                   nnx_linear.canonicalize_padding(conv.padding, 2),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias


class VGG(nnx.Module):
  """CIFAR VGG with BatchNorm (OpenLTH ``cifar_vgg``): ``plan`` lists convolutions (attributes
  ``layer1``, ``layer2``, ..., each a :class:`ConvBN` of width ``widths["layer1"]``, ...) and
  ``"M"`` for a 2x2 max-pool; then global average pooling and one dense layer ``output``."""

  def __init__(
      self,
      plan: Sequence[int | str],
      widths: Mapping[str, int],
      input_shape: Sequence[int],
      num_classes: int,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    *_, channels = _image_shape(input_shape)
    self.plan = tuple(plan)
    in_features = channels
    for index in range(1, sum(s != _POOL for s in plan) + 1):
      features = widths[f"layer{index}"]
      setattr(self, f"layer{index}", ConvBN(in_features, features, init, rngs))
      in_features = features
    self.output = _dense(in_features, num_classes, init, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    index = 0
    for spec in self.plan:
      if spec == _POOL:
        x = _max_pool(x)
      else:
        index += 1
        x = getattr(self, f"layer{index}")(x, train=train)
    return self.output(x.mean(axis=(1, 2)))


class SmallCNN(nnx.Module):
  """The VGG-style CNN of the structured-sparsity benchmark (``cnn_bn``): :class:`ConvBN` layers
  ``layer1`` (32), ``layer2`` (64), a 2x2 max-pool, ``layer3`` (128), a 2x2 max-pool, then Flatten
  and one dense layer ``output`` (6272 -> num_classes on 28x28 inputs)."""

  def __init__(
      self,
      widths: Mapping[str, int],
      input_shape: Sequence[int],
      num_classes: int,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    height, width, channels = _image_shape(input_shape)
    self.layer1 = ConvBN(channels, widths["layer1"], init, rngs)
    self.layer2 = ConvBN(widths["layer1"], widths["layer2"], init, rngs)
    self.layer3 = ConvBN(widths["layer2"], widths["layer3"], init, rngs)
    flat_features = _pooled_size(height, 2) * _pooled_size(width, 2) * widths["layer3"]
    self.output = _dense(flat_features, num_classes, init, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _max_pool(self.layer2(self.layer1(x, train=train), train=train))
    x = _max_pool(self.layer3(x, train=train))
    return self.output(x.reshape(x.shape[0], -1))


class BasicBlock(nnx.Module):
  """He et al. (2016) basic block: conv3x3 (``inner_features``) -> BN -> relu -> conv3x3 -> BN,
  plus the shortcut (identity, or with ``projection`` 1x1 conv -> BN), then relu."""

  def __init__(
      self,
      in_features: int,
      inner_features: int,
      out_features: int,
      stride: int,
      projection: bool,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    self.conv1 = _conv(in_features, inner_features, init, rngs, stride=stride, use_bias=False)
    self.bn1 = _batch_norm(inner_features, rngs)
    self.conv2 = _conv(inner_features, out_features, init, rngs, use_bias=False)
    self.bn2 = _batch_norm(out_features, rngs)
    if projection:
      self.shortcut_conv = _conv(
          in_features,
          out_features,
          init,
          rngs,
          kernel_size=1,
          stride=stride,
          use_bias=False,
      )
      self.shortcut_bn = _batch_norm(out_features, rngs)
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    out = self.bn2(self.conv2(out), use_running_average=not train)
    if self.shortcut_conv is not None:
      x = self.shortcut_bn(self.shortcut_conv(x), use_running_average=not train)
    return nnx.relu(out + x)


class ResNet(nnx.Module):
  """CIFAR ResNet (He et al. 2016, Sec. 4.2; OpenLTH ``cifar_resnet``): stem ``conv``/``bn``,
  ``stages`` stages of basic blocks (attributes ``stage1_block1``, ...; the first block of every
  stage but the first halves the resolution and projects its shortcut), global average pooling
  and one dense layer ``output``. Stage ``s``'s residual stream has ``widths[f"stage{s}"]``
  channels, block ``name``'s first convolution ``widths[name]``."""

  def __init__(
      self,
      stages: int,
      blocks_per_stage: int,
      widths: Mapping[str, int],
      input_shape: Sequence[int],
      num_classes: int,
      init: _Init,
      rngs: nnx.Rngs,
  ):
    *_, channels = _image_shape(input_shape)
    self.block_names = tuple(
        f"stage{s}_block{b}" for s in range(1, stages + 1) for b in range(1, blocks_per_stage + 1)
    )
    in_features = widths["stage1"]
    self.conv = _conv(channels, in_features, init, rngs, use_bias=False)
    self.bn = _batch_norm(in_features, rngs)
    for stage in range(1, stages + 1):
      features = widths[f"stage{stage}"]
      for block in range(1, blocks_per_stage + 1):
        name = f"stage{stage}_block{block}"
        first = stage > 1 and block == 1
        stride = 2 if first else 1
        setattr(
            self,
            name,
            BasicBlock(in_features, widths[name], features, stride, first, init, rngs),
        )
        in_features = features
    self.output = _dense(in_features, num_classes, init, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
    for name in self.block_names:
      x = getattr(self, name)(x, train=train)
    return self.output(x.mean(axis=(1, 2)))


class _Architecture(NamedTuple):
  """``module(widths, input_shape, num_classes, init, rngs)``, the kernel initializer
  ``model_init="default"`` stands for, and the widths: ``{key: (default width, path of the kernel
  whose last axis has that width)}``."""

  module: Callable[..., nnx.Module]
  default_init: str
  widths: dict[str, tuple[int, tuple[str, ...]]]


def _dense_widths(**widths: int) -> dict[str, tuple[int, tuple[str, ...]]]:
  return {key: (width, (key, "kernel")) for key, width in widths.items()}


def _convnet(pair_widths: Sequence[int]) -> _Architecture:
  convs = {f"conv{i}": w for i, w in enumerate((w for w in pair_widths for _ in range(2)), 1)}
  return _Architecture(
      functools.partial(ConvNet, len(pair_widths)),
      "glorot_normal",
      _dense_widths(**convs, dense1=256, dense2=256),
  )


def _vgg(plan: Sequence[int | str]) -> _Architecture:
  convs = [s for s in plan if s != _POOL]
  return _Architecture(
      functools.partial(VGG, plan),
      "kaiming_normal",
      {f"layer{i}": (w, (f"layer{i}", "conv", "kernel")) for i, w in enumerate(convs, 1)},
  )


def _resnet(stage_widths: Sequence[int], blocks_per_stage: int) -> _Architecture:
  widths = {}
  for stage, width in enumerate(stage_widths, 1):
    # The first block's second convolution writes the stream (the stem or shortcut does too).
    widths[f"stage{stage}"] = (width, (f"stage{stage}_block1", "conv2", "kernel"))
    for block in range(1, blocks_per_stage + 1):
      name = f"stage{stage}_block{block}"
      widths[name] = (width, (name, "conv1", "kernel"))
  return _Architecture(
      functools.partial(ResNet, len(stage_widths), blocks_per_stage), "kaiming_normal", widths
  )


_ARCHITECTURES: dict[str, _Architecture] = {
    "lenet300": _Architecture(LeNet300, "glorot_normal", _dense_widths(dense1=300, dense2=100)),
    "conv2": _convnet((64,)),
    "conv4": _convnet((64, 128)),
    "conv6": _convnet((64, 128, 256)),
    "vgg11": _vgg(_VGG_PLANS["vgg11"]),
    "vgg16": _vgg(_VGG_PLANS["vgg16"]),
    "resnet20": _resnet((16, 32, 64), 3),
    "cnn_bn": _Architecture(
        SmallCNN,
        "kaiming_normal",
        {f"layer{i}": (w, (f"layer{i}", "conv", "kernel")) for i, w in enumerate((32, 64, 128), 1)},
    ),
}
MODELS: tuple[str, ...] = tuple(_ARCHITECTURES)


def _split(module: nnx.Module) -> tuple[Any, dict, dict]:
  """(graphdef, params, state): params are the ``nnx.Param``s, state everything else."""
  graphdef, params, state = nnx.split(module, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(state)


def _check_choice(what: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _resolve_widths(name: str, widths: Mapping[str, int] | None) -> tuple[tuple[str, int], ...]:
  """Every width of architecture ``name``: its defaults, overridden by ``widths``."""
  defaults = {key: width for key, (width, _) in _ARCHITECTURES[name].widths.items()}
  widths = dict(widths or {})
  unknown = sorted(set(widths) - set(defaults))
  if unknown:
    raise ValueError(
        f"unknown widths {unknown} for model {name!r}; valid: {', '.join(defaults)}"
    )
  bad = {
      key: width
      for key, width in widths.items()
      if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1
  }
  if bad:
    raise ValueError(
        f"widths must be positive ints, got {bad} for model {name!r}; valid keys: "
        f"{', '.join(defaults)}"
    )
  return tuple((key, int(widths.get(key, width))) for key, width in defaults.items())


@dataclasses.dataclass(frozen=True)
class Model:
  """A model's static structure, without arrays: :meth:`init` makes them, :meth:`apply` uses them.

  Hashable, so it can be closed over or passed as a static argument of ``jax.jit``. Models built
  with the same name, shapes, widths and initializers compare equal, so they share compiled
  steps; ``model_init`` is the resolved kernel initializer (never ``"default"``) and
  ``width_items`` every width of the architecture as ``(key, width)`` pairs (see :attr:`widths`).
  """

  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  model_init: str
  bias_init: str
  width_items: tuple[tuple[str, int], ...]
  graphdef: Any = dataclasses.field(repr=False)
  builder: Callable[[nnx.Rngs], nnx.Module] = dataclasses.field(
      compare=False, hash=False, repr=False
  )

  @property
  def widths(self) -> dict[str, int]:
    """Every hidden width of the architecture, ``{key: width}`` (see the module docstring)."""
    return dict(self.width_items)

  def widths_of(self, params: Any) -> dict[str, int]:
    """The widths of a params tree of this architecture (arrays or ``jax.ShapeDtypeStruct``),
    read from its shapes: ``build(self.name, ..., widths=self.widths_of(params))`` makes params
    of exactly ``params``' shapes, for instance after compression."""
    widths = {}
    for key, (_, path) in _ARCHITECTURES[self.name].widths.items():
      leaf = params
      for part in path:
        leaf = leaf[part]
      widths[key] = int(leaf.shape[-1])
    return widths

  def init(self, key: jax.Array) -> tuple[dict, dict]:
    """``(params, state)`` drawn from the ``jax.random`` key ``key`` (typed or raw uint32).

    ``params`` holds every trainable array (kernels, biases, BatchNorm scales and shifts),
    ``state`` the BatchNorm running mean and variance (``{}`` for models without BatchNorm); both
    are plain nested dicts of ``jax.Array``. The same key gives the same arrays (inside and
    outside ``jit`` up to floating-point rounding). Pure: usable under ``jit``, and
    ``jax.vmap(model.init)(keys)`` stacks one model per key.
    """
    _, params, state = _split(self.builder(nnx.Rngs(key)))
    return params, state

  def apply(
      self, params: dict, state: dict, x: jax.Array, *, train: bool
  ) -> tuple[jax.Array, dict]:
    """Logits for ``x`` of shape ``(batch, *input_shape)``, and the new state.

    ``train`` is a Python bool. ``train=True`` normalizes with batch statistics and returns
    the updated BatchNorm running averages; ``train=False`` normalizes with the running
    averages and returns ``state`` itself. Pure: usable under ``jit``, ``grad`` (with respect
    to ``params``) and ``vmap``.
    """
    module = nnx.merge(self.graphdef, params, state)
    logits = module(x, train=train)
    if not train:
      return logits, state
    _, _, new_state = _split(module)
    return logits, new_state


def build(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    model_init: str = "default",
    bias_init: str = "zeros",
    widths: Mapping[str, int] | None = None,
) -> Model:
  """The static model ``name`` for inputs of shape ``input_shape`` (one example, e.g.
  (28, 28, 1)), with kernels initialized by ``model_init`` (one of ``MODEL_INITS``) and biases
  by ``bias_init`` (one of ``BIAS_INITS``). ``widths`` overrides some of the hidden widths
  (keys of :attr:`Model.widths`; positive ints), e.g. :meth:`Model.widths_of` compressed params.
  Allocates no arrays; see :meth:`Model.init`."""
  _check_choice("model", name, MODELS)
  _check_choice("model_init", model_init, MODEL_INITS)
  _check_choice("bias_init", bias_init, BIAS_INITS)
  width_items = _resolve_widths(name, widths)
  architecture = _ARCHITECTURES[name]
  kernel_init = architecture.default_init if model_init == "default" else model_init
  input_shape = tuple(int(size) for size in input_shape)
  builder = functools.partial(
      architecture.module,
      dict(width_items),
      input_shape,
      num_classes,
      _Init(kernel_init, bias_init),
  )
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: builder(nnx.Rngs(0))))
  return Model(
      name, num_classes, input_shape, kernel_init, bias_init, width_items, graphdef, builder
  )


def create(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    key: jax.Array,
    model_init: str = "default",
    bias_init: str = "zeros",
    widths: Mapping[str, int] | None = None,
) -> tuple[Model, dict, dict]:
  """``(model, params, state)``: :func:`build`, then :meth:`Model.init` with ``key``."""
  model = build(
      name,
      num_classes=num_classes,
      input_shape=input_shape,
      model_init=model_init,
      bias_init=bias_init,
      widths=widths,
  )
  return (model, *model.init(key))
