"""The benchmark scripts keep running (tiny settings; no timing is asserted here)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script,args,expected", [
    ("overhead.py", ["--rounds", "1", "--steps", "60", "--models", "lenet"],
     "mask-update step / ordinary step"),
    ("throughput.py", ["--epochs", "1", "--dataset", "digits"], "random    end to end"),
    ("imp_level.py", ["--epochs", "1", "--dataset", "digits"], "one IMP level"),
    ("replicates.py", ["--replicates", "2", "--rounds", "1", "--steps", "3", "--models",
                       "digits"], "| digits (lenet300, 8x8, batch 64) | 2 |"),
    ("pdp_step.py", ["--rounds", "1", "--steps", "2", "--models", "lenet300"],
     "| LeNet-300-100 | pdp sort |"),
])
def test_benchmark_script_runs(script, args, expected):
  result = subprocess.run([sys.executable, os.path.join("benchmarks", script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert expected in result.stdout, result.stdout


def test_structured_benchmark_runs(tmp_path):
  args = ["--models", "mlp", "--seeds", "0", "--targets", "0.5", "--dataset", "digits",
          "--steps", "40it", "--rounds", "2", "--input_shape", "8,8,1", "--workdir",
          str(tmp_path)]
  result = subprocess.run([sys.executable, os.path.join("benchmarks", "structured.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| mlp | 0.5 (200/400) |" in result.stdout, result.stdout
  assert "compressed" in result.stdout and (tmp_path / "results.json").exists()
  speedups = json.loads((tmp_path / "results.json").read_text())["speedups"]
  assert set(speedups) == {"mlp_t0.5_m1", "mlp_t0.5_m8", "mlp_t0.5_m16"}


def test_pdp_accuracy_benchmark_runs(tmp_path):
  """PDP and the three 2:4 methods train with their recipes (LeNet-300-100's 40 epochs, of
  digits: 12 steps each) and land in the table."""
  args = ["--models", "lenet300", "--seeds", "0", "--sparsities", "0.9", "--methods", "pdp",
          "--dataset", "digits", "--workdir", str(tmp_path)]
  result = subprocess.run([sys.executable, os.path.join("benchmarks", "pdp_accuracy.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  for row in ("| lenet300 | 90% | pdp |", "| lenet300 | 2:4 | pdp_nm |",
              "| lenet300 | 2:4 | ste_nm |", "| lenet300 | 2:4 | magnitude_nm |"):
    assert row in result.stdout, result.stdout
  rows = json.loads((tmp_path / "results.json").read_text())
  assert len(rows) == 4
  assert {r["density"] for r in rows if r["method"].endswith("_nm")} == {0.5}
  assert [r["density"] for r in rows if r["level"] == 0.9] == [pytest.approx(0.1, abs=1e-3)]
