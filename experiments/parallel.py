"""Data and model parallelism over a device mesh, and multi-host start-up.

``config.mesh`` names the mesh's axes and sizes: ``""`` (the default) trains on one device
without a mesh; ``"data"`` puts every device (of every process) on one ``data`` axis;
``"data:4,model:2"`` gives the sizes (``-1``: the devices left over). The mesh comes from
``jax.make_mesh`` with explicit axis types:

- ``data`` is an ``Explicit`` axis: every training batch is resharded over it inside the jitted
  step, so each device runs the forward and backward pass of its slice of the global batch, and
  the gradients of the replicated params are summed across devices by the partitioner. The batch
  is picked from the device-resident dataset inside the program (the same pure function of the
  data key, epoch and step as on one device), so each device takes its part of every global
  batch without a host input pipeline and a resumed run stays bitwise reproducible.
- ``model`` is an ``Auto`` axis: kernels whose last axis (the output units) divides by its size
  are sharded over it, and every leaf of the same shape (masks, momenta) with them. Pruning and
  selection code reshapes such leaves freely, which an ``Explicit`` axis would refuse; under
  ``Auto`` the partitioner keeps them sharded, and :mod:`sparsejax.selection` never gathers them
  (``tests/test_sharding.py`` reads the compiled HLO).

Multi-host: :func:`initialize` calls ``jax.distributed.initialize`` when ``config.distributed``
is set, from the config's coordinator address, process count and id, or where those are empty,
from the cluster's environment (TPU, SLURM, Open MPI, ...). Every process then runs the same
program on the global mesh; only process 0 writes files (:func:`sparsejax.files.is_writer`), and
orbax writes the checkpoints of all processes together.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.parsing import ConfigError

PyTree = Any
AXES = ("data", "model")
_AXIS_TYPES = {"data": AxisType.Explicit, "model": AxisType.Auto}


def parse_mesh(spec: str) -> dict[str, int]:
  """``"data:4,model:2"`` -> ``{"data": 4, "model": 2}``; a bare name means size -1 (the rest)."""
  sizes = {}
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    match = re.fullmatch(r"(\w+)(?::(-?\d+))?", part)
    if not match or match.group(1) not in AXES:
      raise ConfigError(f"mesh={spec!r}: {part!r} is not an axis of {list(AXES)} with an optional "
                        "size, e.g. 'data' or 'data:4,model:2'.")
    name, size = match.group(1), int(match.group(2) or -1)
    if name in sizes:
      raise ConfigError(f"mesh={spec!r} names the axis {name!r} twice.")
    if size == 0 or size < -1:
      raise ConfigError(f"mesh={spec!r}: the size of {name!r} must be positive or -1 (the rest).")
    sizes[name] = size
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError(f"mesh={spec!r}: at most one axis may take the rest (-1).")
  if sizes and "data" not in sizes:
    sizes = {"data": 1, **sizes}
  return sizes


def resolve_sizes(sizes: dict[str, int], devices: int) -> dict[str, int]:
  """The sizes with -1 replaced so that they multiply to ``devices``; an error otherwise."""
  known = math.prod(s for s in sizes.values() if s != -1)
  rest = [name for name, s in sizes.items() if s == -1]
  if rest:
    if devices % known:
      raise ConfigError(f"mesh={format_sizes(sizes)}: {devices} devices do not divide by {known}.")
    sizes = {**sizes, rest[0]: devices // known}
  if math.prod(sizes.values()) != devices:
    raise ConfigError(f"mesh={format_sizes(sizes)} needs {math.prod(sizes.values())} devices; "
                      f"this run has {devices} ({jax.process_count()} process(es)).")
  return sizes


def format_sizes(sizes: dict[str, int]) -> str:
  return ",".join(f"{name}:{size}" for name, size in sizes.items())


def initialize(config) -> None:
  """``jax.distributed.initialize`` for a multi-host run (``config.distributed``), once."""
  if not config.distributed or jax.distributed.is_initialized():
    return
  kwargs = {}
  if config.coordinator_address:
    kwargs["coordinator_address"] = config.coordinator_address
  if config.num_processes:
    kwargs["num_processes"] = config.num_processes
  if config.process_id >= 0:
    kwargs["process_id"] = config.process_id
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f"distributed=True: jax.distributed.initialize failed ({e}); outside a TPU "
                      "pod or a SLURM job give coordinator_address, num_processes and "
                      "process_id.") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Parallel:
  """A run's mesh and the shardings its arrays take on it."""
  mesh: jax.sharding.Mesh

  @property
  def data_size(self) -> int:
    return self.mesh.shape["data"]

  @property
  def model_size(self) -> int:
    return self.mesh.shape.get("model", 1)

  def describe(self) -> str:
    shape = ", ".join(f"{name}={size}" for name, size in self.mesh.shape.items())
    return (f"{self.mesh.size} devices ({jax.devices()[0].platform}) in "
            f"{jax.process_count()} process(es), mesh {shape}")

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch(self) -> NamedSharding:
    """The sharding of a batch: its leading axis over ``data``."""
    return NamedSharding(self.mesh, P("data"))

  def spec(self, shape: tuple[int, ...]) -> P:
    """Last axis over ``model`` for a matrix or kernel whose last axis divides by its size."""
    if self.model_size > 1 and len(shape) >= 2 and shape[-1] % self.model_size == 0:
      return P(*([None] * (len(shape) - 1)), "model")
    return P()

  def shardings(self, tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: NamedSharding(self.mesh, self.spec(np.shape(x))), tree)

  def place(self, tree: PyTree) -> PyTree:
    """``tree`` on the mesh (every process passing the same values): its leaves replicated, or
    sharded over ``model`` by :meth:`spec`."""
    return jax.tree.map(lambda x, s: _global(x, s), tree, self.shardings(tree))

  def replicate(self, tree: PyTree) -> PyTree:
    """``tree`` (every process passing the same values) whole on every device of the mesh."""
    return jax.tree.map(lambda x: _global(x, self.replicated), tree)

  def shard_batch(self, x: jax.Array) -> jax.Array:
    """Inside the jitted step: ``x`` (a batch) with its leading axis split over ``data``."""
    return jax.sharding.reshard(x, self.batch)


def _global(x, sharding: NamedSharding) -> jax.Array:
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_global(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  # Every process holds the whole value; each keeps the slices its devices own.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def build(config, batch_size: int | None = None) -> Parallel | None:
  """The config's :class:`Parallel` (None without ``mesh``); checks that ``batch_size`` splits
  evenly over the ``data`` axis."""
  if not config.mesh:
    return None
  sizes = resolve_sizes(parse_mesh(config.mesh), jax.device_count())
  mesh = jax.make_mesh(tuple(sizes.values()), tuple(sizes),
                       axis_types=tuple(_AXIS_TYPES[name] for name in sizes))
  parallel = Parallel(mesh)
  if batch_size is not None and batch_size % parallel.data_size:
    raise ConfigError(f"batch_size={batch_size} does not split over the {parallel.data_size} "
                      f"devices of the mesh's data axis; use a multiple of {parallel.data_size}.")
  logging.info("parallelism: %s", parallel.describe())
  return parallel
