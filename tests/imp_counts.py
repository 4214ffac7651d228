"""The IMP density invariant, computed exactly, shared by the library's and the runner's tests."""

from fractions import Fraction

HALF = 0.5 + 1e-9  # round() is within half a weight (the float (1 - p)^L aside)


def off_by(kept, n, fraction, level):
  """|kept - n (1 - p)^L| in exact rational arithmetic: how far level L is from its target."""
  return float(abs(kept - n * (1 - Fraction(fraction)) ** level))
