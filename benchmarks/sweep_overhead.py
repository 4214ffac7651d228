"""A sweep's wall time through its launchers against running its points by hand, side by side.

The same points (default: ``configs/digits_smoke.py``'s ``smoke`` sweep, 4 points of a few
seconds each, so that any overhead shows) are run from scratch, in fresh roots, four ways,
interleaved round by round:

  by hand      ``python -m experiments.main`` for each point, one after another: what a
               researcher would type (the commands ``experiments.sweep --dry_run`` prints);
  local        ``python -m experiments.sweep --launcher=local`` (one point at a time);
  local x2     the same with ``--parallel=2``;
  ray          ``--launcher=ray`` on a local Ray cluster started once beforehand (not timed)
               with 2 CPUs, each point asking for 1 (so two at once, as ``local x2``).

It reports each way's wall time and its ratio to by hand (the launcher's cost, or with two at
once, its gain on this machine's cores).

  python benchmarks/sweep_overhead.py [--config configs/digits_smoke.py] [--sweep smoke]
      [--rounds 2] [--ways by_hand,local,local_x2,ray]
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
    "ray": launcher("--launcher=ray", "--ray_address={address}", "--ray_num_cpus=1"),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/digits_smoke.py")
  parser.add_argument("--sweep", default="smoke")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--ways", default=",".join(WAYS))
  args = parser.parse_args()
  ways = [w for w in args.ways.split(",") if w]
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
  print("| way | wall seconds (median) | / by hand (range over rounds) |")
  print("|---|---|---|")
  base = times.get("by_hand")
  for w in ways:
    ratio = [x / y for x, y in zip(times[w], base)] if base else []
    spread = f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})" if ratio else ""
    print(f"| {w} | {statistics.median(times[w]):.1f} | {spread} |", flush=True)


if __name__ == "__main__":
  main()
