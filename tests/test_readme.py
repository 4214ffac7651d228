"""The README's code cannot rot: its python snippets run, and its test command is what CI runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def code_blocks(text: str, language: str | None = None) -> list[str]:
  return [body for lang, body in FENCE.findall(text) if language is None or lang == language]


def section(text: str, title: str) -> str:
  match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text,
                    re.MULTILINE | re.DOTALL)
  assert match, f"README.md has no '## {title}' section"
  return match.group(1)


def command_lines(block: str) -> list[str]:
  lines = (line.strip() for line in block.splitlines())
  return [line for line in lines if line and not line.startswith("#")]


def quick_start_commands() -> list[str]:
  blocks = code_blocks(section(README.read_text(), "Quick start"))
  assert blocks, "the Quick start section has no code block"
  return command_lines(blocks[0])


PYTHON_BLOCKS = code_blocks(README.read_text(), "python")


def test_readme_has_python_snippets():
  assert PYTHON_BLOCKS


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_snippet_runs(index):
  """Each snippet in a fresh interpreter from the repository root, as a reader would run it."""
  result = subprocess.run([sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f"README.md python block {index + 1}:\n{result.stderr[-3000:]}"


def test_quick_start_is_two_commands():
  commands = quick_start_commands()
  assert len(commands) == 2, f"the Quick start's first code block should hold 2 commands: {commands}"


def test_ci_runs_the_readme_test_command():
  test_command = quick_start_commands()[-1]
  ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
  assert test_command in ci_lines or f"exec {test_command}" in ci_lines, (
      f".ci/run does not run the README's test command {test_command!r}")
