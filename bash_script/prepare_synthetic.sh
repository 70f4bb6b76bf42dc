#!/usr/bin/env bash
# Generate the embedded synthetic dataset (CUB-200-2011 layout) and prepare its concepts and splits.
# Idempotent: does nothing when the prepared files already exist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=${DATA:-data/synthetic_cub}
if [ ! -f "$DATA/images.txt" ]; then
  "$PY" scripts_data/make_synthetic_cub.py --out "$DATA"
fi
if [ ! -f "$DATA/prepared/splits.json" ]; then
  "$PY" scripts_data/download_cub.py --src "$DATA" --data_root "$DATA" --json_root "$DATA/prepared" --min-classes 2
fi
