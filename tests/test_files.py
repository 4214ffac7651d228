"""Tests for sparsejax.files: atomic, umask-honouring, process-0 writes and path-keyed arrays."""

import json
import os
import re
import stat

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import files


def tree():
  """Nested dicts with float, bool and scalar leaves (a mask's scalar True among them)."""
  return {
      "dense1": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.zeros(4, jnp.float32)},
      "masks": {"kernel": jnp.arange(12).reshape(3, 4) % 3 == 0, "bias": jnp.array(True)},
      "step": jnp.int32(7),
      "half": jnp.ones((2,), jnp.bfloat16),
  }


@pytest.fixture
def umask():
  """Sets the process umask for one test and restores it."""
  previous = os.umask(0o022)
  yield os.umask
  os.umask(previous)


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_arrays_round_trip_keeps_structure_dtypes_and_scalars(tmp_path):
  path = tmp_path / "arrays.npz"
  files.save_arrays(path, tree())
  got = files.load_arrays(path, tree())
  chex.assert_trees_all_equal(got, tree())
  chex.assert_trees_all_equal_shapes_and_dtypes(got, tree())
  assert got["masks"]["kernel"].dtype == jnp.bool_ and got["masks"]["bias"].shape == ()
  assert got["half"].dtype == jnp.bfloat16
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(got))


def test_arrays_are_keyed_by_key_path(tmp_path):
  path = tmp_path / "arrays.npz"
  files.save_arrays(path, tree())
  with np.load(path) as f:
    assert sorted(f.files) == sorted(
        ["['dense1']['bias']", "['dense1']['kernel']", "['half']", "['masks']['bias']",
         "['masks']['kernel']", "['step']"])
    np.testing.assert_array_equal(f["['dense1']['kernel']"], np.arange(12.0).reshape(3, 4))
    assert f["['masks']['kernel']"].dtype == bool and f["['masks']['bias']"].shape == ()


def test_loads_into_another_container_with_the_same_paths(tmp_path):
  """The file knows paths, not containers: what matters is that the paths agree."""
  path = tmp_path / "arrays.npz"
  files.save_arrays(path, {"a": jnp.ones(2), "b": jnp.zeros(3)})
  got = files.load_arrays(path, {"b": np.zeros(3), "a": np.zeros(2)})
  chex.assert_trees_all_equal(got, {"a": jnp.ones(2), "b": jnp.zeros(3)})


@pytest.mark.parametrize("change, named", [
    (lambda t: t["dense1"].pop("bias"), "['dense1']['bias']"),  # the file holds a path like lacks
    (lambda t: t.update(extra=jnp.ones(2)), "['extra']"),  # like holds a path the file lacks
    (lambda t: t["dense1"].update(kernel=jnp.ones((5, 4))), "['dense1']['kernel']"),
])
def test_load_refuses_a_file_of_another_model_naming_the_path(tmp_path, change, named):
  path = tmp_path / "arrays.npz"
  files.save_arrays(path, tree())
  like = tree()
  change(like)
  with pytest.raises(ValueError, match=re.escape(named)) as err:
    files.load_arrays(path, like)
  assert str(path) in str(err.value) and "another model" in str(err.value)


def test_load_names_both_shapes(tmp_path):
  path = tmp_path / "arrays.npz"
  files.save_arrays(path, {"dense1": {"kernel": jnp.ones((3, 4))}})
  with pytest.raises(ValueError, match=re.escape(
      f"{path} holds shape (3, 4) for ['dense1']['kernel'] but the params have (5, 4): it was "
      "written for another model")):
    files.load_arrays(path, {"dense1": {"kernel": jnp.ones((5, 4))}})


def test_json_and_text(tmp_path):
  path = tmp_path / "value.json"
  assert files.read_json(path) is None
  assert files.read_json(path, default={}) == {}
  files.write_json(path, {"b": [1, 2.5], "a": {"z": None, "y": "text"}})
  text = path.read_text()
  assert text == json.dumps({"a": {"y": "text", "z": None}, "b": [1, 2.5]}, indent=2) + "\n"
  assert files.read_json(path) == {"a": {"y": "text", "z": None}, "b": [1, 2.5]}
  files.write_text(tmp_path / "note.txt", "héllo\n")
  assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo\n"
  files.write_bytes(tmp_path / "raw", b"\x00\x01")
  assert (tmp_path / "raw").read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_modes_honour_the_umask(tmp_path, umask, mask, expected):
  umask(mask)
  files.write_text(tmp_path / "a.txt", "a")
  files.write_json(tmp_path / "a.json", [1])
  files.save_arrays(tmp_path / "a.npz", tree())
  for name in ("a.txt", "a.json", "a.npz"):
    assert mode(tmp_path / name) == expected, name
  assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npz", "a.txt"]  # no temp files left


def test_replaces_an_existing_file(tmp_path):
  path = tmp_path / "a.json"
  files.write_json(path, {"v": 1})
  files.write_json(path, {"v": 2})
  assert files.read_json(path) == {"v": 2}
  assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("write", [
    lambda path: files.write_json(path, {"v": 2}),
    lambda path: files.write_text(path, "new"),
    lambda path: files.save_arrays(path, {"v": jnp.ones(3)}),
])
def test_interrupted_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, write):
  path = tmp_path / "file"
  path.write_bytes(b"old")

  def killed(*args):
    raise KeyboardInterrupt("killed before the rename")

  monkeypatch.setattr(os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    write(path)
  assert path.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["file"]


def test_is_writer_only_on_process_zero(tmp_path, monkeypatch):
  assert files.is_writer()
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not files.is_writer()
  assert files.write_bytes(tmp_path / "a", b"a") is None
  assert files.write_text(tmp_path / "b.txt", "b") is None
  assert files.write_json(tmp_path / "c.json", {"c": 1}) is None
  assert files.save_arrays(tmp_path / "d.npz", tree()) is None
  assert os.listdir(tmp_path) == []
  # Reading is for every process.
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  files.save_arrays(tmp_path / "d.npz", tree())
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  chex.assert_trees_all_equal(files.load_arrays(tmp_path / "d.npz", tree()), tree())
