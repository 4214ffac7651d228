#!/usr/bin/env bash
# Installs Fashion-MNIST (Debian package dataset-fashion-mnist, 4 gzipped IDX files in
# /usr/share/datasets/fashion-mnist) when the files are missing and apt-get can be used.
# Never fails: without the data, the runner explains the alternatives (e.g. --config.dataset=digits).
set -euo pipefail

DEFAULT_DIR=/usr/share/datasets/fashion-mnist
DIR="${SPARSEJAX_FASHION_MNIST_DIR:-$DEFAULT_DIR}"
FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

have_data() {
  local f
  for f in "${FILES[@]}"; do
    [[ -f "$DIR/$f.gz" || -f "$DIR/$f" ]] || return 1
  done
}

note() {
  echo "scripts/install_data.sh: Fashion-MNIST is not in $DIR and $1." >&2
  echo "  Continuing without it: the runner (experiments/main.py) explains the alternatives" \
       "(e.g. --config.dataset=digits, which ships with scikit-learn)." >&2
  exit 0
}

have_data && exit 0

if [[ "$DIR" != "$DEFAULT_DIR" ]]; then
  note "the Debian package installs into $DEFAULT_DIR, not into \$SPARSEJAX_FASHION_MNIST_DIR"
fi

if ! command -v apt-get >/dev/null 2>&1; then
  note "apt-get is not available (not Debian/Ubuntu)"
fi
if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  note "installing the Debian package dataset-fashion-mnist needs root or passwordless sudo"
fi

echo "Installing dataset-fashion-mnist with apt-get ..."
"${SUDO[@]}" apt-get update -qq || note "'apt-get update' failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null \
  || note "'apt-get install dataset-fashion-mnist' failed"
have_data || note "the package did not provide the expected files"
