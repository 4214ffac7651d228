"""Packaging: ``pip install sparsejax`` installs only the library, with only the dependencies it
imports and its Apache-2.0 license; the runner's dependencies sit in the ``experiments`` extra and
the tests' in ``dev``, Ray (the sweep launcher's) in ``sweep``. The wheel is built offline from a
copy of the checkout."""

import ast
import email
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNER_DIRS = ("experiments", "configs", "benchmarks")
RUNNER_DEPENDENCIES = {
    "flax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "scikit-learn",
    "matplotlib",
    "tensorboardx",
    "ml-collections",
    "absl-py",
}
TEST_DEPENDENCIES = {"pytest", "pytest-xdist", "hypothesis", "chex"}
SWEEP_DEPENDENCIES = {"ray"}


def _canonical(name):
  """A distribution name as PEP 503 compares them."""
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec):
  """(canonical name, extra or None) of a requirement such as 'flax>=0.11; extra == "x"'."""
  extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", spec)
  return _canonical(re.match(r"[A-Za-z0-9._-]+", spec).group()), extra and extra.group(1)


def _pyproject():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(*extras):
  """Canonical names of the core dependencies and of those of ``extras``."""
  project = _pyproject()
  specs = project["dependencies"] + [
      spec for extra in extras for spec in project["optional-dependencies"][extra]
  ]
  return {_requirement(spec)[0] for spec in specs}


def _imported_distributions(directories, local):
  """{distribution: files importing it} for the imports of every .py file under ``directories``
  but the standard library and the modules ``local``; an import that no installed distribution
  provides maps to ``?module``."""
  providers = importlib.metadata.packages_distributions()
  found = {}
  for directory in directories:
    for path in sorted((ROOT / directory).rglob("*.py")):
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          modules = [node.module]
        else:
          continue
        for module in modules:
          top = module.split(".")[0]
          if top in sys.stdlib_module_names or top in local:
            continue
          for dist in providers.get(top, [f"?{top}"]):
            found.setdefault(_canonical(dist), set()).add(str(path.relative_to(ROOT)))
  return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  # A copy, so that no build/ or egg-info lands in the checkout and no stale build/ is packed.
  source = tmp_path_factory.mktemp("source") / "sparsejax"
  shutil.copytree(
      ROOT,
      source,
      ignore=shutil.ignore_patterns(
          ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis",
          "runs",
      ),
  )
  out = tmp_path_factory.mktemp("wheel")
  result = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
      + ["--disable-pip-version-check", "-q", "-w", str(out), str(source)],
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (path,) = out.glob("sparsejax-*.whl")
  with zipfile.ZipFile(path) as archive:
    yield archive


def _dist_info(wheel):
  (dist_info,) = {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" in name}
  return dist_info


def _metadata(wheel):
  return email.message_from_bytes(wheel.read(f"{_dist_info(wheel)}/METADATA"))


def test_wheel_installs_only_the_library(wheel):
  names = wheel.namelist()
  assert {name.split("/")[0] for name in names} == {"sparsejax", _dist_info(wheel)}
  # Every module of the library, subpackages included, is in it.
  modules = {str(path.relative_to(ROOT)) for path in (ROOT / "sparsejax").rglob("*.py")}
  assert "sparsejax/__init__.py" in modules
  assert modules <= set(names), modules - set(names)


def test_wheel_ships_the_apache_license(wheel):
  license_text = (ROOT / "LICENSE").read_text()
  assert "Apache License\n                           Version 2.0, January 2004" in license_text
  assert "END OF TERMS AND CONDITIONS" in license_text
  assert wheel.read(f"{_dist_info(wheel)}/licenses/LICENSE").decode() == license_text
  metadata = _metadata(wheel)
  assert metadata["License-Expression"] == "Apache-2.0" == _pyproject()["license"]
  assert metadata.get_all("License-File") == ["LICENSE"]


def test_requirements_split_into_library_experiments_and_dev(wheel):
  metadata = _metadata(wheel)
  assert set(metadata.get_all("Provides-Extra")) == {"experiments", "dev", "sweep"}
  by_extra = {}
  for spec in metadata.get_all("Requires-Dist"):
    name, extra = _requirement(spec)
    by_extra.setdefault(extra, set()).add(name)
  assert by_extra[None] == _declared() == {"jax", "optax", "numpy"}
  assert by_extra["experiments"] == RUNNER_DEPENDENCIES
  assert TEST_DEPENDENCIES <= by_extra["dev"]
  assert by_extra["sweep"] == SWEEP_DEPENDENCIES
  assert not (by_extra["experiments"] | by_extra["dev"] | by_extra["sweep"]) & by_extra[None]


def test_library_imports_exactly_its_core_dependencies():
  # Not even experiments/: the library never imports the runner.
  imported = _imported_distributions(["sparsejax"], local={"__future__", "sparsejax"})
  assert set(imported) == _declared(), imported


def test_runner_and_tests_import_only_declared_dependencies():
  checkout = {"__future__"} | {path.name for path in ROOT.iterdir() if path.is_dir()}
  scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}  # one imports another
  runner = _imported_distributions(RUNNER_DIRS, checkout | scripts)
  assert set(runner) <= _declared("experiments", "sweep"), runner
  assert SWEEP_DEPENDENCIES <= set(runner), "a sweep dependency nothing imports"
  assert RUNNER_DEPENDENCIES <= set(runner), "an experiments dependency nothing imports"
  helpers = {path.stem for path in (ROOT / "tests").glob("*.py")}
  tests = _imported_distributions(["tests"], checkout | helpers)
  assert set(tests) <= _declared("experiments", "dev", "sweep"), tests
