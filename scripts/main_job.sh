#!/usr/bin/env bash
# The main job on embedded defaults (a local Ray cluster, SQLite MLflow in ./mlflow.db):
# set up, train a variant on Fashion-MNIST on Ray Train, track and register it in MLflow,
# batch-encode the whole dataset (train + test) to Parquet latents with Ray Data from the
# registered champion, draw samples, and print the comparison table.
# Override with env vars: VARIANT (vae), EPOCHS (5), OUT (runs/main-<variant>).
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
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"  # a private local cluster; no token file in ~/.ray
.venv/bin/vaezoo train --variant "$VARIANT" --dataset fashion-mnist --epochs "$EPOCHS" --output "$OUT" --no-progress
.venv/bin/vaezoo encode --model "models:/fashion-mnist-$VARIANT@champion" --input fashion-mnist --split all \
    --output "$OUT/latents" --no-progress
.venv/bin/vaezoo sample --model "$OUT" --num 64 --output "$OUT/samples.png"
.venv/bin/vaezoo compare
echo "main_job: model, checkpoints, metrics and pictures in $OUT; latents in $OUT/latents; runs in ./mlflow.db (mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db)"
