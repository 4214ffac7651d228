"""Protocol ``train``: one training with the config's sparsifier.

Workdir layout::

  config.json            the resolved config (once checkpointed, a workdir refuses another)
  checkpoints/           orbax checkpoints (atomic), the latest two
  metrics.jsonl          one JSON row per event; tensorboard/ the same as event files
  masks.npz              the final masks, keyed by param path
  sparsity_report.txt    per-layer kept / total / density table (and .json)
  summary.json           sparsifier, density, test_accuracy, best_test_accuracy, early_stop_step, ...
                         and, for a sparsifier with ``hard_masks`` (PDP, STE), test_accuracy_hard,
                         test_loss_hard and density_hard: the network params * hard masks

With ``replicates = N`` (:mod:`experiments.replicates`), ``replicate_<i>/`` holds the files above
for the run with seed ``seed + i``; the workdir's own ``summary.json`` gives each replicate's
results and their mean and standard deviation, and, with ``vectorize = True``, its
``checkpoints/`` the stacked state of all replicates.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from experiments import replicates as replicates_lib
from experiments import trainer, workdir
from experiments.registry import PROTOCOLS
from experiments.setup import Setup


def report(summary: dict, directory: str) -> str:
  hard = ""
  if "test_accuracy_hard" in summary:
    hard = (f" (hard-masked: {summary['test_accuracy_hard']:.4f} at density "
            f"{summary['density_hard']:.4f})")
  if "replicates" in summary:
    return (f"test accuracy {summary['test_accuracy']:.4f} +- {summary['test_accuracy_sd']:.4f} "
            f"over {summary['replicates']} replicates (seeds {summary['seeds']}) at density "
            f"{summary['density']:.4f}{hard}; results in {directory}/replicate_*")
  return (f"test accuracy {summary['test_accuracy']:.4f} at density {summary['density']:.4f}"
          f"{hard}; results in {directory}")


def restartable(directory: str) -> bool:
  """A run that stopped before its first checkpoint (a NaN loss, say) holds nothing to resume."""
  return not workdir.holds_checkpoint(directory)


def _header(config) -> dict:
  return {"protocol": "train", "sparsifier": config.sparsifier, "method": config.sparsifier,
          "model": config.model, "dataset": config.dataset, "seed": config.seed}


def _finish(config, directory: str, summary: dict, sparsifier, state: dict, evaluate) -> dict:
  """Writes a training's masks and summary (with the hard-masked evaluation) in ``directory``."""
  workdir.save_masks(directory, state["params"], trainer.masks_of(sparsifier, state))
  summary = {**_header(config), **summary, **trainer.evaluate_hard(evaluate, sparsifier, state)}
  workdir.write_json(os.path.join(directory, "summary.json"), summary)
  return summary


def _train_one(setup: Setup, config, key, directory: str, label: str = "") -> dict:
  task = setup.task
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  evaluate = trainer.make_evaluate(task)
  state, summary = trainer.train(task, sparsifier, trainer.make_train_steps(task, sparsifier),
                                 evaluate, state, directory, label=label)
  return _finish(config, directory, summary, sparsifier, state, evaluate)


def train_vectorized(setup: Setup, dirs: list[str]):
  """Trains the replicates of ``setup`` (one per directory) as one program; ``(sparsifier,
  [(final state, training summary) of each replicate])``."""
  task = setup.task
  sparsifiers, states = replicates_lib.initial(setup, len(dirs))
  replicates_lib.check_shared(setup.config.sparsifier, sparsifiers, states)
  stacked, axes = replicates_lib.stack(states)
  replicates = trainer.Replicates(axes, tuple(dirs))
  sparsifier = sparsifiers[0]
  state, summaries = trainer.train(
      task, sparsifier, trainer.make_train_steps(task, sparsifier, axes),
      trainer.make_evaluate(task, vectorized=True), stacked, setup.workdir, replicates=replicates)
  return sparsifier, [(replicates.take(state, i), summary) for i, summary in enumerate(summaries)]


def _train_vectorized(setup: Setup, configs: list, dirs: list[str]) -> list[dict]:
  sparsifier, trained = train_vectorized(setup, dirs)
  evaluate = trainer.make_evaluate(setup.task)
  return [_finish(config, directory, summary, sparsifier, state, evaluate)
          for config, directory, (state, summary) in zip(configs, dirs, trained)]


def _mean_sd(values: list[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@PROTOCOLS.register("train", report=report, restartable=restartable, replicates=True,
                    vectorizes=True)
def train(setup: Setup) -> dict:
  """Trains one model from the seed's key with the config's sparsifier; its summary. With
  ``replicates`` > 1, one per seed ``seed + i`` (vectorized with ``vectorize``)."""
  config, task, data = setup.config, setup.task, setup.data
  logging.info("%s: %s on %s (%d train / %d test), %d steps of batch %d (%d per epoch)%s",
               config.sparsifier, config.model, config.dataset, data.num_train, data.num_test,
               task.durations.total, config.batch_size, task.durations.steps_per_epoch,
               f", {config.replicates} replicates" + (" vectorized" if config.vectorize else "")
               if config.replicates > 1 else "")
  if config.replicates == 1:
    return _train_one(setup, config, setup.key(), setup.workdir)
  configs, dirs = replicates_of(setup)
  if config.vectorize:
    summaries = _train_vectorized(setup, configs, dirs)
  else:
    summaries = [_train_one(setup, single, setup.key(i), directory, f"replicate {i}: ")
                 for i, (single, directory) in enumerate(zip(configs, dirs))]
  return write_replicates_summary(setup.workdir, _header(config), config, configs, summaries,
                                  ("test_accuracy", "test_loss", "density", "pqi",
                                   "test_accuracy_hard", "density_hard"))


def replicates_of(setup: Setup) -> tuple[list, list[str]]:
  """The configs and directories of the replicates of ``setup`` (each directory prepared)."""
  n = setup.config.replicates
  configs = [replicates_lib.replicate_config(setup.config, i) for i in range(n)]
  dirs = [replicates_lib.replicate_dir(setup.workdir, i) for i in range(n)]
  for single, directory in zip(configs, dirs):
    workdir.prepare(directory, single, restartable=restartable, defaults=setup.key_defaults)
  return configs, dirs


def write_replicates_summary(directory: str, header: dict, config, configs: list,
                             summaries: list[dict], keys: tuple[str, ...]) -> dict:
  """The workdir's ``summary.json`` of replicates: each one's summary (``runs``) and the mean
  and standard deviation over them of each of ``keys`` they report."""
  summary = {**header, "replicates": len(summaries), "vectorize": config.vectorize,
             "seeds": [c.seed for c in configs], "runs": summaries}
  for key in keys:
    if key in summaries[0]:
      summary[key], summary[f"{key}_sd"] = _mean_sd([s[key] for s in summaries])
  workdir.write_json(os.path.join(directory, "summary.json"), summary)
  return summary
