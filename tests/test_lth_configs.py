"""The lottery-ticket configs carry the issue's settings, and the CLI points at the figure.

``configs/lth_lenet300_fashion.py`` is the LTH paper's LeNet-300-100 experiment (Frankle & Carbin
2019) on Fashion-MNIST; ``configs/lth_quick.py`` is a short run of it; and
``configs/resnet20_cifar10_lmc.py`` is late rewinding with instability (Frankle et al. 2020).
"""

import subprocess
import sys
from pathlib import Path

import jax

from configs import lth_lenet300_fashion, lth_quick, openlth_lenet300_fashion, resnet20_cifar10_lmc
from experiments import config as config_lib
from experiments import models
from sparsejax import lottery
from sparsejax import masks as masks_lib

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 1000  # Fashion-MNIST at batch 60; any positive value checks the arithmetic.
RANDOM_MASKS = {"shuffle_layerwise", "shuffle_global"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def steps(config, key="steps"):
  return config_lib.parse_duration(config[key], STEPS_PER_EPOCH, key)


def test_fashion_config_has_the_issue_settings():
  config = config_lib.finalize(lth_lenet300_fashion.get_config())
  assert (config.protocol, config.model, config.dataset) == ("imp", "lenet300", "fashion_mnist")
  assert config.prune_fraction == 0.2
  assert config.levels >= 10
  assert config.replicates == 3
  assert "reinit" in config.controls and RANDOM_MASKS & set(config.controls)
  # The LTH paper's training: Adam 1.2e-3, batch 60, 50,000 iterations, rewinding to theta_0.
  assert (config.optimizer, config.learning_rate, config.batch_size) == ("adam", 1.2e-3, 60)
  assert (steps(config), steps(config, "rewind")) == (50_000, 0)
  # 20% per level for the hidden layers, 10% for the output layer of the real LeNet-300-100.
  _, params, _ = models.create("lenet300", num_classes=10, input_shape=(28, 28, 1),
                              key=jax.random.key(0))
  fractions = lottery.layer_fractions(masks_lib.ones_like(params), config.prune_fraction,
                                      config_lib.parse_overrides(config.prune_fraction_overrides))
  assert fractions == {"['dense1']['kernel']": 0.2, "['dense2']['kernel']": 0.2,
                       "['output']['kernel']": 0.1}


def test_quick_config_is_a_short_fashion_run():
  full = config_lib.finalize(lth_lenet300_fashion.get_config())
  quick = config_lib.finalize(lth_quick.get_config())
  differing = {key for key in full.keys() if full[key] != quick[key]}
  assert differing <= {"steps", "levels", "replicates", "controls", "log_every",
                       "checkpoint_every"}, differing
  assert 0 < steps(quick) < steps(full)
  assert 1 <= quick.levels <= full.levels and quick.replicates <= full.replicates
  assert set(quick.controls) <= set(full.controls)


def test_resnet20_lmc_config_rewinds_to_500_iterations_with_instability():
  config = config_lib.finalize(resnet20_cifar10_lmc.get_config())
  assert (config.protocol, config.model, config.dataset) == ("imp", "resnet20", "tfds:cifar10")
  assert config.rewind == "500it" and steps(config, "rewind") == 500
  assert config.instability is True and config.instability_alphas == 30


def test_cli_prints_the_figure_path_of_an_imp_run(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--config=configs/lth_quick.py",
       f"--workdir={workdir}", "--config.dataset=digits", "--config.steps=30it",
       "--config.eval_every=15it", "--config.log_every=15it", "--config.checkpoint_every=15it",
       "--config.levels=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert f"figure: {workdir / 'report.png'}" in lines, result.stdout
  with open(workdir / "report.png", "rb") as f:
    assert f.read(8) == PNG_MAGIC
  assert any(line.startswith("| 1 |") for line in lines), result.stdout


def test_openlth_config_is_the_mnist_lenet_300_100_preset():
  """OpenLTH's preset: kaiming-normal weights, PyTorch biases, sparse_global at 20% with the
  output layer never pruned, SGD 0.1 (no momentum), batch 128, 40 epochs, rewinding to init."""
  config = config_lib.finalize(openlth_lenet300_fashion.get_config())
  assert (config.protocol, config.sparsifier, config.model) == ("imp", "dense", "lenet300")
  assert (config.model_init, config.bias_init) == ("kaiming_normal", "pytorch")
  assert (config.optimizer, config.learning_rate, config.lr_schedule) == ("sgd", 0.1, "constant")
  assert (config.batch_size, config.steps, config.weight_decay) == (128, "40ep", 0.0)
  assert (config.distribution, config.prune_fraction, steps(config, "rewind")) == ("global", 0.2, 0)
  model, params, _ = models.create("lenet300", num_classes=10, input_shape=(28, 28, 1),
                                   key=jax.random.key(0), model_init=config.model_init,
                                   bias_init=config.bias_init)
  prunable = masks_lib.prunable_paths(params, masks_lib.rule(exclude=config.prune_exclude))
  assert prunable == ["['dense1']['kernel']", "['dense2']['kernel']"]
  # PyTorch's nn.Linear biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zeros.
  bias = params["dense1"]["bias"]
  assert 0.0 < float(abs(bias).max()) <= 1 / 28.0
