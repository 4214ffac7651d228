"""Sweeps defined in config files: their points, workdirs, launchers and one table over them.

A config file defines, next to ``get_config()``, functions ``sweep_<name>()`` that return (or
yield) dicts of config overrides, one per point; :func:`product` and :func:`zip` build them::

  from experiments.sweep_lib import product

  def sweep_sparsity():
    return product(final_sparsity=(0.5, 0.9), seed=(0, 1))   # 4 points

Each point is ``get_config()`` with its overrides, run by ``python -m experiments.main`` in its
own workdir ``ROOT/<name>``, named by the overrides: ``final_sparsity=0.9,seed=1-3f2a9c`` (the
keys in sorted order, then 6 hex digits of a hash of the overrides, so a name is stable across
runs and unique even where the readable part is shortened). Every point runs in a child process,
so a crash of one leaves the others running and its memory is returned.

Where the launchers meet the workdir:

- a point is *finished* when its workdir holds a readable ``summary.json`` (what every protocol
  writes last): it is skipped. Any other point is (re)started with the same command, which
  resumes from its last checkpoint;
- while a point runs, its launcher holds an exclusive ``flock`` on ``<workdir>/.sweep.lock``, and
  the child inherits it; a second launcher waits for the lock instead of running the point twice.
  On Linux the child is sent SIGTERM when its launcher dies (``PR_SET_PDEATHSIG``): it saves a
  checkpoint at the end of its chunk of steps and exits, and the lock is released with it (Ray
  may kill the children of a dead driver's tasks outright: they resume from their last
  checkpoint);
- ``sweep_point.json`` records the point (overrides, command, config file) and ``sweep.log`` the
  output of every attempt, each between a ``== start`` and an ``== exit status N`` line;
- ``ROOT/sweep.md``, ``ROOT/sweep.csv`` and ``ROOT/sweep.png`` are the table and the plot over
  the points (:func:`write_report`), built from the workdirs alone.

Launchers (:mod:`experiments.sweep` is their command line): :func:`run_local` (up to
``parallel`` points at once on this machine, each on its own cores), :func:`run_ray` (one Ray
task per point with the resources it asks for) and :func:`run_index` (point ``i`` only, for SLURM
job arrays and Kubernetes indexed jobs). The launcher processes never use an accelerator: only
the points do.
"""

from __future__ import annotations

import builtins
import csv
import dataclasses
import datetime
import difflib
import fcntl
import hashlib
import importlib.util
import io
import itertools
import json
import logging as std_logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import matplotlib
import matplotlib.ticker
import ml_collections
import numpy as np
from absl import logging

from experiments import config as config_lib
from experiments import report as report_lib
from experiments import workdir as workdir_lib
from experiments.parsing import ConfigError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

SWEEP_PREFIX = "sweep_"
POINT_FILE = "sweep_point.json"
LOG_FILE = "sweep.log"
LOCK_FILE = ".sweep.lock"
SUMMARY_FILE = "summary.json"
REPORT_NAME = "sweep"  # ROOT/sweep.md, sweep.csv, sweep.png
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds experiments/
INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # SLURM, Kubernetes
SEED_KEYS = ("seed",)  # the table averages over these
SPARSITY_KEYS = ("final_sparsity",)  # the plot's x axis when they vary
# The table's metrics, in this order, where a summary has them; accuracies and densities in %.
METRICS = ("test_accuracy", "test_accuracy_hard", "best_test_accuracy", "density",
           "density_hard", "steps", "wall_seconds")
PERCENT = ("test_accuracy", "test_accuracy_hard", "best_test_accuracy", "density",
           "density_hard")
NAME_LENGTH = 120  # of a workdir name's readable part
PREEMPTED_STATUS = 128 + signal.SIGTERM
PR_SET_PDEATHSIG = 1  # linux/prctl.h


# ---------------------------------------------------------------------------------------------
# Defining points: helpers for sweep_<name>() functions.


def _parts(parts: Sequence[Iterable[Mapping]], axes: Mapping[str, Iterable]) -> list[list[dict]]:
  """Positional parts (iterables of override dicts) and keyword axes (``key=values``) as lists."""
  out = []
  for i, part in enumerate(parts):
    items = [dict(item) if isinstance(item, Mapping) else item for item in part]
    bad = [item for item in items if not isinstance(item, dict)]
    if bad:
      raise ValueError(f"part {i} holds {bad[0]!r}; a part is a list of override dicts.")
    out.append(items)
  for key, values in axes.items():
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
      raise ValueError(f"{key}={values!r}: an axis is a list of values, e.g. {key}=[0, 1].")
    out.append([{key: value} for value in values])
  return out


def _merge(dicts: Iterable[Mapping]) -> dict:
  merged = {}
  for d in dicts:
    for key, value in d.items():
      if key in merged:
        raise ValueError(f"key {key!r} is set by two parts ({merged[key]!r} and {value!r}).")
      merged[key] = value
  return merged


def product(*parts: Iterable[Mapping], **axes: Iterable) -> list[dict]:
  """Every combination of the parts and axes, the first varying slowest (``itertools.product``).

  ``product(methods, final_sparsity=[0.9, 0.95], seed=[0, 1, 2])`` with ``methods`` a list of
  override dicts gives ``len(methods) * 2 * 3`` dicts; a key set by two parts is an error.
  """
  return [_merge(combination) for combination in itertools.product(*_parts(parts, axes))]


def zip(*parts: Iterable[Mapping], **axes: Iterable) -> list[dict]:  # noqa: A001 (as a sweep reads)
  """The parts and axes in lockstep: ``zip(learning_rate=[0.1, 0.05], steps=["20ep", "40ep"])``
  gives 2 dicts; parts and axes of different lengths are an error."""
  lists = _parts(parts, axes)
  lengths = [len(items) for items in lists]
  if len(set(lengths)) > 1:
    raise ValueError(f"zip needs parts and axes of one length; got lengths {lengths}.")
  return [_merge(combination) for combination in builtins.zip(*lists)]


# ---------------------------------------------------------------------------------------------
# Points: loading a config file's sweeps, applying overrides, naming workdirs.


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep: ``overrides`` (JSON values, as the config holds them) on the config.

  ``index`` is its place in the sweep (``--sweep_index``), ``name`` its workdir under the root and
  ``sweep`` the first sweep that yields it.
  """

  index: int
  name: str
  overrides: dict
  sweep: str


def load_config_file(path: str):
  """The config file at ``path`` as a module (as ``config_flags`` loads it: by path)."""
  if not os.path.isfile(path):
    raise ConfigError(f"config={path!r}: no such file.")
  name = "sweep_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config={path!r} defines no get_config().")
  return module


def sweeps_of(module) -> dict[str, Callable[[], Iterable[Mapping]]]:
  """``{name: function}`` for the ``sweep_<name>()`` functions a config module defines."""
  return {name[len(SWEEP_PREFIX):]: value for name, value in vars(module).items()
          if name.startswith(SWEEP_PREFIX) and callable(value)}


def _node(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """The ConfigDict holding ``key`` (dotted for nested dicts) and the last part of the key."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise KeyError(key)
    node = node[part]
  if leaf not in node:
    raise KeyError(key)
  return node, leaf


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str = "") -> ml_collections.ConfigDict:
  """``config`` with ``overrides`` set, then locked and validated; a :class:`ConfigError` (its
  message starting with ``where``) names an unknown key or a value the key cannot take."""
  valid = sorted(config.keys())
  for key, value in overrides.items():
    if not isinstance(key, str):
      raise ConfigError(f"{where}key {key!r} is not a string; a point maps config keys to values.")
    try:
      node, leaf = _node(config, key)
    except KeyError:
      close = difflib.get_close_matches(key, valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(f"{where}unknown config key {key!r}{hint}; valid keys: {valid}.") from None
    current = node[leaf]
    if isinstance(value, bool) != isinstance(current, bool) and current is not None:
      raise ConfigError(f"{where}{key}={value!r} is a {type(value).__name__}; the key takes a "
                        f"{type(current).__name__} (its value is {current!r}).")
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"{where}{key}={value!r}: {e}") from None
  config.lock()
  try:
    config_lib.validate(config)
  except ConfigError as e:
    raise ConfigError(f"{where}{e}") from None
  return config


def _jsonable(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  if isinstance(value, ml_collections.ConfigDict):
    return {k: _jsonable(v) for k, v in value.items()}
  return value


def _text(value: Any) -> str:
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, list):
    return "+".join(_text(v) for v in value)
  return str(value)


def point_name(overrides: Mapping[str, Any]) -> str:
  """``final_sparsity=0.9,seed=1-3f2a9c``: sorted ``key=value`` pairs (filesystem-safe, at most
  :data:`NAME_LENGTH` characters) and 6 hex digits of a hash of the overrides."""
  canonical = json.dumps(_jsonable(dict(overrides)), sort_keys=True, separators=(",", ":"))
  digest = hashlib.sha256(canonical.encode()).hexdigest()[:6]
  readable = ",".join(f"{key}={_text(_jsonable(value))}" for key, value in
                      sorted(overrides.items()))
  readable = re.sub(r"[^A-Za-z0-9._=,+-]", "_", readable)[:NAME_LENGTH].lstrip(".-")
  return f"{readable}-{digest}" if readable else f"config-{digest}"


def load_points(config_path: str, sweeps: Sequence[str]) -> list[Point]:
  """The points of ``sweeps`` (names of ``sweep_<name>()`` functions in the config file), in
  order, each checked against the config; a point that two sweeps share is run once."""
  module = load_config_file(config_path)
  available = sweeps_of(module)
  if not sweeps:
    raise ConfigError(f"name a sweep of {config_path} (--sweep=NAME); it defines: "
                      f"{sorted(available) or 'none (no sweep_<name>() function)'}.")
  unknown = [name for name in sweeps if name not in available]
  if unknown:
    raise ConfigError(f"sweep(s) {unknown} not defined in {config_path}; it defines "
                      f"{sorted(available) or 'no sweep_<name>() function'}.")
  points: dict[str, Point] = {}
  for sweep in sweeps:
    count = 0
    for i, overrides in enumerate(available[sweep]()):
      where = f"sweep {sweep!r}, point {i} ({overrides!r}): "
      if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}a point is a dict of config overrides.")
      config = apply_overrides(module.get_config(), overrides, where)
      canonical = {}
      for key in overrides:
        node, leaf = _node(config, key)
        canonical[key] = _jsonable(node[leaf])
      name = point_name(canonical)
      if name not in points:
        points[name] = Point(len(points), name, canonical, sweep)
      count += 1
    if not count:
      raise ConfigError(f"sweep {sweep!r} of {config_path} has no points.")
  return list(points.values())


def points_in(root: str) -> list[Point]:
  """The points a root holds (their ``sweep_point.json``), by name: the table needs no config."""
  points = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    record = workdir_lib.read_json(os.path.join(root, name, POINT_FILE))
    if record is not None:
      points.append(Point(len(points), name, record["overrides"], record.get("sweep", "")))
  return points


def _argument(value: Any) -> str:
  """A value as ``--config.key=...`` takes it (ml_collections' config_flags parsers)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, list):
    return repr(tuple(value))
  return str(value)


def command(config_path: str, root: str, point: Point) -> list[str]:
  """The point's run: ``python -m experiments.main`` arguments (after the interpreter)."""
  return (["-m", "experiments.main", f"--config={os.path.abspath(config_path)}",
           f"--workdir={os.path.join(os.path.abspath(root), point.name)}"]
          + [f"--config.{key}={_argument(value)}" for key, value in point.overrides.items()])


# ---------------------------------------------------------------------------------------------
# Status and one attempt at a point.


def finished(directory: str) -> bool:
  """Whether a point's workdir holds its (readable) ``summary.json``."""
  return workdir_lib.read_finished(os.path.join(directory, SUMMARY_FILE)) is not None


def _lock(directory: str) -> int | None:
  """An fd holding the exclusive lock of a point's workdir, or None if another process has it."""
  os.makedirs(directory, exist_ok=True)
  fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def status(root: str, point: Point) -> str:
  """``finished``, ``running`` (another process holds its lock), ``started`` (a workdir without
  summary: interrupted, failed, or about to start) or ``pending`` (no workdir yet)."""
  directory = os.path.join(root, point.name)
  if finished(directory):
    return "finished"
  if not os.path.isdir(directory):
    return "pending"
  if not os.path.exists(os.path.join(directory, LOCK_FILE)):
    return "started"
  fd = _lock(directory)
  if fd is None:
    return "running"
  os.close(fd)
  return "started"


def _cpu_only() -> None:
  """Keeps JAX in a launcher's process off the accelerators its points need (files' process-0
  test asks JAX for the process index); the points' processes are not affected."""
  jax.config.update("jax_platforms", "cpu")


# Run before the point's command (which it replaces by exec, keeping the pid): on Linux, the child
# is sent SIGTERM when its launcher (argv[1]) dies, also if that happened before the prctl call,
# and runs on the cores listed in argv[2] ("0,1"; empty: wherever the launcher may). A program of
# its own, not a preexec_fn: a fork of a launcher with threads (JAX's) would be unsafe.
_DIE_WITH_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "  ctypes.CDLL(None).prctl(%d, signal.SIGTERM)\n"
    "  if os.getppid() != int(sys.argv[1]):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "  if sys.argv[2]:\n"
    "    os.sched_setaffinity(0, [int(c) for c in sys.argv[2].split(',')])\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[3:])\n" % PR_SET_PDEATHSIG)


def core_groups(parallel: int, cores: Sequence[int] | None = None) -> list[tuple[int, ...]] | None:
  """``parallel`` disjoint groups of consecutive ``cores`` (default: those this process may run
  on), of sizes that differ by at most one; None where there are fewer cores than groups or the
  platform cannot pin a process to cores (only Linux can).

  XLA:CPU runs one point's convolutions and matrix products on every core it may use, but not at
  full speed: on 2 cores, two points pinned to one core each train more steps per second in all
  than two that share both cores, or than one at a time (``benchmarks/sweep_overhead.py``).
  """
  if cores is None:
    if not hasattr(os, "sched_getaffinity"):
      return None
    cores = os.sched_getaffinity(0)
  cores = sorted(cores)
  if parallel < 1 or len(cores) < parallel:
    return None
  size, extra = divmod(len(cores), parallel)
  groups, begin = [], 0
  for index in range(parallel):
    end = begin + size + (index < extra)
    groups.append(tuple(cores[begin:end]))
    begin = end
  return groups


def _cores_text(cores: Sequence[int]) -> str:
  return ",".join(map(str, cores))


class Attempt:
  """One run of a point's command in a child process that holds the point's lock with us."""

  def __init__(self, config_path: str, root: str, point: Point, lock: int,
               cores: Sequence[int] | None = None):
    self.point, self.lock, self.cores = point, lock, cores
    self.directory = os.path.join(root, point.name)
    argv = command(config_path, root, point)
    workdir_lib.write_json(os.path.join(self.directory, POINT_FILE), {
        "name": point.name, "overrides": point.overrides, "sweep": point.sweep,
        "config": os.path.abspath(config_path), "command": ["python", *argv]})
    self.log = open(os.path.join(self.directory, LOG_FILE), "ab")
    now = datetime.datetime.now().isoformat(timespec="seconds")
    where = socket.gethostname() + (f", cores {_cores_text(cores)}" if cores else "")
    self.log.write(f"== start {now} on {where}: python {' '.join(argv)}\n".encode())
    self.log.flush()
    self.started = time.time()
    self.process = subprocess.Popen(
        [sys.executable, "-c", _DIE_WITH_LAUNCHER, str(os.getpid()), _cores_text(cores or ()),
         *argv], cwd=REPO,
        stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(lock,))

  def poll(self) -> int | None:
    return self.process.poll()

  def finish(self) -> int:
    """Waits for the child, records its exit status, releases the lock; the exit status."""
    code = self.process.wait()
    self.log.write(f"== exit status {code} after {time.time() - self.started:.0f}s\n".encode())
    self.log.close()
    os.close(self.lock)
    return code

  @property
  def seconds(self) -> float:
    return time.time() - self.started


def start(config_path: str, root: str, point: Point,
          cores: Sequence[int] | None = None) -> Attempt | str:
  """Starts the point (on ``cores``, if given), or says why not: ``"finished"`` or ``"busy"``
  (another process runs it)."""
  directory = os.path.join(root, point.name)
  lock = _lock(directory)
  if lock is None:
    return "busy"
  if finished(directory):
    os.close(lock)
    return "finished"
  try:
    return Attempt(config_path, root, point, lock, cores)
  except BaseException:
    os.close(lock)
    raise


def _outcome(point: Point, code: int, seconds: float) -> str:
  if code == 0:
    return f"{point.name}: finished in {seconds:.0f}s"
  return (f"{point.name}: FAILED with exit status {code} after {seconds:.0f}s; its output is in "
          f"{os.path.join(point.name, LOG_FILE)}")


class _Stop:
  """SIGTERM (a preemption) while points run: forwarded to them, and no new point starts."""

  def __init__(self, attempts: list[Attempt]):
    self.attempts, self.requested, self.previous = attempts, False, None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True
    for attempt in self.attempts:
      attempt.process.send_signal(signal.SIGTERM)

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def run_point(config_path: str, root: str, point: Point, poll: float = 1.0) -> int:
  """Runs one point to its end (waiting while another process runs it); its exit status, 0 if it
  had finished before. SIGTERM is passed on to the point, which checkpoints and exits 143."""
  _cpu_only()
  waiting = False
  while True:
    attempt = start(config_path, root, point)
    if attempt == "finished":
      logging.info("%s: finished before, skipped", point.name)
      return 0
    if attempt != "busy":
      break
    if not waiting:
      logging.info("%s: another process runs it; waiting for its lock", point.name)
      waiting = True
    time.sleep(poll)
  logging.info("%s: started (%s)", point.name, os.path.join(root, point.name, LOG_FILE))
  with _Stop([attempt]):
    code = attempt.finish()
  logging.info(_outcome(point, code, attempt.seconds))
  return code


# ---------------------------------------------------------------------------------------------
# Launchers. Each returns {point name: exit status (None: the launcher could not run it)}.


def run_local(config_path: str, root: str, points: Sequence[Point], parallel: int = 1,
              poll: float = 0.2, pin_cores: bool = True) -> dict[str, int | None]:
  """Runs the points on this machine, up to ``parallel`` at once, skipping finished ones.

  With ``pin_cores``, each running point has a group of :func:`core_groups` to itself, of
  ``min(parallel, points left to run)`` groups (so that no core stays idle for want of points).
  A point another process runs is waited for. SIGTERM stops the running points (each saves a
  checkpoint and exits) and starts no other; the statuses say which did not finish.
  """
  if parallel < 1:
    raise ConfigError(f"parallel={parallel!r} must be >= 1.")
  _cpu_only()
  queue, running, results, waited = [], [], {}, set()
  total, done = len(points), 0
  for point in points:
    if finished(os.path.join(root, point.name)):
      done += 1
      results[point.name] = 0
      logging.info("[%d/%d] %s: finished before, skipped", done, total, point.name)
    else:
      queue.append(point)
  width = min(parallel, len(queue))
  free = None
  if pin_cores and width > 1:
    free = core_groups(width)
    if free is None:
      logging.warning("parallel=%d: fewer cores than points at once, or no pinning on this "
                      "platform; the points share the cores", parallel)
  with _Stop(running) as stop:
    try:
      while queue or running:
        busy = []
        while queue and len(running) < parallel and not stop.requested:
          point = queue.pop(0)
          cores = free.pop(0) if free is not None else None  # a group per running point
          attempt = start(config_path, root, point, cores)
          if not isinstance(attempt, Attempt) and cores is not None:
            free.insert(0, cores)
          if attempt == "busy":
            busy.append(point)
            if point.name not in waited:
              waited.add(point.name)
              logging.info("%s: another process runs it; waiting for its lock", point.name)
          elif attempt == "finished":
            done += 1
            results[point.name] = 0
            logging.info("[%d/%d] %s: finished before, skipped", done, total, point.name)
          else:
            running.append(attempt)
            logging.info("%s: started", point.name)
        queue = busy + queue
        if stop.requested and not running:
          break
        for attempt in [a for a in running if a.poll() is not None]:
          running.remove(attempt)
          results[attempt.point.name] = attempt.finish()
          if attempt.cores is not None:
            free.append(attempt.cores)
          done += 1
          logging.info("[%d/%d] %s", done, total,
                       _outcome(attempt.point, results[attempt.point.name], attempt.seconds))
        time.sleep(poll)
    finally:
      for attempt in running:  # an exception in the launcher: stop the points cleanly
        attempt.process.send_signal(signal.SIGTERM)
        attempt.finish()
  for point in queue:
    results.setdefault(point.name, None)
  return results


def _run_on_worker(config_path: str, root: str, point: dict) -> tuple[int, float]:
  """A Ray task: one point, on whichever node Ray placed it; (exit status, seconds)."""
  logging.set_verbosity(logging.INFO)
  began = time.time()
  return run_point(config_path, root, Point(**point)), time.time() - began


def run_ray(config_path: str, root: str, points: Sequence[Point], address: str | None = None,
            num_cpus: float = 1.0, num_gpus: float = 0.0, resources: Mapping | None = None,
            ) -> dict[str, int | None]:
  """Runs every unfinished point as a Ray task asking for ``num_cpus``, ``num_gpus`` and
  ``resources`` (e.g. ``{"TPU": 4}``), on the cluster at ``address`` or on a local one started
  here; results are reported as the tasks end (``ray.wait``).

  The nodes need this checkout at the same path (it is put on their ``PYTHONPATH``) and the root
  on a filesystem they share with this process.
  """
  try:
    import ray  # noqa: PLC0415 (optional: sparsejax[sweep])
  except ImportError:
    raise ConfigError("--launcher=ray needs Ray: pip install 'sparsejax[sweep]' "
                      "(or pip install 'ray>=2.9').") from None
  _cpu_only()
  config_path, root = os.path.abspath(config_path), os.path.abspath(root)
  results = {}
  todo = []
  for point in points:
    if finished(os.path.join(root, point.name)):
      results[point.name] = 0
      logging.info("%s: finished before, skipped", point.name)
    else:
      todo.append(point)
  if not todo:
    return results
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  ray.init(address=address or None, logging_level=std_logging.WARNING)
  try:
    logging.info("Ray cluster resources: %s", ray.cluster_resources())
    task = ray.remote(_run_on_worker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, resources=dict(resources or {}),
        runtime_env={"env_vars": {"PYTHONPATH": path}})
    pending = {task.remote(config_path, root, dataclasses.asdict(point)): point
               for point in todo}
    while pending:
      ready, _ = ray.wait(list(pending), num_returns=1)
      for ref in ready:
        point = pending.pop(ref)
        try:
          results[point.name], seconds = ray.get(ref)
        except ray.exceptions.RayError as e:
          results[point.name] = None
          logging.error("%s: the Ray task failed: %s", point.name, str(e).strip()[:2000])
          continue
        logging.info("[%d/%d] %s", len(results), len(points),
                     _outcome(point, results[point.name], seconds))
  finally:
    ray.shutdown()
  return results


def sweep_index(flag: int | None, environ: Mapping[str, str] = os.environ) -> int:
  """The point an array job runs: ``flag``, else ``$SLURM_ARRAY_TASK_ID`` (SLURM) or
  ``$JOB_COMPLETION_INDEX`` (a Kubernetes indexed job)."""
  if flag is not None:
    return flag
  for variable in INDEX_VARIABLES:
    if environ.get(variable, "").strip():
      try:
        return int(environ[variable])
      except ValueError:
        raise ConfigError(f"${variable}={environ[variable]!r} is not a point index.") from None
  raise ConfigError("--launcher=index runs one point: give --sweep_index=i (or run it in a job "
                    f"array that sets one of {', '.join('$' + v for v in INDEX_VARIABLES)}).")


def run_index(config_path: str, sweeps: Sequence[str], root: str, index: int | None = None
              ) -> int:
  """Runs point ``index`` of ``sweeps`` (see :func:`sweep_index`); its exit status. For job
  arrays: ``submitit`` can call this function directly."""
  points = load_points(config_path, sweeps)
  index = sweep_index(index)
  if not 0 <= index < len(points):
    raise ConfigError(f"sweep_index={index} is not a point of the sweep: it has {len(points)} "
                      f"points, 0 to {len(points) - 1}.")
  return run_point(config_path, root, points[index])


# ---------------------------------------------------------------------------------------------
# The table and the plot over the points.


def collect(root: str, points: Sequence[Point]) -> list[dict]:
  """One row per point: name, overrides, status and its summary (None until finished)."""
  rows = []
  for point in points:
    directory = os.path.join(root, point.name)
    summary = workdir_lib.read_finished(os.path.join(directory, SUMMARY_FILE))
    rows.append({"name": point.name, "overrides": point.overrides,
                 "status": "finished" if summary is not None else status(root, point),
                 "summary": summary})
  return rows


def _keys(rows: Sequence[dict]) -> list[str]:
  """The override keys of the points, sorted (as in the points' names)."""
  return sorted({k for row in rows for k in row["overrides"]})


def _metrics(rows: Sequence[dict]) -> list[str]:
  return [m for m in METRICS if any(isinstance((r["summary"] or {}).get(m), (int, float))
                                    for r in rows)]


def _value(row: dict, metric: str) -> float | None:
  value = (row["summary"] or {}).get(metric)
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell(value: Any) -> str:
  if value is None:
    return "-"
  return _text(_jsonable(value))


def _metric_cell(metric: str, mean: float | None, std: float | None = None) -> str:
  if mean is None:
    return "-"
  if metric in PERCENT:
    return report_lib._fmt(mean, std)  # noqa: SLF001 (the runner's one formatting of a mean ± sd)
  digits = 0 if metric == "steps" else 1
  return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def groups(rows: Sequence[dict]) -> list[tuple[dict, list[dict]]]:
  """The rows grouped by their overrides other than the seed, in order of first appearance."""
  out: dict[str, tuple[dict, list[dict]]] = {}
  for row in rows:
    key = {k: v for k, v in row["overrides"].items() if k not in SEED_KEYS}
    out.setdefault(json.dumps(key, sort_keys=True), (key, []))[1].append(row)
  return list(out.values())


def markdown(rows: Sequence[dict], title: str) -> str:
  """The table: the mean ± sd over seeds of each group of points (when a seed varies), then one
  row per point; accuracies and densities in %."""
  keys, metrics = _keys(rows), _metrics(rows)
  counts = {}
  for row in rows:
    counts[row["status"]] = counts.get(row["status"], 0) + 1
  lines = [f"# {title}", "",
           f"{len(rows)} points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
           + ". Accuracies and densities in %.", ""]
  group_keys = [k for k in keys if k not in SEED_KEYS]
  if any(k in keys for k in SEED_KEYS):
    header = group_keys + ["seeds"] + metrics
    lines += ["## Mean ± standard deviation over seeds", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in groups(rows):
      done = [r for r in members if r["summary"] is not None]
      cells = [_cell(key.get(k)) for k in group_keys] + [f"{len(done)}/{len(members)}"]
      for metric in metrics:
        s = report_lib._stats([_value(r, metric) for r in done])  # noqa: SLF001
        cells.append(_metric_cell(metric, s["mean"], s["std"]))
      lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Points", ""]
  header = ["point"] + keys + ["status"] + metrics
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["name"]] + [_cell(row["overrides"].get(k)) for k in keys] + [row["status"]]
    cells += [_metric_cell(m, _value(row, m)) for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"![test accuracy over the points]({REPORT_NAME}.png)", ""]
  return "\n".join(lines)


def csv_text(rows: Sequence[dict]) -> str:
  """One CSV row per point: name, status, overrides, metrics (raw values, fractions not %)."""
  keys, metrics = _keys(rows), _metrics(rows)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["point", "status"] + keys + metrics)
  for row in rows:
    values = [row["overrides"].get(k) for k in keys]
    writer.writerow([row["name"], row["status"]]
                    + ["" if v is None else _text(_jsonable(v)) for v in values]
                    + ["" if _value(row, m) is None else repr(row["summary"][m]) for m in metrics])
  return buffer.getvalue()


def _label(key: Mapping) -> str:
  return ", ".join(f"{k}={_cell(v)}" for k, v in key.items()) or "mean ± sd over seeds"


def _accuracy(row: dict) -> float | None:
  """The hard-masked network's accuracy where a method trains soft masks (PDP), else the one."""
  hard = _value(row, "test_accuracy_hard")
  return hard if hard is not None else _value(row, "test_accuracy")


def _density(row: dict) -> float | None:
  hard = _value(row, "density_hard")
  return hard if hard is not None else _value(row, "density")


def plot(rows: Sequence[dict], path: str, title: str) -> None:
  """Test accuracy (mean ± sd over seeds) against weights remaining, one line per method (the
  overrides other than seed and sparsity), when the sparsity varies; else one bar per group."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  keys = _keys(rows)
  lines: dict[str, list[tuple[float, float, float]]] = {}
  for key, members in groups(rows):
    done = [r for r in members if _accuracy(r) is not None and _density(r) is not None]
    if not done:
      continue
    accuracy = report_lib._stats([_accuracy(r) for r in done])  # noqa: SLF001
    density = float(np.mean([_density(r) for r in done]))
    method = _label({k: v for k, v in key.items() if k not in SPARSITY_KEYS})
    lines.setdefault(method, []).append((100 * density, 100 * accuracy["mean"],
                                         100 * (accuracy["std"] or 0.0)))
  against_sparsity = any(k in keys for k in SPARSITY_KEYS) and len(
      {x for points in lines.values() for x, _, _ in points}) > 1
  if against_sparsity:
    xs = set()
    for i, (method, points) in enumerate(lines.items()):
      points.sort(reverse=True)
      color = f"C{i % 10}"
      if len(points) == 1 and points[0][0] >= 99.95:  # a dense baseline: a level line
        ax.axhline(points[0][1], color=color, linestyle=":", linewidth=1.2, label=method)
        continue
      xs.update(p[0] for p in points)
      ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                  marker="o", capsize=3, color=color, label=method)
    ax.set_xscale("log")
    ax.set_xticks(sorted(xs))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
  else:
    labels = [method if len(points) == 1 else f"{method} ({x:.3g}%)"
              for method, points in lines.items() for x, _, _ in points]
    values = [p for points in lines.values() for p in points]
    ax.bar(range(len(values)), [v[1] for v in values], yerr=[v[2] for v in values], capsize=3,
           color=[f"C{i % 10}" for i in range(len(values))])
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(title, fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  if against_sparsity and lines:
    ax.legend(fontsize=8)
  report_lib.save_png(fig, path)


def write_report(root: str, points: Sequence[Point], title: str) -> str:
  """Writes ``ROOT/sweep.md``, ``sweep.csv`` and ``sweep.png`` over ``points``; the markdown."""
  _cpu_only()
  rows = collect(root, points)
  text = markdown(rows, title)
  os.makedirs(root, exist_ok=True)
  workdir_lib.write_text(os.path.join(root, f"{REPORT_NAME}.md"), text)
  workdir_lib.write_text(os.path.join(root, f"{REPORT_NAME}.csv"), csv_text(rows))
  plot(rows, os.path.join(root, f"{REPORT_NAME}.png"), title)
  return text


def dry_run(config_path: str, root: str, points: Sequence[Point]) -> str:
  """What a sweep would run: each point's index, status, workdir and command."""
  lines = []
  for point in points:
    lines.append(f"[{point.index}] {status(root, point):8s} {os.path.join(root, point.name)}")
    lines.append("    python " + " ".join(command(config_path, root, point)))
  lines.append(f"{len(points)} points (for a job array: indices 0-{len(points) - 1}).")
  return "\n".join(lines)

