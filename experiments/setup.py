"""What every protocol starts from: the data, the model, the step counts and the run's keys.

:func:`build` turns a finalized config into a :class:`Setup` before the workdir is touched, so
that a missing dataset, an unknown model or a ``prune_exclude`` that leaves nothing to prune stop
the run with one line and the corrected config can still use the same workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import optax

from experiments import data as data_lib
from experiments import models, parallel as parallel_lib, parsing, rng, sparsifiers, trainer
from experiments import workdir
from experiments.parsing import ConfigError
from sparsejax import masks as masks_lib

PyTree = Any
COMPRESSED = "compressed"  # the directory of a structured run's compressed network


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
  """A run's config, data, model and step counts (``task``), prunable rule and root key."""
  config: ml_collections.ConfigDict
  workdir: str
  task: trainer.Task
  prunable: masks_lib.Prunable
  # Every key's default (experiments.config.defaults()), for workdirs recorded before a key existed.
  key_defaults: dict = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def param_shapes(self) -> PyTree:
    """The params' shapes and dtypes (``jax.ShapeDtypeStruct``s), without building them."""
    return jax.eval_shape(self.model.init, jax.random.key(0))[0]

  @property
  def model(self) -> models.Model:
    return self.task.model

  @property
  def data(self) -> data_lib.Dataset:
    return self.task.data

  def key(self, replicate: int = 0) -> jax.Array:
    """The root key of replicate ``replicate``: the run with seed ``seed + replicate``."""
    return jax.random.key(self.config.seed + replicate)

  def init(self, key: jax.Array) -> tuple[PyTree, PyTree]:
    """(params, model_state) of the model initialized from ``key``'s ``"init"`` stream, or with
    ``init_from``, the compressed network that structured run left."""
    if self.config.init_from:
      return load_compressed(self.config.init_from, self.param_shapes,
                             jax.eval_shape(self.model.init, jax.random.key(0))[1])
    return self.model.init(rng.stream(key, "init"))

  def inner_optimizer(self) -> optax.GradientTransformation:
    """The dense optimizer with the config's learning-rate schedule."""
    schedule = trainer.learning_rate_schedule(self.config, self.task.durations)
    return trainer.base_optimizer(self.config, schedule)

  def sparsifier(self, params: PyTree, model_state: PyTree,
                 key: jax.Array) -> sparsifiers.Sparsifier:
    """The config's sparsifier for a training from ``params``, with ``key``'s stream."""
    ctx = sparsifiers.Context(config=self.config, inner=self.inner_optimizer(), params=params,
                              model_state=model_state, task=self.task,
                              key=rng.stream(key, "sparsifier"), prunable=self.prunable)
    return sparsifiers.build(ctx)


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  try:
    return data_lib.load(config.dataset, data_dir=config.data_dir or None,
                         train_subset=config.train_subset or None,
                         test_subset=config.test_subset or None)
  except data_lib.DatasetNotFoundError:
    raise
  except ValueError as e:
    raise ConfigError(f"dataset={config.dataset!r}: {e}") from None


def load_compressed(directory: str, params_like: PyTree, state_like: PyTree) -> tuple[PyTree,
                                                                                    PyTree]:
  """The compressed (params, model_state) a structured run left in ``directory``."""
  out = os.path.join(directory, COMPRESSED)
  try:
    return (workdir.load_arrays(os.path.join(out, "params.npz"), params_like),
            workdir.load_arrays(os.path.join(out, "state.npz"), state_like))
  except (OSError, ValueError) as e:
    raise ConfigError(f"init_from={directory!r}: {e}") from None


def model_widths(config: ml_collections.ConfigDict) -> dict[str, int]:
  """``widths``, or with ``init_from`` the widths the compressed network there was built at
  (``widths`` overrides them one by one)."""
  widths = {}
  if config.init_from:
    widths = workdir.read_json(os.path.join(config.init_from, COMPRESSED, "widths.json"))
  return {**widths, **parsing.parse_widths(config.widths)}


def build_model(config: ml_collections.ConfigDict, data: data_lib.Dataset) -> models.Model:
  if config.model not in models.MODELS:
    raise ConfigError(f"model={config.model!r} is not one of {list(models.MODELS)}.")
  try:
    return models.build(config.model, num_classes=data.num_classes, input_shape=data.input_shape,
                        model_init=config.model_init, bias_init=config.bias_init,
                        widths=model_widths(config) or None)
  except ValueError as e:
    raise ConfigError(f"widths={config.widths!r}: {e}") from None


def build_task(config: ml_collections.ConfigDict, data: data_lib.Dataset) -> trainer.Task:
  durations = trainer.Durations.from_config(config, data.num_train)
  parallel = parallel_lib.build(config, config.batch_size)
  if parallel is not None:  # the dataset whole on every device: batches are picked in-program
    data = dataclasses.replace(data, **parallel.replicate(
        {name: getattr(data, name) for name in ("train_x", "train_y", "test_x", "test_y")}))
  return trainer.Task(build_model(config, data), data, durations, config.batch_size,
                      config.augment, parallel)


def check_prunable(config: ml_collections.ConfigDict, params: PyTree, prunable) -> None:
  """Raises :class:`ConfigError` if ``prune_exclude`` leaves no layer of the model prunable."""
  try:
    masks_lib.prunable_paths(params, prunable)
  except ValueError:
    layers = ", ".join(masks_lib.prunable_paths(params))
    raise ConfigError(f"prune_exclude={config.prune_exclude!r} excludes every prunable layer of "
                      f"{config.model} ({layers}); exclude fewer.") from None


def build(config: ml_collections.ConfigDict, workdir: str,
          key_defaults: dict | None = None) -> Setup:
  """The run's :class:`Setup`; raises :class:`ConfigError` for what the config gets wrong."""
  data = load_data(config)
  task = build_task(config, data)
  setup = Setup(config, workdir, task, masks_lib.rule(exclude=config.prune_exclude or None),
                dict(key_defaults or {}))
  check_prunable(config, setup.param_shapes, setup.prunable)
  return setup
