r"""Runs a sparse-training experiment from a config file.

  python -m experiments.main --config=configs/lenet300_magnitude.py --workdir=runs/gmp90 \
      --config.seed=1 --config.final_sparsity=0.95

Run the same command again to resume from the latest checkpoint in --workdir. User errors (an
unknown config key, a wrong value, a missing dataset, an unwritable workdir, a diverging loss)
stop the run with one line that names the problem; what the workdir already holds is kept.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import data as data_lib
from experiments import experiment
from experiments.config import ConfigError
from experiments.trainer import TrainingError

config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

USER_ERRORS = (ConfigError, data_lib.DatasetNotFoundError, TrainingError)


def _quiet_libraries(record) -> bool:
  """Keeps INFO lines of the runner; shows only warnings and errors of orbax and friends."""
  return record.levelno >= std_logging.WARNING or "/experiments/" in record.pathname


def main(argv):
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_quiet_libraries)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    summary = experiment.run(FLAGS.config, FLAGS.workdir)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  logging.info("summary: %s", summary)
  print(f"test accuracy {summary['test_accuracy']:.4f} at density {summary['density']:.4f}; "
        f"results in {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
