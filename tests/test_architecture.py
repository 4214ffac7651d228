"""The runner's shape: no import cycles, registries that take new sparsifiers and protocols
without editing experiments/, and a forward-time function that the trainer honours."""

from __future__ import annotations

import ast
import importlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import main, protocols, registry, rng, sparsifiers, trainer, workdir
from experiments import setup as setup_lib
from sparsejax import masks as masks_lib
from sparsejax import pruning, transforms

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sparsejax", "experiments")


def project_modules() -> dict[str, Path]:
  modules = {}
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      parts = list(path.relative_to(REPO).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts.pop()
      modules[".".join(parts)] = path
  return modules


def imports_of(name: str, path: Path, modules) -> tuple[set[str], list[str]]:
  """(project modules ``name`` imports at module level, imports of project modules elsewhere)."""
  tree = ast.parse(path.read_text())
  top, nested = set(), []
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:
        package = name.rsplit(".", node.level)[0] if path.name != "__init__.py" else name
        base = f"{package}.{node.module}"
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    targets = [t for t in targets if t.split(".")[0] in PACKAGES]
    if not targets:
      continue
    if node in tree.body:
      top.update(targets)
    else:
      nested.extend(f"{name}:{node.lineno} imports {t}" for t in targets)
  return top, nested


def test_no_import_cycles_and_no_imports_inside_functions():
  modules = project_modules()
  graph, nested = {}, []
  for name, path in modules.items():
    importlib.import_module(name)  # every module imports on its own
    edges, inner = imports_of(name, path, modules)
    graph[name] = {e for e in edges if e in modules and e != name}
    nested += inner
  assert not nested, nested
  # The library never imports the runner.
  assert not [(a, b) for a, bs in graph.items() for b in bs
              if a.startswith("sparsejax") and b.startswith("experiments")]
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycle = stack[stack.index(nxt):] + [nxt]
        raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_cycle_detector_sees_a_cycle(tmp_path, monkeypatch):
  """The import-graph reader finds the edges a cycle is made of."""
  a = tmp_path / "a.py"
  a.write_text("from experiments import registry\nimport sparsejax.masks\n"
               "def f():\n  from experiments import trainer\n")
  modules = project_modules()
  top, nested = imports_of("experiments.toy", a, modules)
  assert top == {"experiments.registry", "sparsejax.masks"}
  assert nested == ["experiments.toy:4 imports experiments.trainer"]


def test_rng_streams_are_named_and_independent():
  key = jax.random.key(0)
  data = jax.random.key_data(rng.stream(key, "data"))
  assert np.array_equal(data, jax.random.key_data(rng.stream(key, "data")))
  others = [rng.stream(key, "augment"), rng.stream(key, "data", 1), rng.stream(key, "control", 1,
                                                                               "reinit")]
  for other in others:
    assert not np.array_equal(data, jax.random.key_data(other))
  with pytest.raises(ValueError, match="-1"):
    rng.stream(key, -1)


# ---------------------------------------------------------------------------------------------
# A toy sparsifier and a toy protocol, registered here, run through the command line.


def _validate_half(config):
  if not 0.0 < config.half_fraction < 1.0:
    raise config_lib.ConfigError(f"half_fraction={config.half_fraction!r} must lie in (0, 1).")


def half(ctx: sparsifiers.Context) -> sparsifiers.Sparsifier:
  """A fixed random mask keeping ``half_fraction`` of every prunable layer."""
  masks = pruning.random(ctx.key, ctx.params, 1.0 - ctx.config.half_fraction, "uniform",
                         ctx.prunable)
  return sparsifiers.with_masks(transforms.static_masks(ctx.inner, masks))


def two_seeds(setup: setup_lib.Setup) -> dict:
  """Trains the config's sparsifier from two seeds, each in its own directory."""
  accuracies, densities = [], []
  for replicate in range(setup.config.toy_copies):
    key = setup.key(replicate)
    params, model_state = setup.init(key)
    sparsifier = setup.sparsifier(params, model_state, key)
    state = trainer.init_state(params, model_state, sparsifier.tx, key)
    directory = os.path.join(setup.workdir, f"seed_{replicate}")
    state, summary = trainer.train(setup.task, sparsifier,
                                   trainer.make_train_steps(setup.task, sparsifier),
                                   trainer.make_evaluate(setup.task), state, directory)
    workdir.save_masks(directory, state["params"], trainer.masks_of(sparsifier, state))
    accuracies.append(summary["test_accuracy"])
    densities.append(summary["density"])
  summary = {"protocol": "two_seeds", "test_accuracies": accuracies, "densities": densities}
  workdir.write_json(os.path.join(setup.workdir, "summary.json"), summary)
  return summary


TOY_CONFIG = """
from experiments.config import defaults


def get_config():
  c = defaults()
  c.protocol, c.sparsifier = "two_seeds", "half"
  c.dataset, c.batch_size, c.steps = "digits", 64, "60it"
  c.eval_every = c.log_every = c.checkpoint_every = "30it"
  return c
"""


@pytest.fixture
def toys():
  sparsifiers.register("half", keys={"half_fraction": 0.5}, validate=_validate_half)(half)
  protocols.register("two_seeds", keys={"toy_copies": 2},
                     report=lambda s, d: f"toy accuracies {s['test_accuracies']} in {d}")(two_seeds)
  yield
  registry.SPARSIFIERS.unregister("half")
  registry.PROTOCOLS.unregister("two_seeds")


def test_toy_sparsifier_and_protocol_through_the_command_line(toys, tmp_path, capsys):
  config_file = tmp_path / "toy.py"
  config_file.write_text(TOY_CONFIG)
  run_dir = tmp_path / "run"
  main.run(["main", f"--config={config_file}", f"--workdir={run_dir}",
            "--config.half_fraction=0.25"])
  printed = capsys.readouterr().out
  summary = json.loads((run_dir / "summary.json").read_text())
  assert f"toy accuracies {summary['test_accuracies']} in {run_dir}" in printed
  assert len(summary["test_accuracies"]) == 2
  assert all(0.3 < a <= 1.0 for a in summary["test_accuracies"])
  saved = json.loads((run_dir / "config.json").read_text())
  assert (saved["protocol"], saved["sparsifier"], saved["half_fraction"]) == (
      "two_seeds", "half", 0.25)
  kept = []
  for replicate in range(2):
    with np.load(run_dir / f"seed_{replicate}" / "masks.npz") as f:
      masks = {k: f[k] for k in f.files if f[k].ndim > 0}
    # Exactly round(0.25 n) weights kept in every prunable layer.
    for path, m in masks.items():
      assert int(m.sum()) == round(0.25 * m.size), path
    kept.append(masks["['dense1']['kernel']"])
  assert summary["densities"][0] == summary["densities"][1]
  assert not np.array_equal(*kept)  # each seed draws its own mask


def test_toy_sparsifier_keys_are_validated(toys, tmp_path, capsys):
  config_file = tmp_path / "toy.py"
  config_file.write_text(TOY_CONFIG)
  with pytest.raises(SystemExit):
    main.run(["main", f"--config={config_file}", f"--workdir={tmp_path / 'run'}",
              "--config.half_fraction=1.5"])
  assert "half_fraction=1.5" in capsys.readouterr().err
  assert not (tmp_path / "run" / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# The forward-time function.


def test_forward_time_function_is_honoured(tmp_path):
  """A forward function that zeros half of every kernel: the loss sees the zeroed weights.

  With plain SGD the zeroed weights get exactly zero gradient, so they keep their initial values;
  the evaluation is of the zeroed network, not of the raw params.
  """
  config = config_lib.defaults()
  config.dataset, config.batch_size, config.steps, config.optimizer = "digits", 64, "40it", "sgd"
  config.eval_every = config.log_every = config.checkpoint_every = "20it"
  config = config_lib.finalize(config)
  setup = setup_lib.build(config, str(tmp_path))
  key = setup.key()
  params, model_state = setup.init(key)
  half_masks = jax.tree.map(
      lambda p: (jnp.arange(p.size).reshape(p.shape) % 2 == 0) if p.ndim >= 2 else jnp.array(True),
      params)
  calls = []

  def forward(params, opt_state, step):
    calls.append(step)
    return masks_lib.apply(params, half_masks)

  sparsifier = sparsifiers.Sparsifier(setup.inner_optimizer(),
                                      lambda s, p: masks_lib.ones_like(p), forward)
  state = trainer.init_state(params, model_state, sparsifier.tx, key)
  evaluate = trainer.make_evaluate(setup.task)
  final, summary = trainer.train(setup.task, sparsifier,
                                 trainer.make_train_steps(setup.task, sparsifier), evaluate,
                                 state, str(tmp_path / "run"))
  assert calls  # traced inside the jitted step and called for every evaluation
  for p0, p1, m in zip(jax.tree.leaves(params), jax.tree.leaves(final["params"]),
                       jax.tree.leaves(half_masks)):
    if np.ndim(m):
      np.testing.assert_array_equal(np.asarray(p1)[~np.asarray(m)], np.asarray(p0)[~np.asarray(m)])
      assert np.any(np.asarray(p1)[np.asarray(m)] != np.asarray(p0)[np.asarray(m)])
  zeroed = masks_lib.apply(final["params"], half_masks)
  loss, accuracy = (float(v) for v in evaluate(zeroed, final["model_state"]))
  assert (summary["test_loss"], summary["test_accuracy"]) == (loss, accuracy)
  assert float(evaluate(final["params"], final["model_state"])[0]) != loss
