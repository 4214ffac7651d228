#!/usr/bin/env bash
# Idempotent environment setup: a .venv with sparsejax installed editable with the extras the
# runner (experiments), the tests (dev) and the Ray sweep launcher (sweep) need; experiments/ and
# configs/ run from the checkout.
# Reinstalls only when pyproject.toml or EXTRAS changed since the last successful install (their
# sha256 is kept in .venv/.install.sha256), so a second run returns in well under a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trap 'echo "scripts/bootstrap.sh: failed (line $LINENO); see the error above." >&2' ERR

VENV=.venv
STAMP="$VENV/.install.sha256"
EXTRAS="experiments,dev,sweep"
PYTHON="${PYTHON:-python3}"

# Two scripts bootstrapping at once (e.g. quickstart and test) wait for each other.
if command -v flock >/dev/null 2>&1; then
  exec 9<"${BASH_SOURCE[0]}"
  flock 9
fi

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "Creating $VENV with $("$PYTHON" --version 2>&1) ..."
  if ! "$PYTHON" -m venv --clear "$VENV"; then
    rm -rf "$VENV"
    echo "scripts/bootstrap.sh: '$PYTHON -m venv' failed. On Debian/Ubuntu install the venv" \
         "module first: apt-get install python3-venv" >&2
    exit 1
  fi
fi

want="$({ cat pyproject.toml; echo "extras=$EXTRAS"; } | sha256sum | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
  echo "Installing sparsejax[$EXTRAS] into $VENV (first run, or pyproject.toml/EXTRAS changed) ..."
  rm -f "$STAMP"
  # pip's build backend warns on stderr even with -q: keep its output, show it only on failure.
  log="$(mktemp)"
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
     } >"$log" 2>&1
  then
    cat "$log" >&2
    rm -f "$log"
    echo "scripts/bootstrap.sh: 'pip install -e .[$EXTRAS]' failed; its output is above." >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" >"$STAMP"
fi
