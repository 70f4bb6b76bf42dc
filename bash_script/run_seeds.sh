#!/usr/bin/env bash
# Replicates over seeds:  bash bash_script/run_seeds.sh [config/NAME.yaml] --seeds 0,1,2 [--set key=value ...]
#                                                       [--launcher slurm] [--workers N] [--plan] [--detach]
# A thin use of the launcher (python -m lottery_xai.launch run --seeds ...): the pipeline of run_all.sh once
# per seed (--set seed=<k>: sibling run folders, the run name holds seed<k>) with its reinit control, the
# random-pruning control for the first seed (steps 1, 2 and 6 with --set pruning.method=random: the same
# dense round 0, then every round keeps in each tensor as many randomly chosen weights as that seed's
# ticket keeps there at the same round, the LTH control of pruning.random_sparsity=matched; add
# --set pruning.random_sparsity=uniform for uniform random pruning instead), then main_aggregate.py (mean
# and interval over the seeds, the null bands) and step 8 and the report of every seed again (the consistency
# figures now draw the null bands, the report's verdict table fills its seed-band column). Locally (the
# default) the steps run one after the other in one process; with --launcher slurm every seed's steps are
# SLURM jobs (see doc/cluster.md). Every step skips finished work, so a seed that has already run (e.g. make
# run's seed 0) costs little.
set -euo pipefail
cd "$(dirname "$0")/.."
case " $* " in
  *" --seeds "*|*" --seeds="*) ;;
  *) echo "error: --seeds needs at least two comma-separated seeds, e.g. --seeds 0,1,2" >&2; exit 2 ;;
esac
source bash_script/common.sh "$@"
exec "$PY" -m lottery_xai.launch run "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"}
