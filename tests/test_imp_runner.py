"""End-to-end tests of the runner's lottery-ticket protocol (``experiments/protocols/imp.py``).

Real IMP runs of LeNet-300-100 on scikit-learn's 8x8 digits (120 iterations per level): the files
a run leaves and its summary and report, the density of every level, rewinding to theta_k * mask,
the controls, the learning-rate schedule after rewinding, a fresh or a rewound optimizer
(``reset_optimizer``), a single compilation of the training step, bitwise resume after SIGKILL,
instability (with BatchNorm on ResNet-20), and configuration errors.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments import config as config_lib
from experiments import experiment, models, rng, trainer
from experiments.protocols import imp
from imp_counts import HALF, off_by
from sparsejax import connectivity, transforms
from sparsejax import masks as masks_lib
from workdir_files import checkpoint_steps, read_json, read_metrics

REPO = Path(__file__).resolve().parents[1]
CONTROLS = ("reinit", "shuffle_layerwise", "shuffle_global")
ROW_KEYS = ("level", "density", "test_accuracy", "best_test_accuracy", "early_stop_step")
CONTROL_KEYS = ("density", "test_accuracy", "best_test_accuracy", "early_stop_step")
LEVEL_FILES = ("masks.npz", "start_params.npz", "final_params.npz", "level.json",
               "sparsity_report.txt", "main/metrics.jsonl", "main/summary.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def imp_config(**overrides):
  """IMP on digits: LeNet-300-100, batch 64, 120 iterations per level, events every 40."""
  c = config_lib.defaults()
  c.protocol = "imp"
  c.model = "lenet300"
  c.dataset = "digits"
  c.batch_size = 64
  c.steps = "120it"
  c.eval_every = "40it"
  c.log_every = "40it"
  c.checkpoint_every = "40it"
  c.levels = 2
  for key, value in overrides.items():
    c[key] = value
  return c






def load_leaves(path):
  """The arrays of an npz written by ``sparsejax.files.save_arrays``, in the params' tree order."""
  with np.load(path) as f:
    assert sorted(f.files) == sorted(PATHS), path
    return [f[p] for p in PATHS]


def load_named(path):
  """The prunable leaves of a masks npz, keyed by path."""
  with np.load(path) as f:
    return {k: f[k] for k in f.files if f[k].ndim > 0}


def kept_counts(masks):
  """{path: kept} of the prunable (non-scalar) leaves of a mask list in tree order."""
  return {PATHS[i]: int(np.sum(m)) for i, m in enumerate(masks) if np.ndim(m) > 0}


def init_params(seed):
  """theta_0 of LeNet-300-100 for digits and ``seed``, as the runner creates it."""
  key = rng.stream(jax.random.key(seed), "init")
  _, params, _ = models.create("lenet300", num_classes=10, input_shape=DIGITS_SHAPE, key=key)
  return params


DIGITS_SHAPE = (8, 8, 1)
PATHS = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(init_params(0))]
PRUNABLE = ["['dense1']['kernel']", "['dense2']['kernel']", "['output']['kernel']"]
SIZES = {"['dense1']['kernel']": 64 * 300, "['dense2']['kernel']": 300 * 100,
         "['output']['kernel']": 100 * 10}


def find_states(tree, cls):
  is_cls = lambda x: isinstance(x, cls)
  return [x for x in jax.tree.leaves(tree, is_leaf=is_cls) if is_cls(x)]


def snapshot(state):
  state = dict(state, data_key=jax.random.key_data(state["data_key"]))
  return jax.tree.map(np.asarray, {k: state[k] for k in ("step", "params", "model_state",
                                                         "opt_state", "data_key")})


def record_trainings(mp, workdir):
  """Records, by directory relative to ``workdir``, the state every training starts from and
  ends with (``starts``, ``finals``), its replicate (``replicates``), and each replicate's
  rewound state at step k (``rewound``, by replicate directory)."""
  record = {"starts": {}, "finals": {}, "replicates": {}, "rewound": {}}
  replicate_train, rewind_state = imp.Replicate.train, imp.Replicate.rewind_state

  def recording_train(self, state, directory, label):
    rel = os.path.relpath(directory, workdir)
    assert rel not in record["starts"], f"{rel} trained twice"
    record["starts"][rel] = snapshot(state)
    final, summary = replicate_train(self, state, directory, label)
    record["finals"][rel], record["replicates"][rel] = final, self
    return final, summary

  def recording_rewind_state(self):
    rewound = rewind_state(self)
    record["rewound"][os.path.relpath(self.directory, workdir)] = snapshot(rewound)
    return rewound

  mp.setattr(imp.Replicate, "train", recording_train)
  mp.setattr(imp.Replicate, "rewind_state", recording_rewind_state)
  return record


# ---------------------------------------------------------------------------------------------
# Shared runs.


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  """Late rewinding (k=40), global pruning, every control, instability; 2 levels, 1 replicate.

  Records every jitted training step the runner builds and the state each training starts from.
  """
  workdir = tmp_path_factory.mktemp("imp_a") / "run"
  config = imp_config(rewind="40it", distribution="global", controls=CONTROLS,
                      instability=True, instability_alphas=5, optimizer="momentum",
                      learning_rate=0.05, lr_schedule="step", lr_milestones=("60it",))
  train_fns = []
  make_train_steps = trainer.make_train_steps

  def counting_make_train_steps(*args, **kwargs):
    fn = make_train_steps(*args, **kwargs)
    train_fns.append(fn)
    return fn

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "make_train_steps", counting_make_train_steps)
    record = record_trainings(mp, workdir)
    summary = experiment.run(config, str(workdir))
  return {"workdir": workdir, "summary": summary, "config": config, "train_fns": train_fns,
          "starts": record["starts"]}


@pytest.fixture(scope="module")
def run_c(tmp_path_factory):
  """The dense run's optimizer state rewound (reset_optimizer=False), Adam, k=40, every control;
  instability with both copies on the replicate's own data order (identical trainings)."""
  workdir = tmp_path_factory.mktemp("imp_c") / "run"
  config = imp_config(levels=1, rewind="40it", optimizer="adam", learning_rate=1e-3,
                      reset_optimizer=False, controls=CONTROLS, instability=True,
                      instability_alphas=7)
  init_state = trainer.init_state
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "init_state", lambda params, model_state, optimizer, key, data_key=None:
               init_state(params, model_state, optimizer, key))
    record = record_trainings(mp, workdir)
    summary = experiment.run(config, str(workdir))
  return {"workdir": workdir, "summary": summary, "config": config, **record}


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
  """Rewinding to init (k=0), layerwise pruning with the output at 10%, Adam; 3 levels, 2 reps."""
  workdir = tmp_path_factory.mktemp("imp_b") / "run"
  config = imp_config(levels=3, rewind="0it", distribution="uniform",
                      prune_fraction_overrides="output=0.1", optimizer="adam",
                      learning_rate=1.2e-3, replicates=2, seed=5)
  summary = experiment.run(config, str(workdir))
  return {"workdir": workdir, "summary": summary, "config": config}


# ---------------------------------------------------------------------------------------------
# 1. Layout, summary and report.


@pytest.mark.parametrize("name", ["run_a", "run_b"])
def test_layout_summary_and_report(name, request):
  run = request.getfixturevalue(name)
  workdir, config = run["workdir"], run["config"]
  summary = read_json(workdir / "summary.json")
  assert summary == json.loads(json.dumps(run["summary"]))
  assert summary["method"] == "imp" and summary["replicates"] == config.replicates
  rows = summary["levels"]
  assert [r["level"] for r in rows] == list(range(config.levels + 1))
  for key in ("test_accuracy", "best_test_accuracy", "density", "early_stop_step"):
    assert summary[key] == rows[-1][key], key  # the final ticket, as sweeps tabulate it
  for row in rows:
    for key in ROW_KEYS:
      assert row[key] is not None, (key, row)
    assert 0.5 < row["test_accuracy"] <= row["best_test_accuracy"] <= 1.0
    assert row["early_stop_step"] in (0, 40, 80, 120)
    assert len(row["replicate_test_accuracy"]) == config.replicates
    expected = set(config.controls) if row["level"] > 0 else set()
    assert set(row["controls"]) == expected
    for control in row["controls"].values():
      for key in CONTROL_KEYS:
        assert control[key] is not None, (key, control)
      assert control["density"] == row["density"]
      assert 0.0 < control["test_accuracy"] <= control["best_test_accuracy"] <= 1.0

  # Means over replicates of what every replicate's level recorded.
  for row in rows:
    per_rep = [read_json(workdir / f"replicate_{r}" / f"level_{row['level']}" / "level.json")
               for r in range(config.replicates)]
    accs = [p["metrics"]["test_accuracy"] for p in per_rep]
    assert all(p["level"] == row["level"] for p in per_rep)
    assert row["replicate_test_accuracy"] == accs
    assert row["test_accuracy"] == pytest.approx(np.mean(accs), rel=1e-12)
    if config.replicates > 1:
      assert row["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1), rel=1e-9)
    else:
      assert row["test_accuracy_std"] is None  # one replicate has no spread

  report_md = (workdir / "report.md").read_text()
  for row in rows:
    line = [l for l in report_md.splitlines() if l.startswith(f"| {row['level']} |")]
    assert len(line) == 1, report_md
    assert f"{100 * row['density']:.1f}%" in line[0]
    spread = " ±" if config.replicates > 1 else " |"
    assert f"{100 * row['test_accuracy']:.2f}{spread}" in line[0]
  for control in config.controls:
    assert f"{control} test acc" in report_md
  with open(workdir / "report.png", "rb") as f:
    assert f.read(8) == PNG_MAGIC
  assert (workdir / "report.png").stat().st_size > 5000

  for r in range(config.replicates):
    rep = workdir / f"replicate_{r}"
    assert (rep / "rewind_params.npz").is_file()
    for level in range(config.levels + 1):
      d = rep / f"level_{level}"
      for f in LEVEL_FILES:
        assert (d / f).is_file(), d / f
      assert "dense1" in (d / "sparsity_report.txt").read_text()
      metrics = read_metrics(d / "main" / "metrics.jsonl")
      assert metrics[-1]["step"] == 120 and "test_accuracy" in metrics[-1]
      assert read_json(d / "main" / "summary.json")["steps"] == 120
      for control in config.controls:
        c = d / "controls" / control
        if level == 0:
          assert not c.exists()
          continue
        assert read_json(c / "summary.json")["steps"] == 120
        assert (c / "masks.npz").is_file() and (c / "metrics.jsonl").is_file()


def test_sparsity_report_is_replaced_atomically(run_c, monkeypatch):
  """A resumed run rewrites every level's report: a failure leaves the old one, not a truncated one."""
  path = run_c["workdir"] / "replicate_0" / "level_0" / "sparsity_report.txt"
  before = path.read_text()
  assert "dense1" in before

  def failing(*args, **kwargs):
    raise RuntimeError("killed while writing the report")

  monkeypatch.setattr(masks_lib, "summary_table", failing)
  with pytest.raises(RuntimeError, match="killed"):
    experiment.run(run_c["config"], str(run_c["workdir"]))
  assert path.read_text() == before
  assert not list(path.parent.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# 2. Densities (1 - p)^L.


def test_global_density_after_each_level(run_a):
  workdir, config = run_a["workdir"], run_a["config"]
  total = sum(SIZES.values())
  previous = None
  for level, row in enumerate(run_a["summary"]["levels"]):
    masks = load_leaves(workdir / "replicate_0" / f"level_{level}" / "masks.npz")
    counts = kept_counts(masks)
    assert sorted(counts) == sorted(PRUNABLE)
    kept = sum(counts.values())
    assert off_by(kept, total, config.prune_fraction, level) <= HALF, level
    assert row["density"] == kept / total
    if previous is not None:  # pruned weights stay pruned
      for m, p in zip(masks, previous):
        assert not np.any(m & ~p)
    previous = masks


def test_layerwise_density_with_output_override(run_b):
  workdir, config = run_b["workdir"], run_b["config"]
  fractions = {p: config.prune_fraction for p in PRUNABLE}
  fractions["['output']['kernel']"] = 0.1
  total = sum(SIZES.values())
  for r in range(config.replicates):
    rep = workdir / f"replicate_{r}"
    for level in range(config.levels + 1):
      masks = load_leaves(rep / f"level_{level}" / "masks.npz")
      counts = kept_counts(masks)
      for path in PRUNABLE:
        assert off_by(counts[path], SIZES[path], fractions[path], level) <= HALF, (r, level, path)
      # The output layer loses 10% per level: 1000, 900, 810, 729.
      assert counts["['output']['kernel']"] == [1000, 900, 810, 729][level]
      assert run_b["summary"]["levels"][level]["density"] == sum(counts.values()) / total
      if level == 0:
        continue
      # Layerwise magnitude pruning of the previous level's trained weights among survivors.
      prev = rep / f"level_{level - 1}"
      prev_masks = load_leaves(prev / "masks.npz")
      prev_final = load_leaves(prev / "final_params.npz")
      for i, (m, pm, w) in enumerate(zip(masks, prev_masks, prev_final)):
        if np.ndim(m) == 0:
          continue
        assert not np.any(m & ~pm)
        removed = pm & ~m
        assert np.any(removed)
        assert np.min(np.abs(w[m])) >= np.max(np.abs(w[removed])), PATHS[i]


# ---------------------------------------------------------------------------------------------
# 3. Every level starts from theta_k * mask.


def assert_starts_rewound(rep_dir, levels, theta):
  for level in range(levels + 1):
    d = rep_dir / f"level_{level}"
    masks, start = load_leaves(d / "masks.npz"), load_leaves(d / "start_params.npz")
    assert len(start) == len(theta) == len(masks) == len(PATHS)
    for i, (t, m, s) in enumerate(zip(theta, masks, start)):
      assert s.dtype == t.dtype
      np.testing.assert_array_equal(s, t * m, err_msg=f"level {level} {PATHS[i]}")
      if np.ndim(m) > 0:
        assert np.all(s[~m] == 0.0)


def test_rewind_to_init_k0(run_b):
  workdir, config = run_b["workdir"], run_b["config"]
  for r in range(config.replicates):
    theta_0 = [np.asarray(x) for x in jax.tree.leaves(init_params(config.seed + r))]
    rewind = load_leaves(workdir / f"replicate_{r}" / "rewind_params.npz")
    for i, (a, b) in enumerate(zip(rewind, theta_0)):
      np.testing.assert_array_equal(a, b, err_msg=PATHS[i])
    assert_starts_rewound(workdir / f"replicate_{r}", config.levels, theta_0)
  # Replicates differ in their init.
  a = load_leaves(workdir / "replicate_0" / "rewind_params.npz")
  b = load_leaves(workdir / "replicate_1" / "rewind_params.npz")
  assert not np.array_equal(a[PATHS.index("['dense1']['kernel']")],
                            b[PATHS.index("['dense1']['kernel']")])


def test_late_rewind_to_theta_k(run_a):
  workdir, config = run_a["workdir"], run_a["config"]
  rep = workdir / "replicate_0"
  theta_k = load_leaves(rep / "rewind_params.npz")
  # theta_k is the dense run's state at step 40 (kept as a full checkpoint), not theta_0.
  saved = ocp.StandardCheckpointer().restore(os.path.abspath(rep / "rewind_state" / "40" / "state"))
  assert int(saved["step"]) == 40
  for i, (a, b) in enumerate(zip(theta_k, jax.tree.leaves(saved["params"]))):
    np.testing.assert_array_equal(a, np.asarray(b), err_msg=PATHS[i])
  theta_0 = jax.tree.leaves(init_params(config.seed))
  kernel = PATHS.index("['dense1']['kernel']")
  assert not np.array_equal(theta_k[kernel], np.asarray(theta_0[kernel]))
  # The dense run's level-0 start is theta_0; later levels start from theta_k * mask.
  start0 = load_leaves(rep / "level_0" / "start_params.npz")
  for a, b in zip(start0, theta_0):
    np.testing.assert_array_equal(a, np.asarray(b))
  for level in range(1, config.levels + 1):
    d = rep / f"level_{level}"
    masks, start = load_leaves(d / "masks.npz"), load_leaves(d / "start_params.npz")
    for i, (t, m, s) in enumerate(zip(theta_k, masks, start)):
      np.testing.assert_array_equal(s, t * m, err_msg=f"level {level} {PATHS[i]}")
    # What actually trained: those weights, from step k, with the schedule at k and a fresh
    # optimizer (OpenLTH), the level's masks in the optimizer state.
    state = run_a["starts"][f"replicate_0/level_{level}/main"]
    assert int(state["step"]) == 40
    for a, b in zip(jax.tree.leaves(state["params"]), start):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(transforms.get_masks(state["opt_state"])), masks):
      np.testing.assert_array_equal(a, b)
    counts = [int(s.count) for s in find_states(state["opt_state"], optax.ScaleByScheduleState)]
    assert counts == [40]
    traces = find_states(state["opt_state"], optax.TraceState)
    assert len(traces) == 1
    assert all(not np.any(x) for x in jax.tree.leaves(traces[0].trace))
    # The data order continues the dense run's: same data key.
    np.testing.assert_array_equal(state["data_key"],
                                  run_a["starts"]["replicate_0/level_0/main"]["data_key"])


# ---------------------------------------------------------------------------------------------
# 4. Controls.


def test_controls_keep_densities(run_a):
  workdir, config = run_a["workdir"], run_a["config"]
  rep = workdir / "replicate_0"
  theta_k = load_leaves(rep / "rewind_params.npz")
  for level in range(1, config.levels + 1):
    d = rep / f"level_{level}"
    ticket = load_leaves(d / "masks.npz")
    ticket_named = {PATHS[i]: m for i, m in enumerate(ticket) if np.ndim(m) > 0}
    ticket_counts = kept_counts(ticket)
    named = {name: load_named(d / "controls" / name / "masks.npz") for name in CONTROLS}
    for name in CONTROLS:
      assert sorted(named[name]) == sorted(PRUNABLE), name
      for path, m in named[name].items():
        assert m.shape == ticket_named[path].shape and m.dtype == np.bool_

    layerwise = named["shuffle_layerwise"]
    assert {p: int(m.sum()) for p, m in layerwise.items()} == ticket_counts
    assert any(not np.array_equal(layerwise[p], ticket_named[p]) for p in PRUNABLE)

    shuffled = named["shuffle_global"]
    assert sum(int(m.sum()) for m in shuffled.values()) == sum(ticket_counts.values())
    assert any(not np.array_equal(shuffled[p], ticket_named[p]) for p in PRUNABLE)

    reinit = named["reinit"]
    for p in PRUNABLE:
      np.testing.assert_array_equal(reinit[p], ticket_named[p])

    # Starts: the shuffles from theta_k * their mask, reinit from fresh weights * the ticket's
    # mask; all from step k with the schedule at k and, as the ticket, a fresh optimizer.
    for name in CONTROLS:
      state = run_a["starts"][f"replicate_0/level_{level}/controls/{name}"]
      assert int(state["step"]) == 40, name
      assert [int(s.count) for s in find_states(state["opt_state"],
                                                optax.ScaleByScheduleState)] == [40]
      (trace,) = find_states(state["opt_state"], optax.TraceState)
      assert all(not np.any(x) for x in jax.tree.leaves(trace.trace)), name
      params = jax.tree.leaves(state["params"])
      state_masks = jax.tree.leaves(transforms.get_masks(state["opt_state"]))
      for i, (w, m, t) in enumerate(zip(params, state_masks, theta_k)):
        if np.ndim(m) > 0:
          np.testing.assert_array_equal(m, named[name][PATHS[i]])
        if name == "reinit":
          if np.ndim(m) > 0:
            assert np.all(w[~m] == 0.0)
            assert not np.any(w[m] == t[m]), (name, PATHS[i])
        else:
          np.testing.assert_array_equal(w, t * m, err_msg=f"{name} {PATHS[i]}")
    summary_row = run_a["summary"]["levels"][level]
    for name in CONTROLS:
      assert summary_row["controls"][name]["density"] == summary_row["density"]


# ---------------------------------------------------------------------------------------------
# 5. The learning-rate schedule continues from the rewind step.


SCHEDULE = optax.piecewise_constant_schedule(0.1, {50: 0.1})  # 0.1 until step 50, then 0.01


def _grads():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(3,)) + 0.5, jnp.float32)}


@pytest.mark.parametrize("masked", [False, True])
def test_fast_forward_sgd_uses_schedule_at_k(masked):
  assert float(SCHEDULE(60)) == pytest.approx(0.01) and float(SCHEDULE(0)) == pytest.approx(0.1)
  params = jax.tree.map(jnp.ones_like, _grads())
  opt = optax.sgd(SCHEDULE)
  if masked:  # as the runner builds it: the masks live in the optimizer state
    opt = transforms.static_masks(opt, {"w": jnp.ones((4, 3), bool), "b": jnp.array(True)})
  g = _grads()
  fresh = opt.init(params)
  state = imp.fast_forward_schedules(fresh, 60)
  assert [int(s.count) for s in find_states(state, optax.ScaleByScheduleState)] == [60]
  updates, state = opt.update(g, state, params)
  for u, x in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
    np.testing.assert_allclose(u, -float(SCHEDULE(60)) * np.asarray(x), rtol=1e-6)
  # Without fast-forwarding, the step would use the schedule's value at 0: ten times larger.
  updates0, _ = opt.update(g, fresh, params)
  for u, x in zip(jax.tree.leaves(updates0), jax.tree.leaves(g)):
    np.testing.assert_allclose(u, -float(SCHEDULE(0)) * np.asarray(x), rtol=1e-6)
  assert [int(s.count) for s in find_states(state, optax.ScaleByScheduleState)] == [61]


def test_fast_forward_adam_keeps_fresh_moments():
  params = jax.tree.map(jnp.ones_like, _grads())
  opt = transforms.static_masks(optax.adam(SCHEDULE),
                                {"w": jnp.ones((4, 3), bool), "b": jnp.array(True)})
  state = imp.fast_forward_schedules(opt.init(params), 60)
  (adam,) = find_states(state, optax.ScaleByAdamState)
  assert int(adam.count) == 0
  assert all(not np.any(x) for x in jax.tree.leaves((adam.mu, adam.nu)))
  assert [int(s.count) for s in find_states(state, optax.ScaleByScheduleState)] == [60]
  g = _grads()
  updates, state = opt.update(g, state, params)
  # Adam's first bias-corrected step is lr * g / (|g| + eps) = lr * sign(g), lr = schedule(60).
  for u, x in zip(jax.tree.leaves(updates), jax.tree.leaves(g)):
    np.testing.assert_allclose(u, -float(SCHEDULE(60)) * np.sign(np.asarray(x)), rtol=1e-5)
  (adam,) = find_states(state, optax.ScaleByAdamState)
  assert int(adam.count) == 1


# ---------------------------------------------------------------------------------------------
# 6. One compilation of the training step for every level, control and instability copy.


def test_training_step_compiled_once(run_a):
  fns = run_a["train_fns"]
  assert len(fns) == 1  # one jitted step for the whole experiment
  trainings = run_a["starts"]
  # 3 mains, 3 controls x 2 levels, 2 instability copies x 3 levels.
  assert len(trainings) == 3 + 3 * 2 + 2 * 3, sorted(trainings)
  assert fns[0]._cache_size() == 1


# ---------------------------------------------------------------------------------------------
# 7. Kill-and-resume through the command line.


KILL_CONFIG = '''
from experiments.config import defaults


def get_config():
  c = defaults()
  c.protocol = "imp"
  c.model = "lenet300"
  c.dataset = "digits"
  c.batch_size = 64
  c.steps = "120it"
  c.eval_every = "40it"
  c.log_every = "40it"
  c.checkpoint_every = "40it"
  c.levels = 3
  c.rewind = "40it"
  c.controls = ("shuffle_layerwise",)
  return c
'''




def strip_wall(value):
  if isinstance(value, dict):
    return {k: strip_wall(v) for k, v in value.items() if "wall" not in k}
  if isinstance(value, list):
    return [strip_wall(v) for v in value]
  return value


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
  config_file = tmp_path / "imp_kill.py"
  config_file.write_text(KILL_CONFIG)
  command = lambda wd: [sys.executable, "-m", "experiments.main", f"--config={config_file}",
                        f"--workdir={wd}"]
  clean, killed = tmp_path / "clean", tmp_path / "killed"
  clean_log = open(tmp_path / "clean.log", "w")
  reference = subprocess.Popen(command(clean), cwd=REPO, stdout=clean_log,
                               stderr=subprocess.STDOUT)
  try:
    with open(tmp_path / "killed.log", "w") as log:
      proc = subprocess.Popen(command(killed), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
      try:
        rep = killed / "replicate_0"
        deadline = time.time() + 200
        while proc.poll() is None and time.time() < deadline:
          if ((rep / "level_1" / "level.json").exists()
              and checkpoint_steps(rep / "level_2" / "main" / "checkpoints")):
            break
          time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
      finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (rep / "level_2" / "level.json").exists()  # killed inside level 2
    assert checkpoint_steps(rep / "level_2" / "main" / "checkpoints")[-1] < 120
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run(command(killed), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint at step" in resumed.stderr
    assert "| 3 |" in resumed.stdout
    assert reference.wait(timeout=300) == 0, (tmp_path / "clean.log").read_text()[-3000:]
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.wait()
    clean_log.close()

  a, b = read_json(clean / "summary.json"), read_json(killed / "summary.json")
  assert [r["level"] for r in a["levels"]] == [0, 1, 2, 3]
  for ra, rb in zip(a["levels"], b["levels"]):
    for key in ROW_KEYS:
      assert ra[key] == rb[key], (ra["level"], key)
    assert ra["controls"].keys() == rb["controls"].keys()
    for name in ra["controls"]:
      assert ra["controls"][name] == rb["controls"][name]
  assert set(a["levels"][3]["controls"]) == {"shuffle_layerwise"}
  assert strip_wall(a) == strip_wall(b)

  for level in range(4):
    da, db = (w / "replicate_0" / f"level_{level}" for w in (clean, killed))
    for name in ("masks.npz", "start_params.npz", "final_params.npz"):
      for x, y in zip(load_leaves(da / name), load_leaves(db / name)):
        np.testing.assert_array_equal(x, y, err_msg=f"level {level} {name}")
    if level:
      ma = load_named(da / "controls" / "shuffle_layerwise" / "masks.npz")
      mb = load_named(db / "controls" / "shuffle_layerwise" / "masks.npz")
      assert ma.keys() == mb.keys()
      for key in ma:
        np.testing.assert_array_equal(ma[key], mb[key])
  rows_a = read_metrics(clean / "replicate_0" / "level_2" / "main" / "metrics.jsonl")
  rows_b = read_metrics(killed / "replicate_0" / "level_2" / "main" / "metrics.jsonl")
  assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [40, 80, 120]
  for ra, rb in zip(rows_a, rows_b):
    ra.pop("steps_per_second", None)
    rb.pop("steps_per_second", None)
    assert ra == rb


# ---------------------------------------------------------------------------------------------
# 8. Instability.


def test_instability_of_identical_trainings_is_zero(run_c):
  """Both copies on the same data order train identically: the runner's barrier is exactly 0."""
  workdir, config = run_c["workdir"], run_c["config"]
  for row in run_c["summary"]["levels"]:
    level = row["level"]
    copies = [run_c["finals"][f"replicate_0/level_{level}/instability/copy_{c}"] for c in (1, 2)]
    for a, b in zip(jax.tree.leaves(copies[0]["params"]), jax.tree.leaves(copies[1]["params"])):
      np.testing.assert_array_equal(a, b)
    saved = read_json(workdir / "replicate_0" / f"level_{level}" / "instability" / "barrier.json")
    assert len(saved["errors"]) == config.instability_alphas
    assert len(set(saved["errors"])) == 1, saved["errors"]
    assert 0.0 < saved["errors"][0] < 0.5
    assert saved["barrier"] == 0.0 and saved["stable"] is True
    assert row["instability"]["barrier"] == 0.0


def test_runner_instability_entries(run_a):
  workdir, config = run_a["workdir"], run_a["config"]
  for row in run_a["summary"]["levels"]:
    inst = row["instability"]
    assert set(inst) >= {"barrier", "stable"}
    d = workdir / "replicate_0" / f"level_{row['level']}" / "instability"
    saved = read_json(d / "barrier.json")
    assert saved["barrier"] == inst["barrier"] and saved["stable"] == inst["stable"]
    errors = saved["errors"]
    assert len(saved["alphas"]) == len(errors) == config.instability_alphas
    assert saved["alphas"][0] == 0.0 and saved["alphas"][-1] == 1.0
    assert inst["barrier"] == pytest.approx(max(errors) - 0.5 * (errors[0] + errors[-1]))
    assert inst["stable"] == (inst["barrier"] < connectivity.STABLE_BARRIER)
    # The endpoints are the two copies, trained with different data orders.
    copies = [read_json(d / f"copy_{c}" / "summary.json") for c in (1, 2)]
    assert errors[0] == pytest.approx(1.0 - copies[0]["test_accuracy"], abs=1e-12)
    assert errors[-1] == pytest.approx(1.0 - copies[1]["test_accuracy"], abs=1e-12)
    starts = [run_a["starts"][f"replicate_0/level_{row['level']}/instability/copy_{c}"]
              for c in (1, 2)]
    assert not np.array_equal(starts[0]["data_key"], starts[1]["data_key"])
    for a, b in zip(jax.tree.leaves(starts[0]["params"]), jax.tree.leaves(starts[1]["params"])):
      np.testing.assert_array_equal(a, b)
    assert int(starts[0]["step"]) == int(starts[1]["step"]) == 40
    losses = [read_metrics(d / f"copy_{c}" / "metrics.jsonl")[1]["train_loss"] for c in (1, 2)]
    assert losses[0] != losses[1]
  assert "instability barrier" in (workdir / "report.md").read_text()


def test_instability_interpolates_batchnorm_statistics(tmp_path):
  """With BatchNorm (ResNet-20), each end of the path is exactly one copy's trained network.

  Params and running statistics are interpolated together: the endpoints' errors are 1 - the
  copies' test accuracies, and the midpoint is the network of averaged params and statistics.
  """
  workdir = tmp_path / "run"
  config = imp_config(model="resnet20", batch_size=32, steps="30it", eval_every="30it",
                      log_every="30it", checkpoint_every="30it", levels=0, rewind="10it",
                      optimizer="momentum", learning_rate=0.05, instability=True,
                      instability_alphas=3)
  with pytest.MonkeyPatch.context() as mp:
    record = record_trainings(mp, workdir)
    summary = experiment.run(config, str(workdir))
  d = workdir / "replicate_0" / "level_0" / "instability"
  saved = read_json(d / "barrier.json")
  assert saved["alphas"] == [0.0, 0.5, 1.0]
  accuracies = [read_json(d / f"copy_{c}" / "summary.json")["test_accuracy"] for c in (1, 2)]
  assert saved["errors"][0] == 1.0 - accuracies[0]
  assert saved["errors"][-1] == 1.0 - accuracies[1]
  finals = [record["finals"][f"replicate_0/level_0/instability/copy_{c}"] for c in (1, 2)]
  networks = [(f["params"], f["model_state"]) for f in finals]
  evaluate = record["replicates"]["replicate_0/level_0/instability/copy_1"].evaluate
  middle = connectivity.interpolate(*networks, jnp.float32(0.5))
  assert saved["errors"][1] == 1.0 - float(evaluate(*middle)[1])
  # The copies' statistics differ, and matter: copy 2's params with copy 1's statistics are
  # another network, with another error.
  stats = [jax.tree.leaves(n[1]) for n in networks]
  assert len(stats[0]) > 0 and any(not np.array_equal(a, b) for a, b in zip(*stats))
  assert 1.0 - float(evaluate(networks[1][0], networks[0][1])[1]) != saved["errors"][-1]
  errors = saved["errors"]
  assert summary["levels"][0]["instability"]["barrier"] == pytest.approx(
      max(errors) - 0.5 * (errors[0] + errors[-1]))


def assert_rewound_optimizer(start, rewound, step):
  """``start`` holds the dense run's optimizer state at k with its masks' pruned entries zeroed."""
  masks = jax.tree.leaves(transforms.get_masks(start["opt_state"]))
  assert int(start["step"]) == step
  (adam,), (dense_adam,) = (find_states(s["opt_state"], optax.ScaleByAdamState)
                            for s in (start, rewound))
  assert int(adam.count) == int(dense_adam.count) == step
  assert [int(s.count) for s in find_states(start["opt_state"],
                                            optax.ScaleByScheduleState)] == [step]
  for moments, dense in ((adam.mu, dense_adam.mu), (adam.nu, dense_adam.nu)):
    for i, (x, m, r) in enumerate(zip(jax.tree.leaves(moments), masks, jax.tree.leaves(dense))):
      if np.ndim(m) == 0:  # never pruned: as rewound
        np.testing.assert_array_equal(x, r, err_msg=PATHS[i])
        continue
      assert np.all(x[~m] == 0.0) and not np.signbit(x[~m]).any(), PATHS[i]
      np.testing.assert_array_equal(x[m], r[m], err_msg=PATHS[i])


def test_rewound_optimizer_zeroes_pruned_moments(run_c):
  """reset_optimizer=False: the ticket, its controls and the instability copies start from the
  dense run's optimizer state at k (step count k), with no moment left at a pruned weight."""
  starts, config = run_c["starts"], run_c["config"]
  rewound = run_c["rewound"]["replicate_0"]
  assert int(rewound["step"]) == 40
  level_1 = ["main"] + [f"controls/{name}" for name in CONTROLS] + [
      f"instability/copy_{c}" for c in (1, 2)]
  for name in level_1:
    start = starts[f"replicate_0/level_1/{name}"]
    assert_rewound_optimizer(start, rewound, 40)
    masks = jax.tree.leaves(transforms.get_masks(start["opt_state"]))
    assert any(np.ndim(m) and not m.all() for m in masks), name
  # The dense moments at the now-pruned weights were not zero: zeroing them did something.
  (dense_adam,) = find_states(rewound["opt_state"], optax.ScaleByAdamState)
  ticket = jax.tree.leaves(transforms.get_masks(starts["replicate_0/level_1/main"]["opt_state"]))
  assert all(np.any(x[~m] != 0.0) for x, m in zip(jax.tree.leaves(dense_adam.nu), ticket)
             if np.ndim(m))
  # At level 0 the copies continue the dense run: its whole optimizer state, nothing pruned.
  for c in (1, 2):
    assert_rewound_optimizer(starts[f"replicate_0/level_0/instability/copy_{c}"], rewound, 40)
  assert config.reset_optimizer is False
  for row in run_c["summary"]["levels"]:
    assert 0.5 < row["test_accuracy"] <= 1.0
    for control in row["controls"].values():
      assert control["density"] == row["density"]


# ---------------------------------------------------------------------------------------------
# 9. Configuration errors.


@pytest.mark.parametrize("key, value, shown", [
    ("prune_fraction", 1.0, "prune_fraction=1.0"),
    ("controls", ("bogus",), "'bogus'"),
    ("rewind", "500it", "rewind='500it'"),
    ("rewind", "120it", "rewind='120it'"),
    ("distribution", "erk", "distribution='erk'"),
    ("sparsifier", "magnitude", "sparsifier='magnitude'"),
])
def test_bad_imp_config_raises_naming_value(tmp_path, key, value, shown):
  config = imp_config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=re.escape(shown)):
    experiment.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "replicate_0").exists()  # nothing trained
