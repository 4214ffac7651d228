r"""Runs a sweep defined in a config file: every point in its own workdir, then one table.

A config file defines sweeps next to ``get_config()``: functions ``sweep_<name>()`` returning
dicts of config overrides (:mod:`experiments.sweep_lib`; ``configs/digits_smoke.py`` has a
4-point ``sweep_smoke``, ``configs/table_lenet300_fashion.py`` a whole table)::

  python -m experiments.sweep --config=configs/digits_smoke.py --sweep=smoke --root=runs/smoke
  python -m experiments.sweep --config=configs/digits_smoke.py --sweep=smoke --root=runs/smoke \
      --dry_run                       # the points, their status, workdirs and commands

Each point runs ``python -m experiments.main --config=... --workdir=ROOT/<point>
--config.key=value ...`` in a child process, in ``ROOT/<point>`` named by its overrides
(``final_sparsity=0.9,seed=1-3f2a9c``). Run the same command again after an interruption:
finished points are skipped, interrupted ones resume from their last checkpoint. The sweep ends
with ``ROOT/sweep.md`` (printed), ``ROOT/sweep.csv`` and ``ROOT/sweep.png``: one row per point and
the mean ± sd over seeds, test accuracy against weights remaining per method. ``--report_only``
writes them from what the root holds (without ``--config``: every point recorded in the root).

Launchers, all from the same definition:

``--launcher=local`` (default): the points one after another on this machine, or
``--parallel=N`` of them at once. On Linux each then runs on its own share of the cores
(``--nopin_cores``: they share them all): XLA:CPU uses every core it may for one point, but not
fully, and on 2 cores two pinned points train more steps per second in all than one point or two
that share the cores (``benchmarks/sweep_overhead.py``). On a single GPU several points need
``XLA_PYTHON_CLIENT_MEM_FRACTION``.

``--launcher=ray``: one Ray task per point (``pip install 'sparsejax[sweep]'``), asking for
``--ray_num_cpus`` (1), ``--ray_num_gpus`` (0) and ``--ray_resources`` (JSON), on the cluster at
``--ray_address`` (``auto``: the one this machine belongs to) or on a local one started for the
sweep. The cluster's nodes need this checkout at the same path and the root on a shared
filesystem::

  python -m experiments.sweep --config=configs/table_lenet300_fashion.py --sweep=methods \
      --root=/shared/runs/table_lenet300 --launcher=ray --ray_address=auto --ray_num_gpus=1

On a TPU pod slice run as a Ray cluster (Ray's TPU support: every host a node with its chips as
the ``TPU`` resource), ``--ray_resources='{"TPU": 4}'`` gives each point the 4 chips of one v4
host, so the slice's hosts take points side by side.

``--launcher=index``: point ``--sweep_index=i`` only (default: ``$SLURM_ARRAY_TASK_ID``, or
``$JOB_COMPLETION_INDEX`` in a Kubernetes indexed job), so that a job array drives the sweep; the
table comes from ``--report_only`` once the array is done. A SLURM array (``--dry_run`` prints
the number of points), ``sweep.sbatch``::

  #!/bin/bash
  #SBATCH --job-name=lenet300-table
  #SBATCH --array=0-26%8              # 27 points, at most 8 at once
  #SBATCH --cpus-per-task=4
  #SBATCH --mem=8G
  #SBATCH --time=04:00:00
  #SBATCH --output=runs/table_lenet300/slurm-%A_%a.out
  #SBATCH --signal=B:TERM@120         # near the time limit: checkpoint, exit 143
  #SBATCH --requeue                   # a preempted point is requeued and resumes
  cd "$SLURM_SUBMIT_DIR"
  exec .venv/bin/python -m experiments.sweep --config=configs/table_lenet300_fashion.py \
      --sweep=methods --root=runs/table_lenet300 --launcher=index

  jid=$(sbatch --parsable sweep.sbatch)
  sbatch --dependency=afterany:$jid --wrap ".venv/bin/python -m experiments.sweep \
      --config=configs/table_lenet300_fashion.py --sweep=methods --root=runs/table_lenet300 \
      --report_only"

Submitting the same array again runs only what is unfinished (a finished point exits at once).
With submitit, from Python in the checkout::

  import functools
  import submitit
  from experiments import sweep_lib

  config, sweeps, root = "configs/table_lenet300_fashion.py", ["methods"], "runs/table_lenet300"
  points = sweep_lib.load_points(config, sweeps)
  executor = submitit.AutoExecutor(folder=f"{root}/submitit")
  executor.update_parameters(timeout_min=240, cpus_per_task=4, slurm_array_parallelism=8)
  jobs = executor.map_array(functools.partial(sweep_lib.run_index, config, sweeps, root),
                            range(len(points)))
  print([job.result() for job in jobs])  # exit statuses, 0 for a finished point
  print(sweep_lib.write_report(root, points, "LeNet-300-100 on Fashion-MNIST"))

Exit status: 0 when every point finished; 1 when one failed (its ``ROOT/<point>/sweep.log`` says
why) or the sweep is wrong (one line naming the problem: an unknown sweep, config key or value);
143 after SIGTERM to the local launcher (the running points checkpoint first); with
``--launcher=index``, the point's (143 when it was stopped by SIGTERM: requeue it).
"""

import json
import os
import sys

from absl import app, flags

from experiments import sweep_lib
from experiments.parsing import ConfigError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags: defined only when this module runs as the program, since
  ``experiments.main`` owns ``--config`` in absl's flags of a process that imports both."""
  flags.DEFINE_string("config", None, "Config file with get_config() and sweep_<name>().")
  flags.DEFINE_list("sweep", [], "Sweep(s) to run: NAME of sweep_NAME(), comma-separated.")
  flags.DEFINE_string("root", None, "Directory of the points' workdirs and of the table.")
  flags.DEFINE_enum("launcher", "local", ["local", "ray", "index"], "Where the points run.")
  flags.DEFINE_integer("parallel", 1, "local: points run at once.", lower_bound=1)
  flags.DEFINE_bool("pin_cores", True, "local, --parallel > 1: each running point has its own "
                    "share of this machine's cores (Linux), which on CPUs trains more steps per "
                    "second in all than points sharing every core.")
  flags.DEFINE_integer("sweep_index", None, "index: the point to run (default: "
                       "$SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX).", lower_bound=0)
  flags.DEFINE_string("ray_address", None, "ray: the cluster ('auto', 'HOST:PORT'); default: "
                      "$RAY_ADDRESS, else a local cluster started for the sweep.")
  flags.DEFINE_float("ray_num_cpus", 1.0, "ray: CPUs each point asks for.", lower_bound=0)
  flags.DEFINE_float("ray_num_gpus", 0.0, "ray: GPUs each point asks for.", lower_bound=0)
  flags.DEFINE_string("ray_resources", "", "ray: other resources each point asks for, as JSON, "
                      "e.g. '{\"TPU\": 4}'.")
  flags.DEFINE_bool("dry_run", False, "List the points, their status, workdirs and commands.")
  flags.DEFINE_bool("report_only", False, "Only write the table and plot of what ROOT holds.")
  flags.mark_flag_as_required("root")


def _resources(text: str) -> dict:
  try:
    resources = json.loads(text) if text.strip() else {}
  except json.JSONDecodeError as e:
    raise ConfigError(f"ray_resources={text!r} is not JSON ({e}); write e.g. "
                      "'{\"TPU\": 4}'.") from None
  if not isinstance(resources, dict) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) for v in resources.values()):
    raise ConfigError(f"ray_resources={text!r}: give a JSON object of amounts, e.g. "
                      "'{\"TPU\": 4}'.")
  return resources


def sweep(argv) -> int:
  """The sweep the flags ask for; the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = FLAGS.root
  if FLAGS.report_only and not FLAGS.config and not FLAGS.dry_run:
    points = sweep_lib.points_in(root)
    if not points:
      raise ConfigError(f"root={root!r} holds no point of a sweep ({sweep_lib.POINT_FILE}).")
    title = f"Sweep in {root}"
  else:
    if not FLAGS.config:
      raise ConfigError("give the sweep's config file: --config=configs/X.py.")
    points = sweep_lib.load_points(FLAGS.config, FLAGS.sweep)
    title = f"Sweep {','.join(FLAGS.sweep)} of {FLAGS.config}"
  if FLAGS.dry_run:
    print(sweep_lib.dry_run(FLAGS.config, root, points))
    return 0
  if FLAGS.report_only:
    print(sweep_lib.write_report(root, points, title))
    return 0
  if FLAGS.launcher == "index":
    return sweep_lib.run_index(FLAGS.config, FLAGS.sweep, root, FLAGS.sweep_index)
  if FLAGS.launcher == "ray":
    results = sweep_lib.run_ray(FLAGS.config, root, points, FLAGS.ray_address,
                                FLAGS.ray_num_cpus, FLAGS.ray_num_gpus,
                                _resources(FLAGS.ray_resources))
  else:
    results = sweep_lib.run_local(FLAGS.config, root, points, FLAGS.parallel,
                                  pin_cores=FLAGS.pin_cores)
  print(sweep_lib.write_report(root, points, title))
  print(f"table: {os.path.join(root, 'sweep.md')}, {os.path.join(root, 'sweep.csv')}; "
        f"figure: {os.path.join(root, 'sweep.png')}")
  if FLAGS.launcher == "local" and None in results.values():
    print("preempted: the sweep stopped on SIGTERM; run the same command to finish it.",
          file=sys.stderr)
    return sweep_lib.PREEMPTED_STATUS
  failed = sorted(name for name, code in results.items() if code != 0)
  if failed:
    print(f"error: {len(failed)} of {len(points)} points failed: {failed}; see "
          f"{os.path.join(root, '<point>', sweep_lib.LOG_FILE)}.", file=sys.stderr)
    return 1
  return 0


def main(argv):
  try:
    code = sweep(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    code = 1
  sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main)
