"""Constructors and drivers check their arguments at once, naming the bad value and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import lottery, pruning, schedules, scores, transforms

PARAMS = {"dense": {"kernel": jnp.arange(1.0, 13.0).reshape(3, 4), "bias": jnp.zeros(4)}}


def test_a_float_instead_of_a_schedule():
  with pytest.raises(TypeError, match="schedule=0.9 is not a schedule"):
    transforms.magnitude_pruning(optax.sgd(0.1), 0.9)


def test_swapped_arguments():
  schedule = schedules.one_shot(0.5)
  with pytest.raises(TypeError, match="is not an optax optimizer"):
    transforms.magnitude_pruning(schedule, optax.sgd(0.1))
  masks = {"dense": {"kernel": jnp.ones((3, 4), bool), "bias": jnp.array(True)}}
  with pytest.raises(TypeError, match=r"static_masks: inner \(a dict\) is not an optax optimizer"):
    transforms.static_masks(masks, optax.sgd(0.1))
  with pytest.raises(TypeError, match="score_fn"):
    transforms.scheduled_pruning(optax.sgd(0.1), schedule, "uniform")


@pytest.mark.parametrize("fn", [
    lambda key: scores.random(key, PARAMS),
    lambda key: pruning.random(key, PARAMS, 0.5, "uniform"),
    lambda key: lottery.shuffle_layerwise(key, {"w": jnp.ones((3, 4), bool)}),
    lambda key: lottery.shuffle_global(key, {"w": jnp.ones((3, 4), bool)}),
])
def test_an_int_instead_of_a_key(fn):
  with pytest.raises(TypeError, match=r"jax.random.key\(0\)"):
    fn(0)
  fn(jax.random.key(0))  # a typed key
  fn(jax.random.PRNGKey(0))  # a raw uint32 key


@pytest.mark.parametrize("rewind_step", [1.5, True, -1, "0"])
def test_a_non_integer_rewind_step(tmp_path, rewind_step):
  with pytest.raises(ValueError, match="rewind_step="):
    lottery.run(lambda p, m, **kw: (p, {}, p), PARAMS, str(tmp_path), levels=1,
                rewind_step=rewind_step)


@pytest.mark.parametrize("result, message", [
    (lambda p: p, "must return a tuple"),
    (lambda p: (p, {}), "must return a tuple"),
    (lambda p: ({"dense": {"kernel": jnp.ones((4, 3))}}, {}, p), "not in the final_params"),
    (lambda p: (jax.tree.map(lambda x: jnp.ones(x.shape[::-1]), p), {}, p), "has shape"),
    (lambda p: (p, [0.5], p), "metrics of type list"),
    (lambda p: (p, {"loss": 0.5, "model": object()}, p), "metric 'model'"),
])
def test_a_malformed_train_result_is_refused_before_the_level_is_written(tmp_path, result,
                                                                          message):
  def train(params, masks, *, level, start_step):
    return result(jax.tree.map(lambda x: x + 1.0, params))

  with pytest.raises(ValueError, match=message):
    lottery.run(train, PARAMS, str(tmp_path), levels=1)
  assert not (tmp_path / "level_0" / "masks.npz").exists()
  assert not (tmp_path / "rewind_params.npz").exists()


def test_jax_and_numpy_scalars_are_fine_metrics(tmp_path):
  def train(params, masks, *, level, start_step):
    return params, {"loss": jnp.float32(0.5), "steps": np.int64(3), "curve": [1, 2]}, params

  levels = lottery.run(train, PARAMS, str(tmp_path), levels=1)
  assert levels[1].metrics["loss"] == 0.5 and levels[1].metrics["steps"] == 3
