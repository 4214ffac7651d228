"""An IMP run extended in place (more levels, more replicates) equals a run made that way."""

import json

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import experiment

ROW_KEYS = ("level", "density", "test_accuracy", "best_test_accuracy", "early_stop_step")


def imp_config(**overrides):
  c = config_lib.defaults()
  c.protocol, c.dataset, c.batch_size, c.steps = "imp", "digits", 64, "80it"
  c.eval_every = c.log_every = c.checkpoint_every = "40it"
  c.controls = ("reinit",)
  for key, value in overrides.items():
    c[key] = value
  return c


def rows(summary):
  return [({k: r[k] for k in ROW_KEYS}, r["replicate_test_accuracy"],
           r["controls"]["reinit"]["test_accuracy"] if r["controls"] else None)
          for r in summary["levels"]]


def test_more_levels_and_replicates_extend_the_run(tmp_path):
  workdir = tmp_path / "extended"
  experiment.run(imp_config(levels=1, replicates=1), str(workdir))
  finished = workdir / "replicate_0" / "level_1" / "level.json"
  stamp = finished.stat().st_mtime_ns
  extended = experiment.run(imp_config(levels=2, replicates=2), str(workdir))
  assert finished.stat().st_mtime_ns == stamp  # the finished level was not trained again
  with open(workdir / "config.json") as f:
    assert (json.load(f)["levels"], extended["replicates"]) == (2, 2)

  direct = experiment.run(imp_config(levels=2, replicates=2), str(tmp_path / "direct"))
  assert rows(extended) == rows(direct)
  for name in ("masks.npz", "final_params.npz"):
    with np.load(workdir / "replicate_1" / "level_2" / name) as a, \
         np.load(tmp_path / "direct" / "replicate_1" / "level_2" / name) as b:
      for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("change", [{"levels": 0}, {"levels": 2, "prune_fraction": 0.5},
                                    {"replicates": 1, "levels": 1, "seed": 3}])
def test_other_changes_are_refused(tmp_path, change):
  experiment.run(imp_config(levels=1, replicates=1), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="different config"):
    experiment.run(imp_config(**{"levels": 1, "replicates": 1, **change}), str(tmp_path))
