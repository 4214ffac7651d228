"""The runner's configuration: every key, its default and its validation.

An experiment is an ``ml_collections.ConfigDict`` built from :func:`defaults` by a file in
``configs/`` (``get_config()``) and overridable on the command line (``--config.key=value``). The
dict is locked: a key :func:`defaults` does not define is an error, and so is a value of the
wrong type. Durations are strings: ``"40ep"`` (epochs) or ``"500it"`` (iterations).

The keys are those of the runner itself (model, data, optimizer, step counts) plus the keys each
registered sparsifier and protocol owns (:mod:`experiments.registry`). ``protocol`` selects which
trainings a run does (``train``: one training; ``imp``: lottery tickets) and ``sparsifier`` the
sparse method of a training (``dense``, ``magnitude``, ``random``, ``snip``, ``pdp``, ``ste``,
...). ``method`` is a shorthand kept from earlier versions: ``method=NAME`` selects the protocol
``NAME`` if there is one, else the sparsifier ``NAME`` under the protocol it names (``train``,
or ``structured`` for the group sparsifiers). ``widths`` rebuilds the model at other hidden
widths and ``init_from`` starts from the compressed network a ``structured`` run left (its widths
too).
"""

from __future__ import annotations

import os

import ml_collections

from experiments import group_sparsifiers, models, parsing, protocols, sparsifiers  # noqa: F401
from experiments import parallel as parallel_lib
from experiments import pdp_sparsifiers  # noqa: F401  (registers pdp and ste)
from experiments import dynamic_sparsifiers  # noqa: F401  (registers rigl and set)
from experiments import sap_sparsifier  # noqa: F401  (registers sap)
from experiments import init_sparsifiers  # noqa: F401  (registers grasp and synflow)
from experiments.parsing import ConfigError, parse_duration, parse_overrides  # noqa: F401
from experiments.registry import PROTOCOLS, SPARSIFIERS

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine")


def runner_defaults() -> ml_collections.ConfigDict:
  """The runner's own keys, with the values of a short LeNet-300-100 run."""
  c = ml_collections.ConfigDict()
  c.protocol = "train"            # which trainings: train | imp | ... (experiments.protocols)
  c.sparsifier = "dense"          # the sparse method of each training (experiments.sparsifiers)
  c.method = ""                   # shorthand: a protocol's or a sparsifier's name
  c.model = "lenet300"
  c.widths = ""                   # hidden widths, e.g. "dense1=150,dense2=50" (models.Model.widths)
  c.init_from = ""                # a structured run's workdir: start from its compressed network
  c.model_init = "default"        # the paper's per model, or kaiming_normal, glorot_normal, ...
  c.bias_init = "zeros"           # zeros | pytorch (U(+-1/sqrt(fan_in)), PyTorch's default)
  c.dataset = "fashion_mnist"
  c.data_dir = ""                 # '' = the dataset's default location
  c.train_subset = 0              # 0 = all examples; n = the first n (small test runs)
  c.test_subset = 0
  c.seed = 0
  c.replicates = 1                # N > 1: the runs with seeds seed .. seed + N - 1
  c.vectorize = False             # train the replicates as one program (jax.vmap)
  c.augment = False               # random crop + flip (CIFAR-style models)
  c.mesh = ""                     # '' = one device; "data", "data:4,model:2" (experiments.parallel)
  c.distributed = False           # jax.distributed.initialize() first (multi-host)
  c.coordinator_address = ""      # with distributed, outside TPU/SLURM: "host:port" of process 0
  c.num_processes = 0             # with distributed, outside TPU/SLURM: the process count
  c.process_id = -1               # with distributed, outside TPU/SLURM: this process's index

  c.batch_size = 128
  c.steps = "40ep"                # training length: "Nep" or "Nit"
  c.eval_every = "1ep"
  c.log_every = "1ep"
  c.checkpoint_every = "5ep"

  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9                # for momentum / nesterov
  c.weight_decay = 0.0            # L2 (coupled) for sgd/momentum/nesterov/adam, decoupled for adamw
  c.lr_schedule = "constant"
  c.lr_milestones = ()            # for "step": e.g. ("80ep", "120ep")
  c.lr_gamma = 0.1
  c.warmup = "0it"
  c.prune_exclude = ""            # regex of param paths never pruned, e.g. "output"
  return c


def defaults() -> ml_collections.ConfigDict:
  """Every key the runner understands: its own and those of every registered entry."""
  c = runner_defaults()
  own = set(c.keys())
  for registry in (SPARSIFIERS, PROTOCOLS):
    for key, default in registry.keys().items():
      if key in own:
        raise ValueError(f"{registry.kind} key {key!r} is a key of the runner itself.")
      if key in c and c[key] != default:
        raise ValueError(f"config key {key!r} has default {c[key]!r} for a sparsifier and "
                         f"{default!r} for a protocol; shared keys need one default.")
      c[key] = default
  return c


def resolve(config: ml_collections.ConfigDict) -> None:
  """Replaces the ``method`` shorthand by the ``protocol`` / ``sparsifier`` it names."""
  name = config.method
  if not name:
    return
  if name in PROTOCOLS.names():
    config.protocol = name
  elif name in SPARSIFIERS.names():
    config.protocol = SPARSIFIERS.get(name).options.get("protocol", "train")
    config.sparsifier = name
  else:
    raise ConfigError(f"method={name!r} is not one of {PROTOCOLS.names() + SPARSIFIERS.names()} "
                      "(a protocol or a sparsifier).")
  config.method = ""


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config (unknown keys become errors), resolves ``method``, checks every value."""
  config.lock()
  validate(config)
  resolve(config)
  options = PROTOCOLS.get(config.protocol).options
  if config.replicates > 1 and not options.get("replicates", False):
    raise ConfigError(f"replicates={config.replicates}: the {config.protocol!r} protocol runs "
                      "one replicate; set replicates=1 and sweep the seed instead.")
  if config.vectorize and not options.get("vectorizes", False):
    raise ConfigError(f"vectorize=True: the {config.protocol!r} protocol trains its replicates "
                      "one after another; set vectorize=False.")
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises :class:`ConfigError` naming the first key whose value cannot be used."""
  valid = defaults()
  unknown = sorted(set(config.keys()) - set(valid.keys()))
  if unknown:
    raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid.keys())}.")
  if config.method:
    parsing.choice("method", config.method, PROTOCOLS.names() + SPARSIFIERS.names())
  PROTOCOLS.get(config.protocol)
  SPARSIFIERS.get(config.sparsifier)
  parsing.choice("model_init", config.model_init, models.MODEL_INITS)
  parsing.choice("bias_init", config.bias_init, models.BIAS_INITS)
  parsing.choice("optimizer", config.optimizer, OPTIMIZERS)
  parsing.choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
  for key in ("batch_size",):
    if config[key] <= 0:
      raise ConfigError(f"{key}={config[key]!r} must be a positive integer.")
  if isinstance(config.replicates, bool) or not isinstance(config.replicates, int) or (
      config.replicates < 1):
    raise ConfigError(f"replicates={config.replicates!r} must be a positive integer (the runs "
                      "with seeds seed, seed + 1, ...).")
  for key in ("train_subset", "test_subset"):
    if config[key] < 0:
      raise ConfigError(f"{key}={config[key]!r} must be >= 0 (0 = the whole split).")
  if config.learning_rate <= 0:
    raise ConfigError(f"learning_rate={config.learning_rate!r} must be positive.")
  if config.mesh:
    parallel_lib.parse_mesh(config.mesh)
  if not config.distributed and (config.coordinator_address or config.num_processes or
                                 config.process_id >= 0):
    raise ConfigError("coordinator_address, num_processes and process_id start a multi-host "
                      "run: set distributed=True too.")
  parsing.check_durations(config, "steps", "eval_every", "log_every", "checkpoint_every", "warmup")
  for milestone in config.lr_milestones:
    parse_duration(milestone, 1, "lr_milestones")
  parsing.parse_widths(config.widths)
  if config.init_from and not os.path.isfile(os.path.join(config.init_from, "compressed",
                                                          "widths.json")):
    raise ConfigError(f"init_from={config.init_from!r} holds no compressed network "
                      "(compressed/widths.json); give the workdir of a finished structured run.")
  if config.prune_exclude:
    parsing.check_regex("prune_exclude", config.prune_exclude)
  for registry in (SPARSIFIERS, PROTOCOLS):
    for entry in registry.entries():
      if entry.validate is not None:
        entry.validate(config)
