"""Datasets for the experiment runner, held in device memory, and pure batching.

Sources (the ``spec`` argument of :func:`load`), all readable without network:

- ``"fashion_mnist"``: Fashion-MNIST from its four gzipped IDX files (Debian package
  ``dataset-fashion-mnist``, or any directory given by ``data_dir`` / ``$SPARSEJAX_FASHION_MNIST_DIR``).
- ``"idx:DIR"``: any MNIST-format IDX directory (MNIST, KMNIST, Fashion-MNIST, an EMNIST split).
- ``"digits"``: scikit-learn's 8x8 handwritten digits, shipped with scikit-learn.
- ``"tfds:NAME"``: a TFDS dataset already prepared in the ``array_record`` format, read through
  ``tfds.data_source`` (no TensorFlow needed); ``NAME`` may carry a config and version as
  TFDS spells them (``"tfds:mnist:3.0.1"``).

Every dataset is normalized per channel with the mean and standard deviation of the loaded train
examples, and lives on the default device. Training order is a pure function of
``(key, epoch, step)``: :func:`epoch_permutation` and :func:`batch_at` run inside ``jit``, so the
data never leaves the device and a run resumed mid-epoch sees the same batches.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV_VAR = "SPARSEJAX_FASHION_MNIST_DIR"

VALID_SPECS = (
    "'fashion_mnist'",
    "'idx:DIR' (a directory of MNIST-format IDX files)",
    "'digits' (scikit-learn)",
    "'tfds:NAME' (a TFDS dataset prepared as array_record)",
)

_OFFLINE_ALTERNATIVES = (
    "Datasets that work offline: 'digits' (ships with scikit-learn), 'idx:DIR' (any directory "
    "holding the 4 MNIST-format IDX files), 'tfds:NAME' (a TFDS dataset already prepared in the "
    "array_record format under data_dir or $TFDS_DATA_DIR)."
)

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data is big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(ValueError):
  """The files of a dataset are not on this machine (and will not be downloaded)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A normalized image classification dataset in device memory.

  Attributes:
    name: where the data came from (the ``spec`` given to :func:`load`).
    train_x: float32 ``(N, H, W, C)``, normalized with the per-channel mean and standard
      deviation of these train examples.
    train_y: int32 ``(N,)`` labels in ``[0, num_classes)``.
    test_x: float32 ``(M, H, W, C)``, normalized with the train statistics.
    test_y: int32 ``(M,)``.
    num_classes: number of classes (the width of the model's output).
  """

  name: str
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int

  @property
  def input_shape(self) -> tuple[int, ...]:
    """``(H, W, C)`` of one example."""
    return tuple(self.train_x.shape[1:])

  @property
  def num_train(self) -> int:
    return int(self.train_x.shape[0])

  @property
  def num_test(self) -> int:
    return int(self.test_x.shape[0])


def load(
    spec: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Dataset:
  """Loads a dataset into device memory; never touches the network.

  Args:
    spec: ``"fashion_mnist"``, ``"idx:DIR"``, ``"digits"`` or ``"tfds:NAME"`` (see module doc).
    data_dir: for ``fashion_mnist``, the directory of its IDX files (overrides
      ``$SPARSEJAX_FASHION_MNIST_DIR`` and the Debian default); for ``tfds:NAME``, the TFDS data
      directory (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Ignored otherwise.
    train_subset: keep only the first ``n`` train examples (deterministic), for small runs.
    test_subset: keep only the first ``n`` test examples.

  Returns:
    A :class:`Dataset`. ``num_classes`` is computed before subsetting, so a subset run builds
    the same model as a full run; normalization statistics come from the kept train examples.

  Raises:
    DatasetNotFoundError: the files are not on this machine; the message says where it looked
      and how to get them.
    ValueError: unknown ``spec``, malformed files or invalid subset sizes.
  """
  if spec == "fashion_mnist":
    directory = _fashion_mnist_dir(data_dir)
    splits, num_classes = _load_idx_dir(directory, spec, _fashion_mnist_missing_message)
  elif spec.startswith("idx:") and len(spec) > len("idx:"):
    directory = Path(spec[len("idx:") :]).expanduser()
    splits, num_classes = _load_idx_dir(directory, spec, _idx_missing_message)
  elif spec == "digits":
    splits, num_classes = _load_digits()
  elif spec.startswith("tfds:") and len(spec) > len("tfds:"):
    splits, num_classes = _load_tfds(spec[len("tfds:") :], data_dir, train_subset, test_subset)
  else:
    raise ValueError(f"Unknown dataset spec {spec!r}; valid forms: {', '.join(VALID_SPECS)}.")
  (train_x, train_y), (test_x, test_y) = splits
  train_x, train_y = _first(train_x, train_y, train_subset, "train_subset")
  test_x, test_y = _first(test_x, test_y, test_subset, "test_subset")
  train_x, test_x = _normalize(train_x, test_x)
  return Dataset(
      name=spec,
      train_x=jnp.asarray(train_x),
      train_y=jnp.asarray(train_y),
      test_x=jnp.asarray(test_x),
      test_y=jnp.asarray(test_y),
      num_classes=int(num_classes),
  )


def _first(x: np.ndarray, y: np.ndarray, n: int | None, what: str) -> tuple[np.ndarray, np.ndarray]:
  if n is None:
    return x, y
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(x):
    raise ValueError(f"{what} must be an integer in [1, {len(x)}], got {n!r}.")
  return x[:n], y[:n]


def _normalize(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Standardizes both splits per channel with the statistics of ``train_x``."""
  train = train_x.astype(np.float64)
  mean = train.mean(axis=(0, 1, 2))
  std = train.std(axis=(0, 1, 2))
  std = np.where(std > 0, std, 1.0)

  def apply(x):
    return ((x.astype(np.float64) - mean) / std).astype(np.float32)

  return apply(train_x), apply(test_x)


def _as_images(x: np.ndarray, source: str) -> np.ndarray:
  """``(N, H, W)`` or ``(N, H, W, C)`` -> ``(N, H, W, C)``."""
  if x.ndim == 3:
    return x[..., None]
  if x.ndim == 4:
    return x
  raise ValueError(f"{source}: expected images of rank 3 or 4 (N, H, W[, C]), got shape {x.shape}.")


def _as_labels(y: np.ndarray, source: str) -> np.ndarray:
  if y.ndim != 1:
    raise ValueError(f"{source}: expected labels of rank 1, got shape {y.shape}.")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{source}: expected integer labels, got dtype {y.dtype}.")
  if y.size and y.min() < 0:
    raise ValueError(f"{source}: labels must be non-negative, found {y.min()}.")
  return y.astype(np.int32)


# --------------------------------------------------------------------------------------------
# IDX files


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzipped if its name ends in ``.gz``) into a numpy array.

  The format: two zero bytes, a type code byte, a rank byte, the dimensions as big-endian
  uint32, then the data in C order, big-endian.

  Raises:
    ValueError: the file is not a well-formed IDX file (bad magic, unknown type code, size
      that does not match the header).
  """
  path = Path(path)
  opener = gzip.open if path.name.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (gzip.BadGzipFile, EOFError) as e:
    raise ValueError(f"{path}: not a valid gzip file ({e}).") from e
  if len(raw) < 4:
    raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header.")
  zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
  if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
    raise ValueError(
        f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000TTNN with type code TT "
        f"in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and rank NN >= 1 "
        "(e.g. 0x00000803 for uint8 images, 0x00000801 for uint8 labels)."
    )
  header_end = 4 + 4 * ndim
  if len(raw) < header_end:
    raise ValueError(f"{path}: truncated IDX header (rank {ndim}, {len(raw)} bytes).")
  shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header_end != expected:
    raise ValueError(
        f"{path}: header says shape {shape} of {dtype} ({expected} data bytes) but the file "
        f"holds {len(raw) - header_end} data bytes."
    )
  data = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


_IDX_ROLES = {
    ("train", "images"): (("train",), "images", 3),
    ("train", "labels"): (("train",), "labels", 1),
    ("test", "images"): (("t10k", "test"), "images", 3),
    ("test", "labels"): (("t10k", "test"), "labels", 1),
}


def _idx_candidates(prefixes: Sequence[str], kind: str, rank: int) -> list[str]:
  """File names that hold one role: ``t10k-images-idx3-ubyte``, ``t10k-images.idx3-ubyte``, .gz."""
  return [
      f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}"
      for prefix in prefixes
      for sep in ("-", ".")
      for ext in ("", ".gz")
  ]


def _find_idx_file(directory: Path, prefixes: Sequence[str], kind: str, rank: int) -> Path | None:
  """The file of one role: an exact MNIST name, else a unique ``*-NAME`` (e.g. EMNIST)."""
  names = _idx_candidates(prefixes, kind, rank)
  for name in names:
    if (directory / name).is_file():
      return directory / name
  matches = sorted({p for name in names for p in directory.glob(f"*-{name}") if p.is_file()})
  if len(matches) > 1:
    raise ValueError(
        f"{directory}: several files could be the {prefixes[0]} {kind}: "
        f"{', '.join(p.name for p in matches)}; point idx: at a directory with one of each."
    )
  return matches[0] if matches else None


def _load_idx_dir(directory: Path, spec: str, missing_message):
  """Reads the 4 IDX files of ``directory``; returns ((train), (test)), num_classes."""
  found, missing = {}, []
  if directory.is_dir():
    for role, (prefixes, kind, rank) in _IDX_ROLES.items():
      path = _find_idx_file(directory, prefixes, kind, rank)
      if path is None:
        missing.append(_idx_candidates(prefixes, kind, rank)[1])
      found[role] = path
  if not directory.is_dir() or missing:
    raise DatasetNotFoundError(missing_message(directory, missing))
  arrays = {role: read_idx(path) for role, path in found.items()}
  splits = []
  for split in ("train", "test"):
    images_path, labels_path = found[(split, "images")], found[(split, "labels")]
    x = _as_images(arrays[(split, "images")], str(images_path))
    y = _as_labels(arrays[(split, "labels")], str(labels_path))
    if len(x) != len(y):
      raise ValueError(
          f"{spec}: {images_path.name} holds {len(x)} images but {labels_path.name} "
          f"holds {len(y)} labels."
      )
    splits.append((x, y))
  (train_x, train_y), (test_x, test_y) = splits
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(f"{spec}: train images {train_x.shape[1:]} != test images {test_x.shape[1:]}.")
  num_classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
  return tuple(splits), num_classes


def _fashion_mnist_dir(data_dir) -> Path:
  if data_dir is not None:
    return Path(data_dir).expanduser()
  return Path(os.environ.get(FASHION_MNIST_ENV_VAR) or FASHION_MNIST_DEFAULT_DIR).expanduser()


def _describe_missing(directory: Path, missing: Sequence[str]) -> str:
  if not directory.is_dir():
    return f"{directory} does not exist or is not a directory."
  return f"{directory} lacks {', '.join(missing)} (or its .gz / t10k-/test- variants)."


def _fashion_mnist_missing_message(directory: Path, missing: Sequence[str]) -> str:
  return (
      f"Fashion-MNIST not found: looked in {directory} (from data_dir, else "
      f"${FASHION_MNIST_ENV_VAR}, else {FASHION_MNIST_DEFAULT_DIR}); "
      f"{_describe_missing(directory, missing)} "
      "To get it: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs into "
      f"{FASHION_MNIST_DEFAULT_DIR}), or point data_dir (or ${FASHION_MNIST_ENV_VAR}) at a "
      "directory with the 4 IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. " + _OFFLINE_ALTERNATIVES
  )


def _idx_missing_message(directory: Path, missing: Sequence[str]) -> str:
  return (
      f"IDX dataset not found: {_describe_missing(directory, missing)} An idx: directory needs "
      "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
      "t10k-labels-idx1-ubyte (each optionally .gz). " + _OFFLINE_ALTERNATIVES
  )


# --------------------------------------------------------------------------------------------
# scikit-learn digits

DIGITS_NUM_TEST = 360


def _load_digits():
  """scikit-learn's 8x8 digits, values / 16, stratified 1437 / 360 split with seed 0."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  x = (digits.images.astype(np.float32) / 16.0)[..., None]
  y = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = train_test_split(
      x, y, test_size=DIGITS_NUM_TEST, stratify=y, random_state=0
  )
  return ((train_x, train_y), (test_x, test_y)), 10


# --------------------------------------------------------------------------------------------
# TFDS data sources


def _load_tfds(name: str, data_dir, train_subset: int | None, test_subset: int | None):
  """Reads the ``image``/``label`` features of a prepared TFDS dataset with ``tfds.data_source``.

  ``download=False`` always: preparing a dataset needs the network, which a run never uses.
  Only the first ``train_subset`` / ``test_subset`` records are read when given.
  """
  import tensorflow_datasets as tfds

  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
  except tfds.core.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f"TFDS has no dataset named {name!r} (see https://www.tensorflow.org/datasets/catalog). "
        + _OFFLINE_ALTERNATIVES
    ) from e
  except Exception as e:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      raise
    raise DatasetNotFoundError(
        f"TFDS dataset {name!r} is not prepared: looked in {builder.data_dir}. Runs never "
        "download. Prepare it once where there is network (image datasets need tensorflow "
        f"installed to encode): `tfds build {name} --file_format=array_record "
        f"--data_dir=DIR`, then pass data_dir=DIR or set $TFDS_DATA_DIR. " + _OFFLINE_ALTERNATIVES
    ) from e
  label_feature = sources[0].dataset_info.features["label"]
  splits = []
  for source, subset, split in zip(sources, (train_subset, test_subset), ("train", "test")):
    n = len(source)
    if subset is not None and subset >= 1:  # load() validates subset on what is read here.
      n = min(n, int(subset))
    examples = [source[i] for i in range(n)]
    if not examples:
      raise ValueError(f"tfds:{name}: split {split!r} is empty.")
    if "image" not in examples[0] or "label" not in examples[0]:
      raise ValueError(
          f"tfds:{name}: expected features 'image' and 'label', got {sorted(examples[0])}."
      )
    x = _as_images(np.stack([np.asarray(e["image"]) for e in examples]), f"tfds:{name}/{split}")
    y = _as_labels(np.asarray([e["label"] for e in examples]), f"tfds:{name}/{split}")
    splits.append((x, y))
  num_classes = getattr(label_feature, "num_classes", None)
  max_label = max(int(y.max()) for _, y in splits)
  if num_classes is None:
    num_classes = max_label + 1
  elif max_label >= num_classes:
    raise ValueError(f"tfds:{name}: label {max_label} outside of {num_classes} classes.")
  return tuple(splits), num_classes


# --------------------------------------------------------------------------------------------
# Batching and augmentation: pure, jit-friendly, on device.


def synthetic(input_shape: Sequence[int], num_train: int, num_test: int = 100,
              num_classes: int = 10, seed: int = 123) -> Dataset:
  """Random standard-normal images and uniform labels, shaped like a real dataset: for
  benchmarks that time steps and need nothing loaded (nothing to learn in them)."""
  k = jax.random.split(jax.random.key(seed), 4)
  return Dataset(
      name="synthetic",
      train_x=jax.random.normal(k[0], (num_train, *input_shape), jnp.float32),
      train_y=jax.random.randint(k[1], (num_train,), 0, num_classes, jnp.int32),
      test_x=jax.random.normal(k[2], (num_test, *input_shape), jnp.float32),
      test_y=jax.random.randint(k[3], (num_test,), 0, num_classes, jnp.int32),
      num_classes=num_classes)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches in one epoch (the last partial batch is dropped)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if batch_size > num_examples:
    raise ValueError(
        f"batch_size {batch_size} exceeds the {num_examples} examples: an epoch would have no "
        "full batch."
    )
  return num_examples // batch_size


def epoch_permutation(key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """The example order of ``epoch``: a pure function of (key, epoch); ``epoch`` may be traced."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def batch_at(
    dataset_x: jax.Array, dataset_y: jax.Array, perm: jax.Array, step_in_epoch, batch_size: int
):
  """Batch ``step_in_epoch`` of the epoch ordered by ``perm``: examples ``perm[s*b:(s+1)*b]``.

  ``batch_size`` is static; ``step_in_epoch`` may be traced and must lie in
  ``[0, steps_per_epoch(len(perm), batch_size))`` (drop-last; ``lax.dynamic_slice`` would clamp
  a start past the end rather than fail).
  """
  idx = lax.dynamic_slice(perm, (step_in_epoch * batch_size,), (batch_size,))
  return jnp.take(dataset_x, idx, axis=0), jnp.take(dataset_y, idx, axis=0)


def augment(key: jax.Array, x: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
  """Standard CIFAR augmentation of a batch ``(B, H, W, C)``, independently per example.

  Random crop of the original size from the image zero-padded by ``pad`` on each side (zero is
  the train mean after normalization), then, when ``flip``, a horizontal flip with probability
  1/2 (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2). With
  ``pad=0, flip=False`` it is the identity.
  """
  if x.ndim != 4:
    raise ValueError(f"augment expects a batch (B, H, W, C), got shape {x.shape}.")
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}.")
  _, height, width, channels = x.shape

  def one(k, image):
    k_dy, k_dx, k_flip = jax.random.split(k, 3)
    dy = jax.random.randint(k_dy, (), 0, 2 * pad + 1)
    dx = jax.random.randint(k_dx, (), 0, 2 * pad + 1)
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = lax.dynamic_slice(padded, (dy, dx, 0), (height, width, channels))
    if flip:
      out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1, :], out)
    return out

  return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)
