"""Readers for the files the runner leaves in a workdir, shared by the runner's tests."""

import json
from pathlib import Path


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
