#!/usr/bin/env bash
# Cross-entropy against contrastive Grad-CAM consistency (CGC) training, dense and pruned (same seed,
# same pruning schedule): steps 1, 2, 6 and 7 for both losses, then one comparison table and figure.
#   bash bash_script/run_cgc.sh [config/NAME.yaml] [--set key=value ...]
# Each step skips work that is already complete, so rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source bash_script/common.sh "$@"
for loss in cross_entropy cgc; do
  for s in main_lth_pruning.py main_lth_test.py main_heatmap_save.py main_explanation_metrics.py; do
    step "$s" --set train.loss=$loss
  done
done
step main_compare_losses.py --losses cross_entropy,cgc
