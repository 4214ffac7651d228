"""Structured (group) sparsity: zero-invariant groups, the OTO-series optimizers, compression.

Chen et al., Only-Train-Once (OTOv1, NeurIPS 2021; OTOv2, ICLR 2023; HESSO, arXiv 2409.09085).
"""

from sparsejax.structured import groups
from sparsejax.structured.groups import Consumer, GroupSet, Groups, Member

__all__ = ["Consumer", "GroupSet", "Groups", "Member", "groups"]
