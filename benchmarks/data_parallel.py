"""The sparse training step's overhead over dense under data parallelism, side by side.

Each sparsifier's step is built exactly as the runner builds it with ``--config.mesh=data``
(``experiments.setup``, ``experiments.trainer``): the batch split over the mesh's ``data`` axis,
params, masks and optimizer state replicated. The variants are timed interleaved round by round
in one process, on random data shaped like the real dataset; the figure is each sparsifier's
time per step over dense's on the same mesh, and (for reference) dense's time on the mesh over
dense's on one device.

  python benchmarks/data_parallel.py [--devices 8] [--rounds 5] [--steps 50]
      [--models lenet300,conv2] [--sparsifiers dense,magnitude,pdp,ste]

``--devices N`` simulates N CPU devices (``--xla_force_host_platform_device_count``) unless
XLA_FLAGS is already set (on a GPU or TPU host the real devices are used). On a 2-core CPU the
8 simulated devices share the cores, so the absolute times say nothing about a real pod; the
ratios to dense say what sparsity costs on top of data parallelism: the mask updates (every 10
steps for magnitude pruning) and the PDP threshold search run on replicated params, adding no
communication.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys


def _devices_flag() -> None:
  if "--devices" in sys.argv and "XLA_FLAGS" not in os.environ:
    n = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
  elif "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"


_devices_flag()

import jax  # noqa: E402  (the device count is fixed when JAX starts)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from experiments import config as config_lib  # noqa: E402
from experiments import data as data_lib  # noqa: E402
from experiments import setup as setup_lib  # noqa: E402
from experiments import trainer  # noqa: E402
from replicates import interleaved  # noqa: E402

MODELS = {
    # name: (model, input shape, global batch size)
    "lenet300": ("lenet300", (28, 28, 1), 128),
    "conv2": ("conv2", (28, 28, 1), 64),
}
OVERRIDES = {
    "dense": {},
    "magnitude": {"final_sparsity": 0.9, "pruning_begin": "0it", "pruning_end": "900it",
                  "pruning_frequency": "10it"},
    "pdp": {"final_sparsity": 0.9, "pdp_warmup": "0it", "pdp_rate": 1.0},
    "ste": {"final_sparsity": 0.9, "pdp_warmup": "0it", "pdp_rate": 1.0},
}


def build(name: str, sparsifier: str, mesh: str, data):
  model, _, batch = MODELS[name]
  config = config_lib.defaults()
  config.model, config.batch_size, config.steps = model, batch, "1000it"
  config.sparsifier, config.mesh, config.optimizer = sparsifier, mesh, "momentum"
  for key, value in OVERRIDES[sparsifier].items():
    config[key] = value
  config = config_lib.finalize(config)
  task = setup_lib.build_task(config, data)
  setup = setup_lib.Setup(config, "", task, setup_lib.masks_lib.rule())
  key = setup.key()
  params, model_state = setup.init(key)
  sp = setup.sparsifier(params, model_state, key)
  state = trainer.place(task, trainer.init_state(params, model_state, sp.tx, key))
  return [trainer.make_train_steps(task, sp), state]


def bench(name: str, sparsifiers: list[str], rounds: int, steps: int) -> list[str]:
  _, shape, _ = MODELS[name]
  data = data_lib.synthetic(shape, 6000)
  variants = {"dense, 1 device": build(name, "dense", "", data)}
  variants.update({s: build(name, s, "data", data) for s in sparsifiers})
  times = interleaved(variants, rounds, steps)
  lines = []
  for v in variants:
    ratio = [x / y for x, y in zip(times[v], times["dense" if "dense" in times else v])]
    lines.append(f"| {name} | {v} | {statistics.median(times[v]):.2f} | "
                 f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=50, help="steps per variant per round")
  parser.add_argument("--models", default="lenet300,conv2")
  parser.add_argument("--sparsifiers", default="dense,magnitude,pdp,ste")
  args = parser.parse_args()
  sparsifiers = [s for s in args.sparsifiers.split(",") if s]
  if "dense" not in sparsifiers:
    sparsifiers.insert(0, "dense")
  print(f"jax {jax.__version__} on {jax.default_backend()}, {jax.device_count()} devices; "
        f"{args.rounds} rounds x {args.steps} steps; ratios to dense on the same mesh")
  print("| model | variant | ms/step | / dense (range over rounds) |")
  print("|---|---|---|---|")
  for name in args.models.split(","):
    for line in bench(name, sparsifiers, args.rounds, args.steps):
      print(line, flush=True)


if __name__ == "__main__":
  main()
