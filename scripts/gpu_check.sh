#!/usr/bin/env bash
# The GPU check in one command (issue 15), under 5 minutes on one GPU:
#   bash scripts/gpu_check.sh
# training throughput of ResNet-20/56 (runner vs bare loop, channels_last, bf16 and fp16 autocast +
# data on the GPU), torch.compile on and off, pruned-vs-dense latency, and DDP with NCCL at
# world size 1 through torchrun. Sections and what they print: scripts/gpu_check.py.
# Without CUDA (or with --cpu) it runs the CPU fallback (small sizes, gloo, Dynamo-only compile)
# in seconds; the test suite runs it that way (tests/test_gpu_check.py). Run it with the
# environment prune-cli is installed in (PYTHON=... to choose the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [[ "${1:-}" == "--cpu" ]]; then
  QUICK=(--quick --device cpu)
  echo "gpu_check: --cpu: CPU fallback (small sizes; numbers are not a measurement)"
elif "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  QUICK=()
  echo "gpu_check: CUDA found"
else
  QUICK=(--quick)
  echo "gpu_check: no CUDA: CPU fallback (small sizes; numbers are not a measurement)"
fi
start=$(date +%s)
"$PYTHON" scripts/gpu_check.py "${QUICK[@]}"
# torchrun at world size 1: one rank, NCCL on CUDA (gloo on the CPU fallback).
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 \
  scripts/gpu_check.py --section ddp "${QUICK[@]}"
echo "gpu_check: done in $(( $(date +%s) - start )) s"
