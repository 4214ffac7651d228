"""Tests of the runner's training pieces (``experiments/trainer.py``): the dense optimizers with
their weight decay, the learning-rate schedules, and resuming a run between two logs.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import setup as setup_lib
from experiments import trainer
from sparsejax import transforms
from workdir_files import checkpoint_steps, read_metrics

# ---------------------------------------------------------------------------------------------
# Dense optimizers: what `weight_decay` means for each (see experiments/config.py).

MOMENTUM = 0.9
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax's (and Kingma & Ba's) Adam defaults


def lr_at(count):
  """A learning rate that changes every step, so that a wrong step count shows."""
  return 0.1 / (1.0 + count)


def reference_updates(name, params, grads, weight_decay):
  """The updates of two steps, written out from the papers' equations in float64.

  sgd / momentum / nesterov / adam: L2 regularization, i.e. ``weight_decay * params`` added to the
  gradient before the optimizer (PyTorch's ``weight_decay``, OpenLTH's optimizers). adamw: the
  decoupled weight decay of Loshchilov & Hutter (2019, Alg. 2), scaled by the learning rate as in
  optax and PyTorch: ``-lr (m_hat / (sqrt(v_hat) + eps) + weight_decay * params)``.
  """
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  trace = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  out = []
  for count, g in enumerate(grads):
    lr, updates = lr_at(count), {}
    for k, p in params.items():
      d = np.asarray(g[k], np.float64) + (0.0 if name == "adamw" else weight_decay * p)
      if name == "sgd":
        updates[k] = -lr * d
      elif name in ("momentum", "nesterov"):
        trace[k] = d + MOMENTUM * trace[k]
        updates[k] = -lr * (d + MOMENTUM * trace[k] if name == "nesterov" else trace[k])
      else:
        trace[k] = B1 * trace[k] + (1 - B1) * d
        nu[k] = B2 * nu[k] + (1 - B2) * d ** 2
        m_hat, v_hat = trace[k] / (1 - B1 ** (count + 1)), nu[k] / (1 - B2 ** (count + 1))
        step = m_hat / (np.sqrt(v_hat) + EPS)
        updates[k] = -lr * (step + weight_decay * p if name == "adamw" else step)
    params = {k: params[k] + updates[k] for k in params}
    out.append(updates)
  return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_base_optimizer_matches_its_equations(name, weight_decay):
  config = config_lib.defaults()
  config.optimizer, config.weight_decay, config.momentum = name, weight_decay, MOMENTUM
  optimizer = trainer.base_optimizer(config, lr_at)
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 2)).astype(np.float32),
            "bias": rng.normal(size=(2,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(2)]
  expected = reference_updates(name, params, grads, weight_decay)

  current = {k: jnp.asarray(v) for k, v in params.items()}
  state = optimizer.init(current)
  for g, want in zip(grads, expected):
    updates, state = optimizer.update({k: jnp.asarray(v) for k, v in g.items()}, state, current)
    chex.assert_trees_all_close(updates, want, rtol=1e-5, atol=1e-7)
    current = {k: current[k] + updates[k] for k in current}


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules.


def schedule_of(**overrides):
  config = config_lib.defaults()
  config.learning_rate = 0.1
  for key, value in overrides.items():
    config[key] = value
  durations = trainer.Durations(steps_per_epoch=10, total=60, eval_every=10, log_every=10,
                                checkpoint_every=10)
  schedule = trainer.learning_rate_schedule(config, durations)
  return lambda step: float(schedule(step))


def test_constant_schedule():
  lr = schedule_of(lr_schedule="constant")
  assert [lr(s) for s in (0, 30, 59)] == pytest.approx([0.1] * 3, rel=1e-6)


@pytest.mark.parametrize("warmup", ["0it", "5it"])
def test_step_schedule(warmup):
  lr = schedule_of(lr_schedule="step", lr_milestones=("2ep", "4ep"), lr_gamma=0.1, warmup=warmup)
  expected = {5: 0.1, 19: 0.1, 20: 0.01, 39: 0.01, 40: 0.001, 59: 0.001}
  if warmup == "0it":
    expected[0] = 0.1
  for step, value in expected.items():
    assert lr(step) == pytest.approx(value, rel=1e-5), step


def test_linear_warmup():
  lr = schedule_of(lr_schedule="constant", warmup="10it")
  assert [lr(s) for s in range(11)] == pytest.approx([0.01 * s for s in range(11)], abs=1e-7)
  assert lr(30) == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_schedule(warmup):
  lr = schedule_of(lr_schedule="cosine", warmup=f"{warmup}it")
  values = [lr(s) for s in range(warmup, 61)]
  assert values[0] == pytest.approx(0.1, rel=1e-6)
  assert all(b <= a + 1e-9 for a, b in zip(values, values[1:]))  # non-increasing
  middle = warmup + (60 - warmup) // 2
  assert lr(middle) == pytest.approx(0.05, rel=1e-4)
  assert lr(59) < 0.001
  assert lr(60) == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------------------------------------
# Resuming between two logs.


class Crash(Exception):
  """Stands for a run killed at a chosen point."""


def test_resume_between_two_logs_logs_the_uninterrupted_metrics(tmp_path):
  config = config_lib.defaults()
  config.dataset, config.batch_size, config.optimizer = "digits", 64, "momentum"
  config.steps, config.log_every, config.eval_every = "300it", "100it", "100it"
  config.checkpoint_every = "150it"  # not a multiple of log_every: a checkpoint between logs
  config = config_lib.finalize(config)
  setup = setup_lib.build(config, str(tmp_path))
  task, key = setup.task, setup.key()
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  train_steps = trainer.make_train_steps(task, sparsifier)
  evaluate = trainer.make_evaluate(task)
  fresh = lambda: trainer.init_state(params, model_state, sparsifier.tx, key)

  def killed_after_150(state, n):
    if int(state["step"]) >= 150:
      raise Crash
    return train_steps(state, n)

  trainer.train(task, sparsifier, train_steps, evaluate, fresh(), str(tmp_path / "uninterrupted"))
  resumed = tmp_path / "resumed"
  with pytest.raises(Crash):
    trainer.train(task, sparsifier, killed_after_150, evaluate, fresh(), str(resumed))
  assert checkpoint_steps(resumed / "checkpoints") == [150]
  trainer.train(task, sparsifier, train_steps, evaluate, fresh(), str(resumed))

  rows_a = read_metrics(tmp_path / "uninterrupted" / "metrics.jsonl")
  rows_b = read_metrics(resumed / "metrics.jsonl")
  assert [r["step"] for r in rows_b] == [0, 100, 200, 300]
  for a, b in zip(rows_a, rows_b):
    a.pop("steps_per_second", None)
    b.pop("steps_per_second", None)
    assert a == b


@pytest.mark.parametrize("model, host", [("cnn_bn", True), ("lenet300", False)])
def test_host_loop_for_convolutions_on_cpu_trains_the_same(monkeypatch, model, host):
  """On CPU, models with convolutions take one jitted call per step (XLA:CPU's convolutions are
  far slower inside a loop body); either loop computes the same steps and evaluation."""
  config = config_lib.defaults()
  config.model, config.dataset, config.batch_size, config.steps = model, "digits", 8, "2it"
  setup = setup_lib.build(config_lib.finalize(config), "")
  assert trainer.host_loop(setup.model) == (host and jax.default_backend() == "cpu")
  key = setup.key()
  params, model_state = setup.init(key)
  sparsifier = setup.sparsifier(params, model_state, key)
  results = []
  for use_host in (True, False):
    monkeypatch.setattr(trainer, "host_loop", lambda m, use_host=use_host: use_host)
    state = trainer.init_state(params, model_state, sparsifier.tx, key)
    state, (loss_sum, correct) = trainer.make_train_steps(setup.task, sparsifier)(state, 2)
    evaluation = trainer.make_evaluate(setup.task)(state["params"], state["model_state"])
    results.append((state["params"], loss_sum, correct, evaluation))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
  assert int(results[0][2]) == int(results[1][2])


# Sparsifiers whose masks change only on their update steps, each with updates every 7 steps
# until step 56 or so: the chunks below begin and end on, before and after update steps.
_PERIODIC = {
    "rigl": dict(sparsifier="rigl", dst_update_every="7it", dst_end="60it"),
    "set": dict(sparsifier="set", dst_update_every="7it", dst_end="60it"),
    "magnitude": dict(sparsifier="magnitude", pruning_begin="3it", pruning_end="59it",
                      pruning_frequency="7it"),
    "magnitude 2:4": dict(sparsifier="magnitude", pruning_scope="nm", pruning_begin="3it",
                          pruning_end="59it", pruning_frequency="7it"),
    "sap": dict(sparsifier="sap", sap_begin="3it", sap_end="59it", sap_every="7it",
                sap_gamma=5.0),
}


@pytest.mark.parametrize("name", list(_PERIODIC))
def test_loop_between_mask_updates_trains_as_the_per_step_loop(name):
  """The fused loop that runs the steps between mask updates without the transformation's
  per-step cond (the sparsifier's update_steps, mask_update=False) trains exactly as the loop
  with the cond at every step: the same params, masks, optimizer state and sums, over chunks
  that begin and end on, before and after update steps, and past the last update."""
  from test_runner import digits_config
  config = digits_config(steps="200it", **_PERIODIC[name])
  setup = setup_lib.build(config_lib.finalize(config.copy_and_resolve_references()), "")
  key = setup.key()
  params, model_state = setup.init(key)
  results = []
  for segmented in (True, False):
    # Each training donates its state, the initial masks included: one sparsifier each.
    sparsifier = setup.sparsifier(params, model_state, key)
    assert sparsifier.update_steps is not None
    if not segmented:
      sparsifier = dataclasses.replace(sparsifier, update_steps=None)
    state = trainer.init_state(jax.tree.map(jnp.copy, params), model_state, sparsifier.tx, key)
    train_steps = trainer.make_train_steps(setup.task, sparsifier)
    sums = []
    for n in (5, 9, 14, 1, 40):  # steps 0-68
      state, chunk_sums = train_steps(state, n)
      sums.append(chunk_sums)
    results.append((state, sums))
  chex.assert_trees_all_equal(*results)
  initial = transforms.get_masks(setup.sparsifier(params, model_state, key).tx.init(params))
  final = transforms.get_masks(results[0][0]["opt_state"])
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(initial),
                                                   jax.tree.leaves(final)))
