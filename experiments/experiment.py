"""One experiment from a config: data, model, method, training, and the files it leaves.

Workdir layout::

  config.json            the resolved config (once checkpointed, a workdir refuses another)
  checkpoints/           orbax checkpoints (atomic), the latest two
  metrics.jsonl          one JSON row per event; tensorboard/ the same as event files
  masks.npz              the final masks, keyed by param path
  sparsity_report.txt    per-layer kept / total / density table (and .json)
  summary.json           method, density, test_accuracy, best_test_accuracy, early_stop_step, ...
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import data as data_lib
from experiments import methods as methods_lib
from experiments import models
from experiments import trainer
from experiments.config import ConfigError, finalize, parse_duration
from sparsejax import masks as masks_lib

PyTree = Any


def write_text(path: str, text: str) -> None:
  """Writes ``text`` atomically (a reader never sees a half-written file)."""
  tmp = f"{path}.{os.getpid()}.tmp"  # open() honours the umask, as for any other output file
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# A lottery-ticket run can be extended in place: more levels or more replicates reuse every
# finished level, since each level depends only on the levels before it.
EXTENDABLE_IMP_KEYS = ("levels", "replicates")


def _holds_checkpoint(workdir: str) -> bool:
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates ``workdir``, or checks that the run it holds has the same config.

  An ``imp`` run may come back with more ``levels`` or ``replicates``: it extends the run. A run
  (other than ``imp``, whose levels live elsewhere) that stopped before its first checkpoint, e.g.
  because the loss became NaN, holds nothing to resume: any config replaces it, and the trainer
  drops its metrics.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=workdir, delete=True)
    probe.close()
  except OSError as e:
    raise ConfigError(f"workdir={workdir!r} is not writable ({e.strerror}); "
                      "pass a directory you can write to.") from None
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    differing = sorted(k for k in set(previous) | set(current)
                       if previous.get(k) != current.get(k))
    if not differing:
      return
    detail = ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in differing)
    lottery = methods_lib.LOTTERY_TICKETS
    extends = (current["method"] == lottery and set(differing) <= set(EXTENDABLE_IMP_KEYS)
               and all(current[k] > previous[k] for k in differing))
    unstarted = (lottery not in (previous.get("method"), current["method"])
                 and not _holds_checkpoint(workdir))
    if extends:
      logging.info("extending the run in %s: %s", workdir, detail)
    elif unstarted:
      logging.info("replacing the config of %s, which holds no checkpoint: %s", workdir, detail)
    else:
      raise ConfigError(f"workdir={workdir!r} holds a run with a different config ({detail}); "
                        "use a new --workdir, or the same config to resume.")
  write_json(path, current)


def prunable_rule(config: ml_collections.ConfigDict):
  return masks_lib.rule(exclude=config.prune_exclude or None)


def check_prunable(config: ml_collections.ConfigDict, params: PyTree, prunable) -> None:
  """Raises :class:`ConfigError` if ``prune_exclude`` leaves no layer of the model prunable."""
  try:
    masks_lib.prunable_paths(params, prunable)
  except ValueError:
    layers = ", ".join(masks_lib.prunable_paths(params))
    raise ConfigError(f"prune_exclude={config.prune_exclude!r} excludes every prunable layer of "
                      f"{config.model} ({layers}); exclude fewer.") from None


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  try:
    return data_lib.load(config.dataset, data_dir=config.data_dir or None,
                         train_subset=config.train_subset or None,
                         test_subset=config.test_subset or None)
  except data_lib.DatasetNotFoundError:
    raise
  except ValueError as e:
    raise ConfigError(f"dataset={config.dataset!r}: {e}") from None


def build_task(config: ml_collections.ConfigDict, data: data_lib.Dataset):
  """(task, params, model_state) for the config's model on ``data``."""
  if config.model not in models.MODELS:
    raise ConfigError(f"model={config.model!r} is not one of {list(models.MODELS)}.")
  model, params, model_state = models.create(config.model, num_classes=data.num_classes,
                                             input_shape=data.input_shape, seed=config.seed)
  durations = trainer.Durations.from_config(config, data.num_train)
  task = trainer.Task(model, data, durations, config.batch_size, config.augment)
  return task, params, model_state


def save_masks(workdir: str, params: PyTree, masks: PyTree) -> None:
  """``masks.npz`` (prunable leaves by path) and the per-layer report, both atomically."""
  arrays = {jax.tree_util.keystr(p): np.asarray(m)
            for (p, _), m in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(masks))
            if masks_lib.is_prunable_mask(m)}
  tmp = os.path.join(workdir, "masks.tmp.npz")
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, os.path.join(workdir, "masks.npz"))
  rows = masks_lib.summary(params, masks)
  write_json(os.path.join(workdir, "sparsity_report.json"),
             [{"path": r.path, "shape": list(r.shape), "kept": r.kept, "total": r.total,
               "density": r.density} for r in rows])
  write_text(os.path.join(workdir, "sparsity_report.txt"),
             masks_lib.summary_table(params, masks) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment ``config`` in ``workdir`` and returns its summary."""
  config = finalize(config)
  # Data, model and prunable-layer errors come before the workdir records the config, so that the
  # corrected config can still use the same workdir.
  data = load_data(config)
  task, params, model_state = build_task(config, data)
  rewind_step = parse_duration(config.rewind, task.durations.steps_per_epoch, "rewind")
  if config.method == methods_lib.LOTTERY_TICKETS and rewind_step >= task.durations.total:
    raise ConfigError(f"rewind={config.rewind!r} ({rewind_step} steps) must come before the end "
                      f"of training ({task.durations.total} steps).")
  prunable = prunable_rule(config)
  check_prunable(config, params, prunable)
  prepare_workdir(workdir, config)
  if config.method == methods_lib.LOTTERY_TICKETS:
    from experiments import imp  # imp builds on this module
    return imp.run(config, workdir, task)
  ctx = methods_lib.MethodContext(
      config=config,
      inner=trainer.base_optimizer(config, trainer.learning_rate_schedule(config, task.durations)),
      params=params, model_state=model_state, task=task,
      key=jax.random.fold_in(jax.random.PRNGKey(config.seed), 3), prunable=prunable)
  optimizer = methods_lib.METHODS[config.method](ctx)
  state = trainer.init_state(params, model_state, optimizer, config.seed)
  logging.info("%s: %s on %s (%d train / %d test), %d steps of batch %d (%d per epoch)",
               config.method, config.model, config.dataset, data.num_train, data.num_test,
               task.durations.total, config.batch_size, task.durations.steps_per_epoch)
  state, summary = trainer.train(task, trainer.make_train_steps(task, optimizer),
                                 trainer.make_evaluate(task), state, workdir, prunable=prunable)
  save_masks(workdir, state["params"], trainer.masks_of(state, prunable))
  summary = {"method": config.method, "model": config.model, "dataset": config.dataset,
             "seed": config.seed, **summary}
  write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
