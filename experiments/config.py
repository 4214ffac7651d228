"""The runner's configuration: defaults, validation, and step counts in iterations or epochs.

Every experiment is an ``ml_collections.ConfigDict`` built from :func:`defaults` by a file in
``configs/`` (``get_config()``), overridable on the command line (``--config.key=value``). The
dict is locked: a key that :func:`defaults` does not define is an error, and so is a value of the
wrong type. Durations are strings: ``"40ep"`` (epochs) or ``"500it"`` (iterations).
"""

from __future__ import annotations

import re

import ml_collections

CONTROLS = ("reinit", "shuffle_layerwise", "shuffle_global")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")
DISTRIBUTIONS = ("uniform", "er", "erk", "global")


class ConfigError(ValueError):
  """A configuration value that cannot be used; the message names it and what would be right."""


def defaults() -> ml_collections.ConfigDict:
  """Every key the runner understands, with the values of a short LeNet-300-100 run."""
  c = ml_collections.ConfigDict()
  c.method = "dense"
  c.model = "lenet300"
  c.dataset = "fashion_mnist"
  c.data_dir = ""                # '' = the dataset's default location
  c.train_subset = 0             # 0 = all examples; n = the first n (small test runs)
  c.test_subset = 0
  c.seed = 0
  c.augment = False              # random crop + flip (CIFAR-style models)

  c.batch_size = 128
  c.steps = "40ep"               # training length: "Nep" or "Nit"
  c.eval_every = "1ep"
  c.log_every = "1ep"
  c.checkpoint_every = "5ep"

  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9               # for momentum / nesterov
  c.weight_decay = 0.0           # L2 (coupled) for sgd/momentum/nesterov/adam, decoupled for adamw
  c.lr_schedule = "constant"
  c.lr_milestones = ()           # for "step": e.g. ("80ep", "120ep")
  c.lr_gamma = 0.1
  c.warmup = "0it"

  # Sparsity (see sparsejax.distributions, sparsejax.schedules).
  c.final_sparsity = 0.9
  c.distribution = "uniform"     # uniform | er | erk | global
  c.prune_exclude = ""           # regex of param paths never pruned, e.g. "output"
  c.pruning_begin = "0it"        # magnitude: polynomial schedule of Zhu & Gupta
  c.pruning_end = "75%"          # a duration, or a percentage of the training steps
  c.pruning_frequency = "100it"
  c.pruning_power = 3.0
  c.snip_batch_size = 128

  # Lottery tickets: iterative magnitude pruning with rewinding (method "imp"); distribution
  # "global" ranks all prunable weights together, "uniform" prunes every layer by the fraction.
  c.levels = 10
  c.prune_fraction = 0.2
  c.prune_fraction_overrides = ""  # "regex=fraction,...", e.g. "output=0.1"
  c.rewind = "0it"
  c.reset_optimizer = True         # OpenLTH re-creates the optimizer at every level
  c.controls = ()                  # any of "reinit", "shuffle_layerwise", "shuffle_global"
  c.replicates = 1
  c.instability = False            # linear mode connectivity of two copies at every level
  c.instability_alphas = 30
  return c


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config (unknown keys become errors) and checks every value."""
  config.lock()
  validate(config)
  return config


def _choice(config, key, choices):
  if config[key] not in choices:
    raise ConfigError(f"{key}={config[key]!r} is not one of {list(choices)}.")


def _check_regex(key: str, pattern: str) -> None:
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"{key}: {pattern!r} is not a regular expression ({e}).") from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first key whose value cannot be used."""
  from experiments import methods  # methods builds on this module
  unknown = sorted(set(config.keys()) - set(defaults().keys()))
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(defaults().keys())}.")
  _choice(config, "method", methods.names())
  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "distribution", DISTRIBUTIONS)
  if not 0.0 <= config.final_sparsity < 1.0:
    raise ConfigError(f"final_sparsity={config.final_sparsity!r} must lie in [0, 1).")
  for key in ("batch_size", "snip_batch_size"):
    if config[key] <= 0:
      raise ConfigError(f"{key}={config[key]!r} must be a positive integer.")
  for key in ("train_subset", "test_subset"):
    if config[key] < 0:
      raise ConfigError(f"{key}={config[key]!r} must be >= 0 (0 = the whole split).")
  if config.learning_rate <= 0:
    raise ConfigError(f"learning_rate={config.learning_rate!r} must be positive.")
  for key in ("steps", "eval_every", "log_every", "checkpoint_every", "warmup", "pruning_begin",
              "pruning_frequency"):
    parse_duration(config[key], 1, key)
  for milestone in config.lr_milestones:
    parse_duration(milestone, 1, "lr_milestones")
  parse_duration(config.pruning_end, 1, "pruning_end", total=1)
  parse_duration(config.rewind, 1, "rewind")
  if config.levels < 0 or config.replicates < 1:
    raise ConfigError(f"levels={config.levels!r} must be >= 0 and replicates="
                      f"{config.replicates!r} >= 1.")
  if not 0.0 < config.prune_fraction < 1.0:
    raise ConfigError(f"prune_fraction={config.prune_fraction!r} must lie in (0, 1).")
  if config.prune_exclude:
    _check_regex("prune_exclude", config.prune_exclude)
  parse_overrides(config.prune_fraction_overrides)
  for control in config.controls:
    if control not in CONTROLS:
      raise ConfigError(f"controls: {control!r} is not one of {list(CONTROLS)}.")
  if config.method == "imp" and config.distribution not in ("global", "uniform"):
    raise ConfigError(f"distribution={config.distribution!r}: IMP prunes 'global'ly or "
                      "layerwise ('uniform').")
  if config.instability_alphas < 2:
    raise ConfigError(f"instability_alphas={config.instability_alphas!r} must be >= 2.")


def parse_overrides(text: str) -> dict[str, float]:
  """``"output=0.1,conv1=0"`` -> {"output": 0.1, "conv1": 0.0} (path regex -> prune fraction)."""
  out = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    pattern, sep, value = item.rpartition("=")
    try:
      fraction = float(value)
    except ValueError:
      fraction = -1.0
    if not sep or not pattern or not 0.0 <= fraction < 1.0:
      raise ConfigError(f"prune_fraction_overrides: {item!r} is not 'regex=fraction' with a "
                        "fraction in [0, 1), e.g. 'output=0.1'.")
    _check_regex("prune_fraction_overrides", pattern)
    out[pattern] = fraction
  return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ep|it|%)\s*$")


def parse_duration(value: str, steps_per_epoch: int, key: str = "duration",
                   total: int | None = None) -> int:
  """``"40ep"`` -> 40 * steps_per_epoch, ``"500it"`` -> 500, ``"75%"`` -> 0.75 * total."""
  match = _DURATION.match(str(value))
  if not match or (match.group(2) == "%" and total is None):
    allowed = "'40ep', '500it'" + (" or '75%'" if total is not None else "")
    raise ConfigError(f"{key}={value!r} is not a duration; write it like {allowed}.")
  number, unit = float(match.group(1)), match.group(2)
  if unit == "it":
    if number != int(number):
      raise ConfigError(f"{key}={value!r}: iterations must be a whole number.")
    return int(number)
  if unit == "ep":
    return int(round(number * steps_per_epoch))
  return int(round(number / 100.0 * total))
