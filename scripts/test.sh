#!/usr/bin/env bash
# Sets up .venv and the data, then runs the test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh tests/test_masks.py -k validate
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
bash scripts/install_data.sh
exec .venv/bin/python -m pytest -q -n 2 -p no:cacheprovider "$@"
