"""sparsejax in Flax code: NNX's nnx.Optimizer and State, linen's TrainState, IMP around NNX."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import sparsejax
from imp_counts import HALF, off_by
from sparsejax import masks as masks_lib
from sparsejax import transforms

X = jax.random.normal(jax.random.key(1), (32, 8))
Y = jnp.sum(X[:, :4], axis=1, keepdims=True)
SPARSITY = 0.75  # of each kernel (uniform): hidden keeps 64 of 256, out 8 of 32
STEPS = 10


def schedule():
  return sparsejax.schedules.polynomial(SPARSITY, begin_step=2, end_step=8, frequency=2)


class MLP(nnx.Module):

  def __init__(self, rngs, width=32, head="out"):
    self.hidden = nnx.Linear(8, width, rngs=rngs)
    setattr(self, head, nnx.Linear(width, 1, rngs=rngs))
    self.head = head

  def __call__(self, x):
    return getattr(self, self.head)(jax.nn.relu(self.hidden(x)))


def loss_fn(model):
  return jnp.mean((model(X) - Y) ** 2)


@nnx.jit
def nnx_step(model, optimizer):
  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def trained_nnx(steps=STEPS):
  """An MLP trained by nnx.Optimizer with gradual magnitude pruning; exact zeros at every step."""
  model = MLP(nnx.Rngs(0))
  tx = transforms.magnitude_pruning(optax.adam(1e-2), schedule())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  sparsities = []
  for _ in range(steps):
    nnx_step(model, optimizer)
    params, masks = nnx.state(model, nnx.Param), transforms.get_masks(optimizer.opt_state)
    assert int(masks_lib.violations(params, masks)) == 0
    sparsities.append(float(masks_lib.sparsity(params, masks)))
  return model, optimizer, sparsities


@pytest.fixture(scope="module")
def trained():
  return trained_nnx()


# ---------------------------------------------------------------- NNX: nnx.Optimizer


def test_nnx_optimizer_prunes_on_schedule_with_exact_zeros(trained):
  model, optimizer, sparsities = trained
  assert sparsities == sorted(sparsities) and sparsities[0] == 0.0
  assert sparsities[-1] == pytest.approx(SPARSITY)
  masks = transforms.get_masks(optimizer.opt_state)
  assert isinstance(masks["hidden"]["kernel"], nnx.OptVariable)  # as nnx.Optimizer stores them
  kernel = np.asarray(model.hidden.kernel[...])
  keep = np.asarray(masks["hidden"]["kernel"][...])
  assert keep.sum() == 64 and np.all(kernel[~keep] == 0.0) and np.all(kernel[keep] != 0.0)


def _containers(params, masks):
  """(name, params, masks) pairs for every mix of NNX and pure-dict containers."""
  pure_params, pure_masks = nnx.to_pure_dict(params), nnx.to_pure_dict(masks)
  return [("state, optimizer", params, masks), ("state, pure", params, pure_masks),
          ("pure, optimizer", pure_params, masks), ("pure, pure", pure_params, pure_masks),
          ("as_pure, optimizer", nnx.as_pure(params), masks)]


def test_masks_from_the_optimizer_fit_params_in_any_container(trained):
  model, optimizer, _ = trained
  params, masks = nnx.state(model, nnx.Param), transforms.get_masks(optimizer.opt_state)
  rows = [(r.shape, r.kept, r.total) for r in masks_lib.summary(params, masks)]
  assert rows == [((8, 32), 64, 256), ((32, 1), 8, 32)]
  for name, p, m in _containers(params, masks):
    masks_lib.validate(p, m)
    assert int(masks_lib.violations(p, m)) == 0, name
    assert float(masks_lib.sparsity(p, m)) == pytest.approx(SPARSITY), name
    assert float(masks_lib.density(m)) == pytest.approx(1 - SPARSITY), name
    summary = masks_lib.summary(p, m)
    assert [(r.shape, r.kept, r.total) for r in summary] == rows, name
    # Rows are named by the params' own paths.
    assert summary[0].path == "['hidden']['kernel']" + (
        ".value" if name.startswith("state") else ""), name
    table = masks_lib.summary_table(p, m).splitlines()
    assert table[-1].split() == ["total", "72", "288", f"{72 / 288:.4f}"], name


class AcrossContainersTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_returns_the_params_containers(self):
    model = MLP(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    masks = sparsejax.pruning.random(jax.random.key(2), nnx.to_pure_dict(params), 0.5, "uniform")
    pruned = self.variant(masks_lib.apply)(params, masks)
    assert jax.tree.structure(pruned) == jax.tree.structure(params)  # a State of nnx.Params
    assert int(self.variant(masks_lib.violations)(pruned, masks)) == 0
    pruned_pure = self.variant(masks_lib.apply)(nnx.to_pure_dict(params),
                                                masks_lib.conform(params, masks))
    chex.assert_trees_all_equal(pruned_pure, nnx.to_pure_dict(pruned))
    nnx.update(model, pruned)
    assert int(masks_lib.violations(nnx.state(model, nnx.Param), masks)) == 0


def test_conform_puts_masks_in_the_params_containers(trained):
  masks = transforms.get_masks(trained[1].opt_state)
  params = nnx.state(MLP(nnx.Rngs(5)), nnx.Param)
  for m in (masks, nnx.to_pure_dict(masks)):
    conformed = masks_lib.conform(params, m)
    assert jax.tree.structure(conformed) == jax.tree.structure(params)
    chex.assert_trees_all_equal(nnx.to_pure_dict(conformed), nnx.to_pure_dict(masks))
    jax.tree.map(lambda p, m: p * m, params, conformed)  # plain jax.tree.map works on both


def test_set_masks_on_an_nnx_optimizer():
  model, optimizer, _ = trained_nnx()
  params, old = nnx.state(model, nnx.Param), transforms.get_masks(optimizer.opt_state)
  # Prune further: NNX params with the optimizer's masks (other containers) give new masks, and
  # set_masks stores pure-dict masks in the optimizer state's own containers.
  pruned = sparsejax.pruning.magnitude(params, 0.9, old)
  new = nnx.to_pure_dict(pruned)
  masks_lib.validate_replacement(old, new)
  optimizer.opt_state = transforms.set_masks(optimizer.opt_state, new, inner=optax.adam(1e-2))
  chex.assert_trees_all_equal(nnx.to_pure_dict(transforms.get_masks(optimizer.opt_state)), new)
  adam = optimizer.opt_state.inner_state[0]
  assert int(masks_lib.violations(adam.mu, new)) == 0  # the new masks' pruned moments are zero
  assert int(masks_lib.violations(adam.nu, new)) == 0
  nnx_step(model, optimizer)
  params = nnx.state(model, nnx.Param)
  assert int(masks_lib.violations(params, new)) == 0
  assert float(masks_lib.sparsity(params, new)) == pytest.approx(0.9, abs=0.01)


def test_masks_of_another_model_name_the_first_differing_path():
  params = nnx.state(MLP(nnx.Rngs(0)), nnx.Param)
  other = masks_lib.ones_like(nnx.state(MLP(nnx.Rngs(0), head="logits"), nnx.Param))
  for masks, path in [(other, "['logits']['bias'].value"),
                      (nnx.to_pure_dict(other), "['logits']['bias']")]:
    with pytest.raises(ValueError) as err:
      masks_lib.violations(params, masks)
    message = str(err.value)
    assert message.startswith(
        "The masks do not match the params: ['out']['bias'].value is in the params but not in "
        f"the masks and {path} is in the masks but not in the params (4 leaves in the params, "
        "4 in the masks).")
    assert "sparsejax.transforms.get_masks" in message and "PyTreeDef" not in message
  narrow = masks_lib.ones_like(nnx.state(MLP(nnx.Rngs(0), width=16), nnx.Param))
  with pytest.raises(ValueError, match=re.escape(
      "mask at ['hidden']['kernel'].value has shape (8, 16), but the param has shape (8, 32)")):
    masks_lib.apply(params, nnx.to_pure_dict(narrow))
  with pytest.raises(ValueError, match=re.escape("['out']['bias'].value")):
    nnx.Optimizer(MLP(nnx.Rngs(0)), transforms.static_masks(optax.adam(1e-2), other),
                  wrt=nnx.Param)


# ---------------------------------------------------------------- linen: TrainState


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = jax.nn.relu(nn.Dense(32)(x))
    return nn.Dense(1)(x)


def test_linen_train_state_keeps_exact_zeros():
  model = LinenMLP()
  params = model.init(jax.random.key(0), X)["params"]
  tx = transforms.magnitude_pruning(optax.adam(1e-2), schedule())
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def train_step(state):
    grads = jax.grad(lambda p: jnp.mean((state.apply_fn({"params": p}, X) - Y) ** 2))(state.params)
    return state.apply_gradients(grads=grads)

  for _ in range(STEPS):
    state = train_step(state)
    masks = transforms.get_masks(state.opt_state)
    assert int(masks_lib.violations(state.params, masks)) == 0
  assert float(masks_lib.sparsity(state.params, masks)) == pytest.approx(SPARSITY)
  assert [r.kept for r in masks_lib.summary(state.params, masks)] == [64, 8]
  assert int(state.step) == STEPS


# ---------------------------------------------------------------- lottery tickets around NNX


def test_lottery_run_around_an_nnx_loop(tmp_path):
  model = MLP(nnx.Rngs(0))
  rewind_step, zeros_after_every_step = 2, []

  def train(params, masks, *, level, start_step):
    nnx.update(model, params)
    optimizer = nnx.Optimizer(model, transforms.static_masks(optax.adam(1e-2), masks),
                              wrt=nnx.Param)
    rewind = None
    for step in range(start_step, STEPS):
      if step == rewind_step:
        rewind = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
      loss = nnx_step(model, optimizer)
      zeros_after_every_step.append(
          int(masks_lib.violations(nnx.state(model, nnx.Param), masks)) == 0)
    return nnx.state(model, nnx.Param), {"loss": float(loss)}, rewind

  levels = sparsejax.lottery.run(train, nnx.state(model, nnx.Param), str(tmp_path), levels=2,
                                 prune_fraction=0.2, rewind_step=rewind_step, mode="layerwise")
  assert all(zeros_after_every_step) and len(zeros_after_every_step) == STEPS + 2 * 8
  theta_k = sparsejax.files.load_arrays(tmp_path / "rewind_params.npz", levels[0].start_params)
  for level in levels:
    for row in masks_lib.summary(level.final_params, level.masks):
      assert off_by(row.kept, row.total, 0.2, level.level) <= HALF, (level.level, row)
    assert level.metrics["density"] == pytest.approx(0.8 ** level.level, abs=1e-2)
    assert int(masks_lib.violations(level.start_params, level.masks)) == 0
    assert int(masks_lib.violations(level.final_params, level.masks)) == 0
    if level.level:
      chex.assert_trees_all_equal(level.start_params, masks_lib.apply(theta_k, level.masks))


def test_pure_dict_masks_train_an_nnx_model():
  """Masks given as a pure dict to a wrapper of an nnx.Optimizer (State params)."""
  model = MLP(nnx.Rngs(3))
  masks = sparsejax.pruning.random(jax.random.key(1), nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                   0.7, "uniform")
  nnx.update(model, masks_lib.apply(nnx.state(model, nnx.Param), masks))
  optimizer = nnx.Optimizer(model, transforms.static_masks(optax.adam(1e-2), masks), wrt=nnx.Param)
  for _ in range(3):
    nnx_step(model, optimizer)
  params = nnx.state(model, nnx.Param)
  assert int(masks_lib.violations(params, masks)) == 0
  assert float(masks_lib.sparsity(params, masks)) == pytest.approx(0.7, abs=0.01)
