"""Tests for configs/*.py and experiments/config.py: every config file loads and validates, the
published hyperparameters are the ones the configs claim, and bad configs fail loudly."""

import importlib.util
import pathlib

import ml_collections
import pytest

from experiments import config as config_lib
from experiments import models, registry, sparsifiers

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")
CONFIG_NAMES = [p.stem for p in CONFIG_FILES]
REQUIRED = ("lenet300_dense", "lenet300_magnitude", "lenet300_random_erk")
SHORT_RUNS = ("lenet300_quick", "digits_smoke")  # Deliberately not the published recipes.
STEPS_PER_EPOCH = 469  # Fashion-MNIST at batch 128; any positive value checks the arithmetic.


def _load(name: str) -> ml_collections.ConfigDict:
  path = CONFIG_DIR / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"configs_under_test.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.__doc__ and module.__doc__.strip(), (
      f"{path.name} needs a docstring citing its source")
  return module.get_config()


def _finalized(name: str) -> ml_collections.ConfigDict:
  return config_lib.finalize(_load(name))


def test_config_files_found():
  assert CONFIG_FILES, f"no config files in {CONFIG_DIR}"


@pytest.mark.parametrize("name", REQUIRED)
def test_required_configs_exist(name):
  assert name in CONFIG_NAMES


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_and_validates(name):
  config = _load(name)
  assert isinstance(config, ml_collections.ConfigDict)
  assert set(config.keys()) == set(config_lib.defaults().keys())
  config_lib.finalize(config)
  assert config.model in models.MODELS


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_is_fresh_each_call(name):
  first, second = _load(name), _load(name)
  first.seed = 12345
  assert second.seed != 12345


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_pruning_window_lies_inside_training(name):
  config = _finalized(name)
  steps = config_lib.parse_duration(config.steps, STEPS_PER_EPOCH, "steps")
  begin = config_lib.parse_duration(config.pruning_begin, STEPS_PER_EPOCH, "pruning_begin")
  end = config_lib.parse_duration(config.pruning_end, STEPS_PER_EPOCH, "pruning_end", total=steps)
  frequency = config_lib.parse_duration(config.pruning_frequency, STEPS_PER_EPOCH,
                                        "pruning_frequency")
  assert steps > 0 and frequency > 0
  if config.sparsifier == "magnitude":
    assert 0 <= begin < end <= steps


@pytest.mark.parametrize("name", [n for n in CONFIG_NAMES if n.startswith("lenet300")
                                  and n not in SHORT_RUNS])
def test_lenet_configs_follow_openlth(name):
  config = _finalized(name)
  assert config.model == "lenet300"
  assert config.dataset == "fashion_mnist"
  assert (config.optimizer, config.learning_rate, config.lr_schedule) == ("sgd", 0.1, "constant")
  assert config.batch_size == 128
  assert config.steps == "40ep"
  assert config.weight_decay == 0.0


def test_lenet_method_settings():
  assert _finalized("lenet300_dense").sparsifier == "dense"
  magnitude = _finalized("lenet300_magnitude")
  assert (magnitude.sparsifier, magnitude.final_sparsity, magnitude.distribution) == (
      "magnitude", 0.9, "uniform")
  assert (magnitude.pruning_begin, magnitude.pruning_end, magnitude.pruning_frequency) == (
      "2ep", "30ep", "100it")
  random_erk = _finalized("lenet300_random_erk")
  assert (random_erk.sparsifier, random_erk.distribution, random_erk.final_sparsity) == (
      "random", "erk", 0.9)
  snip = _finalized("lenet300_snip")
  assert (snip.sparsifier, snip.distribution, snip.final_sparsity) == ("snip", "global", 0.9)


def test_quick_and_smoke_configs():
  quick = _finalized("lenet300_quick")
  assert (quick.model, quick.dataset, quick.sparsifier, quick.final_sparsity) == (
      "lenet300", "fashion_mnist", "magnitude", 0.9)
  assert (quick.steps, quick.pruning_begin, quick.pruning_end, quick.eval_every) == (
      "3ep", "0ep", "2ep", "1ep")
  smoke = _finalized("digits_smoke")
  assert (smoke.dataset, smoke.model, smoke.sparsifier, smoke.batch_size) == (
      "digits", "lenet300", "magnitude", 64)
  assert (smoke.steps, smoke.eval_every, smoke.log_every, smoke.checkpoint_every) == (
      "200it", "50it", "50it", "100it")
  assert (smoke.pruning_begin, smoke.pruning_end, smoke.pruning_frequency) == (
      "0it", "150it", "25it")


@pytest.mark.parametrize("model,lr,steps", [("conv2", 2e-4, "20000it"), ("conv4", 3e-4, "25000it"),
                                            ("conv6", 3e-4, "30000it")])
def test_conv_configs_follow_lth_paper(model, lr, steps):
  config = _finalized(f"{model}_cifar10")
  assert (config.model, config.dataset, config.augment) == (model, "tfds:cifar10", True)
  assert (config.optimizer, config.learning_rate, config.lr_schedule) == ("adam", lr, "constant")
  assert (config.batch_size, config.steps) == (60, steps)
  assert (config.sparsifier, config.final_sparsity) == ("magnitude", 0.9)


@pytest.mark.parametrize("name", [n for n in CONFIG_NAMES if n.startswith(("vgg", "resnet"))])
def test_vgg_resnet_configs_follow_openlth(name):
  config = _finalized(name)
  assert (config.dataset, config.augment) == ("tfds:cifar10", True)
  assert (config.optimizer, config.momentum, config.learning_rate) == ("momentum", 0.9, 0.1)
  assert config.weight_decay == 1e-4
  assert config.lr_schedule == "step"
  assert tuple(config.lr_milestones) == ("80ep", "120ep")
  assert config.lr_gamma == 0.1
  assert (config.batch_size, config.steps) == (128, "160ep")
  if name.endswith("_lmc"):  # the LMC paper's late rewinding: IMP, not gradual pruning
    assert (config.protocol, config.rewind, config.distribution) == ("imp", "500it", "global")
  else:
    assert (config.protocol, config.sparsifier, config.final_sparsity) == ("train", "magnitude", 0.9)


def test_vgg16_and_resnet20_configs_exist():
  assert {"vgg16_cifar10", "resnet20_cifar10"} <= set(CONFIG_NAMES)


def test_finalize_locks_unknown_keys():
  config = config_lib.finalize(config_lib.defaults())
  with pytest.raises(AttributeError, match="bogus"):
    config.bogus = 1


def test_validate_names_an_extra_key():
  config = config_lib.defaults()
  config.bogus = 1
  with pytest.raises(config_lib.ConfigError, match="bogus"):
    config_lib.validate(config)


def test_bad_duration_names_the_key():
  config = config_lib.defaults()
  config.steps = "40 epochs"
  with pytest.raises(config_lib.ConfigError, match="steps"):
    config_lib.finalize(config)


@pytest.mark.parametrize("sparsity", [1.0, -0.1])
def test_final_sparsity_out_of_range(sparsity):
  config = config_lib.defaults()
  config.final_sparsity = sparsity
  with pytest.raises(config_lib.ConfigError, match="final_sparsity"):
    config_lib.finalize(config)


@pytest.mark.parametrize("value,steps_per_epoch,total,expected", [
    ("40ep", 469, None, 18760),
    ("500it", 469, None, 500),
    ("75%", 469, 1000, 750),
    ("0ep", 469, None, 0),
    ("0.5ep", 100, None, 50),
])
def test_parse_duration(value, steps_per_epoch, total, expected):
  assert config_lib.parse_duration(value, steps_per_epoch, total=total) == expected


@pytest.mark.parametrize("value,total", [("40 epochs", None), ("75%", None), ("1.5it", None),
                                         ("", None), ("ep", 10)])
def test_parse_duration_rejects(value, total):
  with pytest.raises(config_lib.ConfigError, match="my_key"):
    config_lib.parse_duration(value, 469, "my_key", total=total)


@pytest.mark.parametrize("key,value", [("prune_exclude", "("), ("prune_exclude", "a[b"),
                                       ("prune_fraction_overrides", "(=0.1"),
                                       ("prune_fraction_overrides", "output=0.1,conv[=0.2")])
def test_bad_regex_names_the_key(key, value):
  config = config_lib.defaults()
  config[key] = value
  with pytest.raises(config_lib.ConfigError, match=rf"^{key}: .* is not a regular expression"):
    config_lib.finalize(config)


def test_valid_regexes_pass():
  config = config_lib.defaults()
  config.prune_exclude = r"output|conv\d"
  config.prune_fraction_overrides = r"output=0.1,conv[12]=0.05"
  config_lib.finalize(config)
  assert config_lib.parse_overrides(config.prune_fraction_overrides) == {
      "output": 0.1, "conv[12]": 0.05}


@pytest.mark.parametrize("key, kind", [("sparsifier", registry.SPARSIFIERS),
                                      ("protocol", registry.PROTOCOLS)])
def test_names_come_from_the_registries(key, kind):
  config = config_lib.defaults()
  config[key] = "bogus"
  with pytest.raises(config_lib.ConfigError, match=f"{key}='bogus'") as error:
    config_lib.validate(config)
  for name in kind.names():
    assert repr(name) in str(error.value)


def test_registering_a_sparsifier_is_all_it_takes():
  """A registered sparsifier's name and keys are accepted, and its validation runs."""
  def validate(config):
    if config.bogus_level < 0:
      raise config_lib.ConfigError(f"bogus_level={config.bogus_level!r} must be >= 0.")

  sparsifiers.register("bogus", keys={"bogus_level": 1}, validate=validate)(sparsifiers.dense)
  try:
    config = config_lib.defaults()
    assert config.bogus_level == 1
    config.sparsifier = "bogus"
    config_lib.validate(config)
    config.bogus_level = -1
    with pytest.raises(config_lib.ConfigError, match="bogus_level=-1"):
      config_lib.validate(config)
  finally:
    registry.SPARSIFIERS.unregister("bogus")
  assert "bogus_level" not in config_lib.defaults()


def test_registry_refuses_a_second_entry_and_conflicting_defaults():
  with pytest.raises(ValueError, match="'magnitude' is registered already"):
    sparsifiers.register("magnitude")(sparsifiers.dense)
  with pytest.raises(ValueError, match="final_sparsity"):
    sparsifiers.register("other", keys={"final_sparsity": 0.5})(sparsifiers.dense)
  assert "other" not in registry.SPARSIFIERS.names()


@pytest.mark.parametrize("method, protocol, sparsifier", [
    ("magnitude", "train", "magnitude"), ("imp", "imp", "dense"), ("dense", "train", "dense")])
def test_method_is_shorthand_for_protocol_or_sparsifier(method, protocol, sparsifier):
  config = config_lib.defaults()
  config.method = method
  config_lib.finalize(config)
  assert (config.protocol, config.sparsifier, config.method) == (protocol, sparsifier, "")


def test_unknown_method_names_both_registries():
  config = config_lib.defaults()
  config.method = "bogus"
  with pytest.raises(config_lib.ConfigError, match="method='bogus'") as error:
    config_lib.finalize(config)
  for name in registry.PROTOCOLS.names() + registry.SPARSIFIERS.names():
    assert repr(name) in str(error.value)


ALL_METHODS = {"dense", "magnitude", "random", "snip", "grasp", "synflow", "set", "rigl", "sap",
               "pdp", "imp"}


@pytest.mark.parametrize("name,model", [("table_all_lenet300_fashion", "lenet300"),
                                        ("table_all_conv4_fashion", "conv4")])
def test_all_methods_tables(name, model):
  """Every method at 90% and 98% for seeds 0-2 (dense once per seed); the lottery tickets'
  levels end at the sparsity; every point is a valid config of the model."""
  spec = importlib.util.spec_from_file_location(f"configs_under_test.{name}",
                                                CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  points = list(module.sweep_all())
  method = lambda p: p.get("protocol") or p["sparsifier"]
  assert {method(p) for p in points} == ALL_METHODS
  cells = {}
  for p in points:
    cells.setdefault((method(p), p.get("final_sparsity")), []).append(p["seed"])
  assert cells.pop(("dense", None)) == [0, 1, 2]
  assert set(cells) == {(m, s) for m in ALL_METHODS - {"dense"} for s in (0.9, 0.98)}
  assert all(sorted(seeds) == [0, 1, 2] for seeds in cells.values())
  for p in points:
    config = module.get_config()
    config.update(p)
    assert config_lib.finalize(config).model == model
    if method(p) == "imp":
      assert (1 - p["prune_fraction"]) ** p["levels"] == pytest.approx(
          1 - p["final_sparsity"], rel=1e-5)
      assert config.sparsifier == "dense"  # the protocol prunes by itself
