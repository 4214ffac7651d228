"""Protocol ``structured``: train with a group sparsifier, compress, evaluate the smaller network.

Chen et al., Only-Train-Once (OTOv1 NeurIPS 2021, OTOv2 ICLR 2023, HESSO arXiv 2409.09085): one
training with a structured-sparse optimizer (``hesso``, ``hesso_cric``, ``hspg``, ``dhspg``:
:mod:`experiments.group_sparsifiers`) zeroes whole groups (channels, neurons); compression then
removes them, and the model is rebuilt at the widths that remain. The compressed network computes
the same function as the group-sparse one, so both are evaluated and their accuracies compared.

With ``replicates = N``, ``replicate_<i>/`` holds all of the below for the run with seed
``seed + i`` (one program for all with ``vectorize``), and the workdir's ``summary.json`` their
means and standard deviations.

Workdir layout (besides the training's, as protocol ``train``)::

  groups.txt             the groups found in the model, set by set
  compressed/params.npz  the compressed params, keyed by param path
  compressed/state.npz   its BatchNorm statistics (empty without BatchNorm)
  compressed/widths.json the widths to rebuild the model at (``widths`` / ``init_from``)
  summary.json           group_sparsity, groups_total, groups_zero, widths_before/after,
                         params_before/after, flops_before/after (multiply-accumulates of one
                         example), test_accuracy (group-sparse), test_accuracy_compressed, ...

``compress_multiple`` (default 1: the exact widths) rounds each compressed width up to a multiple,
keeping some zero groups, so that the outputs stay equal while the layers get widths the matrix
and convolution kernels run fastest at (``sparsejax.structured.compress``); params_after and
flops_after count the network as saved.

``--config.init_from=DIR`` starts another run (fine-tuning with ``sparsifier=dense``, or a new
structured run) from the compressed network of ``DIR``.
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import group_sparsifiers, models, trainer, workdir
from experiments.protocols import train
from experiments.parsing import ConfigError
from experiments.registry import PROTOCOLS, SPARSIFIERS
from experiments.setup import COMPRESSED, Setup
from sparsejax import metrics
from sparsejax.structured import compress as compress_lib
from sparsejax.structured import groups as groups_lib


def report(summary: dict, directory: str) -> str:
  if "replicates" in summary:
    return (f"{summary['sparsifier']}: group sparsity {summary['group_sparsity']:.4f}; test "
            f"accuracy {summary['test_accuracy']:.4f} +- {summary['test_accuracy_sd']:.4f} "
            f"(compressed {summary['test_accuracy_compressed']:.4f} +- "
            f"{summary['test_accuracy_compressed_sd']:.4f}) over {summary['replicates']} "
            f"replicates; results in {directory}/replicate_*")
  return (f"{summary['sparsifier']}: {summary['groups_zero']}/{summary['groups_total']} groups "
          f"removed; params {summary['params_before']} -> {summary['params_after']}, "
          f"MACs {summary['flops_before']} -> {summary['flops_after']}; test accuracy "
          f"{summary['test_accuracy']:.4f} (compressed {summary['test_accuracy_compressed']:.4f}); "
          f"results in {directory}")


def check(setup: Setup) -> None:
  """The sparsifier must be a group sparsifier; the model's groups must be found."""
  name = setup.config.sparsifier
  group_methods = [e.name for e in SPARSIFIERS.entries() if e.options.get("groups")]
  if name not in group_methods:
    raise ConfigError(f"sparsifier={name!r}: protocol 'structured' trains with a group "
                      f"sparsifier, one of {group_methods}.")
  try:
    group_sparsifiers.model_groups(setup.model)
  except ValueError as e:
    raise ConfigError(f"model={setup.config.model!r}: no zero-invariant groups: {e}") from None


def macs(model: models.Model, params, model_state) -> int:
  """Multiply-accumulates of one example through ``model`` in evaluation mode."""
  x = jnp.zeros((1, *model.input_shape), jnp.float32)
  return metrics.macs(lambda p, s, inputs: model.apply(p, s, inputs, train=False)[0],
                      params, model_state, x)


def save_compressed(directory: str, compressed: compress_lib.Compressed, widths: dict) -> None:
  out = os.path.join(directory, COMPRESSED)
  if workdir.is_writer():
    os.makedirs(out, exist_ok=True)
  workdir.save_arrays(os.path.join(out, "params.npz"), compressed.params)
  workdir.save_arrays(os.path.join(out, "state.npz"), compressed.state)
  workdir.write_json(os.path.join(out, "widths.json"), widths)


KEYS = {"compress_multiple": 1}


def validate(config) -> None:
  if config.compress_multiple < 1:
    raise ConfigError(f"compress_multiple={config.compress_multiple!r} must be a positive integer "
                      "(1 keeps the exact widths; e.g. 8 or 16 rounds them up).")


def _finish(setup: Setup, config, directory: str, sparsifier, state: dict, summary: dict,
            groups: groups_lib.Groups) -> dict:
  """Compresses a finished training's network, evaluates both, writes ``directory``'s files."""
  task = setup.task
  model = task.model
  params, model_state = state["params"], state["model_state"]
  workdir.save_masks(directory, params, trainer.masks_of(sparsifier, state))
  zero = int(np.sum(np.asarray(groups_lib.is_zero(groups, params))))
  compressed = compress_lib.compress(groups, params, model_state,
                                     multiple=config.compress_multiple)
  widths = model.widths_of(compressed.params)
  small = models.build(model.name, num_classes=model.num_classes, input_shape=model.input_shape,
                       model_init=model.model_init, bias_init=model.bias_init, widths=widths)
  small_task = dataclasses.replace(task, model=small)
  loss_small, acc_small = (float(v) for v in trainer.make_evaluate(small_task)(
      compressed.params, compressed.state))
  save_compressed(directory, compressed, widths)
  summary = {
      **_header(config),
      "target_group_sparsity": config.get("target_group_sparsity"),
      "group_sparsity": zero / groups.num_groups,
      "groups_total": groups.num_groups,
      "groups_zero": zero,
      "widths_before": model.widths,
      "widths_after": widths,
      "params_before": metrics.count_params(params),
      "params_after": metrics.count_params(compressed.params),
      "flops_before": macs(model, params, model_state),
      "flops_after": macs(small, compressed.params, compressed.state),
      **summary,
      "test_accuracy_compressed": acc_small,
      "test_loss_compressed": loss_small,
  }
  workdir.write_json(os.path.join(directory, "summary.json"), summary)
  return summary


def _header(config) -> dict:
  return {"protocol": "structured", "sparsifier": config.sparsifier,
          "method": config.sparsifier, "model": config.model, "dataset": config.dataset,
          "seed": config.seed}


def _write_groups(setup: Setup, directory: str, groups: groups_lib.Groups) -> None:
  workdir.write_text(os.path.join(directory, "groups.txt"),
                     groups_lib.table(groups, setup.param_shapes) + "\n")


def _train_one(setup: Setup, config, key, directory: str, groups: groups_lib.Groups,
               label: str = "") -> dict:
  task = setup.task
  params, model_state = setup.init(key)
  _write_groups(setup, directory, groups)
  sparsifier = setup.sparsifier(params, model_state, key)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  state, summary = trainer.train(task, sparsifier, trainer.make_train_steps(task, sparsifier),
                                 trainer.make_evaluate(task), state, directory, label=label)
  return _finish(setup, config, directory, sparsifier, state, summary, groups)


SUMMARY_KEYS = ("test_accuracy", "test_accuracy_compressed", "group_sparsity", "params_after",
                "flops_after")


@PROTOCOLS.register("structured", keys=KEYS, validate=validate, report=report,
                    restartable=train.restartable, check=check, replicates=True,
                    vectorizes=True)
def structured(setup: Setup) -> dict:
  """Trains with the config's group sparsifier, compresses, evaluates both networks. With
  ``replicates`` > 1, one per seed ``seed + i`` in ``replicate_<i>/`` (vectorized with
  ``vectorize``: one program, as protocol ``train``), and their mean and spread."""
  config, task = setup.config, setup.task
  groups = group_sparsifiers.model_groups(task.model)
  logging.info("%s on %s: %d groups in %d sets, %d steps%s", config.sparsifier, config.model,
               groups.num_groups, len(groups.sets), task.durations.total,
               f", {config.replicates} replicates" + (" vectorized" if config.vectorize else "")
               if config.replicates > 1 else "")
  if config.replicates == 1:
    return _train_one(setup, config, setup.key(), setup.workdir, groups)
  configs, dirs = train.replicates_of(setup)
  if config.vectorize:
    sparsifier, trained = train.train_vectorized(setup, dirs)
    summaries = []
    for single, directory, (state, summary) in zip(configs, dirs, trained):
      _write_groups(setup, directory, groups)
      summaries.append(_finish(setup, single, directory, sparsifier, state, summary, groups))
  else:
    summaries = [_train_one(setup, single, setup.key(i), directory, groups, f"replicate {i}: ")
                 for i, (single, directory) in enumerate(zip(configs, dirs))]
  return train.write_replicates_summary(setup.workdir, _header(config), config, configs,
                                        summaries, SUMMARY_KEYS)
