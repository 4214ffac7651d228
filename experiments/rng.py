"""Named random streams: every random choice of a run comes from its seed's key by ``fold_in``
with named tags, never by arithmetic on seeds.

  stream(key, "data")                              the training data order
  stream(key, "control", level, "reinit")          a control's fresh initialization

A string tag folds in its CRC-32 (31 bits), an integer tag itself; the same tags always give the same key,
and different tags give independent streams.
"""

from __future__ import annotations

import zlib

import jax


def stream(key: jax.Array, *tags: str | int) -> jax.Array:
  """``key`` folded with each of ``tags`` in turn."""
  for tag in tags:
    if isinstance(tag, str):
      key = jax.random.fold_in(key, zlib.crc32(tag.encode()) & 0x7FFFFFFF)
    elif isinstance(tag, int) and not isinstance(tag, bool) and tag >= 0:
      key = jax.random.fold_in(key, tag)
    else:
      raise ValueError(f"tag {tag!r} must be a string or a non-negative int.")
  return key
