"""Runner tests of the forward-time sparsifiers ``pdp`` and ``ste``
(``experiments/pdp_sparsifiers.py``): tiny trainings of LeNet-300-100 on digits (66 steps, 22
per epoch), exact hard-mask counts, the hard-masked evaluation, config errors naming their key,
and the PDP config files."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import config as config_lib
from experiments import experiment, models, setup as setup_lib, trainer
from experiments.parsing import ConfigError
from sparsejax import masks as masks_lib
from sparsejax import pdp
from test_paper_configs import load_config
from test_runner import digits_config
from workdir_files import read_json, read_metrics

KERNELS = {"['dense1']['kernel']": (64, 300), "['dense2']['kernel']": (300, 100),
           "['output']['kernel']": (100, 10)}
TOTAL = sum(a * b for a, b in KERNELS.values())
HARD_KEYS = {"test_accuracy_hard", "test_loss_hard", "density_hard"}


def pdp_config(**overrides):
  """66 steps (3 epochs of 22) on digits: dense for the first epoch, then the full targets."""
  return digits_config(**{
      "steps": "66it", "eval_every": "33it", "log_every": "33it", "checkpoint_every": "66it",
      "learning_rate": 0.05, "sparsifier": "pdp", "final_sparsity": 0.9, "pdp_warmup": "1ep",
      "pdp_rate": 1.0, **overrides})


_RUNS = {}


def run_once(tmp_path_factory, name, **overrides):
  if name not in _RUNS:
    workdir = tmp_path_factory.mktemp(name)
    _RUNS[name] = (workdir, experiment.run(pdp_config(**overrides), str(workdir)))
  return _RUNS[name]


def read_masks(workdir):
  with np.load(pathlib.Path(workdir) / "masks.npz") as npz:
    return {k: npz[k] for k in npz.files if npz[k].ndim > 0}


def final_state(workdir, step=66):
  return ocp.StandardCheckpointer().restore(
      os.path.abspath(pathlib.Path(workdir) / "checkpoints" / str(step) / "state"))


def by_path(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_pdp_unstructured_hard_density_and_hard_evaluation(tmp_path_factory):
  workdir, summary = run_once(tmp_path_factory, "pdp", pdp_scope="unstructured")
  kept_total = round(0.1 * TOTAL)
  assert HARD_KEYS <= set(summary)
  assert summary["density_hard"] == kept_total / TOTAL == summary["density"]
  masks = read_masks(workdir)
  assert sorted(masks) == sorted(KERNELS)
  assert sum(int(m.sum()) for m in masks.values()) == kept_total
  assert read_json(workdir / "summary.json") == summary

  # The density follows the schedule: dense in the warm-up, the targets one epoch later.
  rows = read_metrics(workdir / "metrics.jsonl")
  assert [(r["step"], r.get("density")) for r in rows] == [
      (0, None), (33, kept_total / TOTAL), (66, kept_total / TOTAL)]

  # The hard-masked network: the trained params with pruned weights exactly 0.0, evaluated again.
  state = final_state(workdir)
  params = by_path(state["params"])
  mask_tree = jax.tree_util.tree_map_with_path(
      lambda p, x: masks.get(jax.tree_util.keystr(p), np.array(True)), state["params"])
  hard_tree = masks_lib.apply(state["params"], mask_tree)
  hard = by_path(hard_tree)
  for path, mask in masks.items():
    assert np.all(hard[path][~mask] == 0.0)
    assert np.array_equal(hard[path][mask], params[path][mask])
    # PDP trains dense params: the pruned weights are not zero in the params themselves.
    assert np.count_nonzero(params[path][~mask]) > 0.9 * (~mask).sum(), path
  setup = setup_lib.build(config_lib.finalize(pdp_config(pdp_scope="unstructured")), str(workdir))
  loss, accuracy = trainer.make_evaluate(setup.task)(hard_tree, state["model_state"])
  assert float(accuracy) == summary["test_accuracy_hard"]
  assert float(loss) == pytest.approx(summary["test_loss_hard"], rel=1e-6)
  assert summary["test_accuracy"] > 0.2  # chance is 0.1: a few steps of training


@pytest.mark.parametrize("name,scope", [("pdp", "unstructured"), ("pdp_nm", "nm")])
def test_thresholds_in_the_state_are_those_of_the_params(tmp_path_factory, name, scope):
  """The schedule keeps t in its state, computed once per update from the new params: at the
  last checkpoint it is exactly pdp.thresholds of the params saved with it."""
  overrides = {"pdp_scope": scope} if scope == "unstructured" else {
      "sparsifier": "pdp", "pdp_scope": "nm", "nm": "2:4"}
  workdir, _ = run_once(tmp_path_factory, name, **overrides)
  state = final_state(workdir)
  opt_state = state["opt_state"]
  sparsities = pdp.ramp((66 - 22) // 22, opt_state["targets"], 0, 1.0)
  expected = pdp.thresholds(state["params"], sparsities, scope, 2, 4)
  got, want = by_path(opt_state["thresholds"]), by_path(expected)
  assert sorted(got) == sorted(want)
  for path in KERNELS:
    np.testing.assert_array_equal(got[path], want[path])
    assert np.all(np.isfinite(got[path])) and np.all(got[path] > 0), path


def test_pdp_channel_scope_prunes_whole_output_channels(tmp_path_factory):
  workdir, summary = run_once(tmp_path_factory, "pdp_channel", pdp_scope="channel",
                              prune_exclude="output")
  masks = read_masks(workdir)
  assert sorted(masks) == ["['dense1']['kernel']", "['dense2']['kernel']"]
  kept = 0
  for path, mask in masks.items():
    columns = mask.all(axis=0)
    assert np.array_equal(mask, np.broadcast_to(columns, mask.shape)), path
    kept += int(mask.sum())
  total = 64 * 300 + 300 * 100
  assert summary["density_hard"] == kept / total
  assert 0.05 < summary["density_hard"] < 0.2  # about the 10% of the weight-level targets


@pytest.mark.parametrize("sparsifier", ["pdp", "ste"])
def test_nm_scope_keeps_exactly_2_of_4(tmp_path_factory, sparsifier):
  workdir, summary = run_once(tmp_path_factory, f"{sparsifier}_nm", sparsifier=sparsifier,
                              pdp_scope="nm", nm="2:4")
  masks = read_masks(workdir)
  assert sorted(masks) == sorted(KERNELS)
  for path, (n_in, n_out) in KERNELS.items():
    blocks = masks[path].reshape(n_in // 4, 4, n_out)
    assert np.all(blocks.sum(axis=1) == 2), path
  assert summary["density_hard"] == summary["density"] == 0.5


def test_ste_exact_count_and_hard_is_the_trained_network(tmp_path_factory):
  workdir, summary = run_once(tmp_path_factory, "ste", sparsifier="ste")
  masks = read_masks(workdir)
  assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * TOTAL)
  assert summary["density_hard"] == summary["density"] == round(0.1 * TOTAL) / TOTAL
  # The straight-through forward pass already zeroes the pruned weights: same network.
  assert summary["test_accuracy_hard"] == summary["test_accuracy"]
  assert summary["test_accuracy"] > 0.5
  params = by_path(final_state(workdir)["params"])
  assert all(np.count_nonzero(params[p][~m]) > 0 for p, m in masks.items())  # dense params


def test_other_sparsifiers_report_no_hard_fields(tmp_path):
  summary = experiment.run(pdp_config(sparsifier="dense", steps="22it", eval_every="22it",
                                      log_every="22it", checkpoint_every="22it"), str(tmp_path))
  assert not HARD_KEYS & set(summary)


@pytest.mark.parametrize("key,value", [
    ("pdp_scope", "rows"), ("nm", "4:2"), ("nm", "2-4"), ("nm", "0:4"), ("pdp_tau", 0.0),
    ("pdp_tau", -1e-4), ("pdp_rate", 0.0), ("pdp_warmup", "ten"), ("final_sparsity", 1.0)])
def test_bad_values_name_their_key(key, value):
  with pytest.raises(ConfigError, match=key):
    config_lib.finalize(pdp_config(**{key: value}))


@pytest.mark.parametrize("overrides,key", [
    (dict(sparsifier="ste", pdp_scope="channel"), "pdp_scope"),
    (dict(pdp_scope="nm", nm="2:3"), "nm"),            # 3 divides no input axis of LeNet
    (dict(pdp_warmup="66it"), "pdp_warmup"),           # nothing left to prune
])
def test_selected_sparsifier_checks_name_their_key(tmp_path, overrides, key):
  with pytest.raises(ConfigError, match=key):
    experiment.run(pdp_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "config.json").exists()


def test_pdp_keys_do_not_disturb_other_sparsifiers():
  config_lib.finalize(pdp_config(sparsifier="magnitude", pdp_scope="channel"))


@pytest.mark.parametrize("name,model,scope", [("pdp_lenet300_fashion", "lenet300", "unstructured"),
                                              ("pdp_conv4_fashion", "conv4", "unstructured"),
                                              ("pdp_nm_conv4_fashion", "conv4", "nm")])
def test_pdp_configs(name, model, scope):
  config = config_lib.finalize(load_config(name))
  assert (config.sparsifier, config.protocol, config.model, config.dataset) == (
      "pdp", "train", model, "fashion_mnist")
  assert (config.pdp_scope, config.final_sparsity, config.pdp_tau) == (scope, 0.9, 1e-4)
  steps = config_lib.parse_duration(config.steps, 1000, "steps")
  assert config_lib.parse_duration(config.pdp_warmup, 1000, "pdp_warmup") < steps
  if scope == "nm":
    assert config.nm == "2:4"
    # Every prunable kernel of Conv-4 at 28x28x1 takes the 2:4 pattern (conv1 is excluded).
    m = models.build(model, num_classes=10, input_shape=(28, 28, 1))
    shapes = jax.eval_shape(m.init, jax.random.key(0))[0]
    prunable = masks_lib.rule(exclude=config.prune_exclude)
    jax.eval_shape(lambda p: pdp.nm_masks(p, 2, 4, prunable), shapes)
  else:
    # The ramp reaches the targets before the training ends (epochs of 1000 steps here).
    spe = {"lenet300": 469, "conv4": 1000}[model]
    warmup = config_lib.parse_duration(config.pdp_warmup, spe, "pdp_warmup") // spe
    total = config_lib.parse_duration(config.steps, spe, "steps") // spe
    assert config.pdp_rate * (total - 1 - warmup + 1) >= 1.0


def test_pdp_resumes_with_its_targets(tmp_path_factory, tmp_path):
  """A run stopped after the warm-up (targets in the checkpointed optimizer state) and resumed
  ends as the uninterrupted run."""
  _, uninterrupted = run_once(tmp_path_factory, "pdp", pdp_scope="unstructured")
  trainer.request_stop()  # the first chunk (33 steps: past the warm-up) checkpoints and stops
  with pytest.raises(trainer.Preempted):
    experiment.run(pdp_config(pdp_scope="unstructured"), str(tmp_path))
  resumed = experiment.run(pdp_config(pdp_scope="unstructured"), str(tmp_path))
  for key in ("density", "test_accuracy", "test_loss", "density_hard", "test_accuracy_hard"):
    assert resumed[key] == uninterrupted[key], key
