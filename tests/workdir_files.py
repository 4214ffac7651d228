"""Readers for the files the runner leaves in a workdir, shared by the runner's tests."""

import json
import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def read_json(path):
  with open(path) as f:
    return json.load(f)


def read_metrics(path):
  """The rows of a ``metrics.jsonl``."""
  with open(path) as f:
    return [json.loads(line) for line in f]


def checkpoint_steps(directory):
  """The steps of the orbax checkpoints in ``directory`` (a ``checkpoints/`` folder)."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def tensorboard_scalars(directory):
  """``{tag: [(step, value), ...]}`` as TensorBoard shows the event files in ``directory``.

  The files are read in name (= time) order; a session START event at step s (what a writer's
  ``purge_step`` writes) hides the earlier events at steps >= s, as TensorBoard does. A record
  cut short (a killed writer) ends its file.
  """
  scalars = {}
  for path in sorted(Path(directory).glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      end = offset + 12 + length  # length, its CRC, the event, then the event's CRC
      if end + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[offset + 12:end])
      offset = end + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        scalars = {tag: [(s, v) for s, v in points if s < event.step]
                   for tag, points in scalars.items()}
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars
