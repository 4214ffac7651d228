"""One run from a config: resolve it, build its setup, record it in the workdir, run its protocol.

The protocol (``train``, ``imp``, ...: :mod:`experiments.protocols`) decides which trainings the
run does and which files it leaves; this module only orders the steps so that every mistake in
the config surfaces before the workdir is written.
"""

from __future__ import annotations

import json

import ml_collections

from experiments import config as config_lib
from experiments import parallel
from experiments import setup as setup_lib
from experiments import workdir as workdir_lib
from experiments.registry import PROTOCOLS, SPARSIFIERS


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment ``config`` in ``workdir`` and returns its summary."""
  config = config_lib.finalize(config)
  parallel.initialize(config)  # before anything asks for the devices
  protocol = PROTOCOLS.get(config.protocol)
  unused = config_lib.runner_defaults().sparsifier
  if not protocol.options.get("uses_sparsifier", True) and config.sparsifier != unused:
    raise config_lib.ConfigError(
        f"sparsifier={config.sparsifier!r}: protocol {config.protocol!r} prunes by itself and "
        f"trains with its own masks; leave sparsifier={unused!r}.")
  # Data, model and prunable-layer errors come before the workdir records the config, so that the
  # corrected config can still use the same workdir.
  key_defaults = json.loads(config_lib.defaults().to_json())
  setup = setup_lib.build(config, workdir, key_defaults)
  for entry in (protocol, SPARSIFIERS.get(config.sparsifier)):
    if entry.check is not None:
      entry.check(setup)
  workdir_lib.prepare(workdir, config, extendable=protocol.options.get("extendable", ()),
                      restartable=protocol.options.get("restartable", lambda directory: False),
                      defaults=key_defaults)
  return protocol.build(setup)
