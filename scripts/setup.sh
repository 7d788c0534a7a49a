#!/usr/bin/env bash
# Set up vae-zoo on a fresh Debian machine: Fashion-MNIST from Debian, a virtual environment with
# the exact package versions CI tested (constraints.txt), and the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

# From Debian, only when missing: the dataset, and the headless browser the MLflow UI tests drive.
missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Skip the install when nothing changed since the last one (saves a minute on every rerun).
stamp=.venv/.vaezoo-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
