#!/usr/bin/env bash
# Session 10, call 9: gpu-check of the final commit (host-side refactor of the f16 workspace bookkeeping).
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout 150 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $OUT/gpu-check.txt 2>&1
cat $OUT/gpu.txt; grep -c "| pass" $OUT/gpu-check.txt; grep -E "FAIL|rror" $OUT/gpu-check.txt | head
