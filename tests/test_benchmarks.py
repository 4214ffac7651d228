"""The benchmark scripts keep running (tiny settings; no timing is asserted here)."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from experiments import config as config_lib

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
    ("dynamic_step.py", ["--rounds", "1", "--steps", "60", "--models", "lenet"],
     "steps): dense"),
    ("data_parallel.py", ["--devices", "2", "--rounds", "1", "--steps", "2", "--models",
                          "lenet300", "--sparsifiers", "magnitude"], "| lenet300 | magnitude |"),
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


def _pdp_accuracy_module():
  spec = importlib.util.spec_from_file_location(
      "pdp_accuracy", os.path.join(ROOT, "benchmarks", "pdp_accuracy.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("model", ["lenet300", "conv4"])
def test_pdp_accuracy_configs_select_each_method(model):
  """Every method of the table gets a valid config of the sparsifier and scope it names."""
  bench = _pdp_accuracy_module()
  args = argparse.Namespace(conv4_recipe="short", nm="2:4", steps="", dataset="")
  expected = {"dense": ("dense", None), "magnitude": ("magnitude", "unstructured"),
              "magnitude_global": ("magnitude", "unstructured"),
              "random_erk": ("random", None), "pdp": ("pdp", "unstructured"),
              "ste": ("ste", "unstructured"), "pdp_nm": ("pdp", "nm"), "ste_nm": ("ste", "nm"),
              "magnitude_nm": ("magnitude", "nm")}
  assert set(expected) == set(bench.METHODS + bench.NM_METHODS)
  for method, (sparsifier, scope) in expected.items():
    config = config_lib.finalize(bench.config_for(model, method, 0.9, 1, args))
    assert (config.sparsifier, config.seed) == (sparsifier, 1), method
    if scope is not None:
      got = config.pdp_scope if sparsifier in ("pdp", "ste") else config.pruning_scope
      assert got == scope, method
    if method.endswith("_nm"):
      assert config.nm == "2:4"
      assert config.prune_exclude == ("conv1" if model == "conv4" else ""), method
    elif method != "dense":
      assert config.final_sparsity == 0.9
    distributions = {"random_erk": "erk", "magnitude": "uniform", "magnitude_global": "global",
                     "magnitude_nm": "uniform"}
    if method in distributions:
      assert config.distribution == distributions[method], method


def test_pdp_accuracy_benchmark_runs(tmp_path):
  """A run trains with its recipe (LeNet-300-100's 40 epochs, of digits: 12 steps each), lands in
  the table and is reused, not retrained, by --collect."""
  args = ["--models", "lenet300", "--seeds", "0", "--sparsities", "0.9", "--methods", "pdp",
          "--nm", "", "--dataset", "digits", "--workdir", str(tmp_path)]
  script = os.path.join("benchmarks", "pdp_accuracy.py")
  result = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| lenet300 | 90% | pdp |" in result.stdout, result.stdout
  (row,) = json.loads((tmp_path / "results.json").read_text())
  assert row["density"] == pytest.approx(0.1, abs=1e-3) and 0.5 < row["accuracy"] <= 1.0
  collected = subprocess.run([sys.executable, script, *args, "--collect"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
  assert collected.returncode == 0, collected.stderr[-3000:]
  assert json.loads((tmp_path / "results.json").read_text()) == [row]
