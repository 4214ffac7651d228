"""Tests for experiments/data.py: offline loaders and pure on-device batching."""

import functools
import gzip
import os
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import data

# --------------------------------------------------------------------------------------------
# IDX files, written here from the format description rather than by the module under test.

_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def _write_idx(path, array):
  array = np.asarray(array)
  code = _CODES[array.dtype.type]
  header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape
  )
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


def _fake_idx_dir(directory, *, n_train=12, n_test=5, hw=(4, 3), max_label=6, names=None, seed=0):
  """Writes 4 IDX files; returns the arrays written."""
  rng = np.random.default_rng(seed)
  names = names or {
      "train_x": "train-images-idx3-ubyte.gz",
      "train_y": "train-labels-idx1-ubyte.gz",
      "test_x": "t10k-images-idx3-ubyte.gz",
      "test_y": "t10k-labels-idx1-ubyte.gz",
  }
  arrays = {
      "train_x": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
      "train_y": np.arange(n_train, dtype=np.uint8) % (max_label + 1),
      "test_x": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
      "test_y": np.arange(n_test, dtype=np.uint8) % (max_label + 1),
  }
  directory.mkdir(parents=True, exist_ok=True)
  for key, name in names.items():
    _write_idx(directory / name, arrays[key])
  return arrays


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-70000, 1], [2, 2**31 - 1]], dtype=np.int32),
        np.array([[1.5, -2.25, 3.0]], dtype=np.float32),
        np.array([np.pi, -1e300], dtype=np.float64),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 2, 2),
    ],
    ids=["uint8", "int8", "int32", "float32", "float64", "int16"],
)
def test_read_idx_round_trip(tmp_path, name, array):
  _write_idx(tmp_path / name, array)
  out = data.read_idx(tmp_path / name)
  assert out.shape == array.shape
  assert out.dtype == array.dtype
  np.testing.assert_array_equal(out, array)


def test_read_idx_bad_magic(tmp_path):
  path = tmp_path / "bad-idx3-ubyte"
  path.write_bytes(b"\x08\x03\x00\x00" + bytes(16))
  with pytest.raises(ValueError, match="bad IDX magic number 0x08030000"):
    data.read_idx(path)
  path.write_bytes(struct.pack(">BBBB", 0, 0, 0x07, 1) + struct.pack(">I", 3) + bytes(3))
  with pytest.raises(ValueError, match="magic"):  # unknown type code
    data.read_idx(path)


def test_read_idx_size_mismatch_and_bad_gzip(tmp_path):
  path = tmp_path / "short-idx1-ubyte"
  path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 10) + bytes(9))
  with pytest.raises(ValueError, match=r"shape \(10,\).*9 data bytes"):
    data.read_idx(path)
  path = tmp_path / "plain-idx1-ubyte.gz"
  path.write_bytes(b"not gzip at all")
  with pytest.raises(ValueError, match="gzip"):
    data.read_idx(path)
  path = tmp_path / "tiny-idx1-ubyte"
  path.write_bytes(b"\x00\x00")
  with pytest.raises(ValueError, match="too short"):
    data.read_idx(path)


def test_load_idx_dir_gz(tmp_path):
  arrays = _fake_idx_dir(tmp_path, max_label=6)
  ds = data.load(f"idx:{tmp_path}")
  assert ds.name == f"idx:{tmp_path}"
  assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (12, 5, (4, 3, 1), 7)
  assert ds.train_x.dtype == jnp.float32 and ds.train_y.dtype == jnp.int32
  np.testing.assert_array_equal(ds.train_y, arrays["train_y"])
  np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
  raw = arrays["train_x"].astype(np.float64)
  mean, std = raw.mean(), raw.std()
  np.testing.assert_allclose(ds.train_x[..., 0], (raw - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      ds.test_x[..., 0], (arrays["test_x"] - mean) / std, rtol=1e-5, atol=1e-5
  )


def test_load_idx_dir_uncompressed_and_dotted_names(tmp_path):
  names = {
      "train_x": "train-images.idx3-ubyte",
      "train_y": "train-labels.idx1-ubyte",
      "test_x": "t10k-images.idx3-ubyte",
      "test_y": "t10k-labels-idx1-ubyte",
  }
  arrays = _fake_idx_dir(tmp_path, names=names, max_label=9)
  ds = data.load(f"idx:{tmp_path}")
  assert ds.num_classes == 10
  np.testing.assert_array_equal(ds.test_y, arrays["test_y"])


def test_load_idx_dir_emnist_style_names(tmp_path):
  names = {
      "train_x": "emnist-digits-train-images-idx3-ubyte.gz",
      "train_y": "emnist-digits-train-labels-idx1-ubyte.gz",
      "test_x": "emnist-digits-test-images-idx3-ubyte.gz",
      "test_y": "emnist-digits-test-labels-idx1-ubyte.gz",
  }
  arrays = _fake_idx_dir(tmp_path, names=names)
  np.testing.assert_array_equal(data.load(f"idx:{tmp_path}").train_y, arrays["train_y"])
  _fake_idx_dir(tmp_path, names={k: v.replace("digits", "letters") for k, v in names.items()})
  with pytest.raises(ValueError, match="several files"):
    data.load(f"idx:{tmp_path}")


def test_load_idx_dir_subsets(tmp_path):
  arrays = _fake_idx_dir(tmp_path, max_label=6)
  ds = data.load(f"idx:{tmp_path}", train_subset=4, test_subset=2)
  assert (ds.num_train, ds.num_test, ds.num_classes) == (4, 2, 7)
  np.testing.assert_array_equal(ds.train_y, arrays["train_y"][:4])
  np.testing.assert_allclose(ds.train_x.mean(), 0.0, atol=1e-5)  # statistics of the kept examples
  for bad in (0, 13, True, 2.0):
    with pytest.raises(ValueError, match="train_subset"):
      data.load(f"idx:{tmp_path}", train_subset=bad)


def test_load_idx_dir_mismatched_counts(tmp_path):
  _fake_idx_dir(tmp_path)
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
  with pytest.raises(ValueError, match="12 images but .* 11 labels"):
    data.load(f"idx:{tmp_path}")


def test_load_idx_dir_missing_file(tmp_path):
  _fake_idx_dir(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(data.DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
    data.load(f"idx:{tmp_path}")


def test_fashion_mnist_missing(tmp_path, monkeypatch):
  monkeypatch.delenv(data.FASHION_MNIST_ENV_VAR, raising=False)
  missing = tmp_path / "nowhere"
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("fashion_mnist", data_dir=str(missing))
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert str(missing) in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert "'digits'" in message and "idx:DIR" in message and "tfds:NAME" in message


def test_fashion_mnist_env_var_and_data_dir(tmp_path, monkeypatch):
  arrays = _fake_idx_dir(tmp_path / "env", max_label=9)
  monkeypatch.setenv(data.FASHION_MNIST_ENV_VAR, str(tmp_path / "env"))
  ds = data.load("fashion_mnist")
  assert ds.name == "fashion_mnist" and ds.num_train == 12
  np.testing.assert_array_equal(ds.train_y, arrays["train_y"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DatasetNotFoundError, match="empty"):  # data_dir wins over the env var
    data.load("fashion_mnist", data_dir=tmp_path / "empty")


def test_real_fashion_mnist(monkeypatch):
  # scripts/test.sh installs the data (scripts/install_data.sh); without it this fails with
  # DatasetNotFoundError, whose message says how to get the files.
  monkeypatch.delenv(data.FASHION_MNIST_ENV_VAR, raising=False)
  ds = data.load("fashion_mnist")
  assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (
      60000,
      10000,
      (28, 28, 1),
      10,
  )
  assert ds.train_x.dtype == jnp.float32 and ds.test_y.dtype == jnp.int32
  np.testing.assert_array_equal(np.bincount(np.asarray(ds.train_y)), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(np.asarray(ds.test_y)), [1000] * 10)
  np.testing.assert_allclose(ds.train_x.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.train_x.std(), 1.0, atol=1e-4)
  assert abs(float(ds.test_x.mean())) < 0.05


def test_digits():
  ds = data.load("digits")
  assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (1437, 360, (8, 8, 1), 10)
  assert ds.train_x.dtype == jnp.float32 and ds.train_y.dtype == jnp.int32
  np.testing.assert_allclose(ds.train_x.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(ds.train_x.std(), 1.0, atol=1e-5)
  assert np.bincount(np.asarray(ds.test_y), minlength=10).min() >= 35  # stratified
  again = data.load("digits", train_subset=10)
  np.testing.assert_array_equal(again.train_y, ds.train_y[:10])  # deterministic split


@pytest.mark.parametrize("spec", ["mnist", "idx:", "tfds:", "digits:8", "cifar10"])
def test_unknown_spec(spec):
  with pytest.raises(ValueError, match="Unknown dataset spec") as info:
    data.load(spec)
  assert repr(spec) in str(info.value)
  assert "idx:DIR" in str(info.value) and "tfds:NAME" in str(info.value)


# --------------------------------------------------------------------------------------------
# TFDS data sources (tensorflow is not installed: everything here must work without it).


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(name, shape):
  with tfds.testing.mock_data(num_examples=9, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load(f"tfds:{name}", test_subset=4)
  assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (9, 4, shape, 10)
  assert ds.train_x.dtype == jnp.float32 and ds.train_y.dtype == jnp.int32
  assert int(ds.train_y.min()) >= 0 and int(ds.train_y.max()) < 10
  np.testing.assert_allclose(ds.train_x.mean(axis=(0, 1, 2)), np.zeros(shape[-1]), atol=1e-5)


class SparsejaxTinyTensors(tfds.core.GeneratorBasedBuilder):
  """A tiny real TFDS dataset; `Tensor` features serialize without tensorflow (`Image` does not)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=(5, 4, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=6),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(10, 0), "test": self._generate_examples(4, 1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), "label": i % 4}


def test_tfds_prepared_array_record(tmp_path):
  SparsejaxTinyTensors(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  ds = data.load("tfds:sparsejax_tiny_tensors", data_dir=str(tmp_path))
  assert (ds.num_train, ds.num_test, ds.input_shape, ds.num_classes) == (10, 4, (5, 4, 3), 6)
  assert sorted(np.asarray(ds.train_y).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
  np.testing.assert_allclose(ds.train_x.mean(axis=(0, 1, 2)), np.zeros(3), atol=1e-5)
  np.testing.assert_allclose(ds.train_x.std(axis=(0, 1, 2)), np.ones(3), atol=1e-5)
  small = data.load("tfds:sparsejax_tiny_tensors", data_dir=str(tmp_path), train_subset=3)
  np.testing.assert_array_equal(small.train_y, ds.train_y[:3])


def test_tfds_not_prepared(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("tfds:mnist", data_dir=str(tmp_path))
  message = str(info.value)
  assert str(tmp_path) in message and "tfds build mnist" in message and "'digits'" in message


def test_tfds_unknown_name(tmp_path):
  with pytest.raises(data.DatasetNotFoundError, match="no dataset named 'no_such_dataset_xyz'"):
    data.load("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------
# Batching and augmentation.


def test_steps_per_epoch():
  assert data.steps_per_epoch(103, 10) == 10
  assert data.steps_per_epoch(100, 10) == 10
  assert data.steps_per_epoch(7, 7) == 1
  for bad in (0, 8):
    with pytest.raises(ValueError, match="batch_size"):
      data.steps_per_epoch(7, bad)


class BatchingTest(chex.TestCase):
  num_examples = 103
  batch_size = 10

  def _dataset(self):
    ys = jnp.arange(self.num_examples, dtype=jnp.int32)
    xs = jnp.broadcast_to(ys.astype(jnp.float32)[:, None, None, None], (self.num_examples, 2, 2, 1))
    return xs, ys

  @chex.variants(with_jit=True, without_jit=True)
  def test_epoch_covers_every_example_once(self):
    xs, ys = self._dataset()
    key = jax.random.key(0)
    batch = self.variant(
        lambda epoch, step: data.batch_at(
            xs, ys, data.epoch_permutation(key, epoch, self.num_examples), step, self.batch_size
        )
    )
    steps = data.steps_per_epoch(self.num_examples, self.batch_size)
    orders = []
    for epoch in range(2):
      seen = []
      for step in range(steps):
        bx, by = batch(epoch, step)
        chex.assert_shape(bx, (self.batch_size, 2, 2, 1))
        chex.assert_shape(by, (self.batch_size,))
        np.testing.assert_array_equal(bx[:, 0, 0, 0], by.astype(jnp.float32))  # x matches y
        seen.extend(np.asarray(by).tolist())
      assert len(seen) == len(set(seen)) == steps * self.batch_size
      perm = np.asarray(data.epoch_permutation(key, epoch, self.num_examples))
      assert sorted(seen + perm[steps * self.batch_size :].tolist()) == list(
          range(self.num_examples)
      )
      orders.append(seen)
    assert orders[0] != orders[1]

  @chex.variants(with_jit=True, without_jit=True)
  def test_order_is_a_pure_function_of_key_epoch_step(self):
    xs, ys = self._dataset()
    perm_fn = self.variant(
        functools.partial(data.epoch_permutation, num_examples=self.num_examples)
    )
    key = jax.random.key(42)
    p3 = perm_fn(key, 3)
    np.testing.assert_array_equal(p3, perm_fn(jax.random.key(42), jnp.int32(3)))
    np.testing.assert_array_equal(
        p3, data.epoch_permutation(jax.random.key(42), 3, self.num_examples)
    )
    np.testing.assert_array_equal(np.sort(p3), np.arange(self.num_examples))
    assert not np.array_equal(p3, perm_fn(key, 4))
    assert not np.array_equal(p3, perm_fn(jax.random.key(43), 3))
    # Resuming at (epoch 3, step 7) gives the batch an uninterrupted run saw there.
    _, by = data.batch_at(xs, ys, p3, 7, self.batch_size)
    np.testing.assert_array_equal(by, p3[70:80])


def _images(key, shape=(64, 6, 5, 3)):
  return jax.random.normal(key, shape)


def test_augment_shape_determinism_and_jit():
  x = _images(jax.random.key(1))
  key = jax.random.key(2)
  out = data.augment(key, x)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(out, data.augment(key, x))
  np.testing.assert_array_equal(out, jax.jit(functools.partial(data.augment, pad=4))(key, x))
  assert not np.array_equal(out, data.augment(jax.random.key(3), x))


def test_augment_identity_without_pad_or_flip():
  x = _images(jax.random.key(4))
  np.testing.assert_array_equal(data.augment(jax.random.key(5), x, pad=0, flip=False), x)


def test_augment_pad0_flips_about_half():
  x = _images(jax.random.key(6))
  out = np.asarray(data.augment(jax.random.key(7), x, pad=0))
  x = np.asarray(x)
  same = np.all(out == x, axis=(1, 2, 3))
  mirrored = np.all(out == x[:, :, ::-1, :], axis=(1, 2, 3))
  assert np.all(same ^ mirrored)
  assert 10 < mirrored.sum() < 54
  # Flipping the flipped images with the same key restores the originals.
  np.testing.assert_array_equal(data.augment(jax.random.key(7), out, pad=0), x)


def test_augment_is_a_crop_of_the_zero_padded_image():
  pad = 2
  x = np.asarray(_images(jax.random.key(8), (32, 6, 5, 3)))
  out = np.asarray(data.augment(jax.random.key(9), jnp.asarray(x), pad=pad))
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for i in range(len(x)):
    matches = []
    for dy in range(2 * pad + 1):
      for dx in range(2 * pad + 1):
        crop = padded[i, dy : dy + 6, dx : dx + 5]
        for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
          if np.array_equal(out[i], candidate):
            matches.append((dy, dx, flipped))
    assert len(matches) == 1, (i, matches)
    offsets.add(matches[0][:2])
  assert len(offsets) > 5  # offsets differ per example
  with pytest.raises(ValueError, match="batch"):
    data.augment(jax.random.key(0), jnp.zeros((6, 5, 3)))
