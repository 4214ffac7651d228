#!/usr/bin/env bash
# Sets up .venv and the data, then runs the quick LeNet-300-100 experiment into runs/quickstart.
# Extra arguments go to the runner, e.g. --config.method=magnitude
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
bash scripts/install_data.sh
exec .venv/bin/python -m experiments.main --config=configs/lenet300_quick.py \
  --workdir=runs/quickstart "$@"
