#!/usr/bin/env bash
# Replicates over seeds:  bash bash_script/run_seeds.sh [config/NAME.yaml] --seeds 0,1,2 [--set key=value ...]
# Runs bash_script/run_all.sh once per seed (--set seed=<k>: sibling run folders, the run name holds
# seed<k>), then the random-pruning control for the first seed (steps 1, 2 and 6 with
# --set pruning.method=random: the same dense round 0, then every round keeps in each tensor as many
# randomly chosen weights as that seed's ticket keeps there at the same round, the LTH control of
# pruning.random_sparsity=matched; it reads the ticket's checkpoints, which run_all.sh has just made;
# add --set pruning.random_sparsity=uniform for uniform random pruning instead), then main_aggregate.py
# (mean and interval over the seeds, the null bands) and step 8 of every seed again (its consistency
# figures now draw the null bands).
# Every step skips finished work, so a seed that has already run (e.g. make run's seed 0) costs little.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
seeds=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) [ $# -ge 2 ] || { echo "error: --seeds needs a value, e.g. --seeds 0,1,2" >&2; exit 2; }
             seeds=$2; shift 2 ;;
    --seeds=*) seeds=${1#--seeds=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if ! [[ "$seeds" =~ ^[0-9]+(,[0-9]+)+$ ]]; then
  echo "error: --seeds needs at least two comma-separated seeds, e.g. --seeds 0,1,2 (got '${seeds}')" >&2
  exit 2
fi
source bash_script/common.sh ${args[@]+"${args[@]}"}

start=$(date +%s)
IFS=, read -ra SEEDS <<< "$seeds"
for s in "${SEEDS[@]}"; do
  echo
  echo "=== seed $s"
  PYTHON="$PY" bash bash_script/run_all.sh "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"} --set "seed=$s"
done
echo
echo "=== random-pruning control (seed ${SEEDS[0]})"
for s in main_lth_pruning.py main_lth_test.py main_heatmap_save.py; do
  step "$s" --set "seed=${SEEDS[0]}" --set pruning.method=random
done
step main_aggregate.py --seeds "$seeds"
for s in "${SEEDS[@]}"; do
  step main_plots.py --set "seed=$s"
done
echo
echo "replicates finished in $(( $(date +%s) - start )) s"
