#!/usr/bin/env bash
# Session 11, call 7 (final commit): gpu-check, with a new Tiled row whose
# reference keeps nearly 44 KiB of scores in shared memory.
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
L=$OUT/logs; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $L/gpu.txt
timeout 200 ./ferry gpu-check smol4.gguf --synthetic /tmp/ferry-synthetic > $L/gpu-check.txt 2>&1
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $L
tar xzf $OUT/logs.tgz -C /tmp && L=/tmp/logs
cat $L/gpu.txt; grep -c "| pass" $L/gpu-check.txt; grep -E "FAIL|rror|11200" $L/gpu-check.txt | head
