"""Sparsity over training steps.

A schedule is a pair of jit-friendly functions of the step: ``schedule(step)`` is the target
sparsity in force at that step, and ``schedule.is_update_step(step)`` says whether masks are
recomputed at that step. Both accept Python ints and traced int arrays.

* :func:`polynomial`: gradual magnitude pruning, Zhu & Gupta 2017 ("To prune, or not to prune"),
  eq. 1: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t in {t0, t0 + dt, ..., t0 + n dt}.
  Between pruning steps the sparsity of the last pruning step holds; after the end it is s_f.
* :func:`one_shot`: sparsity s from one step on (pruning at initialization: step 0).
* :func:`imp_density` / :func:`imp_sparsities`: iterative magnitude pruning removes a fraction p of
  the surviving weights per level (:func:`check_prune_fraction`), so the density after level L is
  (1 - p)^L (Frankle & Carbin 2019).
"""

from __future__ import annotations

import dataclasses
import numbers
import operator

import jax.numpy as jnp
import numpy as np

from sparsejax.masks import check_fraction, check_sparsity


def _check_int(name: str, value, minimum: int, requirement: str) -> int:
  """``value`` as a Python int: any ``numbers.Integral`` (``np.int64`` too) but bool."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name}={value!r} must be {requirement}.")
  value = operator.index(value)
  if value < minimum:
    raise ValueError(f"{name}={value!r} must be {requirement}.")
  return value


def _check_step(name: str, value) -> int:
  return _check_int(name, value, 0, "a non-negative integer step")


# ``next_update_step`` past a schedule's last update.
NEVER = np.int32(np.iinfo(np.int32).max)


def next_on_grid(step, first: int, every: int):
  """The first of ``first, first + every, first + 2 every, ...`` at or after ``step`` (int32)."""
  after = jnp.maximum(jnp.asarray(step, jnp.int32), first)
  return first + (after - first + every - 1) // every * every


@dataclasses.dataclass(frozen=True)
class Polynomial:
  """Zhu & Gupta's polynomial schedule; build it with :func:`polynomial`."""
  final_sparsity: float
  begin_step: int
  end_step: int
  frequency: int
  initial_sparsity: float = 0.0
  power: float = 3.0

  def _last_update_step(self, step):
    step = jnp.asarray(step)
    t = jnp.clip(step, self.begin_step, self.end_step)
    last = self.begin_step + (t - self.begin_step) // self.frequency * self.frequency
    return jnp.where(step >= self.end_step, self.end_step, last)

  def __call__(self, step):
    progress = (self._last_update_step(step) - self.begin_step) / (self.end_step - self.begin_step)
    s = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
        1.0 - progress) ** self.power
    return jnp.where(jnp.asarray(step) < self.begin_step, self.initial_sparsity, s).astype(
        jnp.float32)

  def is_update_step(self, step):
    step = jnp.asarray(step)
    on_grid = (step - self.begin_step) % self.frequency == 0
    inside = (step >= self.begin_step) & (step <= self.end_step)
    return inside & (on_grid | (step == self.end_step))

  def next_update_step(self, step):
    """The first update step at or after ``step`` (int32), or int32's maximum after the last."""
    grid = next_on_grid(step, self.begin_step, self.frequency)
    return jnp.where(jnp.asarray(step) > self.end_step, NEVER, jnp.minimum(grid, self.end_step))


def polynomial(final_sparsity: float, begin_step: int, end_step: int, frequency: int,
               initial_sparsity: float = 0.0, power: float = 3) -> Polynomial:
  """Gradual pruning from ``initial_sparsity`` at ``begin_step`` to ``final_sparsity`` at ``end_step``.

  Masks are recomputed every ``frequency`` steps from ``begin_step`` on, and at ``end_step``
  (so the final sparsity is reached even when ``end_step - begin_step`` is not a multiple of
  ``frequency``). With n dt = end_step - begin_step the values equal Zhu & Gupta's eq. 1.
  """
  check_sparsity(final_sparsity, "final_sparsity")
  check_sparsity(initial_sparsity, "initial_sparsity")
  begin_step = _check_step("begin_step", begin_step)
  end_step = _check_step("end_step", end_step)
  if end_step <= begin_step:
    raise ValueError(f"end_step={end_step} must be greater than begin_step={begin_step}.")
  frequency = _check_int("frequency", frequency, 1, "a positive integer number of steps")
  if power <= 0:
    raise ValueError(f"power={power!r} must be positive (Zhu & Gupta use 3).")
  return Polynomial(float(final_sparsity), begin_step, end_step, frequency,
                    float(initial_sparsity), float(power))


@dataclasses.dataclass(frozen=True)
class OneShot:
  """Sparsity ``sparsity`` from ``step`` on, with one mask update at ``step``."""
  sparsity: float
  step: int = 0

  def __call__(self, step):
    return jnp.where(jnp.asarray(step) >= self.step, self.sparsity, 0.0).astype(jnp.float32)

  def is_update_step(self, step):
    return jnp.asarray(step) == self.step

  def next_update_step(self, step):
    """``step`` of the update while it lies ahead, then int32's maximum."""
    return jnp.where(jnp.asarray(step, jnp.int32) <= self.step, jnp.int32(self.step), NEVER)


def one_shot(sparsity: float, step: int = 0) -> OneShot:
  check_sparsity(sparsity)
  return OneShot(float(sparsity), _check_step("step", step))


def check_prune_fraction(value, name: str = "prune_fraction") -> None:
  """:func:`sparsejax.masks.check_fraction` for p, the fraction of survivors pruned per level."""
  check_fraction(value, name, "It is the fraction of the surviving weights pruned per level "
                 "(0.2 in the LTH papers).")


def imp_density(level: int, prune_fraction: float) -> float:
  """Fraction of prunable weights remaining after ``level`` IMP levels: (1 - p)^level.

  The one place that computes it: :mod:`sparsejax.lottery` keeps round(n (1 - p)^L) of n weights.
  """
  check_prune_fraction(prune_fraction)
  _check_step("level", level)
  return (1.0 - prune_fraction) ** level


def imp_sparsities(prune_fraction: float, levels: int) -> list[float]:
  """Target sparsity of levels 0..levels (level 0 is dense)."""
  return [1.0 - imp_density(level, prune_fraction) for level in range(levels + 1)]
