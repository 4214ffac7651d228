"""Replicates (``experiments/replicates.py``): N trainings of one config, seeds seed .. seed+N-1,
one after another or vectorized under ``jax.vmap``; each equals the separate run with its seed."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.extend
import numpy as np
import pytest

from experiments import experiment, replicates, sparsifiers, trainer
from experiments.parsing import ConfigError
from test_runner import digits_config, read_masks
from workdir_files import read_json, read_metrics

# 30 steps of batch 64 on digits (22 per epoch), the methods' schedules inside them.
METHODS = {  # dense is the magnitude run's inner optimizer, vectorized in every case below
    "magnitude": {"final_sparsity": 0.8, "pruning_begin": "3it", "pruning_end": "20it",
                  "pruning_frequency": "4it"},
    "random": {"final_sparsity": 0.8, "distribution": "erk"},
    "rigl": {"final_sparsity": 0.8, "dst_update_every": "4it", "dst_end": "20it"},
    "snip": {"final_sparsity": 0.8},
    "pdp": {"final_sparsity": 0.8, "pdp_warmup": "10it", "pdp_rate": 1.0},
    "ste": {"final_sparsity": 0.8, "pdp_warmup": "10it", "pdp_rate": 1.0},
}


def config(sparsifier, **overrides):
  events = {"steps": "30it", "eval_every": "15it", "log_every": "15it",
            "checkpoint_every": "15it"}
  return digits_config(**{**events, "sparsifier": sparsifier, **METHODS[sparsifier],
                          **overrides})


_RUNS = {}


def run_once(tmp_path_factory, sparsifier, vectorize, **overrides):
  key = (sparsifier, vectorize, tuple(sorted(overrides.items())))
  if key not in _RUNS:
    workdir = tmp_path_factory.mktemp(f"{sparsifier}_{'vec' if vectorize else 'seq'}")
    _RUNS[key] = (workdir, experiment.run(
        config(sparsifier, replicates=2, vectorize=vectorize, **overrides), str(workdir)))
  return _RUNS[key]


def assert_same_replicates(a_dir, a, b_dir, b):
  for i, (x, y) in enumerate(zip(a["runs"], b["runs"])):
    for key in ("density", "test_accuracy", "test_loss", "density_hard", "test_accuracy_hard"):
      if key in x:
        assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (i, key)
    x_masks = read_masks(pathlib.Path(a_dir) / f"replicate_{i}")
    y_masks = read_masks(pathlib.Path(b_dir) / f"replicate_{i}")
    assert sorted(x_masks) == sorted(y_masks)
    for path in x_masks:
      # Float rounding may differ between a vmapped and a plain step; masks agree up to ties.
      assert np.mean(x_masks[path] == y_masks[path]) > 0.999, (i, path)


@pytest.mark.parametrize("sparsifier", sorted(METHODS))
def test_vectorized_replicates_equal_one_after_another(tmp_path_factory, sparsifier):
  seq_dir, seq = run_once(tmp_path_factory, sparsifier, False)
  vec_dir, vec = run_once(tmp_path_factory, sparsifier, True)
  assert seq["seeds"] == vec["seeds"] == [0, 1]
  assert_same_replicates(seq_dir, seq, vec_dir, vec)
  assert vec["test_accuracy"] == pytest.approx(np.mean([r["test_accuracy"] for r in vec["runs"]]))
  # Different seeds are different runs.
  assert vec["runs"][0]["test_accuracy"] != vec["runs"][1]["test_accuracy"] or (
      read_masks(vec_dir / "replicate_0") != read_masks(vec_dir / "replicate_1"))


def test_a_replicate_is_the_separate_run_with_its_seed(tmp_path_factory, tmp_path):
  """replicate_1 of a vectorized run writes what the run with seed 1 writes, with its config."""
  vec_dir, vec = run_once(tmp_path_factory, "magnitude", True)
  single = experiment.run(config("magnitude", seed=1), str(tmp_path))
  replicate = vec_dir / "replicate_1"
  files = lambda d: sorted(p.name for p in d.iterdir() if p.name != "checkpoints")
  assert files(replicate) == files(tmp_path)
  assert read_json(replicate / "config.json") == read_json(tmp_path / "config.json")
  got = read_json(replicate / "summary.json")
  for key in ("density", "test_accuracy", "test_loss", "seed", "steps", "early_stop_step"):
    assert got[key] == pytest.approx(single[key], rel=1e-5), key
  assert [r["step"] for r in read_metrics(replicate / "metrics.jsonl")] == [
      r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
  for path, mask in read_masks(tmp_path).items():
    assert np.mean(read_masks(replicate)[path] == mask) > 0.999
  # The vectorized run keeps one stacked checkpoint, at the root.
  assert (vec_dir / "checkpoints").is_dir() and not (replicate / "checkpoints").exists()


def test_step_counters_are_shared_so_pruning_stays_a_branch():
  """Under vmap the counters stay unbatched, so the pruning step's lax.cond is still a cond."""
  c = config("magnitude", replicates=2, vectorize=True)
  from experiments import config as config_lib, setup as setup_lib
  setup = setup_lib.build(config_lib.finalize(c), "")
  sparsifiers, states = replicates.initial(setup, 2)
  sparsifier = sparsifiers[0]
  stacked, axes = replicates.stack(states)
  assert axes["step"] is None
  counts = [a for a, x in zip(jax.tree.leaves(axes, is_leaf=lambda a: a is None),
                              jax.tree.leaves(stacked)) if a is None]
  assert len(counts) >= 2  # the step and the pruning transformation's count
  assert jax.tree.leaves(axes["params"]) == [0] * 6  # params are per replicate
  steps = trainer.make_train_steps(setup.task, sparsifier, axes)
  jaxpr = jax.make_jaxpr(lambda s: steps(s, 3))(stacked)
  conds = [eqn for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "cond"]
  assert conds  # a batched predicate would have become a select of both branches


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


def test_vectorized_run_resumes_from_its_stacked_checkpoint(tmp_path_factory, tmp_path):
  _, uninterrupted = run_once(tmp_path_factory, "pdp", True)
  trainer.request_stop()  # the first chunk (15 steps: past the warm-up) checkpoints and stops
  with pytest.raises(trainer.Preempted):
    experiment.run(config("pdp", replicates=2, vectorize=True), str(tmp_path))
  assert (tmp_path / "checkpoints" / "15").is_dir()
  resumed = experiment.run(config("pdp", replicates=2, vectorize=True), str(tmp_path))
  for a, b in zip(resumed["runs"], uninterrupted["runs"]):
    for key in ("test_accuracy", "test_loss", "density_hard", "test_accuracy_hard"):
      assert a[key] == b[key], key
  rows = read_metrics(tmp_path / "replicate_1" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [0, 15, 30]  # nothing logged twice


def test_convolutional_replicates_dispatched_from_the_host():
  """Conv models on CPU run one jitted step per call, the replicates looped inside it (no
  vmap): the stacked step gives every replicate's own steps."""
  from experiments import config as config_lib, setup as setup_lib
  c = config("magnitude", model="conv2", batch_size=16, pruning_begin="1it", pruning_end="6it",
             pruning_frequency="2it", replicates=2, vectorize=True)
  setup = setup_lib.build(config_lib.finalize(c), "")
  assert trainer.host_loop(setup.model)
  sparsifiers, states = replicates.initial(setup, 2)
  sparsifier = sparsifiers[0]
  stacked, axes = replicates.stack(states)
  single = trainer.make_train_steps(setup.task, sparsifier)
  stacked, (loss_sums, _) = trainer.make_train_steps(setup.task, sparsifier, axes)(stacked, 7)
  for i, state in enumerate(states):
    state, (loss_sum, _) = single(state, 7)
    np.testing.assert_allclose(loss_sums[i], loss_sum, rtol=1e-5)
    view = trainer.take(stacked, axes, i)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 view["params"], state["params"])
    masks = [np.asarray(m) for m in jax.tree.leaves(trainer.masks_of(sparsifier, view))]
    for got, want in zip(masks, jax.tree.leaves(trainer.masks_of(sparsifier, state))):
      assert np.mean(got == np.asarray(want)) > 0.999
  assert int(stacked["step"]) == 7


@sparsifiers.register("_replicate_bound", keys={})
def _replicate_bound(ctx):
  """A sparsifier whose forward function closes over its replicate's initial params."""
  first = sum(jax.numpy.sum(x) for x in jax.tree.leaves(ctx.params))  # differs per replicate
  dense = sparsifiers.dense(ctx)

  def forward(params, opt_state, step):
    del opt_state, step
    return jax.tree.map(lambda p: p + 0.0 * first, params)

  return sparsifiers.Sparsifier(dense.tx, dense.masks, forward)


def test_a_sparsifier_bound_to_one_replicate_is_refused(tmp_path):
  c = digits_config(steps="4it", sparsifier="_replicate_bound", replicates=2, vectorize=True)
  with pytest.raises(ConfigError, match="builds a different forward function for replicate 1"):
    experiment.run(c, str(tmp_path / "vec"))
  summary = experiment.run(digits_config(steps="4it", sparsifier="_replicate_bound", replicates=2),
                           str(tmp_path / "seq"))
  assert len(summary["runs"]) == 2


@pytest.fixture
def single_replicate_protocols():
  """Two toy protocols: one that runs one replicate, one whose replicates are not vectorized
  (every built-in protocol does both)."""
  from experiments.registry import PROTOCOLS
  PROTOCOLS.register("_one_run")(lambda setup: {})
  PROTOCOLS.register("_looped_runs", replicates=True)(lambda setup: {})
  yield
  PROTOCOLS.unregister("_one_run")
  PROTOCOLS.unregister("_looped_runs")


@pytest.mark.parametrize("overrides,message", [
    ({"replicates": 0}, "replicates=0 must be a positive integer"),
    ({"replicates": 2, "protocol": "_one_run"},
     "replicates=2: the '_one_run' protocol runs one replicate"),
    ({"replicates": 2, "vectorize": True, "protocol": "_looped_runs"},
     "vectorize=True: the '_looped_runs' protocol trains its replicates one after another"),
])
def test_config_errors(tmp_path, single_replicate_protocols, overrides, message):
  with pytest.raises(ConfigError, match=message):
    experiment.run(digits_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)
