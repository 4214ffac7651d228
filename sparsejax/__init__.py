"""sparsejax: sparse training and lottery tickets in JAX.

Sparsity is data: masks are pytrees shaped like the params, every algorithm is a pure function or
an optax transformation over (params, masks, step).
"""

from sparsejax import connectivity
from sparsejax import distributions
from sparsejax import dynamic
from sparsejax import files
from sparsejax import lottery
from sparsejax import masks
from sparsejax import metrics
from sparsejax import nm
from sparsejax import pdp
from sparsejax import pqi
from sparsejax import pruning
from sparsejax import sap
from sparsejax import schedules
from sparsejax import scores
from sparsejax import selection
from sparsejax import structured
from sparsejax import transforms

__version__ = "0.1.0"

__all__ = ["connectivity", "distributions", "dynamic", "files", "lottery", "masks", "metrics", "nm",
           "pdp", "pqi", "pruning", "sap", "schedules", "scores", "selection", "structured",
           "transforms"]
