#!/usr/bin/env bash
# Every step for one config:  bash bash_script/run_all.sh [config/NAME.yaml] [--set key=value ...]
# On the embedded default it first generates the synthetic data. It runs the steps of the pipeline in
# order, as the step registry lists them (python -m lottery_xai.steps pipeline): it trains the rewound
# lottery ticket and the reinit control (same masks, fresh weights), tests both, and runs the
# explanation steps, the figures and the report on the rewound run. Each step skips work that is
# already complete, so rerunning after an interruption resumes. With a launcher option (--launcher slurm,
# --workers N, --plan, --sweep, --seeds) it hands over to python -m lottery_xai.launch run, which runs the
# same steps as SLURM jobs or N local processes (doc/cluster.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source bash_script/common.sh "$@"
for arg in ${EXTRA[@]+"${EXTRA[@]}"}; do  # the launcher's options: it runs the same steps (doc/cluster.md)
  case "$arg" in
    --launcher|--launcher=*|--workers|--workers=*|--plan|--detach|--sweep|--sweep=*|--seeds|--seeds=*)
      exec "$PY" -m lottery_xai.launch run "$CONFIG" "${EXTRA[@]}" ;;
  esac
done

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
