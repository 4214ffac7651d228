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
    rewind_state/                     the dense run's full training state at k
  vectorized/                         with vectorize=True only (below)

Vectorized replicates. With ``replicates = N > 1`` and ``vectorize = True`` the replicates advance
level by level together, each through its own :func:`sparsejax.lottery.driver`: the trainings of
level L that the replicates have left to do are one program (:class:`Stacked`: their states
stacked along a leading axis under ``jax.vmap``, each replicate's masks in its slice of the
optimizer state, the step counters shared; the dense segment to the rewind step included), then
each control of level L of all of them, then the instability copies of all of them (2N
trainings). Every replicate writes the files above, with the values of the sequential run with
its seed up to float rounding (the masks exactly), except the checkpoints of these trainings:
they are stacked, in ``vectorized/level_L/main/``, ``vectorized/level_L/controls/NAME/`` and
``vectorized/level_L/instability/``, each in ``replicates_<i>_<j>.../checkpoints`` named by the
replicates trained together (a run extended with more replicates trains the new ones alone, in
a directory of their own). ``rewind_state/`` stays per replicate. A killed run resumes as the
sequential one does: finished levels, controls and barriers are read back, an unfinished stacked
training resumes from its latest stacked checkpoint. The interpolations of the instability
analysis are evaluated one replicate after another.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import optax
from absl import logging

from experiments import parsing, report, rng, sparsifiers, trainer, workdir
from experiments import replicates as replicates_lib
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


def _host(tree):
  """A training's results as host arrays for :mod:`sparsejax.lottery`: trained on a mesh
  (``config.mesh``), they would not mix with the params it reads from its files."""
  return jax.device_get(tree)


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
  return _host((final["params"], summary, rewind_params))


def _control_dir(rep: Replicate, level: int, name: str) -> str:
  return os.path.join(lottery.level_dir(rep.directory, level), "controls", name)


def _control_start(rep: Replicate, level: lottery.Level, name: str) -> dict:
  """The start state of control ``name`` of ``level``, its masks written in its directory.

  A control starts as the ticket does (a fresh or a rewound optimizer, ``reset_optimizer``), so
  that only the masks or the weights differ.
  """
  rewound = rep.rewind_state()
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
  state = rep.start_state(params, model_state, masks, reset_optimizer=rep.config.reset_optimizer)
  # The masks first: a run killed after the control's summary.json resumes past it.
  directory = _control_dir(rep, level.level, name)
  os.makedirs(directory, exist_ok=True)
  workdir.save_masks(directory, params, masks)
  return state


def _controls(rep: Replicate, level: lottery.Level) -> dict:
  """Trains each configured control of ``level`` from the rewind step; their summaries."""
  out = {}
  if level.level == 0:
    return out
  for name in rep.config.controls:
    directory = _control_dir(rep, level.level, name)
    summary = workdir.read_finished(os.path.join(directory, "summary.json"))
    if summary is None:
      state = _control_start(rep, level, name)
      _, summary = rep.train(state, directory, f"[level {level.level} control {name}] ")
    out[name] = summary
  return out


COPIES = (1, 2)  # the instability copies' labels (their data orders' streams)


def _instability_dir(rep: Replicate, level: int) -> str:
  return os.path.join(lottery.level_dir(rep.directory, level), "instability")


def _copy_start(rep: Replicate, level: lottery.Level, params, copy: int) -> tuple[dict, str]:
  """The start state of instability copy ``copy`` of ``level`` from ``params``; its directory."""
  state = rep.start_state(params, rep.rewind_state()["model_state"], level.masks,
                          reset_optimizer=level.level > 0 and rep.config.reset_optimizer,
                          data_key=rng.stream(rep.key, "instability", level.level, copy))
  return state, os.path.join(_instability_dir(rep, level.level), f"copy_{copy}")


def _barrier(rep: Replicate, level: lottery.Level, train_copy) -> dict:
  """The barrier of ``level`` between the copies ``train_copy(start, copy) -> (params,
  model_state)`` trains, written in ``barrier.json``."""
  # Level 0 starts from the dense theta_k, later levels from theta_k * mask.
  start = rep.rewind_state()["params"] if level.level == 0 else level.start_params
  error = lambda network: 1.0 - float(rep.evaluate(*network)[1])
  barrier = connectivity.instability(train_copy, start, error, copies=COPIES,
                                     num_alphas=rep.config.instability_alphas)
  result = barrier._asdict()
  workdir.write_json(os.path.join(_instability_dir(rep, level.level), "barrier.json"), result)
  return result


def _instability(rep: Replicate, level: lottery.Level) -> dict:
  """Error barrier between two copies trained from the level's start with different data orders.

  Frankle et al. 2020, Sec. 2, through :func:`sparsejax.connectivity.instability`. A network
  here is its params *and* its BatchNorm running statistics, both interpolated linearly, so that
  each end of the path is exactly one copy's trained network. At level 0 both copies continue
  the dense run (its optimizer state at k); later levels start as the level's ticket does
  (``reset_optimizer``).
  """
  saved = workdir.read_finished(os.path.join(_instability_dir(rep, level.level), "barrier.json"))
  if saved is not None:
    return saved

  def train_copy(params, copy: int):
    state, copy_dir = _copy_start(rep, level, params, copy)
    state, _ = rep.train(state, copy_dir, f"[level {level.level} instability copy {copy}] ")
    final = state if state is not None else rep.load_final(copy_dir, params)
    return _host((final["params"], final["model_state"]))

  return _barrier(rep, level, train_copy)


# ---------------------------------------------------------------------------------------------
# Vectorized replicates: the same level (or control) of every replicate trained as one program.


class Stacked:
  """Trains the same training of several replicates as one program (``vectorize=True``).

  Their states are stacked (:func:`experiments.replicates.stack`: masks, weights and data keys
  per replicate, the step counters shared) and trained by :func:`experiments.trainer.train` with
  :class:`experiments.trainer.Replicates`: each replicate's directory gets the metrics a separate
  training writes there, ``directory`` the stacked checkpoints. One compiled step serves every
  level and control (one per number of replicates trained together).
  """

  def __init__(self, setup: Setup, sparsifier: sparsifiers.Sparsifier):
    self.setup, self.sparsifier = setup, sparsifier
    self.evaluate = trainer.make_evaluate(setup.task, vectorized=True)
    self._train_steps = {}

  def directory(self, level: int, training: str, batch: list[int]) -> str:
    """Where the stacked checkpoints of ``training`` of ``level`` for the replicates ``batch``
    live (named by the batch: a run extended with more replicates trains the new ones alone)."""
    return os.path.join(self.setup.workdir, "vectorized", f"level_{level}", training,
                        "replicates_" + "_".join(str(r) for r in batch))

  def train_steps(self, axes):
    leaves, treedef = jax.tree.flatten(axes, is_leaf=lambda x: x is None)
    key = (treedef, tuple(leaves))
    if key not in self._train_steps:
      self._train_steps[key] = trainer.make_train_steps(self.setup.task, self.sparsifier, axes)
    return self._train_steps[key]

  def train(self, states: list[dict], dirs: list[str], directory: str, label: str, *,
            end_step: int | None = None) -> tuple[list[dict], list[dict]]:
    """Trains ``states`` (one per directory of ``dirs``) together up to ``end_step`` (default:
    the end), resuming from ``directory``; each one's final state and summary."""
    stacked, axes = replicates_lib.stack(states)
    replicates = trainer.Replicates(axes, tuple(dirs))
    state, summaries = trainer.train(self.setup.task, self.sparsifier, self.train_steps(axes),
                                     self.evaluate, stacked, directory, end_step=end_step,
                                     label=label, replicates=replicates)
    return [replicates.take(state, i) for i in range(replicates.n)], summaries

  def train_to_end(self, states: list[dict], dirs: list[str], directory: str,
                   label: str) -> list[dict]:
    """:meth:`train` to the end, each summary written in its directory; the final states.

    Trainings whose summaries are all written already are read back from ``directory``.
    """
    summaries = [workdir.read_finished(os.path.join(d, "summary.json")) for d in dirs]
    if all(s is not None for s in summaries):
      finals = self._load_final(states, directory)
      if finals is not None:
        return finals
    finals, summaries = self.train(states, dirs, directory, label)
    for d, summary in zip(dirs, summaries):
      workdir.write_json(os.path.join(d, "summary.json"), summary)
    return finals

  def _load_final(self, states: list[dict], directory: str) -> list[dict] | None:
    """The final states of a finished stacked training, or None if ``directory`` holds none."""
    stacked, axes = replicates_lib.stack(states)
    checkpoints = workdir.Checkpoints(os.path.join(directory, "checkpoints"))
    try:
      step, state, _ = checkpoints.restore_latest(stacked)
    finally:
      checkpoints.close()
    if step is None or step < self.setup.task.durations.total:
      return None
    return [trainer.take(state, axes, i) for i in range(len(states))]


def _train_levels(stacked: Stacked, reps: list[Replicate],
                  requests: dict[int, lottery.Training]) -> dict[int, tuple]:
  """The answers to the :func:`sparsejax.lottery.driver` requests of several replicates for the
  same level (what :func:`_train_level` returns for each), from one stacked training."""
  (level,) = {request.level for request in requests.values()}
  batch = sorted(requests)
  dirs = [os.path.join(lottery.level_dir(reps[r].directory, level), "main") for r in batch]
  directory = stacked.directory(level, "main", batch)
  label = f"[level {level} of replicates {batch}] "
  rewind_step = reps[batch[0]].rewind_step
  if level == 0:
    states = [reps[r].fresh_state(requests[r].params, reps[r].init()[1], requests[r].masks, 0)
              for r in batch]
    checkpoints = [workdir.Checkpoints(os.path.join(reps[r].directory, "rewind_state"),
                                       max_to_keep=1) for r in batch]
    try:
      if any(c.latest_step() is None for c in checkpoints):
        rewound = states
        if rewind_step > 0:
          # Segment 1: dense training up to the rewind step k, whose full states are kept.
          rewound, _ = stacked.train(states, dirs, directory, label, end_step=rewind_step)
        for c, state in zip(checkpoints, rewound):
          if c.latest_step() is None:
            c.save(rewind_step, state, {})
    finally:
      for c in checkpoints:
        c.close()
  else:
    states = [reps[r].start_state(requests[r].params, reps[r].rewind_state()["model_state"],
                                  requests[r].masks,
                                  reset_optimizer=reps[r].config.reset_optimizer)
              for r in batch]
  finals = stacked.train_to_end(states, dirs, directory, label)
  return {r: _host((final["params"], workdir.read_json(os.path.join(d, "summary.json")),
                    reps[r].rewind_state()["params"] if level == 0 else None))
          for r, final, d in zip(batch, finals, dirs)}


def _stacked_controls(stacked: Stacked, reps: list[Replicate],
                      levels: dict[int, lottery.Level]) -> dict[int, dict]:
  """:func:`_controls` of the same level of several replicates: each control of all of them
  trained as one program."""
  out = {r: {} for r in levels}
  (level,) = {lvl.level for lvl in levels.values()}
  if level == 0:
    return out
  for name in stacked.setup.config.controls:
    dirs = {r: _control_dir(reps[r], level, name) for r in levels}
    for r in levels:
      out[r][name] = workdir.read_finished(os.path.join(dirs[r], "summary.json"))
    batch = sorted(r for r in levels if out[r][name] is None)
    if not batch:
      continue
    states = [_control_start(reps[r], levels[r], name) for r in batch]
    stacked.train_to_end(states, [dirs[r] for r in batch],
                         stacked.directory(level, os.path.join("controls", name), batch),
                         f"[level {level} control {name} of replicates {batch}] ")
    for r in batch:
      out[r][name] = workdir.read_json(os.path.join(dirs[r], "summary.json"))
  return out


def _stacked_instability(stacked: Stacked, reps: list[Replicate],
                         levels: dict[int, lottery.Level]) -> dict[int, dict]:
  """:func:`_instability` of the same level of several replicates: both copies of all of them
  trained as one program."""
  out = {}
  for r, level in levels.items():
    saved = workdir.read_finished(os.path.join(_instability_dir(reps[r], level.level),
                                               "barrier.json"))
    if saved is not None:
      out[r] = saved
  batch = sorted(r for r in levels if r not in out)
  if not batch:
    return out
  (level,) = {levels[r].level for r in batch}
  jobs = [(r, copy) for r in batch for copy in COPIES]
  starts = {r: reps[r].rewind_state()["params"] if level == 0 else levels[r].start_params
            for r in batch}
  states, dirs = zip(*(_copy_start(reps[r], levels[r], starts[r], copy) for r, copy in jobs))
  finals = stacked.train_to_end(list(states), list(dirs),
                                stacked.directory(level, "instability", batch),
                                f"[level {level} instability copies of replicates {batch}] ")
  networks = {job: _host((final["params"], final["model_state"]))
              for job, final in zip(jobs, finals)}
  for r in batch:
    out[r] = _barrier(reps[r], levels[r], lambda params, copy, r=r: networks[(r, copy)])
  return out


def _run_vectorized(stacked: Stacked, reps: list[Replicate],
                    sparsity_report: Callable[[Replicate, lottery.Level], None],
                    record: Callable[[Replicate, lottery.Level, dict, dict | None], None],
                    **settings) -> None:
  """Advances the :func:`sparsejax.lottery.driver` of every replicate level by level: trains the
  level's pending trainings of all replicates as one program, calls ``sparsity_report(rep,
  level)`` for each, trains the level's controls (each control as one program) and instability
  copies (as one program), and calls ``record(rep, level, controls, instability)`` for each
  replicate's level."""
  drivers = {rep.index: lottery.driver(rep.init()[0], rep.directory, **settings) for rep in reps}
  events = {r: next(d) for r, d in drivers.items()}
  while events:
    requests = {r: e for r, e in events.items() if isinstance(e, lottery.Training)}
    if requests:
      for r, answer in _train_levels(stacked, reps, requests).items():
        events[r] = drivers[r].send(answer)
      continue
    for r, level in events.items():
      sparsity_report(reps[r], level)
    controls = _stacked_controls(stacked, reps, events)
    instability = (_stacked_instability(stacked, reps, events)
                   if stacked.setup.config.instability else {})
    for r, level in events.items():
      record(reps[r], level, controls[r], instability.get(r))
    following = {}
    for r, d in drivers.items():
      try:
        following[r] = next(d)
      except StopIteration:
        pass
    events = following


@PROTOCOLS.register("imp", keys=KEYS, validate=validate, check=check,
                    report=report.printed,
                    extendable=("levels", "replicates"), uses_sparsifier=False,
                    replicates=True, vectorizes=True)
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
  settings = dict(levels=config.levels, prune_fraction=config.prune_fraction,
                  rewind_step=rewind_step, mode=mode,
                  overrides=parsing.parse_overrides(config.prune_fraction_overrides),
                  prunable=setup.prunable)
  reps = [Replicate(setup, inner, sparsifier, train_steps, evaluate, r, setup.key(r),
                    os.path.join(setup.workdir, f"replicate_{r}"), rewind_step)
          for r in range(config.replicates)]
  rows = [[] for _ in reps]

  def sparsity_report(rep: Replicate, level: lottery.Level) -> None:
    workdir.write_text(os.path.join(lottery.level_dir(rep.directory, level.level),
                                    "sparsity_report.txt"),
                       masks_lib.summary_table(level.final_params, level.masks) + "\n")

  def record(rep: Replicate, level: lottery.Level, controls: dict,
             instability: dict | None) -> None:
    row = {"level": level.level, **level.metrics, "controls": controls}
    if instability is not None:
      row["instability"] = instability
    rows[rep.index].append(row)
    logging.info("[replicate %d] level %d: density %.4f, test accuracy %.4f", rep.index,
                 level.level, row["density"], row["test_accuracy"])

  if config.vectorize and config.replicates > 1:
    _run_vectorized(Stacked(setup, sparsifier), reps, sparsity_report, record, **settings)
  else:
    for rep in reps:

      def on_level(level: lottery.Level, rep=rep) -> None:
        sparsity_report(rep, level)
        controls = _controls(rep, level)
        record(rep, level, controls, _instability(rep, level) if config.instability else None)

      lottery.run(functools.partial(_train_level, rep), rep.init()[0], rep.directory,
                  on_level=on_level, **settings)
  summary = {"protocol": "imp", "method": "imp", "model": config.model,
             "dataset": config.dataset, "rewind_step": rewind_step,
             "replicates": config.replicates, "levels": report.aggregate(rows)}
  # The last level's ticket at the top, as one training's summary has it, so that sweeps
  # tabulate lottery tickets beside the other methods.
  final = summary["levels"][-1] if summary["levels"] else {}
  summary.update({k: final[k] for k in ("test_accuracy", "best_test_accuracy", "density",
                                        "early_stop_step") if k in final})
  workdir.write_json(os.path.join(setup.workdir, "summary.json"), summary)
  report.write(setup.workdir, summary)
  return summary
