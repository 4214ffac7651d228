"""The runner's two registries: sparsifiers (what one training optimizes) and protocols (which
trainings a run does).

An entry is registered under the name the config selects it by (``sparsifier`` / ``protocol``),
with the config keys it owns (their defaults), a ``validate(config)`` for their values (run
whatever is selected, so a bad value fails before anything runs) and a ``check(setup)`` run only
when the entry is selected, once data and model exist and before the workdir is written. Adding a
method is one registered function plus its keys: nothing else tests a method's name.

  from experiments import sparsifiers

  @sparsifiers.register("half", keys={"half_seed": 0})
  def half(ctx):  # -> sparsifiers.Sparsifier
    ...

Two entries may own the same key (``final_sparsity`` belongs to every pruning sparsifier) only
with the same default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from experiments.parsing import ConfigError


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered sparsifier or protocol."""
  name: str
  build: Callable[..., Any]      # a sparsifier: Context -> Sparsifier; a protocol: Setup -> summary
  keys: Mapping[str, Any]        # config keys it owns, with their defaults
  validate: Callable[[Any], None] | None = None   # values of its keys, for every config
  check: Callable[[Any], None] | None = None      # the run's setup, when this entry is selected
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # kind-specific extras


class Registry:
  """Name -> :class:`Entry`, for one kind of entry (``"sparsifier"`` or ``"protocol"``)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, *, keys: Mapping[str, Any] | None = None,
               validate: Callable[[Any], None] | None = None,
               check: Callable[[Any], None] | None = None, **options) -> Callable:
    """Decorator: registers ``build`` under ``name``; returns ``build`` unchanged."""

    def decorator(build):
      if not name.isidentifier():
        raise ValueError(f"{self.kind} name {name!r} must be an identifier (it is a config value "
                         "and a summary field).")
      if name in self._entries:
        raise ValueError(f"a {self.kind} named {name!r} is registered already "
                         f"({self._entries[name].build.__module__}); pick another name.")
      owned = dict(keys or {})
      for key, default in owned.items():
        for other in self._entries.values():
          if key in other.keys and other.keys[key] != default:
            raise ValueError(f"{self.kind} {name!r} declares config key {key!r} with default "
                             f"{default!r}, but {other.name!r} owns it with {other.keys[key]!r}.")
      self._entries[name] = Entry(name, build, owned, validate, check, dict(options))
      return build

    return decorator

  def unregister(self, name: str) -> None:
    """Removes ``name`` (tests that register toys clean up with it)."""
    self._entries.pop(name, None)

  def get(self, name: str) -> Entry:
    try:
      return self._entries[name]
    except KeyError:
      raise ConfigError(f"{self.kind}={name!r} is not one of {self.names()}.") from None

  def names(self) -> list[str]:
    return list(self._entries)

  def entries(self) -> list[Entry]:
    return list(self._entries.values())

  def keys(self) -> dict[str, Any]:
    """Every config key owned by some entry, with its default."""
    out = {}
    for entry in self._entries.values():
      out.update(entry.keys)
    return out


SPARSIFIERS = Registry("sparsifier")
PROTOCOLS = Registry("protocol")
