"""Every file the library and its runner write: atomic, umask-honouring, process 0 only.

* Atomic: a file is written to a temp file in its directory and renamed over the target
  (``os.replace``), so a reader (or a run killed mid-write) sees the old file or the new one,
  never a part. The temp file is created with ``open()``, so the file's mode honours the umask
  as any other output does (``tempfile.mkstemp`` would make it 0600).
* Process 0 only: :func:`is_writer` decides whether this process writes; on every other process
  of a multi-host run the writers do nothing, so each file is written once.
* Arrays are path-keyed: :func:`save_arrays` stores a pytree as one ``.npz`` with an entry per
  leaf named by its key path (``jax.tree_util.keystr``, e.g. ``['dense1']['kernel']``), so a file
  says by itself what each array is, and :func:`load_arrays` refuses a file written for another
  model by naming the first path or shape that differs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any, BinaryIO, Union

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib

PyTree = Any
PathLike = Union[str, os.PathLike]


def is_writer() -> bool:
  """Whether this process writes files: only process 0 of a (multi-host) run does."""
  return jax.process_index() == 0


@contextlib.contextmanager
def _atomic(path: PathLike) -> Iterator[BinaryIO]:
  """An open temp file next to ``path`` that replaces ``path`` once written (or is removed)."""
  path = os.fspath(path)
  directory, name = os.path.split(path)
  tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  try:
    with open(tmp, "xb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (on the writer process only)."""
  if not is_writer():
    return
  with _atomic(path) as f:
    f.write(data)


def write_text(path: PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically (on the writer process only)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any) -> None:
  """Writes ``value`` as indented JSON with sorted keys and a final newline, atomically."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: PathLike, default: Any = None) -> Any:
  """The JSON value in ``path``, or ``default`` if there is no such file."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default


def save_arrays(path: PathLike, tree: PyTree) -> None:
  """Writes every leaf of ``tree`` to one ``.npz`` at ``path``, keyed by its key path, atomically.

  Scalar leaves (a mask's ``True`` for a leaf never pruned) are stored too, and dtypes are kept
  (bool masks stay bool).
  """
  if not is_writer():  # before the arrays are copied to the host
    return
  arrays = {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  with _atomic(path) as f:
    np.savez(f, **arrays)


def load_arrays(path: PathLike, like: PyTree) -> PyTree:
  """The arrays of a :func:`save_arrays` file, in the tree structure of ``like``.

  Dtypes are those stored; ones numpy cannot name in a file (``bfloat16`` and the other
  ``ml_dtypes``) come back as ``like``'s.

  Raises:
    ValueError: naming the file and the first key path that ``like`` holds and the file does not
      (or the reverse), or whose shape differs: the file was written for another model.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  paths = [jax.tree_util.keystr(p) for p, _ in leaves]
  with np.load(path) as f:
    masks_lib.check_paths(paths, f.files, "params", f"arrays in {path}",
                          "It was written for another model.")
    stored = {p: f[p] for p in paths}
  out = []
  for p, (_, ref) in zip(paths, leaves):
    x = stored[p]
    if x.shape != np.shape(ref):
      raise ValueError(f"{path} holds shape {x.shape} for {p} but the params have "
                       f"{np.shape(ref)}: it was written for another model.")
    if x.dtype.kind == "V":  # raw bytes of an ml_dtypes type: read them as like's dtype
      x = x.view(jnp.result_type(ref))
    out.append(jnp.asarray(x))
  return jax.tree.unflatten(treedef, out)
