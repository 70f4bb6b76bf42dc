#!/usr/bin/env bash
# Every step for one config:  bash bash_script/run_all.sh [config/NAME.yaml] [--set key=value ...]
# On the embedded default it first generates the synthetic data. It runs the steps of the pipeline in
# order, as the step registry lists them (python -m lottery_xai.steps pipeline): it trains the rewound
# lottery ticket and the reinit control (same masks, fresh weights), tests both, and runs the
# explanation steps, the figures and the report on the rewound run. Each step skips work that is
# already complete, so rerunning after an interruption resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
source bash_script/common.sh "$@"

start=$(date +%s)

pipeline=$("$PY" -m lottery_xai.steps pipeline)  # lines "SCRIPT" or "SCRIPT control"
mapfile -t lines <<< "$pipeline"
for line in "${lines[@]}"; do
  read -r script control <<< "$line"
  step "$script"
  if [ -n "$control" ]; then step "$script" --set pruning.rewind=reinit; fi
done
echo
echo "pipeline finished in $(( $(date +%s) - start )) s"
