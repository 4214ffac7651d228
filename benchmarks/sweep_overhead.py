"""A sweep's wall time through its launchers against running its points by hand, side by side.

The same points (default: ``configs/digits_smoke.py``'s ``smoke`` sweep, 4 points of a few
seconds each, so that any overhead shows) are run from scratch, in fresh roots, in several ways,
interleaved round by round:

  by_hand          ``python -m experiments.main`` for each point, one after another: what a
                   researcher would type (the commands ``experiments.sweep --dry_run`` prints);
  local            ``python -m experiments.sweep --launcher=local`` (one point at a time);
  local_x2         the same with ``--parallel=2``: two at once, each on its own half of the
                   cores (the default ``--pin_cores``);
  local_x2_shared  ``--parallel=2 --nopin_cores``: two at once, sharing every core;
  ray              ``--launcher=ray`` on a local Ray cluster started once beforehand (not timed)
                   with 2 CPUs, each point asking for 1 (so two at once, as ``local_x2``).

It reports each way's wall time and its ratio to the first way (by hand: the launcher's cost, or
with two at once, its gain on this machine's cores).

``--workload conv4`` runs instead 4 points where the computation dominates: Conv-4 on
Fashion-MNIST (batch 60, the training set's first 12,000 images) for 200 iterations each, with
one evaluation on the 10,000 test images at the end, seeds 0 to 3
(``configs/conv4_sweep_overhead.py``). With it, the ways compare how a CPU's cores are best shared
between points::

  python benchmarks/sweep_overhead.py [--config configs/digits_smoke.py] [--sweep smoke]
      [--rounds 2] [--ways by_hand,local,local_x2,local_x2_shared,ray]
  python benchmarks/sweep_overhead.py --workload conv4 --ways local,local_x2,local_x2_shared
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments import sweep_lib  # noqa: E402


def by_hand(config: str, sweep: str, root: str, address: str) -> None:
  del address
  for point in sweep_lib.load_points(config, [sweep]):
    subprocess.run([sys.executable, *sweep_lib.command(config, root, point)], cwd=REPO, check=True,
                   capture_output=True)


def launcher(*flags):
  def run(config: str, sweep: str, root: str, address: str) -> None:
    extra = [f.format(address=address) for f in flags]
    subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={config}",
                    f"--sweep={sweep}", f"--root={root}", *extra], cwd=REPO, check=True,
                   capture_output=True)
  return run


WAYS = {
    "by_hand": by_hand,
    "local": launcher(),
    "local_x2": launcher("--parallel=2"),
    "local_x2_shared": launcher("--parallel=2", "--nopin_cores"),
    "ray": launcher("--launcher=ray", "--ray_address={address}", "--ray_num_cpus=1"),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits_smoke.py")
  parser.add_argument("--sweep", default="smoke")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--ways", default=",".join(WAYS))
  parser.add_argument("--workload", choices=("config", "conv4"), default="config",
                      help="conv4: the 4 Conv-4 points of configs/conv4_sweep_overhead.py "
                      "instead of --config")
  args = parser.parse_args()
  ways = [w for w in args.ways.split(",") if w]
  unknown = sorted(set(ways) - set(WAYS))
  if unknown:
    parser.error(f"unknown ways {unknown}; valid: {', '.join(WAYS)}")
  if args.rounds < 1:
    parser.error(f"--rounds={args.rounds}: at least 1 round is needed for a wall time")
  if args.workload == "conv4":
    args.config, args.sweep = str(REPO / "configs" / "conv4_sweep_overhead.py"), "seeds"
  address = ""
  if "ray" in ways:
    import ray  # the sweep extra: pip install 'sparsejax[sweep]'
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
  points = sweep_lib.load_points(args.config, [args.sweep])
  times = {w: [] for w in ways}
  try:
    for r in range(args.rounds):
      for w in ways[r % len(ways):] + ways[:r % len(ways)]:
        root = tempfile.mkdtemp(prefix=f"sweep_{w}_")
        start = time.perf_counter()
        WAYS[w](args.config, args.sweep, root, address)
        times[w].append(time.perf_counter() - start)
        shutil.rmtree(root, ignore_errors=True)
  finally:
    if "ray" in ways:
      ray.shutdown()
  print(f"{len(points)} points of {args.config} --sweep={args.sweep}, {args.rounds} rounds")
  print(f"| way | wall seconds (median) | / {ways[0]} (range over rounds) |")
  print("|---|---|---|")
  base = times[ways[0]]
  for w in ways:
    ratio = [x / y for x, y in zip(times[w], base)]
    spread = f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})"
    print(f"| {w} | {statistics.median(times[w]):.1f} | {spread} |", flush=True)


if __name__ == "__main__":
  main()
