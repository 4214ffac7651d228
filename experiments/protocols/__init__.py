"""Protocols: the sequence of trainings a run does, each with its own outputs and report.

A protocol is registered under the name the config's ``protocol`` key selects
(:mod:`experiments.registry`), with the config keys it owns. Its function takes the run's
:class:`~experiments.setup.Setup`, does its trainings in the setup's workdir (resuming what is
there) and returns the run's summary (also written to ``summary.json``). Options:

- ``report(summary, workdir) -> str``: what the command line prints at the end;
- ``extendable``: config keys whose value may grow in a finished workdir (the run is extended);
- ``restartable(workdir) -> bool``: whether a workdir holds nothing to resume, so that another
  config may replace it;
- ``uses_sparsifier`` (default True): False for a protocol that makes its own masks (``imp``);
  the config's ``sparsifier`` must then keep its default;
- ``replicates`` (default False): the protocol runs the config's ``replicates`` (seeds
  ``seed + i``, in ``replicate_<i>/``); ``vectorizes`` (default False): also as one vectorized
  program (``vectorize=True``, :mod:`experiments.replicates`).

Built in: ``train`` (one training with the config's sparsifier), ``imp`` (lottery tickets:
iterative magnitude pruning with rewinding, its controls and instability) and ``structured``
(training with a group sparsifier, compression into a smaller network, its evaluation).
"""

from experiments.protocols import imp, structured, train  # noqa: F401 (registrations)
from experiments.registry import PROTOCOLS

register = PROTOCOLS.register


def report(name: str, summary: dict, workdir: str) -> str:
  """The printed report of protocol ``name``'s run."""
  return PROTOCOLS.get(name).options["report"](summary, workdir)
