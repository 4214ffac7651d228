"""Protocol ``imp``: lottery tickets by iterative magnitude pruning with rewinding, its controls
and the instability analysis.

A client of :mod:`sparsejax.lottery` and :mod:`sparsejax.connectivity`. The training of every
level, control and instability copy is the runner's loop (:func:`experiments.trainer.train`),
all through one compiled training step: the masks travel in the optimizer state. Every level,
control and instability copy after the dense run starts at the rewind step k with a fresh
optimizer (OpenLTH's choice) or, with ``reset_optimizer=False``, the dense run's optimizer state
at k with the entries of the pruned weights zeroed.

Random streams (:mod:`experiments.rng`) of replicate r (the run with seed ``seed + r``):
``init`` (theta_0), ``data`` (the data order of the ticket and its controls),
``control/L/NAME`` (a control's masks or fresh weights at level L) and ``instability/L/C``
(the data order of instability copy C at level L).

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
import functools
import os
from typing import Any

import jax
import optax
from absl import logging

from experiments import parsing, report, rng, sparsifiers, trainer, workdir
from experiments.registry import PROTOCOLS
from experiments.setup import Setup
from sparsejax import connectivity, lottery
from sparsejax import masks as masks_lib
from sparsejax import transforms

PyTree = Any
CONTROLS = ("reinit", "shuffle_layerwise", "shuffle_global")

KEYS = {
    "levels": 10,
    "prune_fraction": 0.2,
    "prune_fraction_overrides": "",  # "regex=fraction,...", e.g. "output=0.1"
    "distribution": "uniform",       # "global": one ranking of all weights; "uniform": layerwise
    "rewind": "0it",
    "reset_optimizer": True,         # OpenLTH re-creates the optimizer at every level
    "controls": (),                  # any of "reinit", "shuffle_layerwise", "shuffle_global"
    "instability": False,            # linear mode connectivity of two copies at every level
    "instability_alphas": 30,
}


def validate(config) -> None:
  """The values of the keys IMP owns, whatever the protocol."""
  if config.levels < 0 or config.replicates < 1:
    raise parsing.ConfigError(f"levels={config.levels!r} must be >= 0 and replicates="
                              f"{config.replicates!r} >= 1.")
  parsing.check_fraction("prune_fraction", config.prune_fraction, low_open=True)
  parsing.parse_overrides(config.prune_fraction_overrides)
  parsing.parse_duration(config.rewind, 1, "rewind")
  for control in config.controls:
    if control not in CONTROLS:
      raise parsing.ConfigError(f"controls: {control!r} is not one of {list(CONTROLS)}.")
  if config.instability_alphas < 2:
    raise parsing.ConfigError(
        f"instability_alphas={config.instability_alphas!r} must be >= 2.")


def check(setup: Setup) -> None:
  """What a lottery-ticket run needs of the rest of the config."""
  config = setup.config
  if config.distribution not in ("global", "uniform"):
    raise parsing.ConfigError(f"distribution={config.distribution!r}: IMP prunes 'global'ly or "
                              "layerwise ('uniform').")
  rewind_step = _rewind_step(setup)
  if rewind_step >= setup.task.durations.total:
    raise parsing.ConfigError(
        f"rewind={config.rewind!r} ({rewind_step} steps) must come before the end of training "
        f"({setup.task.durations.total} steps).")


def _rewind_step(setup: Setup) -> int:
  return parsing.parse_duration(setup.config.rewind, setup.task.durations.steps_per_epoch,
                                "rewind")


def fast_forward_schedules(opt_state, step: int):
  """Sets the step counter of every learning-rate schedule in ``opt_state`` to ``step``.

  A fresh optimizer after rewinding (OpenLTH's choice) keeps new moments but must continue the
  learning-rate schedule from the rewind step.
  """
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda x: x._replace(count=jax.numpy.asarray(step, x.count.dtype))
                      if is_schedule(x) else x, opt_state, is_leaf=is_schedule)


@dataclasses.dataclass
class Replicate:
  """Everything one replicate's trainings share."""
  setup: Setup
  inner: optax.GradientTransformation  # the dense optimizer the sparsifier's masks wrap
  sparsifier: sparsifiers.Sparsifier
  train_steps: Any
  evaluate: Any
  index: int
  key: jax.Array
  directory: str
  rewind_step: int
  _rewound: dict | None = None

  @property
  def config(self):
    return self.setup.config

  def fresh_state(self, params, model_state, masks, step: int, data_key: jax.Array | None = None):
    state = trainer.init_state(params, model_state, self.sparsifier.tx, self.key, data_key)
    state["opt_state"] = fast_forward_schedules(
        transforms.set_masks(state["opt_state"], masks, inner=self.inner), step)
    state["step"] = jax.numpy.int32(step)
    return state

  def start_state(self, params, model_state, masks, *, reset_optimizer: bool,
                  data_key: jax.Array | None = None) -> dict:
    """The state of a training from the rewind step k: ``params`` (pruned weights 0), ``masks``.

    With ``reset_optimizer`` the optimizer is fresh, its learning-rate schedule at k (OpenLTH);
    otherwise it is the dense run's optimizer state at k with the entries of the pruned weights
    zeroed (momentum, Adam moments), since pruned weights leave nothing in the optimizer state.
    """
    state = self.fresh_state(params, model_state, masks, self.rewind_step, data_key)
    if not reset_optimizer:
      state["opt_state"] = transforms.set_masks(self.rewind_state()["opt_state"], masks,
                                                inner=self.inner)
    return state

  def train(self, state, directory: str, label: str) -> tuple[dict, dict]:
    """Trains ``state`` to the end in ``directory`` (resumable) and records its summary there."""
    summary = workdir.read_finished(os.path.join(directory, "summary.json"))
    if summary is not None:
      return None, summary
    state, summary = trainer.train(self.setup.task, self.sparsifier, self.train_steps,
                                   self.evaluate, state, directory, label=label)
    workdir.write_json(os.path.join(directory, "summary.json"), summary)
    return state, summary

  def rewind_state(self) -> dict:
    """The full training state at the rewind step, saved by level 0 (read once)."""
    if self._rewound is None:
      self._rewound = self._restore_rewind_state()
    return self._rewound

  def _restore_rewind_state(self) -> dict:
    template = self.fresh_state(*self.init(), self.ones, 0)
    checkpoints = workdir.Checkpoints(os.path.join(self.directory, "rewind_state"))
    restored, _ = checkpoints.restore(self.rewind_step, template)
    checkpoints.close()
    return restored

  @functools.cached_property
  def _theta_0(self):
    return self.setup.init(self.key)

  def init(self, key: jax.Array | None = None):
    """(params, model_state) from ``key`` (default: the replicate's theta_0, built once)."""
    return self._theta_0 if key is None else self.setup.init(key)

  @functools.cached_property
  def ones(self):
    """Masks that keep every weight: the structure of every level's masks."""
    return masks_lib.ones_like(self.init()[0], self.setup.prunable)

  def load_final(self, directory: str, like: PyTree) -> dict:
    """The final training state of a finished training in ``directory``."""
    checkpoints = workdir.Checkpoints(os.path.join(directory, "checkpoints"))
    template = self.fresh_state(like, self.init()[1], self.ones, 0)
    state, _ = checkpoints.restore(checkpoints.latest_step(), template)
    checkpoints.close()
    return state


def _train_level(rep: Replicate, params, masks, *, level: int, start_step: int):
  """The ``train`` function of :func:`sparsejax.lottery.run` for one replicate."""
  del start_step  # level 0 starts at 0, later levels at the rewind step (rep.start_state)
  directory = os.path.join(lottery.level_dir(rep.directory, level), "main")
  label = f"[replicate {rep.index} level {level}] "
  if level == 0:
    _, model_state = rep.init()
    state = rep.fresh_state(params, model_state, masks, 0)
    checkpoints = workdir.Checkpoints(os.path.join(rep.directory, "rewind_state"), max_to_keep=1)
    if checkpoints.latest_step() is None:
      if rep.rewind_step > 0:
        # Segment 1: dense training up to the rewind step k, whose full state is kept.
        state, _ = trainer.train(rep.setup.task, rep.sparsifier, rep.train_steps, rep.evaluate,
                                 state, directory, end_step=rep.rewind_step, label=label)
      checkpoints.save(rep.rewind_step, state, {})
    checkpoints.close()
    rewind_params = rep.rewind_state()["params"]
  else:
    state = rep.start_state(params, rep.rewind_state()["model_state"], masks,
                            reset_optimizer=rep.config.reset_optimizer)
    rewind_params = None
  state, summary = rep.train(state, directory, label)
  final = state if state is not None else rep.load_final(directory, params)
  return final["params"], summary, rewind_params


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
    directory = os.path.join(lottery.level_dir(rep.directory, level.level), "controls", name)
    summary = workdir.read_finished(os.path.join(directory, "summary.json"))
    if summary is None:
      key = rng.stream(rep.key, "control", level.level, name)
      model_state = rewound["model_state"]
      if name == "reinit":
        masks = level.masks
        params, model_state = rep.init(key)
        params = lottery.rewind(params, masks)
      else:
        shuffle = lottery.shuffle_layerwise if name == "shuffle_layerwise" else lottery.shuffle_global
        masks = shuffle(key, level.masks)
        params = lottery.rewind(rewound["params"], masks)
      state = rep.start_state(params, model_state, masks,
                              reset_optimizer=rep.config.reset_optimizer)
      # The masks first: a run killed after the control's summary.json resumes past it.
      os.makedirs(directory, exist_ok=True)
      workdir.save_masks(directory, params, masks)
      _, summary = rep.train(state, directory, f"[level {level.level} control {name}] ")
    out[name] = summary
  return out


def _instability(rep: Replicate, level: lottery.Level) -> dict:
  """Error barrier between two copies trained from the level's start with different data orders.

  Frankle et al. 2020, Sec. 2, through :func:`sparsejax.connectivity.instability`. A network
  here is its params *and* its BatchNorm running statistics, both interpolated linearly, so that
  each end of the path is exactly one copy's trained network. At level 0 both copies continue
  the dense run (its optimizer state at k); later levels start as the level's ticket does
  (``reset_optimizer``).
  """
  directory = os.path.join(lottery.level_dir(rep.directory, level.level), "instability")
  path = os.path.join(directory, "barrier.json")
  saved = workdir.read_finished(path)
  if saved is not None:
    return saved
  rewound = rep.rewind_state()
  # Level 0 starts from the dense theta_k, later levels from theta_k * mask.
  start = rewound["params"] if level.level == 0 else level.start_params

  def train_copy(params, copy: int):
    data_key = rng.stream(rep.key, "instability", level.level, copy)
    state = rep.start_state(params, rewound["model_state"], level.masks,
                            reset_optimizer=level.level > 0 and rep.config.reset_optimizer,
                            data_key=data_key)
    copy_dir = os.path.join(directory, f"copy_{copy}")
    state, _ = rep.train(state, copy_dir, f"[level {level.level} instability copy {copy}] ")
    final = state if state is not None else rep.load_final(copy_dir, params)
    return final["params"], final["model_state"]

  error = lambda network: 1.0 - float(rep.evaluate(*network)[1])
  barrier = connectivity.instability(train_copy, start, error, copies=(1, 2),
                                     num_alphas=rep.config.instability_alphas)
  result = barrier._asdict()
  workdir.write_json(path, result)
  return result


@PROTOCOLS.register("imp", keys=KEYS, validate=validate, check=check,
                    report=report.printed,
                    extendable=("levels", "replicates"), uses_sparsifier=False,
                    replicates=True)
def imp(setup: Setup) -> dict:
  """Runs (or resumes) the lottery-ticket experiment of ``setup``; its summary."""
  config, task = setup.config, setup.task
  rewind_step = _rewind_step(setup)
  # One optimizer for every level and control: the masks live in its state.
  inner = setup.inner_optimizer()
  sparsifier = sparsifiers.with_masks(transforms.static_masks(
      inner, masks_lib.ones_like(setup.param_shapes, setup.prunable)))
  train_steps = trainer.make_train_steps(task, sparsifier)
  evaluate = trainer.make_evaluate(task)
  mode = "global" if config.distribution == "global" else "layerwise"
  rows = []
  for r in range(config.replicates):
    rep = Replicate(setup, inner, sparsifier, train_steps, evaluate, r, setup.key(r),
                    os.path.join(setup.workdir, f"replicate_{r}"), rewind_step)
    per_level = []

    def on_level(level: lottery.Level, rep=rep, per_level=per_level):
      workdir.write_text(os.path.join(lottery.level_dir(rep.directory, level.level),
                                      "sparsity_report.txt"),
                         masks_lib.summary_table(level.final_params, level.masks) + "\n")
      row = {"level": level.level, **level.metrics, "controls": _controls(rep, level)}
      if config.instability:
        row["instability"] = _instability(rep, level)
      per_level.append(row)
      logging.info("[replicate %d] level %d: density %.4f, test accuracy %.4f", rep.index,
                   level.level, row["density"], row["test_accuracy"])

    params, _ = rep.init()
    lottery.run(lambda p, m, **kw: _train_level(rep, p, m, **kw), params, rep.directory,
                levels=config.levels, prune_fraction=config.prune_fraction,
                rewind_step=rewind_step, mode=mode,
                overrides=parsing.parse_overrides(config.prune_fraction_overrides),
                prunable=setup.prunable, on_level=on_level)
    rows.append(per_level)
  summary = {"protocol": "imp", "method": "imp", "model": config.model,
             "dataset": config.dataset, "rewind_step": rewind_step,
             "replicates": config.replicates, "levels": report.aggregate(rows)}
  workdir.write_json(os.path.join(setup.workdir, "summary.json"), summary)
  report.write(setup.workdir, summary)
  return summary
