#!/usr/bin/env bash
# Every step for one config:  bash bash_script/run_all.sh [config/NAME.yaml] [--set key=value ...]
# On the embedded default it first generates the synthetic data. It trains the rewound
# lottery ticket and the reinit control (same masks, fresh weights), tests both, and runs
# the explanation steps on the rewound run. Each step skips work that is already complete,
# so rerunning after an interruption resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source bash_script/common.sh "$@"

start=$(date +%s)

step main_lth_pruning.py
step main_lth_pruning.py --set pruning.rewind=reinit
step main_lth_test.py
step main_lth_test.py --set pruning.rewind=reinit
for s in main_lth_save_activations.py main_lth_generate_cavs.py main_lth_tcav.py main_heatmap_save.py \
         main_explanation_metrics.py main_plots.py main_report.py; do
  if [ -f "$s" ]; then step "$s"; fi
done
echo
echo "pipeline finished in $(( $(date +%s) - start )) s"
