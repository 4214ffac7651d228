"""Every file a run leaves, in one place: the leaf of the runner.

Text, JSON and arrays are written atomically through :mod:`sparsejax.files` (a temp file in the
same directory, then a rename; modes honour the umask; arrays keyed by param path), and only by
process 0 (:func:`sparsejax.files.is_writer`), so a multi-host run writes each file once. Orbax
writes the checkpoints (atomic, multi-process aware); ``metrics.jsonl`` and TensorBoard event
files are appended by :class:`MetricWriter`.

A workdir records its config in ``config.json``; :func:`prepare` refuses a workdir that holds a
run with another config, except for the changes the run's protocol accepts (extending a
lottery-ticket run with more levels) and for a run that holds nothing to resume.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from tensorboardX import SummaryWriter

from experiments.parsing import ConfigError
from sparsejax import files
from sparsejax import masks as masks_lib

PyTree = Any

is_writer = files.is_writer
write_bytes = files.write_bytes
write_text = files.write_text
write_json = files.write_json
read_json = files.read_json
save_arrays = files.save_arrays
load_arrays = files.load_arrays


def read_finished(path: str) -> Any:
  """The JSON record a finished piece of work left (a training's ``summary.json``), or None if
  there is none, or if it is damaged (a bad disk, a copy cut short): then the work is redone
  from its checkpoints, with a warning."""
  try:
    return read_json(path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    logging.warning("%s is damaged (%s); redoing what it records from the checkpoints", path, e)
    return None


def holds_checkpoint(directory: str) -> bool:
  """Whether ``directory`` holds an orbax checkpoint of a training (``checkpoints/<step>``)."""
  checkpoints = os.path.join(directory, "checkpoints")
  return os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints))


def _added_at_default(previous: dict, current: dict, keys: Sequence[str],
                      defaults: Mapping[str, Any]) -> list[str]:
  """The ``keys`` a run's recorded config lacks that now hold their ``defaults``.

  A key is added with a default that keeps what runs did before it, so a run recorded by an
  older version resumes under a config that only adds such keys.
  """
  return [k for k in keys if k not in previous and k in defaults and current.get(k) == defaults[k]]


# Keys a run may resume with changed: they say when checkpoints are written, never what is trained
# (a resumed run is bitwise the uninterrupted one), e.g. to checkpoint more often after a
# preemption.
RESUMABLE_CHANGES = ("checkpoint_every",)


def prepare(workdir: str, config: ml_collections.ConfigDict, *, extendable: Sequence[str] = (),
            restartable: Callable[[str], bool] = lambda workdir: False,
            defaults: Mapping[str, Any] | None = None) -> None:
  """Creates ``workdir``, or checks that the run it holds has the same config.

  Args:
    workdir: the run's directory.
    config: the resolved config, recorded in ``config.json``.
    extendable: keys whose value may grow in place (the protocol reuses what is done).
    restartable: whether the run in a workdir holds nothing to resume (it stopped before its
      first checkpoint, e.g. on a NaN loss), so that any config may replace it.
    defaults: every key's default (as JSON values): a key the recorded config lacks and the
      config holds at its default does not make the configs differ.

  The keys of :data:`RESUMABLE_CHANGES` never make configs differ: the run resumes, and
  ``config.json`` records the new values.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=workdir, delete=True)
    probe.close()
  except OSError as e:
    raise ConfigError(f"workdir={workdir!r} is not writable ({e.strerror}); "
                      "pass a directory you can write to.") from None
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  try:
    previous = read_json(path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"workdir={workdir!r}: its config.json is unreadable ({e}); it records "
                      "which run the workdir holds: restore it, or use a new --workdir.") from None
  if previous is not None:
    differing = sorted(k for k in set(previous) | set(current)
                       if previous.get(k) != current.get(k))
    added = _added_at_default(previous, current, differing, defaults or {})
    if added:
      logging.info("%s was started before the keys %s existed; their defaults keep its "
                   "behaviour", workdir, ", ".join(added))
      differing = [k for k in differing if k not in added]
    describe = lambda keys: ", ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
                                      for k in keys)
    changed = [k for k in differing if k in RESUMABLE_CHANGES]
    if changed:
      logging.info("%s resumes with %s", workdir, describe(changed))
      differing = [k for k in differing if k not in changed]
    if not differing:
      write_json(path, current)
      return
    detail = describe(differing)
    same_kind = all(previous.get(k) == current.get(k) for k in ("protocol", "sparsifier"))
    if same_kind and set(differing) <= set(extendable) and all(
        current[k] > previous[k] for k in differing):
      logging.info("extending the run in %s: %s", workdir, detail)
    elif restartable(workdir):
      logging.info("replacing the config of %s, which holds nothing to resume: %s", workdir,
                   detail)
    else:
      raise ConfigError(f"workdir={workdir!r} holds a run with a different config ({detail}); "
                        "use a new --workdir, or the same config to resume.")
  write_json(path, current)


def save_masks(directory: str, params: PyTree, masks: PyTree) -> None:
  """``masks.npz`` (every mask leaf by param path) and the per-layer sparsity report."""
  save_arrays(os.path.join(directory, "masks.npz"), masks)
  rows = masks_lib.summary(params, masks)
  write_json(os.path.join(directory, "sparsity_report.json"),
             [{"path": r.path, "shape": list(r.shape), "kept": r.kept, "total": r.total,
               "density": r.density} for r in rows])
  write_text(os.path.join(directory, "sparsity_report.txt"),
             masks_lib.summary_table(params, masks) + "\n")


class MetricWriter:
  """Appends metric rows to ``metrics.jsonl`` and TensorBoard event files in ``directory``.

  ``resume_step`` is the step of the checkpoint the run resumes from, or None for a run from
  scratch: rows and events after it belong to work that is redone now, so they are dropped
  (TensorBoard's ``purge_step`` hides the events). Only process 0 writes.
  """

  def __init__(self, directory: str, resume_step: int | None):
    self.path = os.path.join(directory, "metrics.jsonl")
    self.tb = None
    if not is_writer():
      return
    if os.path.exists(self.path):
      kept = []
      with open(self.path, errors="replace") as f:
        for line in f:
          try:
            row = json.loads(line)
          except json.JSONDecodeError:  # a row cut short by a kill: its step is redone
            continue
          if resume_step is not None and row["step"] <= resume_step:
            kept.append(line if line.endswith("\n") else line + "\n")
      write_text(self.path, "".join(kept))
    purge_step = 0 if resume_step is None else resume_step + 1
    # Event files are named by the second they are opened in; the suffix keeps a file opened in
    # the same second by an earlier training of this directory from being overwritten.
    self.tb = SummaryWriter(os.path.join(directory, "tensorboard"), purge_step=purge_step,
                            filename_suffix=f".from_step_{purge_step}")

  def write(self, step: int, **metrics):
    if self.tb is None:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **metrics}) + "\n")
    for name, value in metrics.items():
      self.tb.add_scalar(name, value, step)

  def close(self):
    if self.tb is not None:
      self.tb.close()


class Checkpoints:
  """Atomic orbax checkpoints of a training state plus a JSON record of the run so far.

  Two are kept, so that an unreadable latest one (a copy interrupted, a bad disk) leaves the one
  before it to resume from (:meth:`restore_latest`).
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("state", "record"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, record: dict):
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    record=ocp.args.JsonSave(record)), force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, target: dict) -> tuple[dict, dict]:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
    return restored["state"], restored["record"]

  def restore_latest(self, target: dict, label: str = "") -> tuple[int | None, dict, dict]:
    """``(step, state, record)`` of the newest readable checkpoint, or ``(None, target, {})``.

    A checkpoint that cannot be read is reported and moved aside, into ``<directory>.unreadable/``
    (kept for inspection, and out of the way of a new checkpoint at its step), and the one before
    it is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, record = self.restore(step, target)
      except Exception as e:  # orbax and tensorstore raise many kinds for a damaged file
        aside = os.path.join(f"{self.directory}.unreadable", f"{step}.{int(time.time())}")
        logging.warning("%sthe checkpoint at step %d in %s is unreadable (%s: %s); moved to %s, "
                        "falling back to the one before it", label, step, self.directory,
                        type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e) else "",
                        aside)
        if is_writer():
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          shutil.move(os.path.join(self.directory, str(step)), aside)
        self.manager.reload()
        continue
      return step, state, record
    return None, target, {}

  def close(self):
    self.manager.close()


def disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or what caused it) is a full disk or an exceeded quota."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False
