"""The lottery-ticket protocol with ``vectorize=True``: each level (and each control) of all the
replicates trained as one program equals the replicates trained one after another.

LeNet-300-100 on digits, 2 replicates, levels 0-2 of 80 iterations, rewinding to step 20 (not an
event step: the dense segment to k ends between two checkpoints), two controls and the
instability analysis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import experiment, trainer
from experiments.protocols import imp
from test_runner import digits_config
from workdir_files import checkpoint_steps, read_json, read_metrics, tensorboard_scalars

REPLICATES, LEVELS, REWIND = 2, 2, 20
CONTROLS = ("reinit", "shuffle_global")
TIMING = ("wall_seconds", "steps_per_second")


def imp_config(**overrides):
  c = digits_config(protocol="imp", model="lenet300", steps="80it", eval_every="40it",
                    log_every="40it", checkpoint_every="40it", levels=LEVELS,
                    replicates=REPLICATES, rewind=f"{REWIND}it", controls=CONTROLS,
                    instability=True, instability_alphas=3)
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sequential")
  return workdir, experiment.run(imp_config(), str(workdir))


@pytest.fixture(scope="module")
def vectorized(tmp_path_factory):
  """The vectorized run, with every training-step function the runner builds."""
  workdir = tmp_path_factory.mktemp("vectorized")
  built = []
  make_train_steps = trainer.make_train_steps

  def recording(task, sparsifier, axes=None):
    built.append((axes, make_train_steps(task, sparsifier, axes)))
    return built[-1][1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(trainer, "make_train_steps", recording)
    summary = experiment.run(imp_config(vectorize=True), str(workdir))
  return workdir, summary, built


def files_of(workdir: Path) -> set[str]:
  """The files a run leaves, but for checkpoints and TensorBoard event files (named by time)."""
  skipped = ("checkpoints", "rewind_state", "tensorboard", "vectorized")
  return {str(p.relative_to(workdir)) for p in workdir.rglob("*")
          if p.is_file() and not set(p.relative_to(workdir).parts) & set(skipped)}


def assert_close(a, b, where):
  """JSON values equal up to float rounding (timings left out)."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), where
    for key in a:
      if key not in TIMING:
        assert_close(a[key], b[key], f"{where}.{key}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_close(x, y, f"{where}[{i}]")
  elif isinstance(a, float) and not isinstance(b, bool):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=where)
  else:
    assert a == b, where


def assert_same_files(a: Path, b: Path, names) -> None:
  for name in sorted(names):
    if name == "config.json":
      continue
    if name.endswith(".npz"):
      with np.load(a / name) as x, np.load(b / name) as y:
        assert sorted(x.files) == sorted(y.files), name
        for key in x.files:
          if x[key].dtype == bool:  # masks
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name} {key}")
          else:
            np.testing.assert_allclose(y[key], x[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} {key}")
    elif name.endswith(".json"):
      assert_close(read_json(a / name), read_json(b / name), name)
    elif name.endswith(".jsonl"):
      assert_close(read_metrics(a / name), read_metrics(b / name), name)
    elif name.endswith(".png"):
      continue
    else:  # report.md, sparsity reports
      assert (a / name).read_text() == (b / name).read_text(), name


def test_vectorized_run_equals_sequential_run(sequential, vectorized):
  (seq, seq_summary), (vec, vec_summary, built) = sequential, vectorized
  names = files_of(seq)
  assert files_of(vec) == names
  assert len([n for n in names if n.endswith("summary.json")]) == 1 + REPLICATES * (
      LEVELS + 1 + LEVELS * len(CONTROLS) + 2 * (LEVELS + 1))
  assert_same_files(seq, vec, names)
  assert_close(seq_summary, vec_summary, "summary")
  assert json.loads(json.dumps(vec_summary)) == read_json(vec / "summary.json")
  for r in range(REPLICATES):
    for level in range(LEVELS + 1):
      main = f"replicate_{r}/level_{level}/main"
      scalars = [tensorboard_scalars(w / main / "tensorboard") for w in (seq, vec)]
      assert scalars[0].keys() == scalars[1].keys()
      for tag in set(scalars[0]) - set(TIMING):
        assert [s for s, _ in scalars[0][tag]] == [s for s, _ in scalars[1][tag]], (main, tag)
        np.testing.assert_allclose([v for _, v in scalars[1][tag]],
                                   [v for _, v in scalars[0][tag]], rtol=1e-5, atol=1e-7)
      # No checkpoint of its own: the stacked one holds it.
      assert not (vec / main / "checkpoints").exists()
      for training in ("main", "instability"):
        assert checkpoint_steps(vec / "vectorized" / f"level_{level}" / training /
                                "replicates_0_1" / "checkpoints")[-1] == 80
    for name in CONTROLS:
      assert checkpoint_steps(vec / "vectorized" / "level_1" / "controls" / name /
                              "replicates_0_1" / "checkpoints")[-1] == 80
  # One vectorized training step, compiled once for the N replicates of every level and control
  # and once for the 2N instability copies.
  stacked = [fn for axes, fn in built if axes is not None]
  assert len(stacked) == 1 and stacked[0]._cache_size() == 2


def test_rewinding_to_step_k(vectorized):
  """The dense segment to k trains stacked; each replicate keeps its own state at k."""
  vec = vectorized[0]
  for r in range(REPLICATES):
    rep = vec / f"replicate_{r}"
    assert checkpoint_steps(rep / "rewind_state") == [REWIND]
    saved = ocp.StandardCheckpointer().restore(str(rep / "rewind_state" / str(REWIND) / "state"))
    assert int(saved["step"]) == REWIND
    with np.load(rep / "rewind_params.npz") as theta_k:
      kernel = theta_k["['dense1']['kernel']"]
      np.testing.assert_array_equal(kernel, saved["params"]["dense1"]["kernel"])
      for level in range(1, LEVELS + 1):
        with np.load(rep / f"level_{level}" / "start_params.npz") as start, \
             np.load(rep / f"level_{level}" / "masks.npz") as masks:
          np.testing.assert_array_equal(start["['dense1']['kernel']"],
                                        kernel * masks["['dense1']['kernel']"])
    # The metrics of the dense run hold the event at k, as the sequential run's do.
    assert [row["step"] for row in read_metrics(rep / "level_0" / "main" / "metrics.jsonl")] == [
        0, REWIND, 40, 80]
  a, b = (np.load(vec / f"replicate_{r}" / "rewind_params.npz")["['dense1']['kernel']"]
          for r in range(REPLICATES))
  assert not np.array_equal(a, b)


def test_interrupted_and_extended_run_resumes(vectorized, tmp_path):
  """Levels 0-1, then extended to level 2 and preempted inside it (SIGTERM's checkpoint), then
  resumed: as the uninterrupted run."""
  reference, reference_summary, _ = vectorized
  workdir = tmp_path / "run"
  experiment.run(imp_config(vectorize=True, levels=1), str(workdir))
  finished = workdir / "replicate_1" / "level_1" / "level.json"
  stamp = finished.stat().st_mtime_ns

  train = imp.Stacked.train

  def preempted(self, states, dirs, directory, label, **kwargs):
    if "level_2" in directory and "main" in directory:
      trainer.request_stop()  # stops after the first chunk of steps, with a checkpoint
    return train(self, states, dirs, directory, label, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(imp.Stacked, "train", preempted)
    with pytest.raises(trainer.Preempted):
      experiment.run(imp_config(vectorize=True), str(workdir))
  stacked = workdir / "vectorized" / "level_2" / "main" / "replicates_0_1" / "checkpoints"
  assert checkpoint_steps(stacked) == [40]
  assert not (workdir / "replicate_0" / "level_2" / "level.json").exists()

  summary = experiment.run(imp_config(vectorize=True), str(workdir))
  assert finished.stat().st_mtime_ns == stamp  # finished levels are loaded, not trained again
  assert checkpoint_steps(stacked) == [40, 80]
  assert_close(reference_summary, summary, "summary")
  names = files_of(reference)
  assert files_of(workdir) == names
  assert_same_files(reference, workdir, names)
