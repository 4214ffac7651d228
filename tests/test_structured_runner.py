"""The runner's ``structured`` protocol end to end: a group sparsifier trains, the network is
compressed, the compressed network is evaluated, saved, and fine-tuned again from its workdir."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import experiment, models
from experiments.parsing import ConfigError
from test_paper_configs import load_config, run_on_mock, shorten

SUMMARY_KEYS = {"group_sparsity", "groups_total", "groups_zero", "widths_before", "widths_after",
                "params_before", "params_after", "flops_before", "flops_after", "test_accuracy",
                "test_accuracy_compressed"}


def digits_config(name="hesso_mlp_fashion", **overrides):
  """A structured config on digits: 80 steps of batch 64, pruning from step 10 over 40 steps."""
  c = load_config(name)
  c.dataset = "digits"
  c.batch_size = 64
  c.steps = "80it"
  c.lr_milestones = ("60it",)
  c.eval_every = c.log_every = c.checkpoint_every = "40it"
  c.start_pruning_step = "10it"
  c.pruning_periods = 4
  c.pruning_steps = "40it"
  for key, value in overrides.items():
    c[key] = value
  return c


def read(path):
  with open(path) as f:
    return json.load(f)


def assert_compressed_equals_group_sparse(summary, num_test):
  # The same function: at most a rounding-level tie can flip one prediction.
  assert abs(summary["test_accuracy_compressed"] - summary["test_accuracy"]) <= 1 / num_test


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_hesso_mlp_removes_exactly_the_target_and_compresses(tmp_path, target):
  summary = experiment.run(digits_config(target_group_sparsity=target), str(tmp_path))
  assert SUMMARY_KEYS <= set(summary)
  assert summary["groups_total"] == 400  # 300 + 100 hidden neurons; the output is never grouped
  assert summary["groups_zero"] == math.floor(400 * target)
  assert summary["group_sparsity"] == summary["groups_zero"] / 400
  assert summary["widths_before"] == {"dense1": 300, "dense2": 100}
  assert sum(summary["widths_after"].values()) == 400 - summary["groups_zero"]
  w1, w2 = summary["widths_after"]["dense1"], summary["widths_after"]["dense2"]
  assert summary["params_after"] == 64 * w1 + w1 + w1 * w2 + w2 + w2 * 10 + 10
  assert summary["params_before"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
  assert summary["flops_after"] == 64 * w1 + w1 * w2 + w2 * 10
  assert_compressed_equals_group_sparse(summary, 360)
  widths = read(tmp_path / "compressed" / "widths.json")
  assert widths == summary["widths_after"]
  with np.load(tmp_path / "compressed" / "params.npz") as f:
    assert f["['dense1']['kernel']"].shape == (64, w1)
    assert f["['dense2']['kernel']"].shape == (w1, w2)
  assert "400 groups" in (tmp_path / "groups.txt").read_text()
  assert read(tmp_path / "summary.json")["groups_zero"] == summary["groups_zero"]


def test_compressed_network_fine_tunes_from_its_workdir(tmp_path):
  first = experiment.run(digits_config(target_group_sparsity=0.5), str(tmp_path / "a"))
  again = digits_config(protocol="train", sparsifier="dense", init_from=str(tmp_path / "a"),
                        steps="20it")
  again.eval_every = again.log_every = again.checkpoint_every = "20it"
  summary = experiment.run(again, str(tmp_path / "b"))
  assert summary["steps"] == 20
  with np.load(tmp_path / "b" / "masks.npz") as f:
    assert f["['dense1']['kernel']"].shape == (64, first["widths_after"]["dense1"])
  # Starting from the compressed params: the first evaluation is the compressed network's.
  rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert rows[0]["step"] == 0
  assert rows[0]["test_accuracy"] == pytest.approx(first["test_accuracy_compressed"], abs=1e-6)


def test_widths_key_builds_a_narrower_model(tmp_path):
  config = digits_config(protocol="train", sparsifier="dense", widths="dense1=20,dense2=7",
                         steps="10it")
  config.eval_every = config.log_every = config.checkpoint_every = "10it"
  experiment.run(config, str(tmp_path))
  with np.load(tmp_path / "masks.npz") as f:
    assert f["['dense1']['kernel']"].shape == (64, 20)
    assert f["['output']['kernel']"].shape == (7, 10)


@pytest.mark.parametrize("method", ["hesso_cric", "hspg", "dhspg"])
def test_other_group_sparsifiers_compress_exactly(tmp_path, method):
  config = digits_config(method=method, sparsifier="dense", protocol="train")
  summary = experiment.run(config, str(tmp_path))
  assert summary["protocol"] == "structured" and summary["sparsifier"] == method
  assert_compressed_equals_group_sparse(summary, 360)
  assert summary["params_after"] <= summary["params_before"]
  if method == "hesso_cric":
    assert summary["groups_zero"] == math.floor(400 * config.target_group_sparsity)


def test_cnn_with_batchnorm_compresses_exactly_at_rounded_widths(tmp_path):
  summary = experiment.run(digits_config("hesso_cnn_fashion", target_group_sparsity=0.5,
                                         compress_multiple=8), str(tmp_path))
  assert summary["groups_total"] == 32 + 64 + 128
  assert summary["groups_zero"] == 112
  # Widths rounded up to multiples of 8 (zero groups kept), still the group-sparse function.
  assert all(w % 8 == 0 for w in summary["widths_after"].values())
  assert sum(summary["widths_after"].values()) >= 224 - 112
  assert read(tmp_path / "compressed" / "widths.json") == summary["widths_after"]
  assert summary["flops_after"] < summary["flops_before"]
  assert_compressed_equals_group_sparse(summary, 360)


def test_cifar_structured_configs_follow_otos_tutorial_recipe():
  vgg, resnet = load_config("hesso_vgg16_cifar10"), load_config("hesso_resnet20_cifar10")
  recipe = lambda c: (c.protocol, c.sparsifier, c.optimizer, c.learning_rate, c.weight_decay,
                      c.target_group_sparsity, c.start_pruning_step, c.pruning_periods,
                      c.pruning_steps, c.steps, tuple(c.lr_milestones), c.batch_size, c.augment)
  assert recipe(vgg) == ("structured", "hesso", "momentum", 0.1, 1e-4, 0.7, "10ep", 10, "10ep",
                         "100ep", ("50ep",), 64, True)
  assert recipe(resnet) == recipe(vgg) and (vgg.model, resnet.model) == ("vgg16", "resnet20")


def test_cifar_structured_config_runs_on_mock_data(tmp_path):
  """ResNet-20 (residual groups tied across a stage) with the tutorial recipe; VGG-16's groups
  are checked by tests/test_discover.py, its recipe is the same."""
  config = shorten(load_config("hesso_resnet20_cifar10"), start_pruning_step="1it",
                   pruning_periods=2, pruning_steps="4it", target_group_sparsity=0.5)
  summary = run_on_mock(config, tmp_path)
  assert summary["groups_zero"] == math.floor(summary["groups_total"] * 0.5)
  model = models.build(config.model, num_classes=10, input_shape=(32, 32, 3),
                       widths=summary["widths_after"])
  assert model.widths == summary["widths_after"]
  assert summary["params_after"] < summary["params_before"]


@pytest.mark.parametrize("overrides, message", [
    ({"protocol": "structured", "sparsifier": "magnitude"}, "group sparsifier"),
    ({"widths": "dense1=0"}, "dense1=0"),
    ({"widths": "dense9=10"}, "dense9"),
    ({"init_from": "/nonexistent"}, "compressed network"),
    ({"target_group_sparsity": 1.0}, "target_group_sparsity"),
    ({"pruning_periods": 0}, "pruning_periods"),
    ({"compress_multiple": 0}, "compress_multiple=0"),
])
def test_structured_config_errors_name_the_key(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    experiment.run(digits_config(**overrides), str(tmp_path))


def test_method_shorthand_selects_the_structured_protocol():
  config = config_lib.defaults()
  config.method = "hesso"
  config = config_lib.finalize(config)
  assert (config.protocol, config.sparsifier, config.method) == ("structured", "hesso", "")


@pytest.mark.parametrize("method", ["hesso", "dhspg"])
def test_structured_replicates_vectorized_equal_one_after_another(tmp_path, method):
  """replicates=2: each replicate compresses as its separate run would; vectorize=True trains
  both in one program with the same results."""
  extra = {} if method == "hesso" else {"method": method, "sparsifier": "dense",
                                        "protocol": "train"}
  runs = {v: experiment.run(digits_config(target_group_sparsity=0.5, replicates=2,
                                          vectorize=v, **extra), str(tmp_path / str(v)))
          for v in (False, True)}
  seq, vec = runs[False], runs[True]
  assert seq["seeds"] == vec["seeds"] == [0, 1]
  for i, (a, b) in enumerate(zip(seq["runs"], vec["runs"])):
    assert a["groups_zero"] == b["groups_zero"], i
    assert a["widths_after"] == b["widths_after"], i
    for key in ("test_accuracy", "test_accuracy_compressed", "test_loss"):
      assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (i, key)
    directory = tmp_path / "True" / f"replicate_{i}"
    assert read(directory / "summary.json")["seed"] == i
    assert (directory / "compressed" / "widths.json").exists()
    assert "400 groups" in (directory / "groups.txt").read_text()
    assert_compressed_equals_group_sparse(b, 360)
  assert vec["test_accuracy_compressed"] == pytest.approx(
      np.mean([r["test_accuracy_compressed"] for r in vec["runs"]]))
