#!/usr/bin/env bash
# Sets up .venv and the data, then runs a short lottery-ticket experiment (IMP, LeNet-300-100,
# Fashion-MNIST) into runs/quickstart and prints its level table and the path of its figure.
# Extra arguments go to the runner, e.g. --config.levels=6
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
bash scripts/install_data.sh
exec .venv/bin/python -m experiments.main --config=configs/lth_quick.py \
  --workdir=runs/quickstart "$@"
