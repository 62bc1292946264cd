#!/usr/bin/env bash
# The CUDA backend against the CPU backend, in one device call:
#   scripts/device-prep.sh                     (here)
#   run: bash .device/gpu-check.sh             (on the device, carry .device)
# Prints a pass/fail table: real weights (SmolLM2, first 4 layers) and synthetic
# models of every weight type; then again with the kernels from the disk cache.
set -uo pipefail
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
OUTDIR=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt"
./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic 2>&1 | tee "$OUTDIR/gpu-check.txt"
status=${PIPESTATUS[0]}
echo "second start (kernels must come from the disk cache):"
./ferry gpu-check smol4.gguf 2>&1 | tee -a "$OUTDIR/gpu-check.txt" | grep -E "device:|pass|FAIL"
exit "$status"
