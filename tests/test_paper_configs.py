"""The papers' configs that need TFDS data run end to end on mock data (short step counts)."""

import importlib.util
import json
import os

import pytest
import tensorflow_datasets as tfds

from experiments import config as config_lib
from experiments import experiment, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


STEPS = 6


def shorten(config, **extra):
  """``STEPS`` steps of batch 8; LR milestones stay at the same fractions of training."""
  # Any steps per epoch gives the fractions of durations written in one unit.
  total = config_lib.parse_duration(config.steps, 1000, "steps")
  config.lr_milestones = tuple(
      f"{round(STEPS * config_lib.parse_duration(m, 1000, 'lr_milestones') / total)}it"
      for m in config.lr_milestones)
  config.steps, config.batch_size = f"{STEPS}it", 8
  config.eval_every = config.log_every = config.checkpoint_every = "3it"
  for key, value in extra.items():
    config[key] = value
  return config


MOCK_EXAMPLES = 48


def run_on_mock(config, workdir):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    return experiment.run(config, str(workdir))


def test_lth_mnist_config(tmp_path):
  config = load_config("lth_lenet300_mnist")
  assert (config.dataset, config.optimizer, config.learning_rate, config.batch_size) == (
      "tfds:mnist", "adam", 1.2e-3, 60)
  assert config.prune_fraction_overrides == "output=0.1" and config.steps == "50000it"
  summary = run_on_mock(shorten(config, levels=2, replicates=2), tmp_path)
  assert [row["level"] for row in summary["levels"]] == [0, 1, 2]
  assert set(summary["levels"][1]["controls"]) == {"reinit", "shuffle_layerwise"}
  assert summary["levels"][2]["density"] < summary["levels"][1]["density"] < 1.0
  assert (tmp_path / "report.png").exists()


def test_resnet20_late_rewinding_config(tmp_path):
  config = load_config("resnet20_cifar10_lmc")
  assert (config.model, config.dataset, config.rewind, config.instability) == (
      "resnet20", "tfds:cifar10", "500it", True)
  assert config.instability_alphas == 30 and config.distribution == "global"
  summary = run_on_mock(
      shorten(config, levels=1, rewind="2it", instability_alphas=3, controls=()),
      tmp_path)
  rows = summary["levels"]
  assert summary["rewind_step"] == 2 and len(rows) == 2
  for row in rows:
    assert set(row["instability"]) == {"barrier", "barrier_std", "stable"}
  with open(tmp_path / "replicate_0" / "level_1" / "instability" / "barrier.json") as f:
    barrier = json.load(f)
  assert len(barrier["alphas"]) == 3 and barrier["alphas"][0] == 0.0


@pytest.mark.parametrize(
    "name", ["conv2_cifar10", "conv4_cifar10", "conv6_cifar10", "vgg16_cifar10", "resnet20_cifar10"])
def test_cifar_configs_train_on_mock_data(name, tmp_path):
  published = load_config(name)
  config = shorten(load_config(name))
  assert (config.optimizer, config.weight_decay, config.lr_schedule) == (
      published.optimizer, published.weight_decay, published.lr_schedule)
  if config.lr_schedule == "step":  # 80ep and 120ep of 160ep: steps 3 and 4 (of 6)
    assert tuple(config.lr_milestones) == ("3it", "4it")
    durations = trainer.Durations.from_config(config, MOCK_EXAMPLES)
    lr = trainer.learning_rate_schedule(config, durations)
    assert [float(lr(s)) for s in (2, 3, 4)] == pytest.approx(
        [config.learning_rate * config.lr_gamma ** k for k in range(3)], rel=1e-5)
  summary = run_on_mock(config, tmp_path)
  assert summary["steps"] == STEPS and 0.0 <= summary["test_accuracy"] <= 1.0
  # Pruned to exactly the target: every prunable layer keeps round(density * size) weights.
  assert config.sparsifier == "magnitude" and config.distribution == "uniform"
  with open(tmp_path / "sparsity_report.json") as f:
    report = json.load(f)
  assert report and all(r["kept"] == round((1 - config.final_sparsity) * r["total"])
                        for r in report), report
  assert summary["density"] == sum(r["kept"] for r in report) / sum(r["total"] for r in report)
