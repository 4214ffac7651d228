"""Structured sparsity on Fashion-MNIST: HESSO's accuracy, the compressed sizes, and inference
speed of the compressed networks against the dense ones.

For the MLP 784-300-100-10 (``configs/hesso_mlp_fashion.py``) and the VGG-style CNN with BatchNorm
(``configs/hesso_cnn_fashion.py``) it trains, for every seed, the dense network (the same recipe
with ``sparsifier=dense``) and HESSO at each target group sparsity, through the runner's
``structured`` protocol (train, compress, evaluate the compressed network). Then, in a separate
single-threaded process, it times the jitted forward pass (evaluation mode, batch 256) of the
dense network and of each compressed one, interleaved round by round in the same process, and
reports dense time / compressed time, at the exact compressed widths and at the widths rounded
up to multiples of 8 and 16 (``--multiples``; what ``--config.compress_multiple`` saves: the extra
channels are zero groups, so the outputs are the same).

  python benchmarks/structured.py [--models mlp,cnn] [--seeds 0,1,2] [--targets 0.5,0.7]
      [--workdir runs/structured_benchmark] [--dataset fashion_mnist] [--steps 10ep]
      [--multiples 1,8,16] [--collect]

Finished runs in ``--workdir`` are reused (the runner resumes them), so an interrupted benchmark
picks up where it stopped; ``--collect`` reports the finished runs without training. Results:
``results.json`` and a Markdown table on stdout (``n`` is the number of seeds behind each row).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

# The timing child runs on one core with single-threaded XLA: set before jax is imported.
if "--speed" in sys.argv:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false"
                             " intra_op_parallelism_threads=1").strip()
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import jax
import jax.numpy as jnp

# The runner is not installed (only the library is): import it from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import hesso_cnn_fashion, hesso_mlp_fashion
from experiments import experiment, models
from sparsejax.structured.compress import round_up

CONFIGS = {"mlp": hesso_mlp_fashion, "cnn": hesso_cnn_fashion}
BATCH = 256


def config_for(name: str, target: float, seed: int, args):
  config = CONFIGS[name].get_config()
  config.seed = seed
  config.dataset = args.dataset
  if args.steps:
    config.steps = args.steps
  if args.train_subset:
    config.train_subset = args.train_subset
    config.test_subset = args.train_subset
  if target == 0:
    config.protocol, config.sparsifier = "train", "dense"
  else:
    config.target_group_sparsity = target
  config.checkpoint_every = "100ep"
  return config


def run_all(args) -> list[dict]:
  """Every run's summary (with ``--collect``, those of the finished runs, without training)."""
  rows = []
  for name in args.models:
    for seed in args.seeds:
      for target in (0.0, *args.targets):
        directory = os.path.join(args.workdir, f"{name}_t{target:g}_s{seed}")
        if args.collect:
          if os.path.exists(os.path.join(directory, "summary.json")):
            with open(os.path.join(directory, "summary.json")) as f:
              rows.append({**json.load(f), "net": name, "target": target, "seed": seed,
                           "workdir": directory})
          continue
        t0 = time.time()
        summary = experiment.run(config_for(name, target, seed, args), directory)
        print(f"{name} target {target:g} seed {seed}: {time.time() - t0:.0f} s, "
              f"test accuracy {summary['test_accuracy']:.4f}"
              + (f", compressed {summary['test_accuracy_compressed']:.4f}"
                 if target else ""), flush=True)
        rows.append({**summary, "net": name, "target": target, "seed": seed,
                     "workdir": directory})
  return rows


def _mean_spread(values) -> str:
  values = [100 * v for v in values]
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def table(rows: list[dict], speeds: dict) -> str:
  multiples = sorted({int(k.rsplit("_m", 1)[1]) for k in speeds})
  lines = ["| model | group sparsity | test accuracy % (mean +- sd) | params | MACs | "
           "widths kept | inference speedup (widths rounded to "
           + " / ".join("exact" if m == 1 else f"x{m}" for m in multiples) + ") |",
           "|---|---|---|---|---|---|---|"]
  keys = sorted({(r["net"], r["target"]) for r in rows}, key=lambda k: (k[0], k[1]))
  for name, target in keys:
    group = [r for r in rows if (r["net"], r["target"]) == (name, target)]
    if target == 0:
      acc = _mean_spread([r["test_accuracy"] for r in group])
      lines.append(f"| {name} | dense | {acc} (n={len(group)}) | | | | 1.00x |")
      continue
    acc = _mean_spread([r["test_accuracy_compressed"] for r in group])
    params = statistics.mean(1 - r["params_after"] / r["params_before"] for r in group)
    flops = statistics.mean(1 - r["flops_after"] / r["flops_before"] for r in group)
    widths = "; ".join(
        f"s{r['seed']}: " + ",".join(str(v) for v in r["widths_after"].values()) for r in group)
    speed = " / ".join(f"{speeds[k]:.2f}x" for k in
                       (f"{name}_t{target:g}_m{m}" for m in multiples) if k in speeds)
    lines.append(f"| {name} | {target:g} ({group[0]['groups_zero']}/{group[0]['groups_total']}) "
                 f"| {acc} (n={len(group)}) | -{100 * params:.1f}% | -{100 * flops:.1f}% | {widths} | "
                 f"{speed} |")
  return "\n".join(lines)


def time_forward(model: models.Model, rounds: int, others: dict) -> dict:
  """Median seconds of a jitted evaluation-mode forward pass of batch ``BATCH`` for ``model``
  and each of ``others``, interleaved round by round."""
  nets = {"dense": model, **others}
  x = jax.random.normal(jax.random.key(1), (BATCH, *model.input_shape))
  fns = {}
  for label, net in nets.items():
    params, state = net.init(jax.random.key(0))
    fn = jax.jit(lambda p, s, inputs, net=net: net.apply(p, s, inputs, train=False)[0])
    jax.block_until_ready(fn(params, state, x))
    fns[label] = (fn, params, state)
  times = {label: [] for label in nets}
  for _ in range(rounds):
    for label, (fn, params, state) in fns.items():
      t0 = time.perf_counter()
      for _ in range(5):
        out = fn(params, state, x)
      jax.block_until_ready(out)
      times[label].append((time.perf_counter() - t0) / 5)
  return {label: statistics.median(t) for label, t in times.items()}


def speed(args) -> dict:
  """Dense time / compressed time per (model, target, multiple): seed 0's compressed widths,
  rounded up to each of ``args.multiples``."""
  results = {}
  for name in args.models:
    dense_dir = os.path.join(args.workdir, f"{name}_t0_s{args.seeds[0]}")
    dense = json.load(open(os.path.join(dense_dir, "config.json")))
    base = models.build(dense["model"], num_classes=10, input_shape=tuple(args.input_shape))
    others = {}
    for target in args.targets:
      directory = os.path.join(args.workdir, f"{name}_t{target:g}_s{args.seeds[0]}")
      widths = json.load(open(os.path.join(directory, "compressed", "widths.json")))
      for multiple in args.multiples:
        rounded = {k: round_up(w, multiple, base.widths[k]) for k, w in widths.items()}
        others[f"{name}_t{target:g}_m{multiple}"] = models.build(
            dense["model"], num_classes=10, input_shape=tuple(args.input_shape), widths=rounded)
    times = time_forward(base, args.rounds, others)
    for label in others:
      results[label] = times["dense"] / times[label]
      print(f"{label} {others[label].widths}: dense {1e3 * times['dense']:.3f} ms, compressed "
            f"{1e3 * times[label]:.3f} ms per batch of {BATCH}: {results[label]:.2f}x",
            flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="mlp,cnn")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--targets", default="0.5,0.7")
  parser.add_argument("--workdir", default="runs/structured_benchmark")
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--steps", default="", help="override every run's length, e.g. 200it")
  parser.add_argument("--train_subset", type=int, default=0)
  parser.add_argument("--rounds", type=int, default=30, help="timing rounds")
  parser.add_argument("--multiples", default="1,8,16",
                      help="time the compressed widths rounded up to each multiple (1 = exact)")
  parser.add_argument("--input_shape", default="28,28,1")
  parser.add_argument("--collect", action="store_true",
                      help="report the finished runs in --workdir without training more")
  parser.add_argument("--speed", action="store_true", help="(internal) the timing child")
  args = parser.parse_args()
  args.models = [m for m in args.models.split(",") if m]
  args.seeds = [int(s) for s in args.seeds.split(",")]
  args.targets = [float(t) for t in args.targets.split(",")]
  args.multiples = [int(m) for m in args.multiples.split(",")]
  args.input_shape = [int(s) for s in args.input_shape.split(",")]
  if args.speed:
    print(json.dumps(speed(args)))
    return
  rows = run_all(args)
  child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--speed"],
                         capture_output=True, text=True, check=True)
  print(child.stdout.rsplit("\n", 2)[0], flush=True)
  speeds = json.loads(child.stdout.strip().splitlines()[-1])
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump({"rows": rows, "speedups": speeds}, f, indent=1, default=str)
  print(table(rows, speeds))


if __name__ == "__main__":
  main()
