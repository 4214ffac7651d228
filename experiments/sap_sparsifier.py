"""Sparsifier ``sap``: Sparsity-informed Adaptive Pruning guided by the PQ Index
(:mod:`sparsejax.sap`; Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective",
ICLR 2023, Algorithm 1).

From ``sap_begin`` to ``sap_end`` (a duration or a percentage of training), every ``sap_every``
steps, SAP prunes c_t = floor(d_t min(gamma (1 - r_t / d_t), beta)) of the d_t retained weights
(the smallest magnitudes), with r_t = d_t (1 + eta_r)^{-q/(q-p)} [1 - PQI]^{qp/(q-p)}: per layer
(``sap_scope='layer'``) or over all prunable weights (``'global'``). It never prunes past
``final_sparsity`` (per layer or of the model, with the scope), so runs compare at a sparsity.

Keys (defaults: the paper's p, q, eta_r, gamma and global scope, the authors' beta; the schedule
is ours, about T = 30 pruning steps over a 40-epoch run as the paper's T = 30 iterations)::

  final_sparsity  0.9      the cap
  sap_begin       "1ep"
  sap_end         "75%"
  sap_every       "1ep"
  sap_p           0.5
  sap_q           1.0
  sap_eta         0.0      eta_r
  sap_gamma       1.0
  sap_beta        0.9
  sap_scope       "global" layer | global
"""

from __future__ import annotations

from experiments import parsing
from experiments.sparsifiers import Context, Sparsifier, register, window, with_masks
from sparsejax import pqi, sap, schedules

KEYS = {"final_sparsity": 0.9, "sap_begin": "1ep", "sap_end": "75%", "sap_every": "1ep",
        "sap_p": 0.5, "sap_q": 1.0, "sap_eta": 0.0, "sap_gamma": 1.0, "sap_beta": 0.9,
        "sap_scope": "global"}


def _validate(config) -> None:
  parsing.check_fraction("final_sparsity", config.final_sparsity)
  parsing.check_durations(config, "sap_begin", "sap_every", percent=["sap_end"])
  parsing.choice("sap_scope", config.sap_scope, sap.SCOPES)
  try:
    pqi.check_pq(config.sap_p, config.sap_q)
  except ValueError as e:
    raise parsing.ConfigError(f"sap_p={config.sap_p!r}, sap_q={config.sap_q!r}: {e}") from None
  for key, name in (("sap_eta", "eta_r"), ("sap_gamma", "gamma"), ("sap_beta", "beta")):
    values = {"eta_r": 0.0, "gamma": 1.0, "beta": 0.9, name: config[key]}
    try:
      pqi.check_sap(**values)
    except ValueError as e:
      raise parsing.ConfigError(f"{key}: {e}") from None


def _steps(config, durations) -> tuple[int, int, int]:
  """(begin, end, every) of the pruning steps."""
  return window(config, durations, "sap_begin", "sap_end", "sap_every")


def _check(setup) -> None:
  """Run when ``sap`` is selected: the pruning window lies inside the training."""
  c, d = setup.config, setup.task.durations
  begin, end, _ = _steps(c, d)
  if not begin < end <= d.total:
    raise parsing.ConfigError(
        f"sap_begin={c.sap_begin!r} (step {begin}) and sap_end={c.sap_end!r} (step {end}) must "
        f"satisfy sap_begin < sap_end <= steps ({c.steps!r}: {d.total} steps).")


@register("sap", keys=KEYS, validate=_validate, check=_check)
def sap_(ctx: Context) -> Sparsifier:
  """SAP (Diao et al. 2023): PQI-guided magnitude pruning, capped at ``final_sparsity``."""
  c = ctx.config
  begin, end, every = _steps(c, ctx.task.durations)
  steps = schedules.polynomial(c.final_sparsity, begin, end, every)  # only its steps are used
  return with_masks(sap.sap_pruning(
      ctx.inner, steps, p=float(c.sap_p), q=float(c.sap_q), eta_r=float(c.sap_eta),
      gamma=float(c.sap_gamma), beta=float(c.sap_beta), scope=c.sap_scope,
      max_sparsity=float(c.final_sparsity), prunable=ctx.prunable), steps)
