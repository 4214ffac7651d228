"""Sparsifiers ``rigl`` and ``set``: dynamic sparse training (:mod:`sparsejax.dynamic`).

Both start from random masks at ``final_sparsity`` split over layers by ``dst_distribution``
(ERK by default, as the RigL paper) and move a fraction of every layer's connections every
``dst_update_every`` steps until ``dst_end`` (a duration or a percentage of training; the RigL
paper stops at 75%), keeping each layer's count. ``dst_drop_fraction`` is alpha, the fraction
moved at the first update: ``rigl`` decays it by a cosine to 0 at ``dst_end`` and grows where the
dense gradient is largest; ``set`` keeps it constant and grows at random.

Keys (defaults: the RigL paper's, Evci et al. 2020, Sec. 4: delta 100, alpha 0.3, T_end 75%)::

  final_sparsity     0.9
  dst_distribution   "erk"    uniform | er | erk
  dst_update_every   "100it"
  dst_end            "75%"
  dst_drop_fraction  0.3
"""

from __future__ import annotations

import jax

from experiments import parsing
from experiments.sparsifiers import Context, Sparsifier, register, with_masks
from sparsejax import dynamic, pruning

KEYS = {"final_sparsity": 0.9, "dst_distribution": "erk", "dst_update_every": "100it",
        "dst_end": "75%", "dst_drop_fraction": 0.3}


def _validate(config) -> None:
  parsing.check_fraction("final_sparsity", config.final_sparsity)
  parsing.choice("dst_distribution", config.dst_distribution, ("uniform", "er", "erk"))
  parsing.check_durations(config, "dst_update_every", percent=["dst_end"])
  alpha = config.dst_drop_fraction
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
    raise parsing.ConfigError(f"dst_drop_fraction={alpha!r} must be in (0, 1]: the fraction of "
                              "each layer's connections moved per update (RigL's alpha, 0.3).")


def _build(ctx: Context, method: str) -> Sparsifier:
  c, d = ctx.config, ctx.task.durations
  spe = d.steps_per_epoch
  every = max(1, parsing.parse_duration(c.dst_update_every, spe, "dst_update_every"))
  end = max(1, parsing.parse_duration(c.dst_end, spe, "dst_end", total=d.total))
  masks_key, grow_key = ctx.key, None
  if method == "set":
    masks_key, grow_key = jax.random.split(ctx.key)
  masks = pruning.random(masks_key, ctx.params, c.final_sparsity, c.dst_distribution,
                         ctx.prunable)
  if method == "rigl":
    tx = dynamic.rigl(ctx.inner, masks, update_every=every, end_step=end,
                      drop_fraction=float(c.dst_drop_fraction))
  else:
    tx = dynamic.set_(ctx.inner, masks, grow_key, update_every=every, end_step=end,
                      drop_fraction=float(c.dst_drop_fraction))
  return with_masks(tx, dynamic.update_steps(every, end))


@register("rigl", keys=KEYS, validate=_validate)
def rigl(ctx: Context) -> Sparsifier:
  """RigL (Evci et al. 2020): drop by magnitude, grow by the dense gradient."""
  return _build(ctx, "rigl")


@register("set", keys=KEYS, validate=_validate)
def set_(ctx: Context) -> Sparsifier:
  """SET (Mocanu et al. 2018): drop by magnitude, grow at random."""
  return _build(ctx, "set")
