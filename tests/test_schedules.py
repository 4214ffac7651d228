"""Tests for sparsejax.schedules: Zhu & Gupta's polynomial schedule, one-shot, IMP levels."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsejax import schedules

# (initial_sparsity, final_sparsity, begin_step t0, frequency dt, n pruning steps, power)
CASES = [
    (0.0, 0.9, 0, 100, 10, 3.0),
    (0.0, 0.95, 1000, 250, 8, 3.0),
    (0.2, 0.8, 7, 3, 5, 3.0),
    (0.5, 0.5, 10, 10, 4, 3.0),
    (0.0, 0.9, 50, 5, 6, 1.0),
    (0.1, 0.99, 0, 1, 12, 2.0),
]


def zhu_gupta(t, s_i, s_f, t0, dt, n, power=3.0):
  """Eq. 1 of Zhu & Gupta 2017, at t in {t0, t0 + dt, ..., t0 + n dt}."""
  return s_f + (s_i - s_f) * (1.0 - (t - t0) / (n * dt)) ** power


@pytest.mark.parametrize("s_i, s_f, t0, dt, n, power", CASES)
def test_polynomial_equals_eq1_on_pruning_steps(s_i, s_f, t0, dt, n, power):
  sched = schedules.polynomial(s_f, t0, t0 + n * dt, dt, initial_sparsity=s_i, power=power)
  for i in range(n + 1):
    t = t0 + i * dt
    value = sched(t)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, zhu_gupta(t, s_i, s_f, t0, dt, n, power), rtol=1e-6,
                               atol=1e-7)
  np.testing.assert_allclose(sched(t0), s_i, rtol=1e-6)
  np.testing.assert_allclose(sched(t0 + n * dt), s_f, rtol=1e-6)


@pytest.mark.parametrize("s_i, s_f, t0, dt, n, power", CASES)
def test_polynomial_piecewise_constant_and_clamped(s_i, s_f, t0, dt, n, power):
  end = t0 + n * dt
  sched = schedules.polynomial(s_f, t0, end, dt, initial_sparsity=s_i, power=power)
  steps = np.arange(0, end + 2 * dt + 3)
  values = np.asarray(jax.vmap(sched)(jnp.asarray(steps)))
  for t, v in zip(steps, values):
    if t < t0:
      expected = s_i
    elif t >= end:
      expected = s_f
    else:
      last = t0 + (t - t0) // dt * dt  # the last pruning step at or before t.
      expected = zhu_gupta(last, s_i, s_f, t0, dt, n, power)
    np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-7, err_msg=f"step {t}")
  # Monotone towards s_f.
  diffs = np.diff(values) * np.sign(s_f - s_i)
  assert (diffs >= -1e-7).all()


def test_polynomial_end_not_on_grid_reaches_final_at_end():
  sched = schedules.polynomial(0.9, 10, 35, 10)  # pruning steps 10, 20, 30 and the end 35.
  for t in (10, 20, 30):
    np.testing.assert_allclose(sched(t), 0.9 * (1 - (1 - (t - 10) / 25) ** 3), rtol=1e-6)
  np.testing.assert_allclose(sched(34), sched(30), rtol=0)
  np.testing.assert_allclose(sched(35), 0.9, rtol=1e-7)
  assert [t for t in range(60) if bool(sched.is_update_step(t))] == [10, 20, 30, 35]


@settings(max_examples=30, deadline=None)
@given(t0=st.integers(0, 50), dt=st.integers(1, 20), span=st.integers(1, 120))
def test_is_update_step_exactly_on_grid_and_end(t0, dt, span):
  end = t0 + span
  sched = schedules.polynomial(0.8, t0, end, dt)
  steps = np.arange(256)  # one shape for every example: past end + 2 dt.
  got = np.asarray(sched.is_update_step(jnp.asarray(steps)))
  expected = set(range(t0, end + 1, dt)) | {end}
  assert set(steps[got].tolist()) == expected
  assert got.dtype == bool


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CASES)
  def test_traced_step(self, s_i, s_f, t0, dt, n, power):
    end = t0 + n * dt
    sched = schedules.polynomial(s_f, t0, end, dt, initial_sparsity=s_i, power=power)
    fn = self.variant(lambda step: (sched(step), sched.is_update_step(step)))
    for t in sorted({0, t0, t0 + 1, t0 + dt, t0 + dt + dt // 2, end - 1, end, end + 5}):
      if t < 0:
        continue
      value, update = fn(jnp.int32(t))
      chex.assert_trees_all_close(value, jnp.asarray(sched(t)), rtol=1e-6)
      assert bool(update) == (t0 <= t <= end and ((t - t0) % dt == 0 or t == end))

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_shot_traced(self):
    sched = schedules.one_shot(0.9, step=5)
    fn = self.variant(lambda t: (sched(t), sched.is_update_step(t)))
    for t in range(10):
      value, update = fn(jnp.int32(t))
      np.testing.assert_allclose(value, 0.9 if t >= 5 else 0.0, rtol=1e-6)
      assert bool(update) == (t == 5)


def test_one_shot_default_step_zero():
  sched = schedules.one_shot(0.5)
  assert [bool(sched.is_update_step(t)) for t in range(3)] == [True, False, False]
  np.testing.assert_allclose([sched(t) for t in range(3)], [0.5] * 3)
  assert sched(0).dtype == jnp.float32


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5])
def test_imp_density(p):
  for level in range(12):
    assert schedules.imp_density(level, p) == pytest.approx((1 - p) ** level, rel=1e-12)
  assert schedules.imp_density(0, p) == 1.0


def test_imp_density_lth_values():
  assert schedules.imp_density(1, 0.2) == pytest.approx(0.8)
  assert schedules.imp_density(3, 0.2) == pytest.approx(0.512)
  assert schedules.imp_density(10, 0.2) == pytest.approx(0.8 ** 10)  # 10.7% remaining.


def test_imp_sparsities():
  s = schedules.imp_sparsities(0.2, 5)
  assert len(s) == 6
  assert s[0] == 0.0
  np.testing.assert_allclose(s, [1 - 0.8 ** level for level in range(6)], rtol=1e-12)
  assert all(a < b for a, b in zip(s, s[1:]))
  # Each level removes p of the survivors.
  for a, b in zip(s, s[1:]):
    assert (1 - b) == pytest.approx((1 - a) * 0.8)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("begin, end", [(100, 100), (100, 50)])
def test_end_not_after_begin(begin, end):
  with pytest.raises(ValueError, match=f"end_step={end}") as err:
    schedules.polynomial(0.9, begin, end, 10)
  assert f"begin_step={begin}" in str(err.value)


@pytest.mark.parametrize("frequency", [0, -5])
def test_bad_frequency(frequency):
  with pytest.raises(ValueError, match=re.escape(f"frequency={frequency}")):
    schedules.polynomial(0.9, 0, 100, frequency)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_bad_final_and_initial_sparsity(value):
  with pytest.raises(ValueError, match=re.escape(f"final_sparsity={value}")):
    schedules.polynomial(value, 0, 100, 10)
  with pytest.raises(ValueError, match=re.escape(f"initial_sparsity={value}")):
    schedules.polynomial(0.5, 0, 100, 10, initial_sparsity=value)
  with pytest.raises(ValueError, match=re.escape(f"sparsity={value}")):
    schedules.one_shot(value)


def test_bad_steps_and_power():
  with pytest.raises(ValueError, match=re.escape("begin_step=-1")):
    schedules.polynomial(0.9, -1, 100, 10)
  with pytest.raises(ValueError, match=re.escape("power=0")):
    schedules.polynomial(0.9, 0, 100, 10, power=0)
  with pytest.raises(ValueError, match=re.escape("step=-3")):
    schedules.one_shot(0.5, step=-3)


def test_bad_imp_arguments():
  with pytest.raises(ValueError, match=re.escape("prune_fraction=1.0 is outside [0, 1)")) as err:
    schedules.imp_density(2, 1.0)
  assert "surviving weights pruned per level" in str(err.value)
  with pytest.raises(ValueError, match=re.escape("fraction for 'output'=-0.5 is outside")):
    schedules.check_prune_fraction(-0.5, "fraction for 'output'")
  schedules.check_prune_fraction(0.0)
  with pytest.raises(ValueError, match=re.escape("level=-1")):
    schedules.imp_density(-1, 0.2)


@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint16])
def test_numpy_integer_steps_accepted(integer):
  ref = schedules.polynomial(0.9, 10, 35, 10)
  sched = schedules.polynomial(0.9, integer(10), integer(35), integer(10))
  assert sched == ref
  assert all(type(v) is int for v in (sched.begin_step, sched.end_step, sched.frequency))
  steps = jnp.arange(50)
  np.testing.assert_array_equal(sched(steps), ref(steps))
  np.testing.assert_array_equal(sched.is_update_step(steps), ref.is_update_step(steps))
  assert schedules.one_shot(0.5, integer(3)) == schedules.one_shot(0.5, 3)
  assert schedules.imp_density(integer(2), 0.2) == schedules.imp_density(2, 0.2)


@pytest.mark.parametrize("value", [True, False, 10.0, np.float64(10.0), np.array(10)])
def test_bool_float_and_array_steps_rejected(value):
  shown = re.escape(repr(value))
  with pytest.raises(ValueError, match=f"begin_step={shown} must be a non-negative integer step"):
    schedules.polynomial(0.9, value, 100, 10)
  with pytest.raises(ValueError, match=f"end_step={shown} must be a non-negative integer step"):
    schedules.polynomial(0.9, 0, value, 10)
  with pytest.raises(ValueError, match=f"frequency={shown} must be a positive integer"):
    schedules.polynomial(0.9, 0, 100, value)
  with pytest.raises(ValueError, match=f"step={shown}"):
    schedules.one_shot(0.5, value)
  with pytest.raises(ValueError, match=f"level={shown}"):
    schedules.imp_density(value, 0.2)


def test_negative_numpy_step_shown_as_int():
  with pytest.raises(ValueError, match=re.escape("begin_step=-1 must be")):
    schedules.polynomial(0.9, np.int64(-1), 100, 10)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 30), st.integers(1, 40), st.integers(1, 12))
def test_next_update_step_is_the_first_update_step_ahead(begin, length, frequency):
  """next_update_step(s) is the smallest u >= s with is_update_step(u), int32's maximum after the
  last update: for the polynomial schedule (its grid and its end step) and the one-shot one."""
  for schedule in (schedules.polynomial(0.9, begin, begin + length, frequency),
                   schedules.one_shot(0.5, begin)):
    steps = np.arange(begin + length + frequency + 3)
    due = np.asarray(schedule.is_update_step(steps))
    got = np.asarray(schedule.next_update_step(steps))
    for s in steps:
      ahead = steps[(steps >= s) & due]
      assert got[s] == (ahead[0] if ahead.size else np.iinfo(np.int32).max), (schedule, s)
