r"""Runs a sparse-training experiment from a config file.

  python -m experiments.main --config=configs/lenet300_magnitude.py --workdir=runs/gmp90 \
      --config.seed=1 --config.final_sparsity=0.95

Run the same command again to resume from the latest checkpoint in --workdir. User errors (an
unknown config key, a wrong value, a missing dataset, an unwritable workdir, a full disk, a
diverging loss) stop the run with one line that names the problem; what the workdir already
holds is kept. SIGTERM (a preemption) saves a checkpoint at the end of the running chunk of steps
and exits with status 143 and a message; the same command resumes.
"""

import logging as std_logging
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import data as data_lib
from experiments import experiment, protocols, trainer, workdir
from experiments.config import ConfigError, defaults

config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

USER_ERRORS = (ConfigError, data_lib.DatasetNotFoundError, trainer.TrainingError)
PREEMPTED_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines of the runner; shows only warnings and errors of orbax and friends."""
  return record.levelno >= std_logging.WARNING or "/experiments/" in record.pathname


def parse_flags(argv):
  """absl's flag parsing, with an unknown ``--config.KEY`` reported in one line, not a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    valid = set(defaults().keys())
    keys = [a.split("=")[0][len("--config."):] for a in argv[1:] if a.startswith("--config.")]
    unknown = [key for key in keys if key.split(".")[0] not in valid]
    if not unknown:
      raise
    print(f"error: unknown config key(s) {unknown}; valid keys: {sorted(valid)}.", file=sys.stderr)
    sys.exit(1)


def main(argv):
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_quiet_libraries)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # A SIGTERM (how TPU pods and SLURM preempt a job) between two trainings stops the next one.
  previous = signal.signal(signal.SIGTERM, trainer.request_stop)
  try:
    summary = experiment.run(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except trainer.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(PREEMPTED_STATUS)
  except Exception as e:  # a full disk surfaces from many writers (orbax, numpy, json)
    if not workdir.disk_full(e):
      raise
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: no space left on the device of workdir={FLAGS.workdir!r} ({first_line}); free "
          "some space and run the same command again: the run resumes from its last checkpoint.",
          file=sys.stderr)
    sys.exit(1)
  finally:
    signal.signal(signal.SIGTERM, previous)
  logging.info("summary: %s", summary)
  print(protocols.report(FLAGS.config.protocol, summary, FLAGS.workdir))


def run(argv) -> None:
  """The command line, callable from Python (e.g. after registering a sparsifier or protocol):
  ``run(["main", "--config=c.py", "--workdir=w"])``."""
  saved, sys.argv = sys.argv, list(argv)  # config_flags reads the overrides from sys.argv
  level = logging.get_absl_logger().level  # parsing sets absl's verbosity: keep the caller's
  try:
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if n.startswith("config.")]:  # an earlier run's overrides
      delattr(FLAGS, name)
    main(parse_flags(sys.argv))
  finally:
    sys.argv = saved
    logging.get_absl_logger().setLevel(level)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
