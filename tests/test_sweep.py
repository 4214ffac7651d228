"""Sweeps defined in config files (``experiments/sweep_lib.py``, ``experiments/sweep.py``): the
product/zip helpers, point names, override errors, status, the table and plot; then a 4-point
digits sweep through the local launcher and through a local Ray cluster, each killed with
SIGKILL in the middle and restarted, finishes every point exactly once; the index launcher runs
point i only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from hypothesis import given
from hypothesis import strategies as st
from absl import flags
from ml_collections import config_flags

from configs import lenet300_dense, lenet300_magnitude, lenet300_random_erk, pdp_lenet300_fashion
from experiments import sweep_lib
from experiments.parsing import ConfigError
from workdir_files import checkpoint_steps, read_json, read_metrics

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = str(REPO / "configs" / "digits_smoke.py")
TABLE_CONFIG = str(REPO / "configs" / "table_lenet300_fashion.py")
STEPS = 200
# digits_smoke's sweep at 200 iterations, an evaluation every 100 and a checkpoint every 20: a point
# takes some seconds, mostly compiling; after its first checkpoint, 9 more checkpoints leave a
# few seconds in which a kill stops it in the middle, with a checkpoint to resume from.
SHORT_CONFIG = f'''"""digits_smoke, {STEPS} iterations, and its 4-point sweep."""
from configs import digits_smoke


def get_config():
  config = digits_smoke.get_config()
  config.steps = "{STEPS}it"
  config.eval_every = config.log_every = "100it"
  config.checkpoint_every = "20it"
  config.pruning_end = "120it"
  config.pruning_frequency = "20it"
  return config


sweep_smoke = digits_smoke.sweep_smoke
'''
BAD_SWEEPS = '''"""Sweeps with mistakes."""
from configs.digits_smoke import get_config


def sweep_typo():
  return [{"seed": 0}, {"final_sparsty": 0.5}]


def sweep_type():
  return [{"seed": "one"}]


def sweep_bool():
  return [{"seed": True}]


def sweep_value():
  yield {"final_sparsity": 1.5}


def sweep_not_a_dict():
  return [("seed", 0)]


def sweep_empty():
  return []


def sweep_a():
  return [{"seed": 0}, {"seed": 1}, {"final_sparsity": 0}]


def sweep_b():
  return [{"seed": 1}, {"final_sparsity": 0.0}, {"seed": 2}]
'''
# Completed experiments.main runs print this last (experiments/protocols/train.py).
COMPLETED = re.compile(r"^test accuracy .* results in ", re.M)


@pytest.fixture(scope="module")
def config_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("configs")
  (directory / "short.py").write_text(SHORT_CONFIG)
  (directory / "bad.py").write_text(BAD_SWEEPS)
  return {"short": str(directory / "short.py"), "bad": str(directory / "bad.py")}


# ---------------------------------------------------------------------------------------------
# Defining points.


def test_product_and_zip():
  assert sweep_lib.product(a=[1, 2], b=["x", "y"]) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  methods = [{"sparsifier": "dense"}, {"sparsifier": "random", "distribution": "erk"}]
  points = sweep_lib.product(methods, seed=(0, 1))
  assert points[1] == {"sparsifier": "dense", "seed": 1}
  assert points[2] == {"sparsifier": "random", "distribution": "erk", "seed": 0}
  assert sweep_lib.zip(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  assert sweep_lib.product(sweep_lib.zip(a=[1, 2], b=[3, 4]), c=[0]) == [
      {"a": 1, "b": 3, "c": 0}, {"a": 2, "b": 4, "c": 0}]
  with pytest.raises(ValueError, match="one length"):
    sweep_lib.zip(a=[1, 2], b=[3])
  with pytest.raises(ValueError, match="'seed' is set by two parts"):
    sweep_lib.product([{"seed": 0}], seed=[1])
  with pytest.raises(ValueError, match="an axis is a list of values"):
    sweep_lib.product(sparsifier="dense")


def test_point_names_are_readable_stable_and_safe():
  name = sweep_lib.point_name({"seed": 1, "final_sparsity": 0.9})
  assert name == sweep_lib.point_name({"final_sparsity": 0.9, "seed": 1})
  assert name == "final_sparsity=0.9,seed=1-ff69c8"  # the same in every run and version
  assert sweep_lib.point_name({"seed": 2, "final_sparsity": 0.9}) != name
  odd = sweep_lib.point_name({"init_from": "/runs/a b", "lr_milestones": ["80ep", "120ep"]})
  assert re.fullmatch(r"[A-Za-z0-9._=,+-]+", odd), odd
  assert odd.startswith("init_from=_runs_a_b,lr_milestones=80ep+120ep-")
  long = sweep_lib.point_name({"widths": "dense1=150," * 40})
  assert len(long) == sweep_lib.NAME_LENGTH + 7
  # Shortened names stay apart by their hash.
  assert long != sweep_lib.point_name({"widths": "dense1=150," * 41})
  assert re.fullmatch(r"config-[0-9a-f]{6}", sweep_lib.point_name({}))


def test_points_of_a_config_file():
  points = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])
  assert [p.index for p in points] == [0, 1, 2, 3]
  assert [p.overrides for p in points] == [{"final_sparsity": 0.5, "seed": 0},
                                           {"final_sparsity": 0.5, "seed": 1},
                                           {"final_sparsity": 0.9, "seed": 0},
                                           {"final_sparsity": 0.9, "seed": 1}]
  assert len({p.name for p in points}) == 4 and {p.sweep for p in points} == {"smoke"}


def test_points_shared_by_two_sweeps_run_once(config_files):
  points = sweep_lib.load_points(config_files["bad"], ["a", "b"])
  # final_sparsity=0 (an int) is held as the float key's 0.0: the same point as 0.0.
  assert [p.overrides for p in points] == [{"seed": 0}, {"seed": 1}, {"final_sparsity": 0.0},
                                           {"seed": 2}]
  assert [p.sweep for p in points] == ["a", "a", "a", "b"]


@pytest.mark.parametrize("sweep,words", [
    ("typo", ["sweep 'typo', point 1", "unknown config key 'final_sparsty'",
              "did you mean 'final_sparsity'?"]),
    ("type", ["sweep 'type', point 0", "seed='one'"]),
    ("bool", ["seed=True is a bool; the key takes a int (its value is 0)"]),
    ("value", ["sweep 'value', point 0", "final_sparsity=1.5"]),
    ("not_a_dict", ["sweep 'not_a_dict', point 0", "a point is a dict"]),
    ("empty", ["sweep 'empty'", "has no points"]),
    ("nope", ["['nope'] not defined", "it defines ['a', 'b', 'bool', 'empty', 'not_a_dict', "
              "'type', 'typo', 'value']"]),
])
def test_a_bad_sweep_is_named(config_files, sweep, words):
  with pytest.raises(ConfigError) as e:
    sweep_lib.load_points(config_files["bad"], [sweep])
  for word in words:
    assert word in str(e.value)


def test_no_sweep_or_no_config():
  with pytest.raises(ConfigError, match=r"--sweep=NAME.*it defines: \['smoke'\]"):
    sweep_lib.load_points(SMOKE_CONFIG, [])
  with pytest.raises(ConfigError, match="no sweep_<name>"):
    sweep_lib.load_points(str(REPO / "configs" / "lenet300_dense.py"), ["x"])
  with pytest.raises(ConfigError, match="no such file"):
    sweep_lib.load_points("configs/missing.py", ["x"])


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags' own
def test_commands_pass_each_value_as_config_flags_parses_it(tmp_path, monkeypatch):
  overrides = {"final_sparsity": 0.95, "seed": 3, "augment": True, "learning_rate": 1e-05,
               "lr_milestones": ["80ep", "120ep"], "widths": "dense1=150,dense2=50"}
  (point,) = [sweep_lib.Point(0, sweep_lib.point_name(overrides), overrides, "x")]
  argv = sweep_lib.command(SMOKE_CONFIG, str(tmp_path), point)
  assert argv[:2] == ["-m", "experiments.main"]
  assert f"--workdir={tmp_path / point.name}" in argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  main_argv = ["main"] + [a for a in argv[2:] if not a.startswith("--workdir")]
  monkeypatch.setattr(sys, "argv", main_argv)  # config_flags reads the overrides from sys.argv
  values(main_argv)
  for key, value in overrides.items():
    expected = tuple(value) if isinstance(value, list) else value
    assert values.config[key] == expected, key
    assert type(values.config[key]) is type(expected), key


def test_table_config_points_are_the_published_configs():
  points = sweep_lib.load_points(TABLE_CONFIG, ["methods"])
  assert len(points) == 3 + 4 * 2 * 3
  published = {"magnitude": lenet300_magnitude, "random": lenet300_random_erk,
               "pdp": pdp_lenet300_fashion}
  module = sweep_lib.load_config_file(TABLE_CONFIG)
  dense = lenet300_dense.get_config()
  for point in points:
    config = sweep_lib.apply_overrides(module.get_config(), point.overrides)
    assert config.steps == "40ep" and config.seed == point.overrides["seed"]
    name = point.overrides["sparsifier"]
    if name in published:
      reference = published[name].get_config()
      reference.final_sparsity = point.overrides["final_sparsity"]
      for key in reference:
        if reference[key] != dense[key]:
          assert config[key] == reference[key], (point.name, key)
    if name == "ste":  # the PDP schedule, hard masks
      assert (config.pdp_warmup, config.pdp_rate) == ("5ep", 0.04)


def test_ray_stays_optional(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
  points = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])
  with pytest.raises(ConfigError, match=r"pip install 'sparsejax\[sweep\]'"):
    sweep_lib.run_ray(SMOKE_CONFIG, str(tmp_path), points)
  assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Status, the index, the table.


def test_status(tmp_path):
  (point,) = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])[:1]
  root = str(tmp_path)
  assert sweep_lib.status(root, point) == "pending"
  lock = sweep_lib._lock(str(tmp_path / point.name))  # as a launcher running it holds it
  assert sweep_lib.status(root, point) == "running"
  assert sweep_lib.start(SMOKE_CONFIG, root, point) == "busy"
  os.close(lock)
  assert sweep_lib.status(root, point) == "started"
  (tmp_path / point.name / "summary.json").write_text('{"test_accuracy": 0.5}')
  assert sweep_lib.status(root, point) == "finished"
  assert sweep_lib.start(SMOKE_CONFIG, root, point) == "finished"
  (tmp_path / point.name / "summary.json").write_text('{"test_acc')  # cut short: redo it
  assert sweep_lib.status(root, point) == "started"


def test_sweep_index_from_flag_or_job_array():
  assert sweep_lib.sweep_index(3, {"SLURM_ARRAY_TASK_ID": "5"}) == 3
  assert sweep_lib.sweep_index(None, {"SLURM_ARRAY_TASK_ID": "5"}) == 5
  assert sweep_lib.sweep_index(None, {"JOB_COMPLETION_INDEX": "2"}) == 2
  with pytest.raises(ConfigError, match="--sweep_index"):
    sweep_lib.sweep_index(None, {})
  with pytest.raises(ConfigError, match="not a point index"):
    sweep_lib.sweep_index(None, {"SLURM_ARRAY_TASK_ID": "a"})
  with pytest.raises(ConfigError, match="it has 4 points, 0 to 3"):
    sweep_lib.run_index(SMOKE_CONFIG, ["smoke"], "/nonexistent", 4)


@given(cores=st.sets(st.integers(0, 255), max_size=40), parallel=st.integers(1, 12))
def test_core_groups_split_the_cores_into_disjoint_near_equal_runs(cores, parallel):
  groups = sweep_lib.core_groups(parallel, cores)
  if len(cores) < parallel:
    assert groups is None
    return
  assert len(groups) == parallel
  assert [c for g in groups for c in g] == sorted(cores)  # each core once, in order
  sizes = {len(g) for g in groups}
  assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


# A point's command replaced by one that prints the cores it may run on, after a pause that
# keeps two points running at once.
# null where the platform has no affinity (not Linux): then nothing is pinned.
_PRINT_AFFINITY = ["-c", "import json, os, time; time.sleep(0.5); print('affinity', json.dumps("
                   "sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None))"]


def _everywhere() -> list[int] | None:
  """The cores a child may run on when not pinned (None: no affinity on this platform)."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _affinities(root: Path, points) -> list[list[int] | None]:
  found = []
  for point in points:
    log = (root / point.name / sweep_lib.LOG_FILE).read_text()
    found.append(json.loads(re.search(r"^affinity (.*)$", log, re.M).group(1)))
  return found


@pytest.mark.parametrize("pin", [True, False])
def test_parallel_points_run_on_cores_of_their_own(tmp_path, monkeypatch, pin):
  monkeypatch.setattr(sweep_lib, "command", lambda config, root, point: _PRINT_AFFINITY)
  points = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])
  results = sweep_lib.run_local(SMOKE_CONFIG, str(tmp_path), points, parallel=2, pin_cores=pin)
  assert results == {p.name: 0 for p in points}
  found = _affinities(tmp_path, points)
  groups = sweep_lib.core_groups(2)
  if not pin or groups is None:  # one core only, or not Linux: nothing to split
    assert found == [_everywhere()] * len(points)
    return
  groups = [list(g) for g in groups]
  assert found[:2] == groups  # the first two start at once, one group each
  assert all(f in groups for f in found)
  for point, cores in zip(points, found):
    log = (tmp_path / point.name / sweep_lib.LOG_FILE).read_text()
    assert f", cores {','.join(map(str, cores))}: python" in log


def test_the_points_left_share_every_core(tmp_path, monkeypatch):
  """--parallel=8 with 2 of 4 points left: the 2 split all the cores between them."""
  monkeypatch.setattr(sweep_lib, "command", lambda config, root, point: _PRINT_AFFINITY)
  points = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])
  for point in points[:2]:
    (tmp_path / point.name).mkdir()
    (tmp_path / point.name / "summary.json").write_text('{"test_accuracy": 0.5}')
  results = sweep_lib.run_local(SMOKE_CONFIG, str(tmp_path), points, parallel=8)
  assert results == {p.name: 0 for p in points}
  assert not (tmp_path / points[0].name / sweep_lib.LOG_FILE).exists()  # skipped
  found = _affinities(tmp_path, points[2:])
  groups = sweep_lib.core_groups(2)
  expected = [_everywhere()] * 2 if groups is None else [list(g) for g in groups]
  assert found == expected


def _fake_run(root: Path, overrides: dict, summary: dict | None):
  """A point's workdir as a launcher and a finished run leave it."""
  name = sweep_lib.point_name(overrides)
  (root / name).mkdir(parents=True)
  (root / name / sweep_lib.POINT_FILE).write_text(json.dumps(
      {"name": name, "overrides": overrides, "sweep": "t"}))
  if summary is not None:
    (root / name / "summary.json").write_text(json.dumps(summary))


def test_table_csv_and_plot_from_the_root(tmp_path):
  accuracy = {("dense", None): 0.90, ("magnitude", 0.9): 0.88, ("magnitude", 0.95): 0.85,
              ("pdp", 0.9): 0.87, ("pdp", 0.95): 0.80}
  for (method, sparsity), acc in accuracy.items():
    for seed in (0, 1):
      overrides = {"sparsifier": method, "seed": seed}
      if sparsity is not None:
        overrides["final_sparsity"] = sparsity
      density = 1.0 if sparsity is None else 1 - sparsity
      summary = {"test_accuracy": acc + 0.01 * seed, "density": density, "steps": 100}
      if method == "pdp":
        summary |= {"test_accuracy_hard": acc - 0.02, "density_hard": density}
      _fake_run(tmp_path, overrides, summary)
  _fake_run(tmp_path, {"sparsifier": "ste", "final_sparsity": 0.9, "seed": 0}, None)
  points = sweep_lib.points_in(str(tmp_path))
  assert len(points) == 11
  text = sweep_lib.write_report(str(tmp_path), points, "a table")
  assert "11 points: 10 finished, 1 started." in text
  mean = [line for line in text.splitlines()
          if line.startswith("| 0.9 | magnitude | 2/2 |")]
  assert mean == ["| 0.9 | magnitude | 2/2 | 88.50 ± 0.71 | - | 10.00 ± 0.00 | - | 100 ± 0 |"]
  assert "| - | dense | 2/2 | 90.50 ± 0.71 | - | 100.00 ± 0.00 |" in text
  assert "| 0.95 | pdp | 2/2 | 80.50 ± 0.71 | 78.00 ± 0.00 |" in text
  assert "| 0.9 | ste | 0/1 | - |" in text
  assert (tmp_path / "sweep.md").read_text() == text
  rows = (tmp_path / "sweep.csv").read_text().splitlines()
  assert rows[0] == ("point,status,final_sparsity,seed,sparsifier,test_accuracy,"
                     "test_accuracy_hard,density,density_hard,steps")
  assert len(rows) == 12 and sum(",started," in r for r in rows) == 1
  png = (tmp_path / "sweep.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 10_000


# ---------------------------------------------------------------------------------------------
# End to end: local and Ray launchers, killed and restarted; the index launcher.


def sweep_command(config, root, *flags_):
  return [sys.executable, "-m", "experiments.sweep", f"--config={config}", "--sweep=smoke",
          f"--root={root}", *flags_]


def kill_in_the_middle(command, root: Path, log: Path) -> set[str]:
  """Starts the sweep, SIGKILLs it once a point has finished and another is in the middle (it has
  a checkpoint, not past step 150); the names of the points finished by then."""
  with open(log, "w") as out:
    proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.time() + 240
      done = set()
      while proc.poll() is None and time.time() < deadline:
        done = {p.parent.name for p in root.glob("*/summary.json")}
        resumable = [d for d in root.glob("*/checkpoints")
                     if d.parent.name not in done and 0 < max(checkpoint_steps(d), default=0)
                     <= STEPS - 50]
        if done and resumable:
          break
        time.sleep(0.05)
    finally:
      proc.send_signal(signal.SIGKILL)  # nothing if the sweep has ended: the assert says so
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
  assert len(done) < 4, "the sweep ended before it could be killed"
  return done


def wait_for_unlocked(root: Path, timeout=120):
  """The points the killed launcher ran stop (SIGTERM from its death: checkpoint, exit)."""
  deadline = time.time() + timeout
  points = sweep_lib.points_in(str(root))
  while any(sweep_lib.status(str(root), p) == "running" for p in points):
    assert time.time() < deadline, "a point kept running after its launcher was killed"
    time.sleep(0.1)


def assert_every_point_finished_once(root: Path, finished_before_kill: set[str],
                                     sigterm: bool):
  """Each point trained to the end once (the one killed halfway resumed from its checkpoint);
  ``sigterm``: the point running when its launcher was killed got SIGTERM (PR_SET_PDEATHSIG),
  saved a checkpoint at the end of its chunk of steps and exited (not asked of Ray, which may
  SIGKILL the child processes of a dead driver's workers itself)."""
  points = sweep_lib.load_points(SMOKE_CONFIG, ["smoke"])
  assert sorted(d.name for d in root.iterdir() if d.is_dir()) == sorted(p.name for p in points)
  resumed = preempted = 0
  for point in points:
    directory = root / point.name
    log = (directory / sweep_lib.LOG_FILE).read_text()
    assert len(COMPLETED.findall(log)) == 1, log[-3000:]  # one completed training, no second
    summary = read_json(directory / "summary.json")
    assert summary["steps"] == STEPS and summary["seed"] == point.overrides["seed"]
    assert summary["density"] == pytest.approx(1 - point.overrides["final_sparsity"], abs=1e-3)
    config = read_json(directory / "config.json")
    assert {k: config[k] for k in point.overrides} == point.overrides
    steps = [row["step"] for row in read_metrics(directory / "metrics.jsonl")]
    assert steps == [0, 100, 200], steps
    if point.name in finished_before_kill:
      assert log.count("== start") == 1, log  # skipped after the restart
    resumed += "resumed from the checkpoint at step" in log
    preempted += "preempted:" in log
  assert resumed >= 1
  if sigterm:
    assert preempted >= 1
  table = (root / "sweep.md").read_text()
  assert sum(line.startswith("| final_sparsity=") for line in table.splitlines()) == 4
  assert "4 points: 4 finished." in table
  assert len((root / "sweep.csv").read_text().splitlines()) == 5


@pytest.mark.slow
def test_local_sweep_killed_and_restarted_finishes_every_point_once(config_files, tmp_path):
  root = tmp_path / "root"
  command = sweep_command(config_files["short"], root, "--parallel=2")
  finished = kill_in_the_middle(command, root, tmp_path / "killed.log")
  wait_for_unlocked(root)
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in finished:
    assert f"{name}: finished before, skipped" in result.stderr
  assert_every_point_finished_once(root, finished, sigterm=True)
  assert "## Mean ± standard deviation over seeds" in result.stdout


@pytest.fixture(scope="module")
def ray_cluster():
  """A local Ray cluster of 2 CPUs (no dashboard), its address; shut down after the tests."""
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
  try:
    yield ray.get_runtime_context().gcs_address
  finally:
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ray.init here, beside JAX
def test_ray_sweep_killed_and_restarted_finishes_every_point_once(config_files, tmp_path,
                                                                  ray_cluster):
  root = tmp_path / "root"
  command = sweep_command(config_files["short"], root, "--launcher=ray",
                          f"--ray_address={ray_cluster}", "--ray_num_cpus=1")
  finished = kill_in_the_middle(command, root, tmp_path / "killed.log")
  wait_for_unlocked(root)
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in finished:
    assert f"{name}: finished before, skipped" in result.stderr
  assert_every_point_finished_once(root, finished, sigterm=False)


@pytest.mark.slow
def test_index_launcher_runs_one_point_and_report_only(config_files, tmp_path):
  root = tmp_path / "root"
  result = subprocess.run(sweep_command(config_files["short"], root, "--launcher=index"),
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  points = sweep_lib.load_points(config_files["short"], ["smoke"])
  assert [d.name for d in root.iterdir()] == [points[2].name]
  assert read_json(root / points[2].name / "summary.json")["seed"] == 0
  assert not (root / "sweep.md").exists()
  # Run again: finished, so skipped at once.
  again = subprocess.run(sweep_command(config_files["short"], root, "--launcher=index",
                                       "--sweep_index=2"),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "finished before, skipped" in again.stderr, again.stderr
  report = subprocess.run(sweep_command(config_files["short"], root, "--report_only"),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-3000:]
  assert "4 points: 1 finished, 3 pending." in report.stdout
  dry = subprocess.run(sweep_command(config_files["short"], root, "--dry_run"),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert f"[2] finished {root / points[2].name}" in dry.stdout
  assert "4 points (for a job array: indices 0-3)." in dry.stdout
  bad = subprocess.run([sys.executable, "-m", "experiments.sweep",
                        f"--config={config_files['short']}", "--sweep=nope", f"--root={root}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines() == [
      f"error: sweep(s) ['nope'] not defined in {config_files['short']}; it defines ['smoke']."]
