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
"""

from __future__ import annotations

import os

from absl import logging

from experiments import trainer, workdir
from experiments.registry import PROTOCOLS
from experiments.setup import Setup


def report(summary: dict, directory: str) -> str:
  hard = ""
  if "test_accuracy_hard" in summary:
    hard = (f" (hard-masked: {summary['test_accuracy_hard']:.4f} at density "
            f"{summary['density_hard']:.4f})")
  return (f"test accuracy {summary['test_accuracy']:.4f} at density {summary['density']:.4f}"
          f"{hard}; results in {directory}")


def restartable(directory: str) -> bool:
  """A run that stopped before its first checkpoint (a NaN loss, say) holds nothing to resume."""
  return not workdir.holds_checkpoint(directory)


@PROTOCOLS.register("train", report=report, restartable=restartable)
def train(setup: Setup) -> dict:
  """Trains one model from the seed's key with the config's sparsifier; its summary."""
  config, task, data = setup.config, setup.task, setup.data
  key = setup.key()
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  logging.info("%s: %s on %s (%d train / %d test), %d steps of batch %d (%d per epoch)",
               config.sparsifier, config.model, config.dataset, data.num_train, data.num_test,
               task.durations.total, config.batch_size, task.durations.steps_per_epoch)
  evaluate = trainer.make_evaluate(task)
  state, summary = trainer.train(task, sparsifier, trainer.make_train_steps(task, sparsifier),
                                 evaluate, state, setup.workdir)
  workdir.save_masks(setup.workdir, state["params"], trainer.masks_of(sparsifier, state))
  summary = {"protocol": "train", "sparsifier": config.sparsifier, "method": config.sparsifier,
             "model": config.model, "dataset": config.dataset, "seed": config.seed, **summary,
             **trainer.evaluate_hard(evaluate, sparsifier, state)}
  workdir.write_json(os.path.join(setup.workdir, "summary.json"), summary)
  return summary
