"""Structured (group) sparsity: zero-invariant groups, the OTO-series optimizers, compression.

Chen et al., Only-Train-Once: OTOv1 (NeurIPS 2021, HSPG), OTOv2 (ICLR 2023, DHSPG and automatic
groups), HESSO and HESSO-CRIC (arXiv 2409.09085).

- :mod:`~sparsejax.structured.groups`: groups as data (:class:`Groups` of :class:`GroupSet`),
  their validation, printout and per-group arithmetic;
- :mod:`~sparsejax.structured.discover`: groups found by tracing the apply function;
- :mod:`~sparsejax.structured.hesso`, :mod:`~sparsejax.structured.hspg`: the optimizers, optax
  wrappers of any base optimizer;
- :mod:`~sparsejax.structured.compress`: zero groups removed, a physically smaller network.
"""

from sparsejax.structured import compress, discover, groups, hesso, hspg, wrapping
from sparsejax.structured.compress import Compressed
from sparsejax.structured.discover import canonical
from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member

__all__ = ["Compressed", "Consumer", "GroupSet", "Groups", "Member", "canonical", "compress",
           "discover", "groups", "hesso", "hspg", "wrapping"]
