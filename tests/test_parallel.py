"""Data and model parallelism (experiments.parallel) and multi-host runs.

Runs on several devices need the device count fixed before JAX starts, so they run in
subprocesses: 8 simulated CPU devices (``--xla_force_host_platform_device_count=8``), and two
processes with one CPU device each joined by ``jax.distributed`` on 127.0.0.1 (gloo
collectives), each with a timeout so that a stalled rank cannot hang the suite.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import parallel
from experiments.config import ConfigError
from test_runner import digits_config

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 300


def env(**extra):
  out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
  return {**out, **extra}


@pytest.mark.parametrize("spec, sizes", [
    ("data", {"data": -1}),
    ("data:4,model:2", {"data": 4, "model": 2}),
    ("model:2", {"data": 1, "model": 2}),
    ("data:-1, model:4", {"data": -1, "model": 4}),
])
def test_parse_mesh(spec, sizes):
  assert parallel.parse_mesh(spec) == sizes


@pytest.mark.parametrize("spec, match", [
    ("batch", "'batch' is not an axis"),
    ("data:0", "must be positive or -1"),
    ("data,data:2", "twice"),
    ("data,model", "at most one axis"),
    ("data:x", "is not an axis"),
])
def test_bad_mesh_is_refused_by_name(spec, match):
  with pytest.raises(ConfigError, match=match):
    parallel.parse_mesh(spec)
  with pytest.raises(ConfigError, match="mesh="):
    config_lib.finalize(digits_config(mesh=spec))


def test_mesh_sizes_must_match_the_devices():
  assert parallel.resolve_sizes({"data": -1, "model": 2}, 8) == {"data": 4, "model": 2}
  with pytest.raises(ConfigError, match="needs 16 devices; this run has 8"):
    parallel.resolve_sizes({"data": 8, "model": 2}, 8)
  with pytest.raises(ConfigError, match="8 devices do not divide by 3"):
    parallel.resolve_sizes({"data": -1, "model": 3}, 8)


def test_coordinates_without_distributed_are_refused():
  with pytest.raises(ConfigError, match="set distributed=True"):
    config_lib.finalize(digits_config(num_processes=2))


def test_one_device_mesh_trains_like_no_mesh(tmp_path):
  from experiments import experiment
  plain = experiment.run(digits_config(sparsifier="magnitude", steps="100it",
                                       pruning_end="75it"), str(tmp_path / "plain"))
  meshed = experiment.run(digits_config(sparsifier="magnitude", steps="100it",
                                        pruning_end="75it", mesh="data"), str(tmp_path / "mesh"))
  assert meshed["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-5)
  assert meshed["density"] == plain["density"]


EIGHT_DEVICES = textwrap.dedent("""
    import tempfile
    import jax, numpy as np, pytest
    from jax.sharding import PartitionSpec as P
    from experiments import config as config_lib, setup as setup_lib, trainer
    from experiments.parsing import ConfigError
    from test_runner import digits_config
    assert jax.device_count() == 8

    def run(mesh, **overrides):
      short = dict(steps="100it", pruning_end="60it", pruning_frequency="20it",
                   eval_every="50it", log_every="50it", checkpoint_every="100it")
      config = config_lib.finalize(digits_config(mesh=mesh, **{**short, **overrides}))
      setup = setup_lib.build(config, tempfile.mkdtemp())
      key = setup.key()
      params, model_state = setup.init(key)
      sparsifier = setup.sparsifier(params, model_state, key)
      state = trainer.init_state(params, model_state, sparsifier.tx, key)
      state, _ = trainer.train(setup.task, sparsifier,
                               trainer.make_train_steps(setup.task, sparsifier),
                               trainer.make_evaluate(setup.task), state, setup.workdir)
      return state, trainer.masks_of(sparsifier, state)

    def same(one, other):
      for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(other[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # masks: exactly
      for a, b in zip(jax.tree.leaves(one[0]["params"]), jax.tree.leaves(other[0]["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

    magnitude = dict(sparsifier="magnitude", final_sparsity=0.9)
    single = run("", **magnitude)
    data = run("data", **magnitude)
    same(single, data)
    assert data[0]["params"]["dense1"]["kernel"].sharding.is_fully_replicated
    model = run("data:4,model:2", **magnitude)
    same(single, model)
    # The model axis shards the 300 and 100 output units; masks and momenta follow.
    assert model[0]["params"]["dense1"]["kernel"].sharding.spec == P(None, "model")
    for leaf in jax.tree.leaves(model[0]["opt_state"]):
      if getattr(leaf, "shape", None) == (64, 300):
        assert leaf.sharding.spec == P(None, "model"), leaf.sharding
    # PDP's soft mask (tau 1e-4) is steep enough to turn the float differences of another
    # summation order into a few different hard-mask entries: on the mesh it keeps the same
    # counts, exactly, and mostly the same weights (here 85-90% of the kept ones; chance would
    # be the density).
    pdp = dict(sparsifier="pdp", final_sparsity=0.9, pdp_warmup="30it", pdp_rate=1.0)
    (_, m1), (_, m8) = run("", **pdp), run("data:4,model:2", **pdp)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m8)):
      a, b = np.asarray(a), np.asarray(b)
      assert a.sum() == b.sum()
      assert (a & b).sum() > 0.75 * a.sum()
    # Convolutions (one jitted step per call on CPU) over the sharded batch.
    conv = dict(model="conv2", sparsifier="dense", steps="20it", eval_every="20it",
                log_every="20it", checkpoint_every="20it")
    same(run("", **conv), run("data", **conv))
    # Every protocol runs on the mesh: lottery tickets with a control (levels read back from
    # files beside params trained on the mesh) and SNIP (its batch at init).
    from experiments import experiment
    imp = experiment.run(digits_config(protocol="imp", levels=1, steps="40it", rewind="10it",
                                       controls=("reinit",), eval_every="40it", log_every="40it",
                                       checkpoint_every="40it", mesh="data"), tempfile.mkdtemp())
    assert imp["levels"][1]["density"] == pytest.approx(0.8, abs=1e-3), imp["levels"]
    assert set(imp["levels"][1]["controls"]) == {"reinit"}, imp["levels"][1]
    snip = experiment.run(digits_config(sparsifier="snip", steps="20it", eval_every="20it",
                                        log_every="20it", checkpoint_every="20it", mesh="data"),
                          tempfile.mkdtemp())
    assert abs(snip["density"] - 0.1) < 1e-3
    try:
      run("data", batch_size=60)
    except ConfigError as e:
      assert "use a multiple of 8" in str(e), e
    else:
      raise AssertionError("batch_size=60 over 8 devices was accepted")
    print("ok")
""")


def test_eight_devices_equal_one_device():
  result = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], capture_output=True, text=True,
                          env=env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                          timeout=TIMEOUT, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-4000:]
  assert result.stdout.strip().endswith("ok")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
  command = [sys.executable, "-m", "experiments.main", "--config=configs/digits_smoke.py"]
  port = free_port()
  ranks = [subprocess.Popen(
      command + [f"--workdir={tmp_path / 'two'}", "--config.mesh=data",
                 "--config.distributed=True", f"--config.coordinator_address=127.0.0.1:{port}",
                 "--config.num_processes=2", f"--config.process_id={i}"],
      env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    single = subprocess.run(command + [f"--workdir={tmp_path / 'one'}"], env=env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    logs = [rank.communicate(timeout=TIMEOUT)[0] for rank in ranks]
  finally:
    for rank in ranks:
      rank.kill()
  assert single.returncode == 0, single.stderr[-3000:]
  for rank, log in zip(ranks, logs):
    assert rank.returncode == 0, log[-3000:]
    assert "parallelism: 2 devices (cpu) in 2 process(es), mesh data=2" in log
  one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
  assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
  assert two["test_accuracy"] == one["test_accuracy"]
  with np.load(tmp_path / "one" / "masks.npz") as a, np.load(tmp_path / "two" / "masks.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
      np.testing.assert_array_equal(a[name], b[name])
  # Process 0 alone wrote the metrics: one row per event, not two.
  rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
  assert [r["step"] for r in rows] == [r["step"] for r in map(
      json.loads, (tmp_path / "one" / "metrics.jsonl").open())]
  # Both processes wrote their part of every orbax checkpoint, which a rerun resumes from.
  assert (tmp_path / "two" / "checkpoints" / "200").is_dir()
