"""The lottery-ticket experiment (method ``imp``): IMP with rewinding, controls, instability.

A client of :mod:`sparsejax.lottery` and :mod:`sparsejax.connectivity`. The training of every
level, control and instability copy is the runner's loop (:func:`experiments.trainer.train`),
all through one compiled training step: the masks travel in the optimizer state. Every level,
control and instability copy after the dense run starts at the rewind step k with a fresh
optimizer (OpenLTH's choice) or, with ``reset_optimizer=False``, the dense run's optimizer state
at k with the entries of the pruned weights zeroed.

Workdir layout (as OpenLTH's, one directory per replicate and level)::

  config.json  summary.json  report.md  report.png
  replicate_R/
    rewind_params.npz                 theta_k of the dense run
    level_L/
      masks.npz  start_params.npz  final_params.npz  level.json  sparsity_report.txt
      main/                           checkpoints, metrics.jsonl, tensorboard/, summary.json
      controls/NAME/                  the same for each control (and its masks.npz)
      instability/                    copy_1/, copy_2/ and barrier.json
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import optax
from absl import logging

from experiments import experiment, models, report, trainer
from experiments.config import CONTROLS, parse_duration, parse_overrides
from sparsejax import connectivity, lottery
from sparsejax import masks as masks_lib
from sparsejax import transforms

PyTree = Any


def fast_forward_schedules(opt_state, step: int):
  """Sets the step counter of every learning-rate schedule in ``opt_state`` to ``step``.

  A fresh optimizer after rewinding (OpenLTH's choice) keeps new moments but must continue the
  learning-rate schedule from the rewind step.
  """
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda x: x._replace(count=jax.numpy.asarray(step, x.count.dtype))
                      if is_schedule(x) else x, opt_state, is_leaf=is_schedule)


def _done(directory: str) -> dict | None:
  path = os.path.join(directory, "summary.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


@dataclasses.dataclass
class Replicate:
  """Everything one replicate's trainings share."""
  config: ml_collections.ConfigDict
  task: trainer.Task
  train_steps: Any
  evaluate: Any
  optimizer: optax.GradientTransformation
  seed: int
  directory: str
  prunable: Any
  rewind_step: int
  _rewound: dict | None = None

  def fresh_state(self, params, model_state, masks, step: int, data_seed: int | None = None):
    state = trainer.init_state(params, model_state, self.optimizer, self.seed, data_seed)
    state["opt_state"] = fast_forward_schedules(transforms.set_masks(state["opt_state"], masks),
                                                step)
    state["step"] = jax.numpy.int32(step)
    return state

  def start_state(self, params, model_state, masks, *, reset_optimizer: bool,
                  data_seed: int | None = None) -> dict:
    """The state of a training from the rewind step k: ``params`` (pruned weights 0), ``masks``.

    With ``reset_optimizer`` the optimizer is fresh, its learning-rate schedule at k (OpenLTH);
    otherwise it is the dense run's optimizer state at k with the entries of the pruned weights
    zeroed (momentum, Adam moments), since pruned weights leave nothing in the optimizer state.
    """
    state = self.fresh_state(params, model_state, masks, self.rewind_step, data_seed)
    if not reset_optimizer:
      state["opt_state"] = transforms.set_masks(self.rewind_state()["opt_state"], masks)
    return state

  def train(self, state, workdir: str, label: str) -> tuple[dict, dict]:
    """Trains ``state`` to the end in ``workdir`` (resumable) and records its summary there."""
    summary = _done(workdir)
    if summary is not None:
      return None, summary
    state, summary = trainer.train(self.task, self.train_steps, self.evaluate, state,
                                   workdir, prunable=self.prunable, label=label)
    experiment.write_json(os.path.join(workdir, "summary.json"), summary)
    return state, summary

  def rewind_state(self) -> dict:
    """The full training state at the rewind step, saved by level 0 (read once)."""
    if self._rewound is None:
      self._rewound = self._restore_rewind_state()
    return self._rewound

  def _restore_rewind_state(self) -> dict:
    template = self.fresh_state(*self.init(self.seed), self.ones(), 0)
    checkpoints = trainer.Checkpoints(os.path.join(self.directory, "rewind_state"))
    restored, _ = checkpoints.restore(self.rewind_step, template)
    checkpoints.close()
    return restored

  def init(self, seed: int):
    _, params, model_state = models.create(self.config.model, num_classes=self.task.data.num_classes,
                                           input_shape=self.task.data.input_shape, seed=seed)
    return params, model_state

  def ones(self):
    return masks_lib.ones_like(self.init(self.seed)[0], self.prunable)


def _train_level(rep: Replicate, params, masks, *, level: int, start_step: int):
  """The ``train`` function of :func:`sparsejax.lottery.run` for one replicate."""
  workdir = os.path.join(lottery.level_dir(rep.directory, level), "main")
  label = f"[replicate {rep.seed - rep.config.seed} level {level}] "
  if level == 0:
    _, model_state = rep.init(rep.seed)
    state = rep.fresh_state(params, model_state, masks, 0)
    checkpoints = trainer.Checkpoints(os.path.join(rep.directory, "rewind_state"), max_to_keep=1)
    if checkpoints.latest_step() is None:
      if rep.rewind_step > 0:
        # Segment 1: dense training up to the rewind step k, whose full state is kept.
        state, _ = trainer.train(rep.task, rep.train_steps, rep.evaluate, state,
                                 workdir, end_step=rep.rewind_step, prunable=rep.prunable,
                                 label=label)
      checkpoints.save(rep.rewind_step, state, {})
    checkpoints.close()
    rewind_params = rep.rewind_state()["params"]
  else:
    state = rep.start_state(params, rep.rewind_state()["model_state"], masks,
                            reset_optimizer=rep.config.reset_optimizer)
    rewind_params = None
  state, summary = rep.train(state, workdir, label)
  final = state if state is not None else _load_final(workdir, rep, params)
  return final["params"], summary, rewind_params


def _load_final(workdir: str, rep: Replicate, like: PyTree) -> dict:
  """The final training state of a finished training in ``workdir``."""
  checkpoints = trainer.Checkpoints(os.path.join(workdir, "checkpoints"))
  template = rep.fresh_state(like, rep.init(rep.seed)[1], rep.ones(), 0)
  state, _ = checkpoints.restore(checkpoints.latest_step(), template)
  checkpoints.close()
  return state


def _controls(rep: Replicate, level: lottery.Level) -> dict:
  """Trains each configured control of ``level`` from the rewind step; their summaries.

  A control starts as the ticket does (a fresh or a rewound optimizer, ``reset_optimizer``), so
  that only the masks or the weights differ.
  """
  out = {}
  if level.level == 0:
    return out
  rewound = rep.rewind_state()
  for name in rep.config.controls:
    workdir = os.path.join(lottery.level_dir(rep.directory, level.level), "controls", name)
    summary = _done(workdir)
    if summary is None:
      seed = rep.seed * 1000 + level.level
      key = jax.random.fold_in(jax.random.PRNGKey(seed), CONTROLS.index(name))
      model_state = rewound["model_state"]
      if name == "reinit":
        masks = level.masks
        params, model_state = rep.init(seed + 7_000_000)
        params = lottery.rewind(params, masks)
      else:
        shuffle = lottery.shuffle_layerwise if name == "shuffle_layerwise" else lottery.shuffle_global
        masks = shuffle(key, level.masks)
        params = lottery.rewind(rewound["params"], masks)
      state = rep.start_state(params, model_state, masks,
                              reset_optimizer=rep.config.reset_optimizer)
      # The masks first: a run killed after the control's summary.json resumes past it.
      os.makedirs(workdir, exist_ok=True)
      experiment.save_masks(workdir, params, masks)
      _, summary = rep.train(state, workdir, f"[level {level.level} control {name}] ")
    out[name] = summary
  return out


def _instability(rep: Replicate, level: lottery.Level) -> dict:
  """Error barrier between two copies trained from the level's start with different data orders.

  Frankle et al. 2020, Sec. 2: the test error of (1 - alpha) W1 + alpha W2. A network here is its
  params *and* its BatchNorm running statistics, both interpolated linearly, so that each end of
  the path is exactly one copy's trained network (errors[0] and errors[-1] are 1 - the copies'
  test accuracies) and the statistics along the path are those of the same mixture.
  At level 0 both copies continue the dense run (its optimizer state at k); later levels start as
  the level's ticket does (``reset_optimizer``).
  """
  directory = os.path.join(lottery.level_dir(rep.directory, level.level), "instability")
  path = os.path.join(directory, "barrier.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  rewound = rep.rewind_state()
  # Level 0 starts from the dense theta_k, later levels from theta_k * mask.
  start = rewound["params"] if level.level == 0 else level.start_params
  finals = []
  for copy in (1, 2):
    state = rep.start_state(start, rewound["model_state"], level.masks,
                            reset_optimizer=level.level > 0 and rep.config.reset_optimizer,
                            data_seed=rep.seed * 1000 + 100 + copy)
    workdir = os.path.join(directory, f"copy_{copy}")
    state, _ = rep.train(state, workdir, f"[level {level.level} instability copy {copy}] ")
    finals.append(state if state is not None else _load_final(workdir, rep, start))
  networks = [(final["params"], final["model_state"]) for final in finals]
  error = lambda network: 1.0 - float(rep.evaluate(*network)[1])
  barrier = connectivity.error_barrier(error, *networks, rep.config.instability_alphas)
  result = barrier._asdict()
  experiment.write_json(path, result)
  return result


def run(config: ml_collections.ConfigDict, workdir: str, task: trainer.Task) -> dict:
  """Runs (or resumes) the lottery-ticket experiment ``config`` in ``workdir``."""
  data = task.data
  prunable = experiment.prunable_rule(config)
  schedule = trainer.learning_rate_schedule(config, task.durations)
  inner = trainer.base_optimizer(config, schedule)
  probe_params = models.create(config.model, num_classes=data.num_classes,
                               input_shape=data.input_shape, seed=config.seed)[1]
  # One optimizer for every level and control: the masks live in its state.
  optimizer = transforms.static_masks(inner, masks_lib.ones_like(probe_params, prunable))
  train_steps = trainer.make_train_steps(task, optimizer)
  evaluate = trainer.make_evaluate(task)
  rewind_step = parse_duration(config.rewind, task.durations.steps_per_epoch, "rewind")
  mode = "global" if config.distribution == "global" else "layerwise"
  rows = []
  for r in range(config.replicates):
    rep = Replicate(config, task, train_steps, evaluate, optimizer, config.seed + r,
                    os.path.join(workdir, f"replicate_{r}"), prunable, rewind_step)
    per_level = []

    def on_level(level: lottery.Level, rep=rep, per_level=per_level):
      experiment.write_text(os.path.join(lottery.level_dir(rep.directory, level.level),
                                         "sparsity_report.txt"),
                            masks_lib.summary_table(level.final_params, level.masks) + "\n")
      row = {"level": level.level, **level.metrics, "controls": _controls(rep, level)}
      if config.instability:
        row["instability"] = _instability(rep, level)
      per_level.append(row)
      logging.info("[replicate %d] level %d: density %.4f, test accuracy %.4f", r, level.level,
                   row["density"], row["test_accuracy"])

    params, _ = rep.init(rep.seed)
    lottery.run(lambda p, m, **kw: _train_level(rep, p, m, **kw), params, rep.directory,
                levels=config.levels, prune_fraction=config.prune_fraction,
                rewind_step=rewind_step, mode=mode,
                overrides=parse_overrides(config.prune_fraction_overrides), prunable=prunable,
                on_level=on_level)
    rows.append(per_level)
  summary = {"method": "imp", "model": config.model, "dataset": config.dataset,
             "rewind_step": rewind_step, "replicates": config.replicates,
             "levels": report.aggregate(rows)}
  experiment.write_json(os.path.join(workdir, "summary.json"), summary)
  report.write(workdir, summary)
  return summary
