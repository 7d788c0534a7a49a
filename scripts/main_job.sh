#!/usr/bin/env bash
# The main job on embedded defaults: set up, train a VAE on Fashion-MNIST, evaluate it and draw
# samples. Override with env vars: VARIANT (vae), EPOCHS (5), OUT (runs/main-<variant>).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VARIANT="${VARIANT:-vae}"
EPOCHS="${EPOCHS:-5}"
OUT="${OUT:-runs/main-$VARIANT}"
if [ -e "$OUT" ]; then
  echo "main_job: $OUT exists; set OUT=another/folder or remove it" >&2
  exit 1
fi
.venv/bin/vaezoo train --variant "$VARIANT" --dataset fashion-mnist --epochs "$EPOCHS" --output "$OUT"
.venv/bin/vaezoo sample --model "$OUT" --num 64 --output "$OUT/samples.png"
echo "main_job: model, checkpoints, metrics and samples are in $OUT"
