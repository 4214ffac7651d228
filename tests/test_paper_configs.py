"""The papers' configs that need TFDS data run end to end on mock data (short step counts)."""

import importlib.util
import json
import os

import pytest
import tensorflow_datasets as tfds

from experiments import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shorten(config, **extra):
  config.steps, config.batch_size = "6it", 8
  config.eval_every = config.log_every = config.checkpoint_every = "3it"
  config.lr_milestones = ()
  config.lr_schedule = "constant"
  for key, value in extra.items():
    config[key] = value
  return config


def run_on_mock(config, workdir):
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
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
  summary = run_on_mock(shorten(load_config(name)), tmp_path)
  assert summary["steps"] == 6 and 0.0 <= summary["test_accuracy"] <= 1.0
