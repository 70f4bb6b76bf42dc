#!/usr/bin/env bash
# The GPU check (issue 21, item 6): at most 8 minutes on one GPU, a compact summary at the end.
#
#   bash benchmarks/gpu_check.sh              # on a machine with one CUDA GPU
#   OUT=DIR bash benchmarks/gpu_check.sh      # results in DIR (default: $OUT, else /tmp/gpu_check)
#   bash benchmarks/gpu_check.sh --dry-run    # every part on the CPU at toy sizes (seconds); also GPU_CHECK_CPU=1
#   GPU_CHECK_PARTS="train cgc" bash benchmarks/gpu_check.sh   # some parts only
#
# Parts (benchmarks/gpu_check.py says what each measures):
#   env         torch, CUDA, cuDNN, NCCL, the GPU (and nvidia-smi)
#   train       ResNet-50 training throughput at 224 and 448 px, bf16 autocast + channels_last against fp32
#   steps       steps 6 and 7 throughput (every heatmap method, every metric), ResNet-50 at 224 px
#   gradcam     our Grad-CAM beside Captum and pytorch-grad-cam on the GPU, and their agreement
#   cgc         a CGC training step under bf16 autocast (create_graph through the last block) beside cross-entropy
#   structured  benchmarks/bench_structured_pruning.py on the GPU (speed-up of the structured ticket)
#   torchrun    torchrun --nproc_per_node=1 with NCCL: all_reduce, CGC's all_gather, DDP bf16 steps
# Files in the results folder: summary.txt (the summary below), gpu_check.log (everything printed),
# <part>.json (each part's figures), nvidia-smi.txt. Exit status 0 when every part passed, else 1.
set -u
cd "$(dirname "$0")/.."

MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --dry-run) MODE=cpu ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "${GPU_CHECK_CPU:-0}" = "1" ]; then MODE=cpu; fi

PYTHON=${PYTHON:-python}
RESULTS=${OUT:-${TMPDIR:-/tmp}/gpu_check}
PARTS=${GPU_CHECK_PARTS:-env train steps gradcam cgc structured torchrun}
LIMIT=${GPU_CHECK_SECONDS:-450}   # the whole check, so that it ends within 8 minutes with the machine's start
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS/summary.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$MODE" = gpu ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1
fi

start=$SECONDS
# shellcheck disable=SC2086  # PARTS is a list of words
timeout --kill-after=15 "$LIMIT" "$PYTHON" benchmarks/gpu_check.py --mode "$MODE" --out "$RESULTS" $PARTS \
  2>&1 | tee "$RESULTS/gpu_check.log"
status=${PIPESTATUS[0]}

{
  echo "gpu_check ($MODE mode, $((SECONDS - start)) s, results in $RESULTS)"
  grep '^SUMMARY ' "$RESULTS/gpu_check.log" | sed 's/^SUMMARY //'
  for part in $PARTS; do
    if [ ! -f "$RESULTS/$part.json" ]; then
      echo "$part: NO RESULT (the check stopped before it: exit status $status; limit ${LIMIT} s)"
    fi
  done
} > "$RESULTS/summary.txt"
echo
echo "=================================================================== summary"
cat "$RESULTS/summary.txt"
if [ "$status" -ne 0 ]; then
  echo "gpu_check: FAILED (exit status $status); see $RESULTS/gpu_check.log" >&2
  exit 1
fi
