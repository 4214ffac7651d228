"""Config values the runner parses: errors, durations ("40ep", "500it", "75%"), regexes, choices.

The leaf of the runner's configuration: :mod:`experiments.config` (the keys and their
defaults), the registries' entries (each validating its own keys) and the trainer all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sparsejax import masks as masks_lib


class ConfigError(ValueError):
  """A configuration value that cannot be used; the message names it and what would be right."""


def choice(key: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises :class:`ConfigError` if ``value`` (of config key ``key``) is not one of ``choices``."""
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not one of {choices}.")


def check_regex(key: str, pattern: str) -> None:
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"{key}: {pattern!r} is not a regular expression ({e}).") from None


def check_fraction(key: str, value: float, *, low_open: bool = False) -> None:
  """``value`` in [0, 1) (:func:`sparsejax.masks.check_fraction`), or (0, 1) with ``low_open``."""
  try:
    masks_lib.check_fraction(value, key)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None
  if low_open and value == 0.0:
    raise ConfigError(f"{key}={value!r} must lie in (0, 1).")


def parse_overrides(text: str, key: str = "prune_fraction_overrides") -> dict[str, float]:
  """``"output=0.1,conv1=0"`` -> {"output": 0.1, "conv1": 0.0} (path regex -> fraction)."""
  out = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    pattern, sep, value = item.rpartition("=")
    try:
      fraction = float(value)
    except ValueError:
      fraction = -1.0
    if not sep or not pattern or not 0.0 <= fraction < 1.0:
      raise ConfigError(f"{key}: {item!r} is not 'regex=fraction' with a fraction in [0, 1), "
                        "e.g. 'output=0.1'.")
    check_regex(key, pattern)
    out[pattern] = fraction
  return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ep|it|%)\s*$")


def parse_duration(value: str, steps_per_epoch: int, key: str = "duration",
                   total: int | None = None) -> int:
  """``"40ep"`` -> 40 * steps_per_epoch, ``"500it"`` -> 500, ``"75%"`` -> 0.75 * total."""
  match = _DURATION.match(str(value))
  if not match or (match.group(2) == "%" and total is None):
    allowed = "'40ep', '500it'" + (" or '75%'" if total is not None else "")
    raise ConfigError(f"{key}={value!r} is not a duration; write it like {allowed}.")
  number, unit = float(match.group(1)), match.group(2)
  if unit == "it":
    if number != int(number):
      raise ConfigError(f"{key}={value!r}: iterations must be a whole number.")
    return int(number)
  if unit == "ep":
    return int(round(number * steps_per_epoch))
  return int(round(number / 100.0 * total))


def check_durations(config, *keys: str, percent: Iterable[str] = ()) -> None:
  """Checks that each of ``keys`` (and each of ``percent``, which may also be "75%") parses."""
  for key in keys:
    parse_duration(config[key], 1, key)
  for key in percent:
    parse_duration(config[key], 1, key, total=1)


def parse_widths(text: str) -> dict[str, int]:
  """``"dense1=150,dense2=50"`` -> ``{"dense1": 150, "dense2": 50}`` (``""`` -> ``{}``)."""
  widths = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
      raise ConfigError(f"widths={text!r}: {item!r} is not NAME=WIDTH with a positive integer "
                        "width; write e.g. widths='dense1=150,dense2=50'.")
    widths[name.strip()] = int(value)
  return widths
