"""End-to-end tests of the experiment runner (``experiments/``): real training runs on
scikit-learn's digits (and a small Fashion-MNIST subset), the files a run leaves, bitwise resume
after SIGKILL, reruns after a crash, command-line overrides, and one-line user errors from the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import config as config_lib
from experiments import experiment
from experiments import workdir as workdir_lib
from workdir_files import checkpoint_steps, read_json, read_metrics, tensorboard_scalars

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = "configs/digits_smoke.py"

# LeNet-300-100 on 8x8 digits: the three prunable kernels as (path, n_in, n_out).
LENET_DIGITS_KERNELS = (("['dense1']['kernel']", 64, 300), ("['dense2']['kernel']", 300, 100),
                        ("['output']['kernel']", 100, 10))
SUMMARY_KEYS = {"method", "density", "test_accuracy", "best_test_accuracy", "early_stop_step",
                "steps", "wall_seconds"}


def digits_config(**overrides):
  """300 iterations of LeNet-300-100 on digits, momentum SGD at lr 0.1, events every 100 steps."""
  c = config_lib.defaults()
  c.dataset = "digits"
  c.batch_size = 64
  c.steps = "300it"
  c.eval_every = "100it"
  c.log_every = "100it"
  c.checkpoint_every = "100it"
  c.optimizer = "momentum"
  c.learning_rate = 0.1
  c.pruning_end = "200it"
  c.pruning_frequency = "25it"
  for key, value in overrides.items():
    c[key] = value
  return c


def read_masks(workdir):
  """The prunable leaves' masks of a ``masks.npz`` (every leaf, keyed by param path)."""
  with np.load(Path(workdir) / "masks.npz") as npz:
    return {k: npz[k] for k in npz.files if npz[k].ndim > 0}


def assert_tensorboard_matches(directory, rows, tags):
  """TensorBoard shows each of ``tags`` at the steps and values (float32) of the metric rows."""
  scalars = tensorboard_scalars(directory)
  for tag in tags:
    expected = [r for r in rows if tag in r]
    assert [step for step, _ in scalars[tag]] == [r["step"] for r in expected], tag
    assert [value for _, value in scalars[tag]] == pytest.approx(
        [r[tag] for r in expected], rel=1e-6), tag


def restore_params(workdir, step):
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(Path(workdir) / "checkpoints" / str(step) / "state"))
  return state


def cli(workdir, *overrides, config=SMOKE_CONFIG, timeout=300):
  return subprocess.run(
      [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
       *overrides], cwd=REPO, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# Every method trains on digits and reaches its exact target density.

_RUNS = {}


def run_once(tmp_path_factory, name, **overrides):
  """Runs ``digits_config(**overrides)`` once per test session; returns (workdir, summary)."""
  if name not in _RUNS:
    workdir = tmp_path_factory.mktemp(name)
    summary = experiment.run(digits_config(**overrides), str(workdir))
    _RUNS[name] = (workdir, summary)
  return _RUNS[name]


def uniform_counts(sparsity):
  return {path: round((1 - sparsity) * n_in * n_out) for path, n_in, n_out in LENET_DIGITS_KERNELS}


def erdos_renyi_counts(sparsity):
  """ER (= ERK for dense kernels): kept_l = eps (n_in + n_out), sum_l kept_l = (1 - s) N."""
  total = sum(n_in * n_out for _, n_in, n_out in LENET_DIGITS_KERNELS)
  eps = (1 - sparsity) * total / sum(n_in + n_out for _, n_in, n_out in LENET_DIGITS_KERNELS)
  # No layer is capped at density 1 (else it would be made dense and eps solved again).
  assert all(eps * (n_in + n_out) < n_in * n_out for _, n_in, n_out in LENET_DIGITS_KERNELS)
  return {path: round(eps * (n_in + n_out)) for path, n_in, n_out in LENET_DIGITS_KERNELS}


METHOD_CASES = {
    "dense": (dict(method="dense"), lambda s: uniform_counts(0.0)),
    "magnitude": (dict(method="magnitude"), uniform_counts),
    "random_uniform": (dict(method="random", distribution="uniform"), uniform_counts),
    "random_er": (dict(method="random", distribution="er"), erdos_renyi_counts),
    "random_erk": (dict(method="random", distribution="erk"), erdos_renyi_counts),
    "snip": (dict(method="snip", distribution="uniform"), uniform_counts),
    "snip_global": (dict(method="snip", distribution="global"), None),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_method_trains_to_exact_density(tmp_path_factory, case):
  overrides, expected_counts = METHOD_CASES[case]
  workdir, summary = run_once(tmp_path_factory, case, **overrides)
  sparsity = digits_config(**overrides).final_sparsity
  total = sum(n_in * n_out for _, n_in, n_out in LENET_DIGITS_KERNELS)

  masks = read_masks(workdir)
  assert sorted(masks) == sorted(path for path, _, _ in LENET_DIGITS_KERNELS)
  for path, n_in, n_out in LENET_DIGITS_KERNELS:
    assert masks[path].shape == (n_in, n_out) and masks[path].dtype == bool
  kept = {path: int(m.sum()) for path, m in masks.items()}

  if expected_counts is None:  # global: one budget over all layers
    assert sum(kept.values()) == round((1 - sparsity) * total)
  else:
    assert kept == expected_counts(sparsity)
  assert summary["density"] == sum(kept.values()) / total
  if overrides["method"] == "dense":
    assert summary["density"] == 1.0
  else:
    assert summary["density"] == pytest.approx(1 - sparsity, abs=1e-4)

  report = read_json(workdir / "sparsity_report.json")
  assert {r["path"]: (r["kept"], r["total"]) for r in report} == {
      path: (kept[path], n_in * n_out) for path, n_in, n_out in LENET_DIGITS_KERNELS}

  # The final params (the last checkpoint) are exactly zero wherever the saved mask is False.
  assert checkpoint_steps(Path(workdir) / "checkpoints")[-1] == 300
  state = restore_params(workdir, 300)
  assert int(state["step"]) == 300
  params = {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state["params"])}
  for path, mask in masks.items():
    assert np.all(params[path][~mask] == 0.0), path
    assert np.count_nonzero(params[path][mask]) >= 0.99 * mask.sum(), path

  assert summary["method"] == overrides["method"]
  assert summary["steps"] == 300
  assert summary["test_accuracy"] >= 0.9, summary  # chance is 0.1; these runs reach 0.96-0.98
  assert summary["best_test_accuracy"] >= summary["test_accuracy"]


def test_outputs(tmp_path_factory):
  workdir, summary = run_once(tmp_path_factory, "magnitude", method="magnitude")
  names = {p.name for p in workdir.iterdir()}
  assert {"config.json", "summary.json", "metrics.jsonl", "tensorboard", "masks.npz",
          "sparsity_report.txt", "sparsity_report.json", "checkpoints"} <= names
  assert not [n for n in names if n.endswith(".tmp") or ".tmp." in n]

  saved_config = read_json(workdir / "config.json")
  resolved = config_lib.finalize(digits_config(method="magnitude"))
  assert saved_config == json.loads(resolved.to_json())
  assert (saved_config["protocol"], saved_config["sparsifier"]) == ("train", "magnitude")

  on_disk = read_json(workdir / "summary.json")
  assert isinstance(on_disk, dict) and SUMMARY_KEYS <= set(on_disk)
  assert all(v is None or isinstance(v, (str, int, float)) for v in on_disk.values())
  assert on_disk == summary
  assert on_disk["wall_seconds"] > 0

  rows = read_metrics(Path(workdir) / "metrics.jsonl")
  steps = [r["step"] for r in rows]
  assert steps == [0, 100, 200, 300]
  # The LTH papers' early-stopping iteration: the evaluation with the lowest test loss.
  assert on_disk["early_stop_step"] == min((r["test_loss"], r["step"]) for r in rows)[1]
  assert all("test_accuracy" in r and "test_loss" in r for r in rows)
  for r in rows[1:]:
    assert {"train_loss", "train_accuracy", "density", "steps_per_second"} <= set(r)
    assert np.isfinite(r["train_loss"])
  densities = [r["density"] for r in rows[1:]]
  assert densities == sorted(densities, reverse=True)  # gradual pruning only removes weights
  assert rows[-1]["density"] == summary["density"]
  assert rows[-1]["test_accuracy"] == summary["test_accuracy"]
  assert max(r["test_accuracy"] for r in rows) == summary["best_test_accuracy"]

  assert_tensorboard_matches(workdir / "tensorboard", rows,
                             ("test_accuracy", "test_loss", "train_loss", "density"))

  report = (workdir / "sparsity_report.txt").read_text()
  for path, _, _ in LENET_DIGITS_KERNELS:
    assert path in report
  assert "total" in report and "5,020" in report and "50,200" in report


# LeNet-300-100 on 28x28 Fashion-MNIST: (path, n_in, n_out) of its prunable kernels.
LENET_FASHION_KERNELS = (("['dense1']['kernel']", 784, 300), ("['dense2']['kernel']", 300, 100),
                         ("['output']['kernel']", 100, 10))


@pytest.mark.parametrize("method", ["dense", "magnitude", "random", "snip"])
def test_fashion_mnist_subset(tmp_path, method):
  config = digits_config(method=method, dataset="fashion_mnist", train_subset=1000,
                         test_subset=500, steps="150it", pruning_end="100it")
  summary = experiment.run(config, str(tmp_path))
  density = 1.0 if method == "dense" else 0.1
  report = {r["path"]: (r["kept"], r["total"])
            for r in read_json(tmp_path / "sparsity_report.json")}
  assert report == {path: (round(density * n_in * n_out), n_in * n_out)
                    for path, n_in, n_out in LENET_FASHION_KERNELS}
  assert summary["density"] == pytest.approx(density, abs=1e-4)
  assert summary["steps"] == 150
  assert summary["test_accuracy"] >= 0.7, summary  # chance is 0.1; these reach 0.76-0.81


def test_progress_line(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  experiment.run(digits_config(steps="100it", eval_every="50it", log_every="50it"), str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if " | ETA " in r.getMessage()]
  assert len(lines) == 2, lines
  for line, step in zip(lines, (50, 100)):
    assert re.fullmatch(rf"step {step}/100 \({step}%\) \| loss \d+\.\d{{4}} acc \d\.\d{{4}} \| "
                        r"test acc \d\.\d{4} \| density \d\.\d{4} \| \d+ it/s \| "
                        r"ETA \d+:\d\d:\d\d", line), line
  assert lines[-1].endswith("ETA 0:00:00")


class Crash(Exception):
  """Stands for a run killed at a chosen point."""


def test_rerun_after_a_crash_before_the_first_checkpoint(tmp_path, monkeypatch):
  def crash(*args, **kwargs):
    raise Crash

  config = lambda: digits_config(method="magnitude", checkpoint_every="200it")
  with monkeypatch.context() as patch:
    patch.setattr(workdir_lib.Checkpoints, "save", crash)  # dies saving its first checkpoint
    with pytest.raises(Crash):
      experiment.run(config(), str(tmp_path))
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 100, 200]
  assert not checkpoint_steps(tmp_path / "checkpoints")

  summary = experiment.run(config(), str(tmp_path))
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [0, 100, 200, 300]  # each step once
  assert rows[-1]["test_accuracy"] == summary["test_accuracy"]
  assert_tensorboard_matches(tmp_path / "tensorboard", rows, ("test_accuracy", "train_loss"))


def test_resume_with_another_checkpoint_interval(tmp_path, monkeypatch):
  """checkpoint_every may change when a run resumes (it never changes what is trained): a run
  killed while saving its second checkpoint resumes with checkpoints every 40 steps and ends as
  the uninterrupted run; any other key still makes a different config."""
  saves = []
  save = workdir_lib.Checkpoints.save

  def crash_on_the_second(self, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2:
      raise Crash
    return save(self, *args, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(workdir_lib.Checkpoints, "save", crash_on_the_second)
    with pytest.raises(Crash):
      experiment.run(digits_config(), str(tmp_path / "run"))
  assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [100]
  resumed = experiment.run(digits_config(checkpoint_every="40it"), str(tmp_path / "run"))
  assert read_json(tmp_path / "run" / "config.json")["checkpoint_every"] == "40it"
  assert 280 in checkpoint_steps(tmp_path / "run" / "checkpoints")
  uninterrupted = experiment.run(digits_config(), str(tmp_path / "uninterrupted"))
  for key in ("test_accuracy", "test_loss", "density"):
    assert resumed[key] == uninterrupted[key], key
  with pytest.raises(config_lib.ConfigError, match="eval_every: '100it' -> '50it'"):
    experiment.run(digits_config(checkpoint_every="40it", eval_every="50it"),
                   str(tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# The command line: resume after SIGKILL, overrides, errors.

RESUME_OVERRIDES = ("--config.steps=1000it", "--config.checkpoint_every=100it",
                    "--config.eval_every=50it", "--config.log_every=50it")


@pytest.fixture(scope="module")
def completed_cli_run(tmp_path_factory):
  """A run of digits_smoke (1000 steps) to completion through the CLI."""
  workdir = tmp_path_factory.mktemp("cli_a") / "run"
  result = cli(workdir, *RESUME_OVERRIDES)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_resume_after_sigkill_is_bitwise_identical(completed_cli_run, tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "experiments.main", f"--config={SMOKE_CONFIG}",
             f"--workdir={workdir}", *RESUME_OVERRIDES]
  with open(tmp_path / "killed.log", "w") as log:
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 240
      checkpoints = Path(workdir) / "checkpoints"
      while not checkpoint_steps(checkpoints) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
      os.kill(proc.pid, signal.SIGKILL)
    finally:
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
  interrupted_at = checkpoint_steps(Path(workdir) / "checkpoints")
  assert interrupted_at and interrupted_at[-1] < 1000
  assert not (workdir / "summary.json").exists()

  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from the checkpoint at step" in result.stderr

  a = read_json(completed_cli_run / "summary.json")
  b = read_json(workdir / "summary.json")
  assert a.pop("wall_seconds") > 0 and b.pop("wall_seconds") > 0
  assert a == b  # floats parsed from the same shortest repr: bitwise equal
  assert a["steps"] == 1000

  masks_a, masks_b = read_masks(completed_cli_run), read_masks(workdir)
  assert masks_a.keys() == masks_b.keys()
  for key in masks_a:
    np.testing.assert_array_equal(masks_a[key], masks_b[key])

  rows_a = read_metrics(Path(completed_cli_run) / "metrics.jsonl")
  rows_b = read_metrics(Path(workdir) / "metrics.jsonl")
  steps_b = [r["step"] for r in rows_b]
  assert len(steps_b) == len(set(steps_b)), steps_b
  assert steps_b == [r["step"] for r in rows_a] == list(range(0, 1001, 50))
  for ra, rb in zip(rows_a, rows_b):
    ra.pop("steps_per_second", None)
    rb.pop("steps_per_second", None)
    assert ra == rb
  # The resumed writer hides the killed one's events after the checkpoint: no step twice.
  for tag, points in tensorboard_scalars(workdir / "tensorboard").items():
    steps = [s for s, _ in points]
    assert steps == sorted(set(steps)), (tag, steps)


def test_command_line_overrides(tmp_path):
  workdir = tmp_path / "run"
  result = cli(workdir, "--config.seed=3", "--config.final_sparsity=0.5")
  assert result.returncode == 0, result.stderr[-3000:]
  saved_config = read_json(workdir / "config.json")
  summary = read_json(workdir / "summary.json")
  assert saved_config["seed"] == 3 and summary["seed"] == 3
  assert saved_config["final_sparsity"] == 0.5
  assert summary["density"] == pytest.approx(0.5, abs=1e-4)
  # Keys not overridden keep the config file's values.
  assert saved_config["sparsifier"] == summary["sparsifier"] == summary["method"] == "magnitude"
  assert saved_config["dataset"] == "digits"
  assert summary["steps"] == 200
  assert "test accuracy" in result.stdout


def problem_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith(("error:", "FATAL"))]


def assert_one_line_error(result, *words):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = problem_lines(result.stderr)
  assert len(lines) == 1, result.stderr[-3000:]
  for word in words:
    assert word in lines[0], lines[0]


ERROR_CASES = {
    "unknown_key": (("--config.bogus=1",), ("bogus",)),
    "wrong_type": (("--config.batch_size=abc",), ("batch_size", "abc")),
    "bad_value": (("--config.final_sparsity=1.5",), ("final_sparsity",)),
    "unknown_method": (("--config.method=bogus",), ("method", "bogus")),
    "unknown_sparsifier": (("--config.sparsifier=bogus",), ("sparsifier", "bogus", "magnitude")),
    "unknown_protocol": (("--config.protocol=bogus",), ("protocol", "bogus", "imp")),
    "unknown_model": (("--config.model=bogus",), ("model", "bogus")),
    "unknown_dataset": (("--config.dataset=bogus",), ("dataset", "bogus")),
    "missing_idx_dir": (("--config.dataset=idx:/nonexistent",), ("/nonexistent",)),
    "missing_fashion_mnist": (("--config.dataset=fashion_mnist", "--config.data_dir=/nonexistent"),
                              ("Fashion-MNIST", "/nonexistent")),
    "bad_exclude_regex": (("--config.prune_exclude=(",), ("prune_exclude", "regular expression")),
    "bad_override_regex": (("--config.prune_fraction_overrides=(=0.1",),
                           ("prune_fraction_overrides", "regular expression")),
    "exclude_every_layer": (("--config.prune_exclude=kernel",),
                            ("prune_exclude", "every prunable layer", "['dense1']['kernel']")),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_config_and_data_errors(tmp_path, case):
  overrides, words = ERROR_CASES[case]
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("kept")
  result = cli(workdir, *overrides)
  assert_one_line_error(result, *words)
  assert (workdir / "notes.txt").read_text() == "kept"
  # A rejected config does not claim the workdir (nothing is written): the corrected config can
  # still use it.
  assert [p.name for p in workdir.iterdir()] == ["notes.txt"]


def test_corrected_prune_exclude_runs_in_the_same_workdir(tmp_path):
  workdir = tmp_path / "run"
  assert_one_line_error(cli(workdir, "--config.prune_exclude=kernel"), "prune_exclude")
  result = cli(workdir, "--config.prune_exclude=output")
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_json(workdir / "config.json")["prune_exclude"] == "output"
  assert sorted(read_masks(workdir)) == ["['dense1']['kernel']", "['dense2']['kernel']"]


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = cli(blocker / "sub")
  assert_one_line_error(result, "workdir", str(blocker / "sub"))
  assert blocker.read_text() == "not a directory"


def test_diverging_loss_then_a_lower_learning_rate(tmp_path):
  workdir = tmp_path / "run"
  result = cli(workdir, "--config.learning_rate=1e6")
  assert_one_line_error(result, "nan", "learning_rate")
  assert not (workdir / "summary.json").exists()
  assert not checkpoint_steps(workdir / "checkpoints")  # diverged before the first checkpoint
  # Nothing to resume: the same workdir takes the corrected config and starts afresh.
  result = cli(workdir, "--config.learning_rate=0.1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_json(workdir / "config.json")["learning_rate"] == 0.1
  assert read_json(workdir / "summary.json")["test_accuracy"] >= 0.9
  assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl")] == [0, 50, 100, 150, 200]


def test_workdir_with_a_different_config(completed_cli_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(completed_cli_run, workdir)
  before = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  result = cli(workdir, *RESUME_OVERRIDES, "--config.seed=5")
  assert_one_line_error(result, "seed", "different config")
  after = {p.relative_to(workdir): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before  # nothing written, nothing removed


def test_run_recorded_before_a_key_existed_resumes(tmp_path):
  """A config.json without a key added since (at its default) still resumes, the replicates'
  too; a key it lacks that is set to another value is a different config."""
  config = lambda **o: digits_config(steps="100it", replicates=2, **o)
  first = experiment.run(config(), str(tmp_path))
  for path in (tmp_path / "config.json", tmp_path / "replicate_1" / "config.json"):
    recorded = read_json(path)
    del recorded["grasp_temperature"], recorded["mesh"]
    path.write_text(json.dumps(recorded))
  again = experiment.run(config(), str(tmp_path))
  assert again["test_accuracy"] == first["test_accuracy"]
  assert "grasp_temperature" in read_json(tmp_path / "replicate_1" / "config.json")
  for path in (tmp_path / "config.json", tmp_path / "replicate_0" / "config.json"):
    recorded = read_json(path)
    del recorded["mesh"]
    path.write_text(json.dumps(recorded))
  with pytest.raises(config_lib.ConfigError, match="mesh: None -> 'data'"):
    experiment.run(config(mesh="data"), str(tmp_path))
