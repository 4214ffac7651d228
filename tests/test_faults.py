"""The runner under faults: an unreadable latest checkpoint, a full disk, and SIGTERM (how TPU
pods and SLURM preempt jobs). Each ends in a clear message and loses nothing: the same command
finishes with the result of an uninterrupted run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import config as config_lib
from experiments import experiment, main, trainer, workdir
from workdir_files import checkpoint_steps, read_json, read_metrics

REPO = Path(__file__).resolve().parents[1]


def digits_config(**overrides):
  c = config_lib.defaults()
  c.sparsifier, c.dataset, c.batch_size, c.optimizer = "magnitude", "digits", 64, "momentum"
  c.steps, c.pruning_end, c.pruning_frequency = "300it", "200it", "25it"
  c.eval_every = c.log_every = c.checkpoint_every = "100it"
  for key, value in overrides.items():
    c[key] = value
  return c


DIGITS_CONFIG_FILE = """
from experiments.config import defaults


def get_config():
  c = defaults()
  c.sparsifier, c.dataset, c.batch_size, c.optimizer = "magnitude", "digits", 64, "momentum"
  c.steps, c.pruning_end, c.pruning_frequency = "300it", "200it", "25it"
  c.eval_every = c.log_every = c.checkpoint_every = "100it"
  return c
"""


def without_timing(rows):
  return [{k: v for k, v in r.items() if k not in ("steps_per_second", "wall_seconds")}
          for r in rows]


def assert_same_run(a: Path, b: Path):
  summary_a, summary_b = read_json(a / "summary.json"), read_json(b / "summary.json")
  summary_a.pop("wall_seconds"), summary_b.pop("wall_seconds")
  assert summary_a == summary_b
  assert without_timing(read_metrics(a / "metrics.jsonl")) == without_timing(
      read_metrics(b / "metrics.jsonl"))


class Crash(Exception):
  """Stands for a run killed at a chosen point."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  directory = tmp_path_factory.mktemp("reference")
  experiment.run(digits_config(), str(directory))
  return directory


def stop_after(monkeypatch, step: int):
  """Makes every training raise :class:`Crash` once it has reached ``step``."""
  make = trainer.make_train_steps

  def crashing(*args, **kwargs):
    train_steps = make(*args, **kwargs)

    def steps(state, n):
      if int(state["step"]) >= step:
        raise Crash
      return train_steps(state, n)

    return steps

  monkeypatch.setattr(trainer, "make_train_steps", crashing)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete_metadata"])
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(
    reference, tmp_path, monkeypatch, caplog, damage):
  with monkeypatch.context() as patch:
    stop_after(patch, 200)
    with pytest.raises(Crash):
      experiment.run(digits_config(), str(tmp_path))
  assert checkpoint_steps(tmp_path / "checkpoints") == [100, 200]
  files = sorted(p for p in (tmp_path / "checkpoints" / "200").rglob("*") if p.is_file())
  assert files
  for path in files:
    if damage == "truncate":  # an interrupted copy
      path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "garbage":  # a bad disk
      path.write_bytes(os.urandom(max(16, path.stat().st_size)))
    elif path.name.startswith("_") or path.suffix == ".json":
      path.unlink()
  caplog.set_level("WARNING")
  experiment.run(digits_config(), str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records if " is unreadable (" in r.getMessage()]
  assert len(warnings) == 1 and "step 200" in warnings[0], warnings
  assert list((tmp_path / "checkpoints.unreadable").iterdir())  # kept aside, not deleted
  assert_same_run(reference, tmp_path)


def test_full_disk_is_one_line_and_the_same_command_resumes(reference, tmp_path, monkeypatch,
                                                           capsys):
  config_file = tmp_path / "config.py"
  config_file.write_text(DIGITS_CONFIG_FILE)
  run_dir = tmp_path / "run"
  argv = ["main", f"--config={config_file}", f"--workdir={run_dir}"]
  save = workdir.Checkpoints.save

  def full_after_first(self, step, state, record):
    if step > 100:
      raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "checkpoints"))
    return save(self, step, state, record)

  with monkeypatch.context() as patch:
    patch.setattr(workdir.Checkpoints, "save", full_after_first)
    with pytest.raises(SystemExit) as exit_info:
      main.run(argv)
  assert exit_info.value.code == 1
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and "no space left" in err[0] and str(run_dir) in err[0], err
  assert "Traceback" not in err[0]
  main.run(argv)  # space freed: the same command resumes
  assert_same_run(reference, run_dir)


def test_disk_full_is_found_behind_wrapping_errors():
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise ValueError("orbax could not write the checkpoint") from e
  except ValueError as wrapped:
    assert workdir.disk_full(wrapped)
  assert workdir.disk_full(RuntimeError("write failed: No space left on device"))
  assert not workdir.disk_full(OSError(errno.EACCES, "Permission denied"))


PREEMPT_OVERRIDES = ("--config.steps=3000it", "--config.eval_every=50it",
                     "--config.log_every=50it", "--config.checkpoint_every=1000it",
                     "--config.pruning_end=2000it")


def cli(workdir_path, *extra):
  return [sys.executable, "-m", "experiments.main", "--config=configs/digits_smoke.py",
          f"--workdir={workdir_path}", *PREEMPT_OVERRIDES, *extra]


def sigterm_past_step_300(workdir_path, signals=1) -> tuple[int, str]:
  """Runs :func:`cli` until its metrics reach step 300, sends SIGTERM ``signals`` times in a row;
  the exit status and stderr."""
  proc = subprocess.Popen(cli(workdir_path), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    metrics = workdir_path / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline:
      if metrics.exists() and any(r["step"] >= 300 for r in read_metrics(metrics)):
        break
      time.sleep(0.01)
    for _ in range(signals):
      proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, err


def stopped_step(err: str) -> int:
  (line,) = [l for l in err.splitlines() if l.startswith("preempted:")]
  assert "stopped by SIGTERM at step" in line and "run the same command to resume" in line
  return int(line.split("at step ")[1].split()[0])


def test_sigterm_checkpoints_exits_cleanly_and_resumes(tmp_path):
  clean, preempted = tmp_path / "clean", tmp_path / "preempted"
  reference = subprocess.run(cli(clean), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert reference.returncode == 0, reference.stderr[-3000:]
  returncode, err = sigterm_past_step_300(preempted)
  assert returncode == main.PREEMPTED_STATUS, err[-3000:]
  assert "Traceback" not in err
  stopped_at = stopped_step(err)
  assert 300 <= stopped_at < 3000
  assert checkpoint_steps(preempted / "checkpoints")[-1] == stopped_at  # saved on the way out
  assert not (preempted / "summary.json").exists()
  resumed = subprocess.run(cli(preempted), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from the checkpoint at step {stopped_at}" in resumed.stderr
  assert_same_run(clean, preempted)


# Signals sent to the process itself from a second thread while the main thread also calls
# request_stop: the handler then runs inside itself, as with several SIGTERMs in a row.
SIGTERM_STORM = """
import os, signal, threading
from experiments import trainer
signal.signal(signal.SIGTERM, trainer.request_stop)
for _ in range(3):
  sent = threading.Event()
  def send():
    for _ in range(20000):
      os.kill(os.getpid(), signal.SIGTERM)
    sent.set()
  threading.Thread(target=send).start()
  while not sent.is_set():
    trainer.request_stop()
print("stop requested:", trainer._Stop.requested)
"""


def test_request_stop_is_reentrant_under_a_storm_of_sigterms():
  # A handler that takes a lock (threading.Event.set) deadlocks here within a round or two.
  try:
    done = subprocess.run([sys.executable, "-c", SIGTERM_STORM], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  except subprocess.TimeoutExpired:
    pytest.fail("the SIGTERM handler deadlocked when it ran inside itself")
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == "stop requested: True"


def test_a_burst_of_sigterms_still_checkpoints_and_exits(tmp_path):
  # e.g. SLURM's signal, then the launcher's death signal, then a kill by hand
  returncode, err = sigterm_past_step_300(tmp_path, signals=200)
  assert returncode == main.PREEMPTED_STATUS, err[-3000:]
  stopped_at = stopped_step(err)
  assert checkpoint_steps(tmp_path / "checkpoints")[-1] == stopped_at


def test_a_metrics_row_cut_short_is_dropped_and_redone(reference, tmp_path, monkeypatch):
  with monkeypatch.context() as patch:
    stop_after(patch, 200)
    with pytest.raises(Crash):
      experiment.run(digits_config(), str(tmp_path))
  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text(metrics.read_text() + '{"step": 250, "train_lo')  # a write cut short
  experiment.run(digits_config(), str(tmp_path))
  assert_same_run(reference, tmp_path)


def test_an_unreadable_config_json_is_one_clear_error(tmp_path):
  experiment.run(digits_config(steps="100it"), str(tmp_path))
  (tmp_path / "config.json").write_text('{"protocol": "tr')
  with pytest.raises(config_lib.ConfigError, match="config.json is unreadable"):
    experiment.run(digits_config(steps="100it"), str(tmp_path))


def test_a_damaged_training_summary_of_a_lottery_run_is_redone(tmp_path):
  def imp_config():
    c = config_lib.defaults()
    c.protocol, c.dataset, c.batch_size, c.steps = "imp", "digits", 64, "80it"
    c.eval_every = c.log_every = c.checkpoint_every = "40it"
    c.levels, c.controls = 1, ("reinit",)
    return c

  first = experiment.run(imp_config(), str(tmp_path))
  for path in (tmp_path / "replicate_0" / "level_1" / "controls" / "reinit" / "summary.json",
               tmp_path / "replicate_0" / "level_1" / "level.json"):
    path.write_text(path.read_text()[:20])
  again = experiment.run(imp_config(), str(tmp_path))
  strip = lambda s: [{k: v for k, v in r.items() if "wall" not in k} for r in s["levels"]]
  assert strip(again) == strip(first)
