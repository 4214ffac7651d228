"""Lottery tickets: iterative magnitude pruning (IMP) with weight rewinding, and its controls.

Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis", Algorithm 1 with iterative pruning) and
Frankle et al. 2020 ("Linear Mode Connectivity and the Lottery Ticket Hypothesis", IMP with
rewinding to iteration k). One level of IMP:

1. prune a fraction p of the *surviving* weights of the previous level's trained weights by
   magnitude (globally or per layer; per-layer fractions may differ, e.g. the output layer at p/2),
   so the density after level L is (1 - p)^L: a layer of n weights keeps round(n (1 - p)^L),
   counted from n at every level so that rounding never accumulates;
2. rewind: params = theta_k * mask, where theta_k are the dense run's weights at step k
   (k = 0 is the original LTH);
3. train from step k to T (the caller's training function).

Pure steps (:func:`prune_level`, :func:`rewind`, the controls) plus :func:`run`, a resumable
driver that is independent of any training loop: the caller passes ``train(params, masks, level,
start_step) -> (params, metrics, rewind_params)``. Every finished level is written atomically to a
directory (:mod:`sparsejax.files`: path-keyed arrays, written by process 0 only), so a killed run
resumes at the first unfinished level. :func:`driver` is the same run as a generator that asks
for each training instead of calling ``train``, so that a caller can advance several runs level
by level and train their levels together (the replicates of ``experiments/protocols/imp.py``).

Controls (Frankle & Carbin 2019, Sec. 2-3): random re-initialization (same mask, fresh init),
random masks with the ticket's per-layer densities (layerwise shuffle), or with only its global
density (global shuffle).
"""

from __future__ import annotations

import json
import numbers
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Generator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import files
from sparsejax import masks as masks_lib
from sparsejax import pruning
from sparsejax import schedules
from sparsejax import scores

PyTree = Any
Fractions = Mapping[str, float]  # regex on the param path -> prune fraction for matching leaves


def _override(path: str, overrides: Fractions) -> float | None:
  """The fraction of the first override whose regex matches ``path``, if any."""
  return next((v for pattern, v in overrides.items() if re.search(pattern, path)), None)


def layer_fractions(masks: PyTree, prune_fraction: float,
                    overrides: Fractions | None = None) -> dict[str, float]:
  """The prune fraction of every prunable leaf: ``prune_fraction`` unless a regex overrides it.

  ``overrides={"output": 0.1}`` prunes leaves whose path matches ``output`` by 10% per level
  (the LTH paper's LeNet setting); a fraction of 0 never prunes them.
  """
  schedules.check_prune_fraction(prune_fraction)
  overrides = dict(overrides or {})
  for pattern, value in overrides.items():
    schedules.check_prune_fraction(value, f"fraction for {pattern!r}")
  out = {}
  for path, m in jax.tree_util.tree_leaves_with_path(masks):
    if masks_lib.is_prunable_mask(m):
      p = jax.tree_util.keystr(path)
      fraction = _override(p, overrides)
      out[p] = prune_fraction if fraction is None else fraction
  unused = [pat for pat in overrides if not any(re.search(pat, p) for p in out)]
  if unused:
    raise ValueError(f"fraction override(s) {unused} match no prunable leaf; prunable paths: "
                     f"{sorted(out)}.")
  return out


def prune_level(params: PyTree, masks: PyTree, prune_fraction: float, *, mode: str = "global",
                overrides: Fractions | None = None, level: int | None = None) -> PyTree:
  """One IMP pruning step: removes a fraction of the surviving weights by |params|.

  Args:
    params: the trained weights of the previous level.
    masks: the previous level's masks (pruned weights stay pruned).
    prune_fraction: p, the fraction of surviving weights to remove.
    mode: ``"global"`` (one magnitude ranking over all leaves at fraction p; OpenLTH's
      ``sparse_global``) or ``"layerwise"`` (each leaf loses its own fraction; the LTH paper).
    overrides: per-leaf fractions by path regex; in global mode those leaves are pruned
      layerwise at their own fraction and left out of the global ranking.
    level: L >= 1, the IMP level these masks are for (``masks`` being those of level L - 1).

  With ``level``, each leaf of n weights (or the global pool of N weights) keeps exactly
  ``round(n * (1 - p)^L)`` (:func:`sparsejax.schedules.imp_density`): the count comes from the
  original size, not from the survivors, so the density after level L is (1 - p)^L within half a
  weight at every level (rounding the survivors at every level would drift by up to half a
  weight per level). Without ``level``, it keeps ``round((1 - p) * surviving)``. Never more than
  survive (pruned weights stay pruned); ``round`` rounds half to even. The selection is
  :func:`sparsejax.pruning.global_count` over the pool and
  :func:`sparsejax.pruning.layerwise_counts` over the other leaves.
  """
  if mode not in ("global", "layerwise"):
    raise ValueError(f"mode={mode!r} must be 'global' or 'layerwise'.")
  if level is not None and level < 1:
    raise ValueError(f"level={level!r} must be >= 1 (level 0 is the dense network).")
  masks_lib.validate(params, masks)
  overrides = dict(overrides or {})
  fractions = layer_fractions(masks, prune_fraction, overrides)
  pool = {p for p in fractions if mode == "global" and _override(p, overrides) is None}
  own = set(fractions) - pool
  leaves, treedef = jax.tree_util.tree_flatten_with_path(masks)
  names = [jax.tree_util.keystr(p) for p, _ in leaves]
  old = dict(zip(names, (m for _, m in leaves)))

  def kept(paths, fraction):
    if level is not None:
      return round(sum(old[p].size for p in paths) * schedules.imp_density(level, fraction))
    if any(isinstance(old[p], jax.core.Tracer) for p in paths):
      raise ValueError("prune_level without level= counts the survivors on the host; pass "
                       "level=L (counts from the leaves' sizes) to prune under jit or vmap.")
    # Counted on the host in float64, so round((1 - p) * surviving) is exact: in float32,
    # 0.7 * 45 is 31.5 and would round up.
    surviving = sum(int(np.count_nonzero(np.asarray(old[p]))) for p in paths)
    return round((1.0 - fraction) * surviving)

  def only(selected):  # the masks with the leaves outside ``selected`` marked never pruned
    return jax.tree.unflatten(treedef, [old[n] if n in selected else jnp.array(True)
                                        for n in names])

  magnitudes = scores.magnitude(params)
  new = dict(old)
  if pool:
    pooled = pruning.global_count(magnitudes, kept(pool, prune_fraction), only(pool))
    new.update((n, m) for n, m in zip(names, jax.tree.leaves(pooled)) if n in pool)
  if own:
    counts = jax.tree.unflatten(treedef, [kept([n], fractions[n]) if n in own else 0
                                          for n in names])
    separate = pruning.layerwise_counts(magnitudes, counts, only(own))
    new.update((n, m) for n, m in zip(names, jax.tree.leaves(separate)) if n in own)
  return jax.tree.unflatten(treedef, [new[n] for n in names])


def rewind(rewind_params: PyTree, masks: PyTree) -> PyTree:
  """The start of a level: theta_k * mask (pruned weights exactly 0.0)."""
  return masks_lib.apply(rewind_params, masks)


def shuffle_layerwise(key: jax.Array, masks: PyTree) -> PyTree:
  """Random masks with the same number of kept weights in every leaf (random-mask control)."""
  scores.check_key(key)
  leaves, treedef = jax.tree.flatten(masks)
  keys = jax.random.split(key, len(leaves))
  out = [jax.random.permutation(k, m.ravel()).reshape(m.shape) if masks_lib.is_prunable_mask(m)
         else m for k, m in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, out)


def shuffle_global(key: jax.Array, masks: PyTree) -> PyTree:
  """Random masks with the same total number of kept weights over all prunable leaves."""
  scores.check_key(key)
  leaves, treedef = jax.tree.flatten(masks)
  idx = [i for i, m in enumerate(leaves) if masks_lib.is_prunable_mask(m)]
  flat = jax.random.permutation(key, jnp.concatenate([leaves[i].ravel() for i in idx]))
  out, start = list(leaves), 0
  for i in idx:
    size = leaves[i].size
    out[i] = flat[start:start + size].reshape(leaves[i].shape)
    start += size
  return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------------------------------------
# A resumable driver over levels.


class Level(NamedTuple):
  level: int
  masks: PyTree
  start_params: PyTree
  final_params: PyTree
  metrics: dict


TrainFn = Callable[..., tuple[PyTree, dict, PyTree | None]]


def _check_settings(directory: str, settings: dict) -> None:
  """Records the pruning settings of a run; a resumed run must use the same ones."""
  path = os.path.join(directory, "imp_settings.json")
  previous = files.read_json(path)
  if previous is None:
    files.write_json(path, settings)
    return
  differing = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
  if differing:
    raise ValueError(f"{directory} holds IMP levels made with other settings "
                     f"(name: (stored, given)): {differing}; use a new directory.")


def level_dir(directory: str, level: int) -> str:
  return os.path.join(directory, f"level_{level}")


def _owned(tree: PyTree) -> PyTree:
  """A copy of ``tree`` that no later in-place update of the caller's model can change.

  A Flax NNX ``nnx.state(model)`` is a view of the model: its arrays are replaced as the model
  trains, so weights kept as given would silently become later ones.
  """
  return jax.tree.map(jnp.array, tree)


def _load_level(d: str, level: int, masks_like: PyTree, params_like: PyTree,
                stacklevel: int) -> Level | None:
  """A finished level from its directory, or None if it is not finished (or its files are
  damaged: a bad disk, a copy cut short; then it is trained again, with a warning)."""
  try:
    done = files.read_json(os.path.join(d, "level.json"))
    if done is None:
      return None
    return Level(level, files.load_arrays(os.path.join(d, "masks.npz"), masks_like),
                 files.load_arrays(os.path.join(d, "start_params.npz"), params_like),
                 files.load_arrays(os.path.join(d, "final_params.npz"), params_like),
                 done["metrics"])
  except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, EOFError, KeyError) as e:
    warnings.warn(f"level {level} in {d} is damaged ({type(e).__name__}: {e}); training it "
                  "again.", stacklevel=stacklevel)
    return None


def _checked(result: Any, like: PyTree, level: int) -> tuple[PyTree, dict, PyTree | None]:
  """``train``'s result, refused before anything of the level is written if it is malformed."""
  if not isinstance(result, tuple) or len(result) != 3:
    raise ValueError(f"train returned {type(result).__name__} at level {level}; it must return a "
                     "tuple (final_params, metrics, rewind_params).")
  final, metrics, rewind_params = result
  for name, tree in (("final_params", final), ("rewind_params", rewind_params)):
    if tree is None and name == "rewind_params":
      continue
    for path, ref, got in masks_lib.check_structure(
        like, tree, "initial params", f"{name} train returned at level {level}"):
      if np.shape(ref) != np.shape(got):
        raise ValueError(f"{name} train returned at level {level} has shape {np.shape(got)} at "
                         f"{path}, the initial params {np.shape(ref)}.")
  if not isinstance(metrics, dict):
    raise ValueError(f"train returned metrics of type {type(metrics).__name__} at level {level}; "
                     "they must be a dict of JSON-serialisable values (numbers, strings, lists).")
  for key, value in metrics.items():
    try:
      json.dumps(value, default=lambda x: np.asarray(x).tolist())
    except (TypeError, ValueError) as e:
      raise ValueError(f"metric {key!r} = {value!r} train returned at level {level} cannot be "
                       f"stored as JSON ({e}); return numbers, strings or lists.") from None
  return final, metrics, rewind_params


def _check_not_aliased(rewind_params: PyTree, final: PyTree, start: PyTree) -> None:
  """Refuses theta_k that is the trained final weights themselves: a live view taken at step k.

  (A ``train`` that changed nothing may return the same arrays for both.)
  """
  shared = [jax.tree_util.keystr(path) for (path, a), b in
            zip(jax.tree_util.tree_leaves_with_path(rewind_params), jax.tree.leaves(final))
            if a is b]
  trained = any(not np.array_equal(f, s) for f, s in zip(jax.tree.leaves(final),
                                                         jax.tree.leaves(start)))
  if shared and trained:
    raise ValueError(
        f"train returned rewind_params whose arrays are the final params' own ({shared[0]} and "
        f"{len(shared) - 1} more): the weights at rewind_step were kept as a live view of the "
        "model (e.g. nnx.state(model)), which training turned into the final weights. Keep a "
        "copy when you reach rewind_step: jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)).")


class Training(NamedTuple):
  """What :func:`driver` asks for: train ``params`` with ``masks`` fixed from ``start_step``.

  Answer with ``send((final_params, metrics, rewind_params))``, what ``train`` of :func:`run`
  returns.
  """
  level: int
  params: PyTree
  masks: PyTree
  start_step: int


def _prepare(init_params: PyTree, directory: str, *, levels: int, prune_fraction: float,
             rewind_step: int, mode: str, overrides: Fractions | None,
             prunable: masks_lib.Prunable) -> tuple[PyTree, PyTree]:
  """Refuses bad arguments before anything trains, records the settings in ``directory``;
  ``(init_params, masks of level 0)``, the params copied."""
  for name, value in (("levels", levels), ("rewind_step", rewind_step)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise ValueError(f"{name}={value!r} must be an integer >= 0.")
  if mode not in ("global", "layerwise"):  # before the dense run, not after it
    raise ValueError(f"mode={mode!r} must be 'global' or 'layerwise'.")
  masks_like = masks_lib.ones_like(init_params, prunable)
  layer_fractions(masks_like, prune_fraction, overrides)
  init_params = _owned(init_params)
  os.makedirs(directory, exist_ok=True)
  _check_settings(directory, {"prune_fraction": prune_fraction, "rewind_step": rewind_step,
                              "mode": mode, "overrides": dict(overrides or {})})
  return init_params, masks_like


def driver(init_params: PyTree, directory: str, *, levels: int, prune_fraction: float = 0.2,
           rewind_step: int = 0, mode: str = "global", overrides: Fractions | None = None,
           prunable: masks_lib.Prunable = None) -> Generator[Training | Level, Any, list[Level]]:
  """:func:`run` without its training loop: a generator over the levels, for a caller that
  advances several runs in step (e.g. trains the same level of several replicates at once).

  The arguments are those of :func:`run` (checked now, before the first ``next``). The generator
  yields, level by level, a :class:`Training` when the level has to be trained (answer it with
  ``send(train's result)``; the level's files are written then), and the :class:`Level`, trained
  now or loaded from ``directory`` (answer with ``next`` or ``send(None)``). It returns (the
  ``StopIteration``'s value) one :class:`Level` per level, as :func:`run` does.
  """
  settings = dict(levels=levels, prune_fraction=prune_fraction, rewind_step=rewind_step,
                  mode=mode, overrides=overrides)
  init_params, masks_like = _prepare(init_params, directory, prunable=prunable, **settings)
  # A damaged level's warning points at the code that advances the generator.
  return _drive(init_params, masks_like, directory, stacklevel=3, **settings)


def _drive(init_params: PyTree, masks_like: PyTree, directory: str, *, levels: int,
           prune_fraction: float, rewind_step: int, mode: str, overrides: Fractions | None,
           stacklevel: int) -> Generator[Training | Level, Any, list[Level]]:
  rewind_path = os.path.join(directory, "rewind_params.npz")
  theta_k = None  # read from the directory only when level 0 is not trained now
  results: list[Level] = []
  for level in range(levels + 1):
    d = level_dir(directory, level)
    result = _load_level(d, level, masks_like, init_params, stacklevel)
    if result is None:
      os.makedirs(d, exist_ok=True)
      if level == 0:
        masks, start = masks_like, init_params
      else:
        previous = results[-1]
        masks = prune_level(previous.final_params, previous.masks, prune_fraction, mode=mode,
                            overrides=overrides, level=level)
        if theta_k is None:
          theta_k = files.load_arrays(rewind_path, init_params)
        start = rewind(theta_k, masks)
      trained = yield Training(level, start, masks, 0 if level == 0 else rewind_step)
      final, metrics, rewind_params = _checked(trained, init_params, level)
      if level == 0:
        if rewind_params is None:
          raise ValueError("train must return the weights at rewind_step at level 0.")
        _check_not_aliased(rewind_params, final, start)
        theta_k = _owned(rewind_params)
        files.save_arrays(rewind_path, theta_k)
      final = _owned(final)
      for name, tree in (("masks", masks), ("start_params", start), ("final_params", final)):
        files.save_arrays(os.path.join(d, f"{name}.npz"), tree)
      kept, total = masks_lib.count(masks)
      # Through JSON now, so that a level run now and one loaded on resume hold the same values
      # (and jax / numpy scalars are stored instead of failing after the level has trained).
      metrics = json.loads(json.dumps({"density": int(kept) / total, **metrics},
                                      default=lambda x: np.asarray(x).tolist()))
      # Written last: the level counts as finished only now.
      files.write_json(os.path.join(d, "level.json"), {"level": level, "metrics": metrics})
      result = Level(level, masks, start, final, metrics)
    results.append(result)
    yield result
  return results


def run(train: TrainFn, init_params: PyTree, directory: str, *, levels: int,
        prune_fraction: float = 0.2, rewind_step: int = 0, mode: str = "global",
        overrides: Fractions | None = None, prunable: masks_lib.Prunable = None,
        on_level: Callable[[Level], None] | None = None) -> list[Level]:
  """Runs (or resumes) IMP with rewinding for levels 0..``levels``.

  Args:
    train: ``train(params, masks, *, level, start_step) -> (final_params, metrics,
      rewind_params)``. It trains ``params`` (whose pruned weights are 0) with ``masks`` fixed from
      ``start_step`` to the end. At level 0 (dense, start_step 0) ``rewind_params`` must be the
      weights at ``rewind_step`` (theta_k); at later levels it is ignored.
    init_params: theta_0. Any pytree: params only, or params with the model's other state (e.g.
      ``nnx.state(model)`` with BatchNorm statistics, which are then rewound with the weights
      and never pruned). What ``run`` is given it copies, so a view of a model that trains in
      place is safe to pass; ``rewind_params`` taken as such a view (and so become the final
      weights) is refused.
    directory: where each finished level is stored (``level_L/``: ``masks.npz``,
      ``start_params.npz``, ``final_params.npz`` keyed by param path, and ``level.json`` with the
      metrics, written last), with ``rewind_params.npz`` (theta_k) and ``imp_settings.json``; an
      existing directory is resumed. Every process trains; only process 0 writes
      (:func:`sparsejax.files.is_writer`), and no process reads back what this run wrote.
    levels: the last level (level 0 is the dense run).
    prune_fraction, mode, overrides: see :func:`prune_level`; level L keeps
      ``round(n * (1 - p)^L)`` of every leaf's (or the global pool's) n weights.
    rewind_step: k, the step whose weights every level starts from.
    prunable: which leaves may be pruned (see :mod:`sparsejax.masks`).
    on_level: called with every level, finished now or loaded from ``directory``.

  Returns:
    One :class:`Level` per level.
  """
  if not callable(train):
    raise TypeError(f"train={train!r} is not a function: pass train(params, masks, *, level, "
                    "start_step) -> (final_params, metrics, rewind_params).")
  settings = dict(levels=levels, prune_fraction=prune_fraction, rewind_step=rewind_step,
                  mode=mode, overrides=overrides)
  init_params, masks_like = _prepare(init_params, directory, prunable=prunable, **settings)
  # A damaged level's warning points at the caller of run.
  levels_of = _drive(init_params, masks_like, directory, stacklevel=4, **settings)
  answer = None
  while True:
    try:
      event = levels_of.send(answer)
    except StopIteration as done:
      return done.value
    answer = None
    if isinstance(event, Training):
      answer = train(event.params, event.masks, level=event.level, start_step=event.start_step)
    elif on_level is not None:
      on_level(event)
